"""Geodesic distances on a k-nearest-neighbour graph (Isomap-style intra-dataset metric).

The graph joins each point to its ``k`` nearest neighbours (Euclidean), symmetrised (an edge
exists if either end chose the other), edge length = Euclidean distance. Shortest-path
lengths approximate the geodesic distance of the manifold the samples lie on (Tenenbaum et
al. 2000); SCOT (Demetci et al. 2022) and Beier et al. (2025) build the intra-dataset
distance matrices of their alignment problems this way.

All-pairs shortest paths run in torch (Floyd-Warshall as ``N`` vectorised min-plus updates,
``O(N^3)`` work, ``O(N^2)`` memory, on the input's device). ``method="scipy"`` uses
``scipy.sparse.csgraph`` (Dijkstra, optional import) for large sparse graphs on CPU.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._typing import Tensor

__all__ = ["knn_graph", "knn_geodesic_distances"]


def knn_graph(x: Tensor, k: int) -> Tensor:
    """Symmetrised kNN graph of ``x: (N, D)`` as a dense ``(N, N)`` matrix of edge lengths.

    Non-edges are ``+inf``; the diagonal is 0.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x must be a torch.Tensor of shape (N, D), got {type(x)!r}.")
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"x must have shape (N, D) with N >= 2, got {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or inf coordinates.")
    N = x.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= N - 1:
        raise ValueError(f"k must be an integer in [1, N - 1] = [1, {N - 1}], got {k!r}.")
    d = torch.cdist(x, x)
    d.fill_diagonal_(math.inf)
    idx = d.topk(k, dim=1, largest=False).indices
    W = torch.full_like(d, math.inf)
    W.scatter_(1, idx, d.gather(1, idx))
    W = torch.minimum(W, W.T)
    W.fill_diagonal_(0)
    return W


def _floyd_warshall(W: Tensor) -> Tensor:
    D = W.clone()
    for m in range(D.shape[0]):
        torch.minimum(D, D[:, m : m + 1] + D[m : m + 1, :], out=D)
    return D


def _scipy_paths(W: Tensor) -> Tensor:
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import shortest_path
    except ImportError as err:  # pragma: no cover - scipy ships with the test environment
        raise ImportError("method='scipy' needs scipy; install it or use method='torch'.") from err
    w = W.detach().cpu().numpy()
    mask = np.isfinite(w) & (w > 0)
    rows, cols = np.nonzero(mask)
    G = csr_matrix((w[rows, cols], (rows, cols)), shape=w.shape)
    D = shortest_path(G, method="D", directed=False)
    return torch.as_tensor(D, dtype=W.dtype, device=W.device)


def knn_geodesic_distances(x: Tensor, k: int = 10, *, method: str = "torch",
                           disconnected: str = "raise") -> Tensor:
    """Shortest-path distances on the symmetrised kNN graph of ``x``.

    Args:
        x: ``(N, D)`` samples.
        k: neighbours per point (``1 <= k <= N - 1``).
        method: ``"torch"`` (Floyd-Warshall on the device) or ``"scipy"`` (Dijkstra, CPU).
        disconnected: what to do when the graph has several components: ``"raise"`` a
            ValueError (increase ``k``), or ``"max"`` -- set infinite distances to the largest
            finite one (SCOT's convention).
    Returns:
        ``(N, N)`` symmetric distances, zero diagonal.
    """
    if method not in ("torch", "scipy"):
        raise ValueError(f"method must be 'torch' or 'scipy', got {method!r}.")
    if disconnected not in ("raise", "max"):
        raise ValueError(f"disconnected must be 'raise' or 'max', got {disconnected!r}.")
    W = knn_graph(x, k)
    D = _floyd_warshall(W) if method == "torch" else _scipy_paths(W)
    inf = ~torch.isfinite(D)
    if bool(inf.any()):
        if disconnected == "raise":
            n_unreached = int(inf.any(1).sum())
            raise ValueError(
                f"the {k}-NN graph is disconnected ({n_unreached} of {D.shape[0]} points cannot "
                "reach every other point); increase k or pass disconnected='max'."
            )
        D = torch.where(inf, D[~inf].max(), D)
    return D
