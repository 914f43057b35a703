"""Input checks at the public boundary. Inner loops trust what passes here."""

from __future__ import annotations

import math

import torch

from ._typing import Tensor

__all__ = ["as_points", "as_point_pair", "as_weights", "as_cost_matrix", "cost_matrix_weights",
           "check_pair", "check_positive"]


def as_points(x: object, name: str) -> tuple[Tensor, bool]:
    """Validate a point cloud ``(N, D)`` or ``(B, N, D)``; return ``(B, N, D)`` and ``batched``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N, D) or (B, N, D), got {type(x)!r}.")
    if not x.is_floating_point():
        raise TypeError(
            f"{name} must be a floating-point tensor (float32 or float64), got dtype {x.dtype}; "
            f"convert it with {name}.float() or {name}.double()."
        )
    if x.dim() not in (2, 3):
        raise ValueError(
            f"{name} must have shape (N, D) or (B, N, D), got {tuple(x.shape)} ({x.dim()} dims)."
        )
    batched = x.dim() == 3
    xb = x if batched else x.unsqueeze(0)
    if xb.shape[0] == 0:
        raise ValueError(
            f"{name} is an empty batch (B = 0, shape {tuple(x.shape)}); give at least one problem."
        )
    if xb.shape[1] == 0:
        raise ValueError(f"{name} is an empty measure (no points, shape {tuple(x.shape)}).")
    if xb.shape[2] == 0:
        raise ValueError(f"{name} has zero feature dimension (shape {tuple(x.shape)}).")
    if not bool(torch.isfinite(xb).all()):
        raise ValueError(f"{name} contains NaN or inf coordinates; clean or drop those points.")
    return xb, batched


def as_weights(a: object | None, x: Tensor, name: str, xname: str) -> Tensor:
    """Validate weights for points ``x: (B, N, D)``; ``None`` gives uniform weights ``1/N``.

    Returns ``(B, N)`` weights. Masses need not sum to one but must be positive in total.
    """
    B, N = x.shape[0], x.shape[1]
    desc = f"{xname} of shape {tuple(x.shape) if B > 1 else tuple(x.shape[1:])}"
    return _weights(a, B, N, x.dtype, x.device, name, xname, desc)


def _weights(a: object | None, B: int, N: int, dtype: torch.dtype, device: torch.device, name: str,
             ref: str, desc: str) -> Tensor:
    """Weights ``(N,)`` / ``(B, N)`` of ``dtype`` on ``device`` -> ``(B, N)`` (``ref``/``desc``
    name what they must match in the messages)."""
    if a is None:
        return torch.full((B, N), 1.0 / N, dtype=dtype, device=device)
    if not isinstance(a, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (N,) or (B, N), got {type(a)!r}.")
    if a.dtype != dtype:
        raise TypeError(
            f"{name} has dtype {a.dtype} but {ref} has dtype {dtype}; use one dtype for all inputs."
        )
    if a.device != device:
        raise ValueError(
            f"{name} is on {a.device} but {ref} is on {device}; move them to the same device."
        )
    ab = a if a.dim() == 2 else a.unsqueeze(0) if a.dim() == 1 else None
    if ab is None or ab.shape[1] != N or ab.shape[0] != B:
        raise ValueError(
            f"{name} must have shape ({N},) or ({B}, {N}) to match {desc}, got {tuple(a.shape)}."
        )
    if not bool(torch.isfinite(ab).all()):
        raise ValueError(f"{name} contains NaN or inf weights; weights must be finite and >= 0.")
    if bool((ab < 0).any()):
        raise ValueError(
            f"{name} contains negative weights (min {float(ab.min()):.3g}); weights must be >= 0."
        )
    if bool((ab.sum(-1) <= 0).any()):
        raise ValueError(
            f"{name} has zero total mass in at least one batch entry; each measure needs positive mass."
        )
    return ab


def as_cost_matrix(C: object) -> tuple[Tensor, bool]:
    """Validate a cost matrix ``(N, M)`` or ``(B, N, M)``: floating point, no NaN, no ``-inf``
    (``+inf`` forbids a pair). Returns ``(B, N, M)`` and whether it was batched."""
    if not isinstance(C, torch.Tensor):
        raise TypeError(f"C must be a torch.Tensor of shape (N, M) or (B, N, M), got {type(C)!r}.")
    if not C.is_floating_point():
        raise TypeError(f"C must be a floating-point tensor (float32 or float64), got dtype {C.dtype}.")
    if C.dim() not in (2, 3):
        raise ValueError(f"C must have shape (N, M) or (B, N, M), got {tuple(C.shape)}.")
    batched = C.dim() == 3
    Cb = C if batched else C.unsqueeze(0)
    if Cb.numel() == 0:
        raise ValueError(f"C is empty (shape {tuple(C.shape)}): both measures need at least one point.")
    if bool(torch.isnan(Cb).any()) or bool((Cb == -math.inf).any()):
        raise ValueError("C contains NaN or -inf entries; costs must be finite or +inf (a forbidden pair).")
    return Cb, batched


def cost_matrix_weights(a: object | None, b: object | None, C: Tensor) -> tuple[Tensor, Tensor]:
    """Source and target weights for ``C: (B, N, M)`` -> ``(B, N)``, ``(B, M)``."""
    B, N, M = C.shape
    desc = f"C of shape {tuple(C.shape) if B > 1 else tuple(C.shape[1:])}"
    return (_weights(a, B, N, C.dtype, C.device, "a", "C", desc + " (rows)"),
            _weights(b, B, M, C.dtype, C.device, "b", "C", desc + " (columns)"))


def as_point_pair(x: object, y: object) -> tuple[Tensor, Tensor, bool]:
    """Validate two clouds together: ``(B, N, D)``, ``(B, M, D)`` and whether they were batched."""
    xb, batched = as_points(x, "x")
    yb, batched_y = as_points(y, "y")
    if batched != batched_y:
        raise ValueError(
            f"x and y must both be batched (B, N, D) or both unbatched (N, D); got shapes "
            f"{tuple(x.shape)} and {tuple(y.shape)}."  # type: ignore[attr-defined]
        )
    check_pair(xb, yb)
    return xb, yb, batched


def check_pair(x: Tensor, y: Tensor) -> None:
    """Batch size, feature dimension, dtype and device must agree between the two clouds."""
    if x.dtype != y.dtype:
        raise TypeError(f"x has dtype {x.dtype} but y has dtype {y.dtype}; use one dtype for both.")
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; move them to the same device.")
    if x.shape[0] != y.shape[0]:
        raise ValueError(
            f"batch sizes differ: x has B={x.shape[0]}, y has B={y.shape[0]}; batched inputs "
            "must be (B, N, D) and (B, M, D) with the same B."
        )
    if x.shape[2] != y.shape[2]:
        raise ValueError(
            f"feature dimensions differ: x has D={x.shape[2]}, y has D={y.shape[2]}."
        )


def check_positive(
    value: object, name: str, *, allow_none: bool = False, allow_inf: bool = False
) -> float | None:
    """A strictly positive number (or None / inf where allowed)."""
    if value is None:
        if allow_none:
            return None
        raise ValueError(f"{name} is required.")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TypeError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}.")
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value)!r}.")
    v = float(value)
    if math.isnan(v) or v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}.")
    if math.isinf(v) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {value!r}.")
    return v
