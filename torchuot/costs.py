"""Ground costs between point clouds.

Conventions (stated once, used everywhere):

* ``SquaredEuclidean``: ``C(x, y) = |x - y|^2 / 2`` -- GeomLoss's ``p=2`` cost and the default.
* ``PowerCost(p)``: ``C(x, y) = |x - y|^p / p`` (``p=1`` is the Euclidean distance, ``p=2`` the above).
* ``HKConeCost(kappa)``: ``C(x, y) = -2 log cos(min(|x - y| / kappa, pi / 2))``, ``+inf`` beyond
  ``kappa * pi / 2`` (the Hellinger-Kantorovich cone cost; ~ ``|x - y|^2 / kappa^2`` at short range).
* ``CallableCost(fn)``: any ``fn(x: (B, N, D), y: (B, M, D)) -> (B, N, M)``.

Every cost exposes ``p`` (the exponent that maps a length ``blur`` to ``eps = blur**p``) and
``eps_start(diameter)`` (the largest relevant cost value, where epsilon-scaling starts).
"""

from __future__ import annotations

import math
from typing import Union

import torch

from ._typing import CostCallable, Tensor

__all__ = [
    "Cost",
    "SquaredEuclidean",
    "PowerCost",
    "HKConeCost",
    "CallableCost",
    "make_cost",
    "squared_distances",
]


class _SquaredDistances(torch.autograd.Function):
    """``|x_i - y_j|^2`` accumulated one coordinate at a time (exact, no ``(B, N, M, D)``
    buffer); the backward pass needs only two matrix products:
    ``dL/dx_i = 2 (x_i sum_j G_ij - sum_j G_ij y_j)``."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, y)
        C = (x[..., 0:1] - y[..., 0].unsqueeze(1)).square_()
        for d in range(1, x.shape[-1]):
            C.add_((x[..., d : d + 1] - y[..., d].unsqueeze(1)).square_())
        return C

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G: Tensor) -> tuple[Tensor | None, Tensor | None]:  # type: ignore[override]
        x, y = ctx.saved_tensors
        gx = gy = None
        if ctx.needs_input_grad[0]:
            gx = 2 * (x * G.sum(-1, keepdim=True) - torch.bmm(G, y))
        if ctx.needs_input_grad[1]:
            gy = 2 * (y * G.sum(-2).unsqueeze(-1) - torch.bmm(G.transpose(1, 2), x))
        return gx, gy


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """``|x_i - y_j|^2`` for ``x: (B, N, D)``, ``y: (B, M, D)`` -> ``(B, N, M)``.

    Low dimensions (``D <= 8``): exact coordinate-wise differences, with a custom backward
    that never stores ``N x M x D``. Higher dimensions: the matrix-product expansion on data
    centred at a common mean (the cost is translation invariant), which keeps float32
    cancellation error at the scale of the cloud's spread rather than of its position.
    """
    if x.shape[-1] <= 8:
        return _SquaredDistances.apply(x, y)
    center = torch.cat([x, y], dim=1).mean(dim=1, keepdim=True).detach()
    xc, yc = x - center, y - center
    x2 = (xc * xc).sum(-1, keepdim=True)
    y2 = (yc * yc).sum(-1, keepdim=True).transpose(1, 2)
    return (x2 + y2 - 2 * torch.bmm(xc, yc.transpose(1, 2))).clamp_min(0)


def _safe_norm(d2: Tensor) -> Tensor:
    """``sqrt(d2)`` with a zero (not NaN) gradient at ``d2 == 0``."""
    pos = d2 > 0
    return torch.where(pos, torch.where(pos, d2, torch.ones_like(d2)).sqrt(), torch.zeros_like(d2))


class Cost:
    """Base class: ``cost(x: (B, N, D), y: (B, M, D)) -> (B, N, M)``."""

    name: str = "cost"
    #: exponent mapping a length ``blur`` to ``eps = blur**p`` (and ``reach`` to ``rho``)
    p: float = 2.0

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def eps_start(self, diameter: float) -> float:
        """Largest relevant cost value for a cloud of this diameter (start of eps-scaling)."""
        return float(diameter) ** self.p

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SquaredEuclidean(Cost):
    """``|x - y|^2 / 2`` (GeomLoss ``p=2``)."""

    name = "sqeuclidean"
    p = 2.0

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        return squared_distances(x, y) / 2


class PowerCost(Cost):
    """``|x - y|^p / p`` for ``p >= 1``; ``p=2`` is :class:`SquaredEuclidean`."""

    name = "power"

    def __init__(self, p: float = 2.0) -> None:
        if not isinstance(p, (int, float)) or not math.isfinite(p) or p < 1:
            raise ValueError(f"PowerCost: p must be a finite number >= 1, got {p!r}.")
        self.p = float(p)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        d2 = squared_distances(x, y)
        if self.p == 2.0:
            return d2 / 2
        return _safe_norm(d2) ** self.p / self.p

    def __repr__(self) -> str:
        return f"PowerCost(p={self.p:g})"


class HKConeCost(Cost):
    """Hellinger-Kantorovich cone cost ``-2 log cos(min(|x - y| / kappa, pi/2))``.

    ``+inf`` at distances ``>= kappa * pi / 2``: no mass is transported that far, it is
    destroyed and created instead. With KL marginal penalties of strength 1 the unregularised
    UOT value between ``m1 delta_x`` and ``m2 delta_y`` is
    ``m1 + m2 - 2 sqrt(m1 m2) cos(min(|x - y| / kappa, pi / 2))`` = HK^2.

    Length scales map to eps through ``p = 2`` on the rescaled distance ``|x - y| / kappa``:
    the cost behaves as ``(|x - y| / kappa)^2`` near the diagonal.
    """

    name = "hk"
    p = 2.0

    def __init__(self, kappa: float = 1.0) -> None:
        if not isinstance(kappa, (int, float)) or not math.isfinite(kappa) or kappa <= 0:
            raise ValueError(
                f"HKConeCost: kappa must be a finite positive length, got {kappa!r}."
            )
        self.kappa = float(kappa)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        t = _safe_norm(squared_distances(x, y)) / self.kappa
        inside = t < (math.pi / 2)
        t_safe = torch.where(inside, t, torch.zeros_like(t))
        c = -2 * torch.log(torch.cos(t_safe))
        return torch.where(inside, c, torch.full_like(c, math.inf))

    def eps_start(self, diameter: float) -> float:
        # The cost is infinite past kappa*pi/2: start at the largest finite scale that matters.
        t = min(float(diameter) / self.kappa, 1.5)
        return max(-2 * math.log(math.cos(t)), 1e-12)

    def __repr__(self) -> str:
        return f"HKConeCost(kappa={self.kappa:g})"


class CallableCost(Cost):
    """Wraps ``fn(x: (B, N, D), y: (B, M, D)) -> (B, N, M)``; its scale is read off the matrix."""

    name = "callable"

    def __init__(self, fn: CostCallable, p: float = 2.0) -> None:
        if not callable(fn):
            raise TypeError(f"cost must be a string, a Cost or a callable, got {type(fn)!r}.")
        self.fn = fn
        self.p = float(p)

    def __call__(self, x: Tensor, y: Tensor) -> Tensor:
        C = self.fn(x, y)
        if not isinstance(C, torch.Tensor):
            raise TypeError(f"the cost callable must return a tensor, got {type(C)!r}.")
        expected = (x.shape[0], x.shape[1], y.shape[1])
        if tuple(C.shape) != expected:
            raise ValueError(
                f"the cost callable returned shape {tuple(C.shape)}; expected (B, N, M) = "
                f"{expected} for x: {tuple(x.shape)}, y: {tuple(y.shape)}."
            )
        return C

    def __repr__(self) -> str:
        return f"CallableCost({getattr(self.fn, '__name__', self.fn)!r})"


CostLike = Union[str, Cost, CostCallable, None]


def make_cost(cost: CostLike = None, *, p: float = 2.0, kappa: float | None = None) -> Cost:
    """Turn a user specification into a :class:`Cost`.

    Args:
        cost: ``None`` (``|x-y|^p/p``), ``"sqeuclidean"``, ``"power"``, ``"hk"``, a :class:`Cost`
            or a callable ``(x, y) -> (B, N, M)``.
        p: exponent for the power cost.
        kappa: HK scale when ``cost="hk"``.
    """
    if isinstance(cost, Cost):
        return cost
    if cost is None or cost in ("power", "euclidean_power"):
        return SquaredEuclidean() if p == 2 else PowerCost(p)
    if isinstance(cost, str):
        if cost in ("sqeuclidean", "squared_euclidean"):
            return SquaredEuclidean()
        if cost in ("hk", "cone"):
            return HKConeCost(1.0 if kappa is None else kappa)
        raise ValueError(
            f"unknown cost {cost!r}: use 'sqeuclidean', 'power' (with p), 'hk' (with kappa), "
            "a torchuot.costs.Cost or a callable (x, y) -> (B, N, M)."
        )
    return CallableCost(cost, p=p)
