"""An optional tqdm progress bar (tqdm is not a dependency of the library)."""

from __future__ import annotations

import logging
from typing import Any

__all__ = ["progress_bar"]

_log = logging.getLogger(__name__)


def progress_bar(total: int, *, desc: str, unit: str, enabled: bool = True) -> Any:
    """A ``tqdm`` bar of ``total`` steps, or ``None`` when disabled or tqdm is not installed."""
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        _log.info("tqdm is not installed; no progress bar for %r.", desc)
        return None
    return tqdm(total=total, desc=desc, unit=unit)
