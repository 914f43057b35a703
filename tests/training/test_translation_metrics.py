"""Translation metrics on cases with known answers: closed-form Fréchet distances, a perfect
translator (100% preservation, FID near 0) and a class-swapping one (0% preservation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from models.classifier import SmallCNN
from training.data import domain_transform
from training.metrics import (
    accuracy,
    balanced_accuracy,
    class_flip_matrix,
    class_preservation,
    class_weights,
    extract_features,
    feature_fid,
    frechet_distance,
    gaussian_statistics,
    predict,
    train_classifier,
    train_domain_classifier,
    translation_scores,
    transport_cost,
)


def _random_spd(d: int, gen: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=gen, dtype=torch.float64)
    return a @ a.T + 0.1 * torch.eye(d, dtype=torch.float64)


def _scipy_frechet(mu1, s1, mu2, s2) -> float:
    """Reference: the usual FID formula with scipy's (non-symmetric) matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def test_frechet_distance_diagonal_closed_form(gen):
    mu1, mu2 = (torch.randn(5, generator=gen, dtype=torch.float64) for _ in range(2))
    v1, v2 = (torch.rand(5, generator=gen, dtype=torch.float64) + 0.1 for _ in range(2))
    expected = float(((mu1 - mu2) ** 2).sum() + ((v1.sqrt() - v2.sqrt()) ** 2).sum())
    got = frechet_distance(mu1, torch.diag(v1), mu2, torch.diag(v2))
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_frechet_distance_general_matches_scipy(gen):
    d = 6
    mu1, mu2 = (torch.randn(d, generator=gen, dtype=torch.float64) for _ in range(2))
    s1, s2 = _random_spd(d, gen), _random_spd(d, gen)
    ref = _scipy_frechet(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-7)
    # symmetric, zero on identical Gaussians
    assert frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ref, rel=1e-7)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


def test_feature_fid_of_gaussian_samples_converges_to_closed_form(gen):
    d, n = 3, 40000
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    s1, s2 = _random_spd(d, gen), _random_spd(d, gen)
    x1 = mu1 + torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(s1).T
    x2 = mu2 + torch.randn(n, d, generator=gen, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    exact = frechet_distance(mu1, s1, mu2, s2)
    assert exact > 1.0
    assert feature_fid(x1, x2) == pytest.approx(exact, rel=0.05)
    # statistics themselves
    mu, cov = gaussian_statistics(x1)
    torch.testing.assert_close(cov, s1, rtol=0.05, atol=0.05 * float(s1.abs().max()))
    assert mu.abs().max() < 0.05 * math.sqrt(float(s1.diag().max()))


def test_feature_fid_of_a_set_with_itself_is_zero(gen):
    f = torch.randn(500, 16, generator=gen)
    assert feature_fid(f, f) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_bad_inputs():
    with pytest.raises(ValueError, match="mu1"):
        frechet_distance(torch.zeros(2, 2), torch.eye(2), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="s2"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(2), torch.eye(3))
    with pytest.raises(ValueError, match="same shape"):
        frechet_distance(torch.zeros(2), torch.eye(2), torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match="not finite"):
        frechet_distance(torch.tensor([float("nan"), 0.0]), torch.eye(2), torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="n >= 2"):
        gaussian_statistics(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="same D"):
        feature_fid(torch.zeros(4, 3), torch.zeros(4, 2))


# ---------------------------------------------------------------------------- classifier metrics
def _shapes(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Three easily told-apart classes of noisy 28x28 images: horizontal bar, vertical bar, box."""
    y = torch.arange(n) % 3
    x = -torch.ones(n, 1, 28, 28)
    x[y == 0, :, 12:16, 4:24] = 1.0
    x[y == 1, :, 4:24, 12:16] = 1.0
    box = torch.zeros(28, 28, dtype=torch.bool)
    box[6:22, 6:22] = True
    box[9:19, 9:19] = False
    x[(y == 2).nonzero().flatten()[:, None], 0, box.nonzero()[:, 0], box.nonzero()[:, 1]] = 1.0
    return x + 0.2 * torch.randn(x.shape, generator=gen), y


@pytest.fixture(scope="module")
def shape_classifier():
    gen = torch.Generator().manual_seed(1)
    x, y = _shapes(300, gen)
    net = train_classifier(x, y, n_classes=3, epochs=2, batch_size=32, width=8, feature_dim=16, seed=0)
    xt, yt = _shapes(150, gen)
    return net, xt, yt


def test_classifier_learns_the_shapes(shape_classifier):
    net, xt, yt = shape_classifier
    assert accuracy(net, xt, yt) == 1.0


def test_perfect_translator_preserves_every_class_and_has_fid_near_zero(shape_classifier):
    net, x_target, y = shape_classifier
    gen = torch.Generator().manual_seed(7)
    # the "translation" of source sample i is a fresh target-domain image of the same class
    x_translated, y_translated = _shapes(150, gen)
    assert torch.equal(y_translated, y)
    assert class_preservation(net, x_translated, y) == 1.0
    flips = class_flip_matrix(net, x_translated, y, [0, 1, 2])
    torch.testing.assert_close(flips, torch.eye(3, dtype=torch.float64))
    f_t, f_ref = extract_features(net, x_translated), extract_features(net, x_target)
    fid_same = feature_fid(f_t, f_ref)
    assert feature_fid(f_ref, f_ref) == pytest.approx(0.0, abs=1e-6)
    # a translator that maps everything to class 0 is far away in feature space
    fid_collapsed = feature_fid(extract_features(net, x_target[y == 0].repeat(3, 1, 1, 1)), f_ref)
    assert fid_same < 0.05 * fid_collapsed


def test_class_swapping_translator_preserves_nothing(shape_classifier):
    net, x_target, y = shape_classifier
    perm = torch.tensor([1, 2, 0])
    # translate each source of class c into a target image of class perm[c]
    pools = [x_target[y == c] for c in range(3)]
    x_swapped = torch.stack([pools[int(perm[c])][k % 50] for k, c in enumerate(y.tolist())])
    assert class_preservation(net, x_swapped, y) == 0.0
    expected = torch.zeros(3, 3, dtype=torch.float64)
    expected[torch.arange(3), perm] = 1.0
    torch.testing.assert_close(class_flip_matrix(net, x_swapped, y, [0, 1, 2]), expected)


class _ConstantClassifier(torch.nn.Module):
    """Always predicts class ``k`` (a real nn.Module: the degenerate, collapsed classifier)."""

    def __init__(self, k: int, n_classes: int) -> None:
        super().__init__()
        self.logits = torch.nn.Parameter(torch.nn.functional.one_hot(torch.tensor(k), n_classes).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


def test_balanced_accuracy_of_a_majority_predictor_is_one_over_k():
    y = torch.tensor([0] * 90 + [1] * 10)
    x = torch.zeros(100, 1, 4, 4)
    net = _ConstantClassifier(0, 2)
    assert accuracy(net, x, y) == pytest.approx(0.9)
    assert balanced_accuracy(net, x, y) == pytest.approx(0.5)
    assert class_preservation(net, x, y, balanced=True) == pytest.approx(0.5)
    y3 = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    assert balanced_accuracy(_ConstantClassifier(2, 3), torch.zeros(10, 1, 4, 4), y3) == pytest.approx(1 / 3)


def test_balanced_preservation_is_the_mean_diagonal_of_the_flip_matrix(shape_classifier):
    net, x_target, y = shape_classifier
    # an imbalanced "translation": class 0 kept, half of class 1 sent to class 2, class 2 kept
    pools = [x_target[y == c] for c in range(3)]
    xs = torch.cat([pools[0][:30], pools[1][:5], pools[2][:5], pools[2][5:10]])
    ys = torch.tensor([0] * 30 + [1] * 10 + [2] * 5)
    flips = class_flip_matrix(net, xs, ys, [0, 1, 2])
    assert class_preservation(net, xs, ys, balanced=True) == pytest.approx(float(flips.diagonal().mean()))
    assert class_preservation(net, xs, ys, balanced=True) == pytest.approx((1 + 0.5 + 1) / 3)
    assert class_preservation(net, xs, ys) == pytest.approx(40 / 45)


def test_class_weights_are_inverse_frequency():
    y = torch.tensor([0] * 6 + [1] * 3 + [3] * 1)
    w = class_weights(y, 4)
    torch.testing.assert_close(w, torch.tensor([10 / 18, 10 / 9, 0.0, 10 / 3]))
    counts = torch.bincount(y, minlength=4).float()
    torch.testing.assert_close(w * counts, torch.tensor([10 / 3, 10 / 3, 0.0, 10 / 3]))


def _overlapping_levels(n: int, p1: float, gen: torch.Generator, delta: float = 2.5):
    """Two classes of 8x8 images whose mean level is N(0, 1) (class 0) or N(delta, 1) (class 1).

    The classes overlap, so the best balanced accuracy is Phi(delta / 2) (threshold at delta/2);
    with a 2% minority the unweighted risk is lowest near "always class 0".
    """
    y = (torch.rand(n, generator=gen) < p1).long()
    level = torch.randn(n, generator=gen) + delta * y
    return level[:, None, None, None] + 0.5 * torch.randn(n, 1, 8, 8, generator=gen), y


def test_balanced_classifier_does_not_collapse_on_a_strongly_imbalanced_set():
    gen = torch.Generator().manual_seed(0)
    x, y = _overlapping_levels(2000, 0.02, gen)
    x_test, y_test = _overlapping_levels(2000, 0.5, gen)
    assert int(y.sum()) < 60  # about 2% minority
    kw = dict(n_classes=2, epochs=3, batch_size=64, width=8, feature_dim=16, seed=0)
    net = train_classifier(x, y, **kw)  # class_weight="balanced" is the default
    bayes = 0.5 * (1 + math.erf(1.25 / math.sqrt(2)))  # Phi(delta / 2) = 0.894
    bacc = balanced_accuracy(net, x_test, y_test)
    assert 0.8 < bacc < bayes + 0.03
    # the same training without class weights is allowed to (and here does) collapse
    plain = train_classifier(x, y, class_weight=None, **kw)
    assert balanced_accuracy(plain, x_test, y_test) < 0.7


def test_transport_cost_known_value():
    x0 = torch.zeros(5, 1, 2, 2)
    xt = torch.ones(5, 1, 2, 2)
    assert transport_cost(x0, xt) == pytest.approx(4.0)
    assert transport_cost(x0, x0) == 0.0
    with pytest.raises(ValueError, match="same shape"):
        transport_cost(x0, torch.ones(5, 1, 2, 3))


def test_small_cnn_shapes_and_errors():
    net = SmallCNN(1, 4, width=4, feature_dim=8)
    x = torch.zeros(3, 1, 28, 28)
    assert net(x).shape == (3, 4) and net.features(x).shape == (3, 8)
    with pytest.raises(ValueError, match="x must be"):
        net(torch.zeros(3, 2, 28, 28))
    with pytest.raises(ValueError, match="n_classes"):
        SmallCNN(1, 0)
    with pytest.raises(ValueError, match="image_size"):
        SmallCNN(1, 3, image_size=30)


def test_train_classifier_and_accuracy_bad_inputs():
    with pytest.raises(ValueError, match="labels must lie"):
        train_classifier(torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 2, 5]), n_classes=3)
    with pytest.raises(ValueError, match="x must be"):
        train_classifier(torch.zeros(4, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="equal length"):
        accuracy(SmallCNN(1, 3, width=4), torch.zeros(4, 1, 28, 28), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="equal length"):
        balanced_accuracy(SmallCNN(1, 3, width=4), torch.zeros(0, 1, 28, 28), torch.zeros(0).long())
    with pytest.raises(ValueError, match="class_weight must be"):
        train_classifier(torch.zeros(4, 1, 28, 28), torch.tensor([0, 1, 0, 1]), class_weight="inverse")


# ---------------------------------------------------------------------------- translation score
class _Rule(torch.nn.Module):
    """A fixed 'classifier': logits from a rule on the images (no training)."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.rule(x)


def test_translation_scores_arithmetic():
    # domain: target style iff the mean pixel > 0; class: the value of pixel (0, 0) rounded, 0..2
    dom = _Rule(lambda x: torch.stack([-x.mean((1, 2, 3)), x.mean((1, 2, 3))], 1))
    cls = _Rule(lambda x: torch.nn.functional.one_hot(x[:, 0, 0, 0].round().long().clamp(0, 2), 3).float())
    x = -torch.ones(4, 1, 4, 4)
    x[:2] = 1.0  # images 0, 1 target-style
    x[:, 0, 0, 0] = torch.tensor([1.0, 2.0, 1.0, 0.0])
    y = torch.tensor([1, 1, 1, 0])
    s = translation_scores(dom, cls, x, y)
    assert s == {"style_transfer": 0.5, "class_preservation": 0.75, "successful": 0.25}
    with pytest.raises(ValueError, match="equal length"):
        translation_scores(dom, cls, x, y[:2])


def _thin_and_thick(gen: torch.Generator):
    """Source: thin shapes, class 0 in 70%; target: the same shapes dilated, class 2 in 70%."""
    x, y = _shapes(600, gen)
    w0 = torch.tensor([0.7, 0.15, 0.15])
    w1 = torch.tensor([0.15, 0.15, 0.7])
    i0 = torch.multinomial(w0[y[:300]], 240, generator=gen)
    i1 = 300 + torch.multinomial(w1[y[300:]], 240, generator=gen)
    thick = domain_transform("dilate", (x[i1] + 1) / 2) * 2 - 1
    return x[i0], y[i0], thick, y[i1]


@pytest.fixture(scope="module")
def style_nets():
    gen = torch.Generator().manual_seed(3)
    x0, y0, x1, y1 = _thin_and_thick(gen)
    dom = train_domain_classifier(x0, y0, x1, y1, epochs=2, seed=0)
    clf = train_classifier(x1, y1, n_classes=3, epochs=2, batch_size=32, width=8, feature_dim=16, seed=0)
    x_ev, y_ev = _shapes(150, gen)  # held-out source images, classes balanced
    return dom, clf, x_ev, y_ev


def test_identity_translation_is_never_successful(style_nets):
    dom, clf, x_ev, y_ev = style_nets
    s = translation_scores(dom, clf, x_ev, y_ev)
    # every source class, including the target's majority class 2, is judged source-style
    assert s["style_transfer"] <= 0.02 and s["successful"] <= 0.02
    assert float((predict(dom, x_ev[y_ev == 2]) == 0).float().mean()) >= 0.98


def test_exact_style_transform_is_fully_successful(style_nets):
    dom, clf, x_ev, y_ev = style_nets
    x_t = domain_transform("dilate", (x_ev + 1) / 2) * 2 - 1
    s = translation_scores(dom, clf, x_t, y_ev)
    assert s["style_transfer"] >= 0.98 and s["class_preservation"] == 1.0 and s["successful"] >= 0.98
    # the right style with the wrong class is not a successful translation
    swapped = x_t[torch.cat([torch.nonzero(y_ev == (c + 1) % 3).flatten()[:1] for c in y_ev.tolist()])]
    s_swap = translation_scores(dom, clf, swapped, y_ev)
    assert s_swap["style_transfer"] >= 0.98 and s_swap["successful"] == 0.0


def test_domain_classifier_needs_a_shared_class():
    x = torch.zeros(4, 1, 28, 28)
    with pytest.raises(ValueError, match="share no class"):
        train_domain_classifier(x, torch.zeros(4, dtype=torch.long), x, torch.ones(4, dtype=torch.long))
