"""Linear optimal transport (LOT) embeddings (Wang, Slepcev, Basu, Ozolek, Rohde 2013).

Fix a reference measure ``mu_0 = sum_i a_i delta_{x_i}``. Each measure ``mu_k`` is embedded as
the barycentric projection of an optimal plan ``pi_k`` from ``mu_0`` to ``mu_k``,

    T_k(x_i) = sum_j pi_k[i, j] y_j / a_i            (a Monge map when ``pi_k`` is one),

a point of ``L2(mu_0; R^D)``. The LOT distance is the distance of the embeddings,
``d_LOT(mu_k, mu_l)^2 = sum_i a_i |T_k(x_i) - T_l(x_i)|^2`` (cost ``|x - y|^2``, no ``1/2``), and
the linearised barycenter with weights ``w`` is ``(sum_k w_k T_k)#mu_0``.

In 1D the optimal plan is the monotone (quantile) coupling, computed exactly by merging the
cumulative weights (``method="exact1d"``): then ``T_k(x_i) = (1/a_i) int_{A_{i-1}}^{A_i} F_k^-1``
and, for a uniform reference matched to equal-size clouds, ``d_LOT = W_2`` exactly. In any
dimension ``method="sinkhorn"`` uses :meth:`torchuot.UOTResult.barycentric_projection` of a
balanced entropic plan (library conventions: ``eps = blur**2``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ._typing import Tensor
from ._validation import as_points, as_weights
from .sinkhorn import sinkhorn

__all__ = ["LOTEmbedding", "linear_ot_embedding", "lot_distance_matrix", "linearized_barycenter"]

_METHODS = ("auto", "exact1d", "sinkhorn")


@dataclass(frozen=True)
class LOTEmbedding:
    """Measures embedded in ``L2(mu_0)`` by their transport maps from the reference.

    Attributes:
        x_ref: ``(N0, D)`` reference atoms. a_ref: ``(N0,)`` reference probability weights.
        maps: ``(K, N0, D)`` ``T_k(x_ref)`` for each of the ``K`` measures (differentiable in
            the measures' points).
        method: ``"exact1d"`` or ``"sinkhorn"``.
    """

    x_ref: Tensor
    a_ref: Tensor
    maps: Tensor
    method: str

    def displacements(self) -> Tensor:
        """``T_k(x_i) - x_i`` -> ``(K, N0, D)`` (the tangent vectors at ``mu_0``)."""
        return self.maps - self.x_ref

    def vectors(self) -> Tensor:
        """Flat Euclidean embedding ``sqrt(a_i) (T_k(x_i) - x_i)`` -> ``(K, N0 * D)``.

        Euclidean distances between rows are LOT distances, so any vector-space method
        (PCA, k-means, linear classifiers) applies directly.
        """
        w = self.a_ref.sqrt().unsqueeze(-1)
        return (w * self.displacements()).reshape(self.maps.shape[0], -1)

    def distance_matrix(self, squared: bool = True) -> Tensor:
        """LOT distances ``(K, K)``: ``sum_i a_i |T_k(x_i) - T_l(x_i)|^2`` (or its square root)."""
        diff = self.maps.unsqueeze(1) - self.maps.unsqueeze(0)  # (K, K, N0, D)
        d2 = (self.a_ref * diff.square().sum(-1)).sum(-1)
        return d2 if squared else d2.clamp_min(0).sqrt()

    def barycenter(self, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Linearised barycenter ``(sum_k w_k T_k)#mu_0`` -> ``(points (N0, D), weights (N0,))``.

        Args:
            weights: ``(K,)`` non-negative barycentric weights (normalised); default uniform.
        """
        K = self.maps.shape[0]
        if weights is None:
            w = torch.full((K,), 1.0 / K, dtype=self.maps.dtype, device=self.maps.device)
        else:
            if not isinstance(weights, torch.Tensor) or weights.shape != (K,):
                raise ValueError(f"weights must be a tensor of shape ({K},), got "
                                 f"{getattr(weights, 'shape', type(weights))}.")
            if bool((weights < 0).any()) or float(weights.sum()) <= 0:
                raise ValueError("weights must be non-negative with a positive sum.")
            w = weights.to(self.maps) / weights.sum()
        return torch.einsum("k,knd->nd", w, self.maps), self.a_ref


def _monge_1d(x0: Tensor, a0: Tensor, y: Tensor, b: Tensor) -> Tensor:
    """Barycentric projection of the monotone plan from ``(x0, a0)`` to ``(y, b)`` -> ``(N0,)``.

    The interval of quantile levels ``[A_{i-1}, A_i]`` of reference atom ``i`` is cut at the
    target's cumulative weights; each piece carries the target atom whose quantile it is.
    """
    N0, M = x0.shape[0], y.shape[0]
    order = torch.argsort(x0)
    ca = torch.cumsum(a0[order], 0)
    ys, iy = torch.sort(y)
    cb = torch.cumsum(b[iy], 0)
    levels = torch.sort(torch.cat([ca, cb])).values
    delta = torch.diff(levels, prepend=levels.new_zeros(1))
    ia = torch.searchsorted(ca.detach().contiguous(), levels.detach().contiguous()).clamp_max(N0 - 1)
    ib = torch.searchsorted(cb.detach().contiguous(), levels.detach().contiguous()).clamp_max(M - 1)
    num = torch.zeros(N0, dtype=y.dtype, device=y.device).index_add(0, ia, delta * ys[ib])
    T_sorted = num / a0[order]
    T = torch.empty_like(T_sorted)
    return T.index_copy(0, order, T_sorted)


def _as_measures(measures: object, D: int, dtype: torch.dtype, device) -> list[tuple[Tensor, Tensor]]:
    if isinstance(measures, torch.Tensor):
        if measures.dim() != 3:
            raise ValueError(
                f"measures given as one tensor must have shape (K, M, D), got {tuple(measures.shape)}."
            )
        measures = list(measures)
    if not isinstance(measures, Sequence) or len(measures) == 0:
        raise TypeError(
            "measures must be a non-empty list of point clouds (M_k, D) or (weights, points) pairs, "
            f"or a (K, M, D) tensor; got {type(measures)!r}."
        )
    out = []
    for k, m in enumerate(measures):
        if isinstance(m, (tuple, list)):
            if len(m) != 2:
                raise ValueError(f"measures[{k}] must be points (M, D) or a pair (weights, points).")
            w, pts = m
        else:
            w, pts = None, m
        yb, batched = as_points(pts, f"measures[{k}]")
        if batched:
            raise ValueError(f"measures[{k}] must be one cloud (M, D), got shape {tuple(pts.shape)}.")
        if yb.shape[2] != D:
            raise ValueError(f"measures[{k}] has dimension {yb.shape[2]}, the reference has {D}.")
        if yb.dtype != dtype or yb.device != device:
            raise TypeError(f"measures[{k}] must have the reference's dtype {dtype} and device {device}.")
        wb = as_weights(w, yb, f"weights of measures[{k}]", f"measures[{k}]")
        out.append((yb[0], wb[0] / wb[0].sum()))
    return out


def linear_ot_embedding(
    x_ref: Tensor,
    measures: Sequence[Tensor | tuple[Tensor, Tensor]] | Tensor,
    a_ref: Tensor | None = None,
    *,
    method: str = "auto",
    blur: float | None = None,
    eps: float | None = None,
    **sinkhorn_kwargs: object,
) -> LOTEmbedding:
    """Embed each measure by the barycentric projection of its plan from the reference.

    Args:
        x_ref: ``(N0, D)`` reference atoms. a_ref: ``(N0,)`` positive weights (default uniform).
        measures: ``K`` clouds ``(M_k, D)``, or ``(weights (M_k,), points (M_k, D))`` pairs, or a
            ``(K, M, D)`` tensor. Weights are normalised to probabilities.
        method: ``"exact1d"`` (monotone plan, ``D = 1`` only), ``"sinkhorn"`` (entropic plan,
            any ``D``) or ``"auto"`` (exact in 1D, Sinkhorn otherwise).
        blur, eps, **sinkhorn_kwargs: for ``method="sinkhorn"`` (balanced solve).

    Returns:
        A :class:`LOTEmbedding` with ``maps: (K, N0, D)``.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}.")
    xb, batched = as_points(x_ref, "x_ref")
    if batched:
        raise ValueError(f"x_ref must be one cloud (N0, D), got shape {tuple(x_ref.shape)}.")
    ab = as_weights(a_ref, xb, "a_ref", "x_ref")
    if bool((ab <= 0).any()):
        raise ValueError("a_ref must be strictly positive: the barycentric projection divides by it.")
    x0, a0 = xb[0], ab[0] / ab[0].sum()
    D = x0.shape[1]
    ms = _as_measures(measures, D, x0.dtype, x0.device)
    if method == "auto":
        method = "exact1d" if D == 1 else "sinkhorn"
    if method == "exact1d":
        if D != 1:
            raise ValueError(f"method='exact1d' needs D = 1, got D = {D}; use method='sinkhorn'.")
        maps = torch.stack([_monge_1d(x0[:, 0], a0, y[:, 0], b).unsqueeze(-1) for y, b in ms])
    else:
        out = []
        for y, b in ms:
            res = sinkhorn(x0, y, a0, b, blur=blur, eps=eps, **sinkhorn_kwargs)
            out.append(_barycentric_map(res, y))
        maps = torch.stack(out)
    return LOTEmbedding(x_ref=x0, a_ref=a0, maps=maps, method=method)


def _barycentric_map(res, y: Tensor) -> Tensor:
    """``pi y / pi 1`` with the plan held fixed (detached): differentiable in ``y`` only."""
    P = res.plan().detach()  # (N0, M)
    den = P.sum(1).clamp_min(torch.finfo(y.dtype).tiny)
    return (P @ y) / den.unsqueeze(-1)


def lot_distance_matrix(
    x_ref: Tensor,
    measures: Sequence[Tensor | tuple[Tensor, Tensor]] | Tensor,
    a_ref: Tensor | None = None,
    *,
    squared: bool = True,
    **kwargs: object,
) -> Tensor:
    """LOT distance matrix ``(K, K)`` (see :func:`linear_ot_embedding` for the arguments)."""
    return linear_ot_embedding(x_ref, measures, a_ref, **kwargs).distance_matrix(squared=squared)  # type: ignore[arg-type]


def linearized_barycenter(
    x_ref: Tensor,
    measures: Sequence[Tensor | tuple[Tensor, Tensor]] | Tensor,
    a_ref: Tensor | None = None,
    *,
    weights: Tensor | None = None,
    **kwargs: object,
) -> tuple[Tensor, Tensor]:
    """Linearised Wasserstein barycenter ``(sum_k w_k T_k)#mu_0`` -> ``(points (N0, D), weights (N0,))``."""
    return linear_ot_embedding(x_ref, measures, a_ref, **kwargs).barycenter(weights)  # type: ignore[arg-type]
