"""Alignment metrics for joint embeddings with known correspondences.

* FOSCTTM -- "fraction of samples closer than the true match" (Liu et al. 2019; used by
  SCOT, Demetci et al. 2022): for a sample ``x_i`` whose true partner is ``y_i``, the fraction
  of the other ``N - 1`` samples ``y_j`` with ``d(x_i, y_j) < d(x_i, y_i)`` (strictly closer),
  averaged over ``i`` and over both directions (``x -> y`` and ``y -> x``). 0 is perfect,
  about 0.5 is random.
* kNN label-transfer accuracy: a ``k``-nearest-neighbour majority vote among the embedded
  points of one dataset (the labelled one) predicts the labels of the other's points.

Strict inequality means tied distances do not count as closer: a collapsed embedding (all
points equal) scores 0, so report FOSCTTM together with a spread or accuracy check.
"""

from __future__ import annotations

import torch

from .._typing import Tensor

__all__ = ["foscttm", "foscttm_from_distances", "knn_label_transfer_accuracy", "knn_predict"]


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


def foscttm_from_distances(dist: Tensor) -> Tensor:
    """FOSCTTM from a cross-distance matrix whose diagonal holds the true matches.

    Args:
        dist: ``(N, N)``, ``dist[i, j] = d(x_i, y_j)``; ``y_i`` is the partner of ``x_i``.
    Returns:
        A scalar tensor in ``[0, 1]``: the mean over both directions of
        ``#{j != i : dist[i, j] < dist[i, i]} / (N - 1)`` (rows) and the same on columns.
    """
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
    rows = (dist < diag[:, None]).sum(1).to(dist.dtype if dist.is_floating_point() else torch.float64)
    cols = (dist < diag[None, :]).sum(0).to(rows.dtype)
    return 0.5 * (rows.mean() + cols.mean()) / (N - 1)


def foscttm(x_emb: Tensor, y_emb: Tensor) -> Tensor:
    """FOSCTTM of two embeddings ``x_emb: (N, d)``, ``y_emb: (N, d)`` matched row by row.

    Distances are Euclidean in the embedding coordinates. Returns a scalar tensor in ``[0, 1]``.
    """
    x_emb, y_emb = _check_emb(x_emb, "x_emb"), _check_emb(y_emb, "y_emb")
    if x_emb.shape != y_emb.shape:
        raise ValueError(
            f"x_emb and y_emb must have the same shape (N, d) (row i of each is one matched pair), "
            f"got {tuple(x_emb.shape)} and {tuple(y_emb.shape)}."
        )
    return foscttm_from_distances(torch.cdist(x_emb, y_emb))


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
