"""Latent-space flow matching: the autoencoder, the latent data module, the latent CLI configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("lightning")

from models.autoencoder import ConvAutoencoder  # noqa: E402
from training.cli import build_cli  # noqa: E402
from training.data import MNISTDataModule, UnpairedDataModule  # noqa: E402
from training.latent import LatentDataModule, train_autoencoder  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[2] / "training" / "configs"


def _blobs() -> torch.Tensor:
    """Eight images (values in [0, 0.8]) with a bright bar at eight different places."""
    x = torch.zeros(8, 1, 28, 28)
    for k in range(8):
        i, j = 3 + 6 * (k % 4), 4 + 12 * (k // 4)
        x[k, 0, i : i + 6, j : j + 8] = 0.8
    return x


def test_autoencoder_shapes_and_errors():
    ae = ConvAutoencoder(in_channels=1, latent_dim=8, width=4)
    z = ae.encode(torch.zeros(3, 1, 28, 28))
    assert z.shape == (3, 8) and ae.decode(z).shape == (3, 1, 28, 28)
    assert ae(torch.zeros(3, 1, 28, 28)).abs().max() <= 1.0  # tanh output, images in [-1, 1]
    with pytest.raises(ValueError, match="x must be a \\(B, 1, 28, 28\\)"):
        ae.encode(torch.zeros(3, 28, 28))
    with pytest.raises(ValueError, match="z must be a \\(B, 8\\)"):
        ae.decode(torch.zeros(3, 7))
    with pytest.raises(ValueError, match="latent_dim"):
        ConvAutoencoder(latent_dim=0)
    with pytest.raises(ValueError, match="divisible by 4"):
        ConvAutoencoder(image_size=30)


def test_autoencoder_round_trip_learns_a_few_images():
    x = _blobs()
    torch.manual_seed(0)
    before = float(torch.nn.functional.mse_loss(ConvAutoencoder(1, 8, 8)(x), x))
    ae, recon = train_autoencoder(x, x[:4], latent_dim=8, width=8, steps=100, batch_size=8, lr=3e-3, seed=0)
    with torch.no_grad():
        after = float(torch.nn.functional.mse_loss(ae(x), x))
    assert recon["steps"] == 100 and recon["train_mse"] == pytest.approx(after, rel=1e-4)
    # each image comes back: the error is a small fraction of the images' own variance
    assert after < 0.1 * before and after < 0.1 * float(x.var())


def test_latent_data_module_encodes_decodes_and_caches(shared_data: Path, tmp_path: Path):
    base = UnpairedDataModule(MNISTDataModule(root=str(shared_data), val_fraction=0.2), source_classes=[0, 1],
                              max_per_domain=64)
    path = tmp_path / "ae.pt"
    ldm = LatentDataModule(base, latent_dim=8, ae_width=4, ae_steps=3, ae_batch_size=16, ae_path=str(path),
                           batch_size=16)
    ldm.setup("fit")
    z0, y0, z1, y1 = ldm.domain("train")
    x0 = ldm.image_domain("train")[0]
    assert z0.shape == (len(x0), 8) and torch.equal(y0, base.domain("train")[1])
    # standardised latents over both training domains
    zz = torch.cat([z0, z1])
    torch.testing.assert_close(zz.mean(0), torch.zeros(8), atol=1e-4, rtol=0)
    assert ldm.decode(z0[:5]).shape == (5, 1, 28, 28)
    assert set(ldm.recon) == {"train_mse", "val_mse", "steps"} and path.exists()
    again = LatentDataModule(base, latent_dim=8, ae_width=4, ae_steps=3, ae_batch_size=16, ae_path=str(path),
                             batch_size=16)
    torch.testing.assert_close(again.domain("train")[0], z0)  # loaded, not retrained
    wrong = LatentDataModule(base, latent_dim=4, ae_width=4, ae_path=str(path), batch_size=16)
    with pytest.raises(ValueError, match="does not hold a ConvAutoencoder with latent_dim=4"):
        wrong.setup("fit")
    with pytest.raises(ValueError, match="fewer than one batch"):
        LatentDataModule(base, latent_dim=8, ae_width=4, ae_path=str(path), batch_size=4096).setup("fit")


@pytest.mark.parametrize("config", ["mnist_translation_latent", "pneumoniamnist_translation_latent"])
def test_latent_cli_configs_fast_dev_run(config, shared_data: Path, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("TORCHUOT_DATA_ROOT", str(shared_data))
    cli = build_cli(["fit", "--config", str(CONFIGS / f"{config}.yaml"), "--trainer.fast_dev_run", "1",
                     "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
                     "--data.init_args.ae_steps", "3"])
    assert isinstance(cli.datamodule, LatentDataModule) and cli.model.ode_method == "dopri5"
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and "class_preservation" in metrics
    assert (tmp_path / "report" / "samples.png").stat().st_size > 0
