"""The translation experiment end to end on a tiny budget (real MNIST files, a few steps)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from training.experiments.translation import (
    MethodSpec,
    TranslationConfig,
    balanced_plan_ceiling,
    coupling_diagnostics,
    main,
    run,
)

TINY = dict(
    steps=2,
    batch_size=16,
    width=8,
    ode_steps=2,
    max_per_domain=96,
    n_eval=24,
    classifier_epochs=1,
    progress=False,
    threads=1,
)


def test_tiny_end_to_end_run_writes_the_report(shared_data, tmp_path):
    cfg = TranslationConfig(
        root=str(shared_data),
        seeds=[0, 1],
        methods=[
            {"name": "OT-FM", "method": "ot"},
            {"name": "UOT-FM tau=0.9", "method": "uot", "tau_a": 0.9, "tau_b": 0.9},
        ],
        out_dir=str(tmp_path),
        **TINY,
    )
    res = run(cfg)
    for ext in ("md", "json", "png"):
        assert (tmp_path / f"translation_mnist.{ext}").stat().st_size > 0
    saved = json.loads((tmp_path / "translation_mnist.json").read_text())
    assert set(saved["summary"]) == {"OT-FM", "UOT-FM tau=0.9"}
    assert len(saved["runs"]) == 4 and {r["seed"] for r in saved["runs"]} == {0, 1}
    for r in res["runs"]:
        assert 0.0 <= r["class_preservation"] <= 1.0
        assert math.isfinite(r["feature_fid"]) and r["feature_fid"] >= 0
        assert math.isfinite(r["transport_cost"]) and r["transport_cost"] >= 0
    assert 0.0 < res["target_classifier_heldout_accuracy"] <= 1.0
    assert 0.0 < res["target_classifier_heldout_balanced_accuracy"] <= 1.0
    for r in res["runs"]:
        assert 0.0 <= r["class_preservation_balanced"] <= 1.0
    assert res["balanced_plan_ceiling"] == pytest.approx({"plain": 0.6, "balanced": (1 / 3 + 1 + 1) / 3})
    for name, m in res["coupling_class_transfer"].items():
        assert len(m) == 3 and all(sum(row) == pytest.approx(1.0) for row in m)
        assert saved["summary"][name]["plan_class_match"] == pytest.approx(sum(m[c][c] for c in range(3)) / 3)
    assert saved["summary"]["OT-FM"]["plan_source_ess"] == pytest.approx(1.0)
    assert 0 < saved["summary"]["UOT-FM tau=0.9"]["plan_source_ess"] < 1
    assert res["references"]["identity: source, untranslated"]["transport_cost"] == 0.0
    oracle = res["references"]["oracle: source image in the target style (`dilate`)"]
    assert oracle["transport_cost"] > 0 and math.isfinite(oracle["feature_fid"])
    flips = res["class_flip_matrices_seed0"]["OT-FM"]
    assert len(flips) == 3 and all(abs(sum(row) - 1) < 1e-9 or sum(row) == 0 for row in flips)
    md = (tmp_path / "translation_mnist.md").read_text()
    assert "| OT-FM |" in md and "Inception" in md and "balanced preservation" in md
    assert "Ceiling of a balanced map" in md


def test_tiny_pneumoniamnist_run_reports_balanced_metrics(shared_data, tmp_path):
    cfg = TranslationConfig(
        task="pneumoniamnist",
        root=str(shared_data),
        source_classes=[0, 1],
        source_proportions=[0.7, 0.3],
        target_proportions=[0.3, 0.7],
        seeds=[0],
        methods=[{"name": "UOT-FM tau=0.7", "method": "uot", "tau_a": 0.7, "tau_b": 0.7}],
        description="Tiny PneumoniaMNIST check.",
        coupling_batches=2,
        out_dir=str(tmp_path),
        **TINY,
    )
    res = run(cfg)
    # max_per_domain 96 split 0.7 / 0.3 (floored): the source is mostly normal, the target mostly pneumonia
    assert res["class_counts_train"] == {"source": {0: 67, 1: 28}, "target": {0: 28, 1: 67}}
    assert res["balanced_plan_ceiling"] == pytest.approx({"plain": 0.6, "balanced": (3 / 7 + 1) / 2})
    assert 0.0 <= res["runs"][0]["class_preservation_balanced"] <= 1.0
    md = (tmp_path / "translation_pneumoniamnist.md").read_text()
    assert md.splitlines()[2] == "Tiny PneumoniaMNIST check."


def _two_clusters(n0: int, n1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n0`` images near -1 (class 0) then ``n1`` near +1 (class 1), shape (n, 1, 4, 4)."""
    gen = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * n0 + [1] * n1)
    x = (2.0 * y - 1.0)[:, None, None, None] + 0.01 * torch.randn(n0 + n1, 1, 4, 4, generator=gen)
    return x, y


def test_coupling_diagnostics_of_exact_ot_on_separated_classes_meet_the_ceiling():
    # source 6/2, target 2/6: the exact balanced plan keeps all of class 1 and must send 4 of the
    # 6 class-0 units to class 1, so its rows are [1/3, 2/3] and [0, 1] (the ceiling).
    x0, y0 = _two_clusters(6, 2)
    x1, y1 = _two_clusters(2, 6)
    kw = dict(batch_size=8, n_batches=2, seed=0)
    exact_d = coupling_diagnostics(MethodSpec("exact", "exact"), 0.01, x0, y0, x1, y1, **kw)
    exact = exact_d["class_transfer"]
    assert exact_d["source_ess"] == pytest.approx(1.0) and exact_d["target_ess"] == pytest.approx(1.0)
    torch.testing.assert_close(exact, torch.tensor([[1 / 3, 2 / 3], [0.0, 1.0]], dtype=torch.float64))
    ceiling = balanced_plan_ceiling([0.75, 0.25], [0.25, 0.75], 2)
    assert float(exact.diagonal().mean()) == pytest.approx(ceiling["balanced"])
    indep = coupling_diagnostics(MethodSpec("i", "independent"), 0.01, x0, y0, x1, y1, **kw)["class_transfer"]
    torch.testing.assert_close(indep, torch.tensor([[0.25, 0.75], [0.25, 0.75]], dtype=torch.float64))
    # an unbalanced plan is not bound by the ceiling: it keeps more of class 0 within its class
    uot_d = coupling_diagnostics(MethodSpec("u", "uot", 0.5, 0.5), 0.01, x0, y0, x1, y1, **kw)
    uot = uot_d["class_transfer"]
    assert float(uot[0, 0]) > 0.9 and float(uot[1, 1]) > 0.99
    # it does so by re-weighting: p0 q0 = p1 q1 here, so by symmetry both class blocks carry the
    # same mass; each class-0 source then weighs 1/12 and each class-1 source 1/4, an effective
    # sample size of 1 / (6/144 + 2/16) = 6 of 8 sources
    assert uot_d["source_ess"] == pytest.approx(0.75, abs=0.01)


def test_balanced_plan_ceiling_known_values():
    assert balanced_plan_ceiling([0.6, 0.2, 0.2], [0.2, 0.2, 0.6], 3) == pytest.approx(
        {"plain": 0.6, "balanced": 7 / 9})
    assert balanced_plan_ceiling(None, None, 4) == pytest.approx({"plain": 1.0, "balanced": 1.0})
    assert balanced_plan_ceiling([1, 0], [0.5, 0.5], 2) == pytest.approx({"plain": 0.5, "balanced": 0.5})


def test_cli_with_yaml_config_and_method_subset(shared_data, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "task: mnist\nsteps: 1\nbatch_size: 16\nwidth: 8\node_steps: 1\nmax_per_domain: 64\nn_eval: 12\n"
        "classifier_epochs: 1\nseeds: [0]\nmethods:\n  - {name: indep, method: independent}\n"
        "  - {name: exact, method: exact}\n"
    )
    res = main(["--config", str(cfg), "--root", str(shared_data), "--out-dir", str(tmp_path / "o"),
                "--methods", "exact", "--no-progress"])
    assert list(res["summary"]) == ["exact"]
    assert (tmp_path / "o" / "translation_mnist.md").exists()


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match="task"):
        TranslationConfig(task="cifar")
    with pytest.raises(ValueError, match="steps"):
        TranslationConfig(steps=0)
    with pytest.raises(ValueError, match="method must be one of"):
        TranslationConfig(methods=[{"name": "x", "method": "sliced"}])
    with pytest.raises(ValueError, match="classifier_class_weight"):
        TranslationConfig(classifier_class_weight="inverse")
    with pytest.raises(ValueError, match="coupling_batches"):
        TranslationConfig(coupling_batches=0)
    with pytest.raises(ValueError, match="tau_a"):
        TranslationConfig(methods=[{"name": "x", "method": "uot", "tau_a": 1.5}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        TranslationConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="--methods"):
        main(["--methods", "nope", "--no-progress"])


@pytest.mark.parametrize(
    "path", sorted((Path(__file__).parents[2] / "training" / "configs").glob("translation_*.yaml")), ids=str
)
def test_shipped_translation_configs_load(path):
    cfg = TranslationConfig.from_yaml(path)
    assert cfg.method_specs and cfg.seeds
    if cfg.task == "pneumoniamnist":
        assert cfg.source_proportions[0] > cfg.source_proportions[1]  # normal-heavy source
        assert cfg.target_proportions[0] < cfg.target_proportions[1]  # pneumonia-heavy target
        assert cfg.classifier_class_weight == "balanced" and cfg.description


def test_tiny_latent_run_reports_the_new_score_and_resumes(shared_data, tmp_path):
    kw = {**TINY, "width": 8}
    cfg = TranslationConfig(
        root=str(shared_data), space="latent", latent_dim=8, ae_width=4, ae_steps=3, ae_batch_size=16,
        hidden=16, depth=1, eval_ode="dopri5", val_every=1, val_batches=1, seeds=[0, 1],
        methods=[{"name": "OT-FM", "method": "ot"},
                 {"name": "UOT-FM tau_a=0.9", "method": "uot", "tau_a": 0.9, "tau_b": 1.0}],
        out_dir=str(tmp_path), **kw,
    )
    res = run(cfg)
    for suffix in (".md", ".json", ".png", "_pareto.png", "_pareto_preservation.png", "_loss.png"):
        assert (tmp_path / f"translation_mnist_latent{suffix}").stat().st_size > 0
    assert set(res["autoencoder"]) >= {"train_mse", "val_mse", "steps"}
    assert 0.5 <= res["domain_classifier_heldout_balanced_accuracy"] <= 1.0
    refs = res["references"]
    assert "identity through the autoencoder (encode, decode)" in refs
    assert "oracle through the autoencoder" in refs
    for r in res["runs"]:
        assert 0 <= r["successful"] <= min(r["style_transfer"], r["class_preservation"]) <= 1
        assert [s for s, _ in r["val_curve"]] == [1, 2]  # validation after every step
    assert res["summary"]["OT-FM"]["seeds"] == [0, 1]
    md = (tmp_path / "translation_mnist_latent.md").read_text()
    assert "successful translations" in md and "identity: source, untranslated" in md
    # a second call reuses the four cached runs instead of training again
    cached = sorted(p.name for p in (tmp_path / ".runs_translation_mnist_latent").glob("*_seed*.pt"))
    assert len(cached) == 4
    again = run(dataclasses.replace(cfg, cached_only=True, seeds=[0, 1, 2]))
    assert [r["train_time_s"] for r in again["runs"]] == [r["train_time_s"] for r in res["runs"]]
    assert again["summary"]["OT-FM"]["seeds"] == [0, 1]
