"""Alignment metrics for joint embeddings with known correspondences.

* FOSCTTM -- "fraction of samples closer than the true match" (Liu et al. 2019; used by
  SCOT, Demetci et al. 2022): for a sample ``x_i`` whose true partner is ``y_i``, the fraction
  of the other ``N - 1`` samples ``y_j`` with ``d(x_i, y_j) < d(x_i, y_i)`` (strictly closer),
  averaged over ``i`` and over both directions (``x -> y`` and ``y -> x``). 0 is perfect,
  about 0.5 is random.
* kNN label-transfer accuracy: a ``k``-nearest-neighbour majority vote among the embedded
  points of one dataset (the labelled one) predicts the labels of the other's points.

Ties. With ``ties="strict"`` (the usual definition, the default) tied distances do not count
as closer: a collapsed embedding (all points equal) scores 0. Barycentric projections onto a
coarse target snap many points onto the same spot, so ``ties="half"`` counts each tie as half
closer (mid-rank): a collapsed embedding then scores 0.5 (chance), a perfect one still 0.
Report FOSCTTM together with :func:`embedding_spread`.

Symmetries. An embedding into a symmetric target (a grid, a sphere) is defined only up to the
target's isometries; EW_lambda's Wasserstein term ties the two embeddings to each other, but a
method (or a defect) may leave one view reflected against the other.
:func:`foscttm_best_symmetry` reports the best FOSCTTM over a finite symmetry group
(:func:`cube_symmetries` for grids), to be shown beside the raw value.
"""

from __future__ import annotations

import itertools

import torch

from .._typing import Tensor

__all__ = [
    "foscttm",
    "foscttm_from_distances",
    "foscttm_best_symmetry",
    "cube_symmetries",
    "embedding_spread",
    "knn_label_transfer_accuracy",
    "knn_predict",
]


def _check_emb(x: object, name: str) -> Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, d), got {type(x)!r}.")
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"{name} must have shape (N, d) with N >= 1, got {tuple(x.shape)}.")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}.")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or inf values.")
    return x


def _check_ties(ties: object) -> str:
    if ties not in ("strict", "half"):
        raise ValueError(f"ties must be 'strict' (ties are not closer) or 'half' (a tie counts 1/2), "
                         f"got {ties!r}.")
    return ties  # type: ignore[return-value]


def foscttm_from_distances(dist: Tensor, *, ties: str = "strict") -> Tensor:
    """FOSCTTM from a cross-distance matrix whose diagonal holds the true matches.

    Args:
        dist: ``(N, N)``, ``dist[i, j] = d(x_i, y_j)``; ``y_i`` is the partner of ``x_i``.
        ties: ``"strict"`` -- only strictly closer samples count; ``"half"`` -- a sample at
            exactly the partner's distance counts 1/2 (module docstring).
    Returns:
        A scalar tensor in ``[0, 1]``: the mean over both directions of
        ``#{j != i : dist[i, j] < dist[i, i]} / (N - 1)`` (rows) and the same on columns.
    """
    ties = _check_ties(ties)
    if not isinstance(dist, torch.Tensor):
        raise TypeError(f"dist must be a torch.Tensor of shape (N, N), got {type(dist)!r}.")
    if dist.dim() != 2 or dist.shape[0] != dist.shape[1]:
        raise ValueError(f"dist must be a square (N, N) matrix, got shape {tuple(dist.shape)}.")
    N = dist.shape[0]
    if N < 2:
        raise ValueError(f"FOSCTTM needs at least 2 matched pairs, got N = {N}.")
    if torch.isnan(dist).any():
        raise ValueError("dist contains NaN values.")
    diag = dist.diagonal()
    dt = dist.dtype if dist.is_floating_point() else torch.float64
    rows = (dist < diag[:, None]).sum(1).to(dt)
    cols = (dist < diag[None, :]).sum(0).to(dt)
    if ties == "half":  # the diagonal ties with itself: subtract it
        rows = rows + 0.5 * ((dist == diag[:, None]).sum(1).to(dt) - 1)
        cols = cols + 0.5 * ((dist == diag[None, :]).sum(0).to(dt) - 1)
    return 0.5 * (rows.mean() + cols.mean()) / (N - 1)


def _check_pair(x_emb: object, y_emb: object) -> tuple[Tensor, Tensor]:
    x_emb, y_emb = _check_emb(x_emb, "x_emb"), _check_emb(y_emb, "y_emb")
    if x_emb.shape != y_emb.shape:
        raise ValueError(
            f"x_emb and y_emb must have the same shape (N, d) (row i of each is one matched pair), "
            f"got {tuple(x_emb.shape)} and {tuple(y_emb.shape)}."
        )
    return x_emb, y_emb


def foscttm(x_emb: Tensor, y_emb: Tensor, *, ties: str = "strict") -> Tensor:
    """FOSCTTM of two embeddings ``x_emb: (N, d)``, ``y_emb: (N, d)`` matched row by row.

    Distances are Euclidean in the embedding coordinates; ``ties`` as in
    :func:`foscttm_from_distances`. Returns a scalar tensor in ``[0, 1]``.
    """
    x_emb, y_emb = _check_pair(x_emb, y_emb)
    return foscttm_from_distances(torch.cdist(x_emb, y_emb), ties=ties)


def cube_symmetries(dim: int, *, dtype: torch.dtype = torch.float64,
                    device: torch.device | str | None = None) -> Tensor:
    """The ``2^dim dim!`` symmetries of the cube ``[-1, 1]^dim`` (signed permutation matrices).

    Returns:
        ``(G, dim, dim)`` orthogonal matrices, the identity first. For the grid on ``[0, 1]^dim``
        apply them about its centre (``center=0.5`` in :func:`foscttm_best_symmetry`).
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 6:
        raise ValueError(f"dim must be an integer in [1, 6], got {dim!r}.")
    eye = torch.eye(dim, dtype=dtype, device=device)
    mats = []
    for perm in itertools.permutations(range(dim)):
        P = eye[list(perm)]
        for signs in itertools.product((1.0, -1.0), repeat=dim):
            mats.append(torch.tensor(signs, dtype=dtype, device=device)[:, None] * P)
    return torch.stack(mats)


def foscttm_best_symmetry(x_emb: Tensor, y_emb: Tensor, symmetries: Tensor,
                          center: Tensor | float = 0.0, *, ties: str = "strict"
                          ) -> tuple[Tensor, int]:
    """The smallest FOSCTTM of ``x_emb`` against ``g(y_emb)`` over the symmetries ``g`` given.

    ``g(y) = center + (y - center) R_g^T``. Report it beside the raw :func:`foscttm`: the gap
    between the two says how much of the error is one view being a mirror image or rotation of
    the other in the target.

    Args:
        x_emb, y_emb: ``(N, d)`` matched row by row.
        symmetries: ``(G, d, d)`` orthogonal matrices (e.g. :func:`cube_symmetries`).
        center: ``(d,)`` or a scalar, the fixed point of the symmetries (0.5 for the unit grid).
        ties: as in :func:`foscttm_from_distances`.
    Returns:
        ``(value, index)``: the best FOSCTTM (scalar tensor) and the index of the symmetry that
        attains it (the first one, so the identity wins ties of the value).
    """
    x_emb, y_emb = _check_pair(x_emb, y_emb)
    d = x_emb.shape[1]
    if (not isinstance(symmetries, torch.Tensor) or symmetries.dim() != 3
            or tuple(symmetries.shape[1:]) != (d, d)):
        raise ValueError(f"symmetries must be a (G, {d}, {d}) tensor of orthogonal matrices, got "
                         f"{getattr(symmetries, 'shape', type(symmetries))}.")
    R = symmetries.to(dtype=y_emb.dtype, device=y_emb.device)
    eye = torch.eye(d, dtype=R.dtype, device=R.device)
    if not torch.allclose(R @ R.transpose(1, 2), eye.expand_as(R), atol=1e-6):
        raise ValueError("symmetries must be orthogonal matrices (R R^T = I).")
    c = torch.as_tensor(center, dtype=y_emb.dtype, device=y_emb.device)
    if c.dim() > 1 or (c.dim() == 1 and c.shape[0] != d):
        raise ValueError(f"center must be a scalar or a ({d},) tensor, got shape {tuple(c.shape)}.")
    values = torch.stack([foscttm_from_distances(torch.cdist(x_emb, c + (y_emb - c) @ Rg.T), ties=ties)
                          for Rg in R])
    best = int(values.argmin())
    return values[best], best


def embedding_spread(emb: Tensor, reference: Tensor | None = None) -> Tensor:
    """Root-mean-square distance of the points ``emb: (N, d)`` to their centroid.

    With ``reference: (M, d)`` (e.g. the target space's support points) the value is divided by
    the reference's own RMS radius: 1 spreads like the target, 0 is a collapsed embedding.
    """
    emb = _check_emb(emb, "emb")
    rms = (emb - emb.mean(0)).pow(2).sum(1).mean().sqrt()
    if reference is None:
        return rms
    reference = _check_emb(reference, "reference")
    if reference.shape[1] != emb.shape[1]:
        raise ValueError(f"reference must have {emb.shape[1]} columns like emb, got {reference.shape[1]}.")
    ref = (reference - reference.mean(0)).pow(2).sum(1).mean().sqrt()
    if float(ref) == 0:
        raise ValueError("reference has zero spread (all points equal).")
    return rms / ref.to(rms.dtype)


def knn_predict(train_emb: Tensor, train_labels: Tensor, query_emb: Tensor, k: int = 5) -> Tensor:
    """Majority vote of the ``k`` nearest training points (Euclidean) for each query point.

    Ties between classes with the same count go to the class whose nearest member is closest.

    Args:
        train_emb: ``(N, d)`` labelled embedding. train_labels: ``(N,)`` integer labels.
        query_emb: ``(Q, d)`` points to label. k: neighbours (``1 <= k <= N``).
    Returns:
        ``(Q,)`` predicted labels (``int64``).
    """
    train_emb, query_emb = _check_emb(train_emb, "train_emb"), _check_emb(query_emb, "query_emb")
    if train_emb.shape[1] != query_emb.shape[1]:
        raise ValueError(
            f"train_emb and query_emb must share the embedding dimension, got "
            f"{train_emb.shape[1]} and {query_emb.shape[1]}."
        )
    if not isinstance(train_labels, torch.Tensor) or train_labels.shape != (train_emb.shape[0],):
        raise ValueError(
            f"train_labels must be a tensor of shape ({train_emb.shape[0]},), got "
            f"{getattr(train_labels, 'shape', type(train_labels))}."
        )
    if train_labels.is_floating_point() or train_labels.is_complex():
        raise TypeError(f"train_labels must be integer class labels, got dtype {train_labels.dtype}.")
    N = train_emb.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= N:
        raise ValueError(f"k must be an integer in [1, {N}] (the number of labelled points), got {k!r}.")
    labels = train_labels.to(torch.int64)
    classes, inv = torch.unique(labels, return_inverse=True)
    d = torch.cdist(query_emb, train_emb)
    nn_idx = d.topk(k, dim=1, largest=False).indices  # (Q, k), nearest first
    nn_cls = inv[nn_idx]
    C = classes.numel()
    counts = torch.zeros(query_emb.shape[0], C, dtype=torch.float64, device=d.device)
    counts.scatter_add_(1, nn_cls, torch.ones_like(nn_cls, dtype=torch.float64))
    # First rank at which each class appears (k if absent); a fraction < 1 breaks count ties.
    rank = torch.arange(k, device=d.device).expand_as(nn_cls)
    first = torch.full((query_emb.shape[0], C), k, dtype=torch.int64, device=d.device)
    first.scatter_reduce_(1, nn_cls, rank, reduce="amin")
    score = counts - first.to(torch.float64) / (k + 1)
    return classes[score.argmax(1)]


def knn_label_transfer_accuracy(train_emb: Tensor, train_labels: Tensor, query_emb: Tensor,
                                query_labels: Tensor, k: int = 5) -> Tensor:
    """Accuracy of :func:`knn_predict` labels against ``query_labels: (Q,)`` -> scalar in ``[0, 1]``."""
    pred = knn_predict(train_emb, train_labels, query_emb, k)
    if not isinstance(query_labels, torch.Tensor) or query_labels.shape != (query_emb.shape[0],):
        raise ValueError(
            f"query_labels must be a tensor of shape ({query_emb.shape[0]},), got "
            f"{getattr(query_labels, 'shape', type(query_labels))}."
        )
    return (pred == query_labels.to(pred.device, torch.int64)).double().mean()
