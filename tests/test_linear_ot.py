"""Linear OT embeddings: exact 1D maps against quantile integrals, LOT = W2 in 1D, barycenters."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

import torchuot
from torchuot.linear import LOTEmbedding, linear_ot_embedding, linearized_barycenter, lot_distance_matrix

DT = torch.float64


def _quantile_average_map(x0, a0, y, b):
    """Independent reference: T(x_i) = (1/a_i) int_{A_{i-1}}^{A_i} F_y^-1(t) dt (numpy, overlaps)."""
    order = np.argsort(x0)
    A = np.concatenate([[0.0], np.cumsum(a0[order])])
    iy = np.argsort(y)
    Bc = np.concatenate([[0.0], np.cumsum(b[iy])])
    ys = y[iy]
    T = np.empty_like(x0)
    for r, i in enumerate(order):
        lo, hi = A[r], A[r + 1]
        overlap = np.clip(np.minimum(hi, Bc[1:]) - np.maximum(lo, Bc[:-1]), 0, None)
        T[i] = (overlap * ys).sum() / (hi - lo)
    return T


def test_exact1d_maps_are_quantile_integrals(gen):
    x0 = torch.randn(17, 1, generator=gen, dtype=DT)
    a0 = torch.rand(17, generator=gen, dtype=DT) + 0.05
    y1 = torch.randn(40, 1, generator=gen, dtype=DT) * 2 + 1
    b2 = torch.rand(9, generator=gen, dtype=DT)
    y2 = torch.randn(9, 1, generator=gen, dtype=DT) - 3
    emb = linear_ot_embedding(x0, [y1, (b2, y2)], a0)
    assert emb.method == "exact1d" and emb.maps.shape == (2, 17, 1)
    a0n = (a0 / a0.sum()).numpy()
    ref1 = _quantile_average_map(x0[:, 0].numpy(), a0n, y1[:, 0].numpy(), np.full(40, 1 / 40))
    ref2 = _quantile_average_map(x0[:, 0].numpy(), a0n, y2[:, 0].numpy(), (b2 / b2.sum()).numpy())
    np.testing.assert_allclose(emb.maps[0, :, 0].numpy(), ref1, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(emb.maps[1, :, 0].numpy(), ref2, rtol=1e-12, atol=1e-12)
    # The exact plan's barycentric projection, via POT's exact solver.
    P = ot.emd(a0 / a0.sum(), (b2 / b2.sum()), ot.dist(x0, y2))
    torch.testing.assert_close(emb.maps[1], (P @ y2) / P.sum(1, keepdim=True), rtol=1e-10, atol=1e-12)


def test_lot_equals_w2_in_1d_for_equal_sizes_and_barycenter_is_quantile_average(gen):
    x0 = torch.randn(25, 1, generator=gen, dtype=DT)
    ms = [torch.randn(25, 1, generator=gen, dtype=DT) * s + m for s, m in [(1, 0), (2, 1), (0.5, -2)]]
    D2 = lot_distance_matrix(x0, ms)
    for k in range(3):
        for l in range(3):
            ref = ot.emd2([], [], ot.dist(ms[k], ms[l]))
            torch.testing.assert_close(D2[k, l], ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lot_distance_matrix(x0, ms, squared=False), D2.sqrt())
    pts, w = linearized_barycenter(x0, ms, weights=torch.tensor([1.0, 2.0, 1.0], dtype=DT))
    q = torch.stack([m[:, 0].sort().values for m in ms])
    torch.testing.assert_close(pts[:, 0].sort().values, (q[0] + 2 * q[1] + q[2]) / 4)
    torch.testing.assert_close(w, torch.full((25,), 1 / 25, dtype=DT))


def test_sinkhorn_method_is_barycentric_projection_and_vectors_are_isometric(gen):
    x0 = torch.randn(12, 2, generator=gen, dtype=DT)
    ms = torch.randn(3, 15, 2, generator=gen, dtype=DT) + torch.tensor([1.0, 0.0], dtype=DT)
    emb = linear_ot_embedding(x0, ms, blur=0.5)
    assert isinstance(emb, LOTEmbedding) and emb.method == "sinkhorn"
    for k in range(3):
        ref = torchuot.sinkhorn(x0, ms[k], blur=0.5).barycentric_projection()
        torch.testing.assert_close(emb.maps[k], ref, rtol=1e-9, atol=1e-12)
    V = emb.vectors()
    torch.testing.assert_close(torch.cdist(V, V) ** 2, emb.distance_matrix(), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(emb.displacements(), emb.maps - x0)


def test_gradients_flow_to_measures(gen):
    x0 = torch.randn(6, 1, generator=gen, dtype=DT)
    y = torch.randn(5, 1, generator=gen, dtype=DT, requires_grad=True)
    z = torch.randn(8, 1, generator=gen, dtype=DT)
    assert torch.autograd.gradcheck(lambda t: lot_distance_matrix(x0, [t, z])[0, 1], (y,))


def test_errors(gen):
    x0 = torch.randn(6, 2, generator=gen, dtype=DT)
    y = torch.randn(5, 2, generator=gen, dtype=DT)
    with pytest.raises(ValueError, match="exact1d"):
        linear_ot_embedding(x0, [y], method="exact1d")
    with pytest.raises(ValueError, match="method"):
        linear_ot_embedding(x0, [y], method="monge")
    with pytest.raises(ValueError, match="strictly positive"):
        linear_ot_embedding(x0, [y], torch.tensor([0.0, 1, 1, 1, 1, 1], dtype=DT))
    with pytest.raises(ValueError, match="dimension"):
        linear_ot_embedding(x0, [y[:, :1]])
    with pytest.raises(TypeError, match="non-empty"):
        linear_ot_embedding(x0, [])
    emb = linear_ot_embedding(x0[:, :1], [y[:, :1]])
    with pytest.raises(ValueError, match="weights"):
        emb.barycenter(torch.tensor([1.0, 2.0], dtype=DT))
