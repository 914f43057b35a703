"""Conditional flow matching: interpolant, target velocity, loss and an ODE sampler.

The straight interpolant of (OT-)conditional flow matching (Lipman et al. 2023; Tong et al.
2024, Eq. 14): ``x_t = (1 - t) x0 + t x1 + sigma * z`` with ``z ~ N(0, I)``, whose conditional
velocity is ``u_t = x1 - x0``. A velocity field ``v(t, x)`` is regressed onto ``u_t`` with the
mean squared error, and new samples are obtained by integrating ``dx/dt = v(t, x)`` from
``t = 0`` to ``t = 1``.

A velocity field here is any callable ``v(t, x)`` with ``t: (B,)`` and ``x: (B, ...)`` returning
a tensor shaped like ``x`` (the signature of ``models.UNetVelocity`` and ``models.MLPVelocity``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ._typing import Tensor
from .couplings import PlanSampler

__all__ = [
    "ConditionalFlowMatcher",
    "sample_time",
    "interpolate",
    "target_velocity",
    "cfm_loss",
    "odeint",
    "ODE_METHODS",
    "VelocityField",
]

VelocityField = Callable[[Tensor, Tensor], Tensor]
ODE_METHODS = ("euler", "midpoint", "dopri5")


def _expand(t: Tensor, x: Tensor) -> Tensor:
    """``t: (B,)`` -> ``(B, 1, ..., 1)`` broadcastable against ``x: (B, ...)``."""
    return t.reshape(t.shape[0], *([1] * (x.dim() - 1)))


def sample_time(
    n: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``n`` times uniform on ``[0, 1)`` -> ``(n,)``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}.")
    return torch.rand(n, device=device, dtype=dtype, generator=generator)


def _check_pair(x0: Tensor, x1: Tensor) -> None:
    if not isinstance(x0, torch.Tensor) or not isinstance(x1, torch.Tensor):
        raise TypeError(f"x0 and x1 must be tensors, got {type(x0)!r} and {type(x1)!r}.")
    for name, x in (("x0", x0), ("x1", x1)):
        if not x.is_floating_point():
            raise TypeError(
                f"{name} must be a floating-point tensor, got dtype {x.dtype}; convert it with "
                f"{name}.float() (integer pixels: also scale them, e.g. {name}.float() / 255)."
            )
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape (paired samples), got {tuple(x0.shape)} and "
            f"{tuple(x1.shape)}; pair them first (e.g. with torchuot.couplings.PlanSampler)."
        )


def interpolate(
    x0: Tensor, x1: Tensor, t: Tensor, sigma: float = 0.0, generator: torch.Generator | None = None
) -> Tensor:
    """The interpolant ``x_t = (1 - t) x0 + t x1 + sigma z``.

    Args:
        x0: ``(B, ...)`` source samples. x1: ``(B, ...)`` paired target samples.
        t: ``(B,)`` times in ``[0, 1]``.
        sigma: standard deviation of the Gaussian noise around the straight path.
        generator: ``torch.Generator`` for the noise.

    Returns:
        ``(B, ...)``.
    """
    _check_pair(x0, x1)
    if t.dim() != 1 or t.shape[0] != x0.shape[0]:
        raise ValueError(f"t must have shape ({x0.shape[0]},), got {tuple(t.shape)}.")
    if sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma!r}.")
    tt = _expand(t, x0)
    xt = (1 - tt) * x0 + tt * x1
    if sigma > 0:
        xt = xt + sigma * torch.randn(x0.shape, device=x0.device, dtype=x0.dtype, generator=generator)
    return xt


def target_velocity(x0: Tensor, x1: Tensor) -> Tensor:
    """Conditional velocity of the straight interpolant, ``u_t = x1 - x0`` -> ``(B, ...)``."""
    _check_pair(x0, x1)
    return x1 - x0


def cfm_loss(
    v: VelocityField,
    x0: Tensor,
    x1: Tensor,
    *,
    sigma: float = 0.0,
    t: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Conditional flow-matching loss ``E_t |v(t, x_t) - (x1 - x0)|^2`` (mean over entries).

    Args:
        v: velocity field ``v(t: (B,), x: (B, ...)) -> (B, ...)``.
        x0, x1: ``(B, ...)`` paired samples (after the coupling).
        sigma: interpolant noise.
        t: ``(B,)`` times (drawn uniformly when ``None``).
        generator: for ``t`` and the noise.

    Returns:
        Scalar loss.
    """
    _check_pair(x0, x1)
    if t is None:
        t = sample_time(x0.shape[0], device=x0.device, dtype=x0.dtype, generator=generator)
    xt = interpolate(x0, x1, t, sigma, generator)
    return _regression_loss(v, t, xt, target_velocity(x0, x1))


def _regression_loss(v: VelocityField, t: Tensor, xt: Tensor, ut: Tensor) -> Tensor:
    """``mean |v(t, x_t) - u_t|^2`` with a clear error when ``v`` returns the wrong shape."""
    pred = v(t, xt)
    if pred.shape != xt.shape:
        raise ValueError(
            f"the velocity field returned shape {tuple(pred.shape)}, expected {tuple(xt.shape)}."
        )
    return (pred - ut).pow(2).mean()


def odeint(
    v: VelocityField,
    x0: Tensor,
    *,
    t0: float = 0.0,
    t1: float = 1.0,
    steps: int = 20,
    method: str = "euler",
    return_trajectory: bool = False,
    rtol: float = 1e-5,
    atol: float = 1e-5,
) -> Tensor:
    """Integrate ``dx/dt = v(t, x)`` from ``t0`` to ``t1``.

    Args:
        v: velocity field ``v(t: (B,), x: (B, ...)) -> (B, ...)``.
        x0: ``(B, ...)`` initial state.
        steps: fixed steps for ``"euler"``/``"midpoint"``; for ``"dopri5"`` (adaptive,
            through ``torchdiffeq``) the number of output intervals of the trajectory.
        method: ``"euler"``, ``"midpoint"`` or ``"dopri5"`` (needs ``torchdiffeq``).
        return_trajectory: return all states ``(steps + 1, B, ...)`` instead of the last.
        rtol, atol: tolerances of ``dopri5``.

    Returns:
        ``(B, ...)`` at ``t1``, or ``(steps + 1, B, ...)`` with ``return_trajectory=True``.
    """
    if method not in ODE_METHODS:
        raise ValueError(f"method must be one of {ODE_METHODS}, got {method!r}.")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    if not isinstance(x0, torch.Tensor) or x0.dim() < 1:
        raise TypeError(f"x0 must be a tensor of shape (B, ...), got {type(x0)!r}.")
    if not x0.is_floating_point():
        raise TypeError(f"x0 must be a floating-point tensor, got dtype {x0.dtype}; use x0.float().")
    B = x0.shape[0]
    times = torch.linspace(t0, t1, steps + 1, dtype=x0.dtype, device=x0.device)

    def field(t: Tensor, x: Tensor) -> Tensor:
        out = v(t.expand(B), x)
        # A velocity of another shape would broadcast silently (e.g. (B, 1) over (B, D)).
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)
            raise ValueError(
                f"the velocity field must return a tensor of the state's shape {tuple(x.shape)}, "
                f"got {got}."
            )
        return out

    if method == "dopri5":
        try:
            from torchdiffeq import odeint as _tdq_odeint
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError("method='dopri5' needs torchdiffeq: pip install torchdiffeq") from err
        traj = _tdq_odeint(field, x0, times, method="dopri5", rtol=rtol, atol=atol)
        return traj if return_trajectory else traj[-1]

    x = x0
    out = [x0] if return_trajectory else None
    for k in range(steps):
        t, h = times[k], times[k + 1] - times[k]
        if method == "euler":
            x = x + h * field(t, x)
        else:
            x_mid = x + 0.5 * h * field(t, x)
            x = x + h * field(t + 0.5 * h, x_mid)
        if out is not None:
            out.append(x)
    return torch.stack(out) if out is not None else x


class ConditionalFlowMatcher:
    """Minibatch (UOT-)conditional flow matching in one object, TorchCFM style.

    ``ConditionalFlowMatcher(sigma)`` keeps the pairs it is given (TorchCFM's
    ``ConditionalFlowMatcher``, I-CFM); ``coupling="ot"`` re-pairs each minibatch by the entropic
    OT plan (``ExactOptimalTransportConditionalFlowMatcher`` with a Sinkhorn plan; ``"exact"``
    uses POT's exact one), ``coupling="uot"`` by the unbalanced plan (UOT-FM, Eyring et al. 2024).
    A :class:`~torchuot.couplings.PlanSampler` may be passed instead of a name; keyword
    arguments go to the ``PlanSampler`` (``eps``, ``tau_a``, ``tau_b``, ``reach``, ...).

    Args:
        sigma: standard deviation of the noise around the straight path (constant in ``t``).
        coupling: ``None`` (pairs as given), ``"independent"``, ``"ot"``, ``"uot"``, ``"exact"``
            or a ``PlanSampler``.
    """

    def __init__(self, sigma: float = 0.0, coupling: str | PlanSampler | None = None,
                 **coupling_kwargs: object) -> None:
        if not isinstance(sigma, (int, float)) or not sigma >= 0:
            raise ValueError(f"sigma must be a non-negative number, got {sigma!r}.")
        if isinstance(coupling, PlanSampler):
            if coupling_kwargs:
                raise ValueError("pass the coupling's settings to its PlanSampler, not here as well.")
            self.sampler: PlanSampler | None = coupling
        elif coupling is None:
            if coupling_kwargs:
                raise ValueError(
                    f"coupling=None keeps the given pairs; unexpected settings {sorted(coupling_kwargs)}."
                )
            self.sampler = None
        else:
            self.sampler = PlanSampler(coupling, **coupling_kwargs)  # type: ignore[arg-type]
        self.sigma = float(sigma)

    def __repr__(self) -> str:
        return f"ConditionalFlowMatcher(sigma={self.sigma:g}, coupling={self.sampler!r})"

    def sample_location_and_conditional_flow(
        self,
        x0: Tensor,
        x1: Tensor,
        t: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        return_noise: bool = False,
        return_pairs: bool = False,
    ) -> tuple[Tensor, ...]:
        """Pair the batches (if a coupling is set), draw ``t`` and ``x_t``, and the target velocity.

        Args:
            x0: ``(n, ...)`` source batch. x1: ``(n, ...)`` target batch (``(m, ...)`` with a
                coupling: ``n`` pairs are drawn from the plan).
            t: ``(n,)`` times (uniform on ``[0, 1)`` when ``None``).
            generator: for the pairs, ``t`` and the noise.
            return_noise: also return the noise ``z`` (``x_t = mu_t + sigma z``).
            return_pairs: also return the source and target indices ``(i, j)`` of the pairs (to
                carry labels or weights along), ``arange(n)`` twice without a coupling.

        Returns:
            ``(t, x_t, u_t)``, then ``z`` and then ``i, j`` when asked for.
        """
        if self.sampler is None:
            _check_pair(x0, x1)
            i = j = torch.arange(x0.shape[0], device=x0.device)
            y0, y1 = x0, x1
        else:
            s = self.sampler.sample(x0, x1, generator=generator)
            i, j = s.i, s.j
            y0, y1 = x0[i], x1[j]
        n = y0.shape[0]
        if t is None:
            t = sample_time(n, device=y0.device, dtype=y0.dtype, generator=generator)
        elif t.dim() != 1 or t.shape[0] != n:
            raise ValueError(f"t must have shape ({n},), got {tuple(t.shape)}.")
        tt = _expand(t, y0)
        z = torch.randn(y0.shape, device=y0.device, dtype=y0.dtype, generator=generator)
        xt = (1 - tt) * y0 + tt * y1 + self.sigma * z
        out: tuple[Tensor, ...] = (t, xt, y1 - y0)
        if return_noise:
            out += (z,)
        if return_pairs:
            out += (i, j)
        return out

    def loss(self, v: VelocityField, x0: Tensor, x1: Tensor, *, generator: torch.Generator | None = None
             ) -> Tensor:
        """Flow-matching loss ``mean |v(t, x_t) - u_t|^2`` on one minibatch -> scalar."""
        t, xt, ut = self.sample_location_and_conditional_flow(x0, x1, generator=generator)
        return _regression_loss(v, t, xt, ut)
