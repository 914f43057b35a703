r"""Joint MDS: unsupervised alignment by weighted MDS of two distance matrices at once.

Chen, Fan, Oliver, Borgwardt, "Unsupervised Manifold Alignment with Joint Multidimensional
Scaling" (ICLR 2023), written here from the paper. Given ``D_1: (N, N)``, ``D_2: (M, M)`` and
weights ``a: (N,)``, ``b: (M,)``, find ``Z_1: (N, d)``, ``Z_2: (M, d)`` and a coupling
``pi in Pi(a, b)`` minimising

    sum_{i,i'} a_i a_i' (D_1 - |z_i - z_i'|)^2 + sum_{j,j'} b_j b_j' (D_2 - |z_j - z_j'|)^2
        + 2 lam sum_{i,j} pi_ij |z_i - z_j|^2  -  eps H(pi),

i.e. the weighted stress of the joint configuration against the block dissimilarity
``[[D_1, 0], [0, D_2]]`` with block weights ``[[a a^T, lam pi], [lam pi^T, b b^T]]``: matched
points are pulled together. Block-coordinate descent:

1. ``pi_0``: entropic Gromov-Wasserstein between ``D_1`` and ``D_2`` (projected-gradient form of
   Peyre, Cuturi, Solomon 2016: repeated Sinkhorn on the linearised cost
   :func:`~torchuot.joint.ew_lambda.gw_linear_cost`);
2. ``Z``: classical MDS of each view, the second rotated onto the first by the
   ``pi_0``-weighted orthogonal Procrustes problem (:func:`procrustes`);
3. repeat: a few weighted SMACOF steps on ``Z`` (:func:`smacof`, Guttman transform with the
   weighted Laplacian; de Leeuw 1977), then ``pi`` = the entropic OT plan for the cost
   ``|z_i - z_j|^2`` (:func:`torchuot.sinkhorn_from_cost`).

SMACOF steps never increase the objective; the OT step minimises it up to the entropy term
(exactly at ``eps -> 0``), so the recorded ``objective`` (without the entropy) is near-monotone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._typing import Tensor
from ..embed.manifold import _check_distances
from ..embed.manifold import classical_mds as _classical_mds
from ..sinkhorn import sinkhorn_from_cost
from .ew_lambda import gw_linear_cost

__all__ = ["JointMDSResult", "joint_mds", "smacof", "classical_mds", "procrustes",
           "entropic_gromov_wasserstein", "check_distance_matrix"]


def check_distance_matrix(D: object, name: str = "D") -> Tensor:
    """Validate a distance matrix: square ``(N, N)``, finite (no NaN), ``>= 0``, symmetric.

    Returns it as float64 (symmetrised to round-off). Raises ``TypeError`` / ``ValueError``
    naming ``name`` otherwise.
    """
    return _check_distances(D, name)


def classical_mds(D: Tensor, dim: int = 2) -> Tensor:
    """Torgerson MDS of ``D: (N, N)`` -> ``(N, dim)`` (:func:`torchuot.embed.classical_mds`)."""
    return _classical_mds(check_distance_matrix(D), dim)


def _check_weights(w: object, n: int, name: str, like: Tensor) -> Tensor:
    if w is None:
        return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != (n,):
        raise ValueError(f"{name} must be a tensor of shape ({n},), got {getattr(w, 'shape', type(w))}.")
    w = w.to(dtype=like.dtype, device=like.device)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()) or float(w.sum()) <= 0:
        raise ValueError(f"{name} must be finite, non-negative, with positive mass.")
    return w


def procrustes(X: Tensor, Y: Tensor, plan: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Orthogonal Procrustes: the rotation/reflection ``R`` minimising ``sum_ij P_ij |x_i - R y_j|^2``.

    Args:
        X: ``(N, d)``. Y: ``(M, d)``. plan: ``(N, M)`` non-negative weights ``P`` (``None``:
            ``N == M`` and row ``i`` of ``X`` matches row ``i`` of ``Y``).
    Returns:
        ``(R, Y_aligned)``: ``R: (d, d)`` orthogonal, ``Y_aligned = Y R^T: (M, d)``.
        Centring is the caller's business (pass centred points to solve the affine case).
    """
    for name, t in (("X", X), ("Y", Y)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point (n, d) tensor, got "
                            f"{getattr(t, 'shape', type(t))}.")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf values.")
    if X.shape[1] != Y.shape[1]:
        raise ValueError(f"X and Y must share the dimension d, got {X.shape[1]} and {Y.shape[1]}.")
    if plan is None:
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"without a plan X and Y must have the same number of rows, got "
                             f"{X.shape[0]} and {Y.shape[0]}.")
        H = X.T @ Y
    else:
        if not isinstance(plan, torch.Tensor) or tuple(plan.shape) != (X.shape[0], Y.shape[0]):
            raise ValueError(f"plan must have shape ({X.shape[0]}, {Y.shape[0]}), got "
                             f"{getattr(plan, 'shape', type(plan))}.")
        H = X.T @ plan.to(X.dtype) @ Y
    U, _, Vh = torch.linalg.svd(H)
    R = U @ Vh  # argmax_R tr(R^T H) over O(d)
    return R, Y @ R.T


def smacof(D: Tensor, W: Tensor, init: Tensor, *, max_iter: int = 100, tol: float = 1e-7
           ) -> tuple[Tensor, Tensor]:
    """Weighted SMACOF: minimise ``sigma(Z) = sum_{i<j} W_ij (D_ij - |z_i - z_j|)^2``.

    Guttman transform ``Z <- V^+ B(Z) Z`` with ``V = diag(W 1) - W`` and
    ``B_ij = -W_ij D_ij / |z_i - z_j|`` (0 where the points coincide), ``B_ii = -sum_j B_ij``
    (de Leeuw 1977; Borg & Groenen, Modern MDS, Sec. 8.6). The stress never increases.

    Args:
        D: ``(n, n)`` symmetric dissimilarities (entries with ``W = 0`` are ignored).
        W: ``(n, n)`` symmetric non-negative weights (zero diagonal is implied).
        init: ``(n, d)`` starting configuration.
        max_iter, tol: stop when the relative stress decrease is below ``tol``.
    Returns:
        ``(Z: (n, d), stress)``.
    """
    n = D.shape[0]
    if tuple(W.shape) != (n, n) or init.dim() != 2 or init.shape[0] != n:
        raise ValueError(f"smacof: D, W must be ({n}, {n}) and init ({n}, d), got {tuple(D.shape)}, "
                         f"{tuple(W.shape)}, {tuple(init.shape)}.")
    W = W.clone()
    W.fill_diagonal_(0)
    V = torch.diag(W.sum(1)) - W
    ones = torch.full((n, n), 1.0 / n, dtype=W.dtype, device=W.device)
    V_pinv = torch.linalg.inv(V + ones) - ones  # V is a connected graph's Laplacian: null space 1
    Z = init.clone()

    def stress(Z: Tensor) -> Tensor:
        dZ = torch.cdist(Z, Z, compute_mode="donot_use_mm_for_euclid_dist")
        return (W * (D - dZ) ** 2).sum() / 2

    prev = stress(Z)
    for _ in range(max_iter):
        dZ = torch.cdist(Z, Z, compute_mode="donot_use_mm_for_euclid_dist")
        ratio = torch.where(dZ > 0, W * D / dZ.clamp_min(torch.finfo(dZ.dtype).tiny), torch.zeros_like(dZ))
        Bm = -ratio
        Bm.diagonal().copy_(ratio.sum(1) - ratio.diagonal())
        Z = V_pinv @ (Bm @ Z)
        cur = stress(Z)
        if float(prev - cur) <= tol * float(prev):
            prev = cur
            break
        prev = cur
    return Z, prev


def entropic_gromov_wasserstein(D1: Tensor, D2: Tensor, a: Tensor | None = None, b: Tensor | None = None,
                                *, eps: float = 5e-3, n_outer: int = 50, tol: float = 1e-6) -> Tensor:
    """Entropic GW coupling ``(N, M)`` for the square loss (Peyre, Cuturi, Solomon 2016, Prop. 2).

    Iterates ``pi <- Sinkhorn(2 G(pi), eps)`` with ``G = gw_linear_cost(D1, D2, pi)`` from the
    product coupling; stops when the plan changes by less than ``tol`` (max abs) or after
    ``n_outer`` iterations.
    """
    D1, D2 = check_distance_matrix(D1, "D1"), check_distance_matrix(D2, "D2")
    a = _check_weights(a, D1.shape[0], "a", D1)
    b = _check_weights(b, D2.shape[0], "b", D1)
    pi = a[:, None] * b[None, :]
    for _ in range(n_outer):
        C = 2 * gw_linear_cost(D1, D2, pi)
        # A linearisation point: marginals to ~1e-4 suffice; near-permutation plans converge slowly.
        new = sinkhorn_from_cost(C - C.min(), a, b, eps=eps, max_iter=1000, tol=1e-4,
                                 on_nonconvergence="ignore").plan()
        done = float((new - pi).abs().max()) < tol
        pi = new
        if done:
            break
    return pi


@dataclass(frozen=True)
class JointMDSResult:
    """Output of :func:`joint_mds`.

    Attributes:
        x_embedding: ``(N, d)``. y_embedding: ``(M, d)``. coupling: ``(N, M)`` final plan.
        objective: ``(n_iter,)`` the joint objective (stress + matching term) per iteration.
        n_iter: outer iterations done.
    """

    x_embedding: Tensor
    y_embedding: Tensor
    coupling: Tensor
    objective: Tensor
    n_iter: int


def joint_mds(D1: Tensor, D2: Tensor, a: Tensor | None = None, b: Tensor | None = None, *,
              n_components: int = 2, lam: float = 1.0, eps: float = 5e-3, gw_eps: float | None = None,
              n_iter: int = 30, smacof_iter: int = 10, tol: float = 1e-6) -> JointMDSResult:
    """Joint MDS of ``D1: (N, N)`` and ``D2: (M, M)`` into ``R^n_components`` (module docstring).

    Args:
        D1, D2: symmetric distance matrices (checked by :func:`check_distance_matrix`).
        a, b: ``(N,)``, ``(M,)`` weights (``None``: uniform, each summing to 1).
        n_components: embedding dimension ``d``.
        lam: weight of the matching term against the two stresses.
        eps: entropic regularisation of the OT step (units of ``|z - z'|^2``).
        gw_eps: regularisation of the GW initialisation (default ``eps``).
        n_iter: outer iterations; smacof_iter: Guttman steps per outer iteration.
        tol: stop when the relative objective decrease is below it.
    Returns:
        A :class:`JointMDSResult`.
    """
    D1, D2 = check_distance_matrix(D1, "D1"), check_distance_matrix(D2, "D2")
    N, M = D1.shape[0], D2.shape[0]
    nc = n_components
    if isinstance(nc, bool) or not isinstance(nc, int) or not 1 <= nc < min(N, M):
        raise ValueError(f"n_components must be an integer in [1, {min(N, M) - 1}], got {n_components!r}.")
    for name, v in (("lam", lam), ("eps", eps)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{name} must be a finite number > 0, got {v!r}.")
    a = _check_weights(a, N, "a", D1)
    b = _check_weights(b, M, "b", D1)
    pi = entropic_gromov_wasserstein(D1, D2, a, b, eps=eps if gw_eps is None else gw_eps)
    Z1 = classical_mds(D1, n_components)
    Z2 = classical_mds(D2, n_components)
    Z1, Z2 = Z1 - a @ Z1, Z2 - b @ Z2
    _, Z2 = procrustes(Z1, Z2, pi)
    Dj = torch.zeros(N + M, N + M, dtype=D1.dtype, device=D1.device)
    Dj[:N, :N], Dj[N:, N:] = D1, D2
    Wj = torch.zeros_like(Dj)
    Wj[:N, :N], Wj[N:, N:] = a[:, None] * a[None, :], b[:, None] * b[None, :]
    Z = torch.cat([Z1, Z2])
    objective = []
    for _ in range(n_iter):
        Wj[:N, N:] = lam * pi
        Wj[N:, :N] = lam * pi.T
        Z, value = smacof(Dj, Wj, Z, max_iter=smacof_iter)
        C = torch.cdist(Z[:N], Z[N:]).pow(2)
        pi = sinkhorn_from_cost(C, a, b, eps=eps, max_iter=1000, tol=1e-4, on_nonconvergence="ignore").plan()
        Wj[:N, N:] = lam * pi
        Wj[N:, :N] = lam * pi.T
        dZ = torch.cdist(Z, Z)
        objective.append((Wj * (Dj - dZ) ** 2).sum() / 2)
        if len(objective) > 1 and float(objective[-2] - objective[-1]) <= tol * abs(float(objective[-2])):
            break
    return JointMDSResult(Z[:N], Z[N:], pi, torch.stack(objective), len(objective))
