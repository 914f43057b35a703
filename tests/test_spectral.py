"""Spectral gauges: projected costs, lambda_max / Ky-Fan subspace-robust W2, trace gauge = W2."""

from __future__ import annotations

import math

import ot
import pytest
import torch

from torchuot.sliced import max_sliced_wasserstein, wasserstein_1d
from torchuot.spectral import (
    SubspaceRobustLoss,
    displacement_matrix,
    projected_wasserstein,
    subspace_robust_wasserstein,
)

DT = torch.float64


def _clouds(gen, N=15, M=15):
    x = torch.randn(N, 3, generator=gen, dtype=DT) * torch.tensor([1.0, 0.6, 0.3], dtype=DT)
    y = torch.randn(M, 3, generator=gen, dtype=DT) * 0.5 + torch.tensor([0.4, 0.0, 0.0], dtype=DT)
    return x, y


def test_displacement_matrix_matches_brute_force(gen):
    x, y = _clouds(gen, 6, 4)
    P = torch.rand(6, 4, generator=gen, dtype=DT)
    d = x[:, None, :] - y[None, :, :]
    ref = torch.einsum("ij,ijk,ijl->kl", P, d, d)
    torch.testing.assert_close(displacement_matrix(x, y, P), ref)


def test_trace_gauge_equals_w2(gen):
    x, y = _clouds(gen)
    eps = 0.05
    res = subspace_robust_wasserstein(x, y, k=3, eps=eps)
    M = ot.dist(x, y)
    a = torch.full((15,), 1 / 15, dtype=DT)
    # Trace gauge = entropic W2 with cost |x - y|^2: POT's Sinkhorn at the same eps is the reference.
    ref_cost = ot.sinkhorn2(a, a, M, reg=eps, stopThr=1e-12, numItermax=100000)
    torch.testing.assert_close(res.value, ref_cost, rtol=1e-6, atol=0)
    torch.testing.assert_close(res.Omega, torch.eye(3, dtype=DT))
    torch.testing.assert_close(res.upper, res.value.detach(), rtol=1e-12, atol=0)
    proj = projected_wasserstein(x, y, torch.eye(3, dtype=DT), eps=eps)
    torch.testing.assert_close(proj.transport_cost, res.value.detach(), rtol=1e-9, atol=0)
    # And the unregularised W2: 0 <= <pi_eps, C> - W2^2 <= eps KL(pi* | a x b) = eps log N.
    w2 = float(ot.emd2(a, a, M))
    assert 0 <= float(res.value) - w2 <= eps * math.log(15)


def test_rank_one_projected_cost_is_sliced_w2(gen):
    x, y = _clouds(gen)
    theta = torch.tensor([0.6, 0.8, 0.0], dtype=DT)
    eps = 0.01
    proj = projected_wasserstein(x, y, torch.outer(theta, theta), eps=eps)
    exact = float(wasserstein_1d(x @ theta, y @ theta))
    assert 0 <= float(proj.transport_cost) - exact <= eps * math.log(15)


def test_lambda_max_between_max_sliced_and_w2(gen):
    x, y = _clouds(gen)
    w2 = float(ot.emd2([], [], ot.dist(x, y)))
    ms = max_sliced_wasserstein(x, y, generator=gen, root=False)
    res = subspace_robust_wasserstein(x, y, k=1, eps=0.05, n_iter=15, tol=1e-4)
    # upper = lambda_max of a coupling's displacement matrix >= SRW_1^2 >= max-sliced.
    assert float(ms.value) <= float(res.upper) <= w2
    # At the returned gauge, the exact projected cost is a lower bound of SRW_1^2 <= upper,
    # and the ascent has closed the gap to a few percent.
    d = x[:, None, :] - y[None, :, :]
    C_om = torch.einsum("ijk,kl,ijl->ij", d, res.Omega, d)
    lower = float(ot.emd2([], [], C_om))
    assert lower <= float(res.upper) and (float(res.upper) - lower) <= 0.05 * float(res.upper)
    assert lower <= w2
    lam = torch.linalg.eigvalsh(res.Omega)
    assert float(lam.min()) >= -1e-12 and float(lam.max()) <= 1 + 1e-12
    torch.testing.assert_close(torch.trace(res.Omega), torch.tensor(1.0, dtype=DT))
    # Ky-Fan-2 lies between lambda_max and the trace.
    res2 = subspace_robust_wasserstein(x, y, k=2, eps=0.05, n_iter=5)
    assert float(res.value) <= float(res2.upper) + 1e-12


def test_gradient_and_loss(gen):
    x, y = _clouds(gen, 8, 8)
    xg = x.clone().requires_grad_(True)
    res = subspace_robust_wasserstein(xg, y, k=1, eps=0.1, n_iter=5)
    res.value.backward()
    # Envelope gradient: 2 sum_j pi_ij Omega (x_i - y_j).
    d = x[:, None, :] - y[None, :, :]
    ref = 2 * torch.einsum("ij,kl,ijl->ik", res.plan, res.Omega, d)
    torch.testing.assert_close(xg.grad, ref)
    loss = SubspaceRobustLoss(k=1, eps=0.1, n_iter=3, reduction="none")
    out = loss(torch.stack([x, x]), torch.stack([y, y + 1]))
    assert out.shape == (2,) and float(out[1]) > float(out[0])


def test_errors(gen):
    x, y = _clouds(gen, 5, 5)
    with pytest.raises(ValueError, match="positive semi-definite"):
        projected_wasserstein(x, y, -torch.eye(3, dtype=DT))
    with pytest.raises(ValueError, match="symmetric"):
        projected_wasserstein(x, y, torch.triu(torch.ones(3, 3, dtype=DT)))
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        projected_wasserstein(x, y, torch.eye(2, dtype=DT))
    with pytest.raises(ValueError, match="k must"):
        subspace_robust_wasserstein(x, y, k=4)
    with pytest.raises(ValueError, match="one pair"):
        subspace_robust_wasserstein(x[None], y[None])
    with pytest.raises(ValueError, match="Omega0"):
        subspace_robust_wasserstein(x, y, k=1, Omega0=torch.eye(3, dtype=DT))


def test_frank_wolfe_agrees_with_gradient_ascent(gen):
    x, y = _clouds(gen, 8, 8)
    fw = subspace_robust_wasserstein(x, y, k=1, eps=0.1, n_iter=25, method="frank_wolfe")
    pga = subspace_robust_wasserstein(x, y, k=1, eps=0.1, n_iter=25)
    # Both certify SRW_1^2 from above; each one's lower estimate sits below the other's upper.
    assert float(fw.value) <= float(pga.upper) + 1e-9 and float(pga.value) <= float(fw.upper) + 1e-9
    assert pga.gap <= fw.gap + 1e-12
