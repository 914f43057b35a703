"""The KeOps (online) backend on its own (marked ``keops``; its agreement with the dense backend
is in ``test_backends.py``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from .common import needs_keops


@pytest.mark.keops
@needs_keops
def test_keops_prints_nothing():
    code = textwrap.dedent("""
        import torch, torchuot
        x = torch.rand(30, 2, dtype=torch.float64, requires_grad=True)
        y = torch.rand(20, 2, dtype=torch.float64)
        r = torchuot.sinkhorn(x, y, reach=0.5, backend="online")
        r.value.backward()
        r.apply(torch.ones(20, dtype=torch.float64))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "[KeOps]" not in out.stdout + out.stderr and "[pyKeOps]" not in out.stdout + out.stderr


@pytest.mark.keops
@needs_keops
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hk_cone_edge_is_finite(dtype):
    """A pair at ``|x - y| / kappa`` equal to float32's ``pi / 2`` (1.5707964, above the true
    pi / 2, where cos < 0) gave NaN soft-mins on the online backend (the 2e4-point HK test's NaN
    potentials); it now agrees with the dense backend, gradients included."""
    from torchuot.backends import KeOpsBackend, TensorizedBackend
    from torchuot.costs import HKConeCost

    x = torch.zeros(1, 2, 2, dtype=dtype)
    x[0, 1, 0] = 0.3
    y = torch.zeros(1, 3, 2, dtype=dtype)
    y[0, :, 0] = torch.tensor([1.5707964, 0.5, 1.0], dtype=dtype)
    a, b = torch.full((1, 2), 0.5, dtype=dtype), torch.full((1, 3), 1 / 3, dtype=dtype)
    online, dense = KeOpsBackend(x, y, a, b, HKConeCost(1.0)), TensorizedBackend(x, y, a, b, HKConeCost(1.0))
    g, f = torch.zeros(1, 3, dtype=dtype), torch.zeros(1, 2, dtype=dtype)
    for got, want in ((online.softmin_x(0.1, g), dense.softmin_x(0.1, g)),
                      (online.softmin_y(0.1, f), dense.softmin_y(0.1, f))):
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, want)
    xr = x.clone().requires_grad_(True)
    KeOpsBackend(xr, y, a, b, HKConeCost(1.0)).softmin_x_autograd(0.1, g).sum().backward()
    assert bool(torch.isfinite(xr.grad).all())
