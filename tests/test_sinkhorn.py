"""The unbalanced Sinkhorn solver against POT, GeomLoss and closed forms."""

from __future__ import annotations

import math

import numpy as np
import ot
import pytest
import torch
from geomloss import SamplesLoss

import torchuot as tu
from torchuot.costs import SquaredEuclidean

TIGHT = dict(tol=1e-12, max_iter=100_000)


def problem(n=37, m=53, d=2, seed=0, dtype=torch.float64, mass_a=1.3, mass_b=0.8):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=dtype)
    y = torch.rand(m, d, generator=g, dtype=dtype) * 0.8 + 0.3
    a = torch.rand(n, generator=g, dtype=dtype) + 0.2
    b = torch.rand(m, generator=g, dtype=dtype) + 0.2
    return x, y, a / a.sum() * mass_a, b / b.sum() * mass_b


def kl(p, q):
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0) / q), 0.0)
    return float((plogp - p + q).sum())


def primal_np(P, C, a, b, eps, rho_a, rho_b):
    """<P, C> + eps KL(P | a x b) + rho_a KL(P1 | a) + rho_b KL(P^T 1 | b), in numpy."""
    out = (P * C).sum() + eps * kl(P, np.outer(a, b))
    if math.isfinite(rho_a):
        out += rho_a * kl(P.sum(1), a)
    if math.isfinite(rho_b):
        out += rho_b * kl(P.sum(0), b)
    return out


def np_cost(x, y):
    return SquaredEuclidean()(x[None], y[None])[0].numpy()


@pytest.mark.parametrize("rho_a,rho_b", [(0.49, 0.49), (0.3, 2.0)])
def test_kl_plan_and_value_match_pot(rho_a, rho_b):
    x, y, a, b = problem()
    eps = 0.01
    res = tu.sinkhorn(x, y, a, b, eps=eps, rho=(rho_a, rho_b), **TIGHT)
    assert res.converged
    C = np_cost(x, y)
    P = ot.unbalanced.sinkhorn_unbalanced(
        a.numpy(), b.numpy(), C, eps, (rho_a, rho_b), reg_type="kl",
        method="sinkhorn_stabilized", numItermax=100_000, stopThr=1e-15,
    )
    ours = res.plan().numpy()
    assert np.abs(ours - P).max() <= 1e-6 * P.max()
    ref_value = primal_np(P, C, a.numpy(), b.numpy(), eps, rho_a, rho_b)
    assert float(res.value) == pytest.approx(ref_value, rel=1e-6)
    # Duality gap is a convergence certificate.
    assert float(res.primal) == pytest.approx(float(res.value), rel=1e-9)


def test_balanced_plan_matches_pot_sinkhorn():
    x, y, a, b = problem(mass_a=1.0, mass_b=1.0)
    eps = 0.02
    res = tu.sinkhorn(x, y, a, b, eps=eps, **TIGHT)
    C = np_cost(x, y)
    P = ot.sinkhorn(a.numpy(), b.numpy(), C, eps, method="sinkhorn_log", numItermax=100_000,
                    stopThr=1e-14)
    assert np.abs(res.plan().numpy() - P).max() <= 1e-6 * P.max()
    ref_value = primal_np(P, C, a.numpy(), b.numpy(), eps, math.inf, math.inf)
    assert float(res.value) == pytest.approx(ref_value, rel=1e-6)


def test_one_balanced_side_matches_pot():
    x, y, a, b = problem(mass_a=1.0, mass_b=0.6)
    eps, rho = 0.02, 0.5
    res = tu.sinkhorn(x, y, a, b, eps=eps, rho=(rho, None), **TIGHT)
    # Source side is KL, target is a hard constraint: the column marginal equals b.
    assert torch.allclose(res.marginal(0), b, rtol=1e-9)
    C = np_cost(x, y)
    P = ot.unbalanced.sinkhorn_unbalanced(
        a.numpy(), b.numpy(), C, eps, (rho, math.inf), reg_type="kl",
        method="sinkhorn_stabilized", numItermax=100_000, stopThr=1e-15,
    )
    assert np.abs(res.plan().numpy() - P).max() <= 1e-6 * P.max()


def _tv_dual_reference(C, a, b, eps, rho):
    """Independent reference: maximise the smooth TV dual over the box |f|, |g| <= rho with
    SciPy's L-BFGS-B (Sejourne et al. 2019: phi* of TV is linear on [-rho, rho])."""
    from scipy.optimize import minimize

    n, m = C.shape

    def neg_dual(z):
        f, g = z[:n], z[n:]
        E = np.outer(a, b) * np.exp((f[:, None] + g[None, :] - C) / eps)
        val = a @ f + b @ g - eps * (E.sum() - a.sum() * b.sum())
        grad = np.concatenate([a - E.sum(1), b - E.sum(0)])
        return -val, -grad

    out = minimize(neg_dual, np.zeros(n + m), jac=True, method="L-BFGS-B",
                   bounds=[(-rho, rho)] * (n + m), options=dict(maxiter=50_000, ftol=1e-15, gtol=1e-12))
    return -out.fun


def test_tv_matches_dual_reference_and_beats_pot_lbfgs():
    """TV marginals: our value equals an independent solve of the TV dual, and no primal point
    found by POT (L-BFGS-B on the non-smooth primal) is below it (weak duality)."""
    x, y, a, b = problem(n=12, m=15, mass_a=1.2, mass_b=0.7)
    eps, rho = 0.05, 0.3
    res = tu.sinkhorn(x, y, a, b, eps=eps, rho=rho, penalty="tv", **TIGHT)
    assert res.converged
    assert float(res.primal) == pytest.approx(float(res.value), rel=1e-9)
    C = np_cost(x, y)
    an, bn = a.numpy(), b.numpy()
    assert float(res.value) == pytest.approx(_tv_dual_reference(C, an, bn, eps, rho), rel=1e-7)
    G = ot.unbalanced.lbfgsb_unbalanced(an, bn, C, eps, rho, c=np.outer(an, bn), reg_div="kl",
                                        regm_div="tv", numItermax=20_000, stopThr=1e-15)
    pot_obj = (G * C).sum() + eps * kl(G, np.outer(an, bn)) + rho * (
        np.abs(G.sum(1) - an).sum() + np.abs(G.sum(0) - bn).sum()
    )
    assert float(res.value) <= pot_obj + 1e-9
    assert float(res.value) == pytest.approx(pot_obj, rel=5e-2)
    # TV potentials are bounded by rho (the clamp of the update).
    assert float(res.f.abs().max()) <= rho + 1e-12 and float(res.g.abs().max()) <= rho + 1e-12


def test_parameter_conventions_agree():
    """GeomLoss (blur, reach), OTT (eps, tau), POT (reg_m) and rho describe one problem."""
    x, y, a, b = problem()
    blur, reach = 0.1, 0.7
    eps, rho = blur**2, reach**2
    tau = rho / (rho + eps)
    values = [
        tu.sinkhorn(x, y, a, b, blur=blur, reach=reach, **TIGHT).value,
        tu.sinkhorn(x, y, a, b, eps=eps, rho=rho, **TIGHT).value,
        tu.sinkhorn(x, y, a, b, eps=eps, reg_m=rho, **TIGHT).value,
        tu.sinkhorn(x, y, a, b, eps=eps, tau_a=tau, tau_b=tau, **TIGHT).value,
    ]
    for v in values[1:]:
        assert float(v) == pytest.approx(float(values[0]), rel=1e-10)
    # tau = 1 on a side is balanced.
    r1 = tu.sinkhorn(x, y, a, b, eps=eps, tau_a=tau, tau_b=1.0, **TIGHT)
    r2 = tu.sinkhorn(x, y, a, b, eps=eps, rho=(rho, None), **TIGHT)
    assert float(r1.value) == pytest.approx(float(r2.value), rel=1e-10)


def test_value_conventions_against_geomloss():
    """Our primal value and GeomLoss's debias=False value differ by eps((ma+mb)/2 - ma mb)."""
    x, y, a, b = problem(mass_a=37 / 40, mass_b=53 / 40)
    blur, reach = 0.1, 0.7
    res = tu.sinkhorn(x, y, a, b, blur=blur, reach=reach, **TIGHT)
    ref = SamplesLoss("sinkhorn", p=2, blur=blur, reach=reach, debias=False, scaling=0.999)(a, x, b, y)
    assert float(res.value_geomloss) == pytest.approx(float(ref), rel=1e-4)
    eps = blur**2
    ma, mb = float(a.sum()), float(b.sum())
    mass_pi = float(res.transported_mass)
    # The gap between the two conventions: the entropic mass term plus GeomLoss's rho + eps/2.
    gap = float(res.value - res.value_geomloss)
    assert gap == pytest.approx(eps * (ma * mb - mass_pi) + eps * (mass_pi - (ma + mb) / 2), rel=1e-9)


def test_reach_to_infinity_is_balanced():
    x, y, a, b = problem(mass_a=1.0, mass_b=1.0)
    bal = tu.sinkhorn(x, y, a, b, blur=0.1, **TIGHT).value
    unb = tu.sinkhorn(x, y, a, b, blur=0.1, reach=1e3, **TIGHT).value
    assert float(unb) == pytest.approx(float(bal), rel=1e-4)


def test_batched_equals_unbatched():
    probs = [problem(seed=s, n=20, m=25) for s in range(3)]
    xb = torch.stack([p[0] for p in probs])
    yb = torch.stack([p[1] for p in probs])
    ab = torch.stack([p[2] for p in probs])
    bb = torch.stack([p[3] for p in probs])
    res = tu.sinkhorn(xb, yb, ab, bb, blur=0.1, reach=0.5, **TIGHT)
    assert res.value.shape == (3,) and res.f.shape == (3, 20) and res.plan().shape == (3, 20, 25)
    for k, (x, y, a, b) in enumerate(probs):
        single = tu.sinkhorn(x, y, a, b, blur=0.1, reach=0.5, **TIGHT)
        assert float(single.value) == pytest.approx(float(res.value[k]), rel=1e-9)
        assert single.f.shape == (20,)


def test_result_operations_are_consistent():
    x, y, a, b = problem()
    res = tu.sinkhorn(x, y, a, b, blur=0.1, reach=0.5, **TIGHT)
    P = res.plan()
    torch.testing.assert_close(res.marginal(1), P.sum(1))
    torch.testing.assert_close(res.marginal(0), P.sum(0))
    torch.testing.assert_close(res.transported_mass, P.sum())
    v = torch.randn(53, 3, dtype=torch.float64)
    torch.testing.assert_close(res.apply(v, axis=1), P @ v)
    w = torch.randn(37, dtype=torch.float64)
    torch.testing.assert_close(res.apply(w, axis=0), P.T @ w)
    T = res.barycentric_projection()
    torch.testing.assert_close(T, (P @ y) / P.sum(1, keepdim=True))
    C = SquaredEuclidean()(x[None], y[None])[0]
    torch.testing.assert_close(res.transport_cost(), (P * C).sum())
    ea, eb = res.marginal_errors()
    torch.testing.assert_close(ea, (P.sum(1) - a).abs().sum())
    assert float(eb) > 0  # unbalanced: the plan does not match b
    with pytest.raises(ValueError, match="axis"):
        res.marginal(2)


def test_sample_pairs_follow_the_plan():
    x, y, a, b = problem(n=6, m=5)
    res = tu.sinkhorn(x, y, a, b, blur=0.3, reach=0.5, **TIGHT)
    k = 200_000
    i, j = res.sample_pairs(k, generator=torch.Generator().manual_seed(1))
    assert i.shape == (k,) and j.shape == (k,)
    counts = torch.zeros(6, 5, dtype=torch.float64)
    counts.index_put_((i, j), torch.ones(k, dtype=torch.float64), accumulate=True)
    expected = res.plan() / res.plan().sum() * k
    # Pearson chi-square with 29 degrees of freedom: the 0.999 quantile is ~58.3.
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 58.3


def test_gradcheck_points_and_weights():
    x, y, a, b = problem(n=7, m=9)
    x.requires_grad_(True)
    a.requires_grad_(True)
    b.requires_grad_(True)

    def value(x, a, b):
        return tu.sinkhorn(x, y, a, b, blur=0.3, reach=0.6, **TIGHT).value

    assert torch.autograd.gradcheck(value, (x, a, b), atol=1e-7, rtol=1e-5)

    def tv_value(x, a, b):
        return tu.sinkhorn(x, y, a, b, blur=0.3, reach=0.6, penalty="tv", **TIGHT).value

    assert torch.autograd.gradcheck(tv_value, (x, a, b), atol=1e-7, rtol=1e-5)


def test_unroll_matches_envelope_at_convergence():
    x, y, a, b = problem(n=10, m=12)
    x.requires_grad_(True)
    g1, = torch.autograd.grad(tu.sinkhorn(x, y, a, b, blur=0.3, reach=0.6, **TIGHT).value, x)
    r = tu.sinkhorn(x, y, a, b, blur=0.3, reach=0.6, tol=1e-12, max_iter=3000, grad="unroll")
    g2, = torch.autograd.grad(r.value, x)
    torch.testing.assert_close(g1, g2, rtol=1e-6, atol=1e-10)


def test_float32_small_blur_is_finite():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(300, 2, generator=g, requires_grad=True)
    y = torch.rand(400, 2, generator=g)
    res = tu.sinkhorn(x, y, blur=1e-3, reach=0.5, max_iter=400)
    assert torch.isfinite(res.value).all() and torch.isfinite(res.f).all()
    assert torch.isfinite(res.g).all()
    (gx,) = torch.autograd.grad(res.value, x)
    assert torch.isfinite(gx).all()
    assert torch.isfinite(res.marginal(1)).all()
    div = tu.sinkhorn_divergence(x, y, blur=1e-3, reach=0.5, max_iter=400)
    assert torch.isfinite(div)
    # Float32 arithmetic tracks float64 along the same iterations (plain iterations: the
    # adaptive momentum takes discrete decisions that may differ between dtypes).
    r32 = tu.sinkhorn(x.detach(), y, blur=1e-3, reach=0.5, max_iter=400, momentum=False).value
    r64 = tu.sinkhorn(x.detach().double(), y.double(), blur=1e-3, reach=0.5, max_iter=400,
                      momentum=False).value
    assert float(r32) == pytest.approx(float(r64), rel=1e-3)


def test_momentum_reaches_the_same_fixed_point_faster():
    x, y, a, b = problem(mass_a=1.0, mass_b=1.0)
    plain = tu.sinkhorn(x, y, a, b, blur=0.02, momentum=False, tol=1e-10, max_iter=20_000)
    fast = tu.sinkhorn(x, y, a, b, blur=0.02, tol=1e-10, max_iter=20_000)
    assert plain.converged and fast.converged
    assert fast.n_iters < plain.n_iters
    assert float(fast.value) == pytest.approx(float(plain.value), rel=1e-9)


def test_convergence_flag_and_iteration_count():
    x, y, a, b = problem()
    short = tu.sinkhorn(x, y, a, b, blur=0.05, reach=0.5, max_iter=3)
    assert not short.converged and short.n_iters == 3
    full = tu.sinkhorn(x, y, a, b, blur=0.05, reach=0.5)
    assert full.converged and full.n_iters < 1000


def test_epsilon_schedule_matches_geomloss_convention():
    sched = tu.epsilon_schedule(4.0, 0.05**2, 0.5, p=2)
    assert sched[0] == 4.0 and sched[-1] == pytest.approx(0.05**2)
    ratios = np.array(sched[1:-1]) / np.array(sched[:-2])
    assert np.allclose(ratios[1:], 0.25)


def test_custom_callable_cost_matches_builtin():
    x, y, a, b = problem()

    def half_sq(x, y):
        return ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1) / 2

    r1 = tu.sinkhorn(x, y, a, b, cost=half_sq, blur=0.1, reach=0.5, **TIGHT)
    r2 = tu.sinkhorn(x, y, a, b, blur=0.1, reach=0.5, **TIGHT)
    assert float(r1.value) == pytest.approx(float(r2.value), rel=1e-10)


def test_power_cost_p1_matches_pot():
    x, y, a, b = problem(n=15, m=18, mass_a=1.0, mass_b=1.0)
    res = tu.sinkhorn(x, y, a, b, p=1, eps=0.05, **TIGHT)
    C = torch.cdist(x, y).numpy()
    P = ot.sinkhorn(a.numpy(), b.numpy(), C, 0.05, method="sinkhorn_log", numItermax=100_000,
                    stopThr=1e-14)
    assert np.abs(res.plan().numpy() - P).max() <= 1e-6 * P.max()


@pytest.mark.parametrize("reach", [None, 0.5])
def test_convergence_checks_every_k_iterations_keep_the_fixed_point(reach):
    # The loop reads its stopping rule every `check_every` iterations: any block length gives
    # the same potentials (to the tolerance), a converged flag, and never exceeds max_iter.
    from torchuot.backends import TensorizedBackend
    from torchuot.sinkhorn import sinkhorn_loop

    x, y, a, b = problem(mass_a=1.0, mass_b=1.0)
    res = tu.sinkhorn(x, y, a, b, blur=0.05, reach=reach, tol=1e-12, max_iter=5000)
    ops = TensorizedBackend(x[None], y[None], a[None], b[None], SquaredEuclidean())
    eps_list = tu.epsilon_schedule(2.0, res.eps, 0.5)
    for k in (1, 3, 10):
        f, g, n, conv = sinkhorn_loop(
            ops.softmin_x, ops.softmin_y, res.penalty_a, res.penalty_b, eps_list,
            torch.zeros(1, 53, dtype=x.dtype), (ops.a, ops.b), max_iter=5000, tol=1e-12, check_every=k,
        )
        assert conv and n < 5000
        # Plans, not potentials: balanced potentials are defined up to (f + c, g - c).
        P = ops.plan(res.eps, f, g)[0]
        assert (P - res.plan()).abs().max() <= 1e-9 * P.max()
        # A cap that falls inside a block is honoured exactly.
        *_, n_cap, conv_cap = sinkhorn_loop(
            ops.softmin_x, ops.softmin_y, res.penalty_a, res.penalty_b, eps_list,
            torch.zeros(1, 53, dtype=x.dtype), (ops.a, ops.b), max_iter=len(eps_list) + 6, tol=1e-12,
            check_every=k,
        )
        assert n_cap == len(eps_list) + 6 and not conv_cap


@pytest.mark.parametrize("zero", [False, True])
def test_kl_shift_moment_fn_matches_shift_moment(zero):
    # The translation step's precomputed moment (log-weights once) equals the per-call one,
    # with positive weights and with zero weights (where it falls back to the weighted sum).
    from torchuot.penalties import KL

    g = torch.Generator().manual_seed(1)
    a = torch.rand(3, 20, generator=g, dtype=torch.float64) + 0.1
    if zero:
        a[:, ::3] = 0.0
    f = torch.randn(3, 20, generator=g, dtype=torch.float64)
    pen = KL(0.05)
    L, r = pen.shift_moment(f, a)
    ref = torch.logsumexp(torch.log(a) - f / 0.05, dim=-1)
    assert r == pytest.approx(1 / 0.05)
    assert torch.allclose(pen.shift_moment_fn(a)(f), ref, rtol=1e-13, atol=0)
    assert torch.allclose(L, ref, rtol=1e-13, atol=0)


@pytest.mark.parametrize("n,blur,reach", [(500, 0.1, 2.0), (100, 0.05, 0.5), (300, 0.02, 2.0)])
def test_float32_converges_like_float64(n, blur, reach):
    """Weakly unbalanced float32 problems used to hover just above the stopping threshold until
    max_iter: the translation step's shift, computed in float32, carried a rounding error of
    ~rho * 1e-7 that the damped iteration undid only at rate eps / rho. The moments are now
    accumulated in float64."""
    g = torch.Generator().manual_seed(n)
    x, y = torch.rand(n, 2, generator=g), torch.rand(n + 100, 2, generator=g)
    r32 = tu.sinkhorn(x, y, blur=blur, reach=reach)
    r64 = tu.sinkhorn(x.double(), y.double(), blur=blur, reach=reach)
    assert r64.converged and r32.converged
    assert r32.n_iters <= 2 * r64.n_iters + 20
    assert float(r32.value) == pytest.approx(float(r64.value), rel=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tv_with_unequal_masses_and_large_rho_converges(dtype):
    """TV sides have a linear dual term: the closed-form translation step (to the edge of the
    |f| <= rho box) replaces thousands of iterations of potentials creeping towards +-rho. The
    primal-dual gap certifies the value (weak duality: both bound the optimum)."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(200, 3, generator=g, dtype=dtype)
    y = torch.rand(220, 3, generator=g, dtype=dtype) * 0.8 + 0.2
    a = torch.rand(200, generator=g, dtype=dtype) + 0.1
    b = torch.rand(220, generator=g, dtype=dtype) + 0.1
    a, b = a / a.sum() * 1.3, b / b.sum() * 0.7
    for reach in (1.0, 5.0):  # rho = 1 and 25
        res = tu.sinkhorn(x, y, a, b, blur=0.1, reach=reach, penalty="tv")
        assert res.converged and res.n_iters < 400
        assert float(res.f.abs().max()) <= reach**2 * (1 + 1e-6)
        ref = tu.sinkhorn(*(t.double() for t in (x, y, a, b)), blur=0.1, reach=reach, penalty="tv",
                          tol=1e-10, max_iter=5000)
        assert ref.converged
        # The float64 solve is certified by its primal-dual gap (in float32 the primal, computed
        # from marginals exp((f - S) / eps) with |f| up to rho, carries ~ulp(rho) / eps error).
        assert float(ref.primal) == pytest.approx(float(ref.value), rel=1e-9)
        assert float(res.value) == pytest.approx(float(ref.value), rel=1e-5)


@pytest.mark.parametrize(
    "penalty",
    ["reverse_kl", ("kl", "tv"), ("tv", "kl"), ("reverse_kl", "balanced"), ("kl", "reverse_kl"),
     ("reverse_kl", "tv")],
    ids=lambda p: "-".join(p) if isinstance(p, tuple) else p,
)
def test_line_search_translation_converges_at_large_rho(penalty):
    """Penalty pairs without a closed-form translation step (reverse KL, KL against TV) get a
    short safeguarded Newton line search; with rho = 25 and unequal masses they used to stop at
    max_iter (up to 100% primal-dual gap). The gap certifies the value."""
    g = torch.Generator().manual_seed(7)
    x = torch.rand(120, 3, generator=g, dtype=torch.float64)
    y = torch.rand(150, 3, generator=g, dtype=torch.float64) * 0.8 + 0.2
    a = torch.rand(120, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(150, generator=g, dtype=torch.float64) + 0.1
    mass_b = 1.3 if "balanced" in penalty else 0.7
    a, b = a / a.sum() * 1.3, b / b.sum() * mass_b
    res = tu.sinkhorn(x, y, a, b, blur=0.1, reach=5.0, penalty=penalty, tol=1e-10, max_iter=2000)
    assert res.converged and res.n_iters < 300
    assert float(res.primal) == pytest.approx(float(res.value), rel=1e-8)
    for pot, pen in ((res.f, res.penalty_a), (res.g, res.penalty_b)):
        lo, hi = pen.dual_domain
        assert bool((pot > lo).all()) and bool((pot <= hi * (1 + 1e-12)).all())


@pytest.mark.parametrize("penalty", [tu.KL(0.7), tu.TV(0.7), tu.Balanced(), tu.ReverseKL(0.7)], ids=repr)
def test_dual_derivatives_match_autograd(penalty):
    """The line search's first and second derivatives of the dual term -phi*(-f), inside its domain."""
    f = torch.linspace(-0.6, 0.6, 13, dtype=torch.float64, requires_grad=True)
    d1, d2 = penalty.dual_derivatives(f.detach())
    (g1,) = torch.autograd.grad(penalty.dual(f).sum(), f, create_graph=True)
    # A linear dual term (TV, balanced) has a constant first derivative: no graph, second is 0.
    g2 = torch.autograd.grad(g1.sum(), f)[0] if g1.requires_grad else torch.zeros_like(f)
    assert torch.allclose(d1, g1.detach(), rtol=1e-12, atol=1e-14)
    assert torch.allclose(d2, g2, rtol=1e-12, atol=1e-14)
    lo, hi = penalty.dual_domain
    assert lo <= -0.6 and hi >= 0.6
