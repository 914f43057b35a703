"""Corrupt data files, bad checkpoints and runs that cannot train: one clear error, no fake result.

Issue 17, item 5. Corrupt files are made here from the shipped ones, in ``tmp_path``.
"""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.datasets import CorruptDataError, load_medmnist, load_mnist, read_idx

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "training" / "configs"
RESULT_FILES = ("metrics.json", "model.ckpt", "samples.png", "config.yaml")


def _mnist_copy(shared_data: Path, tmp_path: Path) -> Path:
    raw = tmp_path / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (shared_data / "MNIST" / "raw").glob("t10k-*.gz"):
        shutil.copy(f, raw / f.name)
    return raw


def test_truncated_mnist_gz_names_the_file_and_the_fix(shared_data: Path, tmp_path: Path):
    raw = _mnist_copy(shared_data, tmp_path)
    img = raw / "t10k-images-idx3-ubyte.gz"
    img.write_bytes(img.read_bytes()[: img.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match="t10k-images-idx3-ubyte.gz is truncated or corrupt") as e:
        load_mnist(tmp_path / "data", "test")
    assert isinstance(e.value, ValueError) and "download it again" in str(e.value)
    assert "EOFError" in str(e.value)


def test_mnist_gz_with_bad_crc(shared_data: Path, tmp_path: Path):
    raw = _mnist_copy(shared_data, tmp_path)
    lab = raw / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(lab.read_bytes())
    data[-8] ^= 0xFF  # the gzip trailer's CRC32
    lab.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="t10k-labels-idx1-ubyte.gz.*BadGzipFile"):
        load_mnist(tmp_path / "data", "test")


def test_truncated_raw_idx_is_corrupt_not_a_shape_error(tmp_path: Path):
    path = tmp_path / "x-idx3-ubyte"
    header = bytes([0, 0, 0x08, 3]) + (10).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    path.write_bytes(header + bytes(28 * 28 * 10 - 5))
    with pytest.raises(CorruptDataError, match="shape \\(10, 28, 28\\)"):
        read_idx(path)
    gz = tmp_path / "y-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(header + bytes(28 * 28 * 10)))
    assert read_idx(gz).shape == (10, 28, 28)


def test_truncated_npz_names_the_file(shared_data: Path, tmp_path: Path):
    src = shared_data / "medmnist" / "pneumoniamnist.npz"
    (tmp_path / "medmnist").mkdir()
    bad = tmp_path / "medmnist" / "pneumoniamnist.npz"
    bad.write_bytes(src.read_bytes()[: src.stat().st_size * 2 // 3])
    with pytest.raises(CorruptDataError, match="pneumoniamnist.npz is truncated or corrupt.*BadZipFile") as e:
        load_medmnist(tmp_path, "pneumoniamnist", "train")
    assert "download it again" in str(e.value)
    np.savez(bad, train_images=np.zeros((3, 28, 28), np.uint8))  # a readable file missing arrays
    with pytest.raises(CorruptDataError, match="train_labels"):
        load_medmnist(tmp_path, "pneumoniamnist", "train")


# ------------------------------------------------------------------ the CLI
pytest.importorskip("lightning")
from training.cli import CorruptCheckpointError, build_cli, check_checkpoint  # noqa: E402


def _toy(root: Path, *extra: str) -> list[str]:
    return ["fit", "--config", str(CONFIGS / "toy2d.yaml"), "--trainer.default_root_dir", str(root),
            "--trainer.enable_progress_bar", "false", "--model.ode_steps", "2",
            "--data.init_args.n_train", "256", "--data.init_args.n_val", "64",
            "--data.init_args.n_test", "64", *extra]


def _no_result_left(root: Path) -> None:
    left = [p for p in root.rglob("*")] if root.exists() else []
    assert not any(p.name in RESULT_FILES or p.name.startswith("events.") for p in left), left
    assert not root.exists(), f"{root} left behind: {left}"


@pytest.mark.parametrize("content", [b"", os.urandom(4096)], ids=["empty", "random-bytes"])
def test_corrupt_checkpoint_on_resume_names_the_path(tmp_path: Path, content: bytes):
    ckpt = tmp_path / "broken.ckpt"
    ckpt.write_bytes(content)
    root = tmp_path / "run"
    with pytest.raises(CorruptCheckpointError, match=f"checkpoint {ckpt}.*(empty|not a readable).*delete"):
        build_cli(_toy(root, "--ckpt_path", str(ckpt)))
    _no_result_left(root)


def test_truncated_and_missing_checkpoints(tmp_path: Path):
    root = tmp_path / "run"
    build_cli(_toy(root, "--trainer.max_steps", "2"))
    good = root / "report" / "model.ckpt"
    check_checkpoint(good)  # a real checkpoint passes
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CorruptCheckpointError, match="cut.ckpt"):
        check_checkpoint(cut)
    root2 = tmp_path / "run2"
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        build_cli(_toy(root2, "--ckpt_path", str(tmp_path / "nope.ckpt")))
    _no_result_left(root2)
    check_checkpoint("last")  # Lightning's keywords are left to Lightning


def test_training_split_smaller_than_a_batch_fails_before_training(tmp_path: Path):
    root = tmp_path / "run"
    with pytest.raises(ValueError, match="has 100 samples, fewer than one batch \\(batch_size=256\\)"):
        build_cli(_toy(root, "--data.init_args.n_train", "100"))
    _no_result_left(root)


@pytest.mark.parametrize(
    "limit", ["--trainer.max_steps", "--trainer.max_epochs", "--trainer.limit_train_batches"]
)
def test_zero_steps_fail_before_training(tmp_path: Path, limit: str):
    root = tmp_path / "run"
    with pytest.raises(ValueError, match=f"{limit.split('.')[-1]} is 0"):
        build_cli(_toy(root, limit, "0"))
    _no_result_left(root)


def test_resume_failure_keeps_earlier_results(tmp_path: Path):
    root = tmp_path / "run"
    build_cli(_toy(root, "--trainer.max_steps", "2"))
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptCheckpointError):
        build_cli(_toy(root, "--ckpt_path", str(bad)))
    with pytest.raises(ValueError, match="fewer than one batch"):
        build_cli(_toy(root, "--data.init_args.n_train", "10"))
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_console_script_on_corrupt_data(shared_data: Path, tmp_path: Path):
    """The installed command: non-zero exit, the file named, and no output folder left."""
    script = shutil.which("torchuot-train", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("torchuot-train is not installed next to this interpreter")
    raw = _mnist_copy(shared_data, tmp_path)
    img = raw / "t10k-images-idx3-ubyte.gz"
    img.write_bytes(img.read_bytes()[:5000])
    root = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               TORCHUOT_DATA_ROOT=str(tmp_path / "data"))
    res = subprocess.run(
        [script, "fit", "--config", str(CONFIGS / "mnist_translation.yaml"), "--trainer.fast_dev_run", "1",
         "--trainer.default_root_dir", str(root), "--trainer.enable_progress_bar", "false"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode != 0
    assert "CorruptDataError" in res.stderr and f"{img} is truncated or corrupt" in res.stderr
    _no_result_left(root)
