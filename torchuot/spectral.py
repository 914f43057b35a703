"""Spectral gauges of transport: projected costs and subspace-robust Wasserstein distances.

For a coupling ``pi`` the displacement second-moment matrix is
``V_pi = sum_ij pi_ij (x_i - y_j)(x_i - y_j)^T`` (``D x D``, PSD). A spectral gauge of ``V_pi``
gives a transport criterion (cost ``|x - y|^2``, no ``1/2``):

* the trace, ``tr V_pi = <pi, |x - y|^2>``: its minimum over couplings is ``W_2^2``;
* a fixed PSD ``A``: ``<A, V_pi> = <pi, (x - y)^T A (x - y)>``, the projected cost ``W_{2,A}^2``;
* the Ky-Fan ``k``-norm (sum of the ``k`` largest eigenvalues; ``k = 1``: ``lambda_max``):
  ``min_pi KyFan_k(V_pi) = max_{Omega in R_k} W_{2,Omega}^2`` with
  ``R_k = {0 <= Omega <= I, tr Omega = k}`` -- the subspace-robust Wasserstein distance
  ``SRW_k^2`` of Paty & Cuturi (ICML 2019, Thm. 1 and Eq. 5), the convexified version of the
  worst ``k``-dim projection.

Ordering (``k = 1``): ``max-sliced W_2^2 <= SRW_1^2 <= W_2^2``, and ``SRW_D^2 = W_2^2``.

The max-min problem alternates an entropic plan ``pi(Omega)`` of the cost
``(x - y)^T Omega (x - y)`` (one :func:`torchuot.sinkhorn` solve on the points mapped by
``sqrt(2 Omega)``) with an update of ``Omega`` from the displacement matrix ``V_pi``: projected
gradient ascent ``Omega <- Proj_{R_k}(Omega + eta V_pi)`` (Paty & Cuturi, Alg. 2; default) or
Frank-Wolfe towards the top-``k`` eigenvectors ``U`` of ``V_pi`` (the worst directions),
``Omega <- (1 - gamma) Omega + gamma U U^T``, ``gamma = 2/(t + 2)`` (Sec. 5).
``<Omega, V_pi(Omega)>`` is the lower estimate, ``KyFan_k(V_pi)`` the upper one; their gap
is the stopping rule. ``eps`` is in the units of the cost ``|x - y|^2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ._typing import Tensor
from ._validation import as_points, as_weights, check_pair, check_positive
from .losses import _check_reduction, _reduce, _split_args
from .sinkhorn import sinkhorn

__all__ = [
    "displacement_matrix",
    "projected_wasserstein",
    "ProjectedResult",
    "subspace_robust_wasserstein",
    "SRWResult",
    "SubspaceRobustLoss",
]


def displacement_matrix(x: Tensor, y: Tensor, plan: Tensor) -> Tensor:
    """``V = sum_ij pi_ij (x_i - y_j)(x_i - y_j)^T`` -> ``(D, D)`` without forming ``N x M x D``.

    Args:
        x: ``(N, D)``. y: ``(M, D)``. plan: ``(N, M)``.
    """
    r, c = plan.sum(1), plan.sum(0)
    xpy = x.T @ (plan @ y)  # sum_ij pi_ij x_i y_j^T
    return (x.T * r) @ x + (y.T * c) @ y - xpy - xpy.T


def _sqrt_psd(A: Tensor) -> Tensor:
    """``L`` with ``L L^T = A`` for symmetric PSD ``A`` (eigenvalues clamped at 0)."""
    lam, U = torch.linalg.eigh(0.5 * (A + A.T))
    return U * lam.clamp_min(0).sqrt()


def _check_problem(x, y, a, b):
    xb, bx = as_points(x, "x")
    yb, by = as_points(y, "y")
    if bx or by:
        raise ValueError(
            f"spectral functions take one pair of clouds (N, D), (M, D); got shapes {tuple(x.shape)} "
            f"and {tuple(y.shape)} (loop over the batch, or use SubspaceRobustLoss)."
        )
    check_pair(xb, yb)
    ab = as_weights(a, xb, "a", "x")[0]
    bb = as_weights(b, yb, "b", "y")[0]
    return xb[0], yb[0], ab, bb


def _check_psd(A: object, D: int, dtype, device) -> Tensor:
    if not isinstance(A, torch.Tensor) or A.shape != (D, D):
        raise ValueError(f"A must be a ({D}, {D}) tensor, got {getattr(A, 'shape', type(A))}.")
    A = A.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(A).all()):
        raise ValueError("A contains NaN or inf entries.")
    if not torch.allclose(A, A.T, rtol=1e-6, atol=1e-8 * float(A.abs().max().clamp_min(1))):
        raise ValueError("A must be symmetric (a PSD matrix).")
    lam_min = float(torch.linalg.eigvalsh(A).min())
    if lam_min < -1e-8 * float(A.abs().max().clamp_min(1)):
        raise ValueError(f"A must be positive semi-definite, its smallest eigenvalue is {lam_min:.3g}.")
    return A


def _project_capped_simplex(lam: Tensor, k: int) -> Tensor:
    """Euclidean projection of eigenvalues onto ``{0 <= l <= 1, sum l = k}`` (bisection on a shift)."""
    lo, hi = float(lam.min()) - 1.0, float(lam.max())
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if float((lam - mid).clamp(0, 1).sum()) > k:
            lo = mid
        else:
            hi = mid
    return (lam - 0.5 * (lo + hi)).clamp(0, 1)


def _plan_for(x: Tensor, y: Tensor, a: Tensor, b: Tensor, L: Tensor, eps: float, kw: dict):
    # (x - y)^T A (x - y) = |sqrt2 L^T x - sqrt2 L^T y|^2 / 2: the library's default cost on mapped
    # points, so eps keeps the units of the projected cost.
    s = 2.0**0.5
    return sinkhorn((s * x) @ L, (s * y) @ L, a, b, eps=eps, **kw)


@dataclass(frozen=True)
class ProjectedResult:
    """Output of :func:`projected_wasserstein`.

    Attributes:
        value: entropic ``W_{2,A,eps}^2`` (``<pi, C_A> + eps KL(pi | a x b)``), differentiable.
        transport_cost: ``<pi, C_A>`` of the entropic plan (detached).
        plan: ``(N, M)`` dense entropic plan (detached).
    """

    value: Tensor
    transport_cost: Tensor
    plan: Tensor


def projected_wasserstein(
    x: Tensor,
    y: Tensor,
    A: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    eps: float = 1e-2,
    **sinkhorn_kwargs: object,
) -> ProjectedResult:
    """Entropic projected cost ``W_{2,A}^2 = min_pi <pi, (x - y)^T A (x - y)>`` for PSD ``A``.

    Args:
        x: ``(N, D)``. y: ``(M, D)``. A: ``(D, D)`` symmetric PSD.
        a, b: weights of equal mass (default uniform). eps: entropic strength (cost units).
        **sinkhorn_kwargs: passed to :func:`torchuot.sinkhorn` (e.g. ``max_iter``, ``tol``).

    Returns:
        A :class:`ProjectedResult`. ``A = I`` gives entropic ``W_2^2`` with cost ``|x - y|^2``.
    """
    xb, yb, ab, bb = _check_problem(x, y, a, b)
    eps = check_positive(eps, "eps")  # type: ignore[assignment]
    A = _check_psd(A, xb.shape[1], xb.dtype, xb.device)
    res = _plan_for(xb, yb, ab, bb, _sqrt_psd(A), eps, sinkhorn_kwargs)
    P = res.plan().detach()
    tc = (A * displacement_matrix(xb.detach(), yb.detach(), P)).sum()
    return ProjectedResult(value=res.value, transport_cost=tc, plan=P)


@dataclass(frozen=True)
class SRWResult:
    """Output of :func:`subspace_robust_wasserstein`.

    Attributes:
        value: ``<Omega, V_pi>`` at the returned ``Omega`` and its entropic plan: the
            transport cost of ``pi`` under ``Omega`` (an estimate of ``SRW_k^2`` from below
            up to the entropic bias), differentiable in ``x, y`` with ``pi`` and ``Omega``
            held fixed (envelope theorem).
        upper: ``min_t KyFan_k(V_{pi_t})`` over the iterates: the gauge of a feasible plan,
            an upper bound of ``SRW_k^2`` (for exact-marginal plans).
        Omega: ``(D, D)`` the maximising gauge matrix (``0 <= Omega <= I``, ``tr Omega = k``).
        directions: ``(D, k)`` top eigenvectors of ``V_pi`` (the worst subspace).
        plan: ``(N, M)`` the entropic plan at ``Omega`` (detached).
        n_iter: outer iterations done. gap: ``upper - lower`` at exit.
    """

    value: Tensor
    upper: Tensor
    Omega: Tensor
    directions: Tensor
    plan: Tensor
    n_iter: int
    gap: float


def subspace_robust_wasserstein(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    k: int = 1,
    eps: float = 1e-2,
    n_iter: int = 50,
    tol: float = 1e-3,
    Omega0: Tensor | None = None,
    method: str = "gradient",
    step_size: float = 0.5,
    **sinkhorn_kwargs: object,
) -> SRWResult:
    """Subspace-robust ``SRW_k^2`` (Ky-Fan-``k`` gauge; ``k = 1``: the ``lambda_max`` gauge).

    Args:
        x: ``(N, D)``. y: ``(M, D)``. a, b: weights of equal mass (default uniform).
        k: subspace dimension, ``1 <= k <= D``; ``k = D`` is ``W_2^2`` (trace gauge).
        eps: entropic strength of each plan, in units of ``|x - y|^2``.
        n_iter: outer (plan, gauge) iterations. tol: stop when ``upper - lower <= tol * upper``.
        Omega0: ``(D, D)`` starting gauge in ``R_k`` (default ``(k/D) I``).
        method: ``"gradient"`` (projected gradient ascent, Paty & Cuturi 2019, Alg. 2; the
            default, much faster in practice) or ``"frank_wolfe"`` (Sec. 5 of the same).
        step_size: gradient step relative to ``1 / lambda_max(V)`` (halved on overshoot).
        **sinkhorn_kwargs: passed to each :func:`torchuot.sinkhorn` solve.

    Returns:
        An :class:`SRWResult`.
    """
    xb, yb, ab, bb = _check_problem(x, y, a, b)
    D = xb.shape[1]
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= D:
        raise ValueError(f"k must be an integer in [1, D={D}], got {k!r}.")
    eps = check_positive(eps, "eps")  # type: ignore[assignment]
    check_positive(tol, "tol")
    check_positive(step_size, "step_size")
    if method not in ("gradient", "frank_wolfe"):
        raise ValueError(f"method must be 'gradient' or 'frank_wolfe', got {method!r}.")
    if not isinstance(n_iter, int) or n_iter < 1:
        raise ValueError(f"n_iter must be a positive integer, got {n_iter!r}.")
    xd, yd = xb.detach(), yb.detach()
    eye = torch.eye(D, dtype=xb.dtype, device=xb.device)
    if Omega0 is None:
        Om = eye * (k / D)
    else:
        Om = _check_psd(Omega0, D, xb.dtype, xb.device)
        if abs(float(torch.trace(Om)) - k) > 1e-6 * k or float(torch.linalg.eigvalsh(Om).max()) > 1 + 1e-6:
            raise ValueError(f"Omega0 must satisfy 0 <= Omega0 <= I and trace(Omega0) = k = {k}.")
    upper = torch.tensor(float("inf"), dtype=xb.dtype, device=xb.device)
    gap, t, step, last_lower = float("inf"), 0, float(step_size), -float("inf")
    for t in range(1, n_iter + 1):
        with torch.no_grad():
            Om_eval = Om  # the gauge that P is optimal for (returned with it)
            P = _plan_for(xd, yd, ab.detach(), bb.detach(), _sqrt_psd(Om), eps, sinkhorn_kwargs).plan()
            V = displacement_matrix(xd, yd, P)
            lam, U = torch.linalg.eigh(0.5 * (V + V.T))
            top = U[:, -k:]
            upper = torch.minimum(upper, lam[-k:].sum())
            lower = float((Om * V).sum())
            gap = float(upper) - lower
            if k == D or gap <= tol * float(upper):
                break
            if method == "frank_wolfe":
                gamma = 2.0 / (t + 2.0)
                Om = (1 - gamma) * Om + gamma * (top @ top.T)
            else:
                # Projected gradient ascent on the (smooth, concave) entropic objective; the
                # step is relative to the gradient's scale and halved whenever it overshoots.
                if lower < last_lower:
                    step *= 0.5
                last_lower = lower
                eta = step / float(lam[-1].clamp_min(torch.finfo(V.dtype).tiny))
                lam2, U2 = torch.linalg.eigh(Om + eta * V)
                Om = (U2 * _project_capped_simplex(lam2, k)) @ U2.T
    value = (Om_eval * displacement_matrix(xb, yb, P)).sum()
    return SRWResult(value=value, upper=upper, Omega=Om_eval, directions=top, plan=P, n_iter=t, gap=gap)


class SubspaceRobustLoss(nn.Module):
    """``SRW_k^2`` as a loss: ``loss(x, y)`` or ``loss(a, x, b, y)``; batched inputs loop over ``B``.

    Defaults as :func:`subspace_robust_wasserstein`."""

    def __init__(self, *, k: int = 1, eps: float = 1e-2, n_iter: int = 50, tol: float = 1e-3,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.k, self.eps, self.n_iter, self.tol = k, eps, n_iter, tol
        self.reduction = _check_reduction(reduction)

    def forward(self, *args: Tensor) -> Tensor:
        a, x, b, y = _split_args(args)
        kw = dict(k=self.k, eps=self.eps, n_iter=self.n_iter, tol=self.tol)
        if x.dim() == 2:
            return subspace_robust_wasserstein(x, y, a, b, **kw).value
        if x.dim() != 3 or y.dim() != 3:
            raise ValueError(f"x and y must be (N, D)/(M, D) or (B, N, D)/(B, M, D), got "
                             f"{tuple(x.shape)} and {tuple(y.shape)}.")
        vals = torch.stack([
            subspace_robust_wasserstein(x[i], y[i], None if a is None else a[i],
                                        None if b is None else b[i], **kw).value
            for i in range(x.shape[0])
        ])
        return _reduce(vals, self.reduction)
