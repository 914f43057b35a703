"""The problem layer: a UOT problem (:class:`UOTProblem`) and the solver's options (:class:`SinkhornOptions`).

A problem says *what* is solved -- the backend that evaluates soft-mins against the cost (points,
a cost matrix or a pixel grid), the weights, the two marginal penalties, the target ``eps`` and
where its annealing starts, and whether the inputs were batched. The options say *how* it is
solved -- the eps-scaling ratio, the stopping tolerance, the iteration cap, the momentum rule, the
gradient mode, the check interval and the non-convergence policy. :func:`torchuot.solve` takes one
of each (the split of OTT-JAX's ``LinearProblem`` and ``Sinkhorn`` solver)::

    prob = UOTProblem.from_points(x, y, blur=0.05, reach=0.3)
    res = torchuot.solve(prob, SinkhornOptions(tol=1e-8))

Every solver function of the library (:func:`torchuot.sinkhorn`, :func:`torchuot.sinkhorn_from_cost`,
:func:`torchuot.sinkhorn_divergence`, ...) builds one of each from its keyword arguments, so the
arguments' conventions (see :mod:`torchuot.sinkhorn`) and their validation live here, once.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._typing import Tensor
from ._validation import as_cost_matrix, as_point_pair, as_weights, check_positive, cost_matrix_weights
from .backends import TensorizedBackend, resolve_backend
from .backends.base import Backend
from .backends.reference import CountingReference, check_reference
from .costs import CallableCost, Cost, CostLike, HKConeCost, PowerCost, SquaredEuclidean, make_cost
from .penalties import Penalty, PenaltyLike, make_penalty
from .result import NONCONVERGENCE_POLICIES

__all__ = [
    "UOTProblem",
    "SinkhornOptions",
    "GRAD_MODES",
    "resolve_eps",
    "resolve_penalties",
    "max_diameter",
    "check_costs",
    "check_coordinate_range",
]

#: Gradient modes of a solve (:attr:`SinkhornOptions.grad`).
GRAD_MODES = ("envelope", "unroll", "implicit")

#: Iterations between two convergence checks (host synchronisations) at the target eps.
CHECK_EVERY = 4


# ---------------------------------------------------------------------------- options
@dataclass(frozen=True)
class SinkhornOptions:
    """How a :class:`UOTProblem` is solved (frozen; validated on construction).

    Attributes:
        scaling: eps-scaling ratio in length units: eps shrinks by ``scaling**p`` a stage, from the
            problem's :attr:`UOTProblem.eps_start` down to its ``eps``; in ``(0, 1)``.
        max_iter: iteration cap (annealing stages included); a positive int.
        tol: stop when the sup-norm change of the potentials is ``<= tol * eps`` (or the dtype's
            resolution); positive.
        grad: ``"envelope"`` (default), ``"implicit"`` or ``"unroll"`` (see :func:`torchuot.sinkhorn`).
        momentum: ``True`` (the default :class:`~torchuot.sinkhorn.AdaptiveMomentum` rule),
            ``False`` (plain Sinkhorn iterations) or an ``AdaptiveMomentum`` instance (e.g. a
            subclass with other constants): a template, copied fresh for every solve.
        check_every: iterations between two convergence checks (host synchronisations) at the
            target eps; a positive int.
        on_nonconvergence: ``"warn"`` (default), ``"raise"`` or ``"ignore"``.

    Raises:
        TypeError / ValueError: a field of the wrong type or out of range (the message names it).
    """

    scaling: float = 0.5
    max_iter: int = 1000
    tol: float = 1e-6
    grad: str = "envelope"
    momentum: Any = True
    check_every: int = CHECK_EVERY
    on_nonconvergence: str = "warn"

    def __post_init__(self) -> None:
        for name in ("max_iter", "check_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise TypeError(f"{name} must be a positive int (not a bool), got {v!r}.")
            if v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        check_policy(self.on_nonconvergence)
        check_positive(self.tol, "tol")
        if self.grad not in GRAD_MODES:
            raise ValueError(f"grad must be one of {GRAD_MODES}, got {self.grad!r}.")
        s = self.scaling
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 < s < 1:
            raise ValueError(f"scaling must lie in (0, 1), got {s!r}.")
        from .sinkhorn import AdaptiveMomentum  # the rule lives with the loop that runs it

        if not isinstance(self.momentum, (bool, AdaptiveMomentum)):
            raise TypeError(
                "momentum must be True, False or an AdaptiveMomentum instance (a template copied for "
                f"each solve), got {self.momentum!r}."
            )

    @classmethod
    def merge(cls, options: SinkhornOptions | None, *, defaults: dict[str, Any] | None = None,
              **given: Any) -> SinkhornOptions:
        """``options`` with the solver keyword arguments of a function (their values as called).

        Without ``options`` the arguments build a new :class:`SinkhornOptions`. With ``options``,
        an argument left at its default yields to ``options``, and an argument set to anything
        else must agree with it: a conflict raises (no silent precedence).

        Args:
            options: ``None`` or a :class:`SinkhornOptions`.
            defaults: the calling function's defaults where they differ from this class's (e.g.
                the minibatch couplings' ``tol=1e-3``).
            **given: the function's loop arguments as called (``max_iter=...``, ``tol=...``).

        Raises:
            TypeError: ``options`` is not a :class:`SinkhornOptions`.
            ValueError: an explicit argument disagrees with the same field of ``options``.
        """
        if options is None:
            return cls(**given)
        if not isinstance(options, cls):
            raise TypeError(f"options must be a torchuot.SinkhornOptions, got {type(options)!r}.")
        base = {f.name: f.default for f in dataclasses.fields(cls)}
        base.update(defaults or {})
        for name, v in given.items():
            want = getattr(options, name)
            if not _same(v, base[name]) and not _same(v, want):
                raise ValueError(
                    f"{name}={v!r} conflicts with options.{name}={want!r}: give {name} either as an "
                    "argument or in options, not both (or make them agree)."
                )
        return options


def check_policy(policy: object) -> str:
    """``policy`` if it is one of ``NONCONVERGENCE_POLICIES`` (``"warn"``, ``"raise"``, ``"ignore"``)."""
    if policy not in NONCONVERGENCE_POLICIES:
        raise ValueError(
            f"on_nonconvergence must be one of {NONCONVERGENCE_POLICIES}, got {policy!r}."
        )
    return policy  # type: ignore[return-value]


def _same(u: object, v: object) -> bool:
    """``u == v`` for option values (a bool and a number are never the same)."""
    if isinstance(u, bool) != isinstance(v, bool):
        return False
    try:
        return bool(u == v)
    except Exception:  # noqa: BLE001 - incomparable values differ
        return u is v


# ---------------------------------------------------------------------------- problem
@dataclass(frozen=True)
class UOTProblem:
    """An entropic unbalanced OT problem ``min_pi <pi, C> + eps KL(pi | R) + D_a + D_b``.

    ``R`` is the entropy's reference measure: ``a x b`` (``reference="product"``, the default:
    GeomLoss, POT ``reg_type="kl"``) or the counting measure ``1`` (``reference="counting"``: the
    plain entropy of OTT-JAX's unbalanced Sinkhorn and POT ``reg_type="entropy"``). With unequal
    weights the two give different plans when a side is unbalanced (balanced problems share
    their plan); see :mod:`torchuot.backends.reference`.

    Built by :meth:`from_points`, :meth:`from_cost` or :meth:`on_grid` (which validate their
    arguments and resolve the parameter conventions), or directly from a built backend.

    Attributes:
        ops: the backend (:class:`~torchuot.backends.base.Backend`): soft-mins against the cost,
            the weights ``ops.a: (B, N)``, ``ops.b: (B, M)`` and plan accessors.
        penalty_a, penalty_b: the marginal penalties ``D_a``, ``D_b``.
        eps: the target entropic regularisation (cost units).
        eps_start: where the eps annealing starts (the largest relevant cost: ``diameter**p`` for
            points, the largest finite ``|C|`` for a cost matrix); ``<= eps`` means no annealing.
        p: the exponent of the schedule: eps shrinks by ``scaling**p`` a stage.
        batched: whether the caller's inputs were batched (results are unbatched otherwise).
        cost: the ground cost object (``None`` for a problem stated by its grid backend).
        symmetric: an ``OT(a, a)`` problem (``x = y``, ``a = b``, ``penalty_a = penalty_b``),
            solved by the symmetric averaged update and returning ``g = f``.
        backend_request: the backend asked for (``"auto"``, a name or a ``Multiscale``); used by
            :meth:`self_problem` to build the ``OT(a, a)`` / ``OT(b, b)`` problems alike.
        reference: ``"product"`` or ``"counting"`` (see above); for ``"counting"`` ``ops`` is a
            :class:`~torchuot.backends.reference.CountingReference` over the cost's backend.
    """

    ops: Backend
    penalty_a: Penalty
    penalty_b: Penalty
    eps: float
    eps_start: float
    p: float = 2.0
    batched: bool = True
    cost: Cost | None = None
    symmetric: bool = False
    backend_request: Any = "auto"
    reference: str = "product"

    @property
    def a(self) -> Tensor:
        """``(B, N)`` source weights."""
        return self.ops.a

    @property
    def b(self) -> Tensor:
        """``(B, M)`` target weights."""
        return self.ops.b

    @property
    def is_balanced(self) -> bool:
        """Both penalties are balanced (hard marginal constraints)."""
        return self.penalty_a.is_balanced and self.penalty_b.is_balanced

    @classmethod
    def from_points(
        cls,
        x: Tensor,
        y: Tensor,
        a: Tensor | None = None,
        b: Tensor | None = None,
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
        diameter: float | None = None,
        backend: Any = "auto",
        reference: str = "product",
    ) -> UOTProblem:
        """The problem between two weighted point clouds (arguments as :func:`torchuot.sinkhorn`).

        Args:
            x: ``(N, D)`` or ``(B, N, D)`` source points. y: ``(M, D)`` / ``(B, M, D)`` targets.
            a, b: ``(N,)`` / ``(B, N)`` and ``(M,)`` / ``(B, M)`` weights (default uniform).
            cost, p: the ground cost (default ``|x - y|^p / p``).
            blur, eps: entropic regularisation, one of them (default ``blur = 0.05``).
            reach, rho, reg_m, tau_a, tau_b: penalty strength in one convention (default balanced).
            penalty: ``"kl"``, ``"tv"``, ``"balanced"``, a Penalty, or a pair per side.
            diameter: largest distance in the data (default: the joint bounding box's diagonal).
            backend: ``"auto"``, ``"tensorized"``, ``"online"``, ``"chunked"``, ``"multiscale"`` or a
                :class:`~torchuot.backends.Multiscale`.
            reference: the entropy's reference measure, ``"product"`` (``KL(pi | a x b)``) or
                ``"counting"`` (``KL(pi | 1)``, OTT-JAX's convention).

        Raises:
            ValueError / TypeError: bad inputs, mixed conventions, unequal masses of a balanced
                problem, coordinates that overflow, infeasible or non-finite costs.
        """
        check_reference(reference)
        xb, yb, batched = as_point_pair(x, y)
        ab = as_weights(a, xb, "a", "x")
        bb = as_weights(b, yb, "b", "y")
        cost_obj = make_cost(cost, p=p)
        eps_f = resolve_eps(cost_obj, blur, eps)
        pen_a, pen_b = resolve_penalties(
            cost_obj, eps_f, reach=reach, rho=rho, reg_m=reg_m, tau_a=tau_a, tau_b=tau_b, penalty=penalty
        )
        if pen_a.is_balanced and pen_b.is_balanced:
            _check_balanced_masses(ab, bb)
        check_coordinate_range(xb, yb, cost_obj)
        ops = resolve_backend(backend, xb, yb, ab, bb, cost_obj)
        check_costs(ops, cost_obj, pen_a, pen_b)
        if diameter is None and cost_obj.name == "callable":
            fin = ops.C[torch.isfinite(ops.C)]  # type: ignore[attr-defined]
            start = float(fin.max()) if fin.numel() else eps_f
        else:
            diam = max_diameter(xb, yb) if diameter is None else check_positive(diameter, "diameter")
            start = cost_obj.eps_start(diam)  # type: ignore[arg-type]
        return cls(_with_reference(ops, reference, eps_f), pen_a, pen_b, eps_f, start, cost_obj.p,
                   batched, cost_obj, False, backend, reference)

    @classmethod
    def from_cost(
        cls,
        C: Tensor,
        a: Tensor | None = None,
        b: Tensor | None = None,
        *,
        eps: float,
        rho: object = None,
        reg_m: object = None,
        tau_a: float | None = None,
        tau_b: float | None = None,
        penalty: PenaltyLike | Sequence[PenaltyLike] = "kl",
        reference: str = "product",
    ) -> UOTProblem:
        """The problem stated by a cost matrix, POT style (arguments as :func:`torchuot.sinkhorn_from_cost`).

        Args:
            C: ``(N, M)`` or ``(B, N, M)`` costs (a NumPy array is accepted); ``+inf`` forbids a pair.
            a, b: ``(N,)`` / ``(B, N)`` and ``(M,)`` / ``(B, M)`` weights (default uniform).
            eps: entropic regularisation in the units of ``C`` (POT's ``reg``).
            rho, reg_m, tau_a, tau_b: penalty strength in one convention (default balanced);
                ``reg_m`` may be POT's one- or two-element list / array.
            penalty, reference: as in :meth:`from_points` (POT's ``reg_type="kl"`` is
                ``reference="product"``, ``reg_type="entropy"`` is ``"counting"``).

        The annealing starts at the largest finite ``|C|`` (exponent 2: eps shrinks by
        ``scaling**2`` a stage).
        """
        check_reference(reference)
        C, a, b = _as_array_input(C), _as_array_input(a), _as_array_input(b)
        reg_m = _pot_reg_m(reg_m)
        Cb, batched = as_cost_matrix(C)
        ab, bb = cost_matrix_weights(a, b, Cb)
        cost_obj = SquaredEuclidean()  # only its exponent 2 is used (the scaling convention)
        eps_f = check_positive(eps, "eps")
        pen_a, pen_b = resolve_penalties(cost_obj, eps_f, rho=rho, reg_m=reg_m, tau_a=tau_a, tau_b=tau_b,
                                         penalty=penalty)
        if pen_a.is_balanced and pen_b.is_balanced:
            _check_balanced_masses(ab, bb)
        finite = torch.isfinite(Cb)
        for pen, w, reach_any, side, what in ((pen_a, ab, finite.any(2), "source", "row"),
                                              (pen_b, bb, finite.any(1), "target", "column")):
            if pen.is_balanced and bool(((w > 0) & ~reach_any).any()):
                raise ValueError(
                    f"C has a {what} of +inf costs whose {side} weight is positive, but the {side} side "
                    "is balanced: that mass cannot be transported. Give it a finite cost somewhere, a "
                    "zero weight, or an unbalanced penalty (rho / reg_m / tau) on that side."
                )
        ops = TensorizedBackend(None, None, ab, bb, cost_obj, C=Cb)
        fin = Cb.detach()[finite]
        start = float(fin.abs().max()) if fin.numel() else eps_f
        return cls(_with_reference(ops, reference, eps_f), pen_a, pen_b, eps_f, start, 2.0, batched,
                   None, False, "tensorized", reference)

    @classmethod
    def on_grid(
        cls,
        a: Tensor,
        b: Tensor,
        shape: tuple[int, int],
        *,
        cost: str = "sqeuclidean",
        spacing: float = 1.0,
        kappa: float | None = None,
        eps: float,
        penalty: Penalty,
        symmetric: bool = False,
        exp_dtype: torch.dtype | None = None,
        diameter: float | None = None,
    ) -> UOTProblem:
        """Batches of pairs of images on one pixel grid (:class:`~torchuot.backends.GridPairsBackend`).

        Args:
            a: ``(B, H * W)`` source images' weights. b: ``(B, H * W)`` target images' weights.
            shape: the grid ``(H, W)``.
            cost: ``"sqeuclidean"`` (``|x - y|^2 / 2``, a separable kernel) or ``"hk"`` (the HK cone
                cost with length scale ``kappa``, a sparse stencil).
            spacing: distance between neighbouring pixels.
            eps: entropic regularisation (cost units). penalty: one penalty for both sides.
            symmetric: ``OT(a, a)`` blocks (``a`` and ``b`` the same images).
            exp_dtype: dtype of the kernel products (default the weights' dtype).
            diameter: where the annealing starts, as a length (default the grid's diagonal
                ``hypot(H - 1, W - 1) * spacing``): ``diameter**2`` for the squared Euclidean cost,
                the cone cost's value there for HK.
        """
        from .backends.grid import GridPairsBackend

        if cost not in ("sqeuclidean", "hk"):
            raise ValueError(f"cost must be 'sqeuclidean' or 'hk' on a grid, got {cost!r}.")
        if not isinstance(penalty, Penalty):
            raise TypeError(f"penalty must be a torchuot Penalty object on a grid, got {penalty!r}.")
        H, W = shape
        cost_obj: Cost
        if cost == "hk":
            if kappa is None:
                raise ValueError("cost='hk' needs kappa (the HK length scale, in the grid's units).")
            cost_obj = HKConeCost(check_positive(kappa, "kappa"))  # type: ignore[arg-type]
        else:
            cost_obj = SquaredEuclidean()
        eps_f = check_positive(eps, "eps")
        ops = GridPairsBackend(a, b, (H, W), kind="stencil" if cost == "hk" else "separable",
                               spacing=spacing, kappa=kappa if cost == "hk" else None,
                               exp_dtype=a.dtype if exp_dtype is None else exp_dtype)
        diam = (math.hypot(H - 1, W - 1) * spacing if diameter is None
                else check_positive(diameter, "diameter"))
        start = cost_obj.eps_start(diam)  # type: ignore[arg-type]
        return cls(ops, penalty, penalty, eps_f, start, cost_obj.p, True, cost_obj, symmetric, "grid")

    def self_problem(self, side: str) -> UOTProblem:
        """The symmetric problem ``OT(a, a)`` (``side="a"``) or ``OT(b, b)`` (``side="b"``) of a
        point-cloud problem: the same cost, backend request and eps schedule, that side's penalty on
        both sides (the self terms of the debiased divergence)."""
        if side not in ("a", "b"):
            raise ValueError(f"side must be 'a' or 'b', got {side!r}.")
        pts, w = (self.ops.x, self.ops.a) if side == "a" else (self.ops.y, self.ops.b)
        if pts is None or self.cost is None:
            raise ValueError("self_problem needs a problem built from points (UOTProblem.from_points).")
        pen = self.penalty_a if side == "a" else self.penalty_b
        ops = resolve_backend(self.backend_request, pts, pts, w, w, self.cost)
        check_costs(ops, self.cost, pen, pen)
        return dataclasses.replace(self, ops=_with_reference(ops, self.reference, self.eps),
                                   penalty_a=pen, penalty_b=pen, symmetric=True)


def _with_reference(ops: Backend, reference: str, eps: float) -> Backend:
    """``ops`` for ``reference="product"``; the shifted-cost wrapper for ``"counting"``."""
    return CountingReference(ops, eps) if reference == "counting" else ops  # type: ignore[return-value]


# ---------------------------------------------------------------------------- conventions and checks
def resolve_eps(cost: Cost, blur: float | None, eps: float | None) -> float:
    """``eps`` from exactly one of ``blur`` (GeomLoss, ``eps = blur**p``) or ``eps`` (OTT/POT)."""
    if blur is not None and eps is not None:
        raise ValueError("give either blur (GeomLoss convention) or eps (OTT/POT), not both.")
    if eps is not None:
        return check_positive(eps, "eps")  # type: ignore[return-value]
    blur = 0.05 if blur is None else blur
    blur = check_positive(blur, "blur")
    return float(blur) ** cost.p  # type: ignore[operator]


def _pair(v: object) -> tuple[object, object]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"expected one value or a pair (source, target), got {v!r}.")
        return v[0], v[1]
    return v, v


def resolve_penalties(
    cost: Cost,
    eps: float,
    *,
    reach: object = None,
    rho: object = None,
    reg_m: object = None,
    tau_a: float | None = None,
    tau_b: float | None = None,
    penalty: PenaltyLike | Sequence[PenaltyLike] = "kl",
) -> tuple[Penalty, Penalty]:
    """Build the two marginal penalties from any one convention.

    Args:
        reach: GeomLoss length, ``rho = reach**p``; a float, ``None`` (balanced) or a pair.
        rho: penalty strength in cost units; a float, ``inf`` or a pair.
        reg_m: POT's name for ``rho`` (a float or a pair).
        tau_a, tau_b: OTT's ``tau = rho / (rho + eps)`` in ``(0, 1]``; 1 is balanced.
        penalty: ``"kl"``, ``"tv"``, ``"balanced"``, a :class:`Penalty`, or a pair of those.
    """
    given = [n for n, v in (("reach", reach), ("rho", rho), ("reg_m", reg_m)) if v is not None]
    if tau_a is not None or tau_b is not None:
        given.append("tau_a/tau_b")
    if len(given) > 1:
        raise ValueError(
            f"give the marginal penalty strength in one convention only, got {', '.join(given)}."
        )
    pen_a, pen_b = _pair(penalty)
    if rho is None and reg_m is not None:
        rho = reg_m
    if reach is not None:
        ra, rb = _pair(reach)
        rho_a = None if ra is None else check_positive(ra, "reach", allow_inf=True) ** cost.p
        rho_b = None if rb is None else check_positive(rb, "reach", allow_inf=True) ** cost.p
    elif rho is not None:
        ra, rb = _pair(rho)
        rho_a = None if ra is None else check_positive(ra, "rho", allow_inf=True)
        rho_b = None if rb is None else check_positive(rb, "rho", allow_inf=True)
    elif tau_a is not None or tau_b is not None:
        rho_a, rho_b = _tau_to_rho(tau_a, eps, "tau_a"), _tau_to_rho(tau_b, eps, "tau_b")
    else:
        # Nothing given: each side is what its penalty object says (names alone mean balanced).
        rho_a = rho_b = None
    return _make(pen_a, rho_a), _make(pen_b, rho_b)


def _make(pen: PenaltyLike, rho: float | None) -> Penalty:
    if isinstance(pen, Penalty):
        if rho is not None:
            raise ValueError("pass the penalty strength inside the Penalty object, not twice.")
        return pen
    return make_penalty(pen, rho)


def _tau_to_rho(tau: float | None, eps: float, name: str) -> float | None:
    if tau is None:
        return None
    t = check_positive(tau, name)
    if t > 1:  # type: ignore[operator]
        raise ValueError(f"{name} must lie in (0, 1] (OTT convention tau = rho/(rho+eps)), got {tau!r}.")
    if t == 1:
        return None
    return eps * t / (1 - t)  # type: ignore[operator]


def max_diameter(x: Tensor, y: Tensor) -> float:
    """Diagonal of the joint bounding box of ``x: (B, N, D)`` and ``y: (B, M, D)``."""
    pts = torch.cat([x.detach().reshape(-1, x.shape[-1]), y.detach().reshape(-1, y.shape[-1])])
    return float((pts.amax(0) - pts.amin(0)).norm())


def _check_balanced_masses(a: Tensor, b: Tensor) -> None:
    ma, mb = a.sum(-1), b.sum(-1)
    if not torch.allclose(ma, mb, rtol=1e-4, atol=0):
        raise ValueError(
            "balanced OT needs equal total masses, got m(a) = "
            f"{ma.detach().cpu().tolist()} and m(b) = {mb.detach().cpu().tolist()}; normalise "
            "the weights or set reach / rho / tau for an unbalanced problem."
        )


def check_coordinate_range(x: Tensor, y: Tensor, cost: Cost) -> None:
    """Refuse coordinates whose built-in cost overflows the dtype (``|x - y|^2`` is formed from
    centred squared norms, each up to the squared diameter); user callables are checked on their
    output instead (:func:`check_costs`)."""
    if isinstance(cost, CallableCost):
        return
    with torch.no_grad():
        pts = torch.cat([x.reshape(-1, x.shape[-1]), y.reshape(-1, y.shape[-1])])
        span = (pts.amax(0).double() - pts.amin(0).double()).abs()
        top = float(span.max())
        diam = top * float(torch.linalg.vector_norm(span / top)) if top > 0 else 0.0
    if diam == 0.0:
        return
    log_max = math.log(torch.finfo(x.dtype).max)
    p = cost.p if isinstance(cost, PowerCost) else 2.0
    if not math.isfinite(diam) or max(2 * math.log(diam) + math.log(4), p * math.log(diam)) >= log_max:
        raise ValueError(
            f"the squared distances between x and y overflow {x.dtype} (the points span a distance "
            f"of {diam:.3g}): rescale the coordinates (and blur / reach with them)"
            + (", or use float64." if x.dtype != torch.float64 else ".")
        )


def check_costs(ops, cost: Cost, pen_a: Penalty, pen_b: Penalty) -> None:
    """Check the ground cost before solving, the same way on every backend.

    A user callable must not return NaN or ``-inf`` (``+inf`` forbids a pair); where costs can be
    ``+inf`` (callables, the HK cone cost past ``kappa * pi / 2``), every point of a balanced side
    with positive weight needs a finite-cost partner of positive weight, else the problem is
    infeasible. Dense costs are read directly; lazy backends take one log-domain soft-min of zero
    potentials (``+inf`` exactly on the rows with no partner, NaN / ``-inf`` where the cost is).
    """
    user = isinstance(cost, CallableCost)
    if not (user or isinstance(cost, HKConeCost)):
        return
    C = ops.C if isinstance(ops, TensorizedBackend) else None
    with torch.no_grad():
        scan = _cost_scan(ops, cost, C) if C is not None or user else None  # lazy: may mask NaN
        for side, pen, w, w_other in (("source", pen_a, ops.a, ops.b), ("target", pen_b, ops.b, ops.a)):
            if not (pen.is_balanced or (user and side == "source")):
                continue
            if scan is not None:
                bad_value, reach = scan[0], scan[1] if side == "source" else scan[2]
            else:  # HK cone cost on a lazy backend: one soft-min of zero potentials
                zeros = torch.zeros_like(w_other)
                soft = ops.softmin_x_autograd if side == "source" else ops.softmin_y_autograd
                S = soft(1.0, zeros)
                bad_value = bool((torch.isnan(S) | torch.isneginf(S)).any())
                reach = ~torch.isposinf(S)
            if bad_value:
                raise ValueError(
                    f"the cost callable {cost!r} returned NaN or -inf entries; costs must be finite, "
                    "or +inf to forbid a pair. Check it for overflow or invalid operations."
                )
            if pen.is_balanced:
                lost = ((w > 0) & ~reach).nonzero()
                if lost.numel():
                    bi, i = (int(t) for t in lost[0])
                    where = f"point {i}" + (f" of batch entry {bi}" if w.shape[0] > 1 else "")
                    hint = (" or a larger kappa (HK moves mass at most kappa * pi / 2)"
                            if isinstance(cost, HKConeCost) else "")
                    more = f" (and {lost.shape[0] - 1} more)" if lost.shape[0] > 1 else ""
                    raise ValueError(
                        f"infeasible problem: the {side} side is balanced but its {where}{more} has "
                        "no finite-cost partner with positive weight, "
                        "so its mass cannot be transported. Use an unbalanced penalty on that side "
                        f"(reach / rho / tau){hint}, or give that point zero weight."
                    )


def _cost_scan(ops, cost: Cost, C: Tensor | None) -> tuple[bool, Tensor, Tensor]:
    """Read the cost values (``C``, or the points' cost in row blocks of at most 2**24 entries:
    nothing ``N x M`` is kept) -> (any NaN / ``-inf``, rows ``(B, N)`` and columns ``(B, M)`` with a
    finite cost to some point of positive weight)."""
    live_a, live_b = (ops.a > 0).unsqueeze(2), (ops.b > 0).unsqueeze(1)
    if C is not None:
        blocks = [(0, C)]
    else:
        x, y = ops.x.detach(), ops.y.detach()
        step = max(1, 2**24 // max(1, x.shape[0] * y.shape[1]))
        blocks = ((i, cost(x[:, i:i + step], y)) for i in range(0, x.shape[1], step))
    bad, rows, cols = False, [], torch.zeros_like(ops.b, dtype=torch.bool)
    for i, Cb in blocks:
        bad = bad or bool((torch.isnan(Cb) | torch.isneginf(Cb)).any())
        fin = torch.isfinite(Cb)
        rows.append((fin & live_b).any(-1))
        cols |= (fin & live_a[:, i:i + Cb.shape[1]]).any(1)
    return bad, torch.cat(rows, 1), cols


def _as_array_input(v: object) -> object:
    """POT-style inputs: a NumPy array becomes a tensor (its dtype kept); anything else is kept."""
    return torch.as_tensor(v) if isinstance(v, np.ndarray) else v


def _pot_reg_m(reg_m: object) -> object:
    """POT's ``reg_m``: a number, or a one- or two-element list / array (one value per side)."""
    if isinstance(reg_m, torch.Tensor) and reg_m.dim() > 0:
        reg_m = reg_m.detach().cpu().numpy()
    if isinstance(reg_m, (list, tuple, np.ndarray)):
        vals = [None if v is None else float(v) for v in np.asarray(reg_m, dtype=object).reshape(-1)]
        if len(vals) == 1:
            return vals[0]
        if len(vals) == 2:
            return (vals[0], vals[1])
        raise ValueError(f"reg_m must be a number or one value per side (two), got {len(vals)} values.")
    return reg_m
