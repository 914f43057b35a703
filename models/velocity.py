"""Velocity fields ``v(t, x)`` for flow matching: a small UNet for images and an MLP for points.

Both take ``t: (B,)`` times in ``[0, 1]`` (a scalar tensor or float is broadcast) and
``x: (B, ...)`` states and return a tensor shaped like ``x``. No optimal transport in here.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["TimeEmbedding", "UNetVelocity", "MLPVelocity"]


def _as_batch_time(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(t.shape)}.")
    return t


class TimeEmbedding(nn.Module):
    """Sinusoidal features of ``t`` (Vaswani et al. 2017) followed by a two-layer MLP.

    Args:
        dim: output width (even).
        scale: frequency scale applied to ``t in [0, 1]`` (1000 as in DDPM-style models).
    """

    def __init__(self, dim: int, scale: float = 1000.0) -> None:
        super().__init__()
        if dim < 2 or dim % 2:
            raise ValueError(f"dim must be an even integer >= 2, got {dim!r}.")
        half = dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half) / max(half - 1, 1))
        self.register_buffer("freqs", freqs, persistent=False)
        self.scale = scale
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """``t: (B,)`` -> ``(B, dim)``."""
        arg = self.scale * t.unsqueeze(-1) * self.freqs.to(t.dtype)
        return self.mlp(torch.cat([arg.sin(), arg.cos()], dim=-1))


class _ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, t_dim: int, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.temb = nn.Linear(t_dim, c_out)
        self.norm2 = nn.GroupNorm(min(groups, c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(self.act(self.norm2(h)))
        return h + self.skip(x)


class UNetVelocity(nn.Module):
    """A small UNet velocity field for ``(B, C, 28, 28)`` images (any size divisible by 4).

    Two resolution levels below the input (28 -> 14 -> 7), one residual block per level on
    the way down and up, a middle block, time embedding added in every block. With the
    default ``width=32`` it has about 0.54M parameters; ``width=16`` (about 0.13M) trains on
    a CPU in minutes.

    Args:
        in_channels: 1 (MNIST, PneumoniaMNIST) or 3.
        width: channels at full resolution; levels use ``width * channel_mult[k]``.
        channel_mult: multipliers per level (three levels).
        time_dim: time-embedding width (default ``4 * width``).
        groups: GroupNorm groups (capped by the channel count).
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        channel_mult: tuple[int, int, int] = (1, 2, 2),
        time_dim: int | None = None,
        groups: int = 8,
    ) -> None:
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"in_channels must be >= 1, got {in_channels!r}.")
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width!r}.")
        if len(channel_mult) != 3:
            raise ValueError(f"channel_mult must have three entries, got {channel_mult!r}.")
        self.in_channels = in_channels
        t_dim = time_dim or 4 * width
        t_dim += t_dim % 2
        c1, c2, c3 = (width * m for m in channel_mult)
        self.time = TimeEmbedding(t_dim)
        self.inp = nn.Conv2d(in_channels, c1, 3, padding=1)
        self.down1 = _ResBlock(c1, c1, t_dim, groups)
        self.pool1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)  # 28 -> 14
        self.down2 = _ResBlock(c2, c2, t_dim, groups)
        self.pool2 = nn.Conv2d(c2, c3, 3, stride=2, padding=1)  # 14 -> 7
        self.mid = _ResBlock(c3, c3, t_dim, groups)
        self.up2 = nn.ConvTranspose2d(c3, c2, 4, stride=2, padding=1)  # 7 -> 14
        self.dec2 = _ResBlock(2 * c2, c2, t_dim, groups)
        self.up1 = nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1)  # 14 -> 28
        self.dec1 = _ResBlock(2 * c1, c1, t_dim, groups)
        self.out = nn.Sequential(
            nn.GroupNorm(min(groups, c1), c1), nn.SiLU(), nn.Conv2d(c1, in_channels, 3, padding=1)
        )
        # Start from the zero field: the first steps learn the mean velocity, not noise.
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """``t: (B,)`` or scalar, ``x: (B, C, H, W)`` -> ``(B, C, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (B, {self.in_channels}, H, W), got {tuple(x.shape)}.")
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            raise ValueError(f"image height and width must be divisible by 4, got {tuple(x.shape[-2:])}.")
        temb = self.time(_as_batch_time(t, x))
        h1 = self.down1(self.inp(x), temb)
        h2 = self.down2(self.pool1(h1), temb)
        h = self.mid(self.pool2(h2), temb)
        h = self.dec2(torch.cat([self.up2(h), h2], 1), temb)
        h = self.dec1(torch.cat([self.up1(h), h1], 1), temb)
        return self.out(h)


class MLPVelocity(nn.Module):
    """An MLP velocity field for point clouds ``x: (B, dim)``.

    Args:
        dim: data dimension.
        hidden: hidden width.
        depth: number of hidden layers.
        time_dim: width of the sinusoidal time embedding, concatenated to ``x``.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, depth: int = 3, time_dim: int = 16) -> None:
        super().__init__()
        if dim < 1 or hidden < 1 or depth < 1:
            raise ValueError(f"dim, hidden and depth must be >= 1, got {dim!r}, {hidden!r}, {depth!r}.")
        self.dim = dim
        self.time = TimeEmbedding(time_dim, scale=1.0)
        layers: list[nn.Module] = [nn.Linear(dim + time_dim, hidden), nn.SiLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.SiLU()]
        layers.append(nn.Linear(hidden, dim))
        self.net = nn.Sequential(*layers)

    def forward(self, t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
        """``t: (B,)`` or scalar, ``x: (B, dim)`` -> ``(B, dim)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must have shape (B, {self.dim}), got {tuple(x.shape)}.")
        return self.net(torch.cat([x, self.time(_as_batch_time(t, x))], dim=-1))
