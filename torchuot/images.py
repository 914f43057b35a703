"""Images as measures on a pixel grid, and fast pairwise HK / W2 / Euclidean distance matrices.

An image ``(H, W)`` is the measure ``sum_p I_p delta_{x_p}`` on its pixel grid: intensities are
non-negative weights (zero pixels are allowed: their log-weight is ``-inf``), pixel ``(r, c)``
sits at

* ``units="pixel"`` (default): ``x = (r, c)`` -- neighbouring pixels are 1 apart;
* ``units="unit"``: ``x = ((r + 0.5) / S, (c + 0.5) / S)`` with ``S = max(H, W)`` -- the grid fills
  ``[0, 1]^2``, neighbours are ``1 / S`` apart.

Every length (``kappa``, ``blur``, ``reach``) is in the same units as the grid.

Metrics of :func:`pairwise_distances` (conventions of :func:`torchuot.sinkhorn`):

* ``"hk"``: Hellinger-Kantorovich, the UOT problem with the cone cost
  ``-2 log cos(min(|x - y| / kappa, pi / 2))`` and KL penalties of strength 1, images *not*
  normalised, ``eps = (blur / kappa)^2`` -- as :func:`torchuot.hk_distance`. Returns ``HK`` (or
  ``HK^2 = S_eps`` with ``squared=True``).
* ``"w2"``: balanced OT of the images normalised to probability, cost ``|x - y|^2 / 2``,
  ``eps = blur^2``. Returns ``W2 = sqrt(2 S_eps)`` (or ``W2^2 = 2 S_eps``).
* ``"sinkhorn_divergence"``: unbalanced OT with cost ``|x - y|^2 / 2`` and KL penalties of
  strength ``rho = reach^2``, images not normalised. Returns ``sqrt(2 S_eps)`` (or ``2 S_eps``).
* ``"euclidean"``: the Euclidean distance between the flattened intensity vectors.

``S_eps`` is the debiased Sinkhorn divergence of :func:`torchuot.sinkhorn_divergence` (zero
on identical images); ``debias=False`` gives the raw entropic value ``OT_eps`` instead.

Speed: all pairs share one grid cost, so a block of ``B`` pairs is solved by the shared
:func:`torchuot.sinkhorn.sinkhorn_loop` with a :class:`GridPairsBackend` whose soft-min is ONE
batched log-domain kernel product for the whole block: a *separable* kernel for the squared
Euclidean cost (``C = C_rows (+) C_cols``: two 1D log-convolutions, ``2 H W (H + W)`` terms a
pair instead of ``(HW)^2``) and a *sparse stencil* for the HK cone cost (the cost is infinite
past ``kappa * pi / 2``: only the offsets inside that disc are summed). Both are exact
log-sum-exps (no underflow at small blur), so the pairwise values equal the pair-by-pair
results of :func:`torchuot.hk_distance` / :func:`torchuot.sinkhorn_divergence` on the same grid.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from pathlib import Path
from typing import NamedTuple

import torch

from ._typing import Tensor
from .backends import safe_log
from .costs import HKConeCost, SquaredEuclidean
from .penalties import KL, Balanced, Penalty
from .progress import progress_bar
from .sinkhorn import _solve, dual_value, epsilon_schedule

__all__ = [
    "METRICS",
    "UNITS",
    "grid_coordinates",
    "images_to_measures",
    "GridPairsBackend",
    "pairwise_distances",
    "merge_partial",
]

METRICS = ("hk", "w2", "euclidean", "sinkhorn_divergence")
UNITS = ("pixel", "unit")
_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- grid and measures
def _spacing(height: int, width: int, units: str) -> float:
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}.")
    return 1.0 if units == "pixel" else 1.0 / max(height, width)


def _axis(n: int, units: str, spacing: float, dtype, device) -> Tensor:
    idx = torch.arange(n, dtype=dtype, device=device)
    return idx if units == "pixel" else (idx + 0.5) * spacing


def grid_coordinates(height: int, width: int, *, units: str = "pixel", dtype: torch.dtype = torch.float32,
                     device: torch.device | str | None = None) -> Tensor:
    """Pixel positions ``(H * W, 2)`` in row-major order, as ``(row, col)`` in ``units``.

    ``"pixel"``: integer indices (spacing 1); ``"unit"``: centres ``(i + 0.5) / max(H, W)``.
    """
    for v, n in ((height, "height"), (width, "width")):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{n} must be a positive integer, got {v!r}.")
    h = _spacing(height, width, units)
    r = _axis(height, units, h, dtype, device)
    c = _axis(width, units, h, dtype, device)
    return torch.cartesian_prod(r, c)


def _check_images(images: object, name: str) -> Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, H, W), got {type(images)!r}.")
    if images.dim() == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.dim() != 3:
        raise ValueError(
            f"{name} must have shape (N, H, W) (or (N, 1, H, W)), got {tuple(images.shape)}."
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} holds no images (shape {tuple(images.shape)}).")
    if not images.is_floating_point():
        images = images.float()
    if not bool(torch.isfinite(images).all()):
        raise ValueError(f"{name} contains NaN or inf intensities.")
    if bool((images < 0).any()):
        raise ValueError(
            f"{name} has negative intensities (min {float(images.min()):.3g}); images are "
            "measures, intensities must be >= 0."
        )
    return images


def images_to_measures(images: Tensor, *, units: str = "pixel", normalize: bool = False
                       ) -> tuple[Tensor, Tensor]:
    """Images ``(N, H, W)`` -> grid points ``(H * W, 2)`` and weights ``(N, H * W)``.

    Args:
        images: ``(N, H, W)`` non-negative intensities.
        units: ``"pixel"`` or ``"unit"`` (see the module docstring).
        normalize: divide each image by its total mass (probability measures).
    """
    images = _check_images(images, "images")
    N, H, W = images.shape
    w = images.reshape(N, H * W)
    if normalize:
        w = w / _masses(w, "images")[:, None]
    return grid_coordinates(H, W, units=units, dtype=w.dtype, device=w.device), w


def _masses(w: Tensor, name: str) -> Tensor:
    m = w.sum(-1)
    if bool((m <= 0).any()):
        bad = int((m <= 0).nonzero()[0, 0])
        raise ValueError(f"{name}[{bad}] is an all-zero image: a measure needs positive total mass.")
    return m


# ---------------------------------------------------------------------------- the backend
# The fast path works in the exp domain: a sum whose value falls below _TINY may have lost terms to
# underflow (or, on the stencil, been raised by the exp(_FLOOR) floor), so its pair is redone in the
# log domain.
_TINY = {torch.float64: 1e-200, torch.float32: 1e-30}
_FLOOR = {torch.float64: -600.0, torch.float32: -87.0}
_F32_STENCIL_SPAN = 30.0  # max stencil cost / eps up to which the HK stencil runs in float32


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


# ---------------------------------------------------------------------------- solving blocks
class _Problem:
    """Everything that is fixed across blocks: penalties, eps schedule, backend factory."""

    def __init__(self, metric: str, shape: tuple[int, int], spacing: float, diameter: float, *,
                 kappa: float, blur: float, reach: float | None, scaling: float, max_iter: int,
                 tol: float) -> None:
        self.metric, self.shape, self.spacing = metric, shape, spacing
        self.max_iter, self.tol = max_iter, tol
        if metric == "hk":
            cost = HKConeCost(kappa)
            self.eps = (blur / kappa) ** 2
            self.pen: Penalty = KL(1.0)
            self.kind, self.kappa = "stencil", kappa
            # Largest finite cost on the stencil over eps: past _F32_STENCIL_SPAN the float32 kernel
            # spans more than float32's range and most pairs would take the log-domain fallback
            # (kappa = 5 px, blur = 1 px: 70% of the soft-mins, 15x slower than float64).
            _, c_off, _ = hk_stencil(kappa, spacing, *shape, torch.float64, "cpu")
            self.stencil_span = float(c_off.max()) / self.eps
        else:
            cost = SquaredEuclidean()
            self.eps = blur ** 2
            self.pen = Balanced() if metric == "w2" else KL(reach ** 2)  # type: ignore[operator]
            self.kind, self.kappa = "separable", None
            self.stencil_span = math.inf  # the separable kernel always runs in float64
        # One schedule for every pair and self term, from the grid's diameter (as the core
        # solver does from the bounding box of the full grid).
        self.eps_list = epsilon_schedule(cost.eps_start(diameter), self.eps, scaling, cost.p)

    def ops(self, a: Tensor, b: Tensor) -> GridPairsBackend:
        # float32 lacks the range for the separable W2 kernel (many fallbacks); the HK stencil is
        # short-range and fine in float32 while its kernel spans a moderate range.
        wide = self.kind == "separable" or self.stencil_span > _F32_STENCIL_SPAN
        return GridPairsBackend(a, b, self.shape, kind=self.kind, spacing=self.spacing, kappa=self.kappa,
                                exp_dtype=torch.float64 if wide else a.dtype)

    def value(self, a: Tensor, b: Tensor, *, symmetric: bool = False) -> Tensor:
        """Entropic ``OT_eps(a_k, b_k)`` for a block: ``(B, P), (B, P) -> (B,)``."""
        ops = self.ops(a, b)
        f, g, _, conv = _solve(ops, self.pen, self.pen, self.eps_list, self.max_iter, self.tol,
                               "envelope", symmetric=symmetric)
        if not conv:
            _log.warning("pairwise_distances: a block of %d pairs hit max_iter=%d before tol=%g.",
                         a.shape[0], self.max_iter, self.tol)
        return dual_value(ops, self.pen, self.pen, self.eps, f, g)


def _batched(n: int, size: int):
    for s in range(0, n, size):
        yield s, min(s + size, n)


def pairwise_distances(
    images_a: Tensor,
    images_b: Tensor | None = None,
    *,
    metric: str = "hk",
    kappa: float = 2.0,
    blur: float | None = None,
    reach: float | None = None,
    debias: bool = True,
    squared: bool = False,
    units: str = "pixel",
    normalize: bool | None = None,
    scaling: float = 0.5,
    max_iter: int = 1000,
    tol: float = 1e-4,
    block_size: int = 256,
    rows: tuple[int, int] | None = None,
    checkpoint: str | os.PathLike | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Tensor:
    """Distance matrix between two sets of images (or within one set).

    Args:
        images_a: ``(N, H, W)`` non-negative intensities (or ``(N, 1, H, W)``).
        images_b: ``(M, H, W)`` on the same grid, or ``None`` for ``images_a`` against itself:
            the result is then symmetric, its diagonal is zero (for ``debias=True``) and only
            the ``N (N - 1) / 2`` pairs ``i < j`` are solved.
        metric: ``"hk"``, ``"w2"``, ``"sinkhorn_divergence"`` or ``"euclidean"`` (see the module
            docstring).
        kappa: HK length scale, in ``units`` (mass moves at most ``kappa * pi / 2``).
        blur: entropic blur length in ``units`` (``eps = (blur/kappa)^2`` for HK, ``blur^2``
            otherwise). Default: half a pixel.
        reach: KL reach for ``"sinkhorn_divergence"`` (``rho = reach^2``), in ``units``.
        debias: Sinkhorn divergence (default; zero on identical images) or raw ``OT_eps``.
        squared: return ``HK^2`` / ``W2^2`` instead of the distance.
        units: ``"pixel"`` (spacing 1) or ``"unit"`` (grid in ``[0, 1]^2``).
        normalize: divide each image by its mass; default ``True`` for ``"w2"`` (required) and
            ``False`` otherwise.
        scaling, max_iter, tol: as :func:`torchuot.sinkhorn` (``tol`` is relative to ``eps``).
        block_size: pairs solved together in one batched Sinkhorn loop.
        rows: ``(start, stop)``: compute only the rows ``start <= i < stop`` (for one set: the
            pairs ``i < j`` with ``i`` in that range, mirrored); other entries are NaN. Run the
            ranges in separate processes or machines and combine with :func:`merge_partial`.
        checkpoint: a file path; the partial result is saved after every block and a rerun with
            the same inputs and arguments resumes from it.
        device: where to compute (default: CUDA when available, else the input's device).
        dtype: computation dtype (float32 default; float64 for reference-level agreement).
        progress: show a tqdm progress bar (when tqdm is installed).

    Returns:
        ``(N, M)`` distances on the input's device, in ``dtype``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    A = _check_images(images_a, "images_a")
    one_set = images_b is None
    Bm = A if one_set else _check_images(images_b, "images_b")
    if A.shape[1:] != Bm.shape[1:]:
        raise ValueError(
            f"images_a and images_b must share one grid: got {tuple(A.shape[1:])} and "
            f"{tuple(Bm.shape[1:])}."
        )
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}.")
    for v, n in ((block_size, "block_size"), (max_iter, "max_iter")):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{n} must be a positive integer, got {v!r}.")
    out_device = A.device
    if device is None:
        device = torch.device("cuda") if torch.cuda.is_available() else A.device
    device = torch.device(device)
    N, H, W = A.shape
    M = Bm.shape[0]
    spacing = _spacing(H, W, units)
    if normalize is None:
        normalize = metric == "w2"
    if metric == "w2" and not normalize:
        raise ValueError("metric='w2' is balanced OT: it needs normalize=True (probability images).")
    wa = A.reshape(N, -1).to(device=device, dtype=dtype)
    wb = Bm.reshape(M, -1).to(device=device, dtype=dtype)
    if metric != "euclidean":
        ma, mb = _masses(wa, "images_a"), _masses(wb, "images_b")
        if normalize:
            wa, wb = wa / ma[:, None], wb / mb[:, None]
    r0, r1 = _check_rows(rows, N)

    if metric == "euclidean":
        D = torch.full((N, M), math.nan, dtype=dtype, device=device)
        D[r0:r1] = torch.cdist(wa[r0:r1], wb)
        if one_set:
            D[:, r0:r1] = D[r0:r1].T.clone()
            D.diagonal()[r0:r1] = 0
        D = D ** 2 if squared else D
        return D.to(out_device)

    blur = 0.5 * spacing if blur is None else _positive(blur, "blur")
    kappa = _positive(kappa, "kappa")
    if metric == "sinkhorn_divergence":
        if reach is None:
            raise ValueError("metric='sinkhorn_divergence' needs reach (KL reach length, rho = reach**2).")
        reach = _positive(reach, "reach")
    _positive(tol, "tol")
    if not 0 < scaling < 1:
        raise ValueError(f"scaling must lie in (0, 1), got {scaling!r}.")
    diameter = math.hypot(H - 1, W - 1) * spacing
    prob = _Problem(metric, (H, W), spacing, diameter, kappa=kappa, blur=blur, reach=reach,
                    scaling=scaling, max_iter=max_iter, tol=tol)

    # The pairs to solve, in a fixed order (resume relies on it).
    if one_set:
        ii, jj = torch.triu_indices(N, N, offset=1, device=device)
        keep = (ii >= r0) & (ii < r1)
        ii, jj = ii[keep], jj[keep]
    else:
        ii = torch.arange(r0, r1, device=device).repeat_interleave(M)
        jj = torch.arange(M, device=device).repeat(r1 - r0)
    n_pairs = ii.numel()

    key = None
    if checkpoint is not None:
        key = _config_key(wa, wb, one_set, metric, kappa, blur, reach, debias, units, normalize, scaling,
                          max_iter, tol, block_size, (r0, r1), dtype)
    state = _load_checkpoint(checkpoint, key)
    if state is None:
        state = {"key": key, "D": torch.full((N, M), math.nan, dtype=dtype), "done": 0,
                 "self_a": None, "self_b": None}
    D_cpu: Tensor = state["D"]

    bar = progress_bar(n_pairs + (N + (0 if one_set else M) if debias else 0), desc="pairwise OT",
                       unit="pair", enabled=progress)
    with torch.no_grad():
        if debias and state["self_a"] is None:
            state["self_a"] = _self_terms(prob, wa, block_size, bar).cpu()
            state["self_b"] = state["self_a"] if one_set else _self_terms(prob, wb, block_size, bar).cpu()
            _save_checkpoint(checkpoint, state)
        elif debias and bar is not None:
            bar.update(N + (0 if one_set else M))
        if bar is not None:
            bar.update(min(state["done"], n_pairs))
        for s, e in _batched(n_pairs, block_size):
            if e <= state["done"]:
                continue
            i, j = ii[s:e], jj[s:e]
            a, b = wa[i], wb[j]
            val = prob.value(a, b)
            if debias:
                sa = state["self_a"].to(device)[i]
                sb = state["self_b"].to(device)[j]
                mass = 0.5 * prob.eps * (a.sum(-1) - b.sum(-1)) ** 2
                val = val - 0.5 * (sa + sb) + mass
            D_cpu[i.cpu(), j.cpu()] = val.cpu()
            if one_set:
                D_cpu[j.cpu(), i.cpu()] = val.cpu()
            state["done"] = e
            _save_checkpoint(checkpoint, state)
            if bar is not None:
                bar.update(e - s)
        if bar is not None:
            bar.close()

    D = D_cpu.clone()
    if one_set:
        idx = torch.arange(r0, r1)
        if debias:
            D[idx, idx] = 0.0
        else:
            D[idx, idx] = _raw_self(prob, wa[r0:r1], block_size).cpu()
    # The squared quantity: HK^2 = S for HK, W2^2 = 2 S for the |x-y|^2/2 cost.
    if metric != "hk":
        D = 2 * D
    if not squared:
        D = torch.sqrt(D.clamp_min(0))  # NaN (not computed) stays NaN
    return D.to(out_device)


def _raw_self(prob: _Problem, w: Tensor, block_size: int) -> Tensor:
    blocks = _batched(w.shape[0], block_size)
    return torch.cat([prob.value(w[s:e], w[s:e], symmetric=True) for s, e in blocks])


def _self_terms(prob: _Problem, w: Tensor, block_size: int, bar) -> Tensor:
    out = []
    for s, e in _batched(w.shape[0], block_size):
        out.append(prob.value(w[s:e], w[s:e], symmetric=True))
        if bar is not None:
            bar.update(e - s)
    return torch.cat(out)


def _check_rows(rows: object, N: int) -> tuple[int, int]:
    if rows is None:
        return 0, N
    if (not isinstance(rows, (tuple, list)) or len(rows) != 2
            or not all(isinstance(r, int) and not isinstance(r, bool) for r in rows)):
        raise ValueError(f"rows must be a pair of ints (start, stop), got {rows!r}.")
    r0, r1 = rows
    if not 0 <= r0 < r1 <= N:
        raise ValueError(f"rows must satisfy 0 <= start < stop <= N = {N}, got {rows!r}.")
    return r0, r1


def _positive(v: object, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a finite positive number, got {v!r}.")
    return float(v)


def merge_partial(parts: list[Tensor]) -> Tensor:
    """Combine partial matrices from :func:`pairwise_distances` ``rows=...`` runs (NaN = missing)."""
    if not parts:
        raise ValueError("merge_partial needs at least one partial matrix.")
    out = parts[0].clone()
    for p in parts[1:]:
        if p.shape != out.shape:
            raise ValueError(f"partial matrices differ in shape: {tuple(out.shape)} vs {tuple(p.shape)}.")
        out = torch.where(torch.isnan(out), p, out)
    return out


# ---------------------------------------------------------------------------- resume, progress
def _config_key(wa: Tensor, wb: Tensor, *parts: object) -> str:
    h = hashlib.sha256()
    for w in (wa, wb):
        h.update(w.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    h.update(json.dumps([str(p) for p in parts]).encode())
    return h.hexdigest()


def _load_checkpoint(path: str | os.PathLike | None, key: str | None) -> dict | None:
    if path is None or not Path(path).exists():
        return None
    state = torch.load(path, weights_only=False)
    if not isinstance(state, dict) or state.get("key") != key:
        raise ValueError(
            f"checkpoint {str(path)!r} was written for other images or arguments; delete it or "
            "pass another checkpoint path."
        )
    return state


def _save_checkpoint(path: str | os.PathLike | None, state: dict) -> None:
    if path is None:
        return
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never corrupts the checkpoint
