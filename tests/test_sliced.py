"""Sliced OT: POT references with shared projections, bounds, closed forms, errors."""

from __future__ import annotations

import math

import ot
import pytest
import torch

import torchuot
from torchuot.sliced import (
    MaxSlicedWassersteinLoss,
    MinSWGGLoss,
    SlicedWassersteinLoss,
    SubspaceSlicedLoss,
    UnbalancedSlicedLoss,
    max_sliced_wasserstein,
    min_swgg,
    random_subspaces,
    sample_directions,
    sliced_wasserstein,
    subspace_sliced_ot,
    unbalanced_sliced_ot,
    wasserstein_1d,
)

DT = torch.float64


def _clouds(gen, N=40, M=55, D=3):
    x = torch.randn(N, D, generator=gen, dtype=DT)
    y = torch.randn(M, D, generator=gen, dtype=DT) * 0.7 + 0.8
    a = torch.rand(N, generator=gen, dtype=DT) + 0.1
    b = torch.rand(M, generator=gen, dtype=DT) + 0.1
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("case", ["equal_uniform", "unequal_uniform", "weighted"])
def test_sliced_matches_pot_with_same_projections(gen, p, case):
    x, y, a, b = _clouds(gen, M=40 if case == "equal_uniform" else 55)
    if case != "weighted":
        a = b = None
    theta = sample_directions(64, 3, generator=gen, dtype=DT)
    ours = sliced_wasserstein(x, y, a, b, p=p, directions=theta)
    ref = ot.sliced_wasserstein_distance(x, y, a, b, p=p, projections=theta.T)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(sliced_wasserstein(x, y, a, b, p=p, directions=theta, root=False),
                               ref**p, rtol=1e-12, atol=1e-14)


def test_wasserstein_1d_matches_pot_batched(gen):
    u = torch.randn(7, 30, generator=gen, dtype=DT)
    v = torch.randn(7, 20, generator=gen, dtype=DT) + 1
    a = torch.rand(30, generator=gen, dtype=DT)
    b = torch.rand(20, generator=gen, dtype=DT)
    a, b = a / a.sum(), b / b.sum()
    for p in (1.0, 1.5, 2.0):
        ours = wasserstein_1d(u, v, a, b, p=p)
        ref = ot.wasserstein_1d(u.T, v.T, a, b, p=p)
        torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)


def test_chunking_batching_and_gradcheck(gen):
    x, y, a, b = _clouds(gen, N=12, M=9, D=2)
    theta = sample_directions(10, 2, generator=gen, dtype=DT)
    full = sliced_wasserstein(x, y, a, b, directions=theta)
    torch.testing.assert_close(sliced_wasserstein(x, y, a, b, directions=theta, chunk_size=3), full)
    xb, yb = torch.stack([x, 2 * x]), torch.stack([y, y])
    batched = sliced_wasserstein(xb, yb, directions=theta)
    torch.testing.assert_close(batched[1], sliced_wasserstein(2 * x, y, directions=theta))
    xg = x.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: sliced_wasserstein(t, y, a, b, directions=theta), (xg,))


def test_sobol_directions_unit_deterministic_and_more_accurate_on_average():
    d1 = sample_directions(128, 3, method="sobol", generator=torch.Generator().manual_seed(3), dtype=DT)
    d2 = sample_directions(128, 3, method="sobol", generator=torch.Generator().manual_seed(3), dtype=DT)
    torch.testing.assert_close(d1, d2)
    torch.testing.assert_close(d1.norm(dim=1), torch.ones(128, dtype=DT))
    # E_theta (theta . v)^2 = |v|^2 / D exactly: SW_2^2 between a cloud and its translate.
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(0), dtype=DT)
    v = torch.tensor([1.0, -2.0, 0.5], dtype=DT)
    exact = float(v @ v) / 3
    err = {m: [] for m in ("mc", "sobol")}
    for seed in range(20):
        for m in err:
            g = torch.Generator().manual_seed(seed)
            val = sliced_wasserstein(x, x + v, n_projections=64, method=m, generator=g, root=False)
            err[m].append(abs(float(val) - exact))
    assert sum(err["sobol"]) < 0.5 * sum(err["mc"])


def test_max_sliced_bounds(gen):
    x, y, _, _ = _clouds(gen, N=30, M=30)
    w2 = float(ot.emd2([], [], ot.dist(x, y)))
    res = max_sliced_wasserstein(x, y, generator=gen, root=False)
    theta = sample_directions(2000, 3, generator=gen, dtype=DT)
    per_slice = sliced_wasserstein(x, y, directions=theta, root=False)
    random_max = float(ot.max_sliced_wasserstein_distance(x, y, projections=theta.T)) ** 2
    assert float(per_slice) <= float(res.value) <= w2
    assert float(res.value) >= random_max * (1 - 1e-12)  # ascent beats 2000 random directions
    torch.testing.assert_close(res.direction.norm(), torch.tensor(1.0, dtype=DT))
    # The value is the W_2^2 of the returned direction's projections.
    u, v = x @ res.direction, y @ res.direction
    torch.testing.assert_close(res.value, wasserstein_1d(u, v))


def test_min_swgg_upper_bounds_exact_w2(gen):
    for trial in range(3):
        x = torch.randn(25, 3, generator=gen, dtype=DT)
        y = torch.randn(25, 3, generator=gen, dtype=DT) * 0.5 + trial
        w2 = float(ot.emd2([], [], ot.dist(x, y)))
        plain = min_swgg(x, y, n_directions=64, generator=torch.Generator().manual_seed(trial))
        refined = min_swgg(x, y, n_directions=64, n_refine=20, generator=torch.Generator().manual_seed(trial))
        assert w2 <= float(refined.value) <= float(plain.value)
        P = refined.plan()
        torch.testing.assert_close(P.sum(1), torch.full((25,), 1 / 25, dtype=DT))
        torch.testing.assert_close(P.sum(0), torch.full((25,), 1 / 25, dtype=DT))
        torch.testing.assert_close(refined.value, (P * ot.dist(x, y)).sum())


def test_min_swgg_is_exact_in_1d_and_batched(gen):
    x = torch.randn(2, 30, 1, generator=gen, dtype=DT)
    y = torch.randn(2, 30, 1, generator=gen, dtype=DT) + 1
    res = min_swgg(x, y, n_directions=4, generator=gen)
    for i in range(2):
        torch.testing.assert_close(res.value[i], ot.emd2([], [], ot.dist(x[i], y[i])), rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="same number of points"):
        min_swgg(x[0], y[0, :10])


def test_subspace_full_dimension_equals_sinkhorn_and_mean_le_max(gen):
    x, y, _, _ = _clouds(gen, N=20, M=25, D=3)
    frames = random_subspaces(3, 3, 3, generator=gen, dtype=DT)  # rotations: OT is invariant
    val = subspace_sliced_ot(x, y, subspaces=frames, blur=0.3)
    ref = torchuot.sinkhorn(x, y, blur=0.3).value
    torch.testing.assert_close(val, ref, rtol=1e-6, atol=0)
    mean = subspace_sliced_ot(x, y, k=2, n_subspaces=4, generator=torch.Generator().manual_seed(1), blur=0.3)
    mx = subspace_sliced_ot(x, y, k=2, n_subspaces=4, generator=torch.Generator().manual_seed(1), blur=0.3,
                            reduce="max")
    assert float(mean) <= float(mx)
    with pytest.raises(ValueError, match="reduce"):
        subspace_sliced_ot(x, y, reduce="median")
    with pytest.raises(ValueError, match="k must"):
        random_subspaces(2, 3, 4)


def test_unbalanced_sliced_per_slice_is_the_1d_solver(gen):
    x = torch.randn(15, 2, generator=gen, dtype=DT)
    y = torch.randn(10, 2, generator=gen, dtype=DT) + 1
    a = torch.full((15,), 0.1, dtype=DT)  # mass 1.5 vs 1: unbalanced
    theta = sample_directions(4, 2, generator=gen, dtype=DT)
    kw = dict(blur=0.2, reach=0.7)
    val = unbalanced_sliced_ot(x, y, a, None, directions=theta, **kw)
    ref = torch.stack([torchuot.sinkhorn((x @ t)[:, None], (y @ t)[:, None], a, None, **kw).value
                       for t in theta])
    torch.testing.assert_close(val, ref.mean(), rtol=1e-6, atol=0)
    deb = unbalanced_sliced_ot(x, y, a, None, directions=theta, debias=True, penalty="reverse_kl", **kw)
    assert math.isfinite(float(deb))


def test_losses_forms_and_reduction(gen):
    x = torch.randn(2, 20, 3, generator=gen, dtype=DT, requires_grad=True)
    y = torch.randn(2, 20, 3, generator=gen, dtype=DT)
    theta = sample_directions(16, 3, generator=gen, dtype=DT)
    loss = SlicedWassersteinLoss(directions=theta, reduction="none")
    v = loss(x, y)
    assert v.shape == (2,)
    w = torch.full((2, 20), 1 / 20, dtype=DT)
    torch.testing.assert_close(SlicedWassersteinLoss(directions=theta)(w, x, w, y), v.mean())
    v.sum().backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())
    assert MaxSlicedWassersteinLoss(n_iter=5, generator=gen, reduction="sum")(x, y).dim() == 0
    assert UnbalancedSlicedLoss(n_projections=4, blur=0.5, generator=gen)(x[0], y[0]).dim() == 0
    sub = SubspaceSlicedLoss(k=2, n_subspaces=2, blur=0.5, generator=gen, reduction="none")(x, y)
    assert sub.shape == (2,) and bool((sub.detach() >= 0).all())
    swgg = MinSWGGLoss(n_directions=8, generator=gen, reduction="none")(x, y)
    assert swgg.shape == (2,)
    for i in range(2):
        assert float(swgg[i].detach()) >= float(ot.emd2([], [], ot.dist(x[i].detach(), y[i])))
    with pytest.raises(TypeError, match="loss"):
        loss(x)
    with pytest.raises(ValueError, match="reduction"):
        SlicedWassersteinLoss(reduction="avg")


def test_errors(gen):
    x, y, a, b = _clouds(gen)
    with pytest.raises(ValueError, match="p must"):
        sliced_wasserstein(x, y, p=0.5)
    with pytest.raises(ValueError, match="directions must"):
        sliced_wasserstein(x, y, directions=torch.ones(5, 2, dtype=DT))
    with pytest.raises(ValueError, match="equal mass"):
        sliced_wasserstein(x, y, a, 2 * b)
    with pytest.raises(ValueError, match="method"):
        sample_directions(4, 3, method="halton")
    with pytest.raises(ValueError, match="positive integer"):
        sample_directions(0, 3)
    with pytest.raises(ValueError, match="feature dimensions"):
        sliced_wasserstein(x, y[:, :2])
    with pytest.raises(ValueError, match="NaN"):
        sliced_wasserstein(x * float("nan"), y)


def test_identical_inputs_give_zero_and_finite_gradients(gen):
    x = torch.randn(10, 2, generator=gen, dtype=DT, requires_grad=True)
    val = sliced_wasserstein(x, x.detach().clone(), n_projections=8, generator=gen)
    val.backward()
    assert float(val.detach()) == 0.0 and bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_min_swgg_zero_gradient_step_keeps_the_direction(dtype):
    """Issue 14: a tie between antithetic costs gives a zero gradient; in float32 the old
    ``clamp_min(1e-300)`` was ``clamp_min(0)`` and the step was 0 / 0 = NaN (refinement stopped).

    With a small ``sigma`` the lifted permutation is locally constant, so most steps see an exact
    tie: a zero-gradient step must leave the direction where it is and the refinement must go on,
    in float32 along the same path as in float64. On these three problems the old float32 step
    stopped at the random-search value (14.11, 4.10, 6.37) where float64 reaches (12.19, 2.83, 4.73).
    """
    kw = dict(n_directions=1, n_refine=40, n_perturb=2, sigma=0.01, lr=0.1)
    for seed in (0, 1, 9):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(8, 3, generator=g, dtype=torch.float64)
        y = torch.randn(8, 3, generator=g, dtype=torch.float64) + 1

        def run(dt: torch.dtype, n_refine: int, x=x, y=y):
            return min_swgg(x.to(dt), y.to(dt), generator=torch.Generator().manual_seed(1),
                            **{**kw, "n_refine": n_refine})

        start, refined, ref = run(dtype, 0), run(dtype, kw["n_refine"]), run(torch.float64, kw["n_refine"])
        assert bool(torch.isfinite(refined.direction).all()) and bool(torch.isfinite(refined.value))
        torch.testing.assert_close(refined.direction.norm(), torch.ones((), dtype=dtype))
        assert float(refined.value) < float(start.value) - 0.1  # the refinement did not stop
        assert torch.equal(refined.perm, ref.perm)
        assert float(refined.value) == pytest.approx(float(ref.value), rel=1e-5)

