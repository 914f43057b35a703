"""Helpers shared by the backend tests: one problem generator, one solve, one result checker."""

from __future__ import annotations

import os
import threading
import time

import pytest
import torch

import torchuot
from torchuot import backends as B

KEOPS_OK, KEOPS_WHY = B.keops_status(torch.float64)
needs_keops = pytest.mark.skipif(not KEOPS_OK, reason=f"KeOps unavailable: {KEOPS_WHY}")


def callable_cost(x, y):
    # A user cost with no KeOps formula: an anisotropic quadratic form (asymmetric weights).
    w = torch.tensor([1.0, 0.5], dtype=x.dtype)
    return (((x.unsqueeze(2) - y.unsqueeze(1)) ** 2) * w).sum(-1) / 2 + 0.1 * x[..., :1]


def make_problem(dtype, seed=0, N=40, M=30, D=2, batch=None, zeros=False):
    g = torch.Generator().manual_seed(seed)
    shape = () if batch is None else (batch,)
    x = torch.rand(*shape, N, D, generator=g, dtype=dtype)
    y = 0.3 + torch.rand(*shape, M, D, generator=g, dtype=dtype)
    a = 0.2 + torch.rand(*shape, N, generator=g, dtype=dtype)
    b = (0.2 + torch.rand(*shape, M, generator=g, dtype=dtype)) * 1.5  # masses differ
    if zeros:
        a[..., :3] = 0
        b[..., -2:] = 0
    return x, y, a, b


def solve_and_grad(backend, cost, dtype, **kw):
    x, y, a, b = (t.clone().requires_grad_() for t in make_problem(dtype, **kw))
    res = torchuot.sinkhorn(x, y, a, b, cost=cost, blur=0.15, reach=0.7, backend=backend, tol=1e-9)
    res.value.sum().backward()
    return res, (x.grad, y.grad, a.grad, b.grad)


def rel(u, v):
    u, v = u.detach(), v.detach()
    fin = torch.isfinite(v)
    assert torch.equal(fin, torch.isfinite(u)), "non-finite entries differ between backends"
    scale = v[fin].abs().max().clamp_min(1e-30) if fin.any() else 1.0
    return float((u[fin] - v[fin]).abs().max() / scale) if fin.any() else 0.0


def check_same_result(res, grads, ref, ref_grads, tol):
    """One checker for every backend: values, potentials, gradients and lazy plan access."""
    assert res.converged and ref.converged
    pairs = {
        "value": (res.value, ref.value),
        "f": (res.f, ref.f),
        "g": (res.g, ref.g),
        "marginal1": (res.marginal(1), ref.marginal(1)),
        "marginal0": (res.marginal(0), ref.marginal(0)),
        "primal": (res.primal, ref.primal),
        "transport_cost": (res.transport_cost(), ref.transport_cost()),
        "bary1": (res.barycentric_projection(1), ref.barycentric_projection(1)),
        "bary0": (res.barycentric_projection(0), ref.barycentric_projection(0)),
        "apply1": (res.apply(torch.ones_like(res.g)), ref.apply(torch.ones_like(ref.g))),
        "apply0": (res.apply(torch.ones_like(res.f), axis=0), ref.apply(torch.ones_like(ref.f), axis=0)),
    }
    for name, (u, v) in pairs.items():
        assert rel(u, v) <= tol, f"{name}: rel err {rel(u, v):.2e} > {tol}"
    for name, u, v in zip("xyab", grads, ref_grads, strict=True):
        assert rel(u, v) <= tol, f"grad {name}: rel err {rel(u, v):.2e} > {tol}"


def rss_bytes() -> int:
    """This process's resident memory in bytes (Linux ``/proc``)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """``with PeakRSS() as m: ...`` then ``m.growth``: the peak resident memory above the start, in
    bytes, sampled every ``period`` seconds by a thread."""

    def __init__(self, period: float = 0.01) -> None:
        self.period, self.base, self.peak = period, 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.period)

    def __enter__(self) -> PeakRSS:
        self.base = self.peak = rss_bytes()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.base
