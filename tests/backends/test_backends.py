"""The three backends (tensorized, chunked, online/KeOps) agree, "auto" picks by size, lazy
plans stay lazy, and bad input is refused on every backend. What concerns one backend alone is in
``test_<backend>.py`` next to this file (helpers in ``common.py``, fixtures in ``conftest.py``).

KeOps tests are marked ``keops``; pykeops compiles on CPU here (first run ~1 min per formula
set, cached in KeOps' default folder ``~/.cache/keops*``).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import torchuot
from torchuot import backends as B
from torchuot.costs import HKConeCost, PowerCost, SquaredEuclidean

from .common import (
    KEOPS_OK,
    PeakRSS,
    callable_cost,
    check_same_result,
    make_problem,
    needs_keops,
    rel,
    solve_and_grad,
)

COSTS = {
    "sqeuclidean": SquaredEuclidean(),
    "power1": PowerCost(1.0),
    "power1.5": PowerCost(1.5),
    "hk": HKConeCost(0.6),
    "callable": callable_cost,
}
LAZY = [pytest.param("chunked", id="chunked"),
        pytest.param("online", id="online", marks=[pytest.mark.keops, needs_keops])]


# ------------------------------------------------------------------------ agreement
@pytest.mark.parametrize("backend", LAZY)
@pytest.mark.parametrize("cost_name", list(COSTS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_backends_agree(backend, cost_name, dtype, small_blocks):
    if backend == "online" and cost_name == "callable":
        pytest.skip("callable costs have no KeOps formula (tested as an error below)")
    tol = 1e-5 if dtype == torch.float64 else 1e-4
    cost = COSTS[cost_name]
    ref, ref_grads = solve_and_grad("tensorized", cost, dtype)
    res, grads = solve_and_grad(backend, cost, dtype)
    assert res.backend == backend and ref.backend == "tensorized"
    check_same_result(res, grads, ref, ref_grads, tol)


@pytest.mark.parametrize("backend", LAZY)
@pytest.mark.parametrize("cost_name", ["sqeuclidean", "hk"])
def test_backends_agree_batched_with_zero_weights(backend, cost_name, small_blocks):
    cost = COSTS[cost_name]
    ref, ref_grads = solve_and_grad("tensorized", cost, torch.float64, batch=3, zeros=True)
    res, grads = solve_and_grad(backend, cost, torch.float64, batch=3, zeros=True)
    assert res.f.shape == (3, 40)
    check_same_result(res, grads, ref, ref_grads, 1e-5)


def test_hk_empty_rows_are_infinite_on_every_backend(small_blocks):
    # A point farther than kappa*pi/2 from every target: its row of the kernel is empty.
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0]], dtype=torch.float64)
    y = torch.tensor([[0.05, 0.0], [0.0, 0.1]], dtype=torch.float64)
    names = ["tensorized", "chunked"] + (["online"] if KEOPS_OK else [])
    ones = torch.ones(1, 3, dtype=x.dtype), torch.ones(1, 2, dtype=x.dtype)
    outs = {}
    for n in names:
        ops = B.resolve_backend(n, x[None], y[None], *ones, HKConeCost(0.5))
        outs[n] = ops.softmin_x(0.01, torch.zeros(1, 2, dtype=x.dtype))
    for n, s in outs.items():
        assert math.isinf(float(s[0, 2])) and float(s[0, 2]) > 0, n
        assert rel(s, outs["tensorized"]) < 1e-12, n


@pytest.mark.parametrize("backend", LAZY)
def test_divergence_hk_and_losses_accept_backend(backend, small_blocks):
    x, y, a, b = (t.clone().requires_grad_() for t in make_problem(torch.float64, N=25, M=20))
    kw = dict(blur=0.2, reach=0.5)
    div = {n: torchuot.sinkhorn_divergence(x, y, a, b, backend=n, **kw) for n in ("tensorized", backend)}
    assert rel(div[backend], div["tensorized"]) < 1e-5
    g_ref = torch.autograd.grad(div["tensorized"], x)[0]
    g = torch.autograd.grad(div[backend], x)[0]
    assert rel(g, g_ref) < 1e-5
    hk = {n: torchuot.hk_distance(x, y, a, b, kappa=0.8, blur=0.1, backend=n)
          for n in ("tensorized", backend)}
    assert rel(hk[backend], hk["tensorized"]) < 1e-5
    loss = torchuot.SinkhornDivergence(blur=0.2, reach=0.5, backend=backend)
    ref = torchuot.SinkhornDivergence(blur=0.2, reach=0.5, backend="tensorized")
    assert rel(loss(x, y), ref(x, y)) < 1e-5


@pytest.mark.parametrize("backend", LAZY)
def test_unrolled_gradients_agree(backend, small_blocks):
    grads = {}
    for name in ("tensorized", backend):
        x, y, a, b = make_problem(torch.float64, N=20, M=15)
        x.requires_grad_()
        res = torchuot.sinkhorn(x, y, a, b, blur=0.3, reach=0.5, grad="unroll", max_iter=30, backend=name)
        grads[name] = torch.autograd.grad(res.value, x)[0]
    assert rel(grads[backend], grads["tensorized"]) < 1e-5


@pytest.mark.parametrize("backend", LAZY)
def test_sample_pairs_statistics(backend, small_blocks):
    ref, _ = solve_and_grad("tensorized", None, torch.float64)
    res, _ = solve_and_grad(backend, None, torch.float64)
    k = 20000
    i_ref, j_ref = ref.sample_pairs(k, generator=torch.Generator().manual_seed(3))
    i, j = res.sample_pairs(k, generator=torch.Generator().manual_seed(3))
    # Same plan to ~1e-15 and the same generator: the very same draws.
    assert torch.equal(i, i_ref) and torch.equal(j, j_ref)
    # And the draws follow the plan: empirical marginals within 5 sigma of pi 1 / m(pi).
    P = ref.plan() / ref.plan().sum()
    for idx, p in ((i, P.sum(1)), (j, P.sum(0))):
        freq = torch.bincount(idx, minlength=p.numel()).double() / k
        sigma = (p * (1 - p) / k).sqrt()
        assert bool(((freq - p).abs() <= 5 * sigma + 1e-12).all())


# ------------------------------------------------------------------------ exact derivatives
@pytest.mark.parametrize("backend", LAZY)
@pytest.mark.parametrize("cost_name", ["sqeuclidean", "power1.5", "hk"])
def test_softmin_gradcheck(backend, cost_name, small_blocks):
    x, y, a, b = make_problem(torch.float64, N=9, M=7)
    # A coincident pair: the power / HK derivative formulas must be finite at x_i = y_j.
    y[0] = x[0]
    x, y, b = x[None].requires_grad_(), y[None].requires_grad_(), b[None].requires_grad_()
    g = (0.1 * torch.randn(1, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(1)))
    g.requires_grad_()

    def fn(x, y, b, g):
        ops = B.resolve_backend(backend, x, y, torch.ones(1, 9, dtype=x.dtype), b, COSTS[cost_name])
        return ops.softmin_x_autograd(0.05, g), ops.softmin_y_autograd(0.05, torch.zeros(1, 9, dtype=x.dtype))

    assert torch.autograd.gradcheck(fn, (x, y, b, g), atol=1e-7, rtol=1e-5)


# ------------------------------------------------------------------------ auto and plan()
def test_auto_choice_by_size():
    small = torch.zeros(1, 100, 3)
    assert B.auto_backend_name(small, small, SquaredEuclidean())[0] == "tensorized"
    # Just above the stated threshold (512 MiB per B x N x M matrix): 11,586^2 float32 entries.
    n = 11_586
    big = torch.zeros(1, n, 3)
    assert n * n * 4 > B.AUTO_DENSE_MAX_BYTES >= 11_585**2 * 4
    # D <= 3: the multiscale backend (no compiler needed); D > 3: KeOps online, else chunked.
    name, why = B.auto_backend_name(big, big, SquaredEuclidean())
    assert name == "multiscale" and why == ""
    big5 = torch.zeros(1, n, 5)
    name, why = B.auto_backend_name(big5, big5, SquaredEuclidean())
    assert name == ("online" if KEOPS_OK else "chunked")
    assert (why == "") == KEOPS_OK
    # float64 halves the dense limit; a callable cost never goes to KeOps.
    mid = torch.zeros(1, 9000, 3, dtype=torch.float64)
    assert B.auto_backend_name(mid, mid, SquaredEuclidean())[0] != "tensorized"
    assert B.auto_backend_name(big, big, torchuot.costs.make_cost(callable_cost))[0] == "chunked"


def test_backend_is_the_protocol_and_resolve_builds_point_cloud_backends():
    """torchuot.backends.Backend is the protocol of base.py (the union of the classes that
    resolve_backend builds is PointCloudBackend); every name and a Multiscale object resolve."""
    from torchuot.backends.base import Backend

    assert B.Backend is Backend
    x, y, a, b = make_problem(torch.float64, batch=1)  # resolve_backend takes batched (B, N, D) inputs
    specs = ["auto", "tensorized", "chunked", "multiscale", B.Multiscale(truncate=3.0)]
    for spec in specs + (["online"] if KEOPS_OK else []):
        ops = B.resolve_backend(spec, x, y, a, b, SquaredEuclidean())
        assert isinstance(ops, Backend) and isinstance(ops, B.PointCloudBackend), spec
        assert isinstance(spec, B.BackendSpec)


def test_auto_records_its_choice(monkeypatch):
    x, y, a, b = make_problem(torch.float64)
    assert torchuot.sinkhorn(x, y, a, b, reach=0.5).backend == "tensorized"
    monkeypatch.setattr(B, "AUTO_DENSE_MAX_BYTES", 1024)  # make this problem "large"
    res = torchuot.sinkhorn(x, y, a, b, reach=0.5, backend="auto")
    assert res.backend == "multiscale"  # D = 2
    x5, y5 = torch.cat([x, x[:, :3]], -1), torch.cat([y, y[:, :3]], -1)
    res = torchuot.sinkhorn(x5, y5, a, b, reach=0.5, backend="auto")
    assert res.backend == ("online" if KEOPS_OK else "chunked")
    res = torchuot.sinkhorn(x, y, a, b, reach=0.5, cost=callable_cost, backend="auto")
    assert res.backend == "chunked"


def test_auto_falls_back_to_chunked_without_pykeops():
    # A fresh interpreter where `import pykeops` fails for real (module entry set to None).
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["pykeops"] = None
        import torch, torchuot
        from torchuot import backends as B
        B.AUTO_DENSE_MAX_BYTES = 1024
        x = torch.rand(40, 2, dtype=torch.float64); y = torch.rand(30, 2, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            res = torchuot.sinkhorn(x, y, reach=0.5)
        msgs = [str(m.message) for m in w if issubclass(m.category, RuntimeWarning)]
        assert res.backend == "chunked", res.backend
        assert len(msgs) == 1 and "chunked" in msgs[0] and "pykeops is not installed" in msgs[0], msgs
        try:
            torchuot.sinkhorn(x, y, reach=0.5, backend="online")
        except ImportError as err:
            assert "backend='online'" in str(err) and "chunked" in str(err), err
        else:
            raise AssertionError("online without pykeops must raise")
        print("OK")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "OK" and "Traceback" not in out.stderr


@pytest.mark.parametrize("backend", LAZY)
def test_plan_refused_when_large_and_lazy(backend, monkeypatch):
    x, y, a, b = make_problem(torch.float64)
    res = torchuot.sinkhorn(x, y, a, b, reach=0.5, backend=backend)
    dense = torchuot.sinkhorn(x, y, a, b, reach=0.5, backend="tensorized")
    assert rel(res.plan(), dense.plan()) < 1e-10  # small: allowed
    monkeypatch.setattr(B, "PLAN_MAX_ENTRIES", 100)
    with pytest.raises(ValueError, match=r"40 x 30.*1,200 entries.*apply\(v, axis\).*marginal.*"
                                         r"barycentric_projection.*sample_pairs"):
        res.plan()
    assert dense.plan().shape == (40, 30)  # the dense backend already holds its matrix


# ------------------------------------------------------------------------ bad input
ALL = ["tensorized", "chunked", pytest.param("online", marks=[pytest.mark.keops, needs_keops]), "auto"]


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize(
    "mutate, exc, match",
    [
        (lambda p: {**p, "x": p["x"].clone().fill_(math.nan)}, ValueError, "x contains NaN"),
        (lambda p: {**p, "a": -p["a"]}, ValueError, "a contains negative"),
        (lambda p: {**p, "b": p["b"][:-1]}, ValueError, "b must have shape"),
        (lambda p: {**p, "y": p["y"].float()}, TypeError, "dtype"),
        (lambda p: {**p, "y": p["y"][:, :1]}, ValueError, "feature dimensions differ"),
        (lambda p: {**p, "blur": -1.0}, ValueError, "blur must be > 0"),
        (lambda p: {**p, "x": p["x"][:0]}, ValueError, "empty measure"),
    ],
    ids=["nan", "negative", "shape", "dtype", "dim", "blur", "empty"],
)
def test_bad_input_every_backend(backend, mutate, exc, match):
    x, y, a, b = make_problem(torch.float64)
    p = mutate({"x": x, "y": y, "a": a, "b": b, "blur": 0.1})
    with pytest.raises(exc, match=match):
        torchuot.sinkhorn(p["x"], p["y"], p["a"], p["b"], blur=p["blur"], reach=0.5, backend=backend)


def test_bad_backend_arguments():
    x, y, a, b = make_problem(torch.float64)
    with pytest.raises(ValueError, match=r"unknown backend 'keops'.*'online'"):
        torchuot.sinkhorn(x, y, backend="keops")
    with pytest.raises(ValueError, match="unknown backend"):
        torchuot.sinkhorn_divergence(x, y, backend=None)
    with pytest.raises(ValueError, match=r"online.*supports the costs.*SquaredEuclidean.*PowerCost.*HKCone"):
        torchuot.sinkhorn(x, y, cost=callable_cost, backend="online")
    with pytest.raises(ValueError, match="block_bytes must be a positive integer"):
        B.ChunkedBackend(x[None], y[None], a[None], b[None], SquaredEuclidean(), block_bytes=0)
    if KEOPS_OK:
        ops = B.KeOpsBackend(x[None], y[None], a[None], b[None], SquaredEuclidean())
        with pytest.raises(AttributeError, match="never forms the N x M cost matrix"):
            _ = ops.C


# ------------------------------------------------------------------------ scale (slow)
@pytest.mark.slow
def test_200k_points_run_without_n_by_m_memory():
    """N = M = 200,000 in D = 3 on CPU: "auto" picks the multiscale backend, which runs to
    completion with the peak resident memory growing by less than 1 GiB (one N x M float32
    matrix is 149 GiB)."""
    n = int(os.environ.get("TORCHUOT_SCALE_TEST_N", 200_000))  # smaller for a quick local check
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, generator=g)
    y = torch.rand(n, 3, generator=g) + 0.1
    assert B.auto_backend_name(x[None], y[None], SquaredEuclidean())[0] == "multiscale"
    with PeakRSS() as mem:
        # A large blur and max_iter=1 keep it short: one eps stage, one sweep, then the value.
        res = torchuot.sinkhorn(x, y, blur=2.0, reach=1.0, max_iter=1)
        value = float(res.value)
    assert res.backend == "multiscale" and math.isfinite(value)
    assert res.f.shape == (n,) and bool(torch.isfinite(res.f).all())
    assert mem.growth < 2**30, f"peak RSS grew by {mem.growth / 2**20:.0f} MiB"
