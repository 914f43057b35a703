"""Lightning training of UOT flow matching: modules, data modules, callbacks and the CLI.

The names below are imported on first use, so that :mod:`training.datasets` (the MNIST /
MedMNIST file readers, numpy only) can be imported without Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FlowMatchingModule": "module",
    "ImageDataModule": "data",
    "MNISTDataModule": "data",
    "MedMNISTDataModule": "data",
    "UnpairedDataModule": "data",
    "Toy2DDataModule": "data",
    "TranslationReport": "callbacks",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
