"""Dense backend: the full cost matrix ``C: (B, N, M)`` is held in memory.

Soft-min evaluation uses a *stabilised kernel cache* (Schmitzer, "Stabilized sparse scaling
algorithms for entropy regularized transport problems", SIAM J. Sci. Comput. 2019, Sec. 3.1,
"absorption"): at some reference potential ``g0`` we evaluate the soft-min exactly in the log
domain, ``S0 = softmin_x(g0)``, and store the row-normalised kernel
``K0_ij = b_j exp((g0_j - C_ij + S0_i) / eps)`` (each row sums to 1). For a nearby ``g``,

    softmin_x(g)_i = S0_i - eps * log sum_j K0_ij exp((g_j - g0_j) / eps),

which is one matrix-vector product instead of a log-sum-exp over ``N x M`` exponentials.
When ``|g - g0| / eps`` exceeds a dtype-dependent bound, ``eps`` changes, or a row
underflows, the cache is rebuilt from ``C`` in the log domain ("absorption"). The result is
exact to floating-point precision; only the cost per iteration changes.
"""

from __future__ import annotations

import math

import torch

from .._typing import Tensor
from ..costs import Cost

__all__ = ["TensorizedBackend", "safe_logsumexp", "safe_log"]

# Largest |g - g0| / eps the cached kernel is reused for. exp(bound) times the smallest
# normal number of the dtype stays far below its resolution, so entries that underflowed at
# absorption can never matter before the next one.
_ABSORB_BOUND = {torch.float32: 20.0, torch.float64: 60.0, torch.float16: 6.0, torch.bfloat16: 6.0}

# Kernels of at most this many entries get a contiguous transposed copy on their first reuse
# (one problem, x side): a plain row-vector-times-matrix product then has the least overhead.
_SMALL_TRANSPOSE = 2**16


def safe_log(w: Tensor) -> Tensor:
    """``log(w)`` with ``-inf`` where ``w == 0`` and a zero (not NaN) gradient there."""
    pos = w > 0
    return torch.where(pos, torch.where(pos, w, torch.ones_like(w)).log(), torch.full_like(w, -math.inf))


def safe_logsumexp(E: Tensor, dim: int) -> Tensor:
    """``logsumexp`` that returns ``-inf`` (with a zero gradient) for all ``-inf`` slices."""
    m = E.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    s = torch.exp(E - m).sum(dim)
    return safe_log(s) + m.squeeze(dim)


class _SoftMin(torch.autograd.Function):
    """``S = -eps * logsumexp(h - C / eps, dim)`` with a lean backward.

    Forward keeps only the normalised weights ``W = softmax(h - C/eps)`` (one ``N x M``
    buffer, built in place); backward is ``dS/dC = W``, ``dS/dh = -eps W``.
    """

    @staticmethod
    def forward(ctx, C: Tensor, h: Tensor, eps: float, dim: int) -> Tensor:  # type: ignore[override]
        E = C.div(-eps).add_(h)
        m = E.amax(dim=dim, keepdim=True)
        m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
        W = E.sub_(m).exp_()
        s = W.sum(dim=dim, keepdim=True)
        W.div_(torch.where(s > 0, s, torch.ones_like(s)))
        ctx.save_for_backward(W)
        ctx.eps, ctx.dim = eps, dim
        return (-eps * (safe_log(s) + m)).squeeze(dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G: Tensor):  # type: ignore[override]
        (W,) = ctx.saved_tensors
        grad_C = W * G.unsqueeze(ctx.dim)
        grad_h = None
        if ctx.needs_input_grad[1]:
            other = -2 if ctx.dim in (-1, 2) else -1
            grad_h = -ctx.eps * grad_C.sum(dim=other, keepdim=True)
        return (grad_C if ctx.needs_input_grad[0] else None), grad_h, None, None


class TensorizedBackend:
    """Dense ``N x M`` backend with a stabilised kernel cache.

    Args:
        x: ``(B, N, D)`` source points. y: ``(B, M, D)`` target points.
        a: ``(B, N)`` source weights. b: ``(B, M)`` target weights.
        cost: the ground cost.
        C: optional ``(B, N, M)`` matrix ``cost(x, y)`` already computed by the caller (the
            minibatch couplings build it to normalise it); not evaluated a second time. With
            ``C`` given, ``x`` and ``y`` may be ``None`` (a problem stated by its cost matrix).
    """

    name = "tensorized"

    def __init__(
        self, x: Tensor | None, y: Tensor | None, a: Tensor, b: Tensor, cost: Cost, C: Tensor | None = None
    ) -> None:
        self.x, self.y, self.a, self.b, self.cost = x, y, a, b, cost
        self.log_a = safe_log(a)
        self.log_b = safe_log(b)
        # The cost is built once; the loop uses a detached view, the final differentiable
        # step reuses the graph (no second N x M evaluation).
        if C is None and (x is None or y is None):
            raise ValueError("TensorizedBackend needs the points x, y or the cost matrix C.")
        self.C_graph = cost(x, y) if C is None else C
        self.C = self.C_graph.detach()
        self._bound = _ABSORB_BOUND.get(self.C.dtype, 20.0)
        # Masks of zero-weight points (None when every weight is positive, the common case).
        self._dead_a = None if bool((a > 0).all()) else a <= 0
        self._dead_b = None if bool((b > 0).all()) else b <= 0
        self._cache: dict[str, list] = {}

    # ------------------------------------------------------------------ soft-min (loop)
    def softmin_x(self, eps: float, g: Tensor) -> Tensor:
        """``-eps log sum_j b_j exp((g_j - C_ij)/eps)`` -> ``(B, N)`` (no autograd)."""
        return self._softmin(eps, g, "x")

    def softmin_y(self, eps: float, f: Tensor) -> Tensor:
        """``-eps log sum_i a_i exp((f_i - C_ij)/eps)`` -> ``(B, M)`` (no autograd)."""
        return self._softmin(eps, f, "y")

    def _softmin(self, eps: float, h: Tensor, side: str) -> Tensor:
        if torch.is_grad_enabled():  # the loop runs without grad already: no context to enter
            with torch.no_grad():
                return self._softmin(eps, h, side)
        hit = self._cache.get(side)
        if hit is not None and hit[0] == eps:
            _, neg_h0, S0, K0, dead, mat = hit
            d = torch.add(neg_h0, h, alpha=1.0 / eps)  # (h - h0) / eps in one pass
            if dead is not None:  # zero-weight points: K0 has zero columns there
                d.masked_fill_(dead, 0.0)
            # Valid while |h - h0| / eps stays within the bound (a NaN fails too). Then no
            # row can underflow either: each row of K0 sums to 1 and exp(d) >= exp(-bound).
            if float(torch.linalg.vector_norm(d, math.inf)) <= self._bound:
                w = d.exp_()
                if K0.shape[0] > 1:
                    if side == "x":
                        s = torch.bmm(K0, w.unsqueeze(-1)).squeeze(-1)
                    else:
                        s = torch.bmm(w.unsqueeze(1), K0).squeeze(1)
                else:
                    # One problem: a row vector times a matrix, the fewest ops. On the x side
                    # that matrix is K0^T, made contiguous at the first reuse when small.
                    if mat is None:
                        mat = K0[0] if side == "y" else K0[0].T
                        if side == "x" and mat.numel() <= _SMALL_TRANSPOSE:
                            mat = mat.contiguous()
                        hit[5] = mat
                    s = torch.matmul(w, mat)
                return torch.add(S0, s.log_(), alpha=-eps)
        return self._absorb(eps, h, side)

    def _absorb(self, eps: float, h: Tensor, side: str) -> Tensor:
        # E = log w + (h - C)/eps, reduced over the "other" axis; one fused pass builds it.
        dim = -1 if side == "x" else -2
        # (Scalars enter through ``alpha``: a tensor-by-Python-float op costs twice as much on
        # the small problems where per-op overhead dominates.)
        if side == "x":
            E = torch.add(torch.add(self.log_b, h, alpha=1.0 / eps).unsqueeze(1), self.C, alpha=-1.0 / eps)
            dead = self._dead_b
        else:
            E = torch.add(torch.add(self.log_a, h, alpha=1.0 / eps).unsqueeze(2), self.C, alpha=-1.0 / eps)
            dead = self._dead_a
        m = E.amax(dim=dim, keepdim=True)
        # The normalised kernel exp(E - logsumexp E) in one fused op (torch's softmax kernel
        # also stays fast where E - max E < -87: a plain exp falls to a slow path there).
        K0 = torch.softmax(E, dim=dim)
        del E
        # log-sum-exp from the row max: at the argmax, K0 = exp(max E - logsumexp E).
        lse = m - K0.amax(dim=dim, keepdim=True).log_()
        if not math.isfinite(float(m.sum())):  # one reduction: a -inf, +inf or NaN row max
            # A row with no live entry (m = -inf; softmax gives NaN): soft-min +inf, kernel 0.
            bad = ~torch.isfinite(m)
            K0.masked_fill_(bad, 0.0)
            lse = torch.where(bad, m, lse)
        S0 = lse.squeeze(dim).mul_(-eps)
        self._cache[side] = [eps, h / -eps, S0, K0, dead, None]
        return S0

    def release_cache(self) -> None:
        """Free the loop's cached kernels (two ``N x M`` buffers)."""
        self._cache.clear()

    # ------------------------------------------------------ differentiable evaluations
    def softmin_x_autograd(self, eps: float, g: Tensor) -> Tensor:
        """Log-domain soft-min, differentiable w.r.t. ``x, y, b`` (and ``g``)."""
        return _SoftMin.apply(self.C_graph, (self.log_b + g / eps).unsqueeze(1), eps, -1)

    def softmin_y_autograd(self, eps: float, f: Tensor) -> Tensor:
        """Log-domain soft-min over rows, differentiable w.r.t. ``x, y, a`` (and ``f``)."""
        return _SoftMin.apply(self.C_graph, (self.log_a + f / eps).unsqueeze(2), eps, -2)

    def log_plan(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """``log pi_ij = log a_i + log b_j + (f_i + g_j - C_ij)/eps`` -> ``(B, N, M)``."""
        return (
            self.log_a.unsqueeze(2)
            + self.log_b.unsqueeze(1)
            + (f.unsqueeze(2) + g.unsqueeze(1) - self.C_graph) / eps
        )

    def plan(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """The dense plan ``(B, N, M)``."""
        return self.log_plan(eps, f, g).exp()

    def apply(self, eps: float, f: Tensor, g: Tensor, v: Tensor, axis: int) -> Tensor:
        """Plan-vector product: ``axis=1``: ``pi @ v`` with ``v: (B, M, K)`` -> ``(B, N, K)``;
        ``axis=0``: ``pi^T @ v`` with ``v: (B, N, K)`` -> ``(B, M, K)``."""
        P = self.plan(eps, f, g)
        return torch.bmm(P, v) if axis == 1 else torch.bmm(P.transpose(1, 2), v)

    def plan_rows(self, eps: float, f: Tensor, g: Tensor, rows: Tensor) -> Tensor:
        """Rows ``rows: (B, k)`` of the plan -> ``(B, k, M)`` (no autograd)."""
        with torch.no_grad():
            C = torch.gather(self.C, 1, rows.unsqueeze(-1).expand(-1, -1, self.C.shape[2]))
            fa = torch.gather(f, 1, rows) + eps * torch.gather(self.log_a, 1, rows)
            return torch.exp(
                (fa.unsqueeze(-1) + g.unsqueeze(1) - C) / eps + self.log_b.unsqueeze(1)
            )

    def transport_cost(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """``<pi, C>`` -> ``(B,)`` (finite entries only)."""
        P = self.plan(eps, f, g)
        Cf = torch.where(torch.isfinite(self.C_graph), self.C_graph, torch.zeros_like(self.C))
        return (P * Cf).sum((1, 2))
