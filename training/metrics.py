"""Metrics of unpaired image translation: class preservation, feature FID, transport cost.

* :func:`class_preservation`: accuracy, against the *source* labels, of a classifier trained
  on the *target* domain and applied to translated source images (Eyring et al., ICLR 2024);
  ``balanced=True`` gives the mean per-class recall instead (:func:`balanced_accuracy`), the
  number to read when the source classes are imbalanced (a translator that sends everything
  to the majority class scores the majority's share in plain accuracy, ``1 / K`` balanced).
* :func:`feature_fid`: Fréchet distance between Gaussians fitted to two sets of features
  (Heusel et al. 2017). Inception weights cannot be downloaded here, so the features come
  from a small CNN trained in this project (:func:`train_classifier`); the numbers are
  therefore *not* comparable with published Inception FIDs, only across our methods.
* :func:`transport_cost`: mean over images of ``|x - T(x)|^2`` (sum over pixels, no 1/2).
* :func:`translation_scores`: with a source-vs-target style classifier
  (:func:`train_domain_classifier`), the share of translations judged target-style (style
  transfer), the share keeping their class, and the share doing both (successful
  translations), a score that the identity map cannot win.

:func:`frechet_distance` is the closed form
``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^{1/2} S2 S1^{1/2})^{1/2})``, computed in float64 with
symmetric eigendecompositions (no complex ``sqrtm``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.classifier import SmallCNN

__all__ = [
    "frechet_distance",
    "gaussian_statistics",
    "feature_fid",
    "class_preservation",
    "class_flip_matrix",
    "transport_cost",
    "train_classifier",
    "accuracy",
    "balanced_accuracy",
    "class_weights",
    "extract_features",
    "predict",
    "train_domain_classifier",
    "translation_scores",
]


def _psd_sqrt(s: torch.Tensor) -> torch.Tensor:
    w, v = torch.linalg.eigh(s)
    return (v * w.clamp_min(0).sqrt()) @ v.T


def frechet_distance(mu1: torch.Tensor, s1: torch.Tensor, mu2: torch.Tensor, s2: torch.Tensor) -> float:
    """Squared 2-Wasserstein (Fréchet) distance between ``N(mu1, s1)`` and ``N(mu2, s2)``.

    Args:
        mu1, mu2: ``(D,)`` means. s1, s2: ``(D, D)`` symmetric PSD covariances.

    Returns:
        ``|mu1 - mu2|^2 + tr(s1) + tr(s2) - 2 tr((s1^{1/2} s2 s1^{1/2})^{1/2})`` as a float (>= 0).
    """
    for name, m in (("mu1", mu1), ("mu2", mu2)):
        if not isinstance(m, torch.Tensor) or m.dim() != 1:
            raise ValueError(f"{name} must be a (D,) tensor, got {getattr(m, 'shape', type(m))}.")
    d = mu1.shape[0]
    for name, s in (("s1", s1), ("s2", s2)):
        if not isinstance(s, torch.Tensor) or s.shape != (d, d):
            raise ValueError(f"{name} must be a ({d}, {d}) tensor, got {getattr(s, 'shape', type(s))}.")
    if mu2.shape != (d,):
        raise ValueError(f"mu1 and mu2 must have the same shape, got {tuple(mu1.shape)}, {tuple(mu2.shape)}.")
    mu1, mu2, s1, s2 = (t.detach().double() for t in (mu1, mu2, s1, s2))
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)
    r1 = _psd_sqrt(s1)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp_min(0).sqrt().sum()
    val = float((mu1 - mu2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * cross)
    if not math.isfinite(val):
        raise ValueError("the Fréchet distance is not finite: check the inputs for NaN/inf.")
    return max(val, 0.0)


def gaussian_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` (float64) of ``features: (n, D)``, ``n >= 2``."""
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[0] < 2:
        raise ValueError(
            f"features must be an (n, D) tensor with n >= 2, got "
            f"{getattr(features, 'shape', type(features))}."
        )
    f = features.detach().double()
    mu = f.mean(0)
    c = f - mu
    return mu, c.T @ c / (f.shape[0] - 1)


def feature_fid(f1: torch.Tensor, f2: torch.Tensor) -> float:
    """FID between two feature sets ``f1: (n1, D)`` and ``f2: (n2, D)`` (Gaussian fits)."""
    if f1.dim() != 2 or f2.dim() != 2 or f1.shape[1] != f2.shape[1]:
        raise ValueError(f"f1, f2 must be (n, D) with the same D, got {tuple(f1.shape)}, {tuple(f2.shape)}.")
    return frechet_distance(*gaussian_statistics(f1), *gaussian_statistics(f2))


@torch.no_grad()
def predict(net: nn.Module, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """Predicted labels ``(n,)`` of ``net`` (logits) on ``x: (n, C, H, W)``, in eval mode."""
    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    chunks = range(0, len(x), batch_size)
    out = torch.cat([net(x[s : s + batch_size].to(dev)).argmax(1).cpu() for s in chunks])
    net.train(was)
    return out


@torch.no_grad()
def extract_features(net: SmallCNN, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """``net.features`` of ``x: (n, C, H, W)`` -> ``(n, feature_dim)``, in eval mode."""
    was = net.training
    net.eval()
    dev = next(net.parameters()).device
    out = torch.cat([net.features(x[s : s + batch_size].to(dev)).cpu() for s in range(0, len(x), batch_size)])
    net.train(was)
    return out


def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction of ``x: (n, ...)`` that ``net`` labels ``y: (n,)``."""
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}.")
    return float((predict(net, x) == y.cpu()).float().mean())


def balanced_accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean over the classes present in ``y: (n,)`` of the recall of ``net`` on ``x: (n, ...)``.

    Equals :func:`accuracy` when the classes are equally frequent; a constant predictor scores
    ``1 / K`` (``K`` = number of classes in ``y``) whatever the class proportions.
    """
    if len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x and y must be non-empty and of equal length, got {len(x)} and {len(y)}.")
    pred, y = predict(net, x), y.cpu()
    return float(torch.stack([(pred[y == c] == c).double().mean() for c in torch.unique(y)]).mean())


def class_preservation(
    classifier: nn.Module, x_translated: torch.Tensor, y_source: torch.Tensor, *, balanced: bool = False
) -> float:
    """Accuracy of the target-domain ``classifier`` on translations against the source labels.

    Args:
        classifier: logits network trained on the target domain.
        x_translated: ``(n, C, H, W)`` translated source images. y_source: ``(n,)`` source labels.
        balanced: mean per-class recall (:func:`balanced_accuracy`) instead of plain accuracy;
            it is the mean of the diagonal of :func:`class_flip_matrix`.
    """
    if balanced:
        return balanced_accuracy(classifier, x_translated, y_source)
    return accuracy(classifier, x_translated, y_source)


def class_flip_matrix(
    classifier: nn.Module, x_translated: torch.Tensor, y_source: torch.Tensor, classes: list[int]
) -> torch.Tensor:
    """Row-normalised confusion ``(K, K)``: row = source class, column = predicted class.

    Entry ``[r, c]`` is the fraction of source images of ``classes[r]`` translated into images
    that the target classifier labels ``classes[c]`` (predictions outside ``classes`` are
    dropped from the count of that row).
    """
    pred = predict(classifier, x_translated)
    k = len(classes)
    m = torch.zeros(k, k, dtype=torch.float64)
    for r, a in enumerate(classes):
        sel = pred[y_source.cpu() == a]
        for c, b in enumerate(classes):
            m[r, c] = (sel == b).sum()
    return m / m.sum(1, keepdim=True).clamp_min(1)


def transport_cost(x0: torch.Tensor, x_translated: torch.Tensor) -> float:
    """Mean over samples of ``|x0_i - T(x0_i)|^2`` (squared Euclidean norm over all pixels)."""
    if x0.shape != x_translated.shape:
        raise ValueError(
            f"x0 and x_translated must have the same shape, got {tuple(x0.shape)} and "
            f"{tuple(x_translated.shape)}."
        )
    return float((x0.double() - x_translated.double()).flatten(1).pow(2).sum(1).mean())


def class_weights(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency class weights ``(n_classes,)``: ``n / (K n_c)`` for the ``K`` present classes.

    Under these weights every present class carries the same total weight in the loss (as
    scikit-learn's ``class_weight="balanced"``); a class with no sample gets weight 0.
    """
    counts = torch.bincount(y.cpu().long(), minlength=n_classes).double()
    present = counts > 0
    w = torch.zeros(n_classes, dtype=torch.float64)
    w[present] = counts.sum() / (int(present.sum()) * counts[present])
    return w.float()


def train_classifier(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    n_classes: int | None = None,
    class_weight: str | None = "balanced",
    epochs: int = 3,
    batch_size: int = 128,
    lr: float = 2e-3,
    width: int = 16,
    feature_dim: int = 64,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SmallCNN:
    """Train a :class:`models.classifier.SmallCNN` on ``x: (n, C, H, W)``, labels ``y: (n,)``.

    Labels must be ``0 .. n_classes - 1``. Adam, cross-entropy, ``epochs`` passes over shuffled
    data seeded by ``seed``. Returns the network in eval mode on ``device``.

    ``class_weight="balanced"`` (default) weights the cross-entropy by :func:`class_weights`, so
    a minority class counts as much as the majority and the network cannot settle on always
    predicting the majority (what an unweighted loss does first on a strongly imbalanced set,
    and keeps doing when the classes overlap); ``None`` is the plain, unweighted loss.
    """
    if class_weight not in ("balanced", None):
        raise ValueError(f"class_weight must be 'balanced' or None, got {class_weight!r}.")
    if x.dim() != 4 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"x must be (n, C, H, W) and y (n,), got {tuple(x.shape)} and {tuple(y.shape)}.")
    n_classes = int(y.max()) + 1 if n_classes is None else n_classes
    if int(y.min()) < 0 or int(y.max()) >= n_classes:
        raise ValueError(f"labels must lie in [0, {n_classes}), got range [{int(y.min())}, {int(y.max())}].")
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = SmallCNN(x.shape[1], n_classes, width, feature_dim, x.shape[-1]).to(device)
    weight = class_weights(y, n_classes).to(device) if class_weight == "balanced" else None
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # Cosine decay to 0 over all steps: the last epochs settle instead of jumping between
    # decision thresholds (a constant rate left the held-out balanced accuracy of a small,
    # imbalanced set swinging by 15 points from one epoch to the next).
    steps_per_epoch = sum(1 for s in range(0, len(x), batch_size) if min(batch_size, len(x) - s) >= 2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for s in range(0, len(x), batch_size):
            idx = perm[s : s + batch_size]
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(net(x[idx].to(device)), y[idx].to(device), weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return net.eval()


# ------------------------------------------------------------------------------ translation score
def train_domain_classifier(
    x_source: torch.Tensor,
    y_source: torch.Tensor,
    x_target: torch.Tensor,
    y_target: torch.Tensor,
    *,
    epochs: int = 3,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> SmallCNN:
    """A source-style (label 0) vs target-style (label 1) classifier that cannot read the class.

    The two domains usually hold their classes in different proportions; a classifier trained
    on them as they are would learn "class 0 -> source" and then call every class-preserving
    translation of a 0 untranslated. So each class shared by both domains contributes the same
    number of images from each domain (the smaller domain's images of that class are drawn
    again at random up to the larger count; classes present in one domain only are left out),
    so that within the training set the class says nothing about the domain.

    Args:
        x_source, x_target: ``(n, C, H, W)`` real images of each domain. y_source, y_target:
            ``(n,)`` class labels.

    Returns:
        :class:`models.classifier.SmallCNN` with 2 logits (eval mode, on ``device``).
    """
    if x_source.shape[1:] != x_target.shape[1:]:
        raise ValueError(
            f"source and target images differ in shape: {tuple(x_source.shape)}, {tuple(x_target.shape)}."
        )
    gen = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    shared = sorted(set(y_source.tolist()) & set(y_target.tolist()))
    if not shared:
        raise ValueError(
            "the source and target domains share no class: the style cannot be told from the class."
        )
    for c in shared:
        i0, i1 = torch.nonzero(y_source == c).flatten(), torch.nonzero(y_target == c).flatten()
        k = max(len(i0), len(i1))
        for i, x in ((i0, x_source), (i1, x_target)):
            extra = i[torch.randint(len(i), (k - len(i),), generator=gen)]
            xs.append(x[torch.cat([i, extra])])
        ys += [torch.zeros(k, dtype=torch.long), torch.ones(k, dtype=torch.long)]
    return train_classifier(torch.cat(xs), torch.cat(ys), n_classes=2, epochs=epochs, seed=seed,
                            device=device, class_weight=None)


def translation_scores(
    domain_classifier: nn.Module,
    class_classifier: nn.Module,
    x_translated: torch.Tensor,
    y_source: torch.Tensor,
) -> dict[str, float]:
    """Style transfer, class preservation and successful translations of ``x_translated``.

    Args:
        domain_classifier: 2-logit net (0 = source style, 1 = target style), e.g. from
            :func:`train_domain_classifier`. class_classifier: target-domain class net.
        x_translated: ``(n, C, H, W)`` translations. y_source: ``(n,)`` source labels.

    Returns:
        ``style_transfer``: share judged target-style; ``class_preservation``: share given the
        source label; ``successful``: share that is both. The identity map scores about 0 on
        ``successful`` (its images are judged source-style), whatever its class preservation.
    """
    if len(x_translated) != len(y_source) or len(y_source) == 0:
        raise ValueError(f"x_translated and y_source must be non-empty and of equal length, got "
                         f"{len(x_translated)} and {len(y_source)}.")
    style = predict(domain_classifier, x_translated) == 1
    kept = predict(class_classifier, x_translated) == y_source.cpu()
    return {
        "style_transfer": float(style.float().mean()),
        "class_preservation": float(kept.float().mean()),
        "successful": float((style & kept).float().mean()),
    }
