"""Losses as ``nn.Module``s that drop into any training loop.

Every loss is called like GeomLoss's ``SamplesLoss``: ``loss(x, y)`` (uniform weights ``1/N``,
``1/M``) or ``loss(a, x, b, y)``; batched inputs ``x: (B, N, D)`` give ``B`` values reduced by
``reduction`` (``"mean"``, ``"sum"`` or ``"none"``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ._typing import Tensor
from .costs import CostLike
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
        blur, eps: entropic regularisation (``eps = blur**p``).
        reach, rho, tau_a, tau_b: KL/TV strength (``rho = reach**p``; default ``reach=1``).
        penalty: ``"kl"``, ``"tv"``, ``"balanced"`` or one per side.
        cost, p, scaling, max_iter, tol, grad, backend: see :func:`torchuot.sinkhorn`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
    """

    def __init__(
        self,
        *,
        blur: float | None = 0.05,
        eps: float | None = None,
        reach: object = 1.0,
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
    ) -> None:
        if convention not in ("primal", "geomloss"):
            raise ValueError(f"convention must be 'primal' or 'geomloss', got {convention!r}.")
        if eps is not None:
            blur = None
        if rho is not None or tau_a is not None or tau_b is not None:
            reach = None
        super().__init__(
            reduction=reduction, blur=blur, eps=eps, reach=reach, rho=rho, tau_a=tau_a,
            tau_b=tau_b, penalty=penalty, cost=cost, p=p, scaling=scaling, max_iter=max_iter,
            tol=tol, grad=grad, backend=backend,
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
    """

    def __init__(
        self,
        *,
        blur: float | None = 0.05,
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
    ) -> None:
        if eps is not None:
            blur = None
        super().__init__(
            reduction=reduction, blur=blur, eps=eps, reach=reach, rho=rho, tau_a=tau_a,
            tau_b=tau_b, penalty=penalty, cost=cost, p=p, scaling=scaling, max_iter=max_iter,
            tol=tol, grad=grad, backend=backend,
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
    ) -> None:
        super().__init__(
            reduction=reduction, kappa=kappa, blur=blur, eps=eps, debias=debias, squared=squared,
            scaling=scaling, max_iter=max_iter, tol=tol, grad=grad, backend=backend,
        )

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        return _reduce(hk_distance(x, y, a, b, **self.solver_kwargs), self.reduction)  # type: ignore[arg-type]



