"""Discretised target metric spaces ``Z`` for joint embeddings (EW_lambda).

A :class:`TargetSpace` is a finite metric measure space: ``M`` support points with ambient
coordinates (used for barycentric projections and pictures), an ``(M, M)`` distance matrix
(the metric the embedding is measured in), and reference weights ``zeta`` (uniform by
default). Built-in spaces:

* :func:`grid_space` -- the regular ``n x n`` grid on ``[0, 1]^2`` (or ``n^dim`` on ``[0, 1]^dim``)
  with Euclidean distances;
* :func:`sphere_space` -- a Fibonacci lattice of ``n`` near-uniform points on the unit sphere
  ``S^2 in R^3`` with great-circle (geodesic) distances ``arccos(<z, z'>)``;
* :func:`torus_space` -- the ``n x n`` grid on the flat torus ``R^2 / Z^2`` with its geodesic
  distance ``sqrt(min(|du|, 1-|du|)^2 + min(|dv|, 1-|dv|)^2)``; ambient coordinates are the
  (isometric up to scale) Clifford embedding ``(cos 2 pi u, sin 2 pi u, cos 2 pi v, sin 2 pi v) / (2 pi)``;
* :func:`custom_space` -- any user point set with a user distance matrix.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._typing import Tensor

__all__ = ["TargetSpace", "grid_space", "sphere_space", "torus_space", "custom_space"]


@dataclass(frozen=True)
class TargetSpace:
    """A finite metric measure space with ambient coordinates.

    Attributes:
        points: ``(M, d)`` ambient coordinates of the support (for projections and plots).
        distances: ``(M, M)`` symmetric distance matrix with a zero diagonal.
        weights: ``(M,)`` positive reference weights ``zeta`` (sum 1 for built-in spaces).
        name: ``"grid"``, ``"sphere"``, ``"torus"`` or ``"custom"``.
        params: intrinsic coordinates for plotting, or ``None``: ``(M, dim)`` for a grid,
            ``(M, 2)`` otherwise (torus: ``(u, v)``; sphere: (polar, azimuth) angles).
    """

    points: Tensor
    distances: Tensor
    weights: Tensor
    name: str = "custom"
    params: Tensor | None = None

    def __post_init__(self) -> None:
        _check_space(self.points, self.distances, self.weights)

    @property
    def size(self) -> int:
        """Number of support points ``M``."""
        return int(self.points.shape[0])

    def project(self, p: Tensor) -> Tensor:
        """Map ambient points ``p: (K, d)`` (e.g. barycentric averages) back towards the space.

        The sphere normalises to unit length; the torus normalises each of its two circles;
        flat and custom spaces return ``p`` unchanged (their convex hull is the embedding).
        """
        if self.name == "sphere":
            return p / p.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        if self.name == "torus":
            r = 1.0 / (2 * math.pi)
            c1 = p[..., :2] / p[..., :2].norm(dim=-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
            c2 = p[..., 2:] / p[..., 2:].norm(dim=-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
            return torch.cat([c1, c2], dim=-1) * r
        return p

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> TargetSpace:
        """A copy on another device / dtype."""
        return TargetSpace(
            self.points.to(device=device, dtype=dtype),
            self.distances.to(device=device, dtype=dtype),
            self.weights.to(device=device, dtype=dtype),
            self.name,
            None if self.params is None else self.params.to(device=device, dtype=dtype),
        )


def _check_space(points: Tensor, distances: Tensor, weights: Tensor) -> None:
    for name, t in (("points", points), ("distances", distances), ("weights", weights)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"TargetSpace: {name} must be a torch.Tensor, got {type(t)!r}.")
        if not t.is_floating_point():
            raise TypeError(f"TargetSpace: {name} must be floating point, got dtype {t.dtype}.")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"TargetSpace: {name} contains NaN or inf values.")
    if points.dim() != 2 or points.shape[0] == 0:
        raise ValueError(
            f"TargetSpace: points must have shape (M, d) with M >= 1, got {tuple(points.shape)}."
        )
    M = points.shape[0]
    if tuple(distances.shape) != (M, M):
        raise ValueError(
            f"TargetSpace: distances must have shape (M, M) = ({M}, {M}) to match points, "
            f"got {tuple(distances.shape)}."
        )
    if tuple(weights.shape) != (M,):
        raise ValueError(f"TargetSpace: weights must have shape ({M},), got {tuple(weights.shape)}.")
    if bool((distances < 0).any()):
        raise ValueError("TargetSpace: distances must be >= 0.")
    if bool((weights <= 0).any()):
        raise ValueError("TargetSpace: weights must be > 0 (drop points of zero weight instead).")
    if points.dtype != distances.dtype or points.dtype != weights.dtype:
        raise TypeError(
            f"TargetSpace: points, distances and weights must share one dtype, got "
            f"{points.dtype}, {distances.dtype}, {weights.dtype}."
        )


def _check_n(n: object, name: str, minimum: int = 2) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}.")
    return n


def _uniform(M: int, dtype: torch.dtype, device: torch.device | str | None) -> Tensor:
    return torch.full((M,), 1.0 / M, dtype=dtype, device=device)


def grid_space(n: int, dim: int = 2, *, dtype: torch.dtype = torch.float64,
               device: torch.device | str | None = None) -> TargetSpace:
    """The regular grid with ``n`` points per side on ``[0, 1]^dim``, Euclidean distances.

    Args:
        n: points per side (``>= 2``). dim: dimension (``>= 1``); ``M = n^dim`` points.
    Returns:
        A :class:`TargetSpace` with ``points: (n^dim, dim)`` (row-major: the first coordinate
        varies slowest).
    """
    n = _check_n(n, "n")
    dim = _check_n(dim, "dim", 1)
    if n**dim > 200_000:
        raise ValueError(f"grid_space: n^dim = {n}^{dim} = {n**dim} points is too many for a dense "
                         "(M, M) distance matrix; use fewer points per side or a lower dim.")
    t = torch.linspace(0, 1, n, dtype=dtype, device=device)
    axes = torch.meshgrid(*([t] * dim), indexing="ij")
    pts = torch.stack([a.reshape(-1) for a in axes], dim=1)
    D = torch.cdist(pts, pts)
    return TargetSpace(pts, D, _uniform(n**dim, dtype, device), "grid", pts.clone())


def sphere_space(n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
                 ) -> TargetSpace:
    """``n`` near-uniform points on the unit sphere (Fibonacci lattice), geodesic distances.

    Args:
        n: number of points (``>= 4``).
    Returns:
        A :class:`TargetSpace` with ``points: (n, 3)`` on ``S^2`` and
        ``distances = arccos(clamp(<z, z'>, -1, 1))`` in ``[0, pi]``.
    """
    n = _check_n(n, "n", 4)
    k = torch.arange(n, dtype=dtype, device=device)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    zc = 1 - 2 * (k + 0.5) / n
    r = torch.sqrt(1 - zc * zc)
    phi = golden * k
    pts = torch.stack([r * torch.cos(phi), r * torch.sin(phi), zc], dim=1)
    D = torch.arccos((pts @ pts.T).clamp(-1, 1))
    D.fill_diagonal_(0)
    params = torch.stack([torch.arccos(zc), torch.remainder(phi, 2 * math.pi)], dim=1)
    return TargetSpace(pts, D, _uniform(n, dtype, device), "sphere", params)


def torus_space(n: int, *, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None
                ) -> TargetSpace:
    """The ``n x n`` grid on the flat torus ``[0, 1)^2`` (periodic), geodesic distances.

    Args:
        n: points per side (``>= 3``).
    Returns:
        A :class:`TargetSpace` with ``points: (n^2, 4)`` (Clifford embedding, see module doc),
        ``params: (n^2, 2)`` the grid coordinates ``(u, v)``.
    """
    n = _check_n(n, "n", 3)
    t = torch.arange(n, dtype=dtype, device=device) / n
    uu, vv = torch.meshgrid(t, t, indexing="ij")
    uv = torch.stack([uu.reshape(-1), vv.reshape(-1)], dim=1)
    diff = (uv[:, None, :] - uv[None, :, :]).abs()
    diff = torch.minimum(diff, 1 - diff)
    D = diff.pow(2).sum(-1).sqrt()
    ang = 2 * math.pi * uv
    pts = torch.stack([ang[:, 0].cos(), ang[:, 0].sin(), ang[:, 1].cos(), ang[:, 1].sin()], 1) / (2 * math.pi)
    return TargetSpace(pts, D, _uniform(n * n, dtype, device), "torus", uv)


def custom_space(points: Tensor, distances: Tensor | None = None, weights: Tensor | None = None
                 ) -> TargetSpace:
    """A user point set with a user distance matrix (Euclidean distances if ``None``).

    Args:
        points: ``(M, d)`` ambient coordinates.
        distances: ``(M, M)`` distance matrix, or ``None`` for ``torch.cdist(points, points)``.
        weights: ``(M,)`` positive reference weights, or ``None`` for uniform ``1/M``.
    """
    if not isinstance(points, torch.Tensor):
        raise TypeError(f"points must be a torch.Tensor of shape (M, d), got {type(points)!r}.")
    if points.dim() != 2:
        raise ValueError(f"points must have shape (M, d), got {tuple(points.shape)}.")
    if distances is None:
        distances = torch.cdist(points, points)
    if weights is None:
        weights = _uniform(points.shape[0], points.dtype, points.device)
    return TargetSpace(points, distances, weights, "custom", None)
