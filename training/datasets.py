"""Readers for the standard on-disk formats of MNIST (IDX) and MedMNIST (``.npz``).

numpy only; nothing is downloaded here. The data root is always an argument (or the
``TORCHUOT_DATA_ROOT`` environment variable through :func:`default_data_root`), never a path
hard-coded in library code.

Layouts read (what torchvision and medmnist download):

* ``<root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``
* ``<root>/medmnist/<flag>.npz`` or ``<root>/<flag>.npz`` with keys
  ``{train,val,test}_{images,labels}`` (``<flag>`` like ``pneumoniamnist`` or
  ``pneumoniamnist_64`` for other sizes).
"""

from __future__ import annotations

import gzip
import os
import zipfile
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "default_data_root",
    "read_idx",
    "load_mnist",
    "load_medmnist",
    "DataNotFoundError",
    "CorruptDataError",
]

# What a truncated or damaged gzip / zip / IDX file raises while it is read.
_READ_ERRORS = (EOFError, gzip.BadGzipFile, zipfile.BadZipFile, zlib.error, OSError, ValueError, KeyError)


class DataNotFoundError(FileNotFoundError):
    """A dataset file is missing; the message names the path and how to get the files."""


class CorruptDataError(ValueError):
    """A dataset file exists but cannot be read (truncated download, damaged archive).

    The message names the file, what went wrong, and how to fix it (delete the file and
    download it again).
    """

    def __init__(self, path: str | Path, reason: str, how_to_get: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"{path} is truncated or corrupt ({reason}). Delete this file (it may be a cached, "
            f"partial download) and download it again ({how_to_get}), or point the data root "
            "($TORCHUOT_DATA_ROOT or the `root` argument) at an intact copy."
        )


_MNIST_HOW = "torchvision.datasets.MNIST(root, download=True) fetches MNIST/raw"
_MEDMNIST_HOW = "the medmnist package, or MedMNISTDataModule(download=True), fetches medmnist/<flag>.npz"


def _reason(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}" if str(err) else type(err).__name__


def default_data_root() -> Path:
    """``$TORCHUOT_DATA_ROOT`` if set, else ``./data``."""
    return Path(os.environ.get("TORCHUOT_DATA_ROOT", "data"))


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (``.gz`` or raw) into a numpy array of its stored dtype and shape.

    Raises:
        DataNotFoundError: the file does not exist.
        CorruptDataError: the file is truncated, fails its gzip CRC, or is not an IDX file.
    """
    path = Path(path)
    if not path.exists():
        raise DataNotFoundError(f"IDX file {path} not found.")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        raise CorruptDataError(path, _reason(err), _MNIST_HOW) from err
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise CorruptDataError(path, "not an IDX file: bad magic number", _MNIST_HOW)
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise CorruptDataError(path, f"unknown IDX element type 0x{data[2]:02x}", _MNIST_HOW)
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise CorruptDataError(path, "the IDX header is cut short", _MNIST_HOW)
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    itemsize = np.dtype(dtypes[data[2]]).itemsize
    body = len(data) - (4 + 4 * ndim)
    if body != int(np.prod(shape)) * itemsize:
        raise CorruptDataError(
            path, f"the header says shape {shape} but the file holds {body // itemsize} values", _MNIST_HOW
        )
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    return arr.reshape(shape).astype(dtypes[data[2]][1:], copy=False)


def _find(raw: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (raw / name).exists():
            return raw / name
    return None


def load_mnist(root: str | Path, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """MNIST images ``(n, 28, 28) uint8`` and labels ``(n,) int64`` from ``<root>/MNIST/raw``.

    Args:
        root: data root (the folder that holds ``MNIST/``).
        split: ``"train"`` (60,000 images) or ``"test"`` (``t10k``, 10,000 images).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    prefix = "train" if split == "train" else "t10k"
    raw = Path(root) / "MNIST" / "raw"
    img = _find(raw, f"{prefix}-images-idx3-ubyte")
    lab = _find(raw, f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
        raise DataNotFoundError(
            f"MNIST {split} files not found under {raw} (expected {prefix}-images-idx3-ubyte[.gz] "
            f"and {prefix}-labels-idx1-ubyte[.gz]). Point the data root at the folder holding "
            "MNIST/raw, or download them with torchvision.datasets.MNIST(root, download=True)."
        )
    return read_idx(img), read_idx(lab).astype(np.int64)


def load_medmnist(root: str | Path, flag: str = "pneumoniamnist", split: str = "train",
                  size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """MedMNIST images ``(n, H, W[, 3]) uint8`` and labels ``(n,) int64`` from the ``.npz`` layout.

    Looks for ``<root>/medmnist/<flag>[_<size>].npz`` then ``<root>/<flag>[_<size>].npz``.
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}.")
    name = f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"
    candidates = [Path(root) / "medmnist" / name, Path(root) / name]
    path = next((c for c in candidates if c.exists()), None)
    if path is None:
        raise DataNotFoundError(
            f"MedMNIST file {name} not found (looked in {', '.join(map(str, candidates))}). "
            f"Point the data root at its folder, or download it with "
            f"medmnist.INFO / `python -m medmnist download` (needs network)."
        )
    key = f"{split}_images"
    try:
        with np.load(path) as z:
            if key not in z or f"{split}_labels" not in z:
                raise CorruptDataError(
                    path, f"no '{key}' / '{split}_labels' arrays (keys: {sorted(z.keys())})", _MEDMNIST_HOW
                )
            images, labels = z[key], z[f"{split}_labels"]
    except CorruptDataError:
        raise
    except _READ_ERRORS as err:
        raise CorruptDataError(path, _reason(err), _MEDMNIST_HOW) from err
    if len(images) != len(labels):
        raise CorruptDataError(path, f"{len(images)} {split} images but {len(labels)} labels", _MEDMNIST_HOW)
    return images, labels.reshape(-1).astype(np.int64)
