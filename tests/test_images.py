"""torchuot.images: closed forms, agreement with pair-by-pair torchuot and POT, blocks and resume."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import torchuot
from torchuot.images import grid_coordinates, images_to_measures, merge_partial, pairwise_distances
from training.datasets import load_mnist

F64 = torch.float64


def _dirac(shape, pos, mass):
    img = torch.zeros(shape, dtype=F64)
    img[pos] = mass
    return img


def _disk(shape, center, radius):
    r = torch.arange(shape[0], dtype=F64)[:, None]
    c = torch.arange(shape[1], dtype=F64)[None, :]
    return (((r - center[0]) ** 2 + (c - center[1]) ** 2) <= radius ** 2).to(F64)


@pytest.fixture(scope="module")
def small_mnist() -> torch.Tensor:
    """Five real MNIST digits pooled to 14 x 14 (fast), intensities in [0, 1]."""
    from tests.conftest import data_root

    root = data_root()
    if not root.exists():
        pytest.skip("shipped data not found")
    X, _ = load_mnist(root, "test")
    imgs = torch.tensor(X[:5], dtype=F64) / 255
    return torch.nn.functional.avg_pool2d(imgs[:, None], 2)[:, 0]


# ------------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("d", [0, 1, 2, 3, 4])
def test_hk_single_pixels_closed_form(d):
    """HK^2(m1 delta_x, m2 delta_y) = m1 + m2 - 2 sqrt(m1 m2) cos(min(d / kappa, pi/2)), bias -> 0."""
    kappa, m1, m2 = 2.0, 1.5, 0.6
    a = _dirac((5, 9), (2, 2), m1)
    b = _dirac((5, 9), (2, 2 + d), m2)
    exact = m1 + m2 - 2 * math.sqrt(m1 * m2) * math.cos(min(d / kappa, math.pi / 2))
    errs = []
    for blur in (0.4, 0.2, 0.1):
        D = pairwise_distances(a[None], b[None], metric="hk", kappa=kappa, blur=blur, squared=True,
                               dtype=F64, tol=1e-8)
        errs.append(abs(float(D[0, 0]) - exact))
    assert errs[-1] < 2e-2 * max(exact, 0.1)
    assert errs[-1] <= errs[0] + 1e-9  # the entropic bias shrinks with the blur


def test_translated_disks_hk_monotone_then_saturates():
    kappa, radius = 2.0, 1.0
    base = _disk((12, 24), (6, 4), radius)
    shifts = list(range(0, 12))
    imgs = torch.stack([_disk((12, 24), (6, 4 + s), radius) for s in shifts])
    D = pairwise_distances(base[None], imgs, metric="hk", kappa=kappa, blur=0.2, squared=True, dtype=F64)[0]
    mass = float(base.sum())
    sat = kappa * math.pi / 2 + 2 * radius  # no pixel of one disk within reach of the other
    grow = [float(D[s]) for s in shifts if s < kappa * math.pi / 2]
    assert all(x < y for x, y in zip(grow, grow[1:], strict=False)), grow
    assert all(float(D[s]) >= float(D[s - 1]) - 1e-9 for s in shifts[1:])
    far = [float(D[s]) for s in shifts if s > sat]
    assert len(far) >= 3
    np.testing.assert_allclose(far, far[0], rtol=1e-9)  # saturated: nothing can be transported
    assert far[0] == pytest.approx(2 * mass, rel=1e-2)  # all mass destroyed and created (+ entropic bias)
    assert float(D[0]) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("shift", [(0, 3), (2, 1), (4, 5)])
def test_w2_of_shifted_image_is_the_shift(small_mnist, shift):
    img = torch.zeros(24, 24, dtype=F64)
    img[2:16, 2:16] = small_mnist[0]
    moved = torch.roll(img, shifts=shift, dims=(0, 1))
    D = pairwise_distances(img[None], moved[None], metric="w2", blur=0.5, dtype=F64, tol=1e-7)
    assert float(D[0, 0]) == pytest.approx(math.hypot(*shift), rel=1e-3)


# ------------------------------------------------------------------------------- references
@pytest.mark.parametrize("metric", ["hk", "w2", "sinkhorn_divergence"])
@pytest.mark.parametrize("debias", [pytest.param(True, marks=pytest.mark.slow), False])
def test_pairwise_matches_pair_by_pair_torchuot(small_mnist, metric, debias):
    imgs = small_mnist[:3]
    kw = dict(kappa=2.0, blur=1.0, reach=3.0)
    D = pairwise_distances(imgs, metric=metric, debias=debias, squared=True, dtype=F64, tol=1e-8,
                           block_size=2, **kw)
    x, w = images_to_measures(imgs)
    for i, j in [(0, 1), (0, 2), (1, 2)] + ([] if debias else [(1, 1)]):
        if metric == "hk":
            ref = torchuot.hk_distance(x, x, w[i], w[j], kappa=2.0, blur=1.0, debias=debias, tol=1e-8)
        else:
            a, b = w[i], w[j]
            pen = dict(reach=3.0) if metric == "sinkhorn_divergence" else {}
            if metric == "w2":
                a, b = a / a.sum(), b / b.sum()
            if debias:
                ref = 2 * torchuot.sinkhorn_divergence(x, x, a, b, blur=1.0, tol=1e-8, **pen)
            else:
                ref = 2 * torchuot.sinkhorn(x, x, a, b, blur=1.0, tol=1e-8, **pen).value
        assert float(D[i, j]) == pytest.approx(float(ref), rel=1e-7, abs=1e-7), (i, j)
    torch.testing.assert_close(D, D.T)


def test_debiased_hk_matches_torchuot_hk_distance(small_mnist):
    imgs = small_mnist[1:3]
    D = pairwise_distances(imgs, metric="hk", kappa=2.0, blur=1.0, dtype=F64, tol=1e-8)
    x, w = images_to_measures(imgs)
    ref = torchuot.hk_distance(x, x, w[0], w[1], kappa=2.0, blur=1.0, squared=False, tol=1e-8)
    assert float(D[0, 1]) == pytest.approx(float(ref), rel=1e-7)


@pytest.mark.parametrize("metric", ["hk", "sinkhorn_divergence"])
def test_pairwise_raw_value_matches_pot(small_mnist, metric):
    ot = pytest.importorskip("ot")
    imgs = small_mnist[:3]
    x, w = images_to_measures(imgs)
    kappa, blur, reach = 2.0, 1.0, 3.0
    D = pairwise_distances(imgs, metric=metric, kappa=kappa, blur=blur, reach=reach, debias=False,
                           squared=True, dtype=F64, tol=1e-10)
    if metric == "hk":
        C = torchuot.HKConeCost(kappa)(x[None], x[None])[0]
        reg, reg_m, factor = (blur / kappa) ** 2, 1.0, 1.0
        # POT's exp-domain solver breaks down on +inf costs (0 / 0); a cost of 120 eps instead
        # gives kernel entries e^-120: the mass they carry changes the value by ~1e-10 relative.
        C = torch.where(torch.isfinite(C), C, torch.full_like(C, 120 * reg))
    else:
        C = torch.cdist(x, x) ** 2 / 2
        reg, reg_m, factor = blur ** 2, reach ** 2, 2.0
    for i in range(3):
        for j in range(3):
            a, b = w[i].numpy(), w[j].numpy()
            keep_a, keep_b = a > 0, b > 0  # POT's exp-domain solver wants positive weights
            M = C.numpy()[np.ix_(keep_a, keep_b)]
            a, b = a[keep_a], b[keep_b]
            kw = dict(method="sinkhorn", reg_type="kl", numItermax=20000, stopThr=1e-12)
            linear = ot.unbalanced.sinkhorn_unbalanced2(a, b, M, reg, reg_m, returnCost="linear", **kw)
            P = ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, reg_m, **kw)
            assert float(linear) == pytest.approx(float((P * M).sum()), rel=1e-10)
            # POT's returnCost="total" drops the mass terms of the generalised KL; the entropic UOT
            # value is <P, M> + eps KL(P | a x b) + rho KL(P 1 | a) + rho KL(P^T 1 | b), KL generalised.
            val = (float(linear) + reg * _kl(P, a[:, None] * b[None, :])
                   + reg_m * (_kl(P.sum(1), a) + _kl(P.sum(0), b)))
            assert float(D[i, j]) == pytest.approx(factor * val, rel=1e-6), (i, j)


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    m = p > 0
    return float((p[m] * np.log(p[m] / q[m])).sum() - p.sum() + q.sum())


# ------------------------------------------------------------------------------- API behaviour
def test_one_set_symmetric_zero_diagonal_and_euclidean(small_mnist):
    D = pairwise_distances(small_mnist, metric="hk", kappa=1.5, blur=0.7)
    assert D.shape == (5, 5) and D.dtype == torch.float32
    torch.testing.assert_close(D, D.T)
    assert bool((D.diagonal() == 0).all()) and bool((D + torch.eye(5) > 0).all())
    # the float32 path (float32 exp-domain stencil) agrees with float64
    D64 = pairwise_distances(small_mnist, metric="hk", kappa=1.5, blur=0.7, dtype=F64)
    torch.testing.assert_close(D.double(), D64, rtol=1e-4, atol=1e-4)
    E = pairwise_distances(small_mnist, metric="euclidean", dtype=F64)
    torch.testing.assert_close(E, torch.cdist(small_mnist.reshape(5, -1), small_mnist.reshape(5, -1)))


def test_rectangular_blocks_rows_and_resume(small_mnist, tmp_path):
    kw = dict(metric="hk", kappa=2.0, blur=0.7, dtype=F64, tol=1e-8)
    full = pairwise_distances(small_mnist, **kw)
    # two row ranges, as two processes would compute them
    parts = [pairwise_distances(small_mnist, rows=(0, 2), block_size=3, **kw),
             pairwise_distances(small_mnist, rows=(2, 5), block_size=3, **kw)]
    assert bool(torch.isnan(parts[1][0, 1]))  # pair (0, 1) belongs to the first range
    torch.testing.assert_close(merge_partial(parts), full)
    # rectangular: a against b
    R = pairwise_distances(small_mnist[:2], small_mnist[2:], block_size=2, **kw)
    torch.testing.assert_close(R, full[:2, 2:])
    # checkpoint: a finished run is reloaded without solving anything again
    ck = tmp_path / "D.pt"
    first = pairwise_distances(small_mnist, checkpoint=ck, block_size=4, **kw)
    state = torch.load(ck, weights_only=False)
    assert state["done"] == 10
    state["D"][0, 1] = state["D"][1, 0] = 123.0  # a resumed run must reuse the stored entries
    torch.save(state, ck)
    again = pairwise_distances(small_mnist, checkpoint=ck, block_size=4, **kw)
    assert float(again[0, 1]) == pytest.approx(math.sqrt(123.0))
    torch.testing.assert_close(first[2:, 2:], again[2:, 2:])
    # a partial run (done = 4 of 10 pairs) is completed on resume
    state["done"], state["D"][0, 1], state["D"][1, 0] = 4, full[0, 1] ** 2, full[0, 1] ** 2
    state["D"][3, 4] = state["D"][4, 3] = float("nan")
    torch.save(state, ck)
    torch.testing.assert_close(pairwise_distances(small_mnist, checkpoint=ck, block_size=4, **kw), full)
    with pytest.raises(ValueError, match="checkpoint"):
        pairwise_distances(small_mnist, checkpoint=ck, block_size=4, **{**kw, "kappa": 3.0})


def test_units_unit_grid_equals_scaled_pixel_grid(small_mnist):
    imgs = small_mnist[:3]
    Dp = pairwise_distances(imgs, metric="hk", kappa=2.0, blur=0.7, dtype=F64, tol=1e-9)
    s = 1 / 14
    Du = pairwise_distances(imgs, metric="hk", kappa=2.0 * s, blur=0.7 * s, units="unit", dtype=F64, tol=1e-9)
    torch.testing.assert_close(Dp, Du)  # HK only sees d / kappa and blur / kappa
    g = grid_coordinates(2, 4, units="unit")
    torch.testing.assert_close(g[-1], torch.tensor([1.5 / 4, 3.5 / 4]))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(metric="cosine"), ValueError, "metric"),
        (dict(units="mm"), ValueError, "units"),
        (dict(kappa=0.0), ValueError, "kappa"),
        (dict(blur=-1.0), ValueError, "blur"),
        (dict(metric="sinkhorn_divergence"), ValueError, "reach"),
        (dict(metric="w2", normalize=False), ValueError, "normalize"),
        (dict(rows=(3, 1)), ValueError, "rows"),
        (dict(block_size=0), ValueError, "block_size"),
        (dict(dtype=torch.float16), TypeError, "dtype"),
    ],
)
def test_bad_arguments(kwargs, err, match):
    imgs = torch.rand(3, 6, 6)
    with pytest.raises(err, match=match):
        pairwise_distances(imgs, **kwargs)


def test_bad_images():
    with pytest.raises(TypeError, match="images_a"):
        pairwise_distances(np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="negative"):
        pairwise_distances(-torch.ones(2, 4, 4))
    with pytest.raises(ValueError, match="shape"):
        pairwise_distances(torch.ones(4, 4))
    with pytest.raises(ValueError, match="one grid"):
        pairwise_distances(torch.ones(2, 4, 4), torch.ones(2, 5, 4))
    with pytest.raises(ValueError, match="all-zero"):
        pairwise_distances(torch.cat([torch.ones(1, 4, 4), torch.zeros(1, 4, 4)]))
    with pytest.raises(ValueError, match="NaN"):
        pairwise_distances(torch.full((2, 4, 4), float("nan")))


@pytest.mark.parametrize("content", [b"", b"\x8b\x07 not a checkpoint \xff" * 40], ids=["empty", "random"])
def test_corrupt_checkpoint_names_the_path(small_mnist, tmp_path, content):
    ck = tmp_path / "D.pt"
    ck.write_bytes(content)
    with pytest.raises(ValueError, match=r"(?s)D\.pt.*empty or corrupt.*delete it"):
        pairwise_distances(small_mnist[:3], metric="hk", kappa=2.0, blur=0.7, checkpoint=ck)
    ck.unlink()  # deleting it, as the message says, lets the run go through
    D = pairwise_distances(small_mnist[:3], metric="hk", kappa=2.0, blur=0.7, checkpoint=ck)
    assert D.shape == (3, 3) and bool(torch.isfinite(D).all())


def test_pairwise_hk_uses_hk_distance_conventions():
    """pairwise_distances(metric="hk") takes eps and rho from hk_setup, as hk_distance does: at a
    kappa / blur ratio other than the reference tests' its raw values are hk_distance's."""
    from torchuot.divergence import HK_RHO, hk_setup

    _, eps, rho = hk_setup(2.0, 0.5)
    assert eps == (0.5 / 2.0) ** 2 and rho == HK_RHO
    g = torch.Generator().manual_seed(1)
    imgs = torch.rand(2, 8, 8, generator=g, dtype=F64) * (torch.rand(2, 8, 8, generator=g, dtype=F64) > 0.5)
    D = pairwise_distances(imgs, metric="hk", kappa=3.0, blur=0.5, debias=False, squared=True,
                           dtype=F64, tol=1e-8)
    x, w = images_to_measures(imgs)
    ref = torchuot.hk_distance(x, x, w[0], w[1], kappa=3.0, blur=0.5, debias=False, tol=1e-8)
    assert float(D[0, 1]) == pytest.approx(float(ref), rel=1e-7, abs=1e-7)


@pytest.mark.parametrize("distributed", ["yes", 2])
def test_distributed_argument_is_checked(small_mnist, distributed):
    with pytest.raises(TypeError, match="distributed"):
        pairwise_distances(small_mnist[:2], metric="euclidean", distributed=distributed)


def test_distributed_true_without_torchrun_says_how(small_mnist, monkeypatch):
    for var in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="torchrun"):
        pairwise_distances(small_mnist[:2], metric="euclidean", distributed=True)
