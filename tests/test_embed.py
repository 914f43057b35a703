"""torchuot.embed against closed forms and scikit-learn's manifold learners."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from torchuot.embed import classical_mds, estimate_dimension, isomap, laplacian_eigenmaps, mds, tsne

F64 = torch.float64


def _procrustes_gap(X: torch.Tensor, Y: np.ndarray) -> float:
    """Relative distance between two embeddings after the best orthogonal alignment."""
    X = X.numpy() - X.numpy().mean(0)
    Y = Y - Y.mean(0)
    U, _, Vt = np.linalg.svd(X.T @ Y)
    return float(np.linalg.norm(X @ U @ Vt - Y) / np.linalg.norm(Y))


@pytest.fixture
def plane_points(gen):
    """A 2D point set isometrically embedded in 5D (distances are exactly Euclidean 2D)."""
    P = torch.rand(60, 2, generator=gen, dtype=F64) * 4
    Q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=F64))
    return P, P @ Q[:2]


def test_classical_and_smacof_mds_recover_a_flat_configuration(plane_points):
    P, X5 = plane_points
    D = torch.cdist(X5, X5)
    for emb in (classical_mds(D, 2), mds(D, 2)):
        torch.testing.assert_close(torch.cdist(emb, emb), D, atol=1e-6, rtol=1e-6)


def test_smacof_matches_sklearn_stress(gen):
    manifold = pytest.importorskip("sklearn.manifold")
    X = torch.randn(40, 6, generator=gen, dtype=F64)
    D = torch.cdist(X, X)
    ours = mds(D, 2, max_iter=500, tol=1e-9)
    stress = float(((torch.cdist(ours, ours) - D) ** 2).sum() / 2)
    _, ref_stress = manifold.smacof(D.numpy(), n_components=2, init=classical_mds(D, 2).numpy(), n_init=1,
                                    max_iter=500, eps=1e-9, metric=True, normalized_stress=False)
    assert stress == pytest.approx(float(ref_stress), rel=1e-3)


def test_isomap_matches_sklearn_on_a_swiss_roll():
    datasets = pytest.importorskip("sklearn.datasets")
    manifold = pytest.importorskip("sklearn.manifold")
    X, _ = datasets.make_swiss_roll(150, random_state=0)
    D = torch.cdist(torch.tensor(X), torch.tensor(X))
    ours = isomap(D, 2, n_neighbors=8)
    ref = manifold.Isomap(n_neighbors=8, n_components=2, metric="precomputed").fit_transform(D.numpy())
    assert _procrustes_gap(ours, ref) < 1e-6


def test_laplacian_eigenmaps_matches_sklearn_spectral_embedding(plane_points):
    manifold = pytest.importorskip("sklearn.manifold")
    _, X5 = plane_points
    D = torch.cdist(X5, X5)
    ours = laplacian_eigenmaps(D, 2, n_neighbors=8, sigma=1.0)
    # the same affinity matrix, handed to sklearn
    from torchuot.embed import knn_graph

    A = torch.where(knn_graph(D, 8), torch.exp(-D ** 2 / 2), torch.zeros_like(D)).numpy()
    ref = manifold.SpectralEmbedding(2, affinity="precomputed", random_state=0).fit_transform(A)
    # same subspace: each of our columns is explained by sklearn's (least squares)
    for k in range(2):
        coef, *_ = np.linalg.lstsq(ref, ours[:, k].numpy(), rcond=None)
        resid = np.linalg.norm(ref @ coef - ours[:, k].numpy()) / np.linalg.norm(ours[:, k].numpy())
        assert resid < 1e-5


def test_tsne_separates_clusters_and_is_reproducible():
    metrics = pytest.importorskip("sklearn.metrics")
    manifold = pytest.importorskip("sklearn.manifold")
    g = torch.Generator().manual_seed(1)
    centers = torch.randn(3, 10, generator=g, dtype=F64) * 8
    X = torch.cat([c + torch.randn(30, 10, generator=g, dtype=F64) for c in centers])
    labels = np.repeat(np.arange(3), 30)
    D = torch.cdist(X, X)
    Y = tsne(D, 2, perplexity=15, n_iter=400, generator=torch.Generator().manual_seed(0))
    Y2 = tsne(D, 2, perplexity=15, n_iter=400, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(Y, Y2)
    assert metrics.silhouette_score(Y.numpy(), labels) > 0.7
    tw = manifold.trustworthiness(D.numpy(), Y.numpy(), n_neighbors=5, metric="precomputed")
    assert tw > 0.9


def test_estimate_dimension_of_flat_and_curved_sets(plane_points):
    _, X5 = plane_points
    assert estimate_dimension(torch.cdist(X5, X5), n_neighbors=10, alpha=0.95) == 2
    g = torch.Generator().manual_seed(0)
    t = torch.rand(80, generator=g, dtype=F64) * 2 * math.pi
    circle = torch.stack([t.cos(), t.sin(), torch.zeros_like(t)], 1)  # a curve: dimension 1
    assert estimate_dimension(torch.cdist(circle, circle), n_neighbors=6, alpha=0.9) == 1


@pytest.mark.parametrize(
    "fn, D, kw, err, match",
    [
        (mds, torch.ones(3, 4), {}, ValueError, "square"),
        (mds, torch.tensor([[0.0, 1, 2], [1, 0, 1], [2, 1, 0]]), {"dim": 3}, ValueError, "dim"),
        (isomap, torch.full((4, 4), float("nan")), {}, ValueError, "NaN"),
        (tsne, -torch.ones(4, 4), {}, ValueError, "negative"),
        (laplacian_eigenmaps, torch.tensor([[0.0, 1, 2], [3, 0, 1], [2, 1, 0]]), {}, ValueError, "symmetric"),
        (estimate_dimension, torch.zeros(4, 4), {"alpha": 1.5, "n_neighbors": 2}, ValueError, "alpha"),
        (mds, [[0.0]], {}, TypeError, "D must be"),
    ],
)
def test_bad_inputs(fn, D, kw, err, match):
    with pytest.raises(err, match=match):
        fn(D, **kw)


def test_isomap_disconnected_graph_is_an_error():
    X = torch.cat([torch.zeros(5, 2), torch.full((5, 2), 100.0)]) + torch.arange(10.0)[:, None] * 0.01
    with pytest.raises(ValueError, match="disconnected"):
        isomap(torch.cdist(X, X), 2, n_neighbors=2)
