"""A small convolutional autoencoder for 28x28 images: the latent space of latent flow matching.

The encoder halves the resolution twice (28 -> 14 -> 7) and maps to a ``latent_dim`` vector;
the decoder mirrors it and ends in ``tanh`` (images live in ``[-1, 1]``). No optimal
transport in here; training is :class:`training.latent.AutoencoderModule`.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ConvAutoencoder"]


class ConvAutoencoder(nn.Module):
    """Conv encoder ``(B, C, H, W) -> (B, latent_dim)`` and transposed-conv decoder back.

    Args:
        in_channels: image channels (1 for MNIST / PneumoniaMNIST).
        latent_dim: width of the latent vector.
        width: channels after the first downsampling (the second has ``2 * width``).
        image_size: input height and width (divisible by 4).
    """

    def __init__(
        self, in_channels: int = 1, latent_dim: int = 32, width: int = 32, image_size: int = 28
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("latent_dim", latent_dim), ("width", width)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size!r}.")
        self.in_channels, self.latent_dim, self.image_size = in_channels, latent_dim, image_size
        s = image_size // 4
        self._grid = (2 * width, s, s)
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, stride=2, padding=1),  # 28 -> 14
            nn.SiLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),  # 14 -> 7
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.Flatten(),
            nn.Linear(2 * width * s * s, latent_dim),
        )
        self.decoder_in = nn.Linear(latent_dim, 2 * width * s * s)
        self.decoder = nn.Sequential(
            nn.SiLU(),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1),
            nn.SiLU(),
            nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1),  # 7 -> 14
            nn.SiLU(),
            nn.ConvTranspose2d(width, width, 4, stride=2, padding=1),  # 14 -> 28
            nn.SiLU(),
            nn.Conv2d(width, in_channels, 3, padding=1),
            nn.Tanh(),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``x: (B, C, H, W)`` in ``[-1, 1]`` -> latents ``(B, latent_dim)``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or tuple(x.shape[1:]) != (
            self.in_channels, self.image_size, self.image_size
        ):
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
            c, n = self.in_channels, self.image_size
            raise ValueError(f"x must be a (B, {c}, {n}, {n}) tensor, got {shape}.")
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``z: (B, latent_dim)`` -> images ``(B, C, H, W)`` in ``[-1, 1]``."""
        if not isinstance(z, torch.Tensor) or z.dim() != 2 or z.shape[1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z)
            raise ValueError(f"z must be a (B, {self.latent_dim}) tensor, got {shape}.")
        return self.decoder(self.decoder_in(z).view(-1, *self._grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))`` of ``x: (B, C, H, W)``."""
        return self.decode(self.encode(x))
