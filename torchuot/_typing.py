"""Shared type aliases and the protocols that the Sinkhorn loop depends on.

Shapes used across the library:

* ``x: (B, N, D)``, ``y: (B, M, D)`` point clouds (unbatched ``(N, D)`` accepted at the API),
* ``a: (B, N)``, ``b: (B, M)`` non-negative weights (any total mass),
* ``f: (B, N)``, ``g: (B, M)`` dual potentials,
* ``C: (B, N, M)`` cost matrix (only ever formed by the tensorized backend).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, Union, runtime_checkable

import torch

Tensor = torch.Tensor
CostCallable = Callable[[Tensor, Tensor], Tensor]
Float = Union[float, int]

__all__ = ["Tensor", "CostCallable", "Float", "SoftMin"]


@runtime_checkable
class SoftMin(Protocol):
    """What the Sinkhorn loop needs from a backend: the two soft-min reductions.

    ``softmin_x(eps, g)[b, i] = -eps * log sum_j b_j exp((g_j - C_ij) / eps)``  -> ``(B, N)``
    ``softmin_y(eps, f)[b, j] = -eps * log sum_i a_i exp((f_i - C_ij) / eps)``  -> ``(B, M)``

    A backend is free to evaluate these however it likes (dense log-sum-exp, a cached
    stabilised kernel, KeOps, row blocks); the loop never looks inside.
    """

    def softmin_x(self, eps: float, g: Tensor) -> Tensor: ...

    def softmin_y(self, eps: float, f: Tensor) -> Tensor: ...
