"""The multiscale (truncated-kernel) backend against the exact backends.

Default settings (truncate = 8) must stay within 1e-4 relative of the exact value on every
problem here; the HK cone cost's truncation (beyond ``kappa * pi / 2``) is exact; gradients,
plan accessors, batching and both reduction paths (torch tiles, KeOps ranges) are checked.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

import torchuot
from torchuot import backends as B
from torchuot.backends import Multiscale, MultiscaleBackend
from torchuot.backends.base import Backend
from torchuot.costs import HKConeCost, PowerCost, SquaredEuclidean

from .common import PeakRSS

KEOPS_OK, KEOPS_WHY = B.keops_status(torch.float64)
needs_keops = pytest.mark.skipif(not KEOPS_OK, reason=f"KeOps unavailable: {KEOPS_WHY}")
TORCH = Multiscale(use_keops=False)

COSTS = {"sqeuclidean": SquaredEuclidean(), "power1.5": PowerCost(1.5), "hk": HKConeCost(0.5)}
PENALTIES = {
    "kl": dict(reach=0.5),
    "balanced": dict(),
    "tv": dict(reach=0.5, penalty="tv"),
    "reverse_kl/kl": dict(reach=0.5, penalty=("reverse_kl", "kl")),
}


def _clouds(n, m, D=3, seed=0, batch=None, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    shape = () if batch is None else (batch,)
    x = torch.rand(*shape, n, D, generator=g, dtype=dtype)
    y = torch.rand(*shape, m, D, generator=g, dtype=dtype) * 0.8 + 0.15
    a = 0.5 + torch.rand(*shape, n, generator=g, dtype=dtype)
    b = 0.5 + torch.rand(*shape, m, generator=g, dtype=dtype)
    return x, y, a / a.sum(-1, keepdim=True), b / b.sum(-1, keepdim=True)


@pytest.fixture(autouse=True)
def _one_thread():
    # Many small tiles are latency-bound: two threads on the two shared cores oversubscribe
    # (10x slower here), one thread does not.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _rel(u, v):
    return float((u - v).abs().max() / v.abs().max().clamp_min(1e-12))


def test_every_backend_conforms_to_the_protocol():
    x, y, a, b = (t[None] for t in _clouds(30, 20))
    for ops in (B.TensorizedBackend(x, y, a, b, SquaredEuclidean()),
                B.ChunkedBackend(x, y, a, b, SquaredEuclidean()),
                MultiscaleBackend(x, y, a, b, SquaredEuclidean())):
        assert isinstance(ops, Backend), type(ops)
    if KEOPS_OK:
        assert isinstance(B.KeOpsBackend(x, y, a, b, SquaredEuclidean()), Backend)


# Slowly converging pairs (TV/TV runs to max_iter, balanced HK takes ~1,000 iterations) stay
# out of the default run except on the default cost.
_SLOW_CASES = {("hk", "tv"), ("power1.5", "tv"), ("hk", "balanced")}


@pytest.mark.parametrize("cost, pen", [
    pytest.param(c, p, marks=[pytest.mark.slow] if (c, p) in _SLOW_CASES else [])
    for c in COSTS for p in PENALTIES
])
def test_matches_exact_backend(cost, pen):
    n, m = (400, 300) if pen == "tv" else (700, 500)
    x, y, a, b = _clouds(n, m, D=3 if cost != "power1.5" else 2)
    kw = dict(cost=COSTS[cost], blur=0.05, tol=1e-8, **PENALTIES[pen])
    if pen == "balanced":
        kw["max_iter"] = 3000
    ref = torchuot.sinkhorn(x, y, a, b, backend="tensorized", **kw)
    res = torchuot.sinkhorn(x, y, a, b, backend=TORCH, **kw)
    assert res.backend == "multiscale"
    assert res.ops.kept_fraction < 1.0 or cost == "power1.5"  # the truncation does prune
    assert _rel(res.value, ref.value) <= 1e-4, (float(res.value), float(ref.value))
    scale = max(float(ref.f.abs().max()), res.eps)
    df = res.f - ref.f
    if pen in ("tv", "balanced"):  # potentials defined up to a shift (f + c, g - c) here
        df = df - df.mean()
    if ref.converged:  # (TV/TV stops at max_iter on both: its iterates are not compared)
        assert float(df.abs().max()) <= 1e-3 * scale


def test_batched_inputs():
    x, y, a, b = _clouds(400, 300, D=2, batch=3)
    kw = dict(blur=0.05, reach=0.5, tol=1e-8)
    ref = torchuot.sinkhorn(x, y, a, b, backend="tensorized", **kw)
    res = torchuot.sinkhorn(x, y, a, b, backend=TORCH, **kw)
    assert res.value.shape == (3,)
    assert _rel(res.value, ref.value) <= 1e-4
    one = torchuot.sinkhorn(x[1], y[1], a[1], b[1], backend=TORCH, **kw)
    assert _rel(one.value, res.value[1]) <= 1e-6


def test_hk_truncation_beyond_the_cone_is_exact():
    # Far-apart blocks are dropped because the HK cost is +inf there, not by the eps test
    # (truncate is huge): the result equals the dense one to float64 rounding.
    x, y, a, b = _clouds(600, 500, D=2)
    cost = HKConeCost(0.1)
    kw = dict(cost=cost, eps=0.01, rho=1.0, tol=1e-10)
    ref = torchuot.sinkhorn(x, y, a, b, backend="tensorized", **kw)
    res = torchuot.sinkhorn(x, y, a, b, backend=Multiscale(truncate=1e6, use_keops=False), **kw)
    assert res.ops.kept_fraction < 0.5
    assert _rel(res.value, ref.value) <= 1e-11
    assert torch.allclose(res.f, ref.f, rtol=0, atol=1e-9)


def test_blocks_follow_the_target_eps_after_the_hk_feasibility_check():
    # Balanced HK: the feasibility check takes a soft-min at eps = 1 before the solve; the
    # blocks must still be sized for the target eps (they were 0.5 wide, every pair kept).
    x, y, a, b = _clouds(700, 500, D=3)
    cost = HKConeCost(0.5)
    res = torchuot.sinkhorn(x, y, a, b, cost=cost, blur=0.05, max_iter=8, on_nonconvergence="ignore",
                            backend=TORCH)
    fresh = MultiscaleBackend(x[None], y[None], a[None], b[None], cost, eps=res.eps)
    assert res.ops.block_scale == fresh.block_scale < 0.3
    assert res.ops.kept_fraction < 0.6


def test_divergence_and_gradients_match_exact():
    x, y, a, b = _clouds(500, 400, D=3)
    grads = {}
    for name, be in (("tensorized", "tensorized"), ("multiscale", TORCH)):
        xg, ag = x.clone().requires_grad_(), a.clone().requires_grad_()
        val = torchuot.sinkhorn_divergence(xg, y, ag, b, blur=0.05, reach=0.5, tol=1e-8, backend=be)
        gx, ga = torch.autograd.grad(val, (xg, ag))
        grads[name] = (val.detach(), gx, ga)
    (v0, gx0, ga0), (v1, gx1, ga1) = grads["tensorized"], grads["multiscale"]
    assert _rel(v1, v0) <= 1e-4
    assert _rel(gx1, gx0) <= 1e-4
    assert _rel(ga1, ga0) <= 1e-4


def test_lazy_plan_accessors_match_exact():
    x, y, a, b = _clouds(400, 300, D=2)
    kw = dict(blur=0.05, reach=0.5, tol=1e-9)
    ref = torchuot.sinkhorn(x, y, a, b, backend="tensorized", **kw)
    res = torchuot.sinkhorn(x, y, a, b, backend=TORCH, **kw)
    v = torch.randn(300, 2, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    assert _rel(res.apply(v, axis=1), ref.apply(v, axis=1)) <= 1e-4
    w = torch.randn(400, dtype=x.dtype, generator=torch.Generator().manual_seed(2))
    assert _rel(res.apply(w, axis=0), ref.apply(w, axis=0)) <= 1e-4
    for axis in (0, 1):
        assert _rel(res.marginal(axis), ref.marginal(axis)) <= 1e-4
        assert _rel(res.barycentric_projection(axis), ref.barycentric_projection(axis)) <= 1e-4
    assert _rel(res.transport_cost(), ref.transport_cost()) <= 1e-4
    i, j = res.sample_pairs(50, generator=torch.Generator().manual_seed(0))
    assert i.shape == j.shape == (50,) and int(i.max()) < 400 and int(j.max()) < 300


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_points_raise_before_clustering(bad):
    x, y, a, b = _clouds(50, 40)
    x[3, 1] = bad
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        torchuot.sinkhorn(x, y, a, b, backend="multiscale")
    with pytest.raises(ValueError, match="x contains NaN or inf"):
        MultiscaleBackend(x[None], y[None], a[None], b[None], SquaredEuclidean())


def test_bad_arguments():
    x, y, a, b = (t[None] for t in _clouds(50, 40))
    with pytest.raises(ValueError, match="D <= 3"):
        MultiscaleBackend(torch.rand(1, 5, 4), torch.rand(1, 5, 4), a[:, :5], b[:, :5], SquaredEuclidean())
    with pytest.raises(ValueError, match="truncate"):
        MultiscaleBackend(x, y, a, b, SquaredEuclidean(), truncate=-1)
    with pytest.raises(ValueError, match="built-in costs"):
        torchuot.sinkhorn(x[0], y[0], cost=lambda p, q: torch.cdist(p, q), backend="multiscale")


@needs_keops
@pytest.mark.keops
def test_keops_ranges_equal_torch_tiles():
    x, y, a, b = _clouds(800, 600, D=3)
    kw = dict(blur=0.05, reach=0.5, tol=1e-8)
    t = torchuot.sinkhorn(x, y, a, b, backend=TORCH, **kw)
    k = torchuot.sinkhorn(x, y, a, b, backend=Multiscale(use_keops=True), **kw)
    assert k.ops.use_keops and not t.ops.use_keops
    # Same kept blocks; the torch tiles add a few more exact terms (a superset).
    assert _rel(k.value, t.value) <= 1e-6
    assert float((k.f - t.f).abs().max()) <= 1e-5 * float(t.f.abs().max())


@pytest.mark.slow
@pytest.mark.parametrize("cost", ["sqeuclidean", "hk"])
def test_matches_online_at_20k(cost):
    x, y, a, b = _clouds(20_000, 20_000, D=3, dtype=torch.float32)
    kw = dict(cost=COSTS[cost], blur=0.05, reach=0.5, tol=1e-6)
    ref = torchuot.sinkhorn(x, y, a, b, backend="online" if KEOPS_OK else "chunked", **kw)
    res = torchuot.sinkhorn(x, y, a, b, backend="multiscale", **kw)
    assert _rel(res.value, ref.value) <= 1e-4


@pytest.mark.slow
def test_million_points_in_bounded_memory():
    """N = M = 1e6, D = 3: runs with a peak RSS growth under 2 GiB (no time assertion)."""
    n = int(os.environ.get("TORCHUOT_MS_TEST_N", 1_000_000))
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(n, 3, generator=g), torch.rand(n, 3, generator=g) * 0.8 + 0.15
    with PeakRSS(period=0.02) as mem:
        res = torchuot.sinkhorn(x, y, blur=0.05, reach=0.5, tol=1e-1)
        value = float(res.value)
    assert res.backend == "multiscale" and math.isfinite(value)
    assert mem.growth < 2 * 2**30, f"peak RSS grew by {mem.growth / 2**20:.0f} MiB"


def test_gradcheck_of_the_tile_soft_mins():
    # The squared-Euclidean tiles have an explicit backward: float64 gradcheck w.r.t. x, y, b, g.
    g0 = torch.Generator().manual_seed(3)
    x = torch.rand(1, 60, 2, generator=g0, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 50, 2, generator=g0, dtype=torch.float64, requires_grad=True)
    a = torch.rand(1, 60, generator=g0, dtype=torch.float64) + 0.5
    b = (torch.rand(1, 50, generator=g0, dtype=torch.float64) + 0.5).requires_grad_()
    h = (0.01 * torch.randn(1, 50, generator=g0, dtype=torch.float64)).requires_grad_()

    def fn(x, y, b, h):
        ops = MultiscaleBackend(x, y, a, b, SquaredEuclidean(), eps=0.01, block_scale=0.2)
        f0 = torch.zeros(1, 60, dtype=x.dtype)
        return ops.softmin_x_autograd(0.01, h), ops.softmin_y_autograd(0.01, f0)

    assert torch.autograd.gradcheck(fn, (x, y, b, h), atol=1e-7, rtol=1e-5)


def test_box_quadratic_bound_holds_and_is_exact_without_slopes():
    # max w1 d + w2 e - (d - e)^2/2 over |d| <= a, |e| <= b: the bound is above every sample.
    from torchuot.backends.multiscale import _box_quadratic_max

    g0 = torch.Generator().manual_seed(5)
    n = 2000
    w1 = torch.randn(n, generator=g0, dtype=torch.float64)
    w2 = torch.randn(n, generator=g0, dtype=torch.float64)
    a, b = torch.rand(n, generator=g0, dtype=torch.float64), torch.rand(n, generator=g0, dtype=torch.float64)
    bound = _box_quadratic_max(w1, w2, a + b)
    d = (2 * torch.rand(64, n, generator=g0, dtype=torch.float64) - 1) * a
    e = (2 * torch.rand(64, n, generator=g0, dtype=torch.float64) - 1) * b
    corners = torch.stack([torch.stack([sa * a, sb * b]) for sa in (-1, 1) for sb in (-1, 1)])  # (4, 2, n)
    d, e = torch.cat([d, corners[:, 0]]), torch.cat([e, corners[:, 1]])
    assert bool(((w1 * d + w2 * e - 0.5 * (d - e) ** 2) <= bound + 1e-12).all())
    # Zero slopes on a gap Delta: w1 = -Delta, w2 = Delta gives Delta^2/2 - gap^2/2.
    delta = 3 * torch.randn(n, generator=g0, dtype=torch.float64)
    gap = (delta.abs() - a - b).clamp_min(0)
    assert torch.allclose(_box_quadratic_max(-delta, delta, a + b), 0.5 * delta**2 - 0.5 * gap**2)


@pytest.mark.parametrize("cost", ["sqeuclidean", "power1.5", "hk"])
@pytest.mark.parametrize("first_pass", ["blocks", "super-blocks"])
def test_kept_blocks_contain_every_pair_above_the_threshold(cost, first_pass, monkeypatch):
    # Brute force: every block pair holding a point pair with u_i + v_j - C_ij >= -thr is kept,
    # for potentials shaped like Sinkhorn's (smooth, with a displacement) plus noise; the first
    # pass on super-blocks (large problems) keeps exactly the pairs of the dense one.
    from torchuot.backends import multiscale as ms

    if first_pass == "super-blocks":
        monkeypatch.setattr(ms, "SUPER_PASS_PAIRS", 0)
    x, y, a, b = _clouds(900, 700, D=3)
    c = COSTS[cost]
    ops = MultiscaleBackend(x[None], y[None], a[None], b[None], c, eps=0.0025)
    pair = ops._pairs[0]
    g0 = torch.Generator().manual_seed(7)
    shift = torch.tensor([0.05, -0.03, 0.02], dtype=x.dtype)
    u = (x * shift).sum(-1) + 0.3 * (x**2).sum(-1) + 0.002 * torch.randn(900, generator=g0, dtype=x.dtype)
    v = -(y * shift).sum(-1) - 0.2 * (y**2).sum(-1) + 0.002 * torch.randn(700, generator=g0, dtype=x.dtype)
    thr = 8 * 0.0025
    pair.build(c, u, v, thr, False)
    lx, ly = torch.empty(900, dtype=torch.long), torch.empty(700, dtype=torch.long)
    lx[pair.cx.perm], ly[pair.cy.perm] = pair.cx.labels, pair.cy.labels
    near = (u[:, None] + v[None] - c(x[None], y[None])[0]) >= -thr
    i, j = near.nonzero(as_tuple=True)
    assert i.numel() > 0
    assert bool(pair.keep[lx[i], ly[j]].all())
    assert pair.kept_fraction < 0.9
    if first_pass == "super-blocks":  # the same pattern as the dense first pass
        keep = pair.keep.clone()
        monkeypatch.setattr(ms, "SUPER_PASS_PAIRS", 2**62)
        pair.build(c, u, v, thr, False)
        assert torch.equal(keep, pair.keep)
