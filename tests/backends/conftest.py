"""Fixtures of the backend tests."""

from __future__ import annotations

import pytest

from torchuot.backends import chunked as chunked_mod


@pytest.fixture
def small_blocks(monkeypatch):
    """Chunked blocks of a few rows, so that every code path crosses block boundaries."""
    monkeypatch.setattr(chunked_mod, "DEFAULT_BLOCK_BYTES", 7 * 30 * 8)
