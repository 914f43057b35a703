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

Distributed: under ``torchrun --nproc_per_node K`` (CPU processes with gloo, or one GPU per rank
with nccl), ``pairwise_distances(..., distributed=True)`` (automatic once ``torch.distributed``
is initialised with more than one rank) deals the rows round-robin to the ranks, checkpoints
each rank's partial matrix in its own file (:func:`rank_checkpoint_path`) so a killed rank
resumes, and all-reduces the parts: every rank returns the same matrix as one process.

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
import math
import os
import pickle
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import torch

from ._typing import Tensor
from .backends.grid import GridPairsBackend, hk_stencil, needs_float64_kernel
from .costs import SquaredEuclidean
from .divergence import debiased_value, hk_setup
from .penalties import KL, Balanced, Penalty
from .problem import SinkhornOptions, UOTProblem, check_policy
from .progress import progress_bar
from .result import ConvergenceWarning
from .sinkhorn import Potentials, check_convergence, dual_value, epsilon_schedule, solve_potentials

__all__ = [
    "METRICS",
    "UNITS",
    "grid_coordinates",
    "images_to_measures",
    "GridPairsBackend",
    "hk_stencil",
    "pairwise_distances",
    "merge_partial",
    "rank_checkpoint_path",
]

METRICS = ("hk", "w2", "euclidean", "sinkhorn_divergence")
UNITS = ("pixel", "unit")


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


# ---------------------------------------------------------------------------- solving blocks
class _Problem:
    """Everything that is fixed across blocks: penalties, eps schedule, options; each block is a
    :meth:`UOTProblem.on_grid` solved by :func:`torchuot.sinkhorn.solve_potentials`."""

    def __init__(self, metric: str, shape: tuple[int, int], spacing: float, diameter: float, *,
                 kappa: float, blur: float, reach: float | None, scaling: float, max_iter: int,
                 tol: float, options: SinkhornOptions | None = None, policy: str = "warn") -> None:
        self.metric, self.shape, self.spacing, self.diameter = metric, shape, spacing, diameter
        self.max_iter, self.tol = max_iter, tol
        # Non-convergence: "raise" at the first block, else counted here and reported once by
        # report_nonconvergence() (the options' policy, as every solver function).
        self.policy = check_policy(policy)
        self.blocks = 0
        self.unconverged: list[Potentials] = []
        # Values only, no gradient: the envelope mode.
        base = SinkhornOptions(scaling=scaling, max_iter=max_iter, tol=tol) if options is None else options
        self.options = SinkhornOptions(scaling=scaling, max_iter=max_iter, tol=tol, grad="envelope",
                                       momentum=base.momentum, check_every=base.check_every,
                                       on_nonconvergence="ignore")
        if metric == "hk":
            cost, self.eps, rho = hk_setup(kappa, blur)  # HK's conventions, as hk_distance
            self.pen: Penalty = KL(rho)
            self.kind, self.kappa = "stencil", kappa
            # Past F32_STENCIL_SPAN the float32 stencil kernel spans more than float32's range and
            # most pairs would take the log-domain fallback (kappa = 5 px, blur = 1 px: 70% of the
            # soft-mins, 15x slower than float64).
            self.wide = needs_float64_kernel("hk", eps=self.eps, shape=shape, spacing=spacing, kappa=kappa)
        else:
            cost = SquaredEuclidean()
            self.eps = blur ** 2
            self.pen = Balanced() if metric == "w2" else KL(reach ** 2)  # type: ignore[operator]
            self.kind, self.kappa = "separable", None
            self.wide = needs_float64_kernel("sqeuclidean", eps=self.eps, shape=shape)  # always True
        # One schedule for every pair and self term, from the grid's diameter (as the core
        # solver does from the bounding box of the full grid).
        self.eps_list = epsilon_schedule(cost.eps_start(diameter), self.eps, scaling, cost.p)

    def problem(self, a: Tensor, b: Tensor, *, symmetric: bool = False) -> UOTProblem:
        """The block's problem ``(B, P), (B, P)`` on the grid."""
        return UOTProblem.on_grid(
            a, b, self.shape, cost="hk" if self.kind == "stencil" else "sqeuclidean",
            spacing=self.spacing, kappa=self.kappa, eps=self.eps, penalty=self.pen,
            symmetric=symmetric, exp_dtype=torch.float64 if self.wide else a.dtype, diameter=self.diameter,
        )

    def ops(self, a: Tensor, b: Tensor) -> GridPairsBackend:
        return self.problem(a, b).ops  # type: ignore[return-value]

    def value(self, a: Tensor, b: Tensor, *, symmetric: bool = False) -> Tensor:
        """Entropic ``OT_eps(a_k, b_k)`` for a block: ``(B, P), (B, P) -> (B,)``."""
        prob = self.problem(a, b, symmetric=symmetric)
        s = solve_potentials(prob, self.options)
        self.blocks += 1
        if not s.converged:
            if self.policy == "raise":
                check_convergence("raise", [s], f"pairwise_distances (a block of {a.shape[0]} pairs)")
            self.unconverged.append(s)
        return dual_value(prob.ops, self.pen, self.pen, self.eps, s.f, s.g)

    def report_nonconvergence(self) -> None:
        """One :class:`~torchuot.result.ConvergenceWarning` for the blocks that did not converge
        (policy ``"warn"``; ``"raise"`` raised at the first one, ``"ignore"`` says nothing)."""
        bad = self.unconverged
        if not bad or self.policy != "warn":
            return
        worst = max(max(float(s.residual_a.max()), float(s.residual_b.max())) for s in bad)
        warnings.warn(
            f"pairwise_distances: {len(bad)} of {self.blocks} blocks of pairs did not converge (largest "
            f"relative marginal residual {worst:.3g}, tolerance {bad[0].marginal_tol:.3g}, max_iter="
            f"{self.max_iter}); their distances may be wrong. Raise max_iter, increase blur, use "
            "dtype=torch.float64, or pass on_nonconvergence='ignore' to accept them.",
            ConvergenceWarning, stacklevel=3,
        )


def _batched(n: int, size: int) -> Iterator[tuple[int, int]]:
    for s in range(0, n, size):
        yield s, min(s + size, n)


class _Inputs(NamedTuple):
    """Validated inputs of :func:`pairwise_distances`."""

    wa: Tensor  # (N, H * W) weights on the compute device, in dtype
    wb: Tensor  # (M, H * W)
    one_set: bool
    shape: tuple[int, int]
    spacing: float
    normalize: bool
    rows: tuple[int, int]
    out_device: torch.device


class _Dist(NamedTuple):
    """This process's share of a distributed job: rank ``rank`` of ``world``."""

    rank: int
    world: int


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
    distributed: bool | None = None,
    on_nonconvergence: str = "warn",
    options: SinkhornOptions | None = None,
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
            the same inputs and arguments resumes from it (distributed: one file per rank,
            :func:`rank_checkpoint_path`).
        device: where to compute (default: CUDA when available -- ``cuda:LOCAL_RANK`` under
            torchrun -- else the input's device).
        dtype: computation dtype (float32 default; float64 for reference-level agreement).
        progress: show a tqdm progress bar (when tqdm is installed; rank 0 only).
        distributed: split the rows over the ranks of ``torch.distributed`` and all-reduce the
            parts (every rank returns the whole matrix). ``None`` (default): when a process
            group with more than one rank is initialised. ``True`` initialises one from the
            ``torchrun`` environment if needed (nccl on CUDA, else gloo).
        on_nonconvergence: as :func:`torchuot.sinkhorn`, for the blocks of pairs: ``"warn"``
            (default: one :class:`~torchuot.result.ConvergenceWarning` at the end, counting the
            blocks that missed their marginal tolerance), ``"raise"`` (a
            :class:`~torchuot.result.ConvergenceError` at the first such block; the checkpoint
            keeps the blocks done before it) or ``"ignore"``.
        options: a :class:`~torchuot.SinkhornOptions` instead of ``scaling``, ``max_iter``,
            ``tol`` and ``on_nonconvergence`` (left at their defaults, or agreeing with it: a
            conflict raises); its ``momentum`` and ``check_every`` are used too (the checkpoint
            key covers all of them). Always envelope mode.

    Returns:
        ``(N, M)`` distances on the input's device, in ``dtype``.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}.")
    if options is not None:
        options = SinkhornOptions.merge(options, defaults=dict(tol=1e-4), scaling=scaling,
                                        max_iter=max_iter, tol=tol, on_nonconvergence=on_nonconvergence)
        scaling, max_iter, tol = options.scaling, options.max_iter, options.tol
        on_nonconvergence = options.on_nonconvergence
    check_policy(on_nonconvergence)
    dist_ctx = _distributed_context(distributed)
    if device is None and dist_ctx is not None and torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    inp = _validate(images_a, images_b, metric=metric, normalize=normalize, rows=rows, dtype=dtype,
                    block_size=block_size, max_iter=max_iter, units=units, device=device)
    my_rows = _my_rows(inp.rows, dist_ctx)

    if metric == "euclidean":
        D = _euclidean(inp, my_rows)
    else:
        prob = _build_problem(metric, inp, kappa=kappa, blur=blur, reach=reach, scaling=scaling,
                              max_iter=max_iter, tol=tol, options=options, policy=on_nonconvergence)
        ckpt = checkpoint if dist_ctx is None or checkpoint is None else rank_checkpoint_path(
            checkpoint, dist_ctx.rank, dist_ctx.world)
        key = None if ckpt is None else _config_key(
            inp.wa, inp.wb, inp.one_set, metric, kappa, blur, reach, debias, units, inp.normalize,
            scaling, max_iter, tol, block_size, inp.rows, dtype, _momentum_key(prob.options.momentum),
            prob.options.check_every, *(() if dist_ctx is None else (tuple(dist_ctx),)))
        show = progress and (dist_ctx is None or dist_ctx.rank == 0)
        D = _solve_all(prob, inp, my_rows, debias=debias, block_size=block_size, checkpoint=ckpt,
                       key=key, dist_ctx=dist_ctx, progress=show)
        prob.report_nonconvergence()
    if dist_ctx is not None:
        D = _all_reduce_parts(D, dist_ctx)
    return _finish(D, metric, squared).to(inp.out_device)


# ---------------------------------------------------------------------------- the parts
def _validate(images_a: object, images_b: object, *, metric: str, normalize: bool | None,
              rows: object, dtype: object, block_size: object, max_iter: object, units: str,
              device: torch.device | str | None) -> _Inputs:
    """Check the images and arguments; move the weights to the compute device."""
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
    return _Inputs(wa, wb, one_set, (H, W), spacing, bool(normalize), _check_rows(rows, N), out_device)


def _build_problem(metric: str, inp: _Inputs, *, kappa: object, blur: object, reach: object,
                   scaling: object, max_iter: int, tol: object,
                   options: SinkhornOptions | None = None, policy: str = "warn") -> _Problem:
    """Check the OT arguments and fix the penalties and eps schedule shared by all blocks."""
    blur = 0.5 * inp.spacing if blur is None else _positive(blur, "blur")
    kappa = _positive(kappa, "kappa")
    if metric == "sinkhorn_divergence":
        if reach is None:
            raise ValueError("metric='sinkhorn_divergence' needs reach (KL reach length, rho = reach**2).")
        reach = _positive(reach, "reach")
    _positive(tol, "tol")
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)) or not 0 < scaling < 1:
        raise ValueError(f"scaling must lie in (0, 1), got {scaling!r}.")
    H, W = inp.shape
    diameter = math.hypot(H - 1, W - 1) * inp.spacing
    return _Problem(metric, inp.shape, inp.spacing, diameter, kappa=kappa, blur=blur,
                    reach=reach, scaling=scaling, max_iter=max_iter, tol=tol,  # type: ignore[arg-type]
                    options=options, policy=policy)


def _my_rows(rows: tuple[int, int], dist_ctx: _Dist | None) -> Tensor:
    """The rows this process computes: all of ``rows``, or every ``world``-th one (round-robin:
    with one set the rows near the top have more pairs ``i < j``, so dealing them one by one
    balances the ranks to within one row)."""
    r0, r1 = rows
    if dist_ctx is None:
        return torch.arange(r0, r1)
    return torch.arange(r0 + dist_ctx.rank, r1, dist_ctx.world)


def _pairs(my_rows: Tensor, N: int, M: int, one_set: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """Pair indices ``(i, j)`` of the given rows in a fixed order (resume relies on it)."""
    r = my_rows.to(device)
    if one_set:
        ii, jj = torch.triu_indices(N, N, offset=1, device=device)
        keep = torch.isin(ii, r)
        return ii[keep], jj[keep]
    return r.repeat_interleave(M), torch.arange(M, device=device).repeat(r.numel())


def _euclidean(inp: _Inputs, my_rows: Tensor) -> Tensor:
    """Euclidean distances of the flattened intensities, ``(N, M)`` (NaN outside ``my_rows``)."""
    wa, wb = inp.wa, inp.wb
    D = torch.full((wa.shape[0], wb.shape[0]), math.nan, dtype=wa.dtype)
    r = my_rows
    D[r] = torch.cdist(wa[r.to(wa.device)], wb).cpu()
    if inp.one_set:
        D[:, r] = D[r].T.clone()
        D[r, r] = 0
    return D


def _solve_all(prob: _Problem, inp: _Inputs, my_rows: Tensor, *, debias: bool, block_size: int,
               checkpoint: str | os.PathLike | None, key: str | None, dist_ctx: _Dist | None,
               progress: bool) -> Tensor:
    """OT values (debiased or raw) of this process's pairs, ``(N, M)`` on the CPU, NaN elsewhere."""
    wa, wb, one_set = inp.wa, inp.wb, inp.one_set
    N, M = wa.shape[0], wb.shape[0]
    device = wa.device
    ii, jj = _pairs(my_rows, N, M, one_set, device)
    n_pairs = ii.numel()
    state = _load_checkpoint(checkpoint, key)
    if state is None:
        state = {"key": key, "D": torch.full((N, M), math.nan, dtype=wa.dtype), "done": 0,
                 "self_a": None, "self_b": None}
    D: Tensor = state["D"]
    n_self = N + (0 if one_set else M) if debias else 0
    bar = progress_bar(n_pairs + n_self, desc="pairwise OT", unit="pair", enabled=progress)
    with torch.no_grad():
        if debias:
            # Self terms: each rank solves its share and the shares are summed across ranks
            # (every rank joins that collective, resumed or not).
            if state["self_a"] is None:
                state["self_a"] = _self_terms(prob, wa, block_size, bar, dist_ctx).cpu()
                state["self_b"] = (state["self_a"] if one_set
                                   else _self_terms(prob, wb, block_size, bar, dist_ctx).cpu())
                _save_checkpoint(checkpoint, state)
            elif bar is not None:
                bar.update(n_self)
            self_a, self_b = (_sum_shares(state[k], dist_ctx).to(device) for k in ("self_a", "self_b"))
        if bar is not None:
            bar.update(min(state["done"], n_pairs))
        for s, e in _batched(n_pairs, block_size):
            if e <= state["done"]:
                continue
            i, j = ii[s:e], jj[s:e]
            a, b = wa[i], wb[j]
            val = prob.value(a, b)
            if debias:
                val = debiased_value(val, self_a[i], self_b[j], prob.eps, a.sum(-1), b.sum(-1))
            i_c, j_c, v_c = i.cpu(), j.cpu(), val.cpu()
            D[i_c, j_c] = v_c
            if one_set:
                D[j_c, i_c] = v_c
            state["done"] = e
            _save_checkpoint(checkpoint, state)
            if bar is not None:
                bar.update(e - s)
        if one_set:
            # the diagonal: zero when debiased, else the raw self values of this process's rows
            r = my_rows
            D[r, r] = 0.0 if debias else _raw_self(prob, wa[r.to(device)], block_size).cpu()
    if bar is not None:
        bar.close()
    return D


def _finish(D: Tensor, metric: str, squared: bool) -> Tensor:
    """Squared quantity -> the returned one: HK^2 = S for HK, W2^2 = 2 S for ``|x-y|^2/2``."""
    if metric == "euclidean":
        return D ** 2 if squared else D
    if metric != "hk":
        D = 2 * D
    if not squared:
        D = torch.sqrt(D.clamp_min(0))  # NaN (not computed) stays NaN
    return D


def _raw_self(prob: _Problem, w: Tensor, block_size: int) -> Tensor:
    blocks = _batched(w.shape[0], block_size)
    return torch.cat([prob.value(w[s:e], w[s:e], symmetric=True) for s, e in blocks])


def _self_terms(prob: _Problem, w: Tensor, block_size: int, bar, dist_ctx: _Dist | None) -> Tensor:
    """Self values ``OT(w_k, w_k)`` ``(K,)``: this rank's share (every ``world``-th), 0 elsewhere."""
    K = w.shape[0]
    idx = torch.arange(K) if dist_ctx is None else torch.arange(dist_ctx.rank, K, dist_ctx.world)
    out = torch.zeros(K, dtype=w.dtype, device=w.device)
    for s, e in _batched(idx.numel(), block_size):
        k = idx[s:e].to(w.device)
        out[k] = prob.value(w[k], w[k], symmetric=True)
        if bar is not None:
            bar.update(e - s)
    return out


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


# ---------------------------------------------------------------------------- torch.distributed
def _distributed_context(distributed: object) -> _Dist | None:
    """Rank and world size when the job is split over ``torch.distributed`` ranks, else ``None``."""
    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True, False or None, got {distributed!r}.")
    if distributed is False:
        return None
    import torch.distributed as dist

    ready = dist.is_available() and dist.is_initialized()
    if not ready and distributed:
        if not dist.is_available():
            raise ValueError("distributed=True: this torch build has no torch.distributed.")
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise ValueError(
                "distributed=True needs an initialised torch.distributed process group or a "
                "torchrun launch (RANK / WORLD_SIZE set): run `torchrun --nproc_per_node K "
                "script.py`, or pass distributed=False."
            )
        backend = "nccl" if torch.cuda.is_available() and dist.is_nccl_available() else "gloo"
        if backend == "nccl":  # one GPU per rank
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
        ready = True
    if not ready or dist.get_world_size() == 1:
        return None
    return _Dist(dist.get_rank(), dist.get_world_size())


def _collective_device() -> torch.device:
    import torch.distributed as dist

    if dist.get_backend() == "nccl":  # nccl only reduces CUDA tensors
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def _sum_shares(t: Tensor, dist_ctx: _Dist | None) -> Tensor:
    """Sum of the ranks' shares of a vector (each entry is non-zero on one rank only)."""
    if dist_ctx is None:
        return t
    import torch.distributed as dist

    buf = t.to(_collective_device()).clone()
    dist.all_reduce(buf)
    return buf.to(t.device)


def _all_reduce_parts(D: Tensor, dist_ctx: _Dist) -> Tensor:
    """Combine the ranks' partial matrices (NaN = not computed there): every entry is computed on
    at most one rank, so a sum of the parts (0 elsewhere) reproduces it bit for bit."""
    import torch.distributed as dist

    dev = _collective_device()
    have = ~torch.isnan(D)
    vals = torch.where(have, D, torch.zeros_like(D)).to(dev)
    count = have.to(dtype=torch.int32, device=dev)
    dist.all_reduce(vals)
    dist.all_reduce(count)
    vals, count = vals.cpu(), count.cpu()
    return torch.where(count > 0, vals, torch.full_like(vals, math.nan))


def rank_checkpoint_path(path: str | os.PathLike, rank: int, world: int) -> Path:
    """The checkpoint file of rank ``rank`` of ``world``: ``ckpt.pt -> ckpt.rank0of2.pt``."""
    p = Path(path)
    return p.with_name(f"{p.stem}.rank{rank}of{world}{p.suffix}")


# ---------------------------------------------------------------------------- resume
def _momentum_key(momentum: object) -> object:
    """The momentum setting in a checkpoint key: the flag, or the rule's class and constants."""
    if isinstance(momentum, bool):
        return momentum
    consts = {k: getattr(momentum, k) for k in dir(momentum) if k.isupper()}
    return type(momentum).__qualname__, sorted(consts.items())


def _config_key(wa: Tensor, wb: Tensor, *parts: object) -> str:
    h = hashlib.sha256()
    for w in (wa, wb):
        h.update(w.detach().to("cpu", torch.float64).contiguous().numpy().tobytes())
    h.update(json.dumps([str(p) for p in parts]).encode())
    return h.hexdigest()


def _load_checkpoint(path: str | os.PathLike | None, key: str | None) -> dict | None:
    if path is None or not Path(path).exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError) as e:
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be read: it is empty or corrupt ({type(e).__name__}); "
            "delete it and rerun (the computation restarts from the beginning)."
        ) from e
    if not isinstance(state, dict) or state.get("key") != key:
        raise ValueError(
            f"checkpoint {str(path)!r} was written for other images or arguments; delete it or "
            "pass another checkpoint path."
        )
    return state


def _save_checkpoint(path: str | os.PathLike | None, state: dict) -> None:
    if path is None:
        return
    # exist_ok: under torchrun every rank may create the folder at the same moment
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: an interrupted save never corrupts the checkpoint
