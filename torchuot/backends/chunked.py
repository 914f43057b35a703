"""Memory-light pure-torch backend: the kernel is processed in row blocks.

Nothing of size ``N x M`` is ever stored: every soft-min, plan-vector product and marginal is
a loop over row blocks ``x[:, i0:i1]`` of at most ``block_bytes`` bytes each
(``O(block x M)`` memory, ``O(N M)`` work per evaluation, the cost recomputed every time).
This is GeomLoss's "online" strategy (Feydy's thesis, Sec. 3.3.2) without KeOps, used where
pykeops is not installed or cannot compile, and for user callable costs.

Gradients (envelope theorem, ``torchuot.sinkhorn.dual_value``) go through
:func:`torch.utils.checkpoint.checkpoint` per block: the forward pass keeps only the block's
inputs (views of ``x``, ``y`` and the potentials), and the backward pass recomputes one block
at a time, so the autograd memory is also ``O(block x M)``.

For the built-in costs the loop's soft-min uses in-place arithmetic on one buffer per block
(``|x - y|^2`` accumulated coordinate by coordinate for ``D <= 8``, exactly as the dense
backend does, and by a centred matrix product above); the differentiable evaluations call
the cost object itself, so values and gradients agree with the tensorized backend to
floating-point rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch.utils.checkpoint import checkpoint

from .._typing import Tensor
from ..costs import Cost, HKConeCost, PowerCost, SquaredEuclidean
from .tensorized import safe_log, safe_logsumexp

__all__ = ["ChunkedBackend", "DEFAULT_BLOCK_BYTES"]

#: Size of one ``(B, block, M)`` work buffer. A soft-min uses one such buffer at a time
#: (two while differentiating), so 64 MiB keeps the working set far below any N x M.
DEFAULT_BLOCK_BYTES = 2**26


class ChunkedBackend:
    """Row-block backend: ``O(block x M)`` memory, any cost (callables included).

    Args:
        x: ``(B, N, D)`` source points. y: ``(B, M, D)`` target points.
        a: ``(B, N)`` source weights. b: ``(B, M)`` target weights.
        cost: the ground cost.
        block_bytes: size in bytes of one ``(B, rows, M)`` work buffer; sets the block size
            (default :data:`DEFAULT_BLOCK_BYTES`, read at construction).
    """

    name = "chunked"

    def __init__(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, cost: Cost,
                 block_bytes: int | None = None) -> None:
        if block_bytes is None:
            block_bytes = DEFAULT_BLOCK_BYTES
        if isinstance(block_bytes, bool) or not isinstance(block_bytes, int) or block_bytes <= 0:
            raise ValueError(f"block_bytes must be a positive integer, got {block_bytes!r}.")
        self.x, self.y, self.a, self.b, self.cost = x, y, a, b, cost
        self.log_a = safe_log(a)
        self.log_b = safe_log(b)
        self.block_bytes = block_bytes
        self._builtin = type(cost) in (SquaredEuclidean, PowerCost, HKConeCost)
        self._cmax: Tensor | None = None
        # Common centre for the matrix-product form of |x - y|^2 (float32 cancellation).
        self._center = torch.cat([x.detach(), y.detach()], dim=1).mean(dim=1, keepdim=True)

    # ------------------------------------------------------------------ helpers
    def _rows_per_block(self, n_other: int) -> int:
        item = self.x.element_size()
        return max(1, self.block_bytes // max(1, self.x.shape[0] * n_other * item))

    def _blocks(self, n: int, n_other: int) -> Iterator[tuple[int, int]]:
        step = self._rows_per_block(n_other)
        for i0 in range(0, n, step):
            yield i0, min(n, i0 + step)

    def _cost_block(self, xb: Tensor, yb: Tensor) -> Tensor:
        """``C(xb, yb): (B, n, m)`` without autograd, built in one buffer for built-in costs."""
        cost = self.cost
        if not self._builtin:
            return cost(xb, yb)
        D = xb.shape[-1]
        if D <= 8:
            # Exact differences (as costs.squared_distances in low dimension), one buffer.
            d2 = torch.sub(xb[..., 0].unsqueeze(2), yb[..., 0].unsqueeze(1)).square_()
            if D > 1:
                tmp = torch.empty_like(d2)
                for d in range(1, D):
                    torch.sub(xb[..., d].unsqueeze(2), yb[..., d].unsqueeze(1), out=tmp)
                    d2.add_(tmp.square_())
        else:
            xc, yc = xb - self._center, yb - self._center
            x2 = (xc * xc).sum(-1, keepdim=True)
            y2 = (yc * yc).sum(-1).unsqueeze(1)
            d2 = torch.baddbmm(x2 + y2, xc, yc.transpose(1, 2), alpha=-2).clamp_min_(0)
        if isinstance(cost, HKConeCost):
            t = d2.sqrt_().div_(cost.kappa)
            inside = t < (math.pi / 2)
            c = t.masked_fill_(~inside, 0.0).cos_().log_().mul_(-2.0)
            return c.masked_fill_(~inside, math.inf)
        p = cost.p
        if p == 2.0:
            return d2.mul_(0.5)
        return d2.pow_(p / 2).div_(p)

    def _cost_cols(self, j0: int, j1: int) -> Tensor:
        """Columns ``C[:, :, j0:j1]: (B, N, m)`` (no autograd)."""
        yb = self.y[:, j0:j1]
        if self._builtin:  # symmetric costs: one code path for both axes
            return self._cost_block(yb, self.x).transpose(1, 2)
        return self.cost(self.x, yb)

    # ------------------------------------------------------------------ attributes
    @property
    def C(self) -> Tensor:
        """Not the matrix: a ``(B, 1, 1)`` tensor holding the largest finite cost value.

        The epsilon schedule of a callable cost reads its scale from ``ops.C``; taking the
        maximum over row blocks gives the same start without storing ``N x M`` entries.
        """
        if self._cmax is None:
            with torch.no_grad():
                best = torch.full((self.x.shape[0],), -math.inf, dtype=self.x.dtype, device=self.x.device)
                for i0, i1 in self._blocks(self.x.shape[1], self.y.shape[1]):
                    C = self._cost_block(self.x[:, i0:i1].detach(), self.y.detach())
                    C = torch.where(torch.isfinite(C), C, torch.full_like(C, -math.inf))
                    best = torch.maximum(best, C.amax(dim=(1, 2)))
            self._cmax = best.view(-1, 1, 1)
        return self._cmax

    # ------------------------------------------------------------------ soft-min (loop)
    def softmin_x(self, eps: float, g: Tensor) -> Tensor:
        """``-eps log sum_j b_j exp((g_j - C_ij)/eps)`` -> ``(B, N)`` (no autograd)."""
        with torch.no_grad():
            h = (self.log_b + g / eps).unsqueeze(1)  # (B, 1, M)
            x, y = self.x.detach(), self.y.detach()
            out = [self._lse_rows(self._cost_block(x[:, i0:i1], y), h, eps)
                   for i0, i1 in self._blocks(x.shape[1], y.shape[1])]
            return torch.cat(out, dim=1).mul_(-eps)

    def softmin_y(self, eps: float, f: Tensor) -> Tensor:
        """``-eps log sum_i a_i exp((f_i - C_ij)/eps)`` -> ``(B, M)`` (no autograd)."""
        with torch.no_grad():
            h = (self.log_a + f / eps).unsqueeze(1)  # (B, 1, N)
            x, y = self.x.detach(), self.y.detach()
            if self._builtin:
                out = [self._lse_rows(self._cost_block(y[:, j0:j1], x), h, eps)
                       for j0, j1 in self._blocks(y.shape[1], x.shape[1])]
            else:
                out = [self._lse_rows(self._cost_cols(j0, j1).transpose(1, 2), h, eps)
                       for j0, j1 in self._blocks(y.shape[1], x.shape[1])]
            return torch.cat(out, dim=1).mul_(-eps)

    @staticmethod
    def _lse_rows(C: Tensor, h: Tensor, eps: float) -> Tensor:
        """``log sum_j exp(h_j - C_ij/eps)`` over the last axis, in place in ``C``."""
        E = C.mul_(-1.0 / eps).add_(h)
        m = E.amax(dim=-1, keepdim=True)
        empty = ~torch.isfinite(m)
        m = torch.where(empty, torch.zeros_like(m), m)
        # Clamping one above log(smallest normal) keeps exp out of the slow subnormal range (at
        # log(tiny) itself float32 exp rounds to a subnormal: 100x slower); the at most
        # M * e * tiny it adds to a sum >= 1 is below the dtype's resolution.
        low = math.log(torch.finfo(E.dtype).tiny) + 1.0
        s = E.sub_(m).clamp_(min=low).exp_().sum(-1)
        L = s.log_().add_(m.squeeze(-1))
        return L.masked_fill_(empty.squeeze(-1), -math.inf)

    # ------------------------------------------------------ differentiable evaluations
    def _softmin_autograd(self, eps: float, pts: Tensor, other: Tensor, log_w: Tensor,
                          h: Tensor, cost_fn: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
        def block(pb: Tensor, other: Tensor, log_w: Tensor, h: Tensor) -> Tensor:
            E = log_w.unsqueeze(1) + (h.unsqueeze(1) - cost_fn(pb, other)) / eps
            return -eps * safe_logsumexp(E, dim=-1)

        needs_graph = torch.is_grad_enabled() and any(
            t.requires_grad for t in (pts, other, log_w, h)
        )
        out = []
        for i0, i1 in self._blocks(pts.shape[1], other.shape[1]):
            args = (pts[:, i0:i1], other, log_w, h)
            if needs_graph:
                out.append(checkpoint(block, *args, use_reentrant=False))
            else:
                out.append(block(*args))
        return torch.cat(out, dim=1)

    def softmin_x_autograd(self, eps: float, g: Tensor) -> Tensor:
        """Log-domain soft-min ``(B, N)``, differentiable w.r.t. ``x, y, b`` (and ``g``);
        blocks are recomputed in the backward pass (no ``N x M`` autograd buffers)."""
        return self._softmin_autograd(eps, self.x, self.y, self.log_b, g, self.cost)

    def softmin_y_autograd(self, eps: float, f: Tensor) -> Tensor:
        """Log-domain soft-min over rows ``(B, M)``, differentiable w.r.t. ``x, y, a`` (and ``f``)."""
        if self._builtin:
            return self._softmin_autograd(eps, self.y, self.x, self.log_a, f, self.cost)
        cost = self.cost
        return self._softmin_autograd(
            eps, self.y, self.x, self.log_a, f, lambda yb, x: cost(x, yb).transpose(1, 2)
        )

    # ------------------------------------------------------------------ plan access
    def _log_plan_rows(self, eps: float, f: Tensor, g: Tensor, i0: int, i1: int) -> Tensor:
        C = self._cost_block(self.x[:, i0:i1].detach(), self.y.detach())
        la = (self.log_a[:, i0:i1] + f[:, i0:i1] / eps).unsqueeze(2)
        lb = (self.log_b + g / eps).unsqueeze(1)
        return C.mul_(-1.0 / eps).add_(la).add_(lb)

    def plan(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """The dense plan ``(B, N, M)`` (small problems only), differentiable through ``C, a, b``."""
        C = self.cost(self.x, self.y)
        return torch.exp(
            self.log_a.unsqueeze(2) + self.log_b.unsqueeze(1) + (f.unsqueeze(2) + g.unsqueeze(1) - C) / eps
        )

    def apply(self, eps: float, f: Tensor, g: Tensor, v: Tensor, axis: int) -> Tensor:
        """Plan-vector product by row blocks (no autograd): ``axis=1``: ``pi @ v`` with
        ``v: (B, M, K)`` -> ``(B, N, K)``; ``axis=0``: ``pi^T @ v`` with ``v: (B, N, K)`` -> ``(B, M, K)``."""
        with torch.no_grad():
            f, g, v = f.detach(), g.detach(), v.detach()
            N, M = self.x.shape[1], self.y.shape[1]
            if axis == 1:
                out = [torch.bmm(self._log_plan_rows(eps, f, g, i0, i1).exp_(), v)
                       for i0, i1 in self._blocks(N, M)]
                return torch.cat(out, dim=1)
            acc = v.new_zeros(v.shape[0], M, v.shape[2])
            for i0, i1 in self._blocks(N, M):
                P = self._log_plan_rows(eps, f, g, i0, i1).exp_()
                acc.baddbmm_(P.transpose(1, 2), v[:, i0:i1])
            return acc

    def plan_rows(self, eps: float, f: Tensor, g: Tensor, rows: Tensor) -> Tensor:
        """Rows ``rows: (B, k)`` of the plan -> ``(B, k, M)`` (no autograd)."""
        with torch.no_grad():
            x = self.x.detach()
            xr = torch.gather(x, 1, rows.unsqueeze(-1).expand(-1, -1, x.shape[2]))
            fa = torch.gather(f, 1, rows) / eps + torch.gather(self.log_a, 1, rows)
            lb = (self.log_b + g / eps).unsqueeze(1)
            out = []
            for r0, r1 in self._blocks(rows.shape[1], self.y.shape[1]):
                C = self._cost_block(xr[:, r0:r1], self.y.detach())
                out.append(C.mul_(-1.0 / eps).add_(fa[:, r0:r1].unsqueeze(2)).add_(lb).exp_())
            return torch.cat(out, dim=1)

    def transport_cost(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """``<pi, C> -> (B,)`` (finite entries only), by row blocks."""
        with torch.no_grad():
            f, g = f.detach(), g.detach()
            x, y = self.x.detach(), self.y.detach()
            total = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
            for i0, i1 in self._blocks(x.shape[1], y.shape[1]):
                C = self._cost_block(x[:, i0:i1], y)
                P = self._log_plan_rows(eps, f, g, i0, i1).exp_()
                total += (P * torch.where(torch.isfinite(C), C, torch.zeros_like(C))).sum((1, 2))
            return total
