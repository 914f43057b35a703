"""The chunked backend on its own: high dimension, callable costs read block by block.

Its agreement with the dense backend on every cost is in ``test_backends.py``.
"""

from __future__ import annotations

import pytest
import torch

import torchuot
from torchuot import backends as B
from torchuot.costs import squared_distances

from .common import callable_cost, check_same_result, make_problem, solve_and_grad


def test_chunked_agrees_in_high_dimension(small_blocks):
    # D > 8: the chunked backend's centred matrix-product form of |x - y|^2.
    ref, ref_grads = solve_and_grad("tensorized", None, torch.float64, D=12)
    res, grads = solve_and_grad("chunked", None, torch.float64, D=12)
    check_same_result(res, grads, ref, ref_grads, 1e-5)


def test_bad_callable_cost_on_chunked(small_blocks):
    x, y, a, b = make_problem(torch.float64)
    with pytest.raises(ValueError, match=r"the cost callable returned shape"):
        torchuot.sinkhorn(x, y, cost=lambda x, y: squared_distances(x, y)[..., :-1], backend="chunked")


def test_chunked_callable_cost_scale_without_matrix(small_blocks):
    # The eps schedule of a callable cost starts at its largest finite value; chunked reads
    # it block by block and must match the dense matrix.
    x, y, a, b = make_problem(torch.float64)
    ops = B.ChunkedBackend(x[None], y[None], a[None], b[None], torchuot.costs.make_cost(callable_cost))
    dense = callable_cost(x[None], y[None])
    assert ops.C.shape == (1, 1, 1) and float(ops.C) == float(dense.max())
