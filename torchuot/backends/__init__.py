"""Backends: how a soft-min / kernel product is computed. The Sinkhorn loop is shared.

``resolve_backend`` is the one place where a backend is chosen; the choice is recorded in the
solver's result (``result.backend``).
"""

from __future__ import annotations

import warnings

from .._typing import Tensor
from ..costs import Cost
from .tensorized import TensorizedBackend, safe_log, safe_logsumexp

__all__ = ["TensorizedBackend", "resolve_backend", "BACKENDS", "safe_log", "safe_logsumexp"]

BACKENDS = ("auto", "tensorized")


def resolve_backend(
    backend: str, x: Tensor, y: Tensor, a: Tensor, b: Tensor, cost: Cost
) -> TensorizedBackend:
    """Build the backend named by ``backend`` (``"auto"`` picks one) for this problem."""
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}.")
    if backend == "auto":
        n = x.shape[0] * x.shape[1] * y.shape[1]
        if n > 2**28:
            warnings.warn(
                f"backend='auto' uses the dense tensorized backend for a {x.shape[1]} x "
                f"{y.shape[1]} problem (batch {x.shape[0]}): this stores several N x M matrices.",
                stacklevel=3,
            )
    return TensorizedBackend(x, y, a, b, cost)
