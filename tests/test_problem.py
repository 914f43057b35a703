"""The problem layer: UOTProblem, SinkhornOptions and solve(), and the functions as adapters over them."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import torchuot as tu
from torchuot import SinkhornOptions, UOTProblem, solve
from torchuot.couplings import PlanSampler
from torchuot.images import grid_coordinates, pairwise_distances
from torchuot.penalties import KL, Balanced
from torchuot.result import ConvergenceError
from torchuot.sinkhorn import AdaptiveMomentum, solve_potentials


def clouds(B: int | None = None, N: int = 12, M: int = 9, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = () if B is None else (B,)
    x = torch.randn(*shape, N, 2, generator=g, dtype=torch.float64)
    y = torch.randn(*shape, M, 2, generator=g, dtype=torch.float64) + 0.5
    a = torch.rand(*shape, N, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(*shape, M, generator=g, dtype=torch.float64) + 0.1
    return x, y, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


def same(r1: tu.UOTResult, r2: tu.UOTResult) -> None:
    """Bitwise-equal results (same loop, same arguments)."""
    assert torch.equal(r1.f, r2.f) and torch.equal(r1.g, r2.g) and torch.equal(r1.value, r2.value)
    assert (r1.n_iters, r1.converged, r1.backend, r1.eps) == (r2.n_iters, r2.converged, r2.backend, r2.eps)


CASES = [
    dict(blur=0.3),
    dict(blur=0.2, reach=0.5),
    dict(eps=0.05, rho=(0.3, None), penalty="kl"),
    dict(blur=0.2, reach=1.0, penalty="tv"),
    dict(eps=0.04, tau_a=0.8, tau_b=0.95, cost="hk"),
]


@pytest.mark.parametrize("kw", CASES)
@pytest.mark.parametrize("B", [None, 2])
def test_solve_from_points_is_sinkhorn(kw, B):
    x, y, a, b = clouds(B)
    same(solve(UOTProblem.from_points(x, y, a, b, **kw)), tu.sinkhorn(x, y, a, b, **kw))
    opts = SinkhornOptions(scaling=0.7, tol=1e-5, max_iter=60, momentum=False, on_nonconvergence="ignore")
    loop = dict(scaling=0.7, tol=1e-5, max_iter=60, momentum=False, on_nonconvergence="ignore")
    same(solve(UOTProblem.from_points(x, y, a, b, **kw), opts), tu.sinkhorn(x, y, a, b, **loop, **kw))
    same(tu.sinkhorn(x, y, a, b, options=opts, **kw), tu.sinkhorn(x, y, a, b, **loop, **kw))


@pytest.mark.parametrize("grad", ["envelope", "implicit", "unroll"])
def test_solve_gradients_are_sinkhorns(grad):
    x, y, a, b = clouds()
    grads = []
    for use_solve in (True, False):
        xr = x.clone().requires_grad_()
        if use_solve:
            res = solve(UOTProblem.from_points(xr, y, a, b, blur=0.3, reach=0.7), SinkhornOptions(grad=grad))
        else:
            res = tu.sinkhorn(xr, y, a, b, blur=0.3, reach=0.7, grad=grad)
        (res.value + res.f.sum()).backward() if grad != "envelope" else res.value.backward()
        grads.append(xr.grad)
    assert torch.equal(grads[0], grads[1])


def test_from_cost_is_sinkhorn_from_cost():
    x, y, a, b = clouds(2)
    C = torch.cdist(x, y) ** 2 / 2
    for kw in (dict(eps=0.05), dict(eps=0.05, reg_m=[0.4, 0.9]), dict(eps=0.1, tau_a=0.7)):
        same(solve(UOTProblem.from_cost(C, a, b, **kw)), tu.sinkhorn_from_cost(C, a, b, **kw))
    prob = UOTProblem.from_cost(C[0].numpy(), a[0].numpy(), b[0].numpy(), eps=0.05)
    assert not prob.batched and prob.eps_start == pytest.approx(float(C[0].max()))


def test_problem_fields_and_frozen():
    x, y, a, b = clouds()
    prob = UOTProblem.from_points(x, y, a, b, blur=0.2, reach=0.5, diameter=3.0)
    assert prob.eps == pytest.approx(0.04) and prob.eps_start == pytest.approx(9.0) and prob.p == 2.0
    assert isinstance(prob.penalty_a, KL) and prob.penalty_a.rho == pytest.approx(0.25)
    assert torch.equal(prob.a, a.unsqueeze(0)) and not prob.batched and not prob.is_balanced
    assert isinstance(prob.ops, tu.backends.base.Backend)
    with pytest.raises(dataclasses.FrozenInstanceError):
        prob.eps = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        SinkhornOptions().tol = 1.0  # type: ignore[misc]
    with pytest.raises(ValueError, match="diameter"):
        UOTProblem.from_points(x, y, diameter=-1.0)
    with pytest.raises(ValueError, match="one convention"):
        UOTProblem.from_points(x, y, reach=0.5, rho=0.25)
    with pytest.raises(ValueError, match="not both"):
        UOTProblem.from_points(x, y, blur=0.5, eps=0.25)


def test_self_problems_give_the_divergence():
    x, y, a, b = clouds(2)
    kw = dict(blur=0.3, reach=(0.6, 0.9))
    prob = UOTProblem.from_points(x, y, a, b, **kw)
    aa, bb = prob.self_problem("a"), prob.self_problem("b")
    assert aa.symmetric and aa.penalty_a is prob.penalty_a and aa.penalty_b is prob.penalty_a
    assert bb.penalty_a is prob.penalty_b and aa.eps_start == prob.eps_start
    vals = [solve(q).value for q in (prob, aa, bb)]
    div = tu.divergence.debiased_value(*vals, prob.eps, a.sum(-1), b.sum(-1))
    torch.testing.assert_close(div, tu.sinkhorn_divergence(x, y, a, b, **kw), rtol=0, atol=0)
    with pytest.raises(ValueError, match="side"):
        prob.self_problem("c")


def test_on_grid_matches_points_on_the_grid():
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(2, 5, 6, generator=g, dtype=torch.float64) + 0.05
    w = imgs.reshape(2, -1)
    pts = grid_coordinates(5, 6, dtype=torch.float64)
    for cost, kw, pen in (("sqeuclidean", {}, KL(4.0)), ("hk", dict(kappa=3.0), KL(1.0))):
        prob = UOTProblem.on_grid(w[:1], w[1:], (5, 6), cost=cost, eps=0.25, penalty=pen, **kw)
        res = solve(prob, SinkhornOptions(tol=1e-10))
        ground = tu.HKConeCost(3.0) if cost == "hk" else None
        ref = tu.sinkhorn(pts, pts, w[0], w[1], cost=ground, eps=0.25, rho=pen.rho, tol=1e-10)
        assert prob.eps_start == pytest.approx(UOTProblem.from_points(pts, pts, cost=ground, eps=0.25,
                                                                      rho=pen.rho).eps_start)
        torch.testing.assert_close(res.value[0], ref.value, rtol=1e-7, atol=1e-9)
    with pytest.raises(ValueError, match="kappa"):
        UOTProblem.on_grid(w[:1], w[1:], (5, 6), cost="hk", eps=0.25, penalty=KL(1.0))
    with pytest.raises(TypeError, match="penalty"):
        UOTProblem.on_grid(w[:1], w[1:], (5, 6), eps=0.25, penalty="kl")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("field,value,exc", [
    ("scaling", 1.0, ValueError), ("scaling", 0, ValueError), ("scaling", True, ValueError),
    ("max_iter", 0, ValueError), ("max_iter", 2.5, TypeError), ("max_iter", True, TypeError),
    ("tol", -1e-3, ValueError), ("tol", float("nan"), ValueError),
    ("grad", "magic", ValueError), ("momentum", "yes", TypeError), ("momentum", 1, TypeError),
    ("check_every", 0, ValueError), ("on_nonconvergence", "shout", ValueError),
])
def test_options_validate_naming_the_field(field, value, exc):
    with pytest.raises(exc, match=field):
        SinkhornOptions(**{field: value})


def test_options_and_arguments_conflict_or_agree():
    x, y, a, b = clouds()
    opts = SinkhornOptions(max_iter=3, on_nonconvergence="ignore")
    assert tu.sinkhorn(x, y, reach=0.5, options=opts).n_iters <= 3  # defaults yield to options
    assert tu.sinkhorn(x, y, reach=0.5, max_iter=3, options=opts).n_iters <= 3  # agreeing is fine
    C = torch.cdist(x, y) ** 2
    calls = [
        lambda o: tu.sinkhorn(x, y, reach=0.5, max_iter=5, options=o),
        lambda o: tu.sinkhorn_from_cost(C, eps=0.1, max_iter=5, options=o),
        lambda o: tu.sinkhorn_divergence(x, y, max_iter=5, options=o),
        lambda o: tu.hk_distance(x, y, max_iter=5, options=o),
        lambda o: tu.UnbalancedSinkhornLoss(max_iter=5, options=o),
        lambda o: tu.SinkhornDivergence(max_iter=5, options=o),
        lambda o: tu.HKLoss(max_iter=5, options=o),
        lambda o: PlanSampler("uot", max_iter=5, options=o),
        lambda o: pairwise_distances(torch.rand(2, 4, 4), max_iter=5, options=o),
    ]
    for call in calls:
        with pytest.raises(ValueError, match=r"max_iter=5 conflicts with options\.max_iter=3"):
            call(opts)
    with pytest.raises(TypeError, match="options must be a torchuot.SinkhornOptions"):
        tu.sinkhorn(x, y, options={"max_iter": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="grad="):
        tu.sinkhorn(x, y, grad="unroll", options=SinkhornOptions(grad="implicit"))


def test_options_reach_every_adapter():
    """Options given alone act as the equivalent keyword arguments everywhere."""
    x, y, a, b = clouds()
    o = SinkhornOptions(scaling=0.8, max_iter=40, momentum=False, on_nonconvergence="ignore")
    kw = dict(scaling=0.8, max_iter=40, momentum=False, on_nonconvergence="ignore")
    assert torch.equal(tu.sinkhorn_divergence(x, y, a, b, reach=0.5, options=o),
                       tu.sinkhorn_divergence(x, y, a, b, reach=0.5, **kw))
    assert torch.equal(tu.hk_distance(x, y, a, b, options=o), tu.hk_distance(x, y, a, b, **kw))
    losses = ((tu.UnbalancedSinkhornLoss, dict(reach=0.5)), (tu.SinkhornDivergence, {}), (tu.HKLoss, {}))
    for Loss, lkw in losses:
        assert torch.equal(Loss(options=o, **lkw)(a, x, b, y), Loss(**kw, **lkw)(a, x, b, y))
    s1 = PlanSampler("uot", options=SinkhornOptions(max_iter=50, tol=1e-4, momentum=False))
    s2 = PlanSampler("uot", tol=1e-4, options=SinkhornOptions(max_iter=50, tol=1e-4, momentum=False))
    assert s1.tol == 1e-4 and s1.max_iter == 50
    assert torch.equal(s1.plan(x, y), s2.plan(x, y))
    # The sampler's own defaults (max_iter=200, tol=1e-3) yield to options.
    s3 = PlanSampler("uot", options=SinkhornOptions())
    assert (s3.max_iter, s3.tol) == (1000, 1e-6)
    imgs = torch.rand(3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    torch.testing.assert_close(
        pairwise_distances(imgs, kappa=2.0, blur=1.0, dtype=torch.float64,
                           options=SinkhornOptions(max_iter=100, tol=1e-4)),
        pairwise_distances(imgs, kappa=2.0, blur=1.0, dtype=torch.float64, max_iter=100), rtol=0, atol=0)


class _SlowMomentum(AdaptiveMomentum):
    """A rule with other constants: the first estimate later."""

    START = 32


def test_momentum_rule_object():
    x, y, a, b = clouds(N=20, M=15)
    prob = UOTProblem.from_points(x, y, a, b, blur=0.05, reach=1.0)
    plain = solve(prob, SinkhornOptions(momentum=False, tol=1e-8, max_iter=5000))
    default = solve(prob, SinkhornOptions(tol=1e-8, max_iter=5000))
    rule = _SlowMomentum()
    custom = solve(prob, SinkhornOptions(momentum=rule, tol=1e-8, max_iter=5000))
    assert rule.changes == [] and rule.omega == 1.0  # the template is never used up
    same(solve(prob, SinkhornOptions(momentum=AdaptiveMomentum(), tol=1e-8, max_iter=5000)), default)
    for r in (default, custom):
        assert r.converged
        torch.testing.assert_close(r.value, plain.value, rtol=1e-7, atol=1e-9)
    assert custom.n_iters != default.n_iters  # the constants are the rule's


def test_check_every_is_used():
    x, y, a, b = clouds()
    prob = UOTProblem.from_points(x, y, a, b, blur=0.1, reach=1.0)
    r1 = solve(prob, SinkhornOptions(check_every=1, momentum=False, tol=1e-8))
    r7 = solve(prob, SinkhornOptions(check_every=7, momentum=False, tol=1e-8))
    assert r1.converged and r7.converged and r1.n_iters <= r7.n_iters
    torch.testing.assert_close(r1.value, r7.value, rtol=1e-8, atol=1e-10)


def test_solve_policy_and_types():
    x, y, a, b = clouds()
    prob = UOTProblem.from_points(x, y, a, b, blur=0.05, reach=1.0)
    with pytest.raises(ConvergenceError, match="solve did not converge"):
        solve(prob, SinkhornOptions(max_iter=2, on_nonconvergence="raise"))
    with pytest.warns(tu.ConvergenceWarning, match="solve did not converge"):
        solve(prob, SinkhornOptions(max_iter=2))
    pot = solve_potentials(prob, SinkhornOptions(max_iter=2))  # no policy at this layer
    assert not pot.converged and pot.f.shape == (1, 12)
    with pytest.raises(TypeError, match="problem must be a torchuot.UOTProblem"):
        solve((x, y))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="options must be"):
        solve(prob, dict(tol=1e-3))  # type: ignore[arg-type]


def test_warm_start_through_solve():
    x, y, a, b = clouds()
    prob = UOTProblem.from_points(x, y, a, b, blur=0.1, reach=1.0)
    cold = solve(prob)
    warm = solve(prob, f_init=cold.f, g_init=cold.g)
    assert warm.n_iters < cold.n_iters
    torch.testing.assert_close(warm.value, cold.value, rtol=1e-6, atol=1e-9)
    same(warm, tu.sinkhorn(x, y, a, b, blur=0.1, reach=1.0, f_init=cold.f, g_init=cold.g))


def test_balanced_grid_problem_solves():
    w = torch.rand(1, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) + 0.1
    w = w / w.sum()
    prob = UOTProblem.on_grid(w, w.flip(-1), (4, 4), eps=0.3, penalty=Balanced())
    assert prob.is_balanced and solve(prob, SinkhornOptions(tol=1e-9)).converged
