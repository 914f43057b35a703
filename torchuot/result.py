"""The typed output of an unbalanced Sinkhorn solve."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ._typing import Tensor
from .penalties import Penalty

__all__ = ["UOTResult", "first_order_residuals", "marginal_tolerance", "ConvergenceError",
           "ConvergenceWarning", "NONCONVERGENCE_POLICIES"]

#: What a solver does when it stops without meeting its tolerance (argument ``on_nonconvergence``).
NONCONVERGENCE_POLICIES = ("warn", "raise", "ignore")


class ConvergenceWarning(RuntimeWarning):
    """A solver stopped before its marginal conditions held to ``marginal_tol``."""


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` with ``on_nonconvergence="raise"``."""


def marginal_tolerance(tol: float, dtype: torch.dtype) -> float:
    """Tolerance on the relative first-order marginal residuals for a stopping tolerance ``tol``:
    ``max(min(1e3 tol, 1e-2), 1e3 ulp)`` (``1e-3`` at the default ``tol = 1e-6``). The loop stops on
    a change of the potentials ``<= tol * eps``, a relative change of the marginals of ``~tol``;
    the factor 1e3 leaves room for slowly contracting problems, the floor is the dtype's reach."""
    return max(min(1e3 * float(tol), 1e-2), 1e3 * torch.finfo(dtype).eps)


def _marginal(w: Tensor, pot: Tensor, S: Tensor, eps: float) -> Tensor:
    """``w * exp((pot - S) / eps)``, 0 where the soft-min ``S`` is ``+inf`` (no partner) or ``w = 0``."""
    d = torch.where(torch.isposinf(S) | (w <= 0), torch.full_like(pot, -math.inf), pot - S)
    return w * torch.exp(d / eps)


def first_order_residuals(ops: Any, pen_a: Penalty, pen_b: Penalty, eps: float, f: Tensor, g: Tensor,
                          symmetric: bool = False, slack: float = 0.0) -> tuple[Tensor, Tensor]:
    """Relative first-order marginal residuals of potentials ``f: (B, N)``, ``g: (B, M)`` -> two ``(B,)``.

    For each side, the L1 distance of the plan's marginal to what optimality asks of it (the
    weights for a balanced side, ``a exp(-f/rho)`` for KL, the TV subdifferential, ...: see
    :meth:`Penalty.first_order_gap`), divided by the larger of the marginal's and the weights'
    masses. Evaluated by exact log-domain soft-mins (one pass a side; no kernel cache). NaN
    potentials give an infinite residual; a penalty without derivatives gives 0. ``slack``:
    potentials within it of a kink of a penalty's dual term may take the kink's subgradients.
    """
    with torch.no_grad():
        S_x = ops.softmin_x_autograd(eps, g)
        row = _marginal(ops.a, f, S_x, eps)
        if symmetric:
            col, S_y = row, S_x
        else:
            S_y = ops.softmin_y_autograd(eps, f)
            col = _marginal(ops.b, g, S_y, eps)
        out = []
        for pen, m, w, pot in ((pen_a, row, ops.a, f), (pen_b, col, ops.b, g)):
            gap = pen.first_order_gap(m, w, pot, slack)
            if gap is None:
                gap = torch.zeros(m.shape[:-1], dtype=m.dtype, device=m.device)
            scale = torch.maximum(m.sum(-1), w.sum(-1)).clamp_min(torch.finfo(m.dtype).tiny)
            r = gap / scale
            out.append(torch.where(torch.isnan(r), torch.full_like(r, math.inf), r))
    return out[0], out[1]


@dataclass(frozen=True)
class UOTResult:
    """Output of :func:`torchuot.sinkhorn` (and :func:`torchuot.sinkhorn_from_cost`).

    Shapes are batched ``(B, ...)`` when the inputs were, unbatched otherwise.

    Attributes:
        f: ``(B, N)`` source potential (detached, except under ``grad="implicit"`` / ``"unroll"``).
        g: ``(B, M)`` target potential (same).
        value: ``(B,)`` entropic UOT value ``OT_eps``, differentiable (envelope theorem by
            default). It is the dual objective at the returned potentials, which equals the
            primal ``<pi, C> + eps KL(pi | a x b) + D_a(pi 1 | a) + D_b(pi^T 1 | b)`` at
            convergence (POT's ``reg_type='kl'`` objective).
        eps: the final entropic regularisation.
        penalty_a, penalty_b: the marginal penalties of each side.
        n_iters: Sinkhorn iterations done (annealing stages included).
        converged: whether the solve converged: the potentials' change fell below ``tol`` AND the
            first-order marginal conditions hold to :attr:`marginal_tol` at the returned
            potentials (:meth:`marginal_residuals`, checked by exact soft-mins).
        backend: name of the backend that computed the soft-mins.
        marginal_tol: tolerance on :meth:`marginal_residuals` behind ``converged``.
        residuals: ``(B,)`` pair of the relative first-order residuals measured at the end
            (as :meth:`marginal_residuals` returns them).
    """

    f: Tensor
    g: Tensor
    value: Tensor
    eps: float
    penalty_a: Penalty
    penalty_b: Penalty
    n_iters: int
    converged: bool
    backend: str
    batched: bool = True
    _ops: Any = field(default=None, repr=False, compare=False)
    marginal_tol: float = math.nan
    residuals: tuple[Tensor, Tensor] | None = field(default=None, repr=False, compare=False)

    # --------------------------------------------------------------- helpers
    def _out(self, t: Tensor) -> Tensor:
        return t if self.batched else t[0]

    def _fg(self) -> tuple[Tensor, Tensor]:
        f, g = self.f, self.g
        if not self.batched:
            f, g = f.unsqueeze(0), g.unsqueeze(0)
        return f, g

    @property
    def ops(self) -> Any:
        """The backend object that computed the soft-mins (a :class:`~torchuot.backends.base.Backend`;
        OTT-JAX's ``out.geom``): its lazy accessors take the potentials in batched ``(B, ...)`` form."""
        return self._ops

    @property
    def a(self) -> Tensor:
        """Source weights ``(B, N)``."""
        return self._out(self._ops.a)

    @property
    def b(self) -> Tensor:
        """Target weights ``(B, M)``."""
        return self._out(self._ops.b)

    # --------------------------------------------------------------- plan access
    def plan(self) -> Tensor:
        """Dense transport plan ``pi: (B, N, M)``, ``pi_ij = a_i b_j exp((f_i + g_j - C_ij)/eps)``.

        Differentiable through ``C``, ``a``, ``b``; the potentials' own dependence on the inputs
        is included only when solved with ``grad="implicit"`` (or ``"unroll"``): under the
        default ``"envelope"`` they are held fixed, which is exact for the value, not the plan.

        Raises:
            ValueError: on the online / chunked backends when ``B * N * M`` exceeds
                ``torchuot.backends.PLAN_MAX_ENTRIES`` (use the lazy accessors instead).
        """
        f, g = self._fg()
        from .backends import PLAN_MAX_ENTRIES

        size = f.shape[0] * f.shape[1] * g.shape[1]
        if self.backend != "tensorized" and size > PLAN_MAX_ENTRIES:
            raise ValueError(
                f"plan() would form a dense {f.shape[0]} x {f.shape[1]} x {g.shape[1]} plan "
                f"({size:,} entries > {PLAN_MAX_ENTRIES:,}) on the lazy '{self.backend}' backend; "
                "use apply(v, axis), marginal(axis), barycentric_projection() or sample_pairs(k) "
                "instead, or solve with backend='tensorized'."
            )
        return self._out(self._ops.plan(self.eps, f, g))

    def _marginals(self) -> tuple[Tensor, Tensor]:
        f, g = self._fg()
        ops, eps = self._ops, self.eps
        with torch.no_grad():
            row = ops.a * torch.exp((f - ops.softmin_x_autograd(eps, g)) / eps)
            col = ops.b * torch.exp((g - ops.softmin_y_autograd(eps, f)) / eps)
        return row, col

    def marginal(self, axis: int) -> Tensor:
        """Marginals of the plan: ``axis=1`` sums over targets -> ``(B, N)`` (``pi 1``);
        ``axis=0`` sums over sources -> ``(B, M)`` (``pi^T 1``)."""
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 (target marginal) or 1 (source marginal), got {axis!r}.")
        row, col = self._marginals()
        return self._out(row if axis == 1 else col)

    @property
    def transported_mass(self) -> Tensor:
        """Total mass of the plan ``m(pi)`` -> ``(B,)``."""
        return self._out(self._marginals()[0].sum(-1))

    def marginal_errors(self) -> tuple[Tensor, Tensor]:
        """L1 distances ``|pi 1 - a|_1`` and ``|pi^T 1 - b|_1`` -> two ``(B,)`` tensors."""
        row, col = self._marginals()
        ops = self._ops
        return (
            self._out((row - ops.a).abs().sum(-1)),
            self._out((col - ops.b).abs().sum(-1)),
        )

    def marginal_residuals(self) -> tuple[Tensor, Tensor]:
        """Relative first-order residuals of both sides -> two ``(B,)`` tensors (see
        :func:`first_order_residuals`): the marginal error over the mass for a balanced side, the
        distance of ``pi 1`` to ``a exp(-f/rho)`` for KL, and so on. ``converged`` implies both are
        ``<= marginal_tol``."""
        f, g = self._fg()
        slack = self.eps * self.marginal_tol if math.isfinite(self.marginal_tol) else 0.0
        ra, rb = first_order_residuals(self._ops, self.penalty_a, self.penalty_b, self.eps, f, g, slack=slack)
        return self._out(ra), self._out(rb)

    def apply(self, v: Tensor, axis: int = 1) -> Tensor:
        """Plan-vector product without asking for the plan.

        Args:
            v: ``axis=1``: ``(B, M)`` or ``(B, M, K)``; ``axis=0``: ``(B, N)`` or ``(B, N, K)``
                (unbatched shapes when the problem is unbatched).
            axis: 1 for ``pi @ v``, 0 for ``pi^T @ v``.
        Returns:
            ``(B, N[, K])`` for ``axis=1``, ``(B, M[, K])`` for ``axis=0``.
        """
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 or 1, got {axis!r}.")
        f, g = self._fg()
        B, n_in = f.shape[0], (g.shape[1] if axis == 1 else f.shape[1])
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"v must be a torch.Tensor, got {type(v)!r}.")
        vb = v if self.batched else v.unsqueeze(0)
        if vb.dim() not in (2, 3) or vb.shape[0] != B or vb.shape[1] != n_in:
            side = "M targets" if axis == 1 else "N sources"
            want = f"({n_in},) or ({n_in}, K)" if not self.batched else f"({B}, {n_in}) or ({B}, {n_in}, K)"
            raise ValueError(
                f"apply(v, axis={axis}) needs one entry of v per {side[2:-1]} ({side[0]} = {n_in}): v "
                f"must have shape {want}, got {tuple(v.shape)}."
            )
        vec = vb.dim() == 2
        if vec:
            vb = vb.unsqueeze(-1)
        out = self._ops.apply(self.eps, f, g, vb.to(self.f.dtype), axis)
        return self._out(out.squeeze(-1) if vec else out)

    def barycentric_projection(self, axis: int = 1) -> Tensor:
        """Barycentric map ``T(x_i) = sum_j pi_ij y_j / sum_j pi_ij`` -> ``(B, N, D)`` (``axis=1``),
        or the reverse map of the targets -> ``(B, M, D)`` (``axis=0``)."""
        if axis not in (0, 1):
            raise ValueError(f"axis must be 0 or 1, got {axis!r}.")
        ops = self._ops
        f, g = self._fg()
        pts = ops.y if axis == 1 else ops.x
        if pts is None:
            raise ValueError(
                "barycentric_projection needs the points, but this problem was given by its cost "
                "matrix (sinkhorn_from_cost); use apply(y, axis=1) / marginal(1) with your points."
            )
        with torch.no_grad():
            num = ops.apply(self.eps, f, g, pts.detach(), axis)
        den = self._marginals()[0 if axis == 1 else 1]
        return self._out(num / den.clamp_min(torch.finfo(den.dtype).tiny).unsqueeze(-1))

    def sample_pairs(self, k: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Draw ``k`` index pairs ``(i, j)`` from the normalised plan ``pi / m(pi)``.

        Two-stage sampling (row from the source marginal, then column from that row), so
        the dense plan is never formed. Returns two ``LongTensor``s of shape ``(B, k)``.
        """
        if not isinstance(k, int) or k <= 0:
            raise ValueError(f"k must be a positive integer, got {k!r}.")
        ops, eps = self._ops, self.eps
        f, g = self._fg()
        row, _ = self._marginals()
        i = torch.multinomial(row, k, replacement=True, generator=generator)
        rows = ops.plan_rows(eps, f, g, i)  # (B, k, M)
        B, _, M = rows.shape
        j = torch.multinomial(rows.reshape(B * k, M), 1, generator=generator).reshape(B, k)
        return self._out(i), self._out(j)

    # --------------------------------------------------------------- objectives
    @property
    def dual(self) -> Tensor:
        """Dual objective at the returned potentials (detached) -> ``(B,)``."""
        return self.value.detach()

    @property
    def primal(self) -> Tensor:
        """Primal objective of the returned plan -> ``(B,)``:
        ``<pi, C> + eps KL(pi | a x b) + D_a(pi 1 | a) + D_b(pi^T 1 | b)``.

        Computed from marginals alone (``log pi = log a + log b + (f + g - C)/eps``).
        Equals :attr:`value` at convergence; the gap is a convergence certificate.
        """
        ops, eps = self._ops, self.eps
        f, g = self._fg()
        row, col = self._marginals()
        ma, mb = ops.a.sum(-1), ops.b.sum(-1)
        with torch.no_grad():
            lin_ent = (f * row).sum(-1) + (g * col).sum(-1) - eps * row.sum(-1) + eps * ma * mb
            out = lin_ent + self.penalty_a.primal(row, ops.a) + self.penalty_b.primal(col, ops.b)
        return self._out(out)

    @property
    def value_geomloss(self) -> Tensor:
        """GeomLoss's ``debias=False`` value: ``value + eps * ((m(a) + m(b))/2 - m(a) m(b))``.

        GeomLoss weights its dual terms by ``rho + eps/2`` instead of ``rho`` and drops the
        entropic mass term ``eps (m(a) m(b) - m(pi))``; at the optimum
        ``m(pi) = <a, exp(-f/rho)>``, and the two differences add up to this constant.
        Differentiable like :attr:`value`.
        """
        ops = self._ops
        ma, mb = ops.a.sum(-1), ops.b.sum(-1)
        v = self.value if self.batched else self.value.unsqueeze(0)
        return self._out(v + self.eps * ((ma + mb) / 2 - ma * mb))

    @property
    def value_ott(self) -> Tensor:
        """OTT-JAX's ``SinkhornOutput.reg_ot_cost`` for this problem -> ``(B,)`` (detached).

        Defined for ``reference="counting"`` (OTT's plain entropy ``KL(pi | 1)``), where the
        potentials are OTT's. OTT evaluates its marginal terms at the shifted potentials
        ``f - eps log a``, ``g - eps log b`` and adds ``eps (m(a) m(b) - m(pi))``:
        ``<a, -phi_a*(-(f - eps log a))> + <b, -phi_b*(-(g - eps log b))> + eps (m(a) m(b) - m(pi))``.
        That is the dual objective of the ``KL(pi | a x b)`` problem at OTT's potentials, not the
        optimum of either problem; :attr:`value` is the optimum of the problem solved.

        Raises:
            ValueError: the problem was solved with ``reference="product"``.
        """
        from .backends.reference import CountingReference

        ops = self._ops
        if not isinstance(ops, CountingReference):
            raise ValueError(
                "value_ott is OTT-JAX's reg_ot_cost, defined for OTT's entropy KL(pi | 1): solve with "
                "reference='counting' (the plans differ from the default reference='product')."
            )
        f, g = self._fg()
        with torch.no_grad():
            a, b = ops.a, ops.b
            row = _marginal(a, f, ops.softmin_x_autograd(self.eps, g), self.eps)  # pi 1: one pass
            fa = torch.where(a > 0, a * self.penalty_a.dual(f - ops.u), torch.zeros_like(a))
            gb = torch.where(b > 0, b * self.penalty_b.dual(g - ops.v), torch.zeros_like(b))
            out = fa.sum(-1) + gb.sum(-1) + self.eps * (a.sum(-1) * b.sum(-1) - row.sum(-1))
        return self._out(out)

    def transport_cost(self) -> Tensor:
        """``<pi, C>`` -> ``(B,)``: the linear part of the objective (POT's ``returnCost='linear'``)."""
        f, g = self._fg()
        with torch.no_grad():
            return self._out(self._ops.transport_cost(self.eps, f, g))
