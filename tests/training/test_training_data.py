"""Data modules: shipped files (through the data-root setting), generated files, clear errors."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("lightning")

from training.data import (  # noqa: E402
    MedMNISTDataModule,
    MNISTDataModule,
    Toy2DDataModule,
    UnpairedDataModule,
    domain_transform,
)
from training.datasets import DataNotFoundError  # noqa: E402


def _write_idx(path: Path, arr: np.ndarray) -> None:
    code = {np.uint8: 0x08}[arr.dtype.type]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(">u1").tobytes())


@pytest.fixture
def fake_mnist(tmp_path: Path) -> Path:
    """A data root with small generated MNIST train and test IDX files (labels 0..9 cycling)."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 400), ("t10k", 100)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.zeros((n, 28, 28), np.uint8)
        for k, c in enumerate(labels):  # a bar whose position encodes the class, plus noise
            images[k, 4:24, 2 + 2 * c : 4 + 2 * c] = 255
        images = np.maximum(images, rng.integers(0, 30, images.shape).astype(np.uint8))
        _write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return tmp_path


def test_mnist_shipped_test_files_are_split(shared_data: Path):
    dm = MNISTDataModule(root=str(shared_data), batch_size=32)
    dm.setup("fit")
    sizes = {s: len(dm.datasets[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 8000, "val": 1000, "test": 1000}
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.max()) > 0.9
    assert set(torch.unique(dm.tensors("train")[1]).tolist()) == set(range(10))


def test_mnist_root_from_environment(shared_data: Path, monkeypatch):
    monkeypatch.setenv("TORCHUOT_DATA_ROOT", str(shared_data))
    dm = MNISTDataModule()
    assert dm.root == shared_data
    assert len(dm.tensors("val")[0]) == 1000


def test_mnist_uses_training_files_when_present(fake_mnist: Path):
    dm = MNISTDataModule(root=str(fake_mnist), val_fraction=0.1)
    dm.setup()
    sizes = {s: len(dm.datasets[s]) for s in ("train", "val", "test")}
    assert sizes == {"train": 360, "val": 40, "test": 100}


def test_mnist_missing_files_error_names_path(tmp_path: Path):
    dm = MNISTDataModule(root=str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="nowhere") as err:
        dm.setup()
    assert "download" in str(err.value)


def test_medmnist_shipped_and_generated(shared_data: Path, tmp_path: Path):
    dm = MedMNISTDataModule(root=str(shared_data), flag="pneumoniamnist", batch_size=16)
    dm.setup()
    assert [len(dm.datasets[s]) for s in ("train", "val", "test")] == [2428, 270, 468]
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, 1, 28, 28) and set(y.tolist()) <= {0, 1}
    # A generated 3-channel file in the flat layout <root>/<flag>.npz.
    rng = np.random.default_rng(0)
    arrays = {}
    for s, n in (("train", 20), ("val", 6), ("test", 8)):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, 28, 28, 3), dtype=np.uint8)
        arrays[f"{s}_labels"] = rng.integers(0, 4, (n, 1))
    np.savez(tmp_path / "bloodmnist.npz", **arrays)
    dm = MedMNISTDataModule(root=str(tmp_path), flag="bloodmnist")
    dm.setup()
    assert dm.in_channels == 3
    assert dm.datasets["test"][0][0].shape == (3, 28, 28)


def test_medmnist_missing_file_error(tmp_path: Path):
    with pytest.raises(DataNotFoundError, match="pneumoniamnist.npz"):
        MedMNISTDataModule(root=str(tmp_path)).setup()


def test_unpaired_class_proportions_and_transform(shared_data: Path):
    base = MNISTDataModule(root=str(shared_data))
    dm = UnpairedDataModule(
        base,
        source_classes=[0, 1, 2],
        source_proportions=[0.6, 0.2, 0.2],
        target_proportions=[0.2, 0.2, 0.6],
        target_transform="dilate",
        batch_size=16,
    )
    dm.setup()
    x0, y0, x1, y1 = dm.domain("train")
    for labels, props in ((y0, [0.6, 0.2, 0.2]), (y1, [0.2, 0.2, 0.6])):
        freq = torch.bincount(labels, minlength=3)[:3].double() / len(labels)
        torch.testing.assert_close(freq, torch.tensor(props, dtype=torch.float64), atol=0.01, rtol=0)
    # Dilation thickens strokes: more ink in the target domain.
    assert float(x1.mean()) > float(x0.mean()) + 0.1
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"x0", "y0", "x1", "y1"} and batch["x0"].shape == (16, 1, 28, 28)


def test_unpaired_domains_are_disjoint(fake_mnist: Path):
    base = MNISTDataModule(root=str(fake_mnist))
    dm = UnpairedDataModule(base, source_classes=list(range(10)), target_transform=None, seed=3)
    x0, _, x1, _ = dm.domain("train")
    d = torch.cdist(x0.flatten(1), x1.flatten(1))
    assert float(d.min()) > 0  # no image is in both domains


def test_unpaired_errors(fake_mnist: Path):
    base = MNISTDataModule(root=str(fake_mnist))
    with pytest.raises(ValueError, match="target_transform must be one of"):
        UnpairedDataModule(base, target_transform="blur")
    with pytest.raises(TypeError, match="base must be an ImageDataModule"):
        UnpairedDataModule(Toy2DDataModule())
    with pytest.raises(ValueError, match="source_proportions must have one non-negative entry"):
        UnpairedDataModule(base, source_classes=[0, 1], source_proportions=[1.0]).domain("train")
    with pytest.raises(ValueError, match="class 42 of target_classes has no samples"):
        UnpairedDataModule(base, source_classes=[0], target_classes=[42]).domain("train")


def test_domain_transforms():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 4, 4] = 1
    assert float(domain_transform("dilate", x).sum()) == 9
    assert float(domain_transform("erode", domain_transform("dilate", x)).sum()) == 1
    torch.testing.assert_close(domain_transform("invert", x), 1 - x)
    with pytest.raises(ValueError, match="must be one of"):
        domain_transform("sharpen", x)


def test_toy2d_mixture_weights_and_outliers():
    dm = Toy2DDataModule(
        source_weights=[0.5, 0.5],
        target_weights=[0.8, 0.2],
        target_outliers=0.05,
        n_train=4000,
        batch_size=64,
    )
    dm.setup()
    x0, y0, x1, y1 = dm.domain("train")
    assert x0.shape == (4000, 2)
    assert float((y0 == 0).double().mean()) == pytest.approx(0.5, abs=0.03)
    inliers = y1[y1 >= 0]
    assert float((inliers == 0).double().mean()) == pytest.approx(0.8, abs=0.03)
    assert int((y1 == -1).sum()) == 200
    assert torch.equal(dm.domain("train")[0], Toy2DDataModule(n_train=4000).domain("train")[0])  # seeded
    with pytest.raises(ValueError, match="target_weights must have 2"):
        Toy2DDataModule(target_weights=[1.0])
    with pytest.raises(ValueError, match="std must be positive"):
        Toy2DDataModule(std=0)
