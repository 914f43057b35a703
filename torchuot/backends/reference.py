"""The entropy's reference measure: ``KL(pi | a x b)`` (the default) or ``KL(pi | 1)``.

The library's loop solves ``min_pi <pi, C> + eps KL(pi | a x b) + D_a + D_b`` (GeomLoss, POT's
``reg_type="kl"``). OTT-JAX's unbalanced Sinkhorn and POT's ``reg_type="entropy"`` regularise by the
plain entropy, ``KL(pi | 1)``. The two differ by a separable term of the cost,

    eps KL(pi | 1) = eps KL(pi | a x b) + <pi, eps log a (+) eps log b> + const,

so a ``KL(pi | 1)`` problem is the default problem with the cost ``C'_ij = C_ij + u_i + v_j``,
``u = eps log a``, ``v = eps log b``. :class:`CountingReference` states that shifted cost over any
backend: a soft-min against ``C'`` is ``u + softmin_C(h - v)``, and a plan accessor at potentials
``(f, g)`` is the inner one at ``(f - u, g - v)``. The potentials it returns are the plain-entropy
ones (``pi_ij = exp((f_i + g_j - C_ij) / eps)``, as OTT-JAX's), and the loop, the marginal check,
the gradients and the result object need no other change.

Zero weights: a point of weight 0 carries no mass under either reference (as in OTT-JAX), so its
shift is taken as 0 (its row / column of the inner plan is 0 whatever the potential).
"""

from __future__ import annotations

from typing import Any

import torch

from .._typing import Tensor
from .base import Backend

__all__ = ["REFERENCES", "CountingReference", "check_reference"]

#: The entropy's reference measures: ``"product"`` ``KL(pi | a x b)``, ``"counting"`` ``KL(pi | 1)``.
REFERENCES = ("product", "counting")


def check_reference(reference: object) -> str:
    """``reference`` if it is one of :data:`REFERENCES`, else a ``ValueError`` saying which is which."""
    if reference not in REFERENCES:
        raise ValueError(
            f"reference must be 'product' (eps KL(pi | a x b): GeomLoss, POT reg_type='kl', the default) "
            f"or 'counting' (eps KL(pi | 1), the plain entropy: OTT-JAX, POT reg_type='entropy'), "
            f"got {reference!r}."
        )
    return reference  # type: ignore[return-value]


def _shift(eps: float, w: Tensor) -> Tensor:
    """``eps log w``, 0 where ``w = 0``: ``(B, N)`` (differentiable w.r.t. ``w``)."""
    pos = w > 0
    return eps * torch.log(torch.where(pos, w, torch.ones_like(w)))


class CountingReference:
    """A backend for the cost ``C + eps log a (+) eps log b`` over an inner backend for ``C``.

    Args:
        inner: the backend of the problem's cost (any :class:`~torchuot.backends.base.Backend`).
        eps: the problem's target eps (the shift is fixed; eps annealing runs on the shifted cost).

    A backend's coarse start (multiscale's ``coarse_start``) is passed through as a warm start:
    the inner backend anneals its own (``KL(pi | a x b)``) problem on the coarse centroids, and its
    potential ``g`` starts the loop at ``g + eps log b``; the stages left and the iterations at the
    target eps then solve the ``KL(pi | 1)`` problem itself (the marginal check at the end is the
    usual one).
    """

    def __init__(self, inner: Backend, eps: float) -> None:
        self.inner = inner
        self.eps = float(eps)
        self.u = _shift(self.eps, inner.a)  # (B, N)
        self.v = _shift(self.eps, inner.b)  # (B, M)
        if hasattr(inner, "coarse_start"):  # an optional member: offered only where the inner has it
            self.coarse_start = self._coarse_start

    # The data members of the protocol are the inner backend's.
    name = property(lambda self: self.inner.name)
    x = property(lambda self: self.inner.x)
    y = property(lambda self: self.inner.y)
    a = property(lambda self: self.inner.a)
    b = property(lambda self: self.inner.b)
    log_a = property(lambda self: self.inner.log_a)
    log_b = property(lambda self: self.inner.log_b)

    def __getattr__(self, item: str) -> Any:
        # Optional members of the inner backend (``C``, ``release_cache``, ``kept_fraction``, ...);
        # ``coarse_start`` is set in ``__init__`` (shifted), never looked up here.
        if item in ("inner", "coarse_start"):
            raise AttributeError(item)
        return getattr(self.inner, item)

    def _coarse_start(self, penalty_a: Any, penalty_b: Any, eps_list: Any, *,
                      symmetric: bool) -> tuple[Tensor, list[float], int]:
        """The inner coarse start, its potential moved to this problem's variables (``g + v``)."""
        h, rest, n = self.inner.coarse_start(penalty_a, penalty_b, eps_list, symmetric=symmetric)
        if n == 0:  # no coarse stage: the loop starts from zero potentials, as without one
            return h, rest, n
        return h + (self.u if symmetric else self.v).detach(), rest, n

    def softmin_x(self, eps: float, g: Tensor) -> Tensor:
        """``-eps log sum_j b_j exp((g_j - C'_ij)/eps)`` -> ``(B, N)``."""
        return self.u.detach() + self.inner.softmin_x(eps, g - self.v.detach())

    def softmin_y(self, eps: float, f: Tensor) -> Tensor:
        """``-eps log sum_i a_i exp((f_i - C'_ij)/eps)`` -> ``(B, M)``."""
        return self.v.detach() + self.inner.softmin_y(eps, f - self.u.detach())

    def softmin_x_autograd(self, eps: float, g: Tensor) -> Tensor:
        """As :meth:`softmin_x`, differentiable (the shift w.r.t. the weights too)."""
        return self.u + self.inner.softmin_x_autograd(eps, g - self.v)

    def softmin_y_autograd(self, eps: float, f: Tensor) -> Tensor:
        """As :meth:`softmin_y`, differentiable."""
        return self.v + self.inner.softmin_y_autograd(eps, f - self.u)

    def _inner_fg(self, f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        return f - self.u.detach(), g - self.v.detach()

    def apply(self, eps: float, f: Tensor, g: Tensor, v: Tensor, axis: int) -> Tensor:
        """``pi @ v`` (``axis=1``) or ``pi^T @ v`` (``axis=0``), ``pi = exp((f + g - C)/eps)``."""
        return self.inner.apply(eps, *self._inner_fg(f, g), v, axis)

    def plan(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """The dense plan ``(B, N, M)``."""
        return self.inner.plan(eps, *self._inner_fg(f, g))

    def plan_rows(self, eps: float, f: Tensor, g: Tensor, rows: Tensor) -> Tensor:
        """Rows ``rows: (B, k)`` of the plan -> ``(B, k, M)``."""
        return self.inner.plan_rows(eps, *self._inner_fg(f, g), rows)

    def transport_cost(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """``<pi, C>`` with the problem's cost ``C`` (not the shifted one) -> ``(B,)``."""
        return self.inner.transport_cost(eps, *self._inner_fg(f, g))
