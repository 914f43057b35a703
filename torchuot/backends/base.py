"""The Backend protocol: every member that the Sinkhorn loop and the result object use.

A backend answers one question -- the soft-min of a potential against the cost -- plus a few
plan accessors for :class:`~torchuot.result.UOTResult`. It never runs iterations itself: the
loop (:func:`torchuot.sinkhorn.sinkhorn_loop`) is shared by all backends.

Shapes: ``x: (B, N, D)``, ``y: (B, M, D)``, ``a, f: (B, N)``, ``b, g: (B, M)``,
``h`` denotes a potential in cost units (``f`` or ``g``), ``eps`` a float.

Optional members, looked up with ``getattr`` (a backend may leave them out):

* ``release_cache()``: drop loop-only buffers once the loop has finished;
* ``coarse_start(penalty_a, penalty_b, eps_list, *, symmetric)``: a backend with coarse levels
  (multiscale) runs the annealing stages it can do cheaply on its own coarse problem and returns
  ``(g_init, eps_list_left, n_iters_done)``: the warm start of the loop on the points, the
  schedule the loop still has to run, and the iterations already spent;
* ``C``: the cost matrix (dense backends), or a ``(B, 1, 1)`` tensor holding its largest finite
  value (chunked); read only for user callable costs, whose schedule starts at ``max C``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from .._typing import Tensor

__all__ = ["Backend"]


@runtime_checkable
class Backend(Protocol):
    """What the loop and the result need from a backend (see the module docstring)."""

    #: recorded in ``UOTResult.backend``
    name: str
    #: ``(B, N, D)`` / ``(B, M, D)`` points in the caller's order (``None`` for a cost matrix)
    x: Tensor | None
    y: Tensor | None
    #: ``(B, N)`` / ``(B, M)`` weights and their logs (``-inf`` at zero weight)
    a: Tensor
    b: Tensor
    log_a: Tensor
    log_b: Tensor

    def softmin_x(self, eps: float, g: Tensor) -> Tensor:
        """``-eps log sum_j b_j exp((g_j - C_ij)/eps)`` -> ``(B, N)``, without autograd."""
        ...

    def softmin_y(self, eps: float, f: Tensor) -> Tensor:
        """``-eps log sum_i a_i exp((f_i - C_ij)/eps)`` -> ``(B, M)``, without autograd."""
        ...

    def softmin_x_autograd(self, eps: float, g: Tensor) -> Tensor:
        """As :meth:`softmin_x`, differentiable w.r.t. ``x, y, b`` and ``g``."""
        ...

    def softmin_y_autograd(self, eps: float, f: Tensor) -> Tensor:
        """As :meth:`softmin_y`, differentiable w.r.t. ``x, y, a`` and ``f``."""
        ...

    def apply(self, eps: float, f: Tensor, g: Tensor, v: Tensor, axis: int) -> Tensor:
        """``axis=1``: ``pi @ v`` with ``v: (B, M, K)`` -> ``(B, N, K)``; ``axis=0``:
        ``pi^T @ v`` with ``v: (B, N, K)`` -> ``(B, M, K)`` (no autograd)."""
        ...

    def plan(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """The dense plan ``(B, N, M)`` (small problems)."""
        ...

    def plan_rows(self, eps: float, f: Tensor, g: Tensor, rows: Tensor) -> Tensor:
        """Rows ``rows: (B, k)`` of the plan -> ``(B, k, M)``."""
        ...

    def transport_cost(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """``<pi, C>`` -> ``(B,)``."""
        ...
