"""The KeOps (online) backend on its own (marked ``keops``; its agreement with the dense backend
is in ``test_backends.py``)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

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
