"""Grid backend: soft-mins for a batch of pairs of images on one shared pixel grid.

:class:`GridPairsBackend` plugs into the shared Sinkhorn loop
(:func:`torchuot.sinkhorn.sinkhorn_loop`) like the point-cloud backends, but never forms a cost
matrix: all pairs share one grid cost, so a soft-min of a block of ``B`` pairs is ONE batched
kernel product against the grid kernel -- separable (two 1D log-convolutions) for
``|x - y|^2 / 2``, a truncated stencil for the HK cone cost (infinite past ``kappa * pi / 2``).
:func:`hk_stencil` lists the stencil's offsets and costs; :func:`needs_float64_kernel` says which
kernel dtype a grid problem needs. Used by
:func:`torchuot.images.pairwise_distances` (and re-exported there).

It supplies the soft-mins and the weights (``a``, ``b``, ``softmin_x/_y``,
``softmin_x/_y_autograd``) that the loop and :func:`torchuot.sinkhorn.dual_value` use; its
``plan`` / ``apply`` / ``plan_rows`` / ``transport_cost`` raise :class:`NotImplementedError` (a block
of pairs has no single plan to return), as OTT-JAX's grid geometry does for what it cannot do.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._typing import Tensor
from .tensorized import safe_log

__all__ = ["GridPairsBackend", "hk_stencil", "needs_float64_kernel", "F32_STENCIL_SPAN"]

# The fast path works in the exp domain: a sum whose value falls below _TINY may have lost terms to
# underflow (or, on the stencil, been raised by the exp(_FLOOR) floor), so its pair is redone in the
# log domain.
_TINY = {torch.float64: 1e-200, torch.float32: 1e-30}
_FLOOR = {torch.float64: -600.0, torch.float32: -87.0}
#: Largest stencil cost / eps up to which the HK stencil runs in float32 (past it the float32
#: kernel spans more than float32's range and most pairs would take the log-domain fallback).
F32_STENCIL_SPAN = 30.0


class _Side(NamedTuple):
    """What one soft-min direction of :class:`GridPairsBackend` keeps across iterations."""

    h: Tensor  # (B, P) log-weights of the pixels that enter the sum, -inf elsewhere
    need: Tensor  # (B, P) bool: rows whose sum must not underflow
    keep: Tensor  # (B, P) 0/1: isfinite(h), multiplies exp(h - shift) (no exp(-inf))
    dead: Tensor | None  # (B, P) stencil only: -inf on rows that reach no mass, else 0


class GridPairsBackend:
    """Soft-mins for a batch of ``B`` pairs of images on ONE shared ``H x W`` grid.

    Plugs into :func:`torchuot.sinkhorn.sinkhorn_loop` (``softmin_x`` / ``softmin_y``) and
    :func:`torchuot.sinkhorn.dual_value` (``a``, ``b``, ``softmin_x_autograd``). The cost is
    never formed per pair: a soft-min of the whole block is one batched kernel product against
    the shared grid kernel,

    * ``kind="separable"``: ``C = |x - y|^2 / 2 = (dr^2 + dc^2) / 2``, ``K = K_rows (x) K_cols``:
      two GEMMs with the ``(W x W)`` and ``(H x H)`` 1D Gibbs kernels for all pairs at once,
      with a max-shift per image row (stage 1) and per image column (stage 2);
    * ``kind="stencil"``: the HK cone cost, finite only for offsets ``|d| < kappa * pi / 2``:
      one ``conv2d`` of all pairs with the truncated Gibbs kernel, with a max-shift per pair
      over the target pixels that can reach some source mass (the others cannot enter a row
      that matters: rows with zero source weight never enter the value).

    The exp-domain sums are in ``exp_dtype``; a pair in which a sum that matters underflows (below
    ``1e-200`` in float64, ``1e-30`` in float32) is recomputed exactly with a log-sum-exp over
    the same separable / stencil structure, so the result equals the log-domain soft-min
    (Schmitzer 2019, Sec. 3: a stabilised kernel with a log-domain fallback).

    Args:
        a: ``(B, H * W)`` source weights. b: ``(B, H * W)`` target weights.
        shape: ``(H, W)``.
        kind: ``"separable"`` or ``"stencil"``.
        spacing: grid spacing in the length units of the cost.
        kappa: HK scale (``kind="stencil"``).
        exp_dtype: dtype of the exp-domain kernel products (float64 has more range: fewer
            log-domain fallbacks; float32 is about twice as fast).
    """

    name = "grid_pairs"

    def __init__(self, a: Tensor, b: Tensor, shape: tuple[int, int], *, kind: str, spacing: float,
                 kappa: float | None = None, exp_dtype: torch.dtype = torch.float64) -> None:
        self.a, self.b = a, b
        self.exp_dtype = exp_dtype
        self.H, self.W = shape
        self.kind = kind
        self.log_a, self.log_b = safe_log(a), safe_log(b)
        self.n_fallback = 0  # pairs x soft-mins that needed the log-domain path
        dev = a.device
        if kind == "separable":
            r = torch.arange(self.H, dtype=torch.float64, device=dev) * spacing
            c = torch.arange(self.W, dtype=torch.float64, device=dev) * spacing
            self.C_rows = (r[:, None] - r[None, :]) ** 2 / 2  # (H, H)
            self.C_cols = (c[:, None] - c[None, :]) ** 2 / 2  # (W, W)
            # Every pixel with mass enters each soft-min; every row's sum must stay representable.
            h_x, h_y = self.log_b, self.log_a
            need_x, need_y = a > 0, b > 0
            dead_x = dead_y = None
        elif kind == "stencil":
            if kappa is None:
                raise ValueError("kind='stencil' needs kappa.")
            self.offsets, c_off, self.R = hk_stencil(kappa, spacing, self.H, self.W, torch.float64, dev)
            R = self.R
            self.C_sten = torch.full((2 * R + 1, 2 * R + 1), math.inf, dtype=torch.float64, device=dev)
            for (dr, dc), c in zip(self.offsets, c_off, strict=True):
                self.C_sten[R + dr, R + dc] = c
            # j can enter a row i with a_i > 0 only if some source mass lies within reach of j.
            mask_x = self._reach(a > 0) & (b > 0)
            mask_y = self._reach(b > 0) & (a > 0)
            # rows with some live target pixel in their stencil: their sum must not vanish
            live_x, live_y = self._reach(mask_x), self._reach(mask_y)
            ninf = torch.full_like(self.log_a, -math.inf)
            h_x, h_y = torch.where(mask_x, self.log_b, ninf), torch.where(mask_y, self.log_a, ninf)
            need_x, need_y = (a > 0) & live_x, (b > 0) & live_y
            zero = torch.zeros((), dtype=exp_dtype, device=dev)
            dead_x, dead_y = torch.where(live_x, zero, -math.inf), torch.where(live_y, zero, -math.inf)
        else:
            raise ValueError(f"kind must be 'separable' or 'stencil', got {kind!r}.")
        # Constant across iterations, per side: the masked log-weights that enter the soft-min,
        # the rows whose sum must not underflow, the 0/1 mask of the finite log-weights and
        # (stencil) the -inf of the rows that can reach no mass.
        self._sides = {
            "x": _Side(h_x.to(exp_dtype), need_x, torch.isfinite(h_x).to(exp_dtype), dead_x),
            "y": _Side(h_y.to(exp_dtype), need_y, torch.isfinite(h_y).to(exp_dtype), dead_y),
        }
        self._kern: dict[float, tuple[Tensor, ...]] = {}

    # ------------------------------------------------------------------ helpers
    def _reach(self, support: Tensor) -> Tensor:
        k = torch.isfinite(self.C_sten).to(torch.float32)[None, None]
        v = support.to(torch.float32).reshape(-1, 1, self.H, self.W)
        return (torch.nn.functional.conv2d(v, k, padding=self.R) > 0.5).reshape(support.shape)

    def _kernels(self, eps: float) -> tuple[Tensor, ...]:
        hit = self._kern.get(eps)
        if hit is not None:
            return hit
        hit = tuple(k.to(self.exp_dtype) for k in self._kernels64(eps))
        self._kern = {eps: hit}  # one eps at a time (eps-scaling moves on)
        return hit

    def _kernels64(self, eps: float) -> tuple[Tensor, ...]:
        if self.kind == "separable":
            return torch.exp(-self.C_rows / eps), torch.exp(-self.C_cols / eps)
        # Banded blocks, one per row offset: Tk[k * W + jc, ic] = exp(-C(k - R, jc - ic) / eps)
        # (zero outside the stencil), so that the 2D stencil sum over (jr, jc) is ONE GEMM of the
        # row-unfolded image (B * H, (2R+1) * W) against Tk ((2R+1) * W, W).
        R, W = self.R, self.W
        k = torch.exp(-self.C_sten / eps)  # (2R+1, 2R+1), zero past the truncation
        jc = torch.arange(W, device=k.device)
        dc = jc[:, None] - jc[None, :]  # jc - ic, (W, W) indexed [jc, ic]
        inside = dc.abs() <= R
        Tk = torch.where(inside[None], k[:, (dc.clamp(-R, R) + R)],
                         torch.zeros((), dtype=k.dtype, device=k.device))  # (2R+1, W, W)
        return (Tk.reshape(-1, W),)

    # ------------------------------------------------------------------ soft-min
    def _log_kernel(self, eps: float, h: Tensor, side: _Side) -> Tensor:
        """``log sum_j exp(h_j - C_ij / eps)`` for every pixel ``i``: ``h (B, P) -> (B, P)``.

        ``h`` is ``-inf`` at the ``j`` that cannot enter a row that matters; ``side.need``
        ``(B, P)`` marks the rows whose sum must not underflow (a pair where one does is redone in
        the log domain). Other rows may come out as anything finite or ``+-inf``.
        """
        need = side.need
        B = h.shape[0]
        tiny = _TINY[h.dtype]
        if self.kind == "separable":
            K_rows, K_cols = self._kernels(eps)
            hh = h.reshape(B, self.H, self.W)
            keep = side.keep.reshape(B, self.H, self.W)
            floor = _FLOOR[h.dtype]
            m1 = hh.amax(dim=-1, keepdim=True)  # (B, H, 1): shift per image row
            row_live = torch.isfinite(m1)
            m1 = torch.where(row_live, m1, torch.zeros_like(m1))
            # As on the stencil: floor + mask instead of exp(-inf) and denormals (slow paths).
            v = torch.exp(torch.clamp_min(hh - m1, floor)).mul_(keep)
            s1 = torch.matmul(v, K_cols)  # (B, H, W): sum over columns j_c, row-shifted by m1
            # Stage 2 without a log/exp round trip: exp(m1_r + log s1[r, c]) = s1[r, c] r_r e^M1
            # with r = exp(m1 - M1) in (0, 1], rescaled per image column by its largest entry.
            # Checked: stage-1 sums of rows with mass >= tiny, and their r >= sqrt(tiny), so that
            # no product below underflows (>= tiny^1.5) and the column maxima are >= tiny.
            M1 = torch.where(row_live, m1, torch.full_like(m1, -math.inf)).amax(dim=-2, keepdim=True)
            r = torch.exp(torch.clamp_min(m1 - M1, floor)).mul_(row_live)  # (B, H, 1)
            bad = ((s1.amin(-1, keepdim=True) < tiny) | (r < math.sqrt(tiny))).logical_and_(row_live)
            bad = bad.flatten(1).any(1)
            P = s1.mul_(r)
            cmax = P.amax(dim=-2, keepdim=True)  # (B, 1, W), >= tiny on pairs that pass the check
            cmax = torch.where(cmax > 0, cmax, torch.ones_like(cmax))
            s2 = torch.matmul(K_rows, P.div_(cmax)).reshape(B, -1)  # (B, H W): sum over rows j_r
            # stage-2 underflow in a row that matters
            bad |= (s2 < tiny).logical_and_(need).any(1)
            shift = (torch.log(cmax) + M1).expand(B, self.H, self.W).reshape(B, -1)
            out = torch.log(s2.clamp_min_(torch.finfo(s2.dtype).tiny)).add_(shift)
        else:
            (Tk,) = self._kernels(eps)
            R, H, W = self.R, self.H, self.W
            M = _finite_max(h, -1)  # (B, 1): shift per pair
            # Terms below exp(_FLOOR) are raised to it and the structural zeros (h = -inf) are
            # masked out by a multiply: exp of -inf or of a denormal result takes a slow path
            # (about 10x slower). The raised terms add at most P exp(_FLOOR) to a sum that is
            # either >= tiny (a relative error below 1e-8) or sent to the log-domain fallback.
            floor = _FLOOR[h.dtype]
            v = torch.exp(torch.clamp_min(h - M, floor)).mul_(side.keep).reshape(B, H, W)
            # U[b, ir, k, jc] = v[b, ir + k - R, jc]: the 2R+1 source rows each target row sees.
            U = torch.nn.functional.pad(v, (0, 0, R, R)).unfold(1, 2 * R + 1, 1).transpose(2, 3)
            s = torch.matmul(U.reshape(B * H, -1), Tk).reshape(B, -1)
            bad = (s < tiny).logical_and_(need).any(1)
            # s = 0 exactly on the rows with no live pixel in their stencil (+inf soft-min, mass
            # that cannot move): log(0) is a slow path, so those rows get -inf by an add.
            out = torch.log(s.clamp_min_(torch.finfo(s.dtype).tiny)).add_(M).add_(side.dead)
        if bool(bad.any()):
            idx = bad.nonzero().squeeze(1)
            self.n_fallback += int(idx.numel())
            out[idx] = self._log_kernel_exact(eps, h[idx])
        return out

    def _log_kernel_exact(self, eps: float, h: Tensor) -> Tensor:
        """Log-domain version of :meth:`_log_kernel` (no underflow), for the pairs that need it."""
        B = h.shape[0]
        hh = h.reshape(B, self.H, self.W)
        if self.kind == "separable":
            Cc, Cr = (self.C_cols / eps).to(h.dtype), (self.C_rows / eps).to(h.dtype)
            T = torch.logsumexp(hh.unsqueeze(2) - Cc, dim=-1)  # (B, H, W)
            S = torch.logsumexp(T.unsqueeze(1) - Cr.unsqueeze(-1), dim=2)
            return S.reshape(B, -1)
        R = self.R
        padded = torch.nn.functional.pad(hh, (R, R, R, R), value=-math.inf)
        views = torch.stack(
            [padded[:, R + dr: R + dr + self.H, R + dc: R + dc + self.W] for dr, dc in self.offsets], 1
        )
        c = torch.stack([self.C_sten[R + dr, R + dc] for dr, dc in self.offsets]).to(h.dtype)
        return torch.logsumexp(views - (c / eps).view(1, -1, 1, 1), dim=1).reshape(B, -1)

    def softmin_x(self, eps: float, g: Tensor) -> Tensor:
        """``-eps log sum_j b_j exp((g_j - C_ij)/eps)`` -> ``(B, P)`` (exact where ``a_i > 0``)."""
        side = self._sides["x"]
        h = torch.add(side.h, g.to(self.exp_dtype), alpha=1.0 / eps)
        return self._log_kernel(eps, h, side).mul_(-eps).to(g.dtype)

    def softmin_y(self, eps: float, f: Tensor) -> Tensor:
        """``-eps log sum_i a_i exp((f_i - C_ij)/eps)`` -> ``(B, P)`` (the grid cost is symmetric)."""
        side = self._sides["y"]
        h = torch.add(side.h, f.to(self.exp_dtype), alpha=1.0 / eps)
        return self._log_kernel(eps, h, side).mul_(-eps).to(f.dtype)

    # No cached state that autograd would miss: the same functions serve dual_value.
    softmin_x_autograd = softmin_x
    softmin_y_autograd = softmin_y

    # ------------------------------------------------------------------ the rest of the protocol
    #: No point clouds: the points are the grid's pixels (:func:`torchuot.images.grid_coordinates`).
    x = None
    y = None

    def _no_plan(self, what: str) -> NotImplementedError:
        return NotImplementedError(
            f"GridPairsBackend has no {what}: it solves a block of B image pairs on one grid for their "
            "values and marginals (UOTResult.value, .marginal(axis), .marginal_residuals()). For the plan "
            "of one pair, solve it as point clouds: torchuot.sinkhorn on "
            "torchuot.images.images_to_measures(...)."
        )

    def apply(self, eps: float, f: Tensor, g: Tensor, v: Tensor, axis: int) -> Tensor:
        """Not available on a grid block (raises :class:`NotImplementedError`)."""
        raise self._no_plan("apply (plan-vector products)")

    def plan(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """Not available on a grid block (raises :class:`NotImplementedError`)."""
        raise self._no_plan("dense plan")

    def plan_rows(self, eps: float, f: Tensor, g: Tensor, rows: Tensor) -> Tensor:
        """Not available on a grid block (raises :class:`NotImplementedError`)."""
        raise self._no_plan("plan rows")

    def transport_cost(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """Not available on a grid block (raises :class:`NotImplementedError`)."""
        raise self._no_plan("transport cost <pi, C>")


def _finite_max(t: Tensor, dim: int) -> Tensor:
    m = t.amax(dim=dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def hk_stencil(kappa: float, spacing: float, H: int, W: int, dtype, device
               ) -> tuple[list[tuple[int, int]], Tensor, int]:
    """Offsets ``(dr, dc)`` (in pixels) where the HK cone cost is finite, and its values there.

    Returns the offsets, the costs ``(K,)`` and the stencil radius ``R`` in pixels.
    """
    reach = kappa * math.pi / 2
    R = min(int(math.floor(reach / spacing)), max(H, W) - 1)
    offsets, dist = [], []
    for dr in range(-R, R + 1):
        for dc in range(-R, R + 1):
            if abs(dr) >= H or abs(dc) >= W:
                continue
            d = math.hypot(dr, dc) * spacing
            if d / kappa < math.pi / 2:
                offsets.append((dr, dc))
                dist.append(d)
    d = torch.tensor(dist, dtype=torch.float64)
    c = -2 * torch.log(torch.cos(d / kappa))
    return offsets, c.to(dtype=dtype, device=device), R


def needs_float64_kernel(cost: str, *, eps: float, shape: tuple[int, int], spacing: float = 1.0,
                         kappa: float | None = None) -> bool:
    """Whether a grid problem's kernel products need float64 (the ``exp_dtype`` of
    :meth:`torchuot.UOTProblem.on_grid`) when the weights are float32.

    Always for ``cost="sqeuclidean"``: the separable kernel spans more than float32's range (many
    pairs would take the log-domain fallback). For ``cost="hk"``, when the largest finite stencil
    cost over ``eps`` exceeds :data:`F32_STENCIL_SPAN` (``kappa = 5`` px with ``blur = 1`` px does,
    ``kappa = 2`` px does not); the short-range stencil is otherwise exact and faster in float32.

    Args:
        cost: ``"sqeuclidean"`` or ``"hk"``, as in :meth:`~torchuot.UOTProblem.on_grid`.
        eps: entropic regularisation (cost units). shape: the grid ``(H, W)``.
        spacing: distance between neighbouring pixels. kappa: the HK length scale (``cost="hk"``).

    Returns:
        ``True`` if the kernel should run in float64 whatever the weights' dtype.
    """
    if cost == "sqeuclidean":
        return True
    if cost != "hk":
        raise ValueError(f"cost must be 'sqeuclidean' or 'hk' on a grid, got {cost!r}.")
    if kappa is None:
        raise ValueError("cost='hk' needs kappa (the HK length scale, in the grid's units).")
    _, c_off, _ = hk_stencil(kappa, spacing, *shape, torch.float64, "cpu")
    return float(c_off.max()) / eps > F32_STENCIL_SPAN
