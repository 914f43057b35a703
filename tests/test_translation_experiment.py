"""The translation experiment end to end on a tiny budget (real MNIST files, a few steps)."""

from __future__ import annotations

import json
import math

import pytest

from training.experiments.translation import TranslationConfig, main, run

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
    assert res["references"]["source, untranslated"]["transport_cost"] == 0.0
    flips = res["class_flip_matrices_seed0"]["OT-FM"]
    assert len(flips) == 3 and all(abs(sum(row) - 1) < 1e-9 or sum(row) == 0 for row in flips)
    md = (tmp_path / "translation_mnist.md").read_text()
    assert "| OT-FM |" in md and "Inception" in md


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
    with pytest.raises(ValueError, match="tau_a"):
        TranslationConfig(methods=[{"name": "x", "method": "uot", "tau_a": 1.5}])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stepz: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        TranslationConfig.from_yaml(bad)
    with pytest.raises(ValueError, match="--methods"):
        main(["--methods", "nope", "--no-progress"])
