"""Losses return the potentials (GeomLoss's ``potentials=True``) or the full result from one solve."""

from __future__ import annotations

import pytest
import torch
from geomloss import SamplesLoss

import torchuot as tu


def data(seed: int = 0, N: int = 20, M: int = 25):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, 2, generator=g, dtype=torch.float64)
    y = torch.randn(M, 2, generator=g, dtype=torch.float64) * 0.7 + 0.5
    a = torch.rand(N, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(M, generator=g, dtype=torch.float64) + 0.2
    return x, y, a / a.sum(), 1.3 * b / b.sum()


def test_unbalanced_loss_potentials_and_result_are_sinkhorns():
    x, y, a, b = data()
    ref = tu.sinkhorn(x, y, a, b, blur=0.2, reach=0.5)
    f, g = tu.UnbalancedSinkhornLoss(blur=0.2, reach=0.5, potentials=True)(a, x, b, y)
    assert torch.equal(f, ref.f) and torch.equal(g, ref.g)
    res = tu.UnbalancedSinkhornLoss(blur=0.2, reach=0.5).result(a, x, b, y)
    assert isinstance(res, tu.UOTResult) and torch.equal(res.value, ref.value)
    xb, yb = torch.stack([x, x]), torch.stack([y, y])
    fb, gb = tu.UnbalancedSinkhornLoss(blur=0.2, reach=0.5, potentials=True)(xb, yb)
    assert fb.shape == (2, 20) and gb.shape == (2, 25)
    with pytest.raises(TypeError, match="potentials must be a bool"):
        tu.UnbalancedSinkhornLoss(potentials="yes")  # type: ignore[arg-type]


@pytest.mark.parametrize("reach", [None, 0.5])
def test_divergence_potentials_match_geomloss(reach):
    """Debiased potentials ``(f_ab - f_aa, g_ab - g_bb)``, as GeomLoss returns them (balanced: up to
    one constant, the potentials' gauge)."""
    x, y, a, b = data()
    if reach is None:
        b = b / b.sum()
    F, G = tu.SinkhornDivergence(blur=0.1, reach=reach, tol=1e-10, potentials=True)(a, x, b, y)
    # GeomLoss anneals one iteration per eps stage: its error shrinks like 1 - scaling, towards ours
    # (max error / max |potential|: 2e-3 to 4e-3 at 0.995, 4e-4 to 1.5e-3 at 0.999, measured).
    Fr, Gr = SamplesLoss("sinkhorn", p=2, blur=0.1, reach=reach, debias=True, scaling=0.995,
                         potentials=True)(a, x, b, y)
    Fr, Gr = Fr.reshape(-1), Gr.reshape(-1)  # GeomLoss returns (1, N) for unbatched inputs
    if reach is None:
        c = (Fr - F).mean()
        F, G = F + c, G - c
    torch.testing.assert_close(F, Fr, rtol=0, atol=5e-3 * float(Fr.abs().max()))
    torch.testing.assert_close(G, Gr, rtol=0, atol=5e-3 * float(Gr.abs().max()))


def test_divergence_potentials_are_the_weight_gradient_when_balanced():
    """Balanced: ``dS/da = f_ab - f_aa`` up to a constant (Feydy et al. 2019), from the same solves."""
    x, y, a, b = data(1)
    b = b / b.sum()
    ar = a.clone().requires_grad_()
    tu.sinkhorn_divergence(x, y, ar, b, blur=0.2, tol=1e-10).backward()
    F, G = tu.sinkhorn_divergence(x, y, a, b, blur=0.2, tol=1e-10, potentials=True)
    d = ar.grad - F
    torch.testing.assert_close(d, d.mean().expand_as(d), rtol=0, atol=1e-7)
    Fb, Gb = tu.sinkhorn_divergence(torch.stack([x, x]), torch.stack([y, y]), blur=0.2, potentials=True)
    assert Fb.shape == (2, 20) and Gb.shape == (2, 25)
