"""Unpaired image translation under class imbalance: independent-FM vs OT-FM vs UOT-FM vs exact OT.

Reproduces the class-imbalance experiment of Eyring et al. (ICLR 2024) on the shipped data.
Source domain: MNIST digits of a few classes in one set of proportions; target domain: the
same classes with thickened strokes (3x3 dilation) in other proportions. A balanced plan must
send some source mass across classes; an unbalanced plan can re-weight instead. Every method
uses the same data, the same :class:`models.UNetVelocity`, the same number of steps and the
same seeds; only the minibatch coupling (:class:`torchuot.couplings.PlanSampler`) differs.
Training is :class:`training.module.FlowMatchingModule` under a Lightning ``Trainer``.

Metrics (:mod:`training.metrics`), on held-out source images:

* class preservation: accuracy of a small CNN trained here on the target domain (its own
  held-out accuracy and balanced accuracy are reported) on the translations, against the
  source labels, plain and balanced (mean per-class recall: the number to read when the
  source classes are imbalanced). The CNN is trained with inverse-frequency class weights
  (``classifier_class_weight: balanced``), so it cannot settle on the target's majority class;
* feature FID: Fréchet distance between translations and held-out target images in the
  feature space of a small CNN trained here on both domains (label = class x domain);
  Inception weights cannot be downloaded here, so the values are comparable across our rows
  only;
* transport cost: mean ``|x - T(x)|^2`` over images (pixels in ``[-1, 1]``);
* references: the untranslated source, held-out target against training target (FID floor),
  and an oracle that applies the synthetic target style to each source image (the paired
  answer: every class kept, the transport cost the style alone requires);
* plan class match (a diagnostic of the coupling, not of the trained model): on training
  minibatches, the share of each source class's plan mass that goes to target images of the
  same class, averaged over classes.

For a balanced plan the class proportions cap class preservation: with source proportions
``p`` and target proportions ``q`` at least ``sum_c max(p_c - q_c, 0)`` of the mass must change
class, and so must any translator whose outputs have the target's class proportions; the
report states this ceiling.

Run::

    python -m training.experiments.translation --config training/configs/translation_mnist.yaml
    python -m training.experiments.translation --config ... --steps 50 --seeds 0 --out-dir /tmp/t

Writes ``<out_dir>/translation_<task>.md`` / ``.json`` / ``.png`` (rows: source, then each
method's translation of the same images, seed 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch

from models.velocity import MLPVelocity, UNetVelocity
from torchuot.couplings import PlanSampler
from torchuot.progress import progress_bar
from training.data import MedMNISTDataModule, MNISTDataModule, UnpairedDataModule, domain_transform
from training.figures import save_loss_curves, save_pareto, save_translation_grid
from training.latent import LatentDataModule
from training.metrics import (
    accuracy,
    balanced_accuracy,
    class_flip_matrix,
    class_preservation,
    extract_features,
    feature_fid,
    predict,
    train_classifier,
    train_domain_classifier,
    translation_scores,
    transport_cost,
)
from training.module import FlowMatchingModule

__all__ = [
    "TranslationConfig",
    "MethodSpec",
    "build_data",
    "run",
    "main",
    "coupling_diagnostics",
    "balanced_plan_ceiling",
    "DEFAULT_METHODS",
]

_log = logging.getLogger(__name__)

DEFAULT_METHODS: list[dict[str, Any]] = [
    {"name": "independent FM", "method": "independent"},
    {"name": "OT-FM", "method": "ot"},
    {"name": "UOT-FM tau=0.99", "method": "uot", "tau_a": 0.99, "tau_b": 0.99},
    {"name": "UOT-FM tau=0.9", "method": "uot", "tau_a": 0.9, "tau_b": 0.9},
    {"name": "UOT-FM tau=0.7", "method": "uot", "tau_a": 0.7, "tau_b": 0.7},
    {"name": "exact OT-FM", "method": "exact"},
]


@dataclass
class MethodSpec:
    """One row of the comparison: a display name and :class:`PlanSampler` arguments."""

    name: str
    method: str
    tau_a: float = 1.0
    tau_b: float = 1.0

    def sampler(self, eps: float) -> PlanSampler:
        return PlanSampler(self.method, eps=eps, tau_a=self.tau_a, tau_b=self.tau_b, normalize_cost="mean")


@dataclass
class TranslationConfig:
    """Everything the experiment depends on (YAML keys are these field names)."""

    task: str = "mnist"
    root: str | None = None
    source_classes: list[int] = field(default_factory=lambda: [0, 1, 2])
    target_classes: list[int] | None = None
    source_proportions: list[float] | None = field(default_factory=lambda: [0.6, 0.2, 0.2])
    target_proportions: list[float] | None = field(default_factory=lambda: [0.2, 0.2, 0.6])
    target_transform: str | None = "dilate"
    max_per_domain: int | None = None
    data_seed: int = 0
    val_fraction: float = 0.1
    batch_size: int = 64
    steps: int = 300
    lr: float = 2e-3
    width: int = 16
    eps: float = 0.01
    ode_steps: int = 20
    # "pixel": UNet velocity on images; "latent": MLP velocity in a ConvAutoencoder's latent space.
    space: str = "pixel"
    latent_dim: int = 32
    ae_width: int = 16
    ae_steps: int = 1500
    ae_batch_size: int = 64
    hidden: int = 256
    depth: int = 3
    # ODE solver of the evaluation (translations): "euler"/"midpoint" with ode_steps, or "dopri5".
    eval_ode: str = "euler"
    # Validation loss every val_every training steps on val_batches batches (None: no validation).
    val_every: int | None = None
    val_batches: int = 8
    # Reuse finished (method, seed) runs found in <out_dir>/.runs_<stem>/ (a resumed session).
    resume: bool = True
    # Report only the runs already finished (cached), train nothing (to report a partial sweep).
    cached_only: bool = False
    methods: list[dict[str, Any]] = field(default_factory=lambda: [dict(m) for m in DEFAULT_METHODS])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    n_eval: int = 500
    classifier_epochs: int = 3
    domain_classifier_epochs: int = 10
    classifier_class_weight: str | None = "balanced"
    coupling_batches: int = 20
    description: str = ""
    n_show: int = 16
    out_dir: str = "results"
    accelerator: str = "cpu"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.task not in ("mnist", "pneumoniamnist"):
            raise ValueError(f"task must be 'mnist' or 'pneumoniamnist', got {self.task!r}.")
        if self.space not in ("pixel", "latent"):
            raise ValueError(f"space must be 'pixel' or 'latent', got {self.space!r}.")
        if self.eval_ode not in ("euler", "midpoint", "dopri5"):
            raise ValueError(f"eval_ode must be 'euler', 'midpoint' or 'dopri5', got {self.eval_ode!r}.")
        if self.val_every is not None and (not isinstance(self.val_every, int) or self.val_every < 1):
            raise ValueError(f"val_every must be a positive integer or null, got {self.val_every!r}.")
        for name in ("steps", "batch_size", "width", "ode_steps", "n_eval", "classifier_epochs",
                     "coupling_batches", "domain_classifier_epochs", "latent_dim", "ae_width", "ae_steps",
                     "ae_batch_size", "hidden",
                     "depth", "val_batches", "n_show"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}.")
        if not self.seeds:
            raise ValueError("seeds must list at least one seed.")
        if self.classifier_class_weight not in ("balanced", None):
            raise ValueError(
                f"classifier_class_weight must be 'balanced' or null, got {self.classifier_class_weight!r}."
            )
        if not self.methods:
            raise ValueError("methods must list at least one method.")
        self.method_specs = [MethodSpec(**m) for m in self.methods]
        for spec in self.method_specs:
            spec.sampler(self.eps)  # validates the arguments early

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TranslationConfig:
        import yaml

        data = yaml.safe_load(Path(path).read_text()) or {}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown keys in {path}: {sorted(unknown)}; expected some of {sorted(known)}.")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def build_data(cfg: TranslationConfig) -> UnpairedDataModule:
    """The unpaired source / target data module of the task (set up)."""
    if cfg.task == "mnist":
        base = MNISTDataModule(root=cfg.root, seed=cfg.data_seed, val_fraction=cfg.val_fraction)
    else:
        base = MedMNISTDataModule(root=cfg.root, flag="pneumoniamnist", size=28, seed=cfg.data_seed)
    dm = UnpairedDataModule(
        base,
        source_classes=cfg.source_classes,
        target_classes=cfg.target_classes,
        source_proportions=cfg.source_proportions,
        target_proportions=cfg.target_proportions,
        target_transform=cfg.target_transform,
        batch_size=cfg.batch_size,
        max_per_domain=cfg.max_per_domain,
        seed=cfg.data_seed,
    )
    dm.setup("fit")
    return dm


def _relabel(y: torch.Tensor, classes: list[int]) -> torch.Tensor:
    out = torch.full_like(y, -1)
    for k, c in enumerate(classes):
        out[y == c] = k
    return out


@torch.no_grad()
def coupling_diagnostics(
    spec: MethodSpec,
    eps: float,
    x0: torch.Tensor,
    y0: torch.Tensor,
    x1: torch.Tensor,
    y1: torch.Tensor,
    *,
    batch_size: int,
    n_batches: int,
    seed: int = 0,
) -> dict[str, Any]:
    """Where each source class's plan mass goes, and how many samples carry it, on training minibatches.

    Args:
        spec: the coupling. x0: ``(n, C, H, W)`` source, y0: ``(n,)`` labels in ``0..K-1``;
        x1, y1: the same for the target (labels outside ``0..K-1`` are ignored).
        batch_size, n_batches: minibatch size and count; seed: seed of the batch draws.

    Returns:
        ``"class_transfer"``: ``(K, K)`` float64, row-normalised: entry ``[a, b]`` is the share
        of the plan mass of source class ``a`` sent to target images of class ``b`` (summed over
        batches). ``"source_ess"`` / ``"target_ess"``: the effective sample size
        ``1 / sum_i w_i^2`` of the normalised source / target marginal ``w`` of the plan, as a
        fraction of the batch, averaged over batches (1 for a balanced plan; an unbalanced plan
        that trains the flow on a few pairs only gives a small value).
    """
    k = int(y0.max()) + 1
    gen = torch.Generator().manual_seed(seed)
    sampler = spec.sampler(eps)
    m = torch.zeros(k, k, dtype=torch.float64)
    ess_a, ess_b = [], []
    oh0 = torch.nn.functional.one_hot(y0.long(), k).double()
    valid1 = (y1 >= 0) & (y1 < k)
    oh1 = torch.nn.functional.one_hot(y1.long().clamp(0, k - 1), k).double() * valid1[:, None]
    for _ in range(n_batches):
        i = torch.randperm(len(x0), generator=gen)[:batch_size]
        j = torch.randperm(len(x1), generator=gen)[:batch_size]
        plan = sampler.plan(x0[i], x1[j]).double()
        m += oh0[i].T @ plan @ oh1[j]
        wa, wb = plan.sum(1) / plan.sum(), plan.sum(0) / plan.sum()
        ess_a.append(float(1 / (len(i) * wa.pow(2).sum())))
        ess_b.append(float(1 / (len(j) * wb.pow(2).sum())))
    return {
        "class_transfer": m / m.sum(1, keepdim=True).clamp_min(1e-300),
        "source_ess": sum(ess_a) / n_batches,
        "target_ess": sum(ess_b) / n_batches,
    }


def balanced_plan_ceiling(p: list[float] | None, q: list[float] | None, k: int) -> dict[str, float]:
    """Best class preservation of a *balanced* map from proportions ``p`` to ``q`` (same ``k`` classes).

    A balanced plan must move at least ``sum_c max(p_c - q_c, 0)`` of the mass across classes,
    so plain preservation is at most ``sum_c min(p_c, q_c)`` and per-class recall of class ``c``
    at most ``min(1, q_c / p_c)`` (balanced preservation: their mean over classes).
    """
    pt = torch.full((k,), 1.0 / k, dtype=torch.float64) if p is None else torch.tensor(p, dtype=torch.float64)
    qt = torch.full((k,), 1.0 / k, dtype=torch.float64) if q is None else torch.tensor(q, dtype=torch.float64)
    pt, qt = pt / pt.sum(), qt / qt.sum()
    recall = torch.where(pt > 0, (qt / pt.clamp_min(1e-300)).clamp(max=1.0), torch.ones_like(pt))
    return {"plain": float(torch.minimum(pt, qt).sum()), "balanced": float(recall[pt > 0].mean())}


class _ValLossHistory(L.Callback):
    """Records ``(global_step, val/loss)`` after every validation run."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        v = trainer.callback_metrics.get("val/loss")
        if v is not None and not trainer.sanity_checking:
            self.points.append((int(trainer.global_step), float(v)))


def _train_flow(
    cfg: TranslationConfig, spec: MethodSpec, dm: L.LightningDataModule, seed: int, in_channels: int
) -> tuple[FlowMatchingModule, list[tuple[int, float]]]:
    """Train one flow; returns the module (eval mode) and its validation-loss history."""
    L.seed_everything(seed, workers=True, verbose=False)
    if cfg.space == "latent":
        net: torch.nn.Module = MLPVelocity(dim=cfg.latent_dim, hidden=cfg.hidden, depth=cfg.depth)
    else:
        net = UNetVelocity(in_channels=in_channels, width=cfg.width)
    lr = cfg.lr
    module = FlowMatchingModule(
        net,
        sampler=spec.sampler(cfg.eps),
        optimizer=lambda p: torch.optim.Adam(p, lr=lr),
        ode_steps=cfg.ode_steps,
        n_grid=0,  # no per-validation pictures: the report draws its own
    )
    history = _ValLossHistory()
    val = {"limit_val_batches": 0} if cfg.val_every is None else {
        "limit_val_batches": cfg.val_batches, "val_check_interval": cfg.val_every,
        "check_val_every_n_epoch": None,
    }
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=1,
        max_steps=cfg.steps,
        max_epochs=-1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
        callbacks=[history],
        **val,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*You defined a `validation_step`.*")
        trainer.fit(module, datamodule=dm)
    module.ode_method = cfg.eval_ode
    return module.eval(), history.points


@torch.no_grad()
def _translate(module: FlowMatchingModule, x: torch.Tensor, batch: int = 256) -> torch.Tensor:
    dev = module.device
    return torch.cat([module.translate(x[s : s + batch].to(dev)).cpu() for s in range(0, len(x), batch)])


def _mean_std(values: list[float]) -> dict[str, float]:
    t = torch.tensor(values, dtype=torch.float64)
    return {"mean": float(t.mean()), "std": float(t.std()) if len(values) > 1 else 0.0}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in ".-" else "_" for c in name)


def report_stem(cfg: TranslationConfig) -> str:
    """``translation_<task>`` (pixel space) or ``translation_<task>_latent``."""
    return f"translation_{cfg.task}" + ("_latent" if cfg.space == "latent" else "")


METRICS = ("successful", "style_transfer", "class_preservation", "class_preservation_balanced", "feature_fid",
           "transport_cost", "train_time_s")


def run(cfg: TranslationConfig) -> dict[str, Any]:
    """Run every method on every seed; write the report files; return the results dict."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / report_stem(cfg)
    dm = build_data(cfg)
    tgt_classes = dm.target_classes
    x0_tr, y0_tr, x1_tr, y1_tr = dm.domain("train")
    # Held-out evaluation set: the val and test splits together (neither is used in training).
    x0_te, y0_te, x1_te, y1_te = (torch.cat(p) for p in zip(dm.domain("val"), dm.domain("test"), strict=True))
    x0_ev, y0_ev = x0_te[: cfg.n_eval], y0_te[: cfg.n_eval]
    dev = "cuda" if cfg.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"

    # Evaluation networks, trained once on the training split's real images, checked on val + test.
    t0 = time.perf_counter()
    cw = cfg.classifier_class_weight
    clf = train_classifier(x1_tr, _relabel(y1_tr, tgt_classes), n_classes=len(tgt_classes),
                           epochs=cfg.classifier_epochs, seed=cfg.data_seed, device=dev,
                           class_weight=cw).cpu()
    clf_acc = accuracy(clf, x1_te, _relabel(y1_te, tgt_classes))
    clf_bacc = balanced_accuracy(clf, x1_te, _relabel(y1_te, tgt_classes))
    k = len(tgt_classes)
    xf = torch.cat([x0_tr, x1_tr])
    yf = torch.cat([_relabel(y0_tr, tgt_classes), _relabel(y1_tr, tgt_classes) + k])
    keep = torch.cat([_relabel(y0_tr, tgt_classes), _relabel(y1_tr, tgt_classes)]) >= 0
    feat_net = train_classifier(xf[keep], yf[keep], n_classes=2 * k, epochs=cfg.classifier_epochs,
                                seed=cfg.data_seed + 1, device=dev, class_weight=cw).cpu()
    xf_te = torch.cat([x0_te, x1_te])
    yf_te = torch.cat([_relabel(y0_te, tgt_classes), _relabel(y1_te, tgt_classes) + k])
    keep_te = torch.cat([_relabel(y0_te, tgt_classes), _relabel(y1_te, tgt_classes)]) >= 0
    feat_acc = accuracy(feat_net, xf_te[keep_te], yf_te[keep_te])
    feat_bacc = balanced_accuracy(feat_net, xf_te[keep_te], yf_te[keep_te])
    dom_net = train_domain_classifier(x0_tr, y0_tr, x1_tr, y1_tr, epochs=cfg.domain_classifier_epochs,
                                      seed=cfg.data_seed + 2, device=dev).cpu()
    d_te = torch.cat([torch.zeros(len(x0_te), dtype=torch.long), torch.ones(len(x1_te), dtype=torch.long)])
    dom_acc = accuracy(dom_net, xf_te, d_te)
    dom_bacc = balanced_accuracy(dom_net, xf_te, d_te)
    eval_time = time.perf_counter() - t0
    f_target = extract_features(feat_net, x1_te)
    y0_rel = _relabel(y0_ev, tgt_classes)

    def metrics_of(xt: torch.Tensor, y: torch.Tensor | None = None, x_ref: torch.Tensor | None = x0_ev,
                   fid: float | None = None) -> dict[str, float]:
        y = y0_rel if y is None else y
        return {
            **translation_scores(dom_net, clf, xt, y),
            "class_preservation_balanced": class_preservation(clf, xt, y, balanced=True),
            "feature_fid": feature_fid(extract_features(feat_net, xt), f_target) if fid is None else fid,
            "transport_cost": transport_cost(x_ref, xt) if x_ref is not None else float("nan"),
        }

    # The flows' data: images, or the latents of an autoencoder trained on both domains.
    ae_info: dict[str, Any] | None = None
    if cfg.space == "latent":
        t0 = time.perf_counter()
        flow_dm: L.LightningDataModule = LatentDataModule(
            dm, latent_dim=cfg.latent_dim, ae_width=cfg.ae_width, ae_steps=cfg.ae_steps,
            ae_batch_size=cfg.ae_batch_size, ae_path=str(out / f".runs_{stem.name}" / "autoencoder.pt"),
            batch_size=cfg.batch_size, seed=cfg.data_seed,
        )
        flow_dm.setup("fit")
        z0_tr, _, z1_tr, _ = flow_dm.domain("train")
        encode, decode = flow_dm.encode, flow_dm.decode
        ae_info = {**flow_dm.recon, "time_s": round(time.perf_counter() - t0, 1)}
    else:
        flow_dm = dm
        z0_tr, z1_tr = x0_tr, x1_tr
        encode = decode = lambda t: t  # noqa: E731

    n_ref = min(cfg.n_eval, len(x1_te))
    references = {
        "identity: source, untranslated": metrics_of(x0_ev),
        "held-out target images (style / class ceiling; FID: train vs test split)": metrics_of(
            x1_te[:n_ref], _relabel(y1_te[:n_ref], tgt_classes), None,
            fid=feature_fid(extract_features(feat_net, x1_tr), f_target)),
    }
    oracle = None
    if cfg.target_transform is not None:
        # The paired answer that only a synthetic style allows: each source image in the target
        # style. It keeps every class and moves each image only as far as the style requires.
        oracle = domain_transform(cfg.target_transform, (x0_ev + 1) / 2) * 2 - 1
        name = f"oracle: source image in the target style (`{cfg.target_transform}`)"
        references[name] = metrics_of(oracle)
    if cfg.space == "latent":
        # What the autoencoder alone does: a round trip without any flow.
        references["identity through the autoencoder (encode, decode)"] = metrics_of(decode(encode(x0_ev)))
        if oracle is not None:
            references["oracle through the autoencoder"] = metrics_of(decode(encode(oracle)))

    # Coupling diagnostic: how much plan mass stays within its class, per method (no training).
    y0_tr_rel, y1_tr_rel = _relabel(y0_tr, tgt_classes), _relabel(y1_tr, tgt_classes)
    has0 = y0_tr_rel >= 0
    transfer = {
        spec.name: coupling_diagnostics(
            spec, cfg.eps, z0_tr[has0], y0_tr_rel[has0], z1_tr, y1_tr_rel,
            batch_size=cfg.batch_size, n_batches=cfg.coupling_batches, seed=cfg.data_seed,
        )
        for spec in cfg.method_specs
    }
    ceiling = (balanced_plan_ceiling(cfg.source_proportions, cfg.target_proportions, k)
               if list(dm.source_classes) == list(tgt_classes) else None)

    show = _pick_show(y0_ev, cfg.n_show)
    panels: dict[str, torch.Tensor] = {"source": x0_ev[show]}
    if oracle is not None:
        panels["oracle (target style)"] = oracle[show]
    rows: list[dict[str, Any]] = []
    flips: dict[str, list[list[float]]] = {}
    cache = out / f".runs_{stem.name}"
    cache.mkdir(parents=True, exist_ok=True)
    z0_ev = encode(x0_ev)
    # Seed-major order: a sweep cut short still has every method on its first seeds.
    runs = [(spec, seed) for seed in cfg.seeds for spec in cfg.method_specs]
    bar = progress_bar(len(runs), desc="translation runs", unit="run", enabled=cfg.progress)
    for spec, seed in runs:
        if bar is not None:
            bar.set_postfix_str(f"{spec.name} seed={seed}")
        done = cache / f"{_slug(spec.name)}_seed{seed}.pt"
        if cfg.resume and done.exists():
            saved = torch.load(done, map_location="cpu", weights_only=False)
            row, xt_show = saved["row"], saved["show"]
        elif cfg.cached_only:
            continue
        else:
            t0 = time.perf_counter()
            module, curve = _train_flow(cfg, spec, flow_dm, seed, dm.in_channels)
            train_s = time.perf_counter() - t0
            xt = decode(_translate(module, z0_ev))
            row = {"method": spec.name, "coupling": spec.method, "tau_a": spec.tau_a, "tau_b": spec.tau_b,
                   "seed": seed, "train_time_s": round(train_s, 2), **metrics_of(xt), "val_curve": curve,
                   "class_flips": class_flip_matrix(clf, xt, y0_rel, list(range(k))).tolist()}
            xt_show = xt[show]
            torch.save({"row": row, "show": xt_show}, done)
        rows.append(row)
        _log.info("%s", {k_: v for k_, v in row.items() if k_ not in ("val_curve", "class_flips")})
        if spec.name not in panels:  # the first seed run of each method
            panels[spec.name] = xt_show
            flips[spec.name] = row["class_flips"]
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()

    summary: dict[str, dict[str, Any]] = {}
    curves: dict[str, list[tuple[int, float]]] = {}
    for spec in cfg.method_specs:
        mine = [r for r in rows if r["method"] == spec.name]
        if not mine:
            continue
        summary[spec.name] = {m: _mean_std([r[m] for r in mine]) for m in METRICS}
        summary[spec.name]["seeds"] = [r["seed"] for r in mine]
        diag = transfer[spec.name]
        summary[spec.name]["plan_class_match"] = float(diag["class_transfer"].diagonal().mean())
        summary[spec.name]["plan_source_ess"] = diag["source_ess"]
        summary[spec.name]["plan_target_ess"] = diag["target_ess"]
        if mine[0]["val_curve"]:
            steps = [s_ for s_, _ in mine[0]["val_curve"]]
            curves[spec.name] = [
                (st, sum(r["val_curve"][i][1] for r in mine) / len(mine)) for i, st in enumerate(steps)
            ]
            summary[spec.name]["val_loss_last_vs_mid"] = _flatness(curves[spec.name])
    result = {
        "task": cfg.task,
        "space": cfg.space,
        "config": cfg.as_dict(),
        "target_classifier_heldout_accuracy": clf_acc,
        "target_classifier_heldout_balanced_accuracy": clf_bacc,
        "feature_net_heldout_accuracy": feat_acc,
        "feature_net_heldout_balanced_accuracy": feat_bacc,
        "domain_classifier_heldout_accuracy": dom_acc,
        "domain_classifier_heldout_balanced_accuracy": dom_bacc,
        "autoencoder": ae_info,
        "balanced_plan_ceiling": ceiling,
        "coupling_class_transfer": {name: t["class_transfer"].tolist() for name, t in transfer.items()},
        "evaluation_nets_train_time_s": round(eval_time, 2),
        "n_eval": len(x0_ev),
        "n_train": {"source": len(x0_tr), "target": len(x1_tr)},
        "source_class_counts_eval": {int(c): int((y0_ev == c).sum()) for c in dm.source_classes},
        "class_counts_train": {
            "source": {int(c): int((y0_tr == c).sum()) for c in dm.source_classes},
            "target": {int(c): int((y1_tr == c).sum()) for c in tgt_classes},
        },
        "references": references,
        "summary": summary,
        "val_loss_curves_seed_mean": curves,
        "runs": rows,
        "class_flip_matrices_seed0": flips,
        "total_time_s": round(time.perf_counter() - t_start, 1),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}",
    }
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2, default=_json_default))
    stem.with_suffix(".md").write_text(_markdown(result, cfg))
    _figures(result, panels, show, y0_ev, dom_net, clf, tgt_classes, stem, cfg)
    return result


def _flatness(curve: list[tuple[int, float]]) -> float:
    """Relative change of the validation loss over the second half of training:
    ``(mean of the last quarter - mean of the third quarter) / mean of the third quarter``."""
    v = [x for _, x in curve]
    n = len(v)
    if n < 4:
        return float("nan")
    q3, q4 = v[n // 2 : 3 * n // 4], v[3 * n // 4 :]
    m3, m4 = sum(q3) / len(q3), sum(q4) / len(q4)
    return (m4 - m3) / m3


def _figures(res: dict[str, Any], panels: dict[str, torch.Tensor], show: torch.Tensor, y0_ev: torch.Tensor,
             dom_net: torch.nn.Module, clf: torch.nn.Module, classes: list[int], stem: Path,
             cfg: TranslationConfig) -> None:
    """Sample grid (``.png``), Pareto plot (``_pareto.png``) and loss curves (``_loss.png``)."""
    y_show = y0_ev[show]
    col = [f"class {int(c)}" for c in y_show]
    labels: dict[str, list[str]] = {}
    ok: dict[str, list[bool]] = {}
    y_rel = _relabel(y_show, classes)
    for name, imgs in panels.items():
        if name == "source":
            continue
        style = predict(dom_net, imgs)
        pred = predict(clf, imgs)
        labels[name] = [f"{classes[int(p)]} {'T' if int(s) else 'S'}"
                        for p, s in zip(pred, style, strict=True)]
        ok[name] = [bool(s) and int(p) == int(y) for p, s, y in zip(pred, style, y_rel, strict=True)]
    save_translation_grid(
        panels, stem.with_suffix(".png"), column_labels=col, cell_labels=labels, cell_ok=ok, scale=3.2,
        title=f"{cfg.task}, {cfg.space} space, seed {cfg.seeds[0]}: under each image the predicted class and "
              "style (T = target, S = source); green = successful translation",
    )
    pts = {name: (100 * s["style_transfer"]["mean"], 100 * s["successful"]["mean"],
                  100 * s["style_transfer"]["std"], 100 * s["successful"]["std"])
           for name, s in res["summary"].items()}
    refs = {name.split(":")[0].split(" (")[0]: (100 * m["style_transfer"], 100 * m["successful"])
            for name, m in res["references"].items()}
    save_pareto(pts, refs, stem.parent / f"{stem.name}_pareto.png",
                title=f"{cfg.task} ({cfg.space}): mean ± std over seeds {cfg.seeds}")
    save_pareto(
        {n: (p[0], 100 * res["summary"][n]["class_preservation"]["mean"], p[2],
             100 * res["summary"][n]["class_preservation"]["std"]) for n, p in pts.items()},
        {name.split(":")[0].split(" (")[0]: (100 * m["style_transfer"], 100 * m["class_preservation"])
         for name, m in res["references"].items()},
        stem.parent / f"{stem.name}_pareto_preservation.png", ylabel="class preservation (%)",
        title=f"{cfg.task} ({cfg.space}): mean ± std over seeds {cfg.seeds}",
    )
    if res["val_loss_curves_seed_mean"]:
        save_loss_curves(res["val_loss_curves_seed_mean"], stem.parent / f"{stem.name}_loss.png",
                         title=f"{cfg.task} ({cfg.space}): validation loss, mean over seeds")


def _json_default(o: Any) -> Any:
    return None if isinstance(o, float) and math.isnan(o) else str(o)


def _pick_show(y: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of ``n`` samples cycling through the classes (so each class is visible)."""
    classes = torch.unique(y)
    per = [torch.nonzero(y == c).flatten() for c in classes]
    out: list[int] = []
    r = 0
    while len(out) < min(n, len(y)):
        for p in per:
            if r < len(p) and len(out) < n:
                out.append(int(p[r]))
        r += 1
    return torch.tensor(out, dtype=torch.long)


def _fmt(ms: dict[str, float], scale: float = 1.0, digits: int = 1) -> str:
    return f"{ms['mean'] * scale:.{digits}f} ± {ms['std'] * scale:.{digits}f}"


def _pct(x: float | None) -> str:
    return "–" if x is None or math.isnan(x) else f"{100 * x:.1f}"


def _markdown(res: dict[str, Any], cfg: TranslationConfig) -> str:
    lines = [f"# Unpaired translation under class imbalance: {cfg.task}, {cfg.space} space", ""]
    if cfg.description:
        lines += [" ".join(cfg.description.split()), ""]
    counts = res["class_counts_train"]
    if cfg.space == "latent":
        ae = res["autoencoder"]
        model = (f"Latent space: a ConvAutoencoder (latent dim {cfg.latent_dim}, width {cfg.ae_width}) "
                 "trained "
                 f"{ae['steps']} steps of batch {cfg.ae_batch_size} on the training images of both domains; "
                 f"reconstruction MSE per pixel (images in [-1, 1]) train {ae['train_mse']:.4f}, held-out "
                 f"{ae['val_mse']:.4f}. Flow: MLP velocity (hidden {cfg.hidden}, depth {cfg.depth}) on the "
                 f"standardised latents, couplings computed on the latents; translations decoded for all "
                 "metrics")
    else:
        model = f"UNet width {cfg.width}"
    lines += [
        f"Source classes {cfg.source_classes} in proportions {cfg.source_proportions}; target classes "
        f"{cfg.target_classes or cfg.source_classes} in proportions {cfg.target_proportions}, "
        f"target transform `{cfg.target_transform}` (training images per class: source "
        f"{counts['source']}, target {counts['target']}). {model}. {cfg.steps} steps of "
        f"batch {cfg.batch_size}, Adam lr {cfg.lr}, evaluation ODE `{cfg.eval_ode}`"
        + (f" ({cfg.ode_steps} steps)" if cfg.eval_ode != "dopri5" else " (adaptive, torchdiffeq)")
        + f", coupling eps {cfg.eps} on the mean-normalised cost. Seeds {cfg.seeds}; {res['n_eval']} "
        "held-out "
        f"source images evaluated (per class: {res['source_class_counts_eval']}).",
        "",
        f"Evaluation networks (trained here on the training split's real images, accuracies on the held-out "
        f"val + test images): **domain classifier** ({cfg.domain_classifier_epochs} epochs; source style vs "
        "target style, "
        f"trained with equal numbers of each class in both domains so that it cannot read the style from the "
        f"class) accuracy "
        f"{_pct(res['domain_classifier_heldout_accuracy'])}%, balanced "
        f"{_pct(res['domain_classifier_heldout_balanced_accuracy'])}%; target-domain class classifier "
        f"({cfg.classifier_epochs} epochs, class weights `{cfg.classifier_class_weight}`) accuracy "
        f"{_pct(res['target_classifier_heldout_accuracy'])}%, balanced "
        f"{_pct(res['target_classifier_heldout_balanced_accuracy'])}%; feature network for FID (class x "
        f"domain; no Inception weights offline, so FIDs compare only within this table) accuracy "
        f"{_pct(res['feature_net_heldout_accuracy'])}%, balanced "
        f"{_pct(res['feature_net_heldout_balanced_accuracy'])}%.",
        "",
        "| method | successful translations (%) | style transfer (%) | class preservation (%) "
        "| balanced preservation (%) | plan class match (%) | plan ESS (%) | feature FID | transport cost "
        "| train time (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in res["summary"].items():
        if len(s["seeds"]) < len(cfg.seeds):
            name = f"{name} (seeds {s['seeds']} only)"
        lines.append(
            f"| {name} | **{_fmt(s['successful'], 100)}** | {_fmt(s['style_transfer'], 100)} | "
            f"{_fmt(s['class_preservation'], 100)} | {_fmt(s['class_preservation_balanced'], 100)} | "
            f"{_pct(s['plan_class_match'])} | {_pct(s['plan_source_ess'])} | "
            f"{_fmt(s['feature_fid'], 1, 2)} | "
            f"{_fmt(s['transport_cost'], 1, 1)} | {_fmt(s['train_time_s'], 1, 0)} |"
        )
    for name, m in res["references"].items():
        tc = "–" if math.isnan(m["transport_cost"]) else f"{m['transport_cost']:.1f}"
        lines.append(
            f"| *reference: {name}* | {_pct(m['successful'])} | {_pct(m['style_transfer'])} | "
            f"{_pct(m['class_preservation'])} | {_pct(m['class_preservation_balanced'])} | – | – | "
            f"{m['feature_fid']:.2f} | {tc} | – |"
        )
    lines += [
        "",
        "Mean ± standard deviation over seeds. **Successful translations**: share of translations that the "
        "domain classifier judges target-style *and* the class classifier gives the source label; style "
        "transfer and class preservation are the two shares alone. The identity map keeps every class but "
        "changes no style, so it scores near 0 on successful translations. Balanced preservation: mean over "
        "source classes of the per-class preservation. Plan class match: on "
        f"{cfg.coupling_batches} training minibatches, the share of each source class's plan mass "
        "coupled to target samples of the same class, averaged over classes (a property of the coupling "
        "alone). Plan ESS: effective sample size 1 / sum_i w_i^2 of the plan's normalised source marginal "
        "w, as a share of the batch (100% for balanced plans). Transport cost: mean over images of "
        "|x - T(x)|^2 (pixels in [-1, 1]). Class flip matrices (seed "
        f"{cfg.seeds[0]}) and the coupling class-transfer matrices are in the JSON.",
    ]
    ceil = res.get("balanced_plan_ceiling")
    if ceil is not None:
        lines.append(
            f"Ceiling of a balanced map: with these proportions a balanced plan must move "
            f"{_pct(1 - ceil['plain'])}% of the source mass to another class, so any translator whose "
            f"outputs have the target class proportions preserves at most {_pct(ceil['plain'])}% of the "
            f"classes ({_pct(ceil['balanced'])}% balanced). A partly trained flow can exceed this by not "
            "reaching the target distribution; an unbalanced plan is not bound by it."
        )
    flat = {n: s.get("val_loss_last_vs_mid") for n, s in res["summary"].items()}
    if any(v is not None for v in flat.values()):
        lines.append(
            "Validation loss (every "
            f"{cfg.val_every} steps on {cfg.val_batches} val batches): relative change of the mean over the "
            "last "
            "quarter of training against the third quarter, per method: "
            + ", ".join(f"{n} {100 * v:+.1f}%" for n, v in flat.items()
                        if v is not None and not math.isnan(v))
            + "."
        )
    lines += [
        f"Total wall time {res['total_time_s']} s on {res['machine']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=str, default=None, help="YAML file with TranslationConfig keys")
    p.add_argument("--task", choices=("mnist", "pneumoniamnist"), default=None)
    p.add_argument("--root", type=str, default=None, help="data root (default $TORCHUOT_DATA_ROOT)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--width", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=None)
    p.add_argument("--n-eval", type=int, default=None)
    p.add_argument("--max-per-domain", type=int, default=None)
    p.add_argument("--classifier-epochs", type=int, default=None)
    p.add_argument("--methods", type=str, nargs="+", default=None,
                   help="subset of the configured method names to run")
    p.add_argument("--out-dir", type=str, default=None)
    p.add_argument("--accelerator", type=str, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--cached-only", action="store_true",
                   help="report the finished runs cached under <out_dir>/.runs_<stem>/, train nothing")
    a = p.parse_args(argv)
    overrides = {
        "task": a.task, "root": a.root, "steps": a.steps, "batch_size": a.batch_size, "width": a.width,
        "seeds": a.seeds, "n_eval": a.n_eval, "max_per_domain": a.max_per_domain,
        "classifier_epochs": a.classifier_epochs, "out_dir": a.out_dir, "accelerator": a.accelerator,
        "threads": a.threads,
    }
    if a.no_progress:
        overrides["progress"] = False
    if a.cached_only:
        overrides["cached_only"] = True
    cfg = TranslationConfig.from_yaml(a.config, **overrides) if a.config else TranslationConfig(
        **{k: v for k, v in overrides.items() if v is not None})
    if a.methods:
        names = [m["name"] for m in cfg.methods]
        missing = [m for m in a.methods if m not in names]
        if missing:
            raise ValueError(f"--methods {missing} not among the configured methods {names}.")
        cfg = dataclasses.replace(cfg, methods=[m for m in cfg.methods if m["name"] in a.methods])
    logging.basicConfig(level=logging.WARNING)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    res = run(cfg)
    md = Path(cfg.out_dir) / f"{report_stem(cfg)}.md"
    print(md)
    print(md.read_text())
    return res


if __name__ == "__main__":
    main()
