"""The tensorized backend's kernel cache against the log-domain soft-min."""

from __future__ import annotations

import math

import pytest
import torch

from torchuot import backends as B
from torchuot.costs import HKConeCost


def _logsumexp_softmin(C, log_w, h, eps):
    """Reference soft-min over the last axis: ``-eps log sum_j w_j exp((h_j - C_ij)/eps)``."""
    return -eps * torch.logsumexp(log_w.unsqueeze(-2) + (h.unsqueeze(-2) - C) / eps, dim=-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensorized_kernel_cache_is_exact(dtype):
    # Kernel cache hits, a re-absorption past the bound, an empty HK row, a zero weight and
    # exponents far below -87 (where exp has a slow path on CPU): all match the log domain.
    g = torch.Generator().manual_seed(3)
    x = torch.rand(1, 30, 2, generator=g, dtype=torch.float64) * 2
    x[0, 0] = 9.0  # farther than kappa * pi / 2 from every target: an empty row
    y = torch.rand(1, 25, 2, generator=g, dtype=torch.float64) * 2
    a = torch.rand(1, 30, generator=g, dtype=torch.float64) + 0.1
    b = torch.rand(1, 25, generator=g, dtype=torch.float64) + 0.1
    b[0, 4] = 0.0
    x, y, a, b = (t.to(dtype) for t in (x, y, a, b))
    ops = B.TensorizedBackend(x, y, a, b, HKConeCost(1.5))
    C64 = ops.C.double()
    eps = 0.01
    h0 = torch.randn(1, 25, generator=g, dtype=torch.float64).to(dtype) * 0.05
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    for shift in (0.0, 0.01, -0.03, 0.05, 5.0, 5.02):  # 5.0: |h - h0| / eps far past the bound
        h = h0 + shift * torch.linspace(-1, 1, 25, dtype=dtype)
        with torch.no_grad():
            S = ops.softmin_x(eps, h)
        ref = _logsumexp_softmin(C64, torch.log(b.double()), h.double(), eps)
        assert math.isinf(float(S[0, 0])) and float(S[0, 0]) > 0
        assert torch.allclose(S[0, 1:].double(), ref[0, 1:], rtol=0, atol=tol * eps * 100)
    # The other side (soft-min over the rows) with the same cache logic.
    f = torch.randn(1, 30, generator=g, dtype=torch.float64).to(dtype) * 0.05
    for shift in (0.0, 0.02, 3.0):
        with torch.no_grad():
            S = ops.softmin_y(eps, f + shift)
        ref = _logsumexp_softmin(C64.transpose(1, 2), torch.log(a.double()), (f + shift).double(), eps)
        assert torch.allclose(S.double(), ref, rtol=0, atol=tol * eps * 100)
