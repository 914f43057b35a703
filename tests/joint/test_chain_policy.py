"""chain_sinkhorn reports non-convergence through the library's policy (warn / raise / ignore)."""

from __future__ import annotations

import warnings

import pytest
import torch

from torchuot.joint.ew_lambda import chain_sinkhorn
from torchuot.penalties import KL, Balanced
from torchuot.result import ConvergenceError, ConvergenceWarning


def _chain():
    g = torch.Generator().manual_seed(0)
    C = [torch.rand(5, 6, generator=g, dtype=torch.float64),
         torch.rand(6, 4, generator=g, dtype=torch.float64)]
    w = [torch.full((5,), 0.2, dtype=torch.float64), torch.full((6,), 1 / 6, dtype=torch.float64),
         torch.full((4,), 0.25, dtype=torch.float64)]
    return C, w, [Balanced(), None, KL(0.5)]


def test_policy():
    C, w, pens = _chain()
    with pytest.warns(ConvergenceWarning, match="chain_sinkhorn did not reach"):
        plan = chain_sinkhorn(C, w, pens, 0.01, max_iter=2, tol=1e-12)
    assert not plan.converged
    with pytest.raises(ConvergenceError, match="on_nonconvergence='ignore'"):
        chain_sinkhorn(C, w, pens, 0.01, max_iter=2, tol=1e-12, on_nonconvergence="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = chain_sinkhorn(C, w, pens, 0.01, max_iter=2, tol=1e-12, on_nonconvergence="ignore")
        assert not plan.converged
        assert chain_sinkhorn(C, w, pens, 0.1, tol=1e-10, on_nonconvergence="raise").converged
    with pytest.raises(ValueError, match="on_nonconvergence must be one of"):
        chain_sinkhorn(C, w, pens, 0.1, on_nonconvergence="quiet")
