"""Issue 17: "converged" means correct; infeasible, non-finite and conflicting inputs are refused.

One test (or one parametrised case) per library-side behaviour of the issue. The two momentum
stalls are in ``test_momentum.py``; the data readers, checkpoints and CLI cases belong to the
training tests (``training/test_training_errors.py``).
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
import torch

import torchuot as tu
from torchuot.couplings import PlanSampler
from torchuot.flow import ConditionalFlowMatcher, odeint
from torchuot.result import ConvergenceError, ConvergenceWarning


def _points(n=20, m=24, d=2, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, d, generator=g, dtype=dtype), torch.rand(m, d, generator=g, dtype=dtype)


def _consistent(res):
    """``converged`` implies both first-order residuals within ``marginal_tol`` (recomputed)."""
    ra, rb = res.marginal_residuals()
    ok = bool((ra <= res.marginal_tol).all() & (rb <= res.marginal_tol).all())
    return (not res.converged) or ok


# ---------------------------------------------------------------------------- 1. the flag
@pytest.mark.parametrize("blur", [3e-4, 1e-4])
def test_float32_stall_is_not_reported_as_converged(blur):
    # Issue: converged=True after 18 / 20 iterations with marginal L1 errors 0.30 / 0.33.
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(300, 3, generator=g), torch.rand(300, 3, generator=g)
    with pytest.warns(ConvergenceWarning, match="did not converge"):
        res = tu.sinkhorn(x, y, blur=blur)
    ea, eb = res.marginal_errors()
    assert not res.converged
    assert max(float(ea), float(eb)) > res.marginal_tol  # the achieved error is in the result
    assert _consistent(res)
    with pytest.raises(ConvergenceError, match="did not converge"):
        tu.sinkhorn(x, y, blur=blur, on_nonconvergence="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tu.sinkhorn(x, y, blur=blur, on_nonconvergence="ignore")


def test_converged_result_has_small_residuals_and_tolerance():
    x, y = _points()
    res = tu.sinkhorn(x, y, reach=0.5)
    assert res.converged and res.marginal_tol == pytest.approx(1e-3)
    ra, rb = res.marginal_residuals()
    assert float(ra) <= 1e-6 and float(rb) <= 1e-6
    assert torch.equal(res.residuals[0], ra) or float(abs(res.residuals[0] - ra)) < 1e-12


def test_reverse_kl_float32_extreme_masses_is_flagged():
    # Issue: value -3.7% off the float64 one with converged=True.
    x, y = _points(30, 40, dtype=torch.float32)
    a, b = torch.full((30,), 1e-6 / 30), torch.full((40,), 1e6 / 40)
    r64 = tu.sinkhorn(x.double(), y.double(), a.double(), b.double(), reach=0.5, penalty="reverse_kl")
    assert r64.converged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        r32 = tu.sinkhorn(x, y, a, b, reach=0.5, penalty="reverse_kl")
    assert _consistent(r32)
    if r32.converged:
        assert float(r32.value) == pytest.approx(float(r64.value), rel=1e-3)


def test_unknown_policy_is_refused():
    x, y = _points()
    with pytest.raises(ValueError, match="on_nonconvergence"):
        tu.sinkhorn(x, y, on_nonconvergence="maybe")


# ---------------------------------------------------------------------------- huge costs
@pytest.mark.parametrize("big,dtype", [(1e20, torch.float64), (1e20, torch.float32), (1e35, torch.float64)])
def test_huge_costs_give_pots_antidiagonal_plan(big, dtype):
    # Issue: value 0, plan mass 2.3e-5, converged=True (balanced potentials drifting to +-2.6e11).
    C = torch.tensor([[big, 1.0], [1.0, big]], dtype=dtype)
    res = tu.sinkhorn_from_cost(C, eps=0.1)
    P_pot = ot.sinkhorn(np.ones(2) / 2, np.ones(2) / 2, C.double().numpy(), 0.1, method="sinkhorn_log")
    assert res.converged
    assert np.abs(res.plan().double().numpy() - P_pot).max() <= 1e-5
    # <pi, C> = 1 plus eps KL(pi | a x b) = 0.1 log 2: 1.0693.
    assert float(res.value) == pytest.approx(1 + 0.1 * math.log(2), rel=1e-5)


def test_far_outlier_pair_is_never_a_wrong_converged_result():
    # Issue: one matching pair 1e6 away (float64) gave converged=True with a marginal error of 0.27.
    x, y = _points()
    x[0] = 1e6
    y[0] = 1e6 + 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        res = tu.sinkhorn(x, y)
    assert _consistent(res)
    if res.converged:
        assert max(float(e) for e in res.marginal_errors()) <= 1e-3


# ---------------------------------------------------------------------------- 2. infeasible
def test_hk_cost_balanced_far_target_is_infeasible():
    x, y = _points()
    with pytest.raises(ValueError, match="infeasible.*source side.*point 0.*kappa"):
        tu.sinkhorn(x, y + 10, cost="hk")


@pytest.mark.parametrize("backend", ["tensorized", "chunked"])
def test_callable_with_an_infinite_row_is_infeasible_when_balanced(backend):
    x, y = _points()

    def cost(x, y):
        C = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
        C[:, 3, :] = math.inf
        return C

    with pytest.raises(ValueError, match="infeasible.*source side.*point 3"):
        tu.sinkhorn(x, y, cost=cost, backend=backend)
    res = tu.sinkhorn(x, y, cost=cost, backend=backend, reach=0.5)  # unbalanced: fine
    assert torch.isfinite(res.value) and res.converged


def test_sinkhorn_divergence_loss_refuses_balanced_hk():
    with pytest.raises(ValueError, match="HKLoss"):
        tu.SinkhornDivergence(cost="hk")
    x, y = _points()
    val = tu.HKLoss(kappa=1.0)(x, y + 10)  # the HK entry point: unbalanced, finite
    assert torch.isfinite(val) and float(val) > 0


# ---------------------------------------------------------------------------- 3. non-finite costs
@pytest.mark.parametrize("bad", [math.nan, -math.inf])
@pytest.mark.parametrize("backend", ["tensorized", "chunked"])
def test_non_finite_callable_costs_raise_alike(bad, backend):
    # Issue: NaN on the tensorized backend, silently +inf (value 0.50) on the chunked one.
    x, y = _points()

    def cost(x, y):
        C = ((x[:, :, None] - y[:, None]) ** 2).sum(-1)
        C[:, 0, 0] = bad
        return C

    with pytest.raises(ValueError, match="NaN or -inf"):
        tu.sinkhorn(x, y, cost=cost, backend=backend, reach=1.0)


@pytest.mark.parametrize("scale,dtype", [(1e20, torch.float32), (1e160, torch.float64)])
@pytest.mark.parametrize("backend", ["tensorized", "chunked"])
def test_overflowing_squared_distances_raise(scale, dtype, backend):
    # Issue: "Maximum allowed size exceeded" (float32) and OverflowError (float64).
    x, y = _points(dtype=dtype)
    with pytest.raises(ValueError, match="overflow.*rescale"):
        tu.sinkhorn(x * scale, y, backend=backend)


# ---------------------------------------------------------------------------- 4. arguments
def test_sinkhorn_divergence_with_one_iteration_is_finite():
    x, y = _points()
    with pytest.warns(ConvergenceWarning):
        val = tu.sinkhorn_divergence(x, y, max_iter=1)
    assert torch.isfinite(val)


@pytest.mark.parametrize("bad", [True, 0, 2.5])
def test_max_iter_must_be_a_positive_int(bad):
    x, y = _points()
    with pytest.raises((TypeError, ValueError), match="max_iter"):
        tu.sinkhorn_divergence(x, y, max_iter=bad)
    with pytest.raises((TypeError, ValueError), match="max_iter"):
        tu.SinkhornDivergence(max_iter=bad)


def test_odeint_refuses_a_velocity_of_another_shape():
    x0 = torch.zeros(5, 2)
    with pytest.raises(ValueError, match="velocity field.*\\(5, 2\\).*\\(5, 1\\)"):
        odeint(lambda t, x: x[:, :1], x0)


@pytest.mark.parametrize("kw,match", [
    (dict(method="ot", tol=-1), "tol"),
    (dict(scaling=2.0), "scaling"),
    (dict(method="uot", reach=0.0), "reach"),
    (dict(max_iter=True), "max_iter"),
    (dict(on_nonconvergence="never"), "on_nonconvergence"),
])
def test_plan_sampler_validates(kw, match):
    with pytest.raises((TypeError, ValueError), match=match):
        PlanSampler(**kw)


def test_plan_sampler_without_replacement_names_the_limit():
    x0, x1 = _points(3, 2, dtype=torch.float32)
    with pytest.raises(ValueError, match="replace=False.*k=10.*6 pairs"):
        PlanSampler("ot", replace=False, eps=1.0).sample(x0, x1, k=10)


@pytest.mark.parametrize("kw", [dict(blur=0.5, eps=0.01), dict(reach=0.5, rho=4.0)])
def test_losses_refuse_conflicting_conventions(kw):
    with pytest.raises(ValueError, match="not both|one convention"):
        tu.UnbalancedSinkhornLoss(**kw)
    with pytest.raises(ValueError, match="not both|one convention"):
        tu.SinkhornDivergence(**kw)


def test_loss_defaults_unchanged():
    x, y = _points()
    assert float(tu.UnbalancedSinkhornLoss()(x, y)) == pytest.approx(
        float(tu.sinkhorn(x, y, blur=0.05, reach=1.0).value), rel=1e-12)
    assert float(tu.SinkhornDivergence()(x, y)) == pytest.approx(
        float(tu.sinkhorn_divergence(x, y, blur=0.05)), rel=1e-12)


def test_apply_with_a_vector_of_the_wrong_length():
    x, y = _points()
    res = tu.sinkhorn(x, y)
    with pytest.raises(ValueError, match="apply\\(v, axis=1\\).*M = 24"):
        res.apply(torch.ones(20, dtype=torch.float64))
    assert res.apply(torch.ones(24, dtype=torch.float64)).shape == (20,)


def test_empty_batch_is_refused():
    with pytest.raises(ValueError, match="empty batch"):
        tu.sinkhorn(torch.rand(0, 5, 2), torch.rand(0, 6, 2))


def test_flow_matcher_refuses_integer_tensors():
    x0 = torch.randint(0, 255, (4, 3))
    with pytest.raises(TypeError, match="floating-point.*float\\(\\)"):
        ConditionalFlowMatcher().sample_location_and_conditional_flow(x0, x0.clone())
