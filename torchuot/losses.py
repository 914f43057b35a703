"""Losses as ``nn.Module``s that drop into any training loop.

Every loss is called like GeomLoss's ``SamplesLoss``: ``loss(x, y)`` (uniform weights ``1/N``,
``1/M``) or ``loss(a, x, b, y)``; batched inputs ``x: (B, N, D)`` give ``B`` values reduced by
``reduction`` (``"mean"``, ``"sum"`` or ``"none"``).

A loss takes its function's arguments, with the same names and defaults (a test compares the
signatures), plus ``reduction``; where a default must differ it is listed in the class's
``DEFAULTS_DIFFER`` with the reason. The arguments are validated and their conventions resolved at
construction, as the function does at call time (mixing ``reach`` with ``rho`` raises in both);
the loop's arguments become one :class:`~torchuot.SinkhornOptions` (``options=`` passes one
directly; an argument that disagrees with it raises).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import nn

from ._typing import Tensor
from .backends.reference import check_reference
from .costs import CostLike, HKConeCost, make_cost
from .divergence import hk_distance, sinkhorn_divergence
from .penalties import Penalty, PenaltyLike
from .problem import SinkhornOptions, resolve_eps, resolve_penalties
from .result import UOTResult
from .sinkhorn import sinkhorn

__all__ = ["UnbalancedSinkhornLoss", "SinkhornDivergence", "HKLoss", "CONVENTIONS"]

_REDUCTIONS = ("mean", "sum", "none")

#: Values of ``UnbalancedSinkhornLoss(convention=...)``, named for what they return.
CONVENTIONS = ("dual", "geomloss", "ott")


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


def _check_problem_args(*, cost: CostLike = None, p: float = 2.0, blur: object = None,
                        eps: object = None, reach: object = None, rho: object = None,
                        reg_m: object = None, tau_a: object = None, tau_b: object = None,
                        penalty: Any = "kl") -> None:
    """Resolve the conventions as the functions do (the same checks and messages): conflicting
    conventions raise here, at construction, never silently pick one."""
    cost_obj = make_cost(cost, p=p)
    eps_f = resolve_eps(cost_obj, blur, eps)  # type: ignore[arg-type]
    resolve_penalties(cost_obj, eps_f, reach=reach, rho=rho, reg_m=reg_m, tau_a=tau_a,  # type: ignore[arg-type]
                      tau_b=tau_b, penalty=penalty)


def _check_flag(v: object, name: str) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be a bool, got {v!r}.")
    return v


def _no_strength(reach: object, rho: object, reg_m: object, tau_a: object, tau_b: object) -> bool:
    return reach is None and rho is None and reg_m is None and tau_a is None and tau_b is None


class _SolverLoss(nn.Module):
    """A loss over one solver function: ``problem_kwargs`` for the problem, ``options`` for the loop."""

    #: ``{parameter: (effective default, reason)}`` where this loss's default differs from its
    #: function's (the signature test reads it; empty when every default is shared).
    DEFAULTS_DIFFER: ClassVar[dict[str, tuple[object, str]]] = {}

    def __init__(self, *, reduction: str, options: SinkhornOptions, **problem_kwargs: object) -> None:
        super().__init__()
        self.reduction = _check_reduction(reduction)
        self.options = options
        self.problem_kwargs = problem_kwargs

    @property
    def solver_kwargs(self) -> dict[str, object]:
        """Every keyword argument the function is called with (problem arguments and options)."""
        return dict(self.problem_kwargs, options=self.options)

    def extra_repr(self) -> str:
        kw = ", ".join(f"{k}={v!r}" for k, v in self.problem_kwargs.items() if v is not None)
        return f"{kw}, options={self.options!r}, reduction={self.reduction!r}"


class UnbalancedSinkhornLoss(_SolverLoss):
    """Entropic UOT value ``OT_eps(a, b)`` of :func:`torchuot.sinkhorn` (biased: ``OT_eps(a, a) != 0``).

    ``convention="dual"`` (default) returns ``result.value``: the dual objective at the computed
    potentials, which equals the primal ``<pi, C> + eps KL(pi | a x b) + D_a + D_b`` at
    convergence; ``convention="geomloss"`` returns GeomLoss's ``debias=False`` value instead (see
    :attr:`torchuot.UOTResult.value_geomloss`), and ``convention="ott"`` OTT-JAX's ``reg_ot_cost``
    (with ``reference="counting"``, OTT's entropy; not differentiable: see
    :attr:`torchuot.UOTResult.value_ott`). ``"primal"``, the former name of ``"dual"``, is
    deprecated (same value, with a ``DeprecationWarning``).

    Args:
        blur, eps: entropic regularisation (``eps = blur**p``; one of them, default ``blur=0.05``).
        reach, rho, reg_m, tau_a, tau_b: KL/TV strength in one convention (``rho = reach**p``).
            Default ``reach=1`` where :func:`torchuot.sinkhorn` is balanced (see
            :attr:`DEFAULTS_DIFFER`). Giving two conventions raises, as in the function.
        penalty: ``"kl"``, ``"tv"``, ``"balanced"``, a Penalty or one per side.
        cost, p, scaling, diameter, max_iter, tol, grad, backend, momentum, on_nonconvergence,
            options, reference: see :func:`torchuot.sinkhorn`.
        potentials: return the potentials ``(f, g)`` instead of the value (GeomLoss's
            ``potentials=True``; no reduction); :meth:`result` returns the whole result.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the batch.
    """

    DEFAULTS_DIFFER: ClassVar[dict[str, tuple[object, str]]] = {
        "reach": (1.0, "an unbalanced loss: without a penalty strength it uses reach=1 (KL), where "
                       "sinkhorn() without one solves the balanced problem"),
    }

    def __init__(
        self,
        *,
        cost: CostLike = None,
        p: float = 2.0,
        blur: float | None = None,
        eps: float | None = None,
        reach: object = None,
        rho: object = None,
        reg_m: object = None,
        tau_a: float | None = None,
        tau_b: float | None = None,
        penalty: PenaltyLike | Sequence[PenaltyLike] = "kl",
        scaling: float = 0.5,
        diameter: float | None = None,
        max_iter: int = 1000,
        tol: float = 1e-6,
        grad: str = "envelope",
        backend: str = "auto",
        momentum: bool = True,
        on_nonconvergence: str = "warn",
        options: SinkhornOptions | None = None,
        reference: str = "product",
        convention: str = "dual",
        potentials: bool = False,
        reduction: str = "mean",
    ) -> None:
        if convention == "primal":
            warnings.warn(
                "UnbalancedSinkhornLoss(convention='primal') is deprecated: it has always returned the "
                "dual objective at the potentials (equal to the primal at convergence); use "
                "convention='dual'.", DeprecationWarning, stacklevel=2,
            )
            convention = "dual"
        if convention not in CONVENTIONS:
            raise ValueError(f"convention must be one of {CONVENTIONS}, got {convention!r}.")
        check_reference(reference)
        if convention == "ott" and reference != "counting":
            raise ValueError(
                "convention='ott' returns OTT-JAX's reg_ot_cost, which is defined for OTT's entropy: "
                "pass reference='counting' with it."
            )
        pens = penalty if isinstance(penalty, (tuple, list)) else (penalty,)
        if _no_strength(reach, rho, reg_m, tau_a, tau_b) and not any(isinstance(q, Penalty) for q in pens):
            reach = self.DEFAULTS_DIFFER["reach"][0]  # (Penalty objects carry their own strength)
        _check_problem_args(cost=cost, p=p, blur=blur, eps=eps, reach=reach, rho=rho, reg_m=reg_m,
                            tau_a=tau_a, tau_b=tau_b, penalty=penalty)
        opts = SinkhornOptions.merge(options, scaling=scaling, max_iter=max_iter, tol=tol, grad=grad,
                                     momentum=momentum, on_nonconvergence=on_nonconvergence)
        if eps is None and blur is None:
            blur = 0.05
        super().__init__(
            reduction=reduction, options=opts, cost=cost, p=p, blur=blur, eps=eps, reach=reach,
            rho=rho, reg_m=reg_m, tau_a=tau_a, tau_b=tau_b, penalty=penalty, diameter=diameter,
            backend=backend, reference=reference,
        )
        self.convention = convention
        self.potentials = _check_flag(potentials, "potentials")

    def result(self, *args: Tensor) -> UOTResult:
        """The full :class:`~torchuot.UOTResult` of the solve behind :meth:`forward` (plan,
        marginals, potentials, value...): ``loss.result(x, y)`` or ``loss.result(a, x, b, y)``."""
        a, x, b, y = _split_args(args)
        return sinkhorn(x, y, a, b, **self.solver_kwargs)  # type: ignore[arg-type]

    def forward(self, *args: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        res = self.result(*args)
        if self.potentials:
            return res.f, res.g
        if self.convention == "dual":
            val = res.value
        else:
            val = res.value_geomloss if self.convention == "geomloss" else res.value_ott
        return _reduce(val, self.reduction)


class SinkhornDivergence(_SolverLoss):
    """Debiased unbalanced Sinkhorn divergence (>= 0, zero for identical inputs).

    Matches GeomLoss ``SamplesLoss("sinkhorn", p, blur, reach, debias=True)`` -- including its
    mass term ``eps (m(a) - m(b))^2 / 2`` -- and is balanced when no penalty strength is given,
    as :func:`torchuot.sinkhorn_divergence` (same arguments and defaults).

    The Hellinger-Kantorovich distance is :class:`HKLoss` (its unbalanced KL(1) penalties and
    ``eps = (blur / kappa)**2``): ``cost="hk"`` without a penalty strength is refused here rather
    than solved as a balanced problem. ``potentials=True`` returns the debiased potentials
    ``(f_ab - f_aa, g_ab - g_bb)`` instead of the value (GeomLoss's ``potentials=True``).
    """

    def __init__(
        self,
        *,
        cost: CostLike = None,
        p: float = 2.0,
        blur: float | None = None,
        eps: float | None = None,
        reach: object = None,
        rho: object = None,
        reg_m: object = None,
        tau_a: float | None = None,
        tau_b: float | None = None,
        penalty: PenaltyLike | Sequence[PenaltyLike] = "kl",
        scaling: float = 0.5,
        diameter: float | None = None,
        max_iter: int = 1000,
        tol: float = 1e-6,
        grad: str = "envelope",
        backend: str = "auto",
        momentum: bool = True,
        on_nonconvergence: str = "warn",
        options: SinkhornOptions | None = None,
        potentials: bool = False,
        reduction: str = "mean",
    ) -> None:
        _check_problem_args(cost=cost, p=p, blur=blur, eps=eps, reach=reach, rho=rho, reg_m=reg_m,
                            tau_a=tau_a, tau_b=tau_b, penalty=penalty)
        opts = SinkhornOptions.merge(options, scaling=scaling, max_iter=max_iter, tol=tol, grad=grad,
                                     momentum=momentum, on_nonconvergence=on_nonconvergence)
        is_hk = (isinstance(cost, str) and cost.lower() == "hk") or isinstance(cost, HKConeCost)
        if is_hk and _no_strength(reach, rho, reg_m, tau_a, tau_b):
            raise ValueError(
                "SinkhornDivergence(cost='hk') would solve a balanced problem, but the "
                "Hellinger-Kantorovich distance is unbalanced (KL(1) penalties): use "
                "torchuot.HKLoss(kappa=..., blur=...) instead, or give reach / rho / tau explicitly."
            )
        if eps is None and blur is None:
            blur = 0.05
        super().__init__(
            reduction=reduction, options=opts, cost=cost, p=p, blur=blur, eps=eps, reach=reach,
            rho=rho, reg_m=reg_m, tau_a=tau_a, tau_b=tau_b, penalty=penalty, diameter=diameter,
            backend=backend, potentials=_check_flag(potentials, "potentials"),
        )

    def forward(self, *args: Tensor) -> Tensor | tuple[Tensor, Tensor]:
        a, x, b, y = _split_args(args)
        out = sinkhorn_divergence(x, y, a, b, **self.solver_kwargs)  # type: ignore[arg-type]
        return out if isinstance(out, tuple) else _reduce(out, self.reduction)


class HKLoss(_SolverLoss):
    """Entropic Hellinger-Kantorovich loss: HK^2 by default, HK with ``squared=False``.

    Args:
        kappa: HK length scale. blur: entropic length scale, ``eps = (blur/kappa)**2``
            (default ``0.05 * kappa``). debias: debiased (default) or plain ``OT_eps``.
        scaling, diameter, max_iter, tol, grad, backend, momentum, on_nonconvergence, options:
            as in :func:`torchuot.hk_distance`.
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
        diameter: float | None = None,
        max_iter: int = 1000,
        tol: float = 1e-6,
        grad: str = "envelope",
        backend: str = "auto",
        momentum: bool = True,
        on_nonconvergence: str = "warn",
        options: SinkhornOptions | None = None,
        reduction: str = "mean",
    ) -> None:
        if blur is not None and eps is not None:
            raise ValueError(
                f"give either blur (GeomLoss convention) or eps (OTT/POT), not both; got blur={blur!r} "
                f"and eps={eps!r}."
            )
        opts = SinkhornOptions.merge(options, scaling=scaling, max_iter=max_iter, tol=tol, grad=grad,
                                     momentum=momentum, on_nonconvergence=on_nonconvergence)
        super().__init__(
            reduction=reduction, options=opts, kappa=kappa, blur=blur, eps=eps, debias=debias,
            squared=squared, diameter=diameter, backend=backend,
        )

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        return _reduce(hk_distance(x, y, a, b, **self.solver_kwargs), self.reduction)  # type: ignore[arg-type]
