"""Velocity-field networks: shapes, time conditioning, gradients, errors."""

from __future__ import annotations

import pytest
import torch

from models import MLPVelocity, TimeEmbedding, UNetVelocity


@pytest.mark.parametrize("channels", [1, 3])
def test_unet_shapes_and_time_conditioning(channels):
    torch.manual_seed(0)
    net = UNetVelocity(in_channels=channels, width=8)
    x = torch.randn(3, channels, 28, 28)
    assert torch.equal(net(torch.rand(3), x), torch.zeros_like(x))  # zero-initialised output layer
    torch.nn.init.normal_(net.out[-1].weight, std=0.1)
    out0, out1 = net(torch.zeros(3), x), net(0.7, x)
    assert out0.shape == x.shape
    assert float((out0 - out1).detach().abs().max()) > 1e-4  # depends on t
    (out0.pow(2).mean()).backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def test_unet_width_scales_the_size():
    n8 = sum(p.numel() for p in UNetVelocity(width=8).parameters())
    n16 = sum(p.numel() for p in UNetVelocity(width=16).parameters())
    assert 3 < n16 / n8 < 4.5
    assert n16 < 200_000  # small enough for CPU training


def test_mlp_velocity():
    torch.manual_seed(0)
    net = MLPVelocity(dim=2, hidden=32, depth=2)
    x = torch.randn(10, 2)
    assert net(torch.rand(10), x).shape == (10, 2)
    assert float((net(0.0, x) - net(1.0, x)).abs().max()) > 0
    assert TimeEmbedding(8)(torch.rand(4)).shape == (4, 8)


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"x must have shape \(B, 1, H, W\)"):
        UNetVelocity(width=8)(torch.rand(2), torch.randn(2, 3, 28, 28))
    with pytest.raises(ValueError, match="divisible by 4"):
        UNetVelocity(width=8)(torch.rand(2), torch.randn(2, 1, 30, 30))
    with pytest.raises(ValueError, match="t must be a scalar or have shape"):
        UNetVelocity(width=8)(torch.rand(3), torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match=r"x must have shape \(B, 2\)"):
        MLPVelocity(dim=2)(torch.rand(2), torch.randn(2, 3))
    with pytest.raises(ValueError, match="width must be"):
        UNetVelocity(width=0)
    with pytest.raises(ValueError, match="dim must be an even integer"):
        TimeEmbedding(3)
