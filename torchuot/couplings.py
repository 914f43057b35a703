"""Minibatch couplings for flow matching: pair a source batch with a target batch by a plan.

Given ``x0: (n, ...)`` and ``x1: (m, ...)`` (flattened to ``(n, D)``, ``(m, D)`` for the cost),
:class:`PlanSampler` builds a plan between the two uniform empirical measures and draws index
pairs ``(i, j)`` from it:

* ``"independent"``: the product plan ``a x b`` (plain conditional flow matching);
* ``"ot"``: the entropic balanced plan (OT-CFM, Tong et al. 2024; Pooladian et al. 2023);
* ``"uot"``: the entropic unbalanced plan with KL marginal penalties (UOT-FM, Eyring et al.,
  ICLR 2024): each side's marginal may deviate from uniform, so a source sample with no
  counterpart of its kind in the target batch is down-weighted instead of forced onto a
  wrong match;
* ``"exact"``: the unregularised plan from POT's network simplex (``ot.emd``; optional
  dependency, leaves the device and is meant for small checks, not the hot path).

Conventions: the cost is ``|x - y|^2 / 2`` (torchuot's default); with ``normalize_cost="mean"``
it is divided by its mean over the batch, as OTT-JAX's ``scale_cost="mean"`` does in the
reference UOT-FM code (so ``eps = 0.01``, ``tau_a = 0.9``, ``tau_b = 1.0`` carry over unchanged;
the ``1/2`` cancels). The normalised cost matrix is built once and handed to the dense backend
(its epsilon schedule starts at the largest normalised cost). Unbalancedness is given in OTT's
``tau = rho / (rho + eps)`` (``1`` is a balanced side) or GeomLoss's ``reach``
(``rho = reach**2``, in normalised cost units).

The plan is solved by torchuot's Sinkhorn loop (the dense backend) on the batch's device; sampling uses
``torch.multinomial`` with an optional ``torch.Generator``; nothing goes through NumPy except
for ``method="exact"``. A plan that underflows (zero or non-finite mass) is never replaced by
the uniform plan silently: it raises, or with ``on_failure="warn"`` falls back to independent
pairs with a warning.
"""

from __future__ import annotations

import importlib
import math
import warnings
from dataclasses import dataclass

import torch

from ._typing import Tensor
from ._validation import check_positive
from .backends import TensorizedBackend
from .costs import SquaredEuclidean
from .problem import SinkhornOptions, UOTProblem, resolve_penalties
from .sinkhorn import check_convergence, solve_potentials

__all__ = ["PlanSampler", "CouplingSample", "COUPLING_METHODS", "pairwise_cost"]

COUPLING_METHODS = ("independent", "ot", "uot", "exact")

_COST = SquaredEuclidean()


@dataclass(frozen=True)
class CouplingSample:
    """Index pairs drawn from a minibatch plan.

    Attributes:
        i: ``(k,)`` source indices. j: ``(k,)`` target indices.
        weight_a: ``(n,)`` source marginal of the normalised plan (sums to 1); for ``"uot"``
            it shows how much each source sample is re-weighted (``n * weight_a`` is 1 for
            an unchanged sample).
        weight_b: ``(m,)`` target marginal of the normalised plan.
        n_iters: Sinkhorn iterations (0 for ``"independent"`` and ``"exact"``).
        converged: whether the solver met its tolerance (True when no solver ran).
    """

    i: Tensor
    j: Tensor
    weight_a: Tensor
    weight_b: Tensor
    n_iters: int = 0
    converged: bool = True


def pairwise_cost(x0: Tensor, x1: Tensor) -> Tensor:
    """``C_ij = |x0_i - x1_j|^2 / 2`` for flattened ``x0: (n, D)``, ``x1: (m, D)`` -> ``(n, m)``."""
    half_sq = 0.5 * ((x0 * x0).sum(-1, keepdim=True) + (x1 * x1).sum(-1).unsqueeze(0))
    # |x|^2/2 + |y|^2/2 - <x, y>, the product accumulated into the buffer by the GEMM itself.
    return torch.addmm(half_sq, x0, x1.T, alpha=-1.0).clamp_min_(0.0)


class PlanSampler:
    """Pair minibatches by an (unbalanced) optimal transport plan.

    Args:
        method: ``"independent"``, ``"ot"``, ``"uot"`` or ``"exact"``.
        eps: entropic regularisation in (normalised) cost units (OTT/POT convention).
        tau_a, tau_b: OTT's marginal relaxation ``tau = rho / (rho + eps)`` in ``(0, 1]``
            for ``"uot"`` (1 is balanced). Ignored unless ``method == "uot"``.
        reach: GeomLoss-style reach instead of ``tau_a``/``tau_b`` (``rho = reach**2``); a
            float or a pair ``(source, target)`` with ``None`` for a balanced side. Giving it
            with ``tau_a``/``tau_b`` other than their defaults raises (one convention only).
        normalize_cost: ``"mean"`` (divide the cost by its mean, as the references do),
            ``"max"`` or ``None``.
        max_iter: Sinkhorn iteration cap. A training step needs a plan good to a few
            percent, not to machine precision; 200 is plenty with ``tol=1e-3``.
        tol: stopping tolerance on the potentials' sup-norm change, relative to ``eps``. The
            default ``1e-3`` is coupling-specific (the solver's is ``1e-6``): on float32 MNIST
            batches (n = 64 to 1024, eps = 0.01) it leaves an L1 error of the normalised plan
            of about 1e-5 against the converged float64 plan, the float32 floor (tighter
            tolerances do not lower it); ``benchmarks/bench_coupling.py`` reports it.
        scaling: eps-scaling ratio (see :func:`torchuot.sinkhorn`).
        replace: draw the ``k`` pairs with replacement (TorchCFM's default). Without
            replacement ``k`` may not exceed the number of non-zero entries of the plan.
        on_failure: ``"raise"`` (default) or ``"warn"`` (fall back to independent pairs with a
            warning) when the plan underflows or is not finite.
        on_nonconvergence: ``"warn"`` (default), ``"raise"`` or ``"ignore"`` when the Sinkhorn
            solve stops unconverged (as in :func:`torchuot.sinkhorn`; with this sampler's ``tol``,
            the marginal tolerance is ``1e-2``).
        options: a :class:`~torchuot.SinkhornOptions` for the solve instead of ``max_iter``,
            ``tol``, ``scaling`` and ``on_nonconvergence`` (which then must be left at this
            sampler's defaults or agree with it; a conflict raises). Gives access to
            ``momentum`` and ``check_every``; ``grad`` is irrelevant (the plan is sampled).
    """

    def __init__(
        self,
        method: str = "uot",
        *,
        eps: float = 0.01,
        tau_a: float = 0.9,
        tau_b: float = 1.0,
        reach: float | tuple[float | None, float | None] | None = None,
        normalize_cost: str | None = "mean",
        max_iter: int = 200,
        tol: float = 1e-3,
        scaling: float = 0.5,
        replace: bool = True,
        on_failure: str = "raise",
        on_nonconvergence: str = "warn",
        options: SinkhornOptions | None = None,
    ) -> None:
        if method not in COUPLING_METHODS:
            raise ValueError(f"method must be one of {COUPLING_METHODS}, got {method!r}.")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps > 0):
            raise ValueError(f"eps must be a positive finite float, got {eps!r}.")
        for name, tau in (("tau_a", tau_a), ("tau_b", tau_b)):
            if not (isinstance(tau, (int, float)) and 0 < tau <= 1):
                raise ValueError(f"{name} must lie in (0, 1] (OTT convention, 1 = balanced), got {tau!r}.")
        if normalize_cost not in (None, "mean", "max"):
            raise ValueError(f"normalize_cost must be 'mean', 'max' or None, got {normalize_cost!r}.")
        if on_failure not in ("raise", "warn"):
            raise ValueError(f"on_failure must be 'raise' or 'warn', got {on_failure!r}.")
        opts = SinkhornOptions.merge(
            options, defaults=dict(max_iter=200, tol=1e-3), max_iter=max_iter, tol=tol,
            scaling=scaling, on_nonconvergence=on_nonconvergence,
        )
        if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not 0 < scaling < 1:
            raise ValueError(f"scaling must lie in (0, 1) (eps-scaling ratio), got {scaling!r}.")
        if not isinstance(replace, bool):
            raise TypeError(f"replace must be a bool, got {type(replace)!r}.")
        if reach is not None and (tau_a, tau_b) != (0.9, 1.0):
            raise ValueError(
                f"give the marginal relaxation in one convention only: reach={reach!r} (GeomLoss) or "
                f"tau_a={tau_a!r} / tau_b={tau_b!r} (OTT), not both (leave tau_a, tau_b at their "
                "defaults when giving reach)."
            )
        if reach is not None:
            for r in (reach if isinstance(reach, (tuple, list)) else (reach,)):
                if r is not None:
                    check_positive(r, "reach", allow_inf=True)
            if isinstance(reach, (tuple, list)) and len(reach) != 2:
                raise ValueError(f"reach must be a number or a pair (source, target), got {reach!r}.")
        self.method = method
        self.eps = float(eps)
        self.tau_a = float(tau_a)
        self.tau_b = float(tau_b)
        self.reach = tuple(reach) if isinstance(reach, list) else reach
        self.normalize_cost = normalize_cost
        self.options = opts
        self.max_iter = opts.max_iter
        self.tol = float(opts.tol)
        self.scaling = float(opts.scaling)
        self.replace = bool(replace)
        self.on_failure = on_failure
        self.on_nonconvergence = opts.on_nonconvergence

    def __repr__(self) -> str:
        extra = ""
        if self.method == "uot":
            extra = (
                f", reach={self.reach}"
                if self.reach is not None
                else (f", tau_a={self.tau_a}, tau_b={self.tau_b}")
            )
        norm = self.normalize_cost
        return f"PlanSampler(method={self.method!r}, eps={self.eps}{extra}, normalize_cost={norm!r})"

    @property
    def _solve_options(self) -> SinkhornOptions:
        """The solve's options from the current attributes (the plan is sampled: envelope mode)."""
        return SinkhornOptions(scaling=self.scaling, max_iter=self.max_iter, tol=self.tol,
                               momentum=self.options.momentum, check_every=self.options.check_every,
                               on_nonconvergence=self.on_nonconvergence)

    # ------------------------------------------------------------------ inputs
    @staticmethod
    def _flatten(x0: Tensor, x1: Tensor) -> tuple[Tensor, Tensor]:
        for name, x in (("x0", x0), ("x1", x1)):
            if not isinstance(x, torch.Tensor):
                raise TypeError(f"{name} must be a torch.Tensor of shape (n, ...), got {type(x)!r}.")
            if x.dim() < 2 or x.shape[0] == 0:
                raise ValueError(
                    f"{name} must have shape (n, ...) with n >= 1 samples, got {tuple(x.shape)}."
                )
            if not x.is_floating_point():
                raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}.")
        f0, f1 = x0.detach().reshape(x0.shape[0], -1), x1.detach().reshape(x1.shape[0], -1)
        if f0.shape[1] != f1.shape[1]:
            raise ValueError(
                f"x0 and x1 must have the same number of features per sample, got {tuple(x0.shape)} "
                f"and {tuple(x1.shape)}."
            )
        if f0.device != f1.device:
            raise ValueError(f"x0 is on {f0.device} but x1 is on {f1.device}; use one device.")
        if f1.dtype != f0.dtype:
            f1 = f1.to(f0.dtype)
        return f0, f1

    def _cost(self, f0: Tensor, f1: Tensor) -> tuple[Tensor, Tensor]:
        """The cost ``|x-y|^2/2`` divided by its mean (or max) -> ``(C, s)`` with ``C = C_raw / s``.

        Raises:
            ValueError: ``x0`` or ``x1`` holds NaN or inf (checked on the cost, one reduction).
        """
        C = pairwise_cost(f0, f1)
        s = C.mean() if self.normalize_cost in (None, "mean") else C.max()
        if not bool(torch.isfinite(s)):
            name = "x0" if not bool(torch.isfinite(f0).all()) else "x1"
            raise ValueError(f"{name} contains NaN or inf values; clean or drop those samples.")
        if self.normalize_cost is None or not bool(s > 0):
            # No normalisation asked, or all samples coincide (any plan is optimal): raw cost.
            return C, C.new_ones(())
        return C.div_(s), s

    # ------------------------------------------------------------------ plans
    def _solve(self, f0: Tensor, f1: Tensor) -> tuple[Tensor, int, bool]:
        """Entropic plan ``(n, m)`` divided by its mass, Sinkhorn iterations and convergence.

        The problem is built from the dense backend (not by :meth:`UOTProblem.from_cost`): the
        normalised cost matrix is built once here, and it needs no validation pass; the result
        needs the plan only, not the dual value (:func:`torchuot.sinkhorn.solve_potentials`).
        """
        kw: dict = {}
        if self.method == "uot":
            if self.reach is not None:
                kw["reach"] = self.reach
            else:
                kw["tau_a"], kw["tau_b"] = self.tau_a, self.tau_b
        C, s = self._cost(f0, f1)
        pen_a, pen_b = resolve_penalties(_COST, self.eps, **kw)
        n, m = C.shape
        r = s.rsqrt()  # points scaled so that cost(x, y) is the normalised C
        a = torch.full((1, n), 1.0 / n, dtype=C.dtype, device=C.device)
        b = torch.full((1, m), 1.0 / m, dtype=C.dtype, device=C.device)
        ops = TensorizedBackend((f0 * r)[None], (f1 * r)[None], a, b, _COST, C=C[None])
        # The eps schedule starts at the largest cost of the batch (the bounding box's diagonal
        # of GeomLoss is far larger in high dimension): fewer annealing stages, same solution.
        problem = UOTProblem(ops, pen_a, pen_b, self.eps, float(C.max()), 2.0, True, _COST)
        solved = solve_potentials(problem, self._solve_options)
        check_convergence(self.on_nonconvergence, [solved], f"PlanSampler({self.method!r})", stacklevel=5)
        f, g, n_iters, converged = solved[:4]
        # log pi_ij = log a_i + log b_j + (f_i + g_j - C_ij) / eps, built in place in one buffer;
        # the plan divided by its mass is the softmax of the flattened log-plan: one fused op
        # that cannot underflow (and avoids the slow path of exp far below -87 on CPU).
        u = f[0] / self.eps + ops.log_a[0]
        v = g[0] / self.eps + ops.log_b[0]
        logP = torch.add(v.unsqueeze(0), C, alpha=-1.0 / self.eps).add_(u.unsqueeze(1))
        return torch.softmax(logP.reshape(-1), 0).reshape(n, m), n_iters, converged

    def plan(self, x0: Tensor, x1: Tensor) -> Tensor:
        """The normalised plan ``pi / m(pi)`` -> ``(n, m)`` (sums to 1)."""
        f0, f1 = self._flatten(x0, x1)
        n, m = f0.shape[0], f1.shape[0]
        if self.method == "independent":
            return torch.full((n, m), 1.0 / (n * m), dtype=f0.dtype, device=f0.device)
        if self.method == "exact":
            return self._exact(self._cost(f0, f1)[0])
        with torch.no_grad():
            P = self._solve(f0, f1)[0]
        return self._normalise(P, n, m)

    def _normalise(self, P: Tensor, n: int, m: int) -> Tensor:
        mass = P.sum()  # entries are >= 0: the sum is finite iff every entry is
        if not bool(torch.isfinite(mass) & (mass > 0)):
            msg = (
                f"the {self.method!r} plan between batches of {n} and {m} samples has mass "
                f"{float(mass):.3g} (underflow or non-finite entries) at eps={self.eps}; increase eps, "
                "use normalize_cost='mean', or check the inputs for NaN."
            )
            if self.on_failure == "raise":
                raise RuntimeError(msg)
            warnings.warn(
                msg + " Falling back to independent pairs for this batch.", RuntimeWarning, stacklevel=3
            )
            return torch.full((n, m), 1.0 / (n * m), dtype=P.dtype, device=P.device)
        return P.div_(mass)

    def _exact(self, C: Tensor) -> Tensor:
        try:
            # Optional dependency, imported only when this method is asked for.
            ot = importlib.import_module("ot")
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("method='exact' needs POT: pip install pot") from err
        n, m = C.shape
        a = torch.full((n,), 1.0 / n, dtype=torch.float64)
        b = torch.full((m,), 1.0 / m, dtype=torch.float64)
        P = ot.emd(a.numpy(), b.numpy(), C.detach().double().cpu().numpy())
        return self._normalise(torch.as_tensor(P, dtype=C.dtype, device=C.device), n, m)

    # ------------------------------------------------------------------ sampling
    def sample(
        self, x0: Tensor, x1: Tensor, k: int | None = None, generator: torch.Generator | None = None
    ) -> CouplingSample:
        """Draw ``k`` pairs (default ``n``, the source batch size) from the plan.

        Args:
            x0: ``(n, ...)`` source batch. x1: ``(m, ...)`` target batch.
            k: number of pairs.
            generator: optional ``torch.Generator`` on the batch's device.

        Returns:
            A :class:`CouplingSample`.
        """
        f0, f1 = self._flatten(x0, x1)
        n, m = f0.shape[0], f1.shape[0]
        k = n if k is None else k
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        dev = f0.device
        if self.method == "independent":
            i = torch.randint(n, (k,), device=dev, generator=generator)
            j = torch.randint(m, (k,), device=dev, generator=generator)
            return CouplingSample(
                i,
                j,
                torch.full((n,), 1.0 / n, device=dev, dtype=f0.dtype),
                torch.full((m,), 1.0 / m, device=dev, dtype=f0.dtype),
            )
        n_iters, converged = 0, True
        if self.method == "exact":
            P = self.plan(x0, x1)
        else:
            with torch.no_grad():
                P, n_iters, converged = self._solve(f0, f1)
                P = self._normalise(P, n, m)
        if not self.replace:
            support = int((P > 0).sum())
            if k > support:
                raise ValueError(
                    f"replace=False draws distinct pairs, but k={k} exceeds the {support} pairs with "
                    f"non-zero probability in the {n} x {m} plan; lower k or use replace=True."
                )
        flat = torch.multinomial(P.reshape(-1), k, replacement=self.replace, generator=generator)
        i, j = flat // m, flat % m
        return CouplingSample(i, j, P.sum(1), P.sum(0), n_iters, converged)

    def __call__(
        self,
        x0: Tensor,
        x1: Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Re-paired batches ``(x0[i], x1[j])`` with ``n`` pairs drawn from the plan."""
        s = self.sample(x0, x1, generator=generator)
        return x0[s.i], x1[s.j]
