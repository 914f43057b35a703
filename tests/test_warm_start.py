"""Warm starts and POT-style inputs of the solvers (issue 14, item 8)."""

from __future__ import annotations

import numpy as np
import ot
import pytest
import torch

import torchuot as tu


def _problem(seed=0, n=30, m=40):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    y = torch.rand(m, 2, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("reach", [None, 0.5])
def test_warm_start_reaches_the_same_fixed_point_in_fewer_iterations(reach):
    x, y = _problem()
    cold = tu.sinkhorn(x, y, blur=0.05, reach=reach, tol=1e-10, max_iter=5000)
    # A gradient-flow step: the points move a little, the last potentials are reused.
    x2 = x + 0.01
    ref = tu.sinkhorn(x2, y, blur=0.05, reach=reach, tol=1e-10, max_iter=5000)
    warm = tu.sinkhorn(x2, y, blur=0.05, reach=reach, tol=1e-10, max_iter=5000, f_init=cold.f, g_init=cold.g)
    only_g = tu.sinkhorn(x2, y, blur=0.05, reach=reach, tol=1e-10, max_iter=5000, g_init=cold.g)
    only_f = tu.sinkhorn(x2, y, blur=0.05, reach=reach, tol=1e-10, max_iter=5000, f_init=cold.f)
    for r in (warm, only_g, only_f):
        assert r.converged
        assert float(r.value) == pytest.approx(float(ref.value), rel=1e-9)
        assert torch.allclose(r.plan(), ref.plan(), atol=1e-9)
    assert warm.n_iters < ref.n_iters


def test_warm_start_from_cost_and_batched_shapes():
    x, y = _problem()
    C = torch.cdist(x, y) ** 2 / 2
    ref = tu.sinkhorn_from_cost(C, eps=0.01, rho=1.0, tol=1e-10)
    warm = tu.sinkhorn_from_cost(C, eps=0.01, rho=1.0, tol=1e-10, f_init=ref.f, g_init=ref.g)
    assert warm.converged and warm.n_iters < ref.n_iters
    assert float(warm.value) == pytest.approx(float(ref.value), rel=1e-10)
    Cb = torch.stack([C, C.flip(0)])
    rb = tu.sinkhorn_from_cost(Cb, eps=0.01, rho=1.0, tol=1e-10)
    wb = tu.sinkhorn_from_cost(Cb, eps=0.01, rho=1.0, tol=1e-10, g_init=rb.g)
    assert torch.allclose(wb.value, rb.value, rtol=1e-10)


def test_warm_start_validation():
    x, y = _problem()
    with pytest.raises(ValueError, match="f_init must have the shape.*\\(30,\\)"):
        tu.sinkhorn(x, y, f_init=torch.zeros(29, dtype=torch.float64))
    with pytest.raises(ValueError, match="g_init contains NaN"):
        tu.sinkhorn(x, y, g_init=torch.full((40,), float("nan"), dtype=torch.float64))
    with pytest.raises(TypeError, match="f_init"):
        tu.sinkhorn(x, y, f_init=[0.0] * 30)


def test_sinkhorn_from_cost_takes_numpy_and_pot_reg_m():
    x, y = _problem(n=12, m=15)
    C = (torch.cdist(x, y) ** 2).numpy()
    a, b = np.full(12, 1 / 12), np.full(15, 1.3 / 15)
    for reg_m, pot_reg_m in (
        (0.7, 0.7),
        ([0.7], 0.7),
        ([0.7, 2.0], [0.7, 2.0]),
        (np.array([0.7, 2.0]), [0.7, 2.0]),
    ):
        res = tu.sinkhorn_from_cost(C, a, b, eps=0.05, reg_m=reg_m, tol=1e-12, max_iter=10_000)
        P = ot.sinkhorn_unbalanced(a, b, C, 0.05, pot_reg_m, method="sinkhorn_stabilized", numItermax=100_000,
                                   stopThr=1e-14)
        assert isinstance(res.value, torch.Tensor) and res.value.dtype == torch.float64
        assert np.abs(res.plan().numpy() - P).max() <= 1e-7 * P.max()
    with pytest.raises(ValueError, match="reg_m"):
        tu.sinkhorn_from_cost(C, a, b, eps=0.05, reg_m=[1.0, 2.0, 3.0])
