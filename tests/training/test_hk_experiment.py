"""The HK-embedding evaluation runner on a tiny real set (training/experiments/hk_embeddings.py)."""

from __future__ import annotations

import csv

import numpy as np
import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

from training.experiments import hk_embeddings as hk  # noqa: E402


def test_runner_on_a_tiny_pneumoniamnist_set(shared_data, tmp_path):
    res = hk.run("pneumoniamnist", n=16, pool=24, seeds=2, kappa=2.0, blur=1.0, tol=1e-3, dim=2,
                 alphas=(0.9,), n_neighbors=5, out_dir=tmp_path, root=shared_data, cache=tmp_path / "cache")
    stem = tmp_path / "hk_embeddings_pneumoniamnist"
    for ext in (".md", ".csv", ".png"):
        assert (stem.with_suffix(ext)).stat().st_size > 0
    with open(stem.with_suffix(".csv")) as fh:
        rows = list(csv.DictReader(fh))
    # 3 metrics x 4 embeddings x (8 classifiers + 2 clusterings x 2 scores) x 2 seeds
    assert len(rows) == 3 * 4 * (8 + 4) * 2
    assert {r["metric"] for r in rows} == {"Euclidean", "W2", "HK"}
    vals = np.array([float(r["value"]) for r in rows])
    assert np.isfinite(vals).all() and (vals <= 1).all()
    md = stem.with_suffix(".md").read_text()
    assert "| HK vs W2 | all | all |" in md and "Wilcoxon" in md and "W/T/L" in md
    # the pool's distance matrices were cached once (24 x 24), with their timings
    cached = sorted((tmp_path / "cache" / "pneumoniamnist_pool24").glob("D_*.npy"))
    assert len(cached) == 3 and all(np.load(c).shape == (24, 24) for c in cached)
    assert len(list((tmp_path / "cache" / "pneumoniamnist_pool24").glob("D_*.json"))) == 3
    assert {w["comparison"] for w in res["wins"]} == {"HK vs W2", "HK vs Euclidean", "W2 vs Euclidean"}


def test_win_rates_count_wins_and_ties():
    rows = []
    for seed, (hk_v, w2_v) in enumerate([(0.9, 0.8), (0.7, 0.8), (0.5, 0.5), (0.6, 0.1)]):
        rows.append({"metric": "HK", "embedding": "MDS", "score": "LDA", "seed": seed, "value": hk_v})
        rows.append({"metric": "W2", "embedding": "MDS", "score": "LDA", "seed": seed, "value": w2_v})
    w = {(r["comparison"], r["embedding"], r["scores"]): r for r in hk.win_rates(rows)}
    r = w[("HK vs W2", "MDS", "classification")]
    assert r["win_rate"] == pytest.approx(2.5 / 4)
    assert (r["wins"], r["ties"], r["losses"]) == (2, 1, 1)
    assert w[("HK vs W2", "all", "all")]["n"] == 4
    # Wilcoxon over the 4 seeds: the tied seed drops out, ranks of |0.1|, |0.1|, |0.5| with ties
    from training.stats import wilcoxon_signed_rank

    assert r["p"] == pytest.approx(wilcoxon_signed_rank([0.9 - 0.8, 0.7 - 0.8, 0.0, 0.6 - 0.1])[1])
    assert r["p_holm"] >= r["p"]
    assert ("HK vs W2", "MDS", "clustering") not in w


def test_stratified_loader_and_bad_dataset(shared_data):
    X, y = hk.load_images("mnist", 30, root=shared_data)
    assert X.shape == (30, 28, 28) and float(X.max()) <= 1.0
    assert np.bincount(y).tolist() == [3] * 10
    with pytest.raises(ValueError, match="dataset"):
        hk.load_images("cifar", 10, root=shared_data)


def test_seeds_draw_their_own_stratified_subsets_of_the_pool():
    y = np.repeat(np.arange(3), 10)
    subs = [hk.stratified_subset(y, 12, seed) for seed in range(3)]
    for s in subs:
        assert len(set(s)) == 12 and np.bincount(y[s]).tolist() == [4, 4, 4]
    assert not np.array_equal(subs[0], subs[1])
    with pytest.raises(ValueError, match="n_images"):
        hk.stratified_subset(y, 31, 0)


def test_identical_cells_counts_cells_equal_on_every_seed():
    rows = [
        {"metric": "HK", "embedding": "MDS", "score": s, "seed": seed, "value": v}
        for s, vals in (("LDA", (0.5, 0.5, 0.5)), ("1-NN", (0.5, 0.6, 0.5)))
        for seed, v in enumerate(vals)
    ]
    assert hk.identical_cells(rows) == {"HK": (1, 2)}


def test_cli_help(capsys):
    with pytest.raises(SystemExit):
        hk.main(["--help"])
    out = capsys.readouterr().out
    for opt in ("--kappa", "--n-images", "--pool", "--distributed", "--blur-per-kappa", "--alpha"):
        assert opt in out
