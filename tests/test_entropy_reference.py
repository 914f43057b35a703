"""The entropy's reference measure (``reference="product"`` KL(pi | a x b) vs ``"counting"`` KL(pi | 1)).

``"counting"`` reproduces OTT-JAX's unbalanced Sinkhorn (plan, potentials, ``reg_ot_cost``) and POT's
``reg_type="entropy"``; ``"product"`` (the default) POT's ``reg_type="kl"``. With non-uniform weights
and an unbalanced side the two references give different plans; balanced problems share theirs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import torchuot as tu

TIGHT = dict(tol=1e-13, max_iter=100_000)
F64 = torch.float64


def _problem(n: int = 7, m: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=F64)
    y = torch.rand(m, 2, generator=g, dtype=F64) * 0.8 + 0.2
    a = torch.rand(n, generator=g, dtype=F64) + 0.1
    b = 2 * torch.rand(m, generator=g, dtype=F64) + 0.1
    C = 0.5 * torch.cdist(x, y) ** 2
    return x, y, a, b, C


def _rho(eps: float, tau: float) -> float | None:
    return None if tau == 1.0 else eps * tau / (1 - tau)


def _ott_solve(C, a, b, eps, tau_a, tau_b):
    """OTT-JAX's Sinkhorn in float64 -> (plan, f, g, reg_ot_cost) as NumPy."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("ott")
    from ott.geometry import geometry
    from ott.problems.linear import linear_problem
    from ott.solvers.linear import sinkhorn as ott_sinkhorn

    with jax.enable_x64(True):
        jnp = jax.numpy
        geom = geometry.Geometry(cost_matrix=jnp.asarray(C.numpy()), epsilon=eps)
        prob = linear_problem.LinearProblem(geom, a=jnp.asarray(a.numpy()), b=jnp.asarray(b.numpy()),
                                            tau_a=tau_a, tau_b=tau_b)
        out = ott_sinkhorn.Sinkhorn(threshold=1e-13, max_iterations=100_000)(prob)
        return (np.asarray(out.matrix), np.asarray(out.f), np.asarray(out.g), float(out.reg_ot_cost))


@pytest.mark.parametrize("tau_a,tau_b", [(0.8, 0.6), (0.7, 1.0), (1.0, 1.0)])
def test_counting_reference_reproduces_ott(tau_a, tau_b):
    _, _, a, b, C = _problem()
    eps = 0.1
    if tau_a == tau_b == 1.0:
        a, b = a / a.sum(), b / b.sum()
    P, f, g, cost = _ott_solve(C, a, b, eps, tau_a, tau_b)
    res = tu.sinkhorn_from_cost(C, a, b, eps=eps, rho=(_rho(eps, tau_a), _rho(eps, tau_b)),
                                reference="counting", **TIGHT)
    assert res.converged
    plan = res.plan().numpy()
    assert np.abs(plan - P).max() <= 1e-12 * P.max()
    assert float(res.value_ott) == pytest.approx(cost, rel=1e-12, abs=1e-13)
    if tau_a < 1.0 and tau_b < 1.0:  # the potentials are unique (no translation freedom)
        assert np.abs(res.f.numpy() - f).max() <= 1e-11
        assert np.abs(res.g.numpy() - g).max() <= 1e-11
    else:  # pi = exp((f + g - C) / eps) with OTT's convention, whatever the translation
        rebuilt = torch.exp((res.f[:, None] + res.g[None, :] - C) / eps).numpy()
        assert np.abs(rebuilt - P).max() <= 1e-12 * P.max()


def test_product_reference_differs_from_ott_when_unbalanced():
    """The reason for the option: the default's plan is not OTT's on the same parameters."""
    _, _, a, b, C = _problem()
    P, *_ = _ott_solve(C, a, b, 0.1, 0.8, 0.6)
    res = tu.sinkhorn_from_cost(C, a, b, eps=0.1, rho=(_rho(0.1, 0.8), _rho(0.1, 0.6)), **TIGHT)
    assert np.abs(res.plan().numpy() - P).max() > 0.05 * P.max()


@pytest.mark.parametrize("reg_type,reference", [("kl", "product"), ("entropy", "counting")])
@pytest.mark.parametrize("reg_m", [(0.3, 0.7), (0.5, float("inf"))])
def test_pot_reg_types(reg_type, reference, reg_m):
    ot = pytest.importorskip("ot")
    _, _, a, b, C = _problem(6, 8, seed=1)
    P = ot.unbalanced.sinkhorn_unbalanced(a.numpy(), b.numpy(), C.numpy(), 0.1, reg_m, reg_type=reg_type,
                                          numItermax=100_000, stopThr=1e-15)
    res = tu.sinkhorn_from_cost(C, a, b, eps=0.1, reg_m=list(reg_m), reference=reference, **TIGHT)
    assert np.abs(res.plan().numpy() - P).max() <= 1e-11 * P.max()


def test_balanced_problems_share_their_plan():
    _, _, a, b, C = _problem()
    a, b = a / a.sum(), b / b.sum()
    p1 = tu.sinkhorn_from_cost(C, a, b, eps=0.05, **TIGHT).plan()
    p2 = tu.sinkhorn_from_cost(C, a, b, eps=0.05, reference="counting", **TIGHT).plan()
    assert torch.allclose(p1, p2, rtol=1e-10, atol=1e-14)


def test_points_backends_agree_with_the_cost_matrix():
    x, y, a, b, C = _problem(40, 50, seed=2)
    kw = dict(eps=0.02, rho=(0.3, 0.5), reference="counting", **TIGHT)
    ref = tu.sinkhorn_from_cost(C, a, b, **kw)
    for backend in ("tensorized", "chunked", "multiscale"):
        res = tu.sinkhorn(x, y, a, b, backend=backend, **kw)
        assert res.backend == backend
        assert float(res.value) == pytest.approx(float(ref.value), rel=1e-9)
        assert torch.allclose(res.marginal(1), ref.marginal(1), rtol=1e-8, atol=1e-14)
        v = torch.randn(50, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
        assert torch.allclose(res.apply(v), ref.plan() @ v, rtol=1e-8, atol=1e-12)
        assert float(res.transport_cost()) == pytest.approx(float((ref.plan() * C).sum()), rel=1e-9)
    # the problem object and solve() say the same
    prob = tu.UOTProblem.from_points(x, y, a, b, eps=0.02, rho=(0.3, 0.5), reference="counting")
    assert prob.reference == "counting"
    res = tu.solve(prob, tu.SinkhornOptions(**TIGHT))
    assert float(res.value) == pytest.approx(float(ref.value), rel=1e-10)


def test_gradcheck_points_and_weights():
    x, y, a, b, _ = _problem(5, 6, seed=3)
    x.requires_grad_(True)
    a.requires_grad_(True)
    b.requires_grad_(True)

    def value(x, a, b):
        return tu.sinkhorn(x, y, a, b, eps=0.1, rho=(0.4, 0.6), reference="counting", **TIGHT).value

    assert torch.autograd.gradcheck(value, (x, a, b), atol=1e-7, rtol=1e-5)


def test_self_problem_keeps_the_reference():
    x, y, a, b, _ = _problem(12, 15, seed=4)
    prob = tu.UOTProblem.from_points(x, y, a, b, eps=0.05, rho=0.3, reference="counting")
    self_a = prob.self_problem("a")
    assert self_a.reference == "counting"
    sym = tu.solve(self_a, tu.SinkhornOptions(**TIGHT))
    full = tu.sinkhorn(x, x, a, a, eps=0.05, rho=0.3, reference="counting", **TIGHT)
    assert float(sym.value) == pytest.approx(float(full.value), rel=1e-10)


def test_zero_weights_carry_no_mass():
    _, _, a, b, C = _problem()
    a = a.clone()
    a[2] = 0.0
    P, *_ = _ott_solve(C, a, b, 0.1, 0.8, 0.6)
    res = tu.sinkhorn_from_cost(C, a, b, eps=0.1, rho=(_rho(0.1, 0.8), _rho(0.1, 0.6)),
                                reference="counting", **TIGHT)
    plan = res.plan()
    assert bool(torch.isfinite(plan).all()) and float(plan[2].abs().max()) == 0.0
    assert np.abs(plan.numpy() - P).max() <= 1e-12 * P.max()


def test_warm_start_from_a_counting_result():
    x, y, a, b, _ = _problem(30, 30, seed=5)
    kw = dict(eps=0.01, rho=0.2, reference="counting", tol=1e-10, max_iter=10_000)
    cold = tu.sinkhorn(x, y, a, b, **kw)
    warm = tu.sinkhorn(x, y, a, b, f_init=cold.f, g_init=cold.g, **kw)
    assert warm.n_iters < cold.n_iters // 2
    assert float(warm.value) == pytest.approx(float(cold.value), rel=1e-9)


def test_loss_takes_the_reference_and_ott_convention():
    x, y, a, b, C = _problem()
    loss = tu.UnbalancedSinkhornLoss(eps=0.1, rho=(0.4, 0.15), reference="counting", convention="ott",
                                     **TIGHT)
    want = tu.sinkhorn(x, y, a, b, eps=0.1, rho=(0.4, 0.15), reference="counting", **TIGHT).value_ott
    assert float(loss(a, x, b, y)) == pytest.approx(float(want), rel=1e-12)


def test_bad_reference_and_ott_value_errors():
    x, y, a, b, C = _problem()
    with pytest.raises(ValueError, match="reference must be 'product'.*'counting'"):
        tu.sinkhorn(x, y, reference="kl")
    with pytest.raises(ValueError, match="reference must be"):
        tu.sinkhorn_from_cost(C, eps=0.1, reference=None)
    with pytest.raises(ValueError, match="reference must be"):
        tu.UnbalancedSinkhornLoss(reference="entropy")
    with pytest.raises(ValueError, match="reference='counting'"):
        _ = tu.sinkhorn_from_cost(C, a, b, eps=0.1, rho=0.3).value_ott
    with pytest.raises(ValueError, match="reference='counting'"):
        tu.UnbalancedSinkhornLoss(convention="ott")


# ------------------------------------------------------------------ OTT-JAX's own test set-ups, ported
def _ott_fixture(n: int = 17, m: int = 29, dim: int = 4):
    """OTT's ``TestSinkhorn`` set-up: uniform points in [0, 1]^4, random weights with one zero per
    side, normalised; OTT's ``SqEuclidean`` is ``|x - y|^2`` (our ``|x - y|^2 / 2`` at ``sqrt(2) x``)."""
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(n, dim, generator=g, dtype=F64), torch.rand(m, dim, generator=g, dtype=F64)
    a, b = torch.rand(n, generator=g, dtype=F64), torch.rand(m, generator=g, dtype=F64)
    a[0], b[3] = 0.0, 0.0
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("tau_a", [1.0, 0.93])
@pytest.mark.parametrize("tau_b", [1.0, 0.91])
def test_ott_sinkhorn_test_lse_matches_setup(tau_a, tau_b):
    """OTT ``sinkhorn_test.py::test_lse_matches`` problems (tau in {1, 0.93} x {1, 0.91}, zero weights):
    our ``reference="counting"`` solve gives OTT's plan, ``reg_ot_cost``, ``primal_cost`` (<pi, C>) and
    transported mass."""
    x, y, a, b = _ott_fixture()
    eps = 0.1
    C = torch.cdist(x, y) ** 2
    P, _, _, reg_ot_cost = _ott_solve(C, a, b, eps, tau_a, tau_b)
    r2 = 2.0 ** 0.5
    res = tu.sinkhorn(r2 * x, r2 * y, a, b, eps=eps, rho=(_rho(eps, tau_a), _rho(eps, tau_b)),
                      reference="counting", **TIGHT)
    assert res.converged
    plan = res.plan().numpy()
    assert np.abs(plan - P).max() <= 1e-11 * P.max()
    assert float(res.value_ott) == pytest.approx(reg_ot_cost, rel=1e-11)
    assert float(res.transport_cost()) == pytest.approx(float((P * C.numpy()).sum()), rel=1e-11)
    assert float(res.transported_mass) == pytest.approx(float(P.sum()), rel=1e-12)
    assert float(plan[0].sum()) == 0.0 and float(plan[:, 3].sum()) == 0.0


def test_ott_sinkhorn_divergence_test_setup_balanced():
    """OTT ``sinkhorn_divergence_test.py::test_euclidean_point_cloud`` (13 vs 17 points in 4-D,
    eps 0.05, balanced): OTT's balanced ``reg_ot_cost`` equals our value under either reference, so
    ``sinkdiv`` equals our ``sinkhorn_divergence``."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("ott")
    from ott.tools import sinkhorn_divergence as ott_sd

    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(13, 4, generator=g, dtype=F64), torch.rand(17, 4, generator=g, dtype=F64)
    a, b = torch.rand(13, generator=g, dtype=F64), torch.rand(17, generator=g, dtype=F64)
    a, b = a / a.sum(), b / b.sum()
    with jax.enable_x64(True):
        jnp = jax.numpy
        div, _ = ott_sd.sinkdiv(jnp.asarray(x.numpy()), jnp.asarray(y.numpy()), epsilon=0.05,
                                a=jnp.asarray(a.numpy()), b=jnp.asarray(b.numpy()),
                                solve_kwargs={"threshold": 1e-12, "max_iterations": 100_000})
        div = float(div)
    r2 = 2.0 ** 0.5
    ours = tu.sinkhorn_divergence(r2 * x, r2 * y, a, b, eps=0.05, **TIGHT)
    assert float(ours) == pytest.approx(div, rel=1e-9)


def test_multiscale_coarse_start_under_the_counting_reference():
    """The wrapper passes multiscale's coarse start through (as a warm start); the answer is the
    counting problem's, to the multiscale backend's default accuracy."""
    g = torch.Generator().manual_seed(11)
    x, y = torch.rand(600, 2, generator=g), torch.rand(700, 2, generator=g) * 0.8 + 0.15
    a, b = torch.rand(600, generator=g) + 0.2, 2 * torch.rand(700, generator=g) + 0.2
    kw = dict(blur=0.03, reach=0.3, reference="counting")
    prob = tu.UOTProblem.from_points(x, y, a, b, backend="multiscale", **kw)
    inner_start, coarse_iters = prob.ops.inner.coarse_start, []

    def recorded(*args, **kwargs):
        out = inner_start(*args, **kwargs)
        coarse_iters.append(out[2])
        return out

    prob.ops.inner.coarse_start = recorded
    ms = tu.solve(prob, tu.SinkhornOptions(tol=1e-5))
    assert coarse_iters and coarse_iters[0] > 0  # the annealing began on the centroids
    dense = tu.sinkhorn(x, y, a, b, backend="tensorized", tol=1e-5, **kw)
    assert ms.converged and dense.converged
    assert float(ms.value) == pytest.approx(float(dense.value), rel=1e-4)
    torch.testing.assert_close(ms.marginal(1), dense.marginal(1), rtol=1e-3, atol=1e-6)
