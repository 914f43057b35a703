"""The HK-embedding evaluation runner on a tiny real set (training/experiments/hk_embeddings.py)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from training.experiments import hk_embeddings as hk  # noqa: E402


def test_runner_on_a_tiny_pneumoniamnist_set(shared_data, tmp_path):
    res = hk.run("pneumoniamnist", n=16, seeds=1, kappa=2.0, blur=1.0, tol=1e-3, dim=2, alpha=0.9,
                 n_neighbors=5, out_dir=tmp_path, root=shared_data, cache=tmp_path / "cache")
    stem = tmp_path / "hk_embeddings_pneumoniamnist"
    for ext in (".md", ".csv", ".png"):
        assert (stem.with_suffix(ext)).stat().st_size > 0
    with open(stem.with_suffix(".csv")) as fh:
        rows = list(csv.DictReader(fh))
    # 3 metrics x 4 embeddings x (8 classifiers + 2 clusterings x 2 scores) x 1 seed
    assert len(rows) == 3 * 4 * (8 + 4)
    assert {r["metric"] for r in rows} == {"Euclidean", "W2", "HK"}
    vals = np.array([float(r["value"]) for r in rows])
    assert np.isfinite(vals).all() and (vals <= 1).all()
    md = stem.with_suffix(".md").read_text()
    assert "| HK vs W2 | all |" in md and "Win rates" in md
    # distance matrices were cached: a second run reuses them
    assert len(list((tmp_path / "cache" / "pneumoniamnist").glob("D_*.npy"))) == 3
    assert {w["comparison"] for w in res["wins"]} == {"HK vs W2", "HK vs Euclidean", "W2 vs Euclidean"}


def test_win_rates_count_wins_and_ties():
    rows = []
    for seed, (hk_v, w2_v) in enumerate([(0.9, 0.8), (0.7, 0.8), (0.5, 0.5), (0.6, 0.1)]):
        rows.append({"metric": "HK", "embedding": "MDS", "score": "LDA", "seed": seed, "value": hk_v})
        rows.append({"metric": "W2", "embedding": "MDS", "score": "LDA", "seed": seed, "value": w2_v})
    w = {(r["comparison"], r["embedding"], r["scores"]): r for r in hk.win_rates(rows)}
    assert w[("HK vs W2", "MDS", "classification")]["win_rate"] == pytest.approx(2.5 / 4)
    assert w[("HK vs W2", "all", "all")]["n"] == 4
    assert ("HK vs W2", "MDS", "clustering") not in w


def test_stratified_loader_and_bad_dataset(shared_data):
    X, y = hk.load_images("mnist", 30, root=shared_data)
    assert X.shape == (30, 28, 28) and float(X.max()) <= 1.0
    assert np.bincount(y).tolist() == [3] * 10
    with pytest.raises(ValueError, match="dataset"):
        hk.load_images("cifar", 10, root=shared_data)


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        hk.main(["--help"])
    assert "--kappa" in capsys.readouterr().out
