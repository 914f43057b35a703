"""Bad input gets a clear ValueError / TypeError that names the argument."""

from __future__ import annotations

import math

import pytest
import torch

import torchuot as tu

X = torch.rand(5, 2)
Y = torch.rand(6, 2)


def call(fn, **kw):
    args = dict(x=X, y=Y, a=None, b=None)
    args.update({k: kw.pop(k) for k in list(kw) if k in args})
    return fn(args["x"], args["y"], args["a"], args["b"], **kw)


SOLVERS = [tu.sinkhorn, tu.sinkhorn_divergence]


@pytest.mark.parametrize("fn", SOLVERS)
@pytest.mark.parametrize(
    "kw,exc,match",
    [
        (dict(y=torch.rand(6, 3)), ValueError, "feature dimensions differ"),
        (dict(x=torch.rand(2, 5, 2), y=torch.rand(3, 6, 2)), ValueError, "batch sizes differ"),
        (dict(x=torch.rand(5, 2), y=torch.rand(1, 6, 2)), ValueError, "both be batched"),
        (dict(x=torch.rand(5)), ValueError, r"x must have shape"),
        (dict(x=torch.rand(0, 2)), ValueError, "x is an empty measure"),
        (dict(x=torch.tensor([[0.0, math.nan]] * 5)), ValueError, "x contains NaN"),
        (dict(y=torch.tensor([[0.0, math.inf]] * 6)), ValueError, "y contains NaN or inf"),
        (dict(x=[[0.0, 1.0]]), TypeError, "x must be a torch.Tensor"),
        (dict(x=torch.ones(5, 2, dtype=torch.int64)), TypeError, "floating-point"),
        (dict(a=-torch.ones(5)), ValueError, "a contains negative weights"),
        (dict(b=torch.full((6,), math.nan)), ValueError, "b contains NaN or inf"),
        (dict(a=torch.zeros(5)), ValueError, "a has zero total mass"),
        (dict(a=torch.ones(4)), ValueError, r"a must have shape \(5,\)"),
        (dict(a=torch.ones(5, dtype=torch.float64)), TypeError, "a has dtype"),
        (dict(y=torch.rand(6, 2, dtype=torch.float64)), TypeError, "x has dtype"),
        (dict(blur=0.0), ValueError, "blur must be > 0"),
        (dict(blur=-1.0), ValueError, "blur must be > 0"),
        (dict(eps=0.0), ValueError, "eps must be > 0"),
        (dict(blur=0.1, eps=0.01), ValueError, "either blur"),
        (dict(reach=0.0), ValueError, "reach must be > 0"),
        (dict(rho=-1.0), ValueError, "rho must be > 0"),
        (dict(reach=0.5, rho=0.25), ValueError, "one convention"),
        (dict(tau_a=1.5), ValueError, r"tau_a must lie in \(0, 1\]"),
        (dict(reach=0.5, penalty="huber"), ValueError, "unknown marginal penalty"),
        (dict(a=torch.ones(5) * 2), ValueError, "balanced OT needs equal total masses"),
        (dict(grad="implicit-magic"), ValueError, "grad must be one of"),
        (dict(max_iter=0), ValueError, "max_iter"),
        (dict(backend="cuda-fast"), ValueError, "unknown backend"),
        (dict(cost="manhattan"), ValueError, "unknown cost"),
        (dict(scaling=1.5), ValueError, "scaling must lie in"),
    ],
)
def test_bad_input_is_a_clear_error(fn, kw, exc, match):
    with pytest.raises(exc, match=match):
        call(fn, **kw)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mixed_devices_are_a_clear_error():
    with pytest.raises(ValueError, match="same device"):
        tu.sinkhorn(X, Y.cuda())


def test_mixed_devices_weights_are_a_clear_error():
    # A 'meta' tensor stands for another device without needing a GPU.
    with pytest.raises(ValueError, match="a is on meta"):
        tu.sinkhorn(X, Y, torch.ones(5, device="meta"), None, reach=1.0)


def test_callable_cost_with_wrong_shape():
    with pytest.raises(ValueError, match="cost callable returned shape"):
        tu.sinkhorn(X, Y, cost=lambda x, y: torch.zeros(1, 5, 5), reach=1.0)


def test_hk_and_losses_validate():
    with pytest.raises(ValueError, match="kappa"):
        tu.hk_distance(X, Y, kappa=0.0)
    with pytest.raises(ValueError, match="reduction"):
        tu.SinkhornDivergence(reduction="avg")
    with pytest.raises(TypeError, match=r"loss\(x, y\) or loss\(a, x, b, y\)"):
        tu.SinkhornDivergence()(X, Y, X)
    with pytest.raises(ValueError, match="convention"):
        tu.UnbalancedSinkhornLoss(convention="ott")


def test_bad_result_queries():
    res = tu.sinkhorn(X, Y, reach=1.0)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        res.sample_pairs(0)
    with pytest.raises(ValueError, match="axis"):
        res.apply(torch.ones(6), axis=3)
