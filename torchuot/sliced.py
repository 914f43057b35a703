"""Sliced optimal transport: sliced, max-sliced, subspace, unbalanced sliced, min-SWGG.

Two families, two conventions -- stated once here:

* **Exact 1D slices** (:func:`sliced_wasserstein`, :func:`max_sliced_wasserstein`,
  :func:`min_swgg`) use POT's cost ``|x - y|^p`` (no ``1/p``):
  ``SW_p(mu, nu) = (E_theta W_p^p(theta#mu, theta#nu))^(1/p)`` as
  ``ot.sliced_wasserstein_distance``; ``root=False`` returns the mean of ``W_p^p`` instead.
  A 1D ``W_p^p`` between weighted atoms is the integral of ``|F^-1 - G^-1|^p`` over the merged
  quantile levels (Peyre & Cuturi 2019, Remark 2.30); equal-size uniform clouds need only
  two sorts.
* **Entropic slices** (:func:`subspace_sliced_ot`, :func:`unbalanced_sliced_ot`) average the
  value of :func:`torchuot.sinkhorn` on projected points, with the library's conventions
  (cost ``|x - y|^p / p``, ``eps = blur**p``, ``rho = reach**p``). The projections are solved
  together as one batch of ``B * L`` problems.

Directions are Monte-Carlo (normalised Gaussians) or quasi-Monte-Carlo (scrambled Sobol points
mapped to the sphere through the inverse normal CDF), drawn from a ``torch.Generator``; they
can also be passed explicitly as ``directions: (L, D)`` unit vectors (POT's
``projections`` is the transpose, ``(D, L)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ._typing import Tensor
from ._validation import as_point_pair, as_points, as_weights, check_pair, check_positive
from .losses import _check_problem_args, _check_reduction, _reduce, _split_args
from .penalties import PenaltyLike
from .sinkhorn import sinkhorn

__all__ = [
    "sample_directions",
    "random_subspaces",
    "wasserstein_1d",
    "sliced_wasserstein",
    "max_sliced_wasserstein",
    "MaxSlicedResult",
    "subspace_sliced_ot",
    "unbalanced_sliced_ot",
    "min_swgg",
    "SWGGResult",
    "SlicedWassersteinLoss",
    "MaxSlicedWassersteinLoss",
    "UnbalancedSlicedLoss",
    "SubspaceSlicedLoss",
    "MinSWGGLoss",
]

_METHODS = ("mc", "sobol")


# ---------------------------------------------------------------------------- directions
def _seed_from(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def sample_directions(
    n: int,
    dim: int,
    *,
    method: str = "mc",
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` unit directions in ``R^dim`` -> ``(n, dim)``.

    Args:
        method: ``"mc"`` (normalised Gaussian draws) or ``"sobol"`` (scrambled Sobol points
            pushed through the inverse normal CDF, then normalised: a low-discrepancy
            Gaussian sample, hence a quasi-uniform one on the sphere).
        generator: source of randomness (the Sobol scramble seed is drawn from it).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"the number of directions must be a positive integer, got {n!r}.")
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be a positive integer, got {dim!r}.")
    if method == "mc":
        z = torch.randn(n, dim, generator=generator, dtype=torch.float64)
    elif method == "sobol":
        engine = torch.quasirandom.SobolEngine(dimension=dim, scramble=True, seed=_seed_from(generator))
        u = engine.draw(n, dtype=torch.float64)
        tiny = 1e-12
        z = math.sqrt(2.0) * torch.erfinv(2.0 * u.clamp(tiny, 1 - tiny) - 1.0)
    else:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    z = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)
    return z.to(dtype=dtype or torch.get_default_dtype(), device=device)


def random_subspaces(
    n: int,
    dim: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` Haar-random orthonormal frames of ``k``-dim subspaces -> ``(n, dim, k)`` (QR of Gaussians)."""
    if not isinstance(k, int) or not 1 <= k <= dim:
        raise ValueError(f"subspace dimension k must be an integer in [1, {dim}], got {k!r}.")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of subspaces must be a positive integer, got {n!r}.")
    g = torch.randn(n, dim, k, generator=generator, dtype=torch.float64)
    q, r = torch.linalg.qr(g)
    # Sign fix makes the frame Haar distributed (Mezzadri 2007).
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)
    return q.to(dtype=dtype or torch.get_default_dtype(), device=device)


# ---------------------------------------------------------------------------- 1D core
def wasserstein_1d(
    u: Tensor, v: Tensor, a: Tensor | None = None, b: Tensor | None = None, *, p: float = 2.0
) -> Tensor:
    """``W_p^p`` between 1D weighted atoms, batched over leading dimensions.

    Args:
        u: ``(..., N)`` source positions. v: ``(..., M)`` target positions.
        a: ``(..., N)`` or ``(N,)`` probability weights (``None``: uniform). b: likewise for ``v``.
        p: exponent ``>= 1``.

    Returns:
        ``(...)`` values of ``int_0^1 |F_u^-1(t) - F_v^-1(t)|^p dt``; differentiable in ``u, v``
        (through the sort) and in ``a, b`` (through the quantile-interval lengths).
    """
    if a is None and b is None and u.shape[-1] == v.shape[-1]:
        us = torch.sort(u, dim=-1).values
        vs = torch.sort(v, dim=-1).values
        d = (us - vs).abs()
        return (d.square() if p == 2 else d.pow(p)).mean(-1)
    N, M = u.shape[-1], v.shape[-1]
    if a is None:
        a = torch.full((N,), 1.0 / N, dtype=u.dtype, device=u.device)
    if b is None:
        b = torch.full((M,), 1.0 / M, dtype=v.dtype, device=v.device)
    a = a.expand(u.shape)
    b = b.expand(v.shape)
    us, iu = torch.sort(u, dim=-1)
    vs, iv = torch.sort(v, dim=-1)
    cu = torch.cumsum(torch.gather(a, -1, iu), -1)
    cv = torch.cumsum(torch.gather(b, -1, iv), -1)
    levels = torch.sort(torch.cat([cu, cv], -1), dim=-1).values
    # Quantile functions at every merged level (right-continuous inverse CDF).
    ju = torch.searchsorted(cu.detach().contiguous(), levels.detach().contiguous()).clamp_max(N - 1)
    jv = torch.searchsorted(cv.detach().contiguous(), levels.detach().contiguous()).clamp_max(M - 1)
    qu = torch.gather(us, -1, ju)
    qv = torch.gather(vs, -1, jv)
    delta = torch.diff(levels, dim=-1, prepend=torch.zeros_like(levels[..., :1]))
    d = (qu - qv).abs()
    return (delta * (d.square() if p == 2 else d.pow(p))).sum(-1)


def _safe_root(val: Tensor, p: float) -> Tensor:
    """``val ** (1/p)`` with a zero (not NaN) gradient where ``val == 0`` (identical inputs)."""
    pos = val > 0
    return torch.where(pos, torch.where(pos, val, torch.ones_like(val)).pow(1.0 / p), torch.zeros_like(val))


def _check_p(p: object) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p >= 1 or math.isinf(p):
        raise ValueError(f"p must be a finite number >= 1, got {p!r}.")
    return float(p)


def _prepare(x, y, a, b, *, balanced: bool = True):
    xb, yb, batched = as_point_pair(x, y)
    ab = None if a is None else as_weights(a, xb, "a", "x")
    bb = None if b is None else as_weights(b, yb, "b", "y")
    if balanced and (ab is not None or bb is not None):
        ab = as_weights(a, xb, "a", "x")
        bb = as_weights(b, yb, "b", "y")
        ma, mb = ab.sum(-1), bb.sum(-1)
        if not torch.allclose(ma, mb, rtol=1e-4, atol=0):
            raise ValueError(
                f"sliced Wasserstein compares measures of equal mass, got m(a) = {ma.tolist()} and "
                f"m(b) = {mb.tolist()}; normalise the weights or use unbalanced_sliced_ot."
            )
        ab, bb = ab / ma.unsqueeze(-1), bb / mb.unsqueeze(-1)
    return xb, yb, ab, bb, batched


def _directions(directions, n_projections, method, generator, D, dtype, device) -> Tensor:
    if directions is None:
        return sample_directions(n_projections, D, method=method, generator=generator, dtype=dtype,
                                 device=device)
    if not isinstance(directions, torch.Tensor) or directions.dim() != 2 or directions.shape[1] != D:
        got = tuple(directions.shape) if isinstance(directions, torch.Tensor) else type(directions)
        raise ValueError(f"directions must be a tensor of shape (L, {D}), got {got}.")
    if not bool(torch.isfinite(directions).all()) or bool((directions.norm(dim=1) == 0).any()):
        raise ValueError("directions must be finite and non-zero.")
    return directions.to(dtype=dtype, device=device)


def _sliced_values(xb, yb, ab, bb, theta: Tensor, p: float, chunk_size: int | None) -> Tensor:
    """Per-slice ``W_p^p`` -> ``(B, L)``; directions processed ``chunk_size`` at a time."""
    B, N, _ = xb.shape
    M = yb.shape[1]
    L = theta.shape[0]
    if chunk_size is None:
        # About 2**24 projected values per side at a time (64 MiB in float32).
        chunk_size = max(1, min(L, 2**24 // max(N, M, 1)))
    a = None if ab is None else ab.unsqueeze(1)
    b = None if bb is None else bb.unsqueeze(1)
    out = []
    for s in range(0, L, chunk_size):
        t = theta[s:s + chunk_size]
        # (B, l, N): projections contiguous along the points, so each sort runs on a row.
        u = torch.matmul(t, xb.transpose(1, 2))
        v = torch.matmul(t, yb.transpose(1, 2))
        out.append(wasserstein_1d(u, v, a, b, p=p))
    return torch.cat(out, dim=1)


# ---------------------------------------------------------------------------- sliced W
def sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    p: float = 2.0,
    n_projections: int = 256,
    method: str = "mc",
    directions: Tensor | None = None,
    generator: torch.Generator | None = None,
    root: bool = True,
    chunk_size: int | None = None,
) -> Tensor:
    """Sliced Wasserstein distance ``SW_p`` (POT's ``ot.sliced_wasserstein_distance``).

    Args:
        x: ``(N, D)`` or ``(B, N, D)``. y: ``(M, D)`` or ``(B, M, D)``.
        a, b: ``(N,)``/``(B, N)`` and ``(M,)``/``(B, M)`` weights of equal total mass
            (normalised to probabilities); ``None``: uniform.
        p: ground-cost exponent (cost ``|x - y|^p``).
        n_projections: number of directions ``L`` when ``directions`` is not given.
        method: ``"mc"`` or ``"sobol"`` (quasi-Monte-Carlo), see :func:`sample_directions`.
        directions: ``(L, D)`` explicit unit directions (overrides the two above).
        generator: random source of the directions.
        root: return ``SW_p`` (default) or ``SW_p^p`` (the mean of the slices' ``W_p^p``).
        chunk_size: directions per batch of sorts (memory knob; default keeps each batch
            about ``2**24`` values).

    Returns:
        ``(B,)`` or a scalar; differentiable in ``x, y`` (and ``a, b``).
    """
    p = _check_p(p)
    xb, yb, ab, bb, batched = _prepare(x, y, a, b)
    theta = _directions(directions, n_projections, method, generator, xb.shape[2], xb.dtype, xb.device)
    val = _sliced_values(xb, yb, ab, bb, theta, p, chunk_size).mean(1)
    if root:
        val = _safe_root(val, p)
    return val if batched else val[0]


@dataclass(frozen=True)
class MaxSlicedResult:
    """Output of :func:`max_sliced_wasserstein`.

    Attributes:
        value: ``(B,)`` (or scalar) ``max_theta W_p(theta#mu, theta#nu)`` (``W_p^p`` with
            ``root=False``), differentiable by the envelope theorem (direction held fixed).
        direction: ``(B, D)`` (or ``(D,)``) the maximising unit direction found.
    """

    value: Tensor
    direction: Tensor


def max_sliced_wasserstein(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    p: float = 2.0,
    n_init: int = 128,
    n_starts: int = 4,
    n_iter: int = 50,
    lr: float = 0.5,
    method: str = "mc",
    generator: torch.Generator | None = None,
    root: bool = True,
) -> MaxSlicedResult:
    """Max-sliced Wasserstein ``max_{|theta|=1} W_p(theta#mu, theta#nu)`` (Deshpande et al. 2019).

    The best ``n_starts`` of ``n_init`` random directions are refined by Riemannian gradient
    ascent on the sphere (normalised tangent steps of length ``lr``, halved on every step that
    fails to improve); the best direction seen is returned, so the value never decreases
    below the random search and is a lower bound of the true maximum.

    Args: as :func:`sliced_wasserstein`, plus ``n_init`` (random candidates), ``n_starts``
        (ascents run in parallel), ``n_iter`` (ascent steps), ``lr`` (initial step, radians).

    Returns:
        A :class:`MaxSlicedResult`.
    """
    p = _check_p(p)
    for name, v in (("n_init", n_init), ("n_starts", n_starts)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    if not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative integer, got {n_iter!r}.")
    check_positive(lr, "lr")
    xb, yb, ab, bb, batched = _prepare(x, y, a, b)
    B, _, D = xb.shape
    xd, yd = xb.detach(), yb.detach()
    ad = None if ab is None else ab.detach()
    bd = None if bb is None else bb.detach()
    theta0 = sample_directions(n_init, D, method=method, generator=generator, dtype=xb.dtype,
                               device=xb.device)
    vals0 = _sliced_values(xd, yd, ad, bd, theta0, p, None)  # (B, n_init)
    k = min(n_starts, n_init)
    top = vals0.topk(k, dim=1).indices  # (B, k)
    theta = theta0[top]  # (B, k, D)
    best_val, best_theta = vals0.gather(1, top), theta.clone()
    step = torch.full((B, k, 1), float(lr), dtype=xb.dtype, device=xb.device)
    for _ in range(n_iter):
        th = theta.detach().requires_grad_(True)
        u = torch.einsum("bkd,bnd->bkn", th, xd)
        v = torch.einsum("bkd,bmd->bkm", th, yd)
        val = wasserstein_1d(u, v, None if ad is None else ad.unsqueeze(1),
                             None if bd is None else bd.unsqueeze(1), p=p)
        (grad,) = torch.autograd.grad(val.sum(), th)
        with torch.no_grad():
            improved = val > best_val
            best_val = torch.where(improved, val, best_val)
            best_theta = torch.where(improved.unsqueeze(-1), th, best_theta)
            step = torch.where(improved.unsqueeze(-1), step, 0.5 * step)
            # Ascent from the best point: tangent component of the gradient, unit length.
            base = best_theta
            tang = grad - (grad * th).sum(-1, keepdim=True) * th
            tn = tang.norm(dim=-1, keepdim=True)
            dirn = torch.where(tn > 0, tang / tn.clamp_min(1e-300), torch.zeros_like(tang))
            theta = base * torch.cos(step) + dirn * torch.sin(step)
            theta = theta / theta.norm(dim=-1, keepdim=True)
    idx = best_val.argmax(1)
    direction = best_theta[torch.arange(B), idx]  # (B, D)
    u = torch.einsum("bd,bnd->bn", direction, xb).unsqueeze(1)
    v = torch.einsum("bd,bmd->bm", direction, yb).unsqueeze(1)
    value = wasserstein_1d(u, v, None if ab is None else ab.unsqueeze(1),
                           None if bb is None else bb.unsqueeze(1), p=p)[:, 0]
    if root:
        value = _safe_root(value, p)
    if not batched:
        value, direction = value[0], direction[0]
    return MaxSlicedResult(value=value, direction=direction)


# ---------------------------------------------------------------------------- entropic slices
def _projected_solve(xp: Tensor, yp: Tensor, a, b, B: int, L: int, debias: bool, kwargs: dict) -> Tensor:
    """Solve ``B * L`` projected problems in one batch -> values ``(B, L)``."""
    N, k = xp.shape[-2], xp.shape[-1]
    M = yp.shape[-2]
    xf = xp.reshape(B * L, N, k)
    yf = yp.reshape(B * L, M, k)
    af = None if a is None else a.unsqueeze(1).expand(B, L, N).reshape(B * L, N)
    bf = None if b is None else b.unsqueeze(1).expand(B, L, M).reshape(B * L, M)
    if debias:
        from .divergence import sinkhorn_divergence

        val = sinkhorn_divergence(xf, yf, af, bf, **kwargs)
    else:
        val = sinkhorn(xf, yf, af, bf, **kwargs).value
    return val.reshape(B, L)


def subspace_sliced_ot(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    k: int = 2,
    n_subspaces: int = 16,
    reduce: str = "mean",
    subspaces: Tensor | None = None,
    generator: torch.Generator | None = None,
    debias: bool = False,
    blur: float | None = None,
    eps: float | None = None,
    p: float = 2.0,
    **sinkhorn_kwargs: object,
) -> Tensor:
    """Average or max of entropic OT over random ``k``-dim projections (Paty & Cuturi 2019).

    Each projection ``P: (D, k)`` (orthonormal columns) maps the clouds to ``x P``, ``y P``;
    all ``B * L`` projected problems go to :func:`torchuot.sinkhorn` as one batch.

    Args:
        x, y, a, b: as :func:`torchuot.sinkhorn` (balanced unless ``reach``/``rho`` given).
        k: subspace dimension. n_subspaces: number ``L`` of random subspaces.
        reduce: ``"mean"`` (subspace-sliced) or ``"max"`` (max over the sampled subspaces).
        subspaces: ``(L, D, k)`` explicit orthonormal frames (overrides ``n_subspaces``).
        debias: use :func:`torchuot.sinkhorn_divergence` per subspace instead of ``OT_eps``.
        blur, eps, p, **sinkhorn_kwargs: passed to the solver (library conventions).

    Returns:
        ``(B,)`` or a scalar, in the solver's units (cost ``|x - y|^p / p``); differentiable.
    """
    if reduce not in ("mean", "max"):
        raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}.")
    xb, batched = as_points(x, "x")
    yb, _ = as_points(y, "y")
    if xb.dim() != yb.dim() or (x.dim() == 3) != (y.dim() == 3):
        raise ValueError("x and y must both be batched (B, N, D) or both unbatched (N, D).")
    check_pair(xb, yb)
    B, _, D = xb.shape
    if subspaces is None:
        P = random_subspaces(n_subspaces, D, k, generator=generator, dtype=xb.dtype, device=xb.device)
    else:
        if not isinstance(subspaces, torch.Tensor) or subspaces.dim() != 3 or subspaces.shape[1] != D:
            raise ValueError(f"subspaces must be a tensor of shape (L, {D}, k), got "
                             f"{getattr(subspaces, 'shape', type(subspaces))}.")
        P = subspaces.to(dtype=xb.dtype, device=xb.device)
    L = P.shape[0]
    xp = torch.einsum("bnd,ldk->blnk", xb, P)
    yp = torch.einsum("bmd,ldk->blmk", yb, P)
    ab = None if a is None else as_weights(a, xb, "a", "x")
    bb = None if b is None else as_weights(b, yb, "b", "y")
    kw = dict(sinkhorn_kwargs, blur=blur, eps=eps, p=p)
    vals = _projected_solve(xp, yp, ab, bb, B, L, debias, kw)
    val = vals.mean(1) if reduce == "mean" else vals.max(1).values
    return val if batched else val[0]


def unbalanced_sliced_ot(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    n_projections: int = 64,
    method: str = "mc",
    directions: Tensor | None = None,
    generator: torch.Generator | None = None,
    blur: float | None = None,
    eps: float | None = None,
    reach: object = None,
    rho: object = None,
    penalty: PenaltyLike | Sequence[PenaltyLike] = "kl",
    debias: bool = False,
    p: float = 2.0,
    **sinkhorn_kwargs: object,
) -> Tensor:
    """Unbalanced sliced OT: the mean over directions of the 1D unbalanced entropic OT value.

    Each slice ``(theta#a, theta#b)`` is a 1D UOT problem (masses may differ) solved by
    :func:`torchuot.sinkhorn` on the projected points, all ``B * L`` slices in one batch
    (Sejourne, Bonet, Fatras, Nadjahi, Courty 2023 study the exact-1D version of this
    average; here each slice is the entropic one).

    Args:
        x, y, a, b: as :func:`torchuot.sinkhorn` (masses may differ).
        n_projections, method, directions, generator: see :func:`sliced_wasserstein`.
        blur, eps, reach, rho, penalty, p, **sinkhorn_kwargs: the per-slice solver's
            arguments (library conventions; without a penalty strength ``reach=1``, KL). Mixing
            conventions (``reach`` with ``rho``, ``reg_m`` or ``tau_a``/``tau_b``) raises.
        debias: average the debiased :func:`torchuot.sinkhorn_divergence` instead of ``OT_eps``
            (non-negative for KL and balanced penalties; not guaranteed for TV or reverse KL).

    Returns:
        ``(B,)`` or a scalar, in the solver's units; differentiable.
    """
    xb, batched = as_points(x, "x")
    yb, _ = as_points(y, "y")
    if (x.dim() == 3) != (y.dim() == 3):
        raise ValueError("x and y must both be batched (B, N, D) or both unbatched (N, D).")
    check_pair(xb, yb)
    B, _, D = xb.shape
    theta = _directions(directions, n_projections, method, generator, D, xb.dtype, xb.device)
    L = theta.shape[0]
    ab = None if a is None else as_weights(a, xb, "a", "x")
    bb = None if b is None else as_weights(b, yb, "b", "y")
    strength = [sinkhorn_kwargs.get(k) for k in ("reg_m", "tau_a", "tau_b")]
    if reach is None and rho is None and all(v is None for v in strength):
        reach = 1.0  # an unbalanced average: KL with reach 1 unless told otherwise
    xp = torch.einsum("bnd,ld->bln", xb, theta).unsqueeze(-1)
    yp = torch.einsum("bmd,ld->blm", yb, theta).unsqueeze(-1)
    kw = dict(sinkhorn_kwargs, blur=blur, eps=eps, reach=reach, rho=rho, penalty=penalty, p=p)
    val = _projected_solve(xp, yp, ab, bb, B, L, debias, kw).mean(1)
    return val if batched else val[0]


# ---------------------------------------------------------------------------- min-SWGG
@dataclass(frozen=True)
class SWGGResult:
    """Output of :func:`min_swgg`.

    Attributes:
        value: ``(B,)`` (or scalar) cost ``(1/N) sum_i |x_i - y_{perm_i}|^2`` of the lifted
            permutation plan: an upper bound of ``W_2^2`` (cost ``|x - y|^2``).
            Differentiable in ``x, y`` with the permutation held fixed.
        perm: ``(B, N)`` (or ``(N,)``) the matching ``x_i -> y_{perm_i}``.
        direction: ``(B, D)`` (or ``(D,)``) the slicing direction that produced it.
    """

    value: Tensor
    perm: Tensor
    direction: Tensor

    def plan(self) -> Tensor:
        """Dense plan ``(B, N, N)`` (or ``(N, N)``): ``1/N`` at ``(i, perm_i)``."""
        perm = self.perm if self.perm.dim() == 2 else self.perm.unsqueeze(0)
        B, N = perm.shape
        P = torch.zeros(B, N, N, dtype=self.value.dtype, device=perm.device)
        P.scatter_(2, perm.unsqueeze(-1), 1.0 / N)
        return P if self.perm.dim() == 2 else P[0]


def _swgg_costs(xd: Tensor, yd: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    """Lifted-plan costs ``(B, L)`` and permutations ``(B, L, N)`` for directions ``(B, L, D)``."""
    u = torch.einsum("bld,bnd->bln", theta, xd)
    v = torch.einsum("bld,bnd->bln", theta, yd)
    iu = u.argsort(-1)
    iv = v.argsort(-1)
    # x_{iu_k} is matched with y_{iv_k}: perm[iu_k] = iv_k.
    perm = torch.empty_like(iu)
    perm.scatter_(-1, iu, iv)
    B, L, N = perm.shape
    yperm = torch.gather(yd.unsqueeze(1).expand(B, L, N, yd.shape[-1]), 2,
                         perm.unsqueeze(-1).expand(B, L, N, yd.shape[-1]))
    cost = (xd.unsqueeze(1) - yperm).square().sum(-1).mean(-1)
    return cost, perm


def _sphere_step(cur: Tensor, grad: Tensor, lr: float) -> Tensor:
    """One normalised descent step on the unit sphere: ``cur: (B, D)`` unit directions, ``grad:
    (B, D)``; a zero (tangential) gradient leaves ``cur`` where it is.

    (``clamp_min(1e-300)`` is ``clamp_min(0)`` in float32: a tie between antithetic costs gave a
    zero gradient, 0 / 0 = NaN that a ``* (gn > 0)`` mask does not remove, and the refinement
    stopped silently.)
    """
    grad = grad - (grad * cur).sum(-1, keepdim=True) * cur
    gn = grad.norm(dim=-1, keepdim=True)
    step = torch.where(gn > 0, grad / gn.clamp_min(torch.finfo(grad.dtype).tiny), torch.zeros_like(grad))
    new = cur - lr * step
    return new / new.norm(dim=-1, keepdim=True)


def min_swgg(
    x: Tensor,
    y: Tensor,
    *,
    n_directions: int = 128,
    n_refine: int = 0,
    n_perturb: int = 16,
    sigma: float = 0.05,
    lr: float = 0.1,
    method: str = "mc",
    generator: torch.Generator | None = None,
) -> SWGGResult:
    """Min-SWGG lifted plan (Mahey, Chapel, Gasso, Bonet, Courty 2023).

    For a direction ``theta``, sorting ``theta . x`` and ``theta . y`` matches the two
    equal-size uniform clouds; that permutation, lifted to ``R^D``, costs
    ``SWGG(theta) = (1/N) sum_i |x_i - y_{perm_i}|^2 >= W_2^2``. We minimise over directions by
    random search over ``n_directions``, then (``n_refine > 0``) by gradient descent on the
    Gaussian-smoothed objective ``E_z SWGG(theta + sigma z)`` (its gradient
    ``E[SWGG(theta + sigma z) z] / sigma`` is estimated with ``n_perturb`` antithetic pairs;
    Berthet et al. 2020), keeping the best exact value seen. Every returned value is the cost
    of a genuine permutation, so the bound always holds.

    Args:
        x: ``(N, D)`` or ``(B, N, D)``. y: same shape (equal sizes, uniform weights).
        n_directions: random directions tried. n_refine: smoothed-gradient steps (0: none).
        n_perturb: antithetic perturbation pairs per step. sigma: smoothing radius.
        lr: step size on the sphere. method, generator: see :func:`sample_directions`.

    Returns:
        A :class:`SWGGResult`.
    """
    xb, yb, batched = as_point_pair(x, y)
    if xb.shape[1] != yb.shape[1]:
        raise ValueError(
            f"min_swgg lifts a permutation: x and y need the same number of points, got "
            f"N={xb.shape[1]} and M={yb.shape[1]}."
        )
    for name, v in (("n_directions", n_directions), ("n_perturb", n_perturb)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}.")
    if not isinstance(n_refine, int) or n_refine < 0:
        raise ValueError(f"n_refine must be a non-negative integer, got {n_refine!r}.")
    check_positive(sigma, "sigma")
    check_positive(lr, "lr")
    B, N, D = xb.shape
    xd, yd = xb.detach(), yb.detach()
    theta = sample_directions(n_directions, D, method=method, generator=generator, dtype=xb.dtype,
                              device=xb.device)
    cost, perm = _swgg_costs(xd, yd, theta.expand(B, -1, -1))
    i = cost.argmin(1)
    ar = torch.arange(B, device=xb.device)
    best_cost, best_perm, best_theta = cost[ar, i], perm[ar, i], theta[i]
    cur = best_theta.clone()
    for _ in range(n_refine):
        z = torch.randn(B, n_perturb, D, generator=generator, dtype=torch.float64).to(xb)
        cand = torch.cat([cur.unsqueeze(1) + sigma * z, cur.unsqueeze(1) - sigma * z], 1)
        cand = cand / cand.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(cand.dtype).tiny)
        c, pm = _swgg_costs(xd, yd, cand)
        j = c.argmin(1)
        better = c[ar, j] < best_cost
        best_cost = torch.where(better, c[ar, j], best_cost)
        best_perm = torch.where(better.unsqueeze(-1), pm[ar, j], best_perm)
        best_theta = torch.where(better.unsqueeze(-1), cand[ar, j], best_theta)
        # Antithetic estimate of the smoothed objective's gradient.
        diff = (c[:, :n_perturb] - c[:, n_perturb:]).unsqueeze(-1)
        grad = (diff * z).mean(1) / (2 * sigma)
        cur = _sphere_step(cur, grad, lr)
    value = (xb - torch.gather(yb, 1, best_perm.unsqueeze(-1).expand(B, N, D))).square().sum(-1).mean(-1)
    if not batched:
        return SWGGResult(value=value[0], perm=best_perm[0], direction=best_theta[0])
    return SWGGResult(value=value, perm=best_perm, direction=best_theta)


# ---------------------------------------------------------------------------- losses
#: Why the sliced losses return ``W_p^p`` where their functions return ``W_p``.
_ROOT_REASON = ("a loss returns SW_p^p: smooth where the distance vanishes (the root's gradient is "
                "infinite at identical inputs); the function returns the distance, as POT's")
#: Why the entropic sliced losses are debiased where their functions are not.
_DEBIAS_REASON = ("a loss must vanish at identical inputs (debiased divergence); the function returns "
                  "the raw OT_eps average, as sinkhorn() returns OT_eps")


class SlicedWassersteinLoss(nn.Module):
    """``SW_p^p`` (default) or ``SW_p`` as a loss: ``loss(x, y)`` or ``loss(a, x, b, y)``.

    Fresh directions are drawn at every call from ``generator`` (torch's default one if
    ``None``); pass fixed ``directions`` for a deterministic loss. Defaults as
    :func:`sliced_wasserstein` except :attr:`DEFAULTS_DIFFER`.
    """

    DEFAULTS_DIFFER: ClassVar[dict[str, tuple[object, str]]] = {"root": (False, _ROOT_REASON)}

    def __init__(
        self,
        *,
        p: float = 2.0,
        n_projections: int = 256,
        method: str = "mc",
        directions: Tensor | None = None,
        generator: torch.Generator | None = None,
        root: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.p = _check_p(p)
        if method not in _METHODS:
            raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
        self.n_projections, self.method, self.root = n_projections, method, root
        self.directions, self.generator = directions, generator
        self.reduction = _check_reduction(reduction)

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        val = sliced_wasserstein(x, y, a, b, p=self.p, n_projections=self.n_projections,
                                 method=self.method, directions=self.directions,
                                 generator=self.generator, root=self.root)
        return _reduce(val, self.reduction)


class MaxSlicedWassersteinLoss(nn.Module):
    """Max-sliced ``W_p^p`` (default) or ``W_p`` as a loss (see :func:`max_sliced_wasserstein`)."""

    DEFAULTS_DIFFER: ClassVar[dict[str, tuple[object, str]]] = {"root": (False, _ROOT_REASON)}

    def __init__(
        self,
        *,
        p: float = 2.0,
        n_init: int = 128,
        n_starts: int = 4,
        n_iter: int = 50,
        generator: torch.Generator | None = None,
        root: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.p = _check_p(p)
        self.kw = dict(n_init=n_init, n_starts=n_starts, n_iter=n_iter)
        self.generator, self.root = generator, root
        self.reduction = _check_reduction(reduction)

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        res = max_sliced_wasserstein(x, y, a, b, p=self.p, generator=self.generator, root=self.root,
                                     **self.kw)
        return _reduce(res.value, self.reduction)


class UnbalancedSlicedLoss(nn.Module):
    """:func:`unbalanced_sliced_ot` as a loss (debiased by default; other defaults as the function).

    ``eps``/``blur`` and ``reach``/``rho`` are one convention each: mixing them raises.
    """

    DEFAULTS_DIFFER: ClassVar[dict[str, tuple[object, str]]] = {"debias": (True, _DEBIAS_REASON)}

    def __init__(
        self,
        *,
        n_projections: int = 64,
        p: float = 2.0,
        blur: float | None = None,
        eps: float | None = None,
        reach: object = None,
        rho: object = None,
        penalty: PenaltyLike = "kl",
        debias: bool = True,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_problem_args(p=p, blur=blur, eps=eps, reach=reach, rho=rho, penalty=penalty)
        self.kw = dict(n_projections=n_projections, p=p, blur=blur, eps=eps, reach=reach, rho=rho,
                       penalty=penalty, debias=debias)
        self.generator = generator
        self.reduction = _check_reduction(reduction)

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        val = unbalanced_sliced_ot(x, y, a, b, generator=self.generator, **self.kw)
        return _reduce(val, self.reduction)


class SubspaceSlicedLoss(nn.Module):
    """:func:`subspace_sliced_ot` (mean or max over random ``k``-dim subspaces) as a loss
    (debiased by default; other defaults as the function)."""

    DEFAULTS_DIFFER: ClassVar[dict[str, tuple[object, str]]] = {"debias": (True, _DEBIAS_REASON)}

    def __init__(
        self,
        *,
        k: int = 2,
        n_subspaces: int = 16,
        reduce: str = "mean",
        p: float = 2.0,
        blur: float | None = None,
        eps: float | None = None,
        debias: bool = True,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if reduce not in ("mean", "max"):
            raise ValueError(f"reduce must be 'mean' or 'max', got {reduce!r}.")
        _check_problem_args(p=p, blur=blur, eps=eps)
        self.kw = dict(k=k, n_subspaces=n_subspaces, reduce=reduce, p=p, blur=blur, eps=eps,
                       debias=debias)
        self.generator = generator
        self.reduction = _check_reduction(reduction)

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        val = subspace_sliced_ot(x, y, a, b, generator=self.generator, **self.kw)
        return _reduce(val, self.reduction)


class MinSWGGLoss(nn.Module):
    """Min-SWGG upper bound of ``W_2^2`` as a loss: ``loss(x, y)`` (equal-size uniform clouds).

    Defaults as :func:`min_swgg`.

    The gradient is that of the lifted plan's cost with the permutation held fixed.
    """

    def __init__(
        self,
        *,
        n_directions: int = 128,
        n_refine: int = 0,
        generator: torch.Generator | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.kw = dict(n_directions=n_directions, n_refine=n_refine)
        self.generator = generator
        self.reduction = _check_reduction(reduction)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return _reduce(min_swgg(x, y, generator=self.generator, **self.kw).value, self.reduction)
