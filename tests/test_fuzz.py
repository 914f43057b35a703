"""Fuzzing the public solvers (issue 17, item 6).

Random shapes, weights (zeros included), masses, blurs, reaches, penalties and dtypes: every call
either raises ``ValueError`` / ``TypeError`` or returns finite values whose ``converged`` flag
agrees with the result's own first-order marginal residuals. The default run is small and
bounded (no shrinking phase); ``-m slow`` runs many more examples.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import torchuot as tu
from torchuot.result import ConvergenceWarning

_FAST = settings(max_examples=25, deadline=None, derandomize=True, phases=[Phase.explicit, Phase.generate],
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_SLOW = settings(max_examples=400, deadline=None, phases=[Phase.explicit, Phase.generate, Phase.shrink],
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _draw_problem(data):
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    B = data.draw(st.sampled_from([None, 1, 3]), label="batch")
    n = data.draw(st.integers(1, 12), label="n")
    m = data.draw(st.integers(1, 12), label="m")
    d = data.draw(st.integers(1, 3), label="d")
    seed = data.draw(st.integers(0, 2**20), label="seed")
    g = torch.Generator().manual_seed(seed)
    lead = () if B is None else (B,)
    scale = data.draw(st.sampled_from([1e-3, 1.0, 30.0]), label="scale")
    x = torch.rand(*lead, n, d, generator=g, dtype=dtype) * scale
    y = torch.rand(*lead, m, d, generator=g, dtype=dtype) * scale
    a = torch.rand(*lead, n, generator=g, dtype=dtype)
    b = torch.rand(*lead, m, generator=g, dtype=dtype)
    if data.draw(st.booleans(), label="zero weights"):
        a[..., 0] = 0.0
    if data.draw(st.booleans(), label="skew"):
        b[..., -1] *= 50
    a = a + (a.sum(-1, keepdim=True) == 0).to(dtype)  # keep a positive mass
    b = b + (b.sum(-1, keepdim=True) == 0).to(dtype)
    mass_a = data.draw(st.sampled_from([1.0, 1e-3, 7.0]), label="mass a")
    balanced = data.draw(st.booleans(), label="balanced")
    mass_b = mass_a if balanced else data.draw(st.sampled_from([1.0, 0.05, 20.0]), label="mass b")
    a, b = a / a.sum(-1, keepdim=True) * mass_a, b / b.sum(-1, keepdim=True) * mass_b
    kw = dict(blur=data.draw(st.sampled_from([1e-3, 0.01, 0.05, 0.3, 2.0]), label="blur"))
    if not balanced:
        kw["reach"] = data.draw(st.sampled_from([0.05, 0.5, 3.0, (0.5, None)]), label="reach")
        kw["penalty"] = data.draw(st.sampled_from(["kl", "tv", "reverse_kl", ("kl", "tv")]), label="penalty")
        if kw["reach"] == (0.5, None) and not isinstance(kw["penalty"], str):
            kw["penalty"] = "kl"
    return x, y, a, b, kw


def _check_result(res):
    assert torch.isfinite(res.value).all(), res
    assert torch.isfinite(res.f).all() and torch.isfinite(res.g).all()
    ra, rb = res.marginal_residuals()
    within = bool((ra <= res.marginal_tol).all() & (rb <= res.marginal_tol).all())
    if res.converged:
        assert within, (ra, rb, res.marginal_tol)
        # Balanced sides: the residual is the marginal error over the mass.
        for err, w, pen in zip(res.marginal_errors(), (res.a, res.b), (res.penalty_a, res.penalty_b),
                               strict=True):
            if pen.is_balanced:
                assert bool((err <= res.marginal_tol * w.sum(-1) * (1 + 1e-6)).all())


def _run(data):
    x, y, a, b, kw = _draw_problem(data)
    which = data.draw(st.sampled_from(["sinkhorn", "divergence", "from_cost"]), label="solver")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            if which == "sinkhorn":
                _check_result(tu.sinkhorn(x, y, a, b, **kw))
            elif which == "divergence":
                val = tu.sinkhorn_divergence(x, y, a, b, **kw)
                assert torch.isfinite(val).all()
            else:
                C = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1) / 2
                eps = kw.pop("blur") ** 2
                reach = kw.pop("reach", None)
                if reach is not None:
                    kw["rho"] = tuple(None if r is None else r**2 for r in reach) if isinstance(
                        reach, tuple) else reach**2
                _check_result(tu.sinkhorn_from_cost(C, a, b, eps=eps, **kw))
        except (ValueError, TypeError) as err:  # a clear refusal is an allowed outcome
            assert str(err), "errors must say what is wrong"
            assert not isinstance(err, (ZeroDivisionError, OverflowError))


@_FAST
@given(st.data())
def test_public_solvers_raise_or_return_consistent_results(data):
    _run(data)


@pytest.mark.slow
@_SLOW
@given(st.data())
def test_public_solvers_raise_or_return_consistent_results_many(data):
    _run(data)


def test_fuzz_found_float32_two_point_with_a_zero_weight():
    """A float32 balanced 2-point problem with a zero weight: the loop's cached-kernel residual
    and the exact one differ; ``converged`` is decided by the exact one."""
    x = torch.tensor([[0.0], [1.0]])
    y = torch.tensor([[0.25], [0.75]])
    a = torch.tensor([0.0, 1.0])
    b = torch.tensor([0.5, 0.5])
    res = tu.sinkhorn(x, y, a, b, blur=0.01, on_nonconvergence="ignore")
    _check_result(res)
    assert not math.isnan(float(res.value))
