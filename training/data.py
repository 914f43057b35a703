"""Lightning data modules: toy 2D mixtures, MNIST, MedMNIST, and unpaired translation domains.

Image modules yield ``(images, labels)`` with images ``(B, C, 28, 28)`` scaled to ``[-1, 1]``.
Unpaired modules (:class:`Toy2DDataModule`, :class:`UnpairedDataModule`) yield dicts
``{"x0": (B, ...), "y0": (B,), "x1": (B, ...), "y1": (B,)}``: a source batch and an
independent target batch with their class labels (labels are for evaluation only; training
never sees them). Files are read with :mod:`training.datasets`; the data root is an argument,
or ``$TORCHUOT_DATA_ROOT`` when it is ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .datasets import DataNotFoundError, default_data_root, load_medmnist, load_mnist

__all__ = [
    "ImageDataModule",
    "MNISTDataModule",
    "MedMNISTDataModule",
    "UnpairedDataModule",
    "Toy2DDataModule",
    "UnpairedDataset",
    "UnpairedLoaders",
    "domain_transform",
    "check_one_batch",
    "DOMAIN_TRANSFORMS",
]

SPLITS = ("train", "val", "test")
DOMAIN_TRANSFORMS = (None, "dilate", "erode", "invert")


def domain_transform(name: str | None, images: torch.Tensor) -> torch.Tensor:
    """Apply a target-domain transform to ``images: (n, C, H, W)`` in ``[0, 1]``.

    ``"dilate"`` thickens strokes (3x3 grey-level dilation, a max-pool), ``"erode"`` thins
    them (3x3 min-pool), ``"invert"`` maps ``v -> 1 - v``; ``None`` is the identity.
    """
    if name not in DOMAIN_TRANSFORMS:
        raise ValueError(f"target_transform must be one of {DOMAIN_TRANSFORMS}, got {name!r}.")
    if name is None:
        return images
    if name == "dilate":
        return F.max_pool2d(images, 3, stride=1, padding=1)
    if name == "erode":
        return -F.max_pool2d(-images, 3, stride=1, padding=1)
    return 1.0 - images


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(n, H, W)`` or ``(n, H, W, 3)`` -> float ``(n, C, H, W)`` in ``[0, 1]``."""
    t = torch.from_numpy(np.array(images, dtype=np.uint8)).float().div_(255.0)  # a writable copy
    return t.unsqueeze(1) if t.dim() == 3 else t.permute(0, 3, 1, 2).contiguous()


def _resolve_root(root: str | Path | None) -> Path:
    return Path(root) if root is not None else default_data_root()


def check_one_batch(n_train: int, batch_size: int, what: str) -> None:
    """Refuse a training split that cannot fill one batch (training loaders drop the last,
    partial batch, so such a run would train nothing and still look finished)."""
    if n_train < batch_size:
        raise ValueError(
            f"the training split of {what} has {n_train} samples, fewer than one batch "
            f"(batch_size={batch_size}): training would run no step. Lower batch_size, or use more "
            "data (max_per_domain, class subsets and proportions limit the split)."
        )


class SplitLoaders:
    """The loaders of a data module whose ``setup`` fills ``self.datasets[split]``.

    Training loaders shuffle and drop the last partial batch; the others keep the order; predict
    uses the test split.
    """

    datasets: dict[str, Dataset]
    batch_size: int
    num_workers: int = 0

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.datasets[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            drop_last=shuffle,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class ImageDataModule(SplitLoaders, L.LightningDataModule):
    """Base class of the image data modules: train / val / test splits of labelled images.

    Subclasses implement :meth:`load_splits`, returning uint8 arrays; this class converts them
    to float tensors, scales to ``[-1, 1]`` and serves ``(images, labels)`` batches.

    Args:
        root: data root (``None``: ``$TORCHUOT_DATA_ROOT``, else ``./data``).
        batch_size: batch size of every loader.
        num_workers: DataLoader workers.
        seed: seed of the splits drawn from a single file.
        download: fetch missing files in :meth:`prepare_data` (needs network).
    """

    in_channels: int = 1

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
        self.root = _resolve_root(root)
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.download = download
        self._data: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    # -------------------------------------------------------------- to implement
    def load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """``{"train": (images, labels), "val": ..., "test": ...}`` as uint8 / int64 arrays."""
        raise NotImplementedError

    # -------------------------------------------------------------- shared
    def tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Images ``(n, C, H, W)`` in ``[0, 1]`` and labels ``(n,)`` of one split."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
        if self._data is None:
            self._data = {
                k: (_to_tensor(x), torch.from_numpy(y).long()) for k, (x, y) in self.load_splits().items()
            }
        return self._data[split]

    def setup(self, stage: str | None = None) -> None:
        self.datasets = {s: TensorDataset(self.tensors(s)[0] * 2 - 1, self.tensors(s)[1]) for s in SPLITS}
        if stage == "fit":
            check_one_batch(len(self.datasets["train"]), self.batch_size, type(self).__name__)



def _split(
    x: np.ndarray, y: np.ndarray, fractions: Sequence[float], seed: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    perm = np.random.default_rng(seed).permutation(len(x))
    bounds = np.cumsum([0] + [int(round(f * len(x))) for f in fractions[:-1]] + [len(x)])
    bounds[-1] = len(x)
    return [(x[perm[s:e]], y[perm[s:e]]) for s, e in zip(bounds[:-1], bounds[1:], strict=True)]


class MNISTDataModule(ImageDataModule):
    """MNIST from its IDX files under ``<root>/MNIST/raw`` (``.gz`` or extracted).

    With the 60k training files present: train / val are a split of them (``val_fraction``)
    and test is ``t10k``. With the 10k test files alone (what ships with this project): they
    are split into train / val / test (``1 - 2 * val_fraction``, ``val_fraction``,
    ``val_fraction``) with ``seed``. ``download=True`` fetches the files with torchvision.

    Args:
        val_fraction: fraction held out for validation (and for test with the test files alone).
        (others: see :class:`ImageDataModule`)
    """

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__(root, batch_size, num_workers, seed, download)
        if not 0 < val_fraction < 0.5:
            raise ValueError(f"val_fraction must lie in (0, 0.5), got {val_fraction!r}.")
        self.val_fraction = val_fraction

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            load_mnist(self.root, "test")
            return
        except DataNotFoundError:
            pass
        from torchvision.datasets import MNIST

        MNIST(str(self.root), train=True, download=True)
        MNIST(str(self.root), train=False, download=True)

    def load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        test = load_mnist(self.root, "test")
        try:
            train = load_mnist(self.root, "train")
        except DataNotFoundError:
            v = self.val_fraction
            tr, va, te = _split(*test, (1 - 2 * v, v, v), self.seed)
            return {"train": tr, "val": va, "test": te}
        tr, va = _split(*train, (1 - self.val_fraction, self.val_fraction), self.seed)
        return {"train": tr, "val": va, "test": test}


class MedMNISTDataModule(ImageDataModule):
    """A MedMNIST dataset from its ``.npz`` file (``<root>/medmnist/<flag>[_<size>].npz``).

    The file's own train / val / test splits are used. ``download=True`` fetches the file with
    the ``medmnist`` package (needs network).

    Args:
        flag: dataset name, e.g. ``"pneumoniamnist"``.
        size: image size (28, or 64/128/224 for MedMNIST+ files).
        (others: see :class:`ImageDataModule`)
    """

    def __init__(
        self,
        root: str | None = None,
        batch_size: int = 128,
        num_workers: int = 0,
        seed: int = 0,
        download: bool = False,
        flag: str = "pneumoniamnist",
        size: int = 28,
    ) -> None:
        super().__init__(root, batch_size, num_workers, seed, download)
        self.flag = flag
        self.size = size

    def prepare_data(self) -> None:
        if not self.download:
            return
        try:
            load_medmnist(self.root, self.flag, "train", self.size)
            return
        except DataNotFoundError:
            pass
        try:
            import medmnist
        except ImportError as err:
            raise ImportError(
                "download=True for MedMNIST needs the medmnist package: pip install medmnist"
            ) from err
        info = medmnist.INFO[self.flag]
        cls = getattr(medmnist, info["python_class"])
        target = self.root / "medmnist"
        target.mkdir(parents=True, exist_ok=True)
        cls(split="train", root=str(target), download=True, size=self.size)

    def load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        out = {s: load_medmnist(self.root, self.flag, s, self.size) for s in SPLITS}
        first = out["train"][0]
        self.in_channels = 1 if first.ndim == 3 else first.shape[-1]
        return out


# ------------------------------------------------------------------------------ unpaired
class UnpairedDataset(Dataset):
    """Source and target samples served side by side, with no correspondence between them.

    Item ``k`` is ``source[k % n0]`` with ``target[perm[k % n1]]`` (``perm`` a fixed random
    permutation); with a shuffling sampler a batch is an independent draw from each domain.
    Length ``max(n0, n1)``.
    """

    def __init__(
        self, x0: torch.Tensor, y0: torch.Tensor, x1: torch.Tensor, y1: torch.Tensor, seed: int = 0
    ) -> None:
        if len(x0) == 0 or len(x1) == 0:
            raise ValueError(f"both domains need samples, got {len(x0)} source and {len(x1)} target.")
        self.x0, self.y0, self.x1, self.y1 = x0, y0, x1, y1
        self.perm = torch.randperm(len(x1), generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return max(len(self.x0), len(self.x1))

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        i, j = k % len(self.x0), int(self.perm[k % len(self.x1)])
        return {"x0": self.x0[i], "y0": self.y0[i], "x1": self.x1[j], "y1": self.y1[j]}


def _select(
    labels: torch.Tensor,
    classes: Sequence[int],
    proportions: Sequence[float] | None,
    gen: torch.Generator,
    cap: int | None,
    name: str,
) -> torch.Tensor:
    """Indices of a class subset with given class proportions (as many samples as possible)."""
    if len(classes) == 0:
        raise ValueError(f"{name}_classes must list at least one class.")
    props = (
        torch.full((len(classes),), 1.0 / len(classes))
        if proportions is None
        else torch.tensor(list(proportions), dtype=torch.float64)
    )
    if props.shape != (len(classes),) or bool((props < 0).any()) or not float(props.sum()) > 0:
        raise ValueError(
            f"{name}_proportions must have one non-negative entry per class of {name}_classes "
            f"({len(classes)}), got {proportions!r}."
        )
    props = props / props.sum()
    pools = []
    for c in classes:
        idx = torch.nonzero(labels == c).flatten()
        if len(idx) == 0:
            raise ValueError(
                f"class {c} of {name}_classes has no samples (labels present: "
                f"{sorted(set(labels.tolist()))})."
            )
        pools.append(idx[torch.randperm(len(idx), generator=gen)])
    total = min(len(pl) / float(p) for pl, p in zip(pools, props, strict=True) if p > 0)
    if cap is not None:
        total = min(total, cap)
    counts = [int(math.floor(total * float(p))) for p in props]
    return torch.cat([pl[:k] for pl, k in zip(pools, counts, strict=True)])


class UnpairedLoaders(SplitLoaders):
    """``setup`` and the loaders of a data module that serves ``domain(split) -> (x0, y0, x1, y1)``.

    Batches are :class:`UnpairedDataset` dicts; training loaders shuffle and drop the last partial
    batch, and ``setup("fit")`` refuses a training split smaller than one batch.
    """

    seed: int
    describe: str = "the unpaired domains"

    def domain(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        self.datasets = {s: UnpairedDataset(*self.domain(s), seed=self.seed) for s in SPLITS}
        if stage == "fit":
            check_one_batch(len(self.datasets["train"]), self.batch_size, self.describe)



class UnpairedDataModule(UnpairedLoaders, L.LightningDataModule):
    """Two unpaired image domains built from one labelled image data module.

    Each split of ``base`` is cut at random into two disjoint halves; the source domain takes
    ``source_classes`` from the first half in ``source_proportions``, the target domain takes
    ``target_classes`` from the second in ``target_proportions`` and applies
    ``target_transform`` (e.g. ``"dilate"``: thicker strokes). Class imbalance between domains
    is thus set from config alone. Batches are dicts ``{"x0", "y0", "x1", "y1"}``.

    Args:
        base: an :class:`ImageDataModule` (e.g. :class:`MNISTDataModule`) that reads the files.
        source_classes, target_classes: class subsets (``target_classes=None``: same as source).
        source_proportions, target_proportions: relative class frequencies (``None``: equal).
        target_transform: one of ``None``, ``"dilate"``, ``"erode"``, ``"invert"``.
        source_transform: same choices, applied to the source domain.
        batch_size: batch size (each of source and target).
        max_per_domain: cap on the training samples of each domain.
        num_workers: DataLoader workers.
        seed: seed of the halves and class subsampling.
    """

    def __init__(
        self,
        base: ImageDataModule,
        source_classes: list[int] | None = None,
        target_classes: list[int] | None = None,
        source_proportions: list[float] | None = None,
        target_proportions: list[float] | None = None,
        target_transform: str | None = "dilate",
        source_transform: str | None = None,
        batch_size: int = 64,
        max_per_domain: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not isinstance(base, ImageDataModule):
            raise TypeError(f"base must be an ImageDataModule (e.g. MNISTDataModule), got {type(base)!r}.")
        for name, tr in (("target_transform", target_transform), ("source_transform", source_transform)):
            if tr not in DOMAIN_TRANSFORMS:
                raise ValueError(f"{name} must be one of {DOMAIN_TRANSFORMS}, got {tr!r}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}.")
        self.base = base
        self.source_classes = list(range(10)) if source_classes is None else list(source_classes)
        self.target_classes = self.source_classes if target_classes is None else list(target_classes)
        self.source_proportions = source_proportions
        self.target_proportions = target_proportions
        self.target_transform = target_transform
        self.source_transform = source_transform
        self.batch_size = batch_size
        self.max_per_domain = max_per_domain
        self.num_workers = num_workers
        self.seed = seed
        self.domains: dict[str, tuple[torch.Tensor, ...]] = {}

    @property
    def in_channels(self) -> int:
        return self.base.in_channels

    def prepare_data(self) -> None:
        self.base.prepare_data()

    def domain(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0, y0, x1, y1)`` of one split: images in ``[-1, 1]``, labels."""
        if split not in self.domains:
            images, labels = self.base.tensors(split)
            gen = torch.Generator().manual_seed(self.seed + SPLITS.index(split))
            perm = torch.randperm(len(labels), generator=gen)
            half0, half1 = perm[: len(perm) // 2], perm[len(perm) // 2 :]
            cap = self.max_per_domain if split == "train" else None
            i0 = half0[
                _select(labels[half0], self.source_classes, self.source_proportions, gen, cap, "source")
            ]
            i1 = half1[
                _select(labels[half1], self.target_classes, self.target_proportions, gen, cap, "target")
            ]
            x0 = domain_transform(self.source_transform, images[i0]) * 2 - 1
            x1 = domain_transform(self.target_transform, images[i1]) * 2 - 1
            self.domains[split] = (x0, labels[i0], x1, labels[i1])
        return self.domains[split]


# ------------------------------------------------------------------------------ toy 2D
def _mixture(
    n: int,
    means: torch.Tensor,
    weights: torch.Tensor,
    std: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    labels = torch.multinomial(weights, n, replacement=True, generator=gen)
    x = means[labels] + std * torch.randn(n, means.shape[1], generator=gen)
    return x, labels


class Toy2DDataModule(UnpairedLoaders, L.LightningDataModule):
    """Source and target Gaussian mixtures in 2D with different mixture weights (and outliers).

    The default is the class-imbalance example of UOT-FM: two source clusters in equal parts on
    the left, the same two clusters on the right in proportions 0.8 / 0.2, so a balanced plan
    must send part of the lower source cluster to the upper target cluster. Labels are the
    mixture components (``-1`` for outliers).

    Args:
        source_means, target_means: component means, lists of ``[x, y]``.
        source_weights, target_weights: mixture weights (normalised).
        std: component standard deviation.
        target_outliers: fraction of target samples replaced by outliers from
            ``N(0, outlier_scale^2 I)``.
        outlier_scale: spread of the outliers.
        n_train, n_val, n_test: samples per domain and split.
        batch_size: batch size. seed: generator seed.
    """

    in_channels = 0
    describe = "Toy2DDataModule (n_train)"

    def __init__(
        self,
        source_means: list[list[float]] | None = None,
        target_means: list[list[float]] | None = None,
        source_weights: list[float] | None = None,
        target_weights: list[float] | None = None,
        std: float = 0.3,
        target_outliers: float = 0.0,
        outlier_scale: float = 4.0,
        n_train: int = 4096,
        n_val: int = 512,
        n_test: int = 512,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.source_means = torch.tensor(source_means or [[-2.0, 1.5], [-2.0, -1.5]])
        self.target_means = torch.tensor(target_means or [[2.0, 1.5], [2.0, -1.5]])
        self.source_weights = torch.tensor(source_weights or [0.5, 0.5], dtype=torch.float64)
        self.target_weights = torch.tensor(target_weights or [0.8, 0.2], dtype=torch.float64)
        for name, m, w in (
            ("source", self.source_means, self.source_weights),
            ("target", self.target_means, self.target_weights),
        ):
            if m.dim() != 2 or m.shape[1] != 2:
                raise ValueError(f"{name}_means must be a list of [x, y] pairs, got shape {tuple(m.shape)}.")
            if w.shape != (m.shape[0],) or bool((w < 0).any()) or not float(w.sum()) > 0:
                raise ValueError(
                    f"{name}_weights must have {m.shape[0]} non-negative entries, got {w.tolist()}."
                )
        if std <= 0:
            raise ValueError(f"std must be positive, got {std!r}.")
        if not 0 <= target_outliers < 1:
            raise ValueError(f"target_outliers must lie in [0, 1), got {target_outliers!r}.")
        self.std, self.target_outliers, self.outlier_scale = std, target_outliers, outlier_scale
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}
        self.batch_size, self.seed = batch_size, seed
        self.domains: dict[str, tuple[torch.Tensor, ...]] = {}

    def domain(self, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x0, y0, x1, y1)`` of one split."""
        if split not in self.domains:
            gen = torch.Generator().manual_seed(self.seed + SPLITS.index(split))
            n = self.sizes[split]
            x0, y0 = _mixture(n, self.source_means, self.source_weights, self.std, gen)
            x1, y1 = _mixture(n, self.target_means, self.target_weights, self.std, gen)
            n_out = int(round(self.target_outliers * n))
            if n_out:
                x1[:n_out] = self.outlier_scale * torch.randn(n_out, 2, generator=gen)
                y1[:n_out] = -1
            self.domains[split] = (x0, y0, x1, y1)
        return self.domains[split]
