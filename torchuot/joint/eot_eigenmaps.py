"""Entropic optimal transport eigenmaps: a joint spectral embedding of two datasets.

Landa, Kluger, Ma, "Entropic Optimal Transport Eigenmaps for Nonlinear Alignment and Joint
Embedding of High-Dimensional Datasets" (arXiv 2407.01718); reference implementation
rongstat/EOT-eigenmap ``main.R`` (``EOTmap``). For ``x: (N, D)`` and ``y: (M, D)``:

1. Gaussian kernel ``K_ij = exp(-|x_i - y_j|^2 / h^2)`` with the median heuristic
   ``h = median_ij |x_i - y_j|`` -- in torchuot's convention (cost ``|x - y|^2 / 2``,
   kernel ``exp(-C / eps)``) this is ``eps = h^2 / 2``;
2. the balanced entropic plan ``pi`` between uniform measures (:func:`torchuot.sinkhorn`), scaled
   to ``P = N M pi`` (row sums ``M``, column sums ``N``: the bistochastic normalisation of the
   paper and of ``EOTmap``'s Sinkhorn-Knopp);
3. SVD ``P = U S V^T``; the first singular pair is trivial (constant vectors, ``s_1 = sqrt(N M)``)
   and is dropped. The embeddings are ``sqrt(N) U[:, 1:q+1] S^t`` and ``sqrt(M) V[:, 1:q+1] S^t``
   (``t`` diffusion steps, 0 by default as in ``EOTmap``).

With ``n_components=None``, ``q`` is chosen as in ``EOTmap``: the last index ``r <= 79`` with an
eigen-gap ratio ``s_r / s_{r+1} > 1.02`` among the leading 80 singular values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._typing import Tensor
from .._validation import as_point_pair
from ..sinkhorn import sinkhorn

__all__ = ["EOTEmbedding", "eot_eigenmaps", "median_bandwidth"]


@dataclass(frozen=True)
class EOTEmbedding:
    """Output of :func:`eot_eigenmaps` (batched shapes when the inputs were batched).

    Attributes:
        x_embedding: ``(B, N, q)`` embedding of ``x``. y_embedding: ``(B, M, q)`` of ``y``.
        singular_values: ``(B, q + 1)`` leading singular values of ``P`` (trivial one first).
        eps: ``(B,)`` the entropic regularisation used (``h^2 / 2`` with the median heuristic).
        n_components: ``q``. converged: whether every Sinkhorn solve converged.
    """

    x_embedding: Tensor
    y_embedding: Tensor
    singular_values: Tensor
    eps: Tensor
    n_components: int
    converged: bool


def median_bandwidth(x: Tensor, y: Tensor) -> Tensor:
    """Median of the cross distances ``|x_i - y_j|`` -> ``(B,)`` for ``x: (B, N, D)``, ``y: (B, M, D)``."""
    return torch.cdist(x, y).flatten(1).median(dim=1).values


def eot_eigenmaps(
    x: Tensor,
    y: Tensor,
    eps: float | None = None,
    n_components: int | None = 2,
    *,
    t: float = 0.0,
    max_iter: int = 5000,
    tol: float = 1e-7,
) -> EOTEmbedding:
    """Joint embedding of ``x`` and ``y`` from the singular vectors of their entropic OT plan.

    Args:
        x: ``(N, D)`` or ``(B, N, D)``. y: ``(M, D)`` or ``(B, M, D)`` (same ``D``).
        eps: entropic regularisation for the cost ``|x - y|^2 / 2`` (kernel ``exp(-|x-y|^2 / (2 eps))``);
            ``None`` -- the median heuristic ``eps = median(|x_i - y_j|)^2 / 2`` per batch entry.
        n_components: embedding dimension ``q`` (``None``: the eigen-gap rule of ``EOTmap``).
        t: diffusion time; singular vectors are scaled by ``s^t``.
        max_iter, tol: Sinkhorn settings (balanced, uniform weights).
    Returns:
        An :class:`EOTEmbedding`.
    """
    xb, yb, batched = as_point_pair(x, y)
    B, N, M = xb.shape[0], xb.shape[1], yb.shape[1]
    kmax = min(N, M) - 1
    if n_components is not None and (
        isinstance(n_components, bool) or not isinstance(n_components, int) or not 1 <= n_components <= kmax
    ):
        raise ValueError(f"n_components must be None or an integer in [1, min(N, M) - 1] = [1, {kmax}], "
                         f"got {n_components!r}.")
    if isinstance(t, bool) or not isinstance(t, (int, float)) or t < 0:
        raise ValueError(f"t must be a number >= 0, got {t!r}.")
    if eps is None:
        eps_b = median_bandwidth(xb, yb).pow(2) / 2
        if bool((eps_b <= 0).any()):
            raise ValueError("the median cross distance is 0 (duplicated data?); pass eps explicitly.")
    else:
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
            raise ValueError(f"eps must be None (median heuristic) or a number > 0, got {eps!r}.")
        eps_b = torch.full((B,), float(eps), dtype=xb.dtype, device=xb.device)

    plans, converged = [], True
    for i in range(B):
        res = sinkhorn(xb[i], yb[i], eps=float(eps_b[i]), max_iter=max_iter, tol=tol)
        converged = converged and res.converged
        plans.append(res.plan() * (N * M))
    P = torch.stack(plans)  # (B, N, M), rows sum to M, columns to N
    U, S, Vh = torch.linalg.svd(P, full_matrices=False)
    if n_components is None:
        top = S[:, : min(80, S.shape[1])]
        ratio = top[:, :-1] / top[:, 1:].clamp_min(torch.finfo(S.dtype).tiny)
        hits = (ratio > 1.02).any(0).nonzero()
        q = int(hits.max()) if hits.numel() else 1
        q = max(1, min(q, kmax))
    else:
        q = n_components
    scale = S[:, 1 : q + 1].pow(t).unsqueeze(1)
    ex = (N ** 0.5) * U[:, :, 1 : q + 1] * scale
    ey = (M ** 0.5) * Vh.transpose(1, 2)[:, :, 1 : q + 1] * scale
    out = EOTEmbedding(ex, ey, S[:, : q + 1], eps_b, q, converged)
    if not batched:
        out = EOTEmbedding(ex[0], ey[0], S[0, : q + 1], eps_b[0], q, converged)
    return out
