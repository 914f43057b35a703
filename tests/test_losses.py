"""The nn.Module losses: call forms, reductions, training-loop use."""

from __future__ import annotations

import pytest
import torch

import torchuot as tu


def data(B=None, n=30, m=40, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    shape_x = (n, 2) if B is None else (B, n, 2)
    shape_y = (m, 2) if B is None else (B, m, 2)
    return torch.rand(shape_x, generator=g, dtype=dtype), torch.rand(shape_y, generator=g, dtype=dtype)


@pytest.mark.parametrize(
    "loss",
    [
        tu.UnbalancedSinkhornLoss(blur=0.1, reach=0.5),
        tu.SinkhornDivergence(blur=0.1, reach=0.5),
        tu.HKLoss(kappa=0.5, blur=0.05),
    ],
    ids=["uot", "divergence", "hk"],
)
def test_call_forms_and_reductions(loss):
    x, y = data()
    a = torch.full((30,), 1 / 30)
    b = torch.full((40,), 1 / 40)
    v2 = loss(x, y)
    v4 = loss(a, x, b, y)
    assert v2.shape == () and float(v2) == pytest.approx(float(v4), rel=1e-5)
    xb, yb = data(B=3)
    loss.reduction = "none"
    vals = loss(xb, yb)
    assert vals.shape == (3,)
    loss.reduction = "sum"
    assert float(loss(xb, yb)) == pytest.approx(float(vals.sum()), rel=1e-5)
    loss.reduction = "mean"
    assert float(loss(xb, yb)) == pytest.approx(float(vals.mean()), rel=1e-5)


def test_geomloss_convention_option():
    x, y = data(dtype=torch.float64)
    primal = tu.UnbalancedSinkhornLoss(blur=0.1, reach=0.5)(x, y)
    geom = tu.UnbalancedSinkhornLoss(blur=0.1, reach=0.5, convention="geomloss")(x, y)
    eps = 0.01
    assert float(geom - primal) == pytest.approx(eps * (1.0 - 1.0), abs=1e-12)  # unit masses
    a = torch.full((30,), 2 / 30, dtype=torch.float64)
    b = torch.full((40,), 1 / 40, dtype=torch.float64)
    primal = tu.UnbalancedSinkhornLoss(blur=0.1, reach=0.5)(a, x, b, y)
    geom = tu.UnbalancedSinkhornLoss(blur=0.1, reach=0.5, convention="geomloss")(a, x, b, y)
    assert float(geom - primal) == pytest.approx(eps * (1.5 - 2.0), rel=1e-9)


def test_gradient_flow_in_a_plain_loop_reduces_the_loss():
    """The drop-in use: optimise point positions with a torchuot loss."""
    x, y = data()
    x = x * 0.3
    x.requires_grad_(True)
    loss_fn = tu.SinkhornDivergence(blur=0.05, reach=0.5)
    # Weights are 1/N: a step of N * lr moves each point by lr times its displacement.
    opt = torch.optim.SGD([x], lr=0.5 * x.shape[0])
    first = None
    for _ in range(20):
        opt.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        opt.step()
        first = float(loss.detach()) if first is None else first
    assert float(loss_fn(x, y).detach()) < 0.1 * first


def test_loss_works_in_float64_and_repr():
    x, y = data(dtype=torch.float64)
    loss = tu.SinkhornDivergence(blur=0.1, reach=0.5)
    assert loss(x, y).dtype == torch.float64
    assert "reach=0.5" in repr(loss)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_losses_on_cuda_match_cpu():
    x, y = data(dtype=torch.float64)
    loss = tu.SinkhornDivergence(blur=0.05, reach=0.5, tol=1e-10)
    cpu = loss(x, y)
    gpu = loss(x.cuda(), y.cuda())
    assert gpu.device.type == "cuda"
    assert float(gpu) == pytest.approx(float(cpu), rel=1e-8)
