"""Flow-matching pieces: interpolant, target velocity, loss, and the ODE sampler on closed forms."""

from __future__ import annotations

import pytest
import torch

from torchuot.flow import cfm_loss, interpolate, odeint, sample_time, target_velocity

A = torch.tensor([[-0.5, 1.0], [-1.0, -0.3]], dtype=torch.float64)


def linear_field(t, x):
    """v(t, x) = A x: exact flow x(t) = expm(t A) x0."""
    return x @ A.T


def _x0(n=5):
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _exact(x0, t=1.0):
    return x0 @ torch.linalg.matrix_exp(t * A).T


@pytest.mark.parametrize(
    "method,steps,tol", [("euler", 20000, 5e-5), ("midpoint", 1000, 1e-6), ("dopri5", 10, 1e-7)]
)
def test_odeint_integrates_a_linear_field(method, steps, tol):
    x0 = _x0()
    out = odeint(linear_field, x0, steps=steps, method=method, rtol=1e-10, atol=1e-10)
    err = float((out - _exact(x0)).abs().max())
    assert err < tol, err


def test_odeint_orders_of_convergence():
    """Halving the step divides Euler's error by ~2 and midpoint's by ~4."""
    x0 = _x0()
    for method, order in (("euler", 1), ("midpoint", 2)):
        e1 = float((odeint(linear_field, x0, steps=50, method=method) - _exact(x0)).abs().max())
        e2 = float((odeint(linear_field, x0, steps=100, method=method) - _exact(x0)).abs().max())
        assert e1 / e2 == pytest.approx(2**order, rel=0.1), (method, e1 / e2)


def test_odeint_exact_cases_and_trajectory():
    x0 = _x0()
    c = torch.tensor([1.0, -2.0], dtype=torch.float64)
    # A constant field: one Euler step is exact.
    torch.testing.assert_close(odeint(lambda t, x: c.expand_as(x), x0, steps=1), x0 + c)
    # v = 2t: midpoint is exact for fields linear in t (x(1) = x0 + 1).
    out = odeint(lambda t, x: 2 * t[:, None].expand_as(x), x0, steps=3, method="midpoint")
    torch.testing.assert_close(out, x0 + 1)
    # Trajectories: (steps + 1, B, D), starting at x0, along the exact flow.
    for method in ("euler", "midpoint", "dopri5"):
        traj = odeint(linear_field, x0, steps=8, method=method, return_trajectory=True)
        assert traj.shape == (9, 5, 2)
        torch.testing.assert_close(traj[0], x0)
    traj = odeint(linear_field, x0, steps=4, method="dopri5", return_trajectory=True, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(traj[2], _exact(x0, 0.5), atol=1e-8, rtol=0)


def test_straight_paths_are_followed_exactly():
    """The conditional field of a single pair, v = x1 - x0, transports x0 to x1 by Euler."""
    g = torch.Generator().manual_seed(1)
    x0, x1 = torch.randn(4, 1, 6, 6, generator=g), torch.randn(4, 1, 6, 6, generator=g)
    u = target_velocity(x0, x1)
    torch.testing.assert_close(odeint(lambda t, x: u, x0, steps=7), x1, atol=1e-5, rtol=0)


def test_interpolant_and_loss():
    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(6, 3, generator=g), torch.randn(6, 3, generator=g)
    torch.testing.assert_close(interpolate(x0, x1, torch.zeros(6)), x0)
    torch.testing.assert_close(interpolate(x0, x1, torch.ones(6)), x1)
    t = torch.full((6,), 0.25)
    torch.testing.assert_close(interpolate(x0, x1, t), 0.75 * x0 + 0.25 * x1)
    # The noise has standard deviation sigma.
    big0 = torch.zeros(20000, 2)
    noisy = interpolate(big0, big0, torch.full((20000,), 0.5), sigma=0.3, generator=g)
    assert float(noisy.std()) == pytest.approx(0.3, rel=0.02)
    # The loss vanishes for the exact field of a translation x1 = x0 + c, and not otherwise.
    c = torch.tensor([0.5, -1.0, 2.0])
    assert float(cfm_loss(lambda t, x: c.expand_as(x), x0, x0 + c, generator=g)) == pytest.approx(
        0.0, abs=1e-12
    )
    assert float(cfm_loss(lambda t, x: torch.zeros_like(x), x0, x0 + c, generator=g)) == pytest.approx(
        float(c.pow(2).mean()), rel=1e-6
    )
    ts = sample_time(1000, generator=g)
    assert ts.shape == (1000,) and 0 <= float(ts.min()) and float(ts.max()) < 1


def test_loss_is_differentiable():
    net = torch.nn.Linear(3, 2)
    g = torch.Generator().manual_seed(3)
    x0, x1 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    loss = cfm_loss(lambda t, x: net(torch.cat([x, t[:, None]], 1)), x0, x1, sigma=0.1, generator=g)
    loss.backward()
    assert net.weight.grad is not None and bool(torch.isfinite(net.weight.grad).all())


def test_bad_inputs():
    x = torch.randn(4, 2)
    with pytest.raises(ValueError, match="same shape"):
        interpolate(x, torch.randn(3, 2), torch.rand(4))
    with pytest.raises(ValueError, match="t must have shape"):
        interpolate(x, x, torch.rand(3))
    with pytest.raises(ValueError, match="sigma must be non-negative"):
        interpolate(x, x, torch.rand(4), sigma=-1.0)
    with pytest.raises(ValueError, match="velocity field returned shape"):
        cfm_loss(lambda t, x: x[:, :1], x, x)
    with pytest.raises(ValueError, match="method must be one of"):
        odeint(linear_field, x, method="rk4")
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        odeint(linear_field, x, steps=0)
    with pytest.raises(ValueError, match="n must be a positive integer"):
        sample_time(0)


# ---------------------------------------------------------------- ConditionalFlowMatcher
def test_flow_matcher_keeps_given_pairs_and_matches_the_interpolant():
    from torchuot.flow import ConditionalFlowMatcher

    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(16, 3, generator=g), torch.randn(16, 3, generator=g)
    cfm = ConditionalFlowMatcher(sigma=0.1)
    t, xt, ut, z, i, j = cfm.sample_location_and_conditional_flow(
        x0, x1, generator=g, return_noise=True, return_pairs=True)
    tt = t[:, None]
    assert torch.allclose(xt, (1 - tt) * x0 + tt * x1 + 0.1 * z)
    assert torch.equal(ut, x1 - x0)
    assert torch.equal(i, torch.arange(16)) and torch.equal(j, torch.arange(16))


@pytest.mark.parametrize("coupling", ["ot", "uot", "exact"])
def test_flow_matcher_couplings_recover_a_permutation(coupling):
    from torchuot.flow import ConditionalFlowMatcher

    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(12, 5, generator=g) * 5  # well separated points
    perm = torch.randperm(12, generator=g)
    x1 = x0[perm] + 0.01
    cfm = ConditionalFlowMatcher(coupling=coupling)
    t, xt, ut, i, j = cfm.sample_location_and_conditional_flow(x0, x1, generator=g, return_pairs=True)
    # x1[j] is x0[i] moved by 0.01: every drawn pair is the matching one.
    assert torch.equal(perm[j], i)
    assert torch.allclose(ut, x1[j] - x0[i])
    assert torch.allclose(xt, (1 - t[:, None]) * x0[i] + t[:, None] * x1[j])


def test_flow_matcher_loss_and_settings():
    from torchuot.couplings import PlanSampler
    from torchuot.flow import ConditionalFlowMatcher

    g = torch.Generator().manual_seed(2)
    x0, x1 = torch.randn(8, 2, generator=g), torch.randn(8, 2, generator=g)
    v = lambda t, x: x * t[:, None]  # noqa: E731
    cfm = ConditionalFlowMatcher(sigma=0.05, coupling="uot", tau_a=0.8)
    assert "tau_a=0.8" in repr(cfm)
    loss = cfm.loss(v, x0, x1, generator=torch.Generator().manual_seed(3))
    t, xt, ut = cfm.sample_location_and_conditional_flow(x0, x1, generator=torch.Generator().manual_seed(3))
    assert float(loss) == pytest.approx(float((v(t, xt) - ut).pow(2).mean()), rel=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        ConditionalFlowMatcher(sigma=-1.0)
    with pytest.raises(ValueError, match="keeps the given pairs"):
        ConditionalFlowMatcher(eps=0.1)
    with pytest.raises(ValueError, match="PlanSampler"):
        ConditionalFlowMatcher(coupling=PlanSampler("ot"), eps=0.1)
    with pytest.raises(ValueError, match="method must be one of"):
        ConditionalFlowMatcher(coupling="sinkhorn")
    with pytest.raises(ValueError, match=r"t must have shape \(8,\)"):
        ConditionalFlowMatcher().sample_location_and_conditional_flow(x0, x1, t=torch.rand(3))
