"""EOT eigenmaps: shifted copies of a curve, the POT plan as reference, input checks."""

import numpy as np
import pytest
import torch

from torchuot.joint import eot_eigenmaps, foscttm, median_bandwidth


@pytest.fixture(autouse=True)
def _threads():
    """One intra-op thread (overrides conftest's): these tensors are small, and extra threads
    only add synchronisation -- on a machine shared with other jobs they stall (we measured a
    20-40x slowdown of the Sinkhorn sweeps with 2 threads under load)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.argsort().argsort().double()
    rb = b.argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def _curve_pair(n: int = 120, shift=(0.5, -0.3, 0.2), seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.rand(n, generator=g, dtype=torch.float64)

    def curve(t):  # a 1D helix segment in R^3
        return torch.stack([torch.cos(3 * t), torch.sin(3 * t), t], 1)

    x = curve(s) + 0.01 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = curve(s) + torch.tensor(shift, dtype=torch.float64) + 0.01 * torch.randn(n, 3, generator=g,
                                                                                  dtype=torch.float64)
    return s, x, y


def test_translated_curve_same_ordering_and_foscttm():
    s, x, y = _curve_pair()
    emb = eot_eigenmaps(x, y, n_components=2)
    assert emb.x_embedding.shape == (120, 2) and emb.y_embedding.shape == (120, 2)
    # The first non-trivial singular vector orders both copies along the curve parameter.
    # Bound: |Spearman| > 0.99 (we observe 0.9996 with this seed).
    assert abs(_spearman(s, emb.x_embedding[:, 0])) > 0.99
    assert abs(_spearman(s, emb.y_embedding[:, 0])) > 0.99
    # Same orientation for both sets: the singular vectors are shared.
    assert _spearman(emb.x_embedding[:, 0], emb.y_embedding[:, 0]) > 0.99
    assert float(foscttm(emb.x_embedding, emb.y_embedding)) < 0.03
    # First singular value of P = N M pi is sqrt(N M) (constant vectors), which is dropped.
    assert float(emb.singular_values[0]) == pytest.approx(120.0, rel=1e-6)


def test_matches_pot_sinkhorn_with_the_R_kernel():
    """Same Gaussian kernel exp(-d^2 / h^2) as EOTmap, balanced plan from POT, numpy SVD."""
    ot = pytest.importorskip("ot")
    _, x, y = _curve_pair(n=60, seed=1)
    emb = eot_eigenmaps(x, y, n_components=3, tol=1e-10)
    h = float(median_bandwidth(x[None], y[None])[0])
    assert float(emb.eps) == pytest.approx(h**2 / 2)
    d2 = torch.cdist(x, y).pow(2).numpy()
    a = np.full(60, 1 / 60)
    P = ot.sinkhorn(a, a, d2, reg=h**2, method="sinkhorn_log", numItermax=20000, stopThr=1e-13) * 3600
    U, S, Vt = np.linalg.svd(P)
    np.testing.assert_allclose(emb.singular_values.numpy(), S[:4], rtol=1e-6)
    for k in range(3):  # singular vectors up to sign
        ux = np.sqrt(60) * U[:, k + 1]
        sign = np.sign(ux @ emb.x_embedding[:, k].numpy())
        np.testing.assert_allclose(emb.x_embedding[:, k].numpy(), sign * ux, atol=1e-5)
        np.testing.assert_allclose(emb.y_embedding[:, k].numpy(), sign * np.sqrt(60) * Vt[k + 1], atol=1e-5)


def test_batched_equals_unbatched_and_eigengap_rule():
    _, x, y = _curve_pair(n=50, seed=2)
    single = eot_eigenmaps(x, y, n_components=2)
    both = eot_eigenmaps(torch.stack([x, x]), torch.stack([y, y]), n_components=2)
    assert both.x_embedding.shape == (2, 50, 2)
    for b in range(2):
        torch.testing.assert_close(both.x_embedding[b].abs(), single.x_embedding.abs(), atol=1e-6, rtol=0)
    auto = eot_eigenmaps(x, y, n_components=None)
    assert 1 <= auto.n_components <= 49
    assert auto.x_embedding.shape == (50, auto.n_components)
    diffused = eot_eigenmaps(x, y, n_components=2, t=1.0)
    torch.testing.assert_close(diffused.x_embedding, single.x_embedding * single.singular_values[1:3],
                               atol=1e-8, rtol=1e-6)


def test_input_errors():
    x = torch.randn(10, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="n_components"):
        eot_eigenmaps(x, x, n_components=10)
    with pytest.raises(ValueError, match="eps"):
        eot_eigenmaps(x, x, eps=-1.0)
    with pytest.raises(ValueError, match="t must be"):
        eot_eigenmaps(x, x, t=-1)
    with pytest.raises(ValueError, match="feature dimensions"):
        eot_eigenmaps(x, torch.randn(10, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="both be batched"):
        eot_eigenmaps(x[None], x)
    with pytest.raises(ValueError, match="median cross distance is 0"):
        eot_eigenmaps(torch.zeros(10, 2), torch.zeros(10, 2))
