"""A small CNN classifier for 28x28 images, used as the evaluation network of translation metrics.

The network is both a classifier (``forward`` -> logits) and a feature extractor
(``features`` -> the penultimate activations), so the same trained net serves class
preservation and the Fréchet distance in its feature space.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Two conv blocks (28 -> 14 -> 7) and a two-layer head.

    Args:
        in_channels: image channels (1 for MNIST / PneumoniaMNIST).
        n_classes: number of output classes.
        width: channels of the first conv block (the second has ``2 * width``).
        feature_dim: width of the penultimate layer (the feature space of :meth:`features`).
        image_size: input height and width (divisible by 4).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        width: int = 16,
        feature_dim: int = 64,
        image_size: int = 28,
    ) -> None:
        super().__init__()
        for name, v in (("in_channels", in_channels), ("n_classes", n_classes), ("width", width),
                        ("feature_dim", feature_dim)):
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        if image_size % 4:
            raise ValueError(f"image_size must be divisible by 4, got {image_size!r}.")
        self.in_channels, self.n_classes, self.feature_dim = in_channels, n_classes, feature_dim
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.BatchNorm2d(width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (image_size // 4) ** 2, feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, n_classes)

    def _check(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)
            raise ValueError(f"x must be a (B, {self.in_channels}, H, W) tensor, got {shape}.")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate activations ``(B, feature_dim)`` of images ``x: (B, C, H, W)``."""
        self._check(x)
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(B, n_classes)`` of images ``x: (B, C, H, W)``."""
        return self.head(self.features(x))
