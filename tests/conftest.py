"""Shared test fixtures: the real-data root and deterministic generators."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def data_root() -> Path:
    """The shipped data (``../shared/data`` by default), through ``TORCHUOT_DATA_ROOT``."""
    return Path(os.environ.get("TORCHUOT_DATA_ROOT", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = data_root()
    if not root.exists():
        pytest.skip(f"shipped data not found at {root}; set TORCHUOT_DATA_ROOT")
    return root


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


@pytest.fixture(autouse=True)
def _threads():
    # Two cores in CI: keep torch from oversubscribing when pytest runs alone.
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    yield
