"""Latent-space flow matching: an autoencoder trained on both domains, and unpaired latents.

UOT-FM's high-resolution setting (Eyring et al., ICLR 2024) trains the flow in an
autoencoder's latent space. Here:

* :class:`AutoencoderModule` trains a :class:`models.ConvAutoencoder` with a pixel MSE on
  images of *both* domains (Lightning, so the usual trainer options apply);
* :class:`LatentDataModule` wraps an :class:`~training.data.UnpairedDataModule`: in ``setup``
  it trains the autoencoder (or loads it from ``ae_path``), encodes every split, standardises
  the latents (training mean / std) and serves ``{"x0", "y0", "x1", "y1"}`` batches of latent
  vectors ``(B, latent_dim)``. :meth:`LatentDataModule.decode` maps latents back to images for
  pictures and metrics.

A :class:`~training.module.FlowMatchingModule` with a :class:`models.MLPVelocity` then trains
on these batches unchanged; the couplings are computed on the (standardised) latents.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from models.autoencoder import ConvAutoencoder

from .data import UnpairedDataModule, UnpairedLoaders, check_one_batch

__all__ = ["AutoencoderModule", "train_autoencoder", "LatentDataModule"]

_log = logging.getLogger(__name__)


class AutoencoderModule(L.LightningModule):
    """Pixel-MSE training of an autoencoder; batches are ``(images,)`` or ``(images, labels)``.

    Logs ``train/recon_mse`` and ``val/recon_mse`` (mean squared error per pixel, images in
    ``[-1, 1]``).

    Args:
        autoencoder: the network (``encode``, ``decode``, ``forward`` = reconstruction).
        lr: Adam learning rate (cosine-decayed to 0 over ``trainer.max_steps`` when set).
    """

    def __init__(self, autoencoder: ConvAutoencoder, lr: float = 2e-3) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"lr must be positive, got {lr!r}.")
        self.save_hyperparameters(ignore=["autoencoder"])
        self.autoencoder, self.lr = autoencoder, lr

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        loss = F.mse_loss(self.autoencoder(x), x)
        self.log(f"{stage}/recon_mse", loss, prog_bar=True, batch_size=x.shape[0])
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "val")

    def configure_optimizers(self) -> Any:
        opt = torch.optim.Adam(self.autoencoder.parameters(), lr=self.lr)
        steps = self.trainer.max_steps if self.trainer is not None else -1
        if steps is None or steps < 1:
            return opt
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@torch.no_grad()
def _mse(ae: ConvAutoencoder, x: torch.Tensor, batch: int = 512) -> float:
    ae.eval()
    err = sum(float(F.mse_loss(ae(x[s : s + batch]), x[s : s + batch], reduction="sum"))
              for s in range(0, len(x), batch))
    return err / x.numel()


def train_autoencoder(
    x_train: torch.Tensor,
    x_val: torch.Tensor,
    *,
    latent_dim: int = 32,
    width: int = 32,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    accelerator: str = "cpu",
) -> tuple[ConvAutoencoder, dict[str, float]]:
    """Train a :class:`ConvAutoencoder` on images ``x_train: (n, C, H, W)`` in ``[-1, 1]``.

    Returns the network (eval mode, on the CPU) and ``{"train_mse", "val_mse", "steps"}``:
    the per-pixel reconstruction MSE on the training images and on ``x_val``.
    """
    if x_train.dim() != 4 or x_val.dim() != 4:
        raise ValueError(
            f"x_train and x_val must be (n, C, H, W), got {tuple(x_train.shape)}, {tuple(x_val.shape)}."
        )
    check_one_batch(len(x_train), batch_size, "the autoencoder's images")
    L.seed_everything(seed, workers=True, verbose=False)
    ae = ConvAutoencoder(x_train.shape[1], latent_dim, width, x_train.shape[-1])
    module = AutoencoderModule(ae, lr=lr)
    train = DataLoader(TensorDataset(x_train), batch_size=batch_size, shuffle=True, drop_last=True)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, max_steps=steps, max_epochs=-1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        limit_val_batches=0, num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, train_dataloaders=train)
    ae = ae.cpu().eval()
    return ae, {"train_mse": _mse(ae, x_train), "val_mse": _mse(ae, x_val), "steps": int(trainer.global_step)}


class LatentDataModule(UnpairedLoaders, L.LightningDataModule):
    """Unpaired source / target domains in an autoencoder's latent space.

    Args:
        base: the image-space :class:`UnpairedDataModule` (classes, proportions, styles).
        latent_dim, ae_width, ae_steps, ae_batch_size, ae_lr: the autoencoder and its training
            (on the training images of both domains; reconstruction error measured on the
            validation images, see :attr:`recon`).
        ae_path: a file to load the trained autoencoder from when it exists, and to save it to
            after training otherwise (so several runs share one autoencoder); ``None``: train.
        batch_size: batch size of the latent loaders (each of source and target).
        seed: seed of the autoencoder's training and of the unpaired pairing.
    """

    def __init__(
        self,
        base: UnpairedDataModule,
        latent_dim: int = 32,
        ae_width: int = 32,
        ae_steps: int = 1500,
        ae_batch_size: int = 128,
        ae_lr: float = 2e-3,
        ae_path: str | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(base, UnpairedDataModule):
            raise TypeError(f"base must be an UnpairedDataModule, got {type(base)!r}.")
        for name, v in (("latent_dim", latent_dim), ("ae_width", ae_width), ("ae_steps", ae_steps),
                        ("ae_batch_size", ae_batch_size), ("batch_size", batch_size)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        self.base = base
        self.latent_dim, self.ae_width, self.ae_steps = latent_dim, ae_width, ae_steps
        self.ae_batch_size, self.ae_lr = ae_batch_size, ae_lr
        self.ae_path = Path(ae_path) if ae_path else None
        self.batch_size, self.seed = batch_size, seed
        self.describe = "the latent unpaired domains"
        self.autoencoder: ConvAutoencoder | None = None
        self.recon: dict[str, float] = {}
        self.domains: dict[str, tuple[torch.Tensor, ...]] = {}

    @property
    def source_classes(self) -> list[int]:
        return self.base.source_classes

    @property
    def target_classes(self) -> list[int]:
        return self.base.target_classes

    def prepare_data(self) -> None:
        self.base.prepare_data()

    def image_domain(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0, y0, x1, y1)`` of one split in image space (``[-1, 1]``)."""
        return self.base.domain(split)

    def _fit_autoencoder(self) -> None:
        if self.autoencoder is not None:
            return
        x0, _, x1, _ = self.image_domain("train")
        v0, _, v1, _ = self.image_domain("val")
        if self.ae_path is not None and self.ae_path.exists():
            state = torch.load(self.ae_path, map_location="cpu", weights_only=True)
            ae = ConvAutoencoder(x0.shape[1], self.latent_dim, self.ae_width, x0.shape[-1])
            try:
                ae.load_state_dict(state["state_dict"])
            except (KeyError, RuntimeError) as err:
                raise ValueError(
                    f"{self.ae_path} does not hold a ConvAutoencoder with latent_dim={self.latent_dim}, "
                    f"width={self.ae_width}: delete it to train a new one, or match the settings."
                ) from err
            self.autoencoder, self.recon = ae.eval(), dict(state["recon"])
        else:
            self.autoencoder, self.recon = train_autoencoder(
                torch.cat([x0, x1]), torch.cat([v0, v1]), latent_dim=self.latent_dim, width=self.ae_width,
                steps=self.ae_steps, batch_size=self.ae_batch_size, lr=self.ae_lr, seed=self.seed,
            )
            if self.ae_path is not None:
                self.ae_path.parent.mkdir(parents=True, exist_ok=True)
                torch.save({"state_dict": self.autoencoder.state_dict(), "recon": self.recon}, self.ae_path)
        _log.info("autoencoder reconstruction MSE: %s", self.recon)
        with torch.no_grad():
            z = self.autoencoder.encode(torch.cat([x0, x1]))
        self._mean, self._std = z.mean(0), z.std(0).clamp_min(1e-6)

    def encode(self, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Images ``(n, C, H, W)`` -> standardised latents ``(n, latent_dim)``."""
        self._fit_autoencoder()  # outside no_grad: it may train the autoencoder
        with torch.no_grad():
            z = torch.cat([self.autoencoder.encode(x[s : s + batch]) for s in range(0, len(x), batch)])
            return (z - self._mean) / self._std

    def decode(self, z: torch.Tensor, batch: int = 512) -> torch.Tensor:
        """Standardised latents ``(n, latent_dim)`` -> images ``(n, C, H, W)`` in ``[-1, 1]``."""
        self._fit_autoencoder()
        with torch.no_grad():
            z = z.detach().cpu() * self._std + self._mean
            return torch.cat([self.autoencoder.decode(z[s : s + batch]) for s in range(0, len(z), batch)])

    def domain(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(z0, y0, z1, y1)`` of one split: standardised latents and labels."""
        if split not in self.domains:
            x0, y0, x1, y1 = self.image_domain(split)
            self.domains[split] = (self.encode(x0), y0, self.encode(x1), y1)
        return self.domains[split]
