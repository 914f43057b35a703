"""Minibatch couplings: plans against POT, pair frequencies, limits, class imbalance, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from torchuot.couplings import COUPLING_METHODS, CouplingSample, PlanSampler, pairwise_cost

ot = pytest.importorskip("ot")

EPS = 0.1
TIGHT = dict(tol=1e-12, max_iter=20000)


def _clouds(n=6, m=5, d=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(m, d, generator=g, dtype=torch.float64) + 0.5
    return x, y


def _pot_plan(x, y, method, tau_a=0.9, tau_b=1.0, eps=EPS):
    """POT's plan on the mean-normalised cost, normalised to mass 1."""
    C = pairwise_cost(x, y)
    C = (C / C.mean()).numpy()
    a, b = np.full(len(x), 1 / len(x)), np.full(len(y), 1 / len(y))
    if method == "ot":
        Q = ot.sinkhorn(a, b, C, eps, numItermax=100000, stopThr=1e-14)
    elif method == "exact":
        Q = ot.emd(a, b, C)
    else:
        rho = [eps * t / (1 - t) if t < 1 else np.inf for t in (tau_a, tau_b)]
        Q = ot.unbalanced.sinkhorn_unbalanced(a, b, C, eps, tuple(rho), numItermax=100000, stopThr=1e-14)
    return torch.as_tensor(Q / Q.sum())


@pytest.mark.parametrize(
    "method,tau_a,tau_b", [("ot", 1, 1), ("uot", 0.9, 1.0), ("uot", 0.7, 0.8), ("exact", 1, 1)]
)
def test_plan_matches_pot(method, tau_a, tau_b):
    x, y = _clouds()
    s = PlanSampler(method, eps=EPS, tau_a=tau_a, tau_b=tau_b, **TIGHT)
    P = s.plan(x, y)
    Q = _pot_plan(x, y, method, tau_a, tau_b)
    torch.testing.assert_close(P, Q, atol=1e-9, rtol=1e-7)
    assert float(P.sum()) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["ot", "uot", "independent"])
def test_pair_frequencies_match_plan(method):
    """Chi-square goodness of fit of 60,000 drawn pairs against torchuot's and POT's plans."""
    x, y = _clouds(5, 4, seed=1)
    s = PlanSampler(method, eps=0.3, tau_a=0.8, tau_b=0.9, **TIGHT)
    gen = torch.Generator().manual_seed(1234)
    k = 60_000
    sample = s.sample(x, y, k=k, generator=gen)
    counts = torch.bincount(sample.i * 4 + sample.j, minlength=20).double()
    for P in (s.plan(x, y), None if method == "independent" else _pot_plan(x, y, method, 0.8, 0.9, 0.3)):
        if P is None:
            continue
        expected = (P.reshape(-1) * k).numpy()
        assert expected.min() > 5  # chi-square validity
        pval = stats.chisquare(counts.numpy(), expected).pvalue
        assert pval > 1e-3, f"pair frequencies do not follow the plan (p = {pval:.2e})"
    # The marginal weights returned with the sample are the plan's marginals.
    P = s.plan(x, y)
    torch.testing.assert_close(sample.weight_a, P.sum(1))
    torch.testing.assert_close(sample.weight_b, P.sum(0))


def test_frequency_test_detects_a_wrong_plan():
    """The chi-square check above rejects pairs drawn from a different (balanced) plan."""
    x, y = _clouds(5, 4, seed=1)
    gen = torch.Generator().manual_seed(1234)
    sample = PlanSampler("ot", eps=0.3, **TIGHT).sample(x, y, k=60_000, generator=gen)
    counts = torch.bincount(sample.i * 4 + sample.j, minlength=20).double()
    P_uot = PlanSampler("uot", eps=0.3, tau_a=0.8, tau_b=0.9, **TIGHT).plan(x, y)
    assert stats.chisquare(counts.numpy(), (P_uot.reshape(-1) * 60_000).numpy()).pvalue < 1e-6


def test_uot_tends_to_ot_as_tau_goes_to_one():
    """tau -> 1 (rho -> inf): the unbalanced plan converges to the balanced one."""
    x, y = _clouds(8, 8, seed=2)
    P_ot = PlanSampler("ot", eps=EPS, **TIGHT).plan(x, y)
    gaps = []
    for tau in (0.9, 0.99, 0.999, 0.9999):
        P = PlanSampler("uot", eps=EPS, tau_a=tau, tau_b=tau, **TIGHT).plan(x, y)
        gaps.append(float((P - P_ot).abs().sum()))
    # The L1 gap shrinks like 1 / rho = (1 - tau) / (eps tau): ~10x per decade of 1 - tau.
    assert all(g0 / g1 > 5 for g0, g1 in zip(gaps, gaps[1:], strict=False)), gaps
    assert gaps[-1] < 2e-3
    # reach -> inf (GeomLoss convention) is the same limit.
    P = PlanSampler("uot", eps=EPS, reach=1e4, **TIGHT).plan(x, y)
    torch.testing.assert_close(P, P_ot, atol=1e-6, rtol=0)
    # tau = 1 on both sides is exactly balanced.
    torch.testing.assert_close(PlanSampler("uot", eps=EPS, tau_a=1, tau_b=1, **TIGHT).plan(x, y), P_ot)


def _two_class_batches(n, gen, p_src=0.5, p_tgt=0.8, d=8, sep=3.0):
    """Two classes, separated along the first axis, source p_src / target p_tgt of class 0."""
    y0 = (torch.rand(n, generator=gen) > p_src).long()
    y1 = (torch.rand(n, generator=gen) > p_tgt).long()
    centre = torch.zeros(2, d)
    centre[1, 0] = sep
    x0 = centre[y0] + torch.randn(n, d, generator=gen)
    x1 = centre[y1] + torch.randn(n, d, generator=gen) + torch.tensor([0.0, 1.0] + [0.0] * (d - 2))
    return x0, y0, x1, y1


def test_uot_matches_more_same_class_pairs_under_imbalance():
    """Class proportions 50/50 (source) vs 80/20 (target): over 30 independent batches the
    UOT coupling pairs same-class samples more often than OT, by a one-sided sign test."""
    gen = torch.Generator().manual_seed(0)
    ot_s, uot_s = PlanSampler("ot"), PlanSampler("uot", tau_a=0.9, tau_b=1.0)
    fr_ot, fr_uot = [], []
    for _ in range(30):
        x0, y0, x1, y1 = _two_class_batches(96, gen)
        for s, out in ((ot_s, fr_ot), (uot_s, fr_uot)):
            c = s.sample(x0, x1, generator=gen)
            out.append(float((y0[c.i] == y1[c.j]).float().mean()))
    fr_ot, fr_uot = np.array(fr_ot), np.array(fr_uot)
    wins = int((fr_uot > fr_ot).sum())
    assert stats.binomtest(wins, 30, 0.5, alternative="greater").pvalue < 1e-4, (wins, fr_ot, fr_uot)
    # Balanced OT must send ~30% of the source to the other class; UOT far less.
    assert fr_ot.mean() < 0.8 and fr_uot.mean() > fr_ot.mean() + 0.05


def test_uot_reweights_the_overrepresented_source_class():
    """The UOT source marginal puts less than uniform mass on the class the target lacks."""
    gen = torch.Generator().manual_seed(3)
    x0, y0, x1, _ = _two_class_batches(256, gen)
    w = PlanSampler("uot").sample(x0, x1, generator=gen).weight_a * 256
    assert float(w[y0 == 1].mean()) < 0.9 < float(w[y0 == 0].mean())


def test_exact_and_small_eps_recover_a_permutation():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 784, generator=g)
    perm = torch.randperm(16, generator=g)
    y = x[perm] + 0.01 * torch.randn(16, 784, generator=g)
    for s in (PlanSampler("exact"), PlanSampler("ot", eps=1e-3, tol=1e-6, max_iter=2000)):
        c = s.sample(x, y, k=200, generator=g)
        assert torch.equal(perm[c.j], c.i), s


def test_images_are_flattened_and_call_returns_pairs():
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(10, 1, 28, 28, generator=g), torch.randn(12, 1, 28, 28, generator=g)
    s = PlanSampler("uot")
    a, b = s(x0, x1, generator=g)
    assert a.shape == (10, 1, 28, 28) and b.shape == (10, 1, 28, 28)
    c = s.sample(x0, x1, k=7, generator=g)
    assert isinstance(c, CouplingSample) and c.i.shape == (7,) and c.j.max() < 12
    assert c.converged and c.n_iters > 0


def test_generator_makes_sampling_reproducible():
    x, y = _clouds(20, 20)
    for method in COUPLING_METHODS:
        s = PlanSampler(method)
        c1 = s.sample(x, y, generator=torch.Generator().manual_seed(7))
        c2 = s.sample(x, y, generator=torch.Generator().manual_seed(7))
        assert torch.equal(c1.i, c2.i) and torch.equal(c1.j, c2.j), method


def test_cost_normalisation_makes_the_plan_scale_invariant():
    x, y = _clouds(7, 9)
    s = PlanSampler("uot", **TIGHT)
    torch.testing.assert_close(s.plan(x, y), s.plan(10 * x, 10 * y), atol=1e-10, rtol=1e-7)
    raw = PlanSampler("uot", normalize_cost=None, **TIGHT)
    assert float((raw.plan(x, y) - raw.plan(10 * x, 10 * y)).abs().max()) > 1e-3


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(method="sinkhorn"), "method must be one of"),
        (dict(eps=0.0), "eps must be a positive"),
        (dict(tau_a=1.5), "tau_a must lie in"),
        (dict(tau_b=0.0), "tau_b must lie in"),
        (dict(normalize_cost="median"), "normalize_cost must be"),
        (dict(on_failure="ignore"), "on_failure must be"),
        (dict(max_iter=0), "max_iter must be"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlanSampler(**kwargs)


def test_bad_inputs():
    s = PlanSampler("ot")
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same number of features"):
        s.sample(x, torch.randn(4, 5))
    with pytest.raises(TypeError, match="x0 must be a torch.Tensor"):
        s.sample(x.numpy(), x)
    with pytest.raises(ValueError, match="x1 must have shape"):
        s.sample(x, torch.randn(3))
    with pytest.raises(TypeError, match="floating-point"):
        s.sample(x, torch.ones(4, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="k must be a positive integer"):
        s.sample(x, x, k=0)
    with pytest.raises(ValueError, match="x1 contains NaN"):
        s.sample(x, torch.full((4, 3), float("nan")))
    bad = x.clone()
    bad[2, 1] = float("inf")
    with pytest.raises(ValueError, match="x0 contains NaN or inf"):
        PlanSampler("uot").plan(bad, x)


def test_underflow_is_never_silent():
    """A plan that is not finite (float32 costs ~1e36, not normalised, over eps = 1e-3 overflow)
    raises; with on_failure="warn" it falls back to independent pairs, with a warning."""
    g = torch.Generator().manual_seed(0)
    x0, x1 = torch.randn(3, 2, generator=g) * 1e18, torch.randn(4, 2, generator=g) * 1e18
    kw = dict(normalize_cost=None, eps=1e-3, max_iter=5, on_nonconvergence="ignore")
    with pytest.raises(RuntimeError, match="underflow"):
        PlanSampler("uot", **kw).plan(x0, x1)
    with pytest.raises(RuntimeError, match="underflow"):
        PlanSampler("uot", **kw).sample(x0, x1)
    warn = PlanSampler("uot", on_failure="warn", **kw)
    with pytest.warns(RuntimeWarning, match="Falling back to independent pairs"):
        P = warn.plan(x0, x1)
    torch.testing.assert_close(P, torch.full((3, 4), 1 / 12))
    with pytest.warns(RuntimeWarning, match="Falling back to independent pairs"):
        pairs = warn.sample(x0, x1, generator=g)
    torch.testing.assert_close(pairs.weight_a, torch.full((3,), 1 / 3))
    torch.testing.assert_close(pairs.weight_b, torch.full((4,), 1 / 4))
