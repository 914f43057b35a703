"""Losses as ``nn.Module``s that drop into any training loop.

Every loss is called like GeomLoss's ``SamplesLoss``: ``loss(x, y)`` (uniform weights ``1/N``,
``1/M``) or ``loss(a, x, b, y)``; batched inputs ``x: (B, N, D)`` give ``B`` values reduced by
``reduction`` (``"mean"``, ``"sum"`` or ``"none"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ._typing import Tensor
from .costs import CostLike, HKConeCost
from .divergence import hk_distance, sinkhorn_divergence
from .penalties import PenaltyLike
from .sinkhorn import sinkhorn

__all__ = ["UnbalancedSinkhornLoss", "SinkhornDivergence", "HKLoss"]

_REDUCTIONS = ("mean", "sum", "none")


def _split_args(args: tuple) -> tuple[Tensor | None, Tensor, Tensor | None, Tensor]:
    if len(args) == 2:
        return None, args[0], None, args[1]
    if len(args) == 4:
        return args[0], args[1], args[2], args[3]
    raise TypeError(
        f"call the loss as loss(x, y) or loss(a, x, b, y); got {len(args)} positional arguments."
    )


def _reduce(values: Tensor, reduction: str) -> Tensor:
    if values.dim() == 0 or reduction == "none":
        return values
    return values.mean() if reduction == "mean" else values.sum()


def _check_reduction(reduction: str) -> str:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    return reduction


def _check_conventions(blur: object, eps: object, reach: object, rho: object, tau_a: object,
                       tau_b: object) -> None:
    """Conflicting conventions raise here as they do in the functions (no silent pick)."""
    if blur is not None and eps is not None:
        raise ValueError(
            f"give either blur (GeomLoss convention) or eps (OTT/POT), not both; got blur={blur!r} "
            f"and eps={eps!r}."
        )
    given = [n for n, v in (("reach", reach), ("rho", rho)) if v is not None]
    if tau_a is not None or tau_b is not None:
        given.append("tau_a/tau_b")
    if len(given) > 1:
        raise ValueError(
            f"give the marginal penalty strength in one convention only, got {', '.join(given)}."
        )


def _check_loop_args(max_iter: object, tol: object, grad: object, on_nonconvergence: object) -> None:
    from .sinkhorn import _check_solver_args

    _check_solver_args(max_iter, tol, grad, on_nonconvergence)  # type: ignore[arg-type]


class _SolverLoss(nn.Module):
    def __init__(self, *, reduction: str, **solver_kwargs: object) -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)
        self.solver_kwargs = solver_kwargs

    def extra_repr(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.solver_kwargs.items() if v is not None)
        return f"{kw}, reduction={self.reduction!r}"


class UnbalancedSinkhornLoss(_SolverLoss):
    """Entropic UOT value ``OT_eps(a, b)`` (biased: ``OT_eps(a, a) != 0``).

    The value is the primal objective ``<pi, C> + eps KL(pi | a x b) + D_a + D_b`` (equal to the
    dual at convergence); ``convention="geomloss"`` returns GeomLoss's ``debias=False`` value
    instead (see :attr:`torchuot.UOTResult.value_geomloss`).

    Args:
        blur, eps: entropic regularisation (``eps = blur**p``; one of them, default ``blur=0.05``).
        reach, rho, tau_a, tau_b: KL/TV strength in one convention (``rho = reach**p``; default
            ``reach=1``). Giving two conventions raises, as in :func:`torchuot.sinkhorn`.
        penalty: ``"kl"``, ``"tv"``, ``"balanced"`` or one per side.
        cost, p, scaling, max_iter, tol, grad, backend, on_nonconvergence: see
            :func:`torchuot.sinkhorn`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
    """

    def __init__(
        self,
        *,
        blur: float | None = None,
        eps: float | None = None,
        reach: object = None,
        rho: object = None,
        tau_a: float | None = None,
        tau_b: float | None = None,
        penalty: PenaltyLike | Sequence[PenaltyLike] = "kl",
        cost: CostLike = None,
        p: float = 2.0,
        scaling: float = 0.5,
        max_iter: int = 1000,
        tol: float = 1e-6,
        grad: str = "envelope",
        backend: str = "auto",
        convention: str = "primal",
        reduction: str = "mean",
        on_nonconvergence: str = "warn",
    ) -> None:
        if convention not in ("primal", "geomloss"):
            raise ValueError(f"convention must be 'primal' or 'geomloss', got {convention!r}.")
        _check_conventions(blur, eps, reach, rho, tau_a, tau_b)
        _check_loop_args(max_iter, tol, grad, on_nonconvergence)
        if eps is None and blur is None:
            blur = 0.05
        if reach is None and rho is None and tau_a is None and tau_b is None:
            reach = 1.0
        super().__init__(
            reduction=reduction, blur=blur, eps=eps, reach=reach, rho=rho, tau_a=tau_a,
            tau_b=tau_b, penalty=penalty, cost=cost, p=p, scaling=scaling, max_iter=max_iter,
            tol=tol, grad=grad, backend=backend, on_nonconvergence=on_nonconvergence,
        )
        self.convention = convention

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        res = sinkhorn(x, y, a, b, **self.solver_kwargs)  # type: ignore[arg-type]
        val = res.value if self.convention == "primal" else res.value_geomloss
        return _reduce(val, self.reduction)


class SinkhornDivergence(_SolverLoss):
    """Debiased unbalanced Sinkhorn divergence (>= 0, zero for identical inputs).

    Matches GeomLoss ``SamplesLoss("sinkhorn", p, blur, reach, debias=True)`` -- including its
    mass term ``eps (m(a) - m(b))^2 / 2`` -- and is balanced when ``reach=None``.

    The Hellinger-Kantorovich distance is :class:`HKLoss` (its unbalanced KL(1) penalties and
    ``eps = (blur / kappa)**2``): ``cost="hk"`` without a penalty strength is refused here rather
    than solved as a balanced problem.
    """

    def __init__(
        self,
        *,
        blur: float | None = None,
        eps: float | None = None,
        reach: object = None,
        rho: object = None,
        tau_a: float | None = None,
        tau_b: float | None = None,
        penalty: PenaltyLike | Sequence[PenaltyLike] = "kl",
        cost: CostLike = None,
        p: float = 2.0,
        scaling: float = 0.5,
        max_iter: int = 1000,
        tol: float = 1e-6,
        grad: str = "envelope",
        backend: str = "auto",
        reduction: str = "mean",
        on_nonconvergence: str = "warn",
    ) -> None:
        _check_conventions(blur, eps, reach, rho, tau_a, tau_b)
        _check_loop_args(max_iter, tol, grad, on_nonconvergence)
        is_hk = (isinstance(cost, str) and cost.lower() == "hk") or isinstance(cost, HKConeCost)
        if is_hk and reach is None and rho is None and tau_a is None and tau_b is None:
            raise ValueError(
                "SinkhornDivergence(cost='hk') would solve a balanced problem, but the "
                "Hellinger-Kantorovich distance is unbalanced (KL(1) penalties): use "
                "torchuot.HKLoss(kappa=..., blur=...) instead, or give reach / rho / tau explicitly."
            )
        if eps is None and blur is None:
            blur = 0.05
        super().__init__(
            reduction=reduction, blur=blur, eps=eps, reach=reach, rho=rho, tau_a=tau_a,
            tau_b=tau_b, penalty=penalty, cost=cost, p=p, scaling=scaling, max_iter=max_iter,
            tol=tol, grad=grad, backend=backend, on_nonconvergence=on_nonconvergence,
        )

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        return _reduce(sinkhorn_divergence(x, y, a, b, **self.solver_kwargs), self.reduction)  # type: ignore[arg-type]


class HKLoss(_SolverLoss):
    """Entropic Hellinger-Kantorovich loss: HK^2 by default, HK with ``squared=False``.

    Args:
        kappa: HK length scale. blur: entropic length scale, ``eps = (blur/kappa)**2``
            (default ``0.05 * kappa``). debias: debiased (default) or plain ``OT_eps``.
    """

    def __init__(
        self,
        *,
        kappa: float = 1.0,
        blur: float | None = None,
        eps: float | None = None,
        debias: bool = True,
        squared: bool = True,
        scaling: float = 0.5,
        max_iter: int = 1000,
        tol: float = 1e-6,
        grad: str = "envelope",
        backend: str = "auto",
        reduction: str = "mean",
        on_nonconvergence: str = "warn",
    ) -> None:
        _check_conventions(blur, eps, None, None, None, None)
        _check_loop_args(max_iter, tol, grad, on_nonconvergence)
        super().__init__(
            reduction=reduction, kappa=kappa, blur=blur, eps=eps, debias=debias, squared=squared,
            scaling=scaling, max_iter=max_iter, tol=tol, grad=grad, backend=backend,
            on_nonconvergence=on_nonconvergence,
        )

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        return _reduce(hk_distance(x, y, a, b, **self.solver_kwargs), self.reduction)  # type: ignore[arg-type]



