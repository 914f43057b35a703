"""Joint MDS (issue 16): known answers and bad input."""

import math

import pytest
import torch

from torchuot.joint import (
    check_distance_matrix,
    entropic_gromov_wasserstein,
    foscttm,
    gw_linear_cost,
    joint_mds,
    procrustes,
    smacof,
)

F64 = torch.float64


def _points(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 2, generator=g, dtype=F64)


def test_procrustes_recovers_a_rotation_and_a_reflection():
    X = _points(15, 0)
    X = X - X.mean(0)
    th = 0.7
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=F64)
    for Q in (R, R @ torch.diag(torch.tensor([1.0, -1.0], dtype=F64))):
        Y = X @ Q.T                      # y_i = Q x_i
        Rhat, Y_al = procrustes(X, Y)
        torch.testing.assert_close(Rhat, Q.T)
        torch.testing.assert_close(Y_al, X)
    with pytest.raises(ValueError, match="plan"):
        procrustes(X, X, torch.ones(3, 3, dtype=F64))


def test_smacof_reaches_zero_stress_on_euclidean_distances():
    X = _points(12, 1)
    D = torch.cdist(X, X)
    W = torch.ones(12, 12, dtype=F64)
    init = X + 0.1 * torch.randn(12, 2, generator=torch.Generator().manual_seed(2), dtype=F64)
    Z, stress = smacof(D, W, init, max_iter=500, tol=1e-12)
    assert float(stress) < 1e-8
    torch.testing.assert_close(torch.cdist(Z, Z), D, atol=1e-4, rtol=0)


def test_joint_mds_aligns_a_permuted_copy():
    # Known answer: view 2 is view 1 with its rows shuffled. The coupling must find the
    # permutation, the embeddings must coincide pair by pair, and reproduce the distances.
    X = _points(20, 3)
    D = torch.cdist(X, X)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(4))
    inv = torch.argsort(perm)
    res = joint_mds(D, D[perm][:, perm], eps=1e-3, gw_eps=1e-2, lam=1.0, n_iter=5)
    assert torch.equal(res.coupling.argmax(1), inv)
    assert float(foscttm(res.x_embedding, res.y_embedding[inv])) == 0.0
    Zx = res.x_embedding
    torch.testing.assert_close(torch.cdist(Zx, Zx), D, atol=0.05, rtol=0)
    assert res.objective.shape == (res.n_iter,)


def test_gw_coupling_has_the_marginals_and_lowers_the_gw_energy():
    X = _points(15, 5)
    D = torch.cdist(X, X)
    a = torch.full((15,), 1 / 15, dtype=F64)
    pi = entropic_gromov_wasserstein(D, D, eps=1e-2)
    # marginals to the inner Sinkhorn's tolerance (potentials stop moving by 1e-4 eps)
    torch.testing.assert_close(pi.sum(1), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(pi.sum(0), a, atol=1e-5, rtol=0)

    def energy(p):
        return float((gw_linear_cost(D, D, p) * p).sum())

    product = a[:, None] * a[None, :]
    assert energy(pi) < 0.2 * energy(product)


def test_bad_distance_matrices_raise():
    X = _points(6, 7)
    D = torch.cdist(X, X)
    with pytest.raises(ValueError, match="square"):
        check_distance_matrix(D[:, :5])
    bad = D.clone()
    bad[0, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        check_distance_matrix(bad, "D1")
    asym = D.clone()
    asym[0, 1] += 1.0
    with pytest.raises(ValueError, match="D2 is not symmetric"):
        joint_mds(D, asym)
    with pytest.raises(ValueError, match="negative"):
        check_distance_matrix(-D)
    with pytest.raises(ValueError, match="shape"):
        joint_mds(D, D, a=torch.full((5,), 0.2, dtype=F64))   # weights of the wrong size
    with pytest.raises(ValueError, match="n_components"):
        joint_mds(D, D, n_components=6)
    with pytest.raises(TypeError, match="D"):
        check_distance_matrix([[0.0]])
