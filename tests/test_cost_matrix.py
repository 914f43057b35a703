"""``sinkhorn_from_cost``: the solver on a given cost matrix (POT's interface) against POT, the
point-cloud solver, gradcheck and bad input."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch

import torchuot as tu
from torchuot.costs import SquaredEuclidean

TIGHT = dict(tol=1e-12, max_iter=100_000)


def matrix_problem(n=23, m=31, seed=0, dtype=torch.float64, mass_a=1.3, mass_b=0.8):
    """A non-metric cost (random, with a low-rank structure) and weights of unequal masses."""
    g = torch.Generator().manual_seed(seed)
    U, V = torch.rand(n, 3, generator=g, dtype=dtype), torch.rand(3, m, generator=g, dtype=dtype)
    C = (U @ V + 0.5 * torch.rand(n, m, generator=g, dtype=dtype)) / 4  # costs in [0, 1.1]
    a = torch.rand(n, generator=g, dtype=dtype) + 0.2
    b = torch.rand(m, generator=g, dtype=dtype) + 0.2
    return C, a / a.sum() * mass_a, b / b.sum() * mass_b


@pytest.mark.parametrize("rho", [(0.4, 0.4), (0.2, 3.0), (0.5, math.inf)])
def test_kl_plan_and_linear_cost_match_pot(rho):
    C, a, b = matrix_problem(mass_b=1.3 if math.isinf(rho[1]) else 0.8)
    eps = 0.02
    res = tu.sinkhorn_from_cost(C, a, b, eps=eps, reg_m=rho, **TIGHT)
    assert res.converged and res.backend == "tensorized"
    Cn, an, bn = C.numpy(), a.numpy(), b.numpy()
    P = ot.unbalanced.sinkhorn_unbalanced(an, bn, Cn, eps, rho, method="sinkhorn_stabilized",
                                          numItermax=100_000, stopThr=1e-15)
    assert np.abs(res.plan().numpy() - P).max() <= 1e-6 * P.max()
    lin = ot.unbalanced.sinkhorn_unbalanced2(an, bn, Cn, eps, rho, method="sinkhorn_stabilized",
                                             numItermax=100_000, stopThr=1e-15)
    assert float(res.transport_cost()) == pytest.approx(float(lin), rel=1e-6)
    assert float(res.primal) == pytest.approx(float(res.value), rel=1e-9)


def test_balanced_matches_pot_sinkhorn():
    C, a, b = matrix_problem(mass_a=1.0, mass_b=1.0)
    eps = 0.02
    res = tu.sinkhorn_from_cost(C, a, b, eps=eps, **TIGHT)
    P = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), eps, method="sinkhorn_log", numItermax=100_000,
                    stopThr=1e-14)
    assert np.abs(res.plan().numpy() - P).max() <= 1e-6 * P.max()
    assert torch.allclose(res.marginal(1), a, rtol=1e-9) and torch.allclose(res.marginal(0), b, rtol=1e-9)


def test_equals_point_cloud_solver():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(17, 2, generator=g, dtype=torch.float64)
    y = torch.rand(13, 2, generator=g, dtype=torch.float64)
    a, b = torch.full((17,), 1.1 / 17, dtype=torch.float64), torch.full((13,), 0.7 / 13, dtype=torch.float64)
    kw = dict(eps=0.01, rho=(0.3, 0.8), **TIGHT)
    pts = tu.sinkhorn(x, y, a, b, **kw)
    mat = tu.sinkhorn_from_cost(SquaredEuclidean()(x[None], y[None])[0], a, b, **kw)
    assert float(mat.value) == pytest.approx(float(pts.value), rel=1e-10)
    assert torch.allclose(mat.f, pts.f, atol=1e-10) and torch.allclose(mat.g, pts.g, atol=1e-10)


def test_batched_equals_one_by_one():
    mats = [matrix_problem(n=9, m=11, seed=s) for s in range(3)]
    C = torch.stack([m[0] for m in mats])
    a, b = torch.stack([m[1] for m in mats]), torch.stack([m[2] for m in mats])
    res = tu.sinkhorn_from_cost(C, a, b, eps=0.05, rho=0.5, **TIGHT)
    assert res.value.shape == (3,) and res.plan().shape == (3, 9, 11)
    for k in range(3):
        one = tu.sinkhorn_from_cost(C[k], a[k], b[k], eps=0.05, rho=0.5, **TIGHT)
        assert float(res.value[k]) == pytest.approx(float(one.value), rel=1e-10)


def test_gradcheck_cost_and_weights_and_gradient_is_the_plan():
    C, a, b = matrix_problem(n=5, m=6)
    C.requires_grad_(True)
    a.requires_grad_(True)
    b.requires_grad_(True)

    def value(C, a, b):
        return tu.sinkhorn_from_cost(C, a, b, eps=0.1, rho=0.6, **TIGHT).value

    assert torch.autograd.gradcheck(value, (C, a, b), atol=1e-7, rtol=1e-5)
    res = tu.sinkhorn_from_cost(C, a, b, eps=0.1, rho=0.6, **TIGHT)
    (dC,) = torch.autograd.grad(res.value, C)
    assert torch.allclose(dC, res.plan().detach(), rtol=1e-9, atol=1e-14)


def test_infinite_costs_forbid_pairs():
    C, a, b = matrix_problem(n=8, m=10)
    C_inf = C.clone()
    C_inf[:3, :4] = math.inf  # forbidden block
    C_inf[5] = math.inf  # a source point that can go nowhere: KL destroys its mass
    res = tu.sinkhorn_from_cost(C_inf, a, b, eps=0.05, rho=0.5, **TIGHT)
    P = res.plan()
    assert bool((P[:3, :4] == 0).all()) and bool((P[5] == 0).all())
    assert torch.isfinite(res.value)
    # Same problem with a huge finite cost instead of +inf (its kernel underflows to 0).
    big = tu.sinkhorn_from_cost(torch.where(torch.isinf(C_inf), 1e4, C_inf), a, b, eps=0.05, rho=0.5, **TIGHT)
    assert float(res.value) == pytest.approx(float(big.value), rel=1e-10)


def test_float32_small_eps_is_finite_and_sampling_works():
    g = torch.Generator().manual_seed(0)
    C = torch.rand(50, 60, generator=g)
    res = tu.sinkhorn_from_cost(C, eps=1e-3, tau_a=0.9, tau_b=0.95)
    assert torch.isfinite(res.value) and bool(torch.isfinite(res.plan()).all())
    i, j = res.sample_pairs(100, generator=torch.Generator().manual_seed(0))
    assert i.shape == (100,) and j.shape == (100,) and int(i.max()) < 50 and int(j.max()) < 60
    with pytest.raises(ValueError, match="cost matrix"):
        res.barycentric_projection()


@pytest.mark.parametrize(
    "case,match",
    [
        ("nan", "NaN or -inf"),
        ("neginf", "NaN or -inf"),
        ("vector", r"shape \(N, M\)"),
        ("int", "floating-point"),
        ("a_shape", r"a must have shape \(4,\)"),
        ("b_dtype", "dtype"),
        ("b_negative", "negative"),
        ("eps", "eps must be > 0"),
        ("masses", "equal total masses"),
        ("dead_row", "cannot be transported"),
        ("empty", "empty"),
    ],
)
def test_bad_input(case, match):
    C = torch.rand(4, 5, dtype=torch.float64)
    a, b = torch.full((4,), 0.25, dtype=torch.float64), torch.full((5,), 0.2, dtype=torch.float64)
    kw: dict = dict(eps=0.1)
    if case == "nan":
        C[1, 2] = math.nan
    elif case == "neginf":
        C[0, 0] = -math.inf
    elif case == "vector":
        C = C[0]
    elif case == "int":
        C = torch.ones(4, 5, dtype=torch.int64)
    elif case == "a_shape":
        a = torch.full((3,), 1 / 3, dtype=torch.float64)
    elif case == "b_dtype":
        b = b.float()
    elif case == "b_negative":
        b[0] = -0.1
    elif case == "eps":
        kw["eps"] = 0.0
    elif case == "masses":
        b = b * 2
    elif case == "dead_row":
        C[2] = math.inf
    elif case == "empty":
        C = torch.zeros(0, 5, dtype=torch.float64)
    err = TypeError if case in ("int", "b_dtype") else ValueError
    with pytest.raises(err, match=match):
        tu.sinkhorn_from_cost(C, a, b, **kw)
