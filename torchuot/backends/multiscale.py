"""Multiscale backend: coarse-to-fine annealing and block-sparse (truncated-kernel) soft-mins.

Feydy's thesis, Sec. 3.3.3 (GeomLoss's ``sinkhorn_multiscale``), after Schmitzer's sparse
scaling (SIAM J. Sci. Comput. 2019). Low dimension (``D <= 3``), built-in costs only.

1. **Clusters** (pykeops' own ``grid_cluster``, ``cluster_ranges_centroids``,
   ``sort_clusters``): every cloud is cut twice by cubic grids,

   * a *coarse* grid of side ``cluster_scale`` (default GeomLoss's
     ``diameter / (sqrt(D) 2000^(1/D))``: about 2,000 cells), whose centroids, weighted by
     the clusters' masses, carry the annealing while ``eps >= cluster_scale**p``;
   * a *block* grid of side ``block_scale`` (default ``block_factor * blur``, at most
     :data:`MAX_BLOCKS` cells), the granularity of the truncation test and of the
     block-sparse reductions. Points are sorted by block.

2. **Coarse stages** run the one Sinkhorn loop (:func:`torchuot.sinkhorn.sinkhorn_loop`) on a
   dense backend over the coarse centroids (:meth:`MultiscaleBackend.coarse_start`, the
   loop's only hook); the potentials then jump to the points by one soft-min extrapolation
   (``f(x_i) = aprox(softmin_k(g_c(y_k)))`` against the coarse targets, and the same for ``g``).

3. **Fine iterations** reduce only over the block pairs ``(I, J)`` kept by the test
   ``max_{i in I, j in J} u_i + v_j - C(x_i, y_j) >= -truncate * eps``, evaluated through two
   upper bounds (:meth:`_Pair.build`): the blocks' largest ``u``, ``v`` (potential or soft-min
   values) minus the cost at the gap between the blocks' bounding boxes, and, for
   ``|x-y|^2/2``, an affine bound of ``u`` and ``v`` on each block (their gradient is the
   displacement) with the cost expanded around the boxes' centres. Both hold for every point
   pair, so a dropped pair's kernel entries are below ``exp(-truncate)`` relative to the row's
   (column's) total, for the potentials the test was built on. The pattern is
   rebuilt whenever ``eps`` changes, once more after 4 soft-mins at the same ``eps`` on
   symmetric problems (:data:`REBUILD_AT`: the potentials have moved to that ``eps`` by then;
   not on cross problems, :data:`REBUILD_AT_CROSS`), and every
   :data:`REBUILD_EVERY` soft-mins after that. On many
   blocks the test starts on super-blocks (:data:`SUPER_GROUP` consecutive blocks), so that it
   costs in proportion to the kept pairs rather than to all block pairs. The HK cone cost is
   ``+inf`` beyond ``kappa * pi / 2``: blocks farther apart are exactly zero.

Reductions: KeOps block-sparse ``ranges`` (``pykeops.torch.cluster.from_matrix``) on CUDA when
KeOps compiles (``use_keops=None``) or when asked (``True``), else -- on CPU, where the torch
tiles measured faster than KeOps' CPU ranges, without a compiler, or with ``use_keops=False`` -- a pure-torch
path over the same kept block pairs (consecutive row blocks grouped with the union of their
kept column blocks, one dense tile per group: it computes a superset of the kept pairs, so it
is at least as accurate). Differentiable evaluations (the envelope gradient of the value, the
result's marginals, ``apply``, ``transport_cost``) use the torch tiles, with
:func:`torch.utils.checkpoint.checkpoint` per tile. Memory: ``O(N + M + kept block pairs)``
plus one tile. ``plan()`` and ``plan_rows()`` (small problems, sampling) use the exact kernel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from .._typing import Tensor
from ..costs import Cost, HKConeCost, PowerCost, SquaredEuclidean
from .chunked import ChunkedBackend
from .keops import _BIG, _exponent, _finite_h, _quiet, keops_status
from .tensorized import TensorizedBackend, safe_log, safe_logsumexp

__all__ = ["MultiscaleBackend", "Multiscale", "cluster_tools_available", "DEFAULT_TRUNCATE", "MAX_BLOCKS",
           "coarse_cluster_scale"]

#: Default truncation: dropped kernel entries are below ``exp(-8) = 3.4e-4`` of their row's total.
DEFAULT_TRUNCATE = 8.0
#: Default block side, in units of the blur ``eps**(1/p)``.
DEFAULT_BLOCK_FACTOR = 1.0
#: Cap on the number of blocks per cloud (the truncation test is dense in blocks).
MAX_BLOCKS = 2**13
#: Average number of points per block at least (smaller blocks cost more than they save).
MIN_BLOCK_POINTS = 8
#: The soft-mins at one eps that rebuild the pattern (besides the first and every REBUILD_EVERY).
#: More rebuilds tighten it sooner but each moves the potentials a little (what the truncation
#: drops changes), which kept the stopping rule from firing: at N = 1e5 (truncate 3, tol 0.3)
#: rebuilding after 2, 4, 8 and 16 soft-mins ran longer than 650 s against 310 s for this.
REBUILD_AT = (4,)
#: The same for cross problems ``OT(a, b)``: none. Their momentum (over-relaxed potentials)
#: loosens a pattern built after 4 soft-mins (N = 1e5, truncate 3: 0.093 -> 0.145 of the pairs
#: kept until the rebuild after 32, against 0.089 there); symmetric problems (no momentum)
#: tighten at that rebuild (0.168 -> 0.073 at N = 3e4).
REBUILD_AT_CROSS: tuple[int, ...] = ()
#: ... and then every this many soft-mins (slowly converging problems keep moving).
REBUILD_EVERY = 32
#: Blocks per super-block (the truncation test's first, coarse pass: it runs on super-block
#: pairs, and the block pairs of the surviving super-block pairs are tested one by one).
SUPER_GROUP = 8
#: Block pairs above which the test starts on super-blocks (below: one dense pass on blocks).
SUPER_PASS_PAIRS = 2**21
#: Entries of one torch tile (group of row blocks x union of their kept column blocks).
TILE_ENTRIES = 2**18
#: Rows of a tile at least (below, the per-tile column work outweighs the tile: at N = 1e5,
#: D = 3, blur 0.05 one block of ~12 rows per tile took 2x the time of ~64 rows).
MIN_TILE_ROWS = 64
#: Largest tile (a group of a few wide blocks is split by rows).
MAX_TILE_ENTRIES = 2**22
#: Column indices of the tiles kept in memory (past that, expanded at each pass).
CACHED_INDICES = 2**24
#: grid_cluster packs cell indices in 10 bits per axis.
_MAX_CELLS_PER_AXIS = 1000


def cluster_tools_available() -> bool:
    """Whether ``pykeops.torch.cluster`` imports (pure torch: no compiler needed)."""
    try:
        with _quiet():
            import pykeops.torch.cluster  # noqa: F401
    except Exception:  # noqa: BLE001  (missing or broken pykeops: no multiscale)
        return False
    return True


def coarse_cluster_scale(diameter: float, dim: int, n_cells: float = 2000.0) -> float:
    """GeomLoss's coarse cluster side: ``diameter / (sqrt(D) * n_cells**(1/D))``."""
    return float(diameter) / (math.sqrt(dim) * n_cells ** (1.0 / dim))


def _cost_of_distance(cost: Cost, d: Tensor) -> Tensor:
    """The cost as a function of the distance ``d >= 0`` (built-in costs are radial, increasing)."""
    if isinstance(cost, HKConeCost):
        t = d / cost.kappa
        inside = t < math.pi / 2
        c = -2 * torch.log(torch.cos(torch.where(inside, t, torch.zeros_like(t))))
        return torch.where(inside, c, torch.full_like(c, math.inf))
    if cost.p == 2.0:
        return 0.5 * d * d
    return d.pow(cost.p) / cost.p


def _grid_labels(x: Tensor, side: float) -> tuple[Tensor, float]:
    """pykeops ``grid_cluster`` labels of ``x: (n, D)``, the side enlarged if the grid is too fine."""
    from pykeops.torch.cluster import grid_cluster

    extent = float((x.amax(0) - x.amin(0)).max()) if x.shape[0] else 0.0
    side = max(side, extent / _MAX_CELLS_PER_AXIS, 1e-12)
    return grid_cluster(x, side).long(), side


def _morton_relabel(x: Tensor, lab: Tensor, side: float) -> Tensor:
    """Renumber grid labels in Morton (Z-curve) order of their cells, so that consecutive
    blocks are compact in space (pykeops' labels run along the last axis first): a tile of
    consecutive row blocks then has few column blocks beyond its own neighbours'."""
    cells = ((x - x.amin(0)) / side).floor().long().clamp_(0, _MAX_CELLS_PER_AXIS)
    K = int(lab.max()) + 1 if lab.numel() else 0
    first = torch.full((K,), x.shape[0], dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, lab, torch.arange(x.shape[0], device=x.device), "amin")
    c = cells[first]  # (K, D): one cell per label
    code = torch.zeros(K, dtype=torch.long, device=x.device)
    D = c.shape[1]
    for bit in range(10):
        for d in range(D):
            code |= ((c[:, d] >> bit) & 1) << (bit * D + d)
    rank = torch.empty_like(code)
    rank[torch.argsort(code)] = torch.arange(K, device=x.device)
    return rank[lab]


class _Cloud:
    """One cloud of one batch element, sorted by blocks, with its coarse centroids.

    Attributes: ``perm`` (sorted -> caller order, ``x_sorted = x[perm]``), ``inv`` (the
    inverse), ``ranges: (K, 2)`` block slices of the sorted cloud, ``labels: (n,)`` sorted
    block labels, ``centers: (K, D)``, ``box_center, half_width: (K, D)`` (bounding boxes),
    ``coarse_x: (Kc, D)``,
    ``coarse_w: (Kc,)``.
    """

    def __init__(self, x: Tensor, w: Tensor, block: float, coarse: float) -> None:
        from pykeops.torch.cluster import cluster_ranges_centroids, sort_clusters

        x, w = x.detach(), w.detach()
        lab, self.block_side = _grid_labels(x, block)
        lab = _morton_relabel(x, lab, self.block_side)
        idx = torch.arange(x.shape[0], device=x.device)
        (_, self.perm), self.labels = sort_clusters((x, idx), lab)
        self.inv = torch.empty_like(self.perm)
        self.inv[self.perm] = idx
        xs = x[self.perm]
        self._xs64 = xs.to(torch.float64)
        self.ranges, self.centers, _ = cluster_ranges_centroids(xs, self.labels)
        K, D = self.centers.shape
        # Each block's bounding box (the truncation test's geometry): centre and half-widths.
        lab = self.labels[:, None].expand(-1, D)
        lo = xs.new_full((K, D), math.inf).scatter_reduce_(0, lab, xs, "amin", include_self=True)
        hi = xs.new_full((K, D), -math.inf).scatter_reduce_(0, lab, xs, "amax", include_self=True)
        self.box_center, self.half_width = (lo + hi) / 2, (hi - lo) / 2
        self.sizes = (self.ranges[:, 1] - self.ranges[:, 0])
        # Super-blocks: SUPER_GROUP consecutive (Morton-ordered, so compact) blocks, their boxes.
        self.super_of = torch.arange(K, device=x.device) // SUPER_GROUP
        n_super = (K + SUPER_GROUP - 1) // SUPER_GROUP
        sup = self.super_of[:, None].expand(-1, D)
        slo = lo.new_full((n_super, D), math.inf).scatter_reduce_(0, sup, lo, "amin", include_self=True)
        shi = hi.new_full((n_super, D), -math.inf).scatter_reduce_(0, sup, hi, "amax", include_self=True)
        self.super_center, self.super_half = (slo + shi) / 2, (shi - slo) / 2
        clab, self.coarse_side = _grid_labels(x, coarse)
        _, self.coarse_x, _ = cluster_ranges_centroids(x, clab, weights=w)
        self.coarse_w = torch.bincount(clab, weights=w, minlength=self.coarse_x.shape[0]).to(x.dtype)

    def block_max(self, h: Tensor) -> Tensor:
        """``max`` of ``h: (n,)`` (caller order) over each block -> ``(K,)``; NaN counts as ``+inf``."""
        hs = torch.nan_to_num(h[self.perm], nan=math.inf)
        out = torch.full((self.centers.shape[0],), -math.inf, dtype=hs.dtype, device=hs.device)
        return out.scatter_reduce_(0, self.labels, hs, "amax", include_self=True)

    def super_max(self, block_max: Tensor) -> Tensor:
        """``max`` of per-block values ``(K,)`` over each super-block -> ``(ceil(K / SUPER_GROUP),)``."""
        out = block_max.new_full((self.super_center.shape[0],), -math.inf)
        return out.scatter_reduce_(0, self.super_of, block_max, "amax", include_self=True)

    def block_linear(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """An upper bound of ``h: (n,)`` (caller order) that is affine on each block:
        ``h_i <= c_K + <s_K, x_i - box_center_K>`` for every point ``i`` of block ``K``.

        The slope ``s: (K, D)`` is a ridge least-squares fit over the block's finite values (any
        slope gives a valid bound; a good one makes it tight), the offset ``c: (K,)`` the largest
        residual. A block with a ``+inf`` or NaN value gets ``c = +inf``; one with only ``-inf``
        values ``c = -inf``.
        """
        hs = h[self.perm].to(torch.float64)
        K, D = self.centers.shape
        fin = torch.isfinite(hs)
        w = fin.to(hs.dtype)
        hz = torch.where(fin, hs, torch.zeros_like(hs))
        lab = self.labels
        d = self._xs64 - self.box_center.to(hs.dtype)[lab]  # (n, D)
        cnt = hs.new_zeros(K).index_add_(0, lab, w).clamp_min_(1.0)
        md = hs.new_zeros(K, D).index_add_(0, lab, d * w[:, None]) / cnt[:, None]
        mh = hs.new_zeros(K).index_add_(0, lab, hz) / cnt
        dc = (d - md[lab]) * w[:, None]
        hc = (hz - mh[lab]) * w
        cov = hs.new_zeros(K, D * D).index_add_(0, lab, (dc[:, :, None] * dc[:, None, :]).reshape(-1, D * D))
        rhs = hs.new_zeros(K, D).index_add_(0, lab, dc * hc[:, None])
        ridge = 1e-6 * (self.half_width.to(hs.dtype) ** 2).sum(-1).clamp_min(1e-30) * cnt
        cov = cov.view(K, D, D) + ridge[:, None, None] * torch.eye(D, dtype=hs.dtype, device=hs.device)
        slope = torch.linalg.solve(cov, rhs[..., None])[..., 0]
        slope = torch.where(torch.isfinite(slope), slope, torch.zeros_like(slope))
        resid = torch.where(fin, hs - (d * slope[lab]).sum(-1), torch.full_like(hs, -math.inf))
        resid = torch.where(torch.isnan(hs) | (hs == math.inf), torch.full_like(hs, math.inf), resid)
        off = hs.new_full((K,), -math.inf).scatter_reduce_(0, lab, resid, "amax", include_self=True)
        return off.to(h.dtype), slope.to(h.dtype)



def _lse_rows_inplace(E: Tensor) -> Tensor:
    """``logsumexp`` over the last axis of ``E: (n, m)``, in place; ``-inf`` for empty rows."""
    m = E.amax(dim=-1, keepdim=True)
    empty = ~torch.isfinite(m)
    m = torch.where(empty, torch.zeros_like(m), m)
    # One above log(tiny): float32 exp at log(tiny) itself is subnormal (100x slower).
    low = math.log(torch.finfo(E.dtype).tiny) + 1.0
    L = E.sub_(m).clamp_(min=low).exp_().sum(-1).log_().add_(m.squeeze(-1))
    return L.masked_fill_(empty.squeeze(-1), -math.inf)


def _sq_tile(p: Tensor, q: Tensor, h: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """``h_j - |p_i - q_j|^2 / (2 eps) = E_ij + r_i`` for a tile ``p: (n, D)``, ``q: (m, D)``.

    ``-C/eps = (p.q - |p|^2/2 - |q|^2/2)/eps`` on tile-centred points: one matrix product (float32
    error ~ |tile|^2/eps * 6e-8, far below 1); the rows' term ``r: (n,)`` is kept apart.
    """
    c = p.mean(0)
    pc, qc = p - c, q - c
    E = torch.addmm((h - (qc * qc).sum(-1) * (0.5 / eps))[None], pc, qc.t(), alpha=1.0 / eps)
    return E, (pc * pc).sum(-1) * (-0.5 / eps)


def _sq_lse_tiles(p: Tensor, q: Tensor, h: Tensor, eps: float, tiles: list) -> Tensor:
    """``lse_{j kept}(h_j - |p_i - q_j|^2 / (2 eps))`` -> ``(n,)`` over the tiles (no autograd)."""
    out = torch.full((p.shape[0],), -math.inf, dtype=p.dtype, device=p.device)
    for r0, r1, cols in tiles:
        if cols.numel():
            E, r = _sq_tile(p[r0:r1], q[cols], h[cols], eps)
            out[r0:r1] = _lse_rows_inplace(E) + r
    return out


class _SqTilesLSE(torch.autograd.Function):
    """``L_i = lse_{j kept}(h_j - |p_i - q_j|^2 / (2 eps))`` over the tiles, with a backward that
    recomputes each tile once: ``P_ij = exp(h_j - C_ij/eps - L_i)``, ``dL_i/dh_j = P_ij``,
    ``dL_i/dp_i = -(1/eps) sum_j P_ij (p_i - q_j)``, ``dL_i/dq_j = (1/eps) P_ij (p_i - q_j)``."""

    @staticmethod
    def forward(ctx, p: Tensor, q: Tensor, h: Tensor, eps: float, tiles: list) -> Tensor:  # noqa: D102
        with torch.no_grad():
            out = _sq_lse_tiles(p, q, h, eps, tiles)
        ctx.save_for_backward(p, q, h, out)
        ctx.eps, ctx.tiles = eps, tiles
        return out

    @staticmethod
    def backward(ctx, u: Tensor):  # noqa: D102
        p, q, h, L = ctx.saved_tensors
        eps = ctx.eps
        ok = torch.isfinite(L)
        u = torch.where(ok, u, torch.zeros_like(u))
        L0 = torch.where(ok, L, torch.zeros_like(L))
        gp, gq, gh = torch.zeros_like(p), torch.zeros_like(q), torch.zeros_like(h)
        low = math.log(torch.finfo(p.dtype).tiny) + 1.0
        for r0, r1, cols in ctx.tiles:
            if not cols.numel():
                continue
            pt, qt, ur = p[r0:r1], q[cols], u[r0:r1]
            E, r = _sq_tile(pt, qt, h[cols], eps)
            P = E.add_((r - L0[r0:r1])[:, None]).clamp_(min=low).exp_()
            Pu = P.t() @ ur  # sum_i u_i P_ij
            gh.index_add_(0, cols, Pu)
            gp[r0:r1] = (ur / -eps)[:, None] * (P.sum(1)[:, None] * pt - P @ qt)
            gq.index_add_(0, cols, (P.t() @ (ur[:, None] * pt) - Pu[:, None] * qt) / eps)
        return gp, gq, gh, None, None


class _Tiles:
    """Consecutive row blocks grouped, each group with the union of their kept column blocks.

    Iterating yields ``(r0, r1, col_index)``: a sorted row slice and its sorted column indices
    (1-D long). Stored are the groups' column *blocks* (``O(kept block pairs)`` memory); their
    point indices are expanded when iterated, and kept while all kept ones stay under
    :data:`CACHED_INDICES` (at N = 1e6 the point indices would take gigabytes).
    """

    def __init__(self, keep: Tensor, rows: _Cloud, cols: _Cloud) -> None:
        sizes_c = cols.sizes.to(torch.float64)
        per_row = (keep.to(torch.float64) @ sizes_c)  # kept columns of each row block
        sizes_r = rows.sizes.tolist()
        per_row_l = per_row.tolist()
        bounds = rows.ranges.tolist()
        self._starts, self._lengths = cols.ranges[:, 0], cols.sizes
        self._groups: list[tuple[list[tuple[int, int]], Tensor]] = []
        self._cache: dict[int, Tensor] = {}
        cached = 0
        k, K = 0, keep.shape[0]
        while k < K:
            k1, n_rows, widest = k, 0, 0.0
            # Grow the group while its tile (rows x ~1.5 the widest row's columns) stays small, or
            # while it has few rows (each tile pays O(columns) of gathers and centring).
            while k1 < K and (n_rows < MIN_TILE_ROWS
                              or (n_rows + sizes_r[k1]) * 1.5 * max(widest, per_row_l[k1]) <= TILE_ENTRIES):
                n_rows += sizes_r[k1]
                widest = max(widest, per_row_l[k1])
                k1 += 1
            union = keep[k:k1].any(0).nonzero().squeeze(1)
            width = int(sizes_c[union].sum()) if union.numel() else 0
            r0, r1 = bounds[k][0], bounds[k1 - 1][1]
            step = max(1, MAX_TILE_ENTRIES // max(1, width))  # a wide group: split its rows
            self._groups.append(([(i0, min(r1, i0 + step)) for i0 in range(r0, r1, step)], union))
            if cached + width <= CACHED_INDICES:
                self._cache[len(self._groups) - 1] = self._expand(union)
                cached += width
            k = k1

    def _expand(self, union: Tensor) -> Tensor:
        """Point indices of the column blocks ``union: (k,)`` -> ``(sum of their sizes,)``."""
        s, lengths = self._starts[union], self._lengths[union]
        offsets = torch.cumsum(lengths, 0) - lengths
        total = int(lengths.sum()) if union.numel() else 0
        return torch.arange(total, device=union.device) + torch.repeat_interleave(s - offsets, lengths)

    def __iter__(self):
        for g, (slices, union) in enumerate(self._groups):
            idx = self._cache.get(g)
            if idx is None:
                idx = self._expand(union)
            for r0, r1 in slices:
                yield r0, r1, idx


def _box_quadratic_max(w1: Tensor, w2: Tensor, width: Tensor) -> Tensor:
    """An upper bound of ``max w1 d + w2 e - (d - e)^2 / 2`` over ``|d| <= a``, ``|e| <= b``
    (one axis), given ``width = a + b`` (all of one shape); the sum over axes bounds the
    ``D``-dimensional maximum (the objective is separable, the boxes are products).

    With ``m = (d + e)/2`` and ``s = d - e``: ``(w1 + w2) m + (w1 - w2) s / 2 - s^2/2``,
    maximised over ``|m| <= width/2`` and ``|s| <= width`` separately (a superset of the box).
    With zero slopes this is the box-gap bound ``-gap^2/2 + Delta^2/2`` exactly.
    """
    c = (w1 - w2).abs_().mul_(0.5)
    quad = torch.where(c <= width, 0.5 * c * c, (c - 0.5 * width) * width)
    return quad.add_((w1 + w2).abs_().mul_(0.5 * width))


class _Pair:
    """The fine problem of one batch element: two sorted clouds, the kept pattern, tiles, ranges."""

    def __init__(self, cx: _Cloud, cy: _Cloud, x: Tensor, y: Tensor) -> None:
        self.cx, self.cy = cx, cy
        self.xs, self.ys = x.detach()[cx.perm].contiguous(), y.detach()[cy.perm].contiguous()
        self.keep: Tensor | None = None
        self.tiles_x: _Tiles | list = []
        self.tiles_y: _Tiles | list = []
        self.ranges: Any = None

    def build(self, cost: Cost, u: Tensor | None, v: Tensor | None, thr: float, use_keops: bool) -> None:
        """Keep the block pairs ``(I, J)`` where ``max_{i in I, j in J} u_i + v_j - C(x_i, y_j)``
        may reach ``-thr``: ``u: (N,)``, ``v: (M,)`` (caller order) bound the potentials on each
        side (``None``: keep every pair).

        Two upper bounds of that maximum, the smaller one is tested (both hold for every point
        pair of the blocks):

        * ``max_I u + max_J v - C(dist(box_I, box_J))`` (any radial increasing cost);
        * for ``|x-y|^2/2``, with ``Delta = c_I - c_J`` (box centres) and the affine bounds
          ``u_i <= U_I + <s_I, x_i - c_I>``, ``v_j <= V_J + <t_J, y_j - c_J>``
          (:meth:`_Cloud.block_linear`): expanding ``C`` around ``Delta``, with
          ``d = x_i - c_I``, ``e = y_j - c_J`` in the boxes,
          ``u_i + v_j - C_ij <= U_I + V_J - |Delta|^2/2 + <s_I - Delta, d> + <t_J + Delta, e>
          - |d - e|^2/2``, maximised over the boxes by :func:`_box_quadratic_max`. Potentials
          are nearly affine over a block (their gradient is the displacement), so this follows
          the kept region's shape instead of a ball around each block.
        """
        cx, cy = self.cx, self.cy
        Kx, Ky = cx.centers.shape[0], cy.centers.shape[0]
        dev = cx.centers.device
        if (u is None or v is None) and isinstance(cost, HKConeCost):
            # No potentials yet: only the cone's support (+inf cost past kappa * pi / 2) prunes.
            keep = torch.zeros(Kx, Ky, dtype=torch.bool, device=dev)
            z_x, z_y = cx.centers.new_zeros(Kx), cy.centers.new_zeros(Ky)
            for I, J in self._candidates(cost, z_x, z_y, _BIG):
                keep[I, J] = self._box_test(cost, z_x, z_y, None, _BIG, I, J)
        elif u is None or v is None:
            keep = torch.ones(Kx, Ky, dtype=torch.bool, device=dev)
        else:
            keep = torch.zeros(Kx, Ky, dtype=torch.bool, device=dev)
            um, vm = cx.block_max(u), cy.block_max(v)
            linear = type(cost) is SquaredEuclidean
            bounds = (cx.block_linear(u), cy.block_linear(v)) if linear else None
            for I, J in self._candidates(cost, um, vm, thr):
                keep[I, J] = self._box_test(cost, um, vm, bounds, thr, I, J)
        self.keep = keep
        self.tiles_x = _Tiles(keep, cx, cy)
        self.tiles_y = self.tiles_x if cx is cy else _Tiles(keep.t(), cy, cx)
        if use_keops:
            from pykeops.torch.cluster import from_matrix

            self.ranges = tuple(r.int().contiguous() for r in from_matrix(cx.ranges, cy.ranges, keep))
        else:
            self.ranges = None

    def _candidates(self, cost: Cost, um: Tensor, vm: Tensor, thr: float):
        """Yield ``(I, J)``: block pairs that may pass the test (a superset of the kept ones).

        Few blocks: every pair, less those failing the ball test (``max u + max v - C`` at the
        distance between the balls around the boxes). Many blocks: the box-gap test on
        super-block pairs first, then every block pair of the surviving super-block pairs
        (the test's cost grows with the kept pairs, not with ``Kx * Ky``).
        """
        cx, cy = self.cx, self.cy
        Kx, Ky = cx.centers.shape[0], cy.centers.shape[0]
        if Kx * Ky <= SUPER_PASS_PAIRS:
            rx, ry = cx.half_width.norm(dim=-1), cy.half_width.norm(dim=-1)
            step = max(1, 2**22 // max(1, Ky))
            for i0 in range(0, Kx, step):
                i1 = min(Kx, i0 + step)
                d = torch.cdist(cx.box_center[i0:i1], cy.box_center)
                d = (d - rx[i0:i1, None] - ry[None, :]).clamp_min_(0)
                cand = ~(um[i0:i1, None] + vm[None, :] - _cost_of_distance(cost, d) < -thr)  # NaN keeps
                I, J = cand.nonzero(as_tuple=True)
                yield I + i0, J
            return
        su, sv = cx.super_max(um), cy.super_max(vm)
        Sy = cy.super_center.shape[0]
        off = torch.arange(SUPER_GROUP, device=um.device)
        step = max(1, 2**20 // max(1, Sy))
        for s0 in range(0, cx.super_center.shape[0], step):
            s1 = min(cx.super_center.shape[0], s0 + step)
            gap2 = torch.zeros(s1 - s0, Sy, dtype=um.dtype, device=um.device)
            for k in range(cx.super_center.shape[1]):
                delta = cx.super_center[s0:s1, k, None] - cy.super_center[None, :, k]
                width = cx.super_half[s0:s1, k, None] + cy.super_half[None, :, k]
                gap2 += (delta.abs_() - width).clamp_min_(0).square_()
            cand = ~(su[s0:s1, None] + sv[None, :] - _cost_of_distance(cost, gap2.sqrt_()) < -thr)
            P, Q = cand.nonzero(as_tuple=True)
            # Every block pair of each surviving super-block pair.
            I = ((P + s0) * SUPER_GROUP)[:, None, None] + off[None, :, None]
            J = (Q * SUPER_GROUP)[:, None, None] + off[None, None, :]
            I, J = I.expand(-1, -1, SUPER_GROUP).reshape(-1), J.expand(-1, SUPER_GROUP, -1).reshape(-1)
            ok = (I < Kx) & (J < Ky)
            yield I[ok], J[ok]

    def _box_test(self, cost: Cost, um: Tensor, vm: Tensor, bounds: Any, thr: float, I: Tensor,
                  J: Tensor) -> Tensor:
        """Whether the block pairs ``(I, J)`` pass the test (the smaller of the two bounds)."""
        cx, cy = self.cx, self.cy
        # Per axis on 1-D gathers (the (pairs, D) layout is several times slower here).
        gap2 = torch.zeros(I.shape, dtype=um.dtype, device=um.device)
        lin = None
        if bounds is not None:
            (U, S), (V, T) = bounds
            lin = U[I] + V[J]
        for k in range(cx.box_center.shape[1]):
            delta = cx.box_center[:, k][I] - cy.box_center[:, k][J]
            width = cx.half_width[:, k][I] + cy.half_width[:, k][J]
            gap2 += (delta.abs() - width).clamp_min_(0).square_()
            if lin is not None:
                lin += _box_quadratic_max(S[:, k][I] - delta, T[:, k][J] + delta, width)
                lin -= 0.5 * delta * delta
        bound = um[I] + vm[J] - _cost_of_distance(cost, gap2.sqrt_())
        if lin is not None:
            bound = torch.minimum(bound, lin)  # NaN propagates (kept)
        return ~(bound < -thr)  # NaN (inf - inf) keeps

    @property
    def kept_fraction(self) -> float:
        """Fraction of the ``N x M`` point pairs inside kept blocks."""
        k = self.keep.to(torch.float64)
        n = float(self.cx.sizes.sum()) * float(self.cy.sizes.sum())
        return float(self.cx.sizes.to(torch.float64) @ k @ self.cy.sizes.to(torch.float64)) / max(n, 1.0)


class MultiscaleBackend:
    """Coarse-to-fine, block-sparse backend (``backend="multiscale"``), ``D <= 3``.

    Args:
        x: ``(B, N, D)`` source points. y: ``(B, M, D)`` target points (``D <= 3``).
        a: ``(B, N)`` source weights. b: ``(B, M)`` target weights.
        cost: a built-in cost (``|x-y|^2/2``, ``|x-y|^p/p``, HK cone).
        eps: the target regularisation (sets the default block side).
        diameter: the clouds' diameter (sets the default coarse side); bounding box if ``None``.
        truncate: drop block pairs whose kernel is below ``exp(-truncate)`` (default 8).
        cluster_scale: side of the coarse clusters (default GeomLoss's, ~2,000 cells).
        block_scale: side of the truncation blocks (default ``blur``, at most
            :data:`MAX_BLOCKS` blocks).
        use_keops: ``None`` (KeOps ranges on CUDA when they compile, torch tiles on CPU, where
            they measured faster: 1.2 s against 1.8 s a soft-min at N = 2e4, D = 3, one thread),
            ``True`` (require KeOps) or ``False`` (torch tiles).

    Raises:
        ValueError: ``D > 3``, a user callable cost, non-finite points or a bad parameter.
    """

    name = "multiscale"

    def __init__(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, cost: Cost, *, eps: float | None = None,
                 diameter: float | None = None, truncate: float = DEFAULT_TRUNCATE,
                 cluster_scale: float | None = None, block_scale: float | None = None,
                 use_keops: bool | None = None) -> None:
        if type(cost) not in (SquaredEuclidean, PowerCost, HKConeCost):
            raise ValueError(
                f"backend='multiscale' supports the built-in costs (|x-y|^2/2, |x-y|^p/p, HK); got "
                f"{cost!r}. Use backend='chunked' for a callable cost."
            )
        if x.shape[-1] > 3:
            raise ValueError(
                f"backend='multiscale' clusters on a grid in dimension D <= 3; got D = {x.shape[-1]}. "
                "Use backend='online' or 'chunked'."
            )
        for t, nm in ((x, "x"), (y, "y")):
            if not bool(torch.isfinite(t.detach()).all()):
                raise ValueError(f"{nm} contains NaN or inf coordinates; the multiscale backend "
                                 "clusters points on a grid and needs finite points.")
        for v, nm in ((truncate, "truncate"), (1.0 if eps is None else eps, "eps")):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{nm} must be a finite positive number, got {v!r}.")
        for v, nm in ((cluster_scale, "cluster_scale"), (block_scale, "block_scale")):
            if v is not None and (not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0):
                raise ValueError(f"{nm} must be a finite positive length or None, got {v!r}.")
        if not cluster_tools_available():
            raise ImportError("backend='multiscale' clusters with pykeops.torch.cluster; install pykeops "
                              "(`pip install pykeops`; its clustering needs no compiler).")
        self.x, self.y, self.a, self.b, self.cost = x, y, a, b, cost
        self.log_a, self.log_b = safe_log(a), safe_log(b)
        self.truncate = float(truncate)
        if use_keops is None:  # KeOps ranges on GPUs; on CPU the torch tiles measured faster
            use_keops = x.device.type == "cuda" and keops_status(x.dtype, x.device)[0]
        elif use_keops:
            ok, why = keops_status(x.dtype, x.device)
            if not ok:
                raise RuntimeError(f"use_keops=True but KeOps is unavailable: {why}.")
        self.use_keops = bool(use_keops)
        D = x.shape[-1]
        if diameter is None:
            pts = torch.cat([x.detach().reshape(-1, D), y.detach().reshape(-1, D)])
            diameter = float((pts.amax(0) - pts.amin(0)).norm())
        self.diameter = max(float(diameter), 1e-12)
        self._cluster_scale, self._block_scale = cluster_scale, block_scale
        self.coarse_scale = self.block_scale = math.nan  # set by _setup(eps)
        self.symmetric = x is y
        self._pairs: list[_Pair] = []
        self._setup_eps: float | None = None
        if eps is not None:
            self._setup(eps)
        self._exact = ChunkedBackend(x, y, a, b, cost)
        # Loop state: the potentials / soft-mins last seen on each side (u on x, v on y).
        self._u: Tensor | None = None
        self._v: Tensor | None = None
        self._built_eps: float | None = None
        self._calls = 0
        self.n_builds = 0

    def _setup(self, eps: float) -> None:
        """Cluster the clouds: coarse side from the diameter, block side from ``eps``'s blur."""
        cost, D = self.cost, self.x.shape[-1]
        blur = eps ** (1.0 / cost.p) * (cost.kappa if isinstance(cost, HKConeCost) else 1.0)
        coarse = self._cluster_scale or coarse_cluster_scale(self.diameter, D)
        block = self._block_scale or DEFAULT_BLOCK_FACTOR * blur
        n = max(self.x.shape[1], self.y.shape[1])
        cells = min(MAX_BLOCKS, max(1.0, n / MIN_BLOCK_POINTS))
        block = max(block, coarse_cluster_scale(self.diameter, D, cells))
        self.coarse_scale, self.block_scale = float(coarse), float(block)
        x, y, a, b = self.x, self.y, self.a, self.b
        self._pairs = []
        self._setup_eps = eps
        for k in range(x.shape[0]):
            cx = _Cloud(x[k], a[k], block, coarse)
            cy = cx if self.symmetric else _Cloud(y[k], b[k], block, coarse)
            self._pairs.append(_Pair(cx, cy, x[k], y[k]))

    # ------------------------------------------------------------------ coarse stages
    def _coarse_eps(self) -> float:
        s = self.coarse_scale
        if isinstance(self.cost, HKConeCost):
            return (s / self.cost.kappa) ** 2
        return s**self.cost.p

    def coarse_start(self, penalty_a: Any, penalty_b: Any, eps_list: Sequence[float], *,
                     symmetric: bool) -> tuple[Tensor, list[float], int]:
        """Run the annealing stages with ``eps >= cluster_scale**p`` on the coarse centroids
        (the one loop, on a dense backend), then extrapolate the potentials to the points.

        Returns:
            ``g_init: (B, M)`` for the loop on the points, the stages left (at least the target
            ``eps``), and the number of coarse iterations done.
        """
        from ..sinkhorn import sinkhorn_loop  # the one loop (imported here: no import cycle)

        eps_list = list(eps_list)
        if not self._pairs or self._setup_eps != eps_list[-1]:
            # Blocks sized for the solve's target eps, also where an earlier call (the HK
            # feasibility check's soft-min at eps = 1) clustered for another eps.
            self._setup(eps_list[-1])
        k = 0
        while k < len(eps_list) - 1 and eps_list[k] >= self._coarse_eps():
            k += 1
        self._built_eps, self._calls = None, 0
        if k == 0:
            self._u = self._v = None
            return torch.zeros_like(self.b), eps_list, 0
        coarse, e_jump = eps_list[:k], eps_list[k - 1]
        f0, g0 = [], []
        for k_b, pair in enumerate(self._pairs):
            cx, cy = pair.cx, pair.cy
            xc, yc, ac, bc = cx.coarse_x[None], cy.coarse_x[None], cx.coarse_w[None], cy.coarse_w[None]
            ops = TensorizedBackend(xc, yc, ac, bc, self.cost)
            fc, gc, _, _ = sinkhorn_loop(ops.softmin_x, ops.softmin_y, penalty_a, penalty_b, coarse,
                                         torch.zeros_like(bc), (ac, bc), max_iter=len(coarse), tol=1.0,
                                         symmetric=symmetric, momentum=False)
            # One soft-min extrapolation to the points (each side against the other's centroids).
            x, y = self.x[k_b].detach()[None], self.y[k_b].detach()[None]
            f_pts = penalty_a.aprox(self._dense_softmin(x, yc, bc, gc, e_jump), e_jump)
            if symmetric:
                g_pts = f_pts
            else:
                g_pts = penalty_b.aprox(self._dense_softmin(y, xc, ac, fc, e_jump), e_jump)
            f0.append(f_pts[0])
            g0.append(g_pts[0])
        f_init, g_init = torch.stack(f0), torch.stack(g0)
        self._u, self._v = f_init, g_init
        return (f_init if symmetric else g_init), eps_list[k:], k

    def _dense_softmin(self, p: Tensor, q: Tensor, w: Tensor, h: Tensor, eps: float) -> Tensor:
        """``-eps log sum_j w_j exp((h_j - C(p_i, q_j))/eps)`` over every ``j``: ``p: (1, n, D)``,
        ``q: (1, m, D)``, ``w, h: (1, m)`` -> ``(1, n)`` (the jump from the coarse centroids)."""
        if type(self.cost) is not SquaredEuclidean:
            return ChunkedBackend(p, q, torch.ones_like(p[..., 0]), w, self.cost).softmin_x(eps, h)
        m = q.shape[1]
        cols = torch.arange(m, device=q.device)
        step = max(1, TILE_ENTRIES // max(1, m))
        tiles = [(i0, min(p.shape[1], i0 + step), cols) for i0 in range(0, p.shape[1], step)]
        return -eps * _sq_lse_tiles(p[0], q[0], safe_log(w[0]) + h[0] / eps, eps, tiles)[None]

    # ------------------------------------------------------------------ pattern
    def _maybe_build(self, eps: float, count: bool = True) -> None:
        if not self._pairs:
            self._setup(eps)
        if count:
            if self._built_eps != eps:
                self._built_eps, self._calls = None, 0
            self._calls += 1
        again = REBUILD_AT if self.symmetric else REBUILD_AT_CROSS
        stale = self._built_eps is None or (count and (self._calls in again
                                                      or self._calls % REBUILD_EVERY == 0))
        if not stale and self._pairs[0].keep is not None:
            return
        thr = self.truncate * eps
        for k, pair in enumerate(self._pairs):
            if self._u is None or self._v is None:
                pair.build(self.cost, None, None, thr, self.use_keops)
            else:
                pair.build(self.cost, self._u[k], self._v[k], thr, self.use_keops)
        self._built_eps = eps
        self.n_builds += 1

    @property
    def kept_fraction(self) -> float:
        """Fraction of the point pairs in kept blocks (of the first batch element's pattern)."""
        return self._pairs[0].kept_fraction if self._pairs[0].keep is not None else 1.0

    # ------------------------------------------------------------------ reductions
    def _lse_keops(self, pair: _Pair, eps: float, h_sorted: Tensor, axis: int) -> Tensor:
        """KeOps block-sparse ``lse_j(h_j - C_ij/eps)``; ``axis=1``: rows are x (sorted order)."""
        from pykeops.torch import LazyTensor
        from pykeops.torch.cluster import swap_axes

        if axis == 1:
            p, q, ranges = pair.xs, pair.ys, pair.ranges
        else:
            p, q, ranges = pair.ys, pair.xs, swap_axes(pair.ranges)
        with _quiet():
            X, Y = LazyTensor(p[:, None, :]), LazyTensor(q[None, :, :])
            H = LazyTensor(_finite_h(h_sorted).view(1, -1, 1))
            E = _exponent(self.cost, X, Y, H, eps)
            L = E.logsumexp(dim=1, ranges=ranges).view(-1)
        return torch.where(L < -_BIG / 2, torch.full_like(L, -math.inf), L)

    def _lse_torch(self, pair: _Pair, eps: float, h_sorted: Tensor, axis: int) -> Tensor:
        """Torch tiles ``lse_j(h_j - C_ij/eps)`` over the kept blocks (no autograd)."""
        p, q, tiles = (pair.xs, pair.ys, pair.tiles_x) if axis == 1 else (pair.ys, pair.xs, pair.tiles_y)
        if type(self.cost) is SquaredEuclidean:
            return _sq_lse_tiles(p, q, h_sorted, eps, tiles)
        out = torch.full((p.shape[0],), -math.inf, dtype=p.dtype, device=p.device)
        for r0, r1, cols in tiles:
            if cols.numel():
                C = self._exact._cost_block(p[None, r0:r1], q[None, cols])
                out[r0:r1] = ChunkedBackend._lse_rows(C, h_sorted[cols][None, None], eps)[0]
        return out

    def _softmin(self, eps: float, h: Tensor, axis: int) -> Tensor:
        """No-autograd soft-min of the loop: ``axis=1`` -> ``(B, N)``, ``axis=0`` -> ``(B, M)``."""
        outs = []
        for k, pair in enumerate(self._pairs):
            (cp, cq) = (pair.cx, pair.cy) if axis == 1 else (pair.cy, pair.cx)
            log_w = (self.log_b if axis == 1 else self.log_a)[k]
            hs = (log_w + h[k] / eps)[cq.perm]
            lse = self._lse_keops if self.use_keops else self._lse_torch
            L = lse(pair, eps, hs, axis)
            outs.append(L[cp.inv])
        return torch.stack(outs).mul_(-eps)

    def softmin_x(self, eps: float, g: Tensor) -> Tensor:
        """``-eps log sum_{j kept} b_j exp((g_j - C_ij)/eps)`` -> ``(B, N)`` (no autograd)."""
        with torch.no_grad():
            g = g.detach()
            self._maybe_build(eps)
            S = self._softmin(eps, g, 1)
            # The test's block maxima: soft-min and potential on each side (symmetric: one side).
            if self.symmetric:
                self._u = self._v = torch.maximum(S, g)
            else:
                self._u, self._v = S, (g if self._v is None else torch.maximum(self._v, g))
            return S

    def softmin_y(self, eps: float, f: Tensor) -> Tensor:
        """``-eps log sum_{i kept} a_i exp((f_i - C_ij)/eps)`` -> ``(B, M)`` (no autograd)."""
        with torch.no_grad():
            f = f.detach()
            self._maybe_build(eps)
            T = self._softmin(eps, f, 0)
            self._u = torch.maximum(self._u, f) if self._u is not None else f
            self._v = T
            return T

    def _softmin_autograd(self, eps: float, h: Tensor, axis: int) -> Tensor:
        self._maybe_build(eps, count=False)
        outs = []
        for k, pair in enumerate(self._pairs):
            # Points from self (with their graphs: clustering may have run under no_grad).
            if axis == 1:
                cp, cq, p, q = pair.cx, pair.cy, self.x[k], self.y[k]
                log_w, tiles = self.log_b[k], pair.tiles_x
            else:
                cp, cq, p, q = pair.cy, pair.cx, self.y[k], self.x[k]
                log_w, tiles = self.log_a[k], pair.tiles_y
            ps, qs = p[cp.perm], q[cq.perm]
            hs = (log_w + h[k] / eps)[cq.perm]
            if type(self.cost) is SquaredEuclidean:  # one explicit backward (no checkpoints)
                outs.append(_SqTilesLSE.apply(ps, qs, hs, eps, tiles)[cp.inv])
                continue
            needs = torch.is_grad_enabled() and any(t.requires_grad for t in (ps, qs, hs))
            parts = []
            for r0, r1, cols in tiles:
                if cols.numel() == 0:
                    parts.append(ps.new_full((r1 - r0,), -math.inf))
                    continue
                args = (ps[r0:r1], qs[cols], hs[cols])
                parts.append(checkpoint(self._tile_lse, eps, *args, use_reentrant=False) if needs
                             else self._tile_lse(eps, *args))
            outs.append(torch.cat(parts)[cp.inv])
        return -eps * torch.stack(outs)

    def _tile_lse(self, eps: float, p: Tensor, q: Tensor, h: Tensor) -> Tensor:
        return safe_logsumexp(h[None] - self.cost(p[None], q[None])[0] / eps, dim=-1)

    def softmin_x_autograd(self, eps: float, g: Tensor) -> Tensor:
        """Soft-min ``(B, N)`` over the kept blocks, differentiable w.r.t. ``x, y, b, g``."""
        return self._softmin_autograd(eps, g, 1)

    def softmin_y_autograd(self, eps: float, f: Tensor) -> Tensor:
        """Soft-min ``(B, M)`` over the kept blocks, differentiable w.r.t. ``x, y, a, f``."""
        return self._softmin_autograd(eps, f, 0)

    # ------------------------------------------------------------------ plan access
    def _tiles_log_plan(self, eps: float, f: Tensor, g: Tensor, k: int, axis: int):
        """Yield ``(rows slice, cols, log pi tile, C tile)`` in sorted order of the row side."""
        pair = self._pairs[k]
        if axis == 1:
            cp, cq, p, q, tiles = pair.cx, pair.cy, pair.xs, pair.ys, pair.tiles_x
            lp, lq = (self.log_a[k] + f[k] / eps)[cp.perm], (self.log_b[k] + g[k] / eps)[cq.perm]
        else:
            cp, cq, p, q, tiles = pair.cy, pair.cx, pair.ys, pair.xs, pair.tiles_y
            lp, lq = (self.log_b[k] + g[k] / eps)[cp.perm], (self.log_a[k] + f[k] / eps)[cq.perm]
        for r0, r1, cols in tiles:
            if cols.numel() == 0:
                continue
            C = self._exact._cost_block(p[None, r0:r1], q[None, cols])[0]
            yield r0, r1, cols, lp[r0:r1, None] + lq[None, cols] - C / eps, C

    def apply(self, eps: float, f: Tensor, g: Tensor, v: Tensor, axis: int) -> Tensor:
        """``axis=1``: ``pi @ v``, ``v: (B, M, K)`` -> ``(B, N, K)``; ``axis=0``: ``pi^T @ v``,
        ``v: (B, N, K)`` -> ``(B, M, K)``; over the kept blocks (no autograd)."""
        with torch.no_grad():
            f, g, v = f.detach(), g.detach(), v.detach()
            self._maybe_build(eps, count=False)
            outs = []
            for k, pair in enumerate(self._pairs):
                cp, cq = (pair.cx, pair.cy) if axis == 1 else (pair.cy, pair.cx)
                vs = v[k][cq.perm]
                out = v.new_zeros(cp.perm.shape[0], v.shape[-1])
                for r0, r1, cols, logp, _ in self._tiles_log_plan(eps, f, g, k, axis):
                    out[r0:r1] = logp.exp_() @ vs[cols]
                outs.append(out[cp.inv])
            return torch.stack(outs)

    def plan(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """The dense plan ``(B, N, M)`` from the exact kernel (small problems only)."""
        return self._exact.plan(eps, f, g)

    def plan_rows(self, eps: float, f: Tensor, g: Tensor, rows: Tensor) -> Tensor:
        """Rows ``rows: (B, k)`` of the plan -> ``(B, k, M)`` (exact kernel, torch row blocks)."""
        return self._exact.plan_rows(eps, f, g, rows)

    def transport_cost(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """``<pi, C>`` -> ``(B,)`` over the kept blocks (finite entries)."""
        with torch.no_grad():
            f, g = f.detach(), g.detach()
            self._maybe_build(eps, count=False)
            total = []
            for k in range(len(self._pairs)):
                acc = f.new_zeros(())
                for _, _, _, logp, C in self._tiles_log_plan(eps, f, g, k, 1):
                    acc = acc + (logp.exp_() * torch.where(torch.isfinite(C), C, torch.zeros_like(C))).sum()
                total.append(acc)
            return torch.stack(total)


@dataclass(frozen=True)
class Multiscale:
    """Options of the multiscale backend, passed as ``backend=Multiscale(...)`` to the solvers
    (``backend="multiscale"`` is ``Multiscale()``).

    Args:
        truncate: drop block pairs whose kernel entries are below ``exp(-truncate)`` of their
            row's total (default 8). The test is a rigorous bound, so smaller values cost less
            accuracy than ``exp(-truncate)`` suggests: on ``benchmarks/bench_scale.py``'s problem
            (N = 1e4, D = 3) 5 and 3 gave the same errors as 8 (1e-6 at ``tol=0.01``), faster.
        cluster_scale: side of the coarse clusters (default GeomLoss's, about 2,000 cells).
        block_scale: side of the truncation blocks (default the blur).
        use_keops: ``None`` (KeOps block-sparse reductions on CUDA, torch tiles on CPU), ``True``
            or ``False``.
    """

    truncate: float = DEFAULT_TRUNCATE
    cluster_scale: float | None = None
    block_scale: float | None = None
    use_keops: bool | None = None

    def build(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, cost: Cost) -> MultiscaleBackend:
        """The backend for ``x: (B, N, D)``, ``y: (B, M, D)``, ``a: (B, N)``, ``b: (B, M)``."""
        return MultiscaleBackend(x, y, a, b, cost, truncate=self.truncate, cluster_scale=self.cluster_scale,
                                 block_scale=self.block_scale, use_keops=self.use_keops)
