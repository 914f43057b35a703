"""MDS (SMACOF), Isomap, t-SNE, Laplacian eigenmaps and a local-SVD dimension estimate, in torch.

All functions take ``D: (N, N)`` symmetric non-negative distances (float32/float64 tensor or
numpy array) and return ``(N, dim)`` float64 tensors on ``D``'s device.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._typing import Tensor

__all__ = ["classical_mds", "mds", "isomap", "tsne", "laplacian_eigenmaps", "estimate_dimension",
           "knn_graph"]


def _check_distances(D: object, name: str = "D") -> Tensor:
    if isinstance(D, np.ndarray):
        D = torch.from_numpy(D)
    if not isinstance(D, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array of shape (N, N), got {type(D)!r}.")
    if D.dim() != 2 or D.shape[0] != D.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) distance matrix, got shape {tuple(D.shape)}.")
    if D.shape[0] < 3:
        raise ValueError(f"{name} must hold at least 3 points, got {D.shape[0]}.")
    D = D.to(torch.float64)
    if not bool(torch.isfinite(D).all()):
        raise ValueError(f"{name} contains NaN or inf entries (a partial pairwise matrix?).")
    if bool((D < 0).any()):
        raise ValueError(f"{name} has negative entries (min {float(D.min()):.3g}); distances must be >= 0.")
    if not torch.allclose(D, D.T, rtol=1e-5, atol=1e-8 * float(D.abs().max())):
        raise ValueError(f"{name} is not symmetric; pass (D + D.T) / 2 if that is intended.")
    return (D + D.T) / 2


def _check_dim(dim: object, N: int) -> int:
    if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim < N:
        raise ValueError(f"dim must be an integer in [1, N-1] = [1, {N - 1}], got {dim!r}.")
    return dim


def _check_k(k: object, N: int, name: str = "n_neighbors") -> int:
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k < N:
        raise ValueError(f"{name} must be an integer in [1, N-1] = [1, {N - 1}], got {k!r}.")
    return k


def classical_mds(D: Tensor, dim: int = 2) -> Tensor:
    """Torgerson MDS: top eigenvectors of ``-J D^2 J / 2`` scaled by ``sqrt(eigenvalue)``."""
    D = _check_distances(D)
    N = D.shape[0]
    dim = _check_dim(dim, N)
    return _cmds(D, dim)


def _cmds(D: Tensor, dim: int) -> Tensor:
    D2 = D ** 2
    Bm = -0.5 * (D2 - D2.mean(0, keepdim=True) - D2.mean(1, keepdim=True) + D2.mean())
    vals, vecs = torch.linalg.eigh(Bm)
    vals, vecs = vals.flip(0)[:dim], vecs.flip(1)[:, :dim]
    X = vecs * vals.clamp_min(0).sqrt()
    return _fix_signs(X)


def _fix_signs(X: Tensor) -> Tensor:
    # deterministic sign: largest-magnitude entry of each column positive
    idx = X.abs().argmax(0)
    s = torch.sign(X[idx, torch.arange(X.shape[1])])
    return X * torch.where(s == 0, torch.ones_like(s), s)


def mds(D: Tensor, dim: int = 2, *, max_iter: int = 300, tol: float = 1e-6, init: Tensor | None = None
        ) -> Tensor:
    """Metric MDS by SMACOF: minimise the raw stress ``sum_{i<j} (|X_i - X_j| - D_ij)^2``.

    Guttman transform ``X <- B(X) X / N`` (de Leeuw 1977), started from classical MDS (or
    ``init: (N, dim)``), stopped when the relative stress decrease is below ``tol``.
    """
    D = _check_distances(D)
    N = D.shape[0]
    dim = _check_dim(dim, N)
    X = _cmds(D, dim) if init is None else torch.as_tensor(init, dtype=torch.float64, device=D.device)
    if X.shape != (N, dim):
        raise ValueError(f"init must have shape ({N}, {dim}), got {tuple(X.shape)}.")
    prev = math.inf
    for _ in range(max_iter):
        dX = torch.cdist(X, X, compute_mode="donot_use_mm_for_euclid_dist")
        stress = float(((dX - D) ** 2).sum() / 2)
        if prev - stress <= tol * max(prev, 1e-300) and prev < math.inf:
            break
        prev = stress
        ratio = torch.where(dX > 0, D / dX.clamp_min(1e-300), torch.zeros_like(D))
        Bm = -ratio
        Bm.diagonal().copy_(ratio.sum(1))
        X = Bm @ X / N
    return X


def knn_graph(D: Tensor, n_neighbors: int) -> Tensor:
    """Symmetric kNN adjacency ``(N, N)`` bool (``i ~ j`` if either is among the other's k nearest)."""
    D = _check_distances(D)
    k = _check_k(n_neighbors, D.shape[0])
    return _knn(D, k)


def _knn(D: Tensor, k: int) -> Tensor:
    N = D.shape[0]
    Dd = D + torch.diag(torch.full((N,), math.inf, dtype=D.dtype, device=D.device))
    idx = Dd.topk(k, largest=False).indices
    A = torch.zeros(N, N, dtype=torch.bool, device=D.device)
    A[torch.arange(N, device=D.device)[:, None], idx] = True
    return A | A.T


def isomap(D: Tensor, dim: int = 2, *, n_neighbors: int = 10) -> Tensor:
    """Isomap on a precomputed metric: kNN graph, all-pairs shortest paths, classical MDS.

    Shortest paths by Floyd-Warshall in torch (``N`` min-plus sweeps of ``N x N``). A
    disconnected graph raises a ValueError (increase ``n_neighbors``).
    """
    D = _check_distances(D)
    N = D.shape[0]
    dim = _check_dim(dim, N)
    A = _knn(D, _check_k(n_neighbors, N))
    G = torch.where(A, D, torch.full_like(D, math.inf))
    G.fill_diagonal_(0)
    for m in range(N):
        G = torch.minimum(G, G[:, m: m + 1] + G[m: m + 1, :])
    if not bool(torch.isfinite(G).all()):
        raise ValueError(
            f"the {n_neighbors}-nearest-neighbour graph is disconnected; increase n_neighbors."
        )
    return _cmds(G, dim)


def laplacian_eigenmaps(D: Tensor, dim: int = 2, *, n_neighbors: int = 10, sigma: float | None = None
                        ) -> Tensor:
    """Laplacian eigenmaps: heat kernel ``exp(-D^2 / (2 sigma^2))`` on the kNN graph, bottom
    non-trivial eigenvectors of the symmetric normalised Laplacian, divided by ``sqrt(degree)``
    (the random-walk eigenvectors). ``sigma`` defaults to the median kNN distance.
    """
    D = _check_distances(D)
    N = D.shape[0]
    dim = _check_dim(dim, N)
    A = _knn(D, _check_k(n_neighbors, N))
    if sigma is None:
        sigma = float(D[A].median())
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}.")
    Wm = torch.where(A, torch.exp(-D ** 2 / (2 * sigma ** 2)), torch.zeros_like(D))
    deg = Wm.sum(1)
    if bool((deg <= 0).any()):
        raise ValueError("a point has no neighbour with positive affinity; increase sigma or n_neighbors.")
    dinv = deg.rsqrt()
    L = torch.eye(N, dtype=D.dtype, device=D.device) - dinv[:, None] * Wm * dinv[None, :]
    vals, vecs = torch.linalg.eigh(L)
    Y = vecs[:, 1: dim + 1] * dinv[:, None]
    return _fix_signs(Y / Y.norm(dim=0, keepdim=True))


def tsne(D: Tensor, dim: int = 2, *, perplexity: float = 30.0, n_iter: int = 750,
         learning_rate: float | None = None, early_exaggeration: float = 12.0,
         generator: torch.Generator | None = None) -> Tensor:
    """Exact t-SNE on a precomputed metric (van der Maaten & Hinton 2008).

    Conditional affinities from ``D^2`` with a per-point bandwidth found by bisection to match
    ``perplexity``, symmetrised; gradient descent with momentum 0.5 -> 0.8, early exaggeration
    for the first 250 iterations, per-coordinate gains; initialisation ``1e-4 N(0, 1)`` from
    ``generator`` (reproducible). ``learning_rate`` defaults to ``max(N / early_exaggeration / 4, 50)``.
    """
    D = _check_distances(D)
    N = D.shape[0]
    dim = _check_dim(dim, N)
    if not 1 <= perplexity < N:
        raise ValueError(f"perplexity must lie in [1, N) = [1, {N}), got {perplexity!r}.")
    P = _joint_probabilities(D ** 2, perplexity)
    lr = max(N / early_exaggeration / 4, 50.0) if learning_rate is None else learning_rate
    Y = 1e-4 * torch.randn(N, dim, generator=generator, dtype=torch.float64).to(D.device)
    update = torch.zeros_like(Y)
    gains = torch.ones_like(Y)
    for it in range(n_iter):
        exag = early_exaggeration if it < 250 else 1.0
        mom = 0.5 if it < 250 else 0.8
        num = 1.0 / (1.0 + torch.cdist(Y, Y) ** 2)
        num.fill_diagonal_(0)
        Q = (num / num.sum()).clamp_min(1e-12)
        PQ = (exag * P - Q) * num
        grad = 4 * (PQ.sum(1, keepdim=True) * Y - PQ @ Y)
        inc = (update * grad) < 0
        gains = torch.where(inc, gains + 0.2, gains * 0.8).clamp_min(0.01)
        update = mom * update - lr * gains * grad
        Y = Y + update
    return Y - Y.mean(0)


def _joint_probabilities(D2: Tensor, perplexity: float) -> Tensor:
    N = D2.shape[0]
    target = math.log(perplexity)
    lo = torch.full((N, 1), 0.0, dtype=D2.dtype, device=D2.device)
    hi = torch.full((N, 1), math.inf, dtype=D2.dtype, device=D2.device)
    beta = torch.ones((N, 1), dtype=D2.dtype, device=D2.device) / D2[D2 > 0].median()
    mask = ~torch.eye(N, dtype=torch.bool, device=D2.device)
    for _ in range(100):
        logits = torch.where(mask, -D2 * beta, torch.full_like(D2, -math.inf))
        Pc = torch.softmax(logits, 1)
        H = -(Pc * torch.log(Pc.clamp_min(1e-300))).sum(1, keepdim=True)
        too_flat = H > target  # entropy too high: increase beta
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(torch.isinf(hi), beta * 2, (lo + hi) / 2)
        if float((H - target).abs().max()) < 1e-5:
            break
    P = Pc + Pc.T
    return (P / P.sum()).clamp_min(1e-12)


def estimate_dimension(D: Tensor, *, n_neighbors: int = 10, alpha: float = 0.9,
                       max_dim: int = 50) -> int:
    """Local-SVD intrinsic dimension: in each point's kNN neighbourhood (coordinates from
    classical MDS in ``max_dim`` dimensions), the number of singular directions needed to
    explain a fraction ``alpha`` of the local variance; the median over points.

    The heuristic can under- or over-shoot on image data: runners expose a manual override.
    """
    D = _check_distances(D)
    N = D.shape[0]
    k = _check_k(n_neighbors, N)
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha!r}.")
    X = _cmds(D, min(max_dim, N - 1))
    Dd = D + torch.diag(torch.full((N,), math.inf, dtype=D.dtype, device=D.device))
    idx = torch.cat([torch.arange(N, device=D.device)[:, None], Dd.topk(k, largest=False).indices], 1)
    nb = X[idx]  # (N, k+1, max_dim)
    nb = nb - nb.mean(1, keepdim=True)
    s2 = torch.linalg.svdvals(nb) ** 2  # (N, min(k+1, max_dim))
    frac = s2.cumsum(1) / s2.sum(1, keepdim=True).clamp_min(1e-300)
    dims = (frac < alpha - 1e-12).sum(1) + 1
    return int(dims.median())
