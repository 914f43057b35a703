"""Every backend satisfies the written Backend protocol (torchuot/backends/base.py); what one cannot
do raises a clear NotImplementedError instead of an AttributeError."""

from __future__ import annotations

import pytest
import torch

import torchuot as tu
from torchuot.backends.base import Backend
from torchuot.penalties import KL

F64 = torch.float64


def _points(n=30, m=40):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, 2, generator=g, dtype=F64), torch.rand(m, 2, generator=g, dtype=F64)


@pytest.mark.parametrize("backend", ["tensorized", "chunked", "multiscale"])
@pytest.mark.parametrize("reference", ["product", "counting"])
def test_point_backends_satisfy_the_protocol(backend, reference):
    x, y = _points()
    prob = tu.UOTProblem.from_points(x, y, blur=0.1, reach=0.5, backend=backend, reference=reference)
    assert isinstance(prob.ops, Backend)
    res = tu.solve(prob)
    assert res.backend == backend and res.ops is prob.ops
    members = [m for m in dir(Backend) if not m.startswith("_")]
    missing = [m for m in members if not hasattr(prob.ops, m)]
    assert not missing


def test_cost_matrix_backend_satisfies_the_protocol():
    x, y = _points()
    prob = tu.UOTProblem.from_cost(torch.cdist(x, y) ** 2, eps=0.05, rho=0.5)
    assert isinstance(prob.ops, Backend) and prob.ops.x is None


def test_grid_backend_satisfies_the_protocol_and_refuses_plans_clearly():
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 25, generator=g, dtype=F64), torch.rand(2, 25, generator=g, dtype=F64)
    prob = tu.UOTProblem.on_grid(a, b, (5, 5), cost="hk", kappa=2.0, eps=0.1, penalty=KL(1.0))
    assert isinstance(prob.ops, Backend)
    res = tu.solve(prob)
    assert res.value.shape == (2,) and res.marginal(1).shape == (2, 25)
    for call in (res.plan, res.transport_cost, lambda: res.apply(torch.ones(2, 25, 1, dtype=F64)),
                 lambda: res.sample_pairs(3)):
        with pytest.raises(NotImplementedError, match="GridPairsBackend has no .*images_to_measures"):
            call()
