"""Hellinger-Kantorovich neighbour embeddings of images: the evaluation of arXiv 2509.19226.

Images -> pairwise Euclidean / W2 / HK distances (:func:`torchuot.images.pairwise_distances`)
-> MDS, Isomap, t-SNE, Laplacian eigenmaps (:mod:`torchuot.embed`) -> 8 classifiers (LDA,
1/3/5-NN, linear SVM, RBF SVM, random forest, multinomial logistic regression) and 2
clusterings (k-means, spectral; ARI and NMI) -> paired comparisons (HK vs W2, HK vs Euclidean,
W2 vs Euclidean): win / tie / loss counts, win rates and a Wilcoxon signed-rank test over seeds
with Holm's correction, written as Markdown + CSV, and 2D scatter plots coloured by class.

Seeds are independent draws: a pool of images is drawn once and its three distance matrices are
computed once (cached, checkpointed after every block of pairs, so an interrupted run resumes);
each seed draws its own class-stratified subset of the pool, estimates the embedding dimension
on it (alpha = 0.97 and 0.99 by default, as the paper), embeds it and scores it on its own
80/20 split. ``--blur-per-kappa`` holds HK's eps fixed across a kappa sweep. Under
``torchrun --nproc_per_node K ... --distributed`` the matrices are split over the ranks.

Run ``python -m training.experiments.hk_embeddings --help``. Needs scikit-learn and matplotlib
(the ``embed`` extra).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from torchuot.embed import estimate_dimension, isomap, laplacian_eigenmaps, mds, tsne
from torchuot.images import pairwise_distances
from training.datasets import default_data_root, load_medmnist, load_mnist
from training.stats import holm, wilcoxon_signed_rank

__all__ = ["load_images", "stratified_subset", "metric_matrix", "distance_matrices", "embed_all", "evaluate",
           "seed_scores", "win_rates", "identical_cells", "run", "main"]

_log = logging.getLogger(__name__)
CLASSIFIERS = ("LDA", "1-NN", "3-NN", "5-NN", "linear SVM", "RBF SVM", "random forest", "logistic regression")
CLUSTERINGS = ("k-means", "spectral")
EMBEDDINGS = ("MDS", "Isomap", "t-SNE", "Laplacian")
COMPARISONS = (("HK", "W2"), ("HK", "Euclidean"), ("W2", "Euclidean"))


def load_images(dataset: str, n: int, *, root: str | Path | None = None, seed: int = 0
                ) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` images ``(n, 28, 28)`` in [0, 1] and labels, a class-stratified random subset."""
    root = default_data_root() if root is None else Path(root)
    if dataset == "mnist":
        X, y = load_mnist(root, "test")
    elif dataset == "pneumoniamnist":
        parts = [load_medmnist(root, "pneumoniamnist", s) for s in ("train", "val", "test")]
        X, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    else:
        raise ValueError(f"dataset must be 'mnist' or 'pneumoniamnist', got {dataset!r}.")
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    per = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    take = np.concatenate([p[: n // len(classes) + (i < n % len(classes))] for i, p in enumerate(per)])
    take = np.sort(take)
    return torch.tensor(X[take], dtype=torch.float32) / 255.0, y[take]


def matrix_path(cache: Path, name: str, *, n: int, kappa: float, blur: float, tol: float) -> Path:
    """Cache file of one ``(n, n)`` matrix: Euclidean / W2 (blur) / HK (kappa, blur)."""
    tag = {"Euclidean": "", "W2": f"_blur{blur:g}", "HK": f"_kappa{kappa:g}_blur{blur:g}"}[name]
    return cache / f"D_{name}{tag}_n{n}_tol{tol:g}.npy"


def metric_matrix(images: torch.Tensor, name: str, *, kappa: float, blur: float, tol: float,
                  cache: Path | None = None, progress: bool = False,
                  distributed: bool | None = None) -> np.ndarray:
    """One ``(n, n)`` distance matrix (``name`` in Euclidean / W2 / HK), cached as ``.npy``.

    The partial matrix is checkpointed after every block of pairs next to the cache file (one
    checkpoint per rank under ``torchrun``), so an interrupted run resumes where it stopped.
    """
    spec = {"Euclidean": dict(metric="euclidean"),
            "W2": dict(metric="w2", blur=blur, tol=tol),
            "HK": dict(metric="hk", kappa=kappa, blur=blur, tol=tol)}[name]
    path = None if cache is None else matrix_path(cache, name, n=len(images), kappa=kappa, blur=blur, tol=tol)
    if path is not None and path.exists():
        return np.load(path)
    t0 = time.perf_counter()
    ckpt = None if path is None or name == "Euclidean" else path.with_suffix(".partial.pt")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    extra = {} if distributed is None else {"distributed": distributed}
    D = pairwise_distances(images, progress=progress, checkpoint=ckpt, **spec, **extra).double().numpy()
    _log.info("%s distances of %d images (kappa=%g, blur=%g): %.1fs", name, len(images), kappa, blur,
              time.perf_counter() - t0)
    if path is not None and _is_rank0():
        np.save(path, D)
        ranks = _world()
        path.with_suffix(".json").write_text(
            json.dumps(
                {
                    "seconds": round(time.perf_counter() - t0, 1),
                    "n": len(images),
                    "threads": torch.get_num_threads(),
                    "ranks": ranks,
                    "kappa": kappa,
                    "blur": blur,
                    "tol": tol,
                }
            )
        )
        for stale in path.parent.glob(path.with_suffix("").name + ".partial*.pt"):
            stale.unlink()
    return D


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def distance_matrices(images: torch.Tensor, *, kappa: float, blur: float, tol: float,
                      cache: Path | None = None, progress: bool = False,
                      distributed: bool | None = None) -> dict[str, np.ndarray]:
    """Euclidean, W2 and HK ``(n, n)`` matrices (cached in ``cache`` as ``.npy`` files)."""
    return {name: metric_matrix(images, name, kappa=kappa, blur=blur, tol=tol, cache=cache,
                                progress=progress, distributed=distributed)
            for name in ("Euclidean", "W2", "HK")}


def embed_all(D: np.ndarray, dim: int, *, n_neighbors: int, seed: int,
              tsne_cache: dict | None = None) -> dict[str, np.ndarray]:
    """The four embeddings of one distance matrix, ``(n, dim)`` each (t-SNE is 2D and does not
    depend on ``dim``: ``tsne_cache``, a dict, keeps it across calls on the same matrix)."""
    Dt = torch.from_numpy(D)
    if tsne_cache is None or "Z" not in tsne_cache:
        g = torch.Generator().manual_seed(seed)
        Zt = tsne(Dt, 2, perplexity=min(30.0, (len(D) - 1) / 3), generator=g).numpy()
        if tsne_cache is not None:
            tsne_cache["Z"] = Zt
    else:
        Zt = tsne_cache["Z"]
    return {
        "MDS": mds(Dt, dim).numpy(),
        "Isomap": isomap(Dt, dim, n_neighbors=n_neighbors).numpy(),
        "t-SNE": Zt,
        "Laplacian": laplacian_eigenmaps(Dt, dim, n_neighbors=n_neighbors).numpy(),
    }


def _classifier(name: str, seed: int):
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC, LinearSVC

    scaled = lambda m: make_pipeline(StandardScaler(), m)
    return {
        "LDA": lambda: LinearDiscriminantAnalysis(),
        "1-NN": lambda: KNeighborsClassifier(1),
        "3-NN": lambda: KNeighborsClassifier(3),
        "5-NN": lambda: KNeighborsClassifier(5),
        "linear SVM": lambda: scaled(LinearSVC(dual="auto", max_iter=5000, random_state=seed)),
        "RBF SVM": lambda: scaled(SVC(kernel="rbf")),
        "random forest": lambda: RandomForestClassifier(100, random_state=seed),
        "logistic regression": lambda: scaled(LogisticRegression(max_iter=2000)),
    }[name]()


def evaluate(Z: np.ndarray, y: np.ndarray, seeds: list[int]) -> dict[str, list[float]]:
    """Scores of one embedding: classifier accuracies on 80/20 splits, ARI/NMI of clusterings."""
    from sklearn.cluster import KMeans, SpectralClustering
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
    from sklearn.model_selection import train_test_split

    scores: dict[str, list[float]] = {}
    k = len(np.unique(y))
    for seed in seeds:
        tr, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=seed, stratify=y)
        for name in CLASSIFIERS:
            clf = _classifier(name, seed).fit(Z[tr], y[tr])
            scores.setdefault(name, []).append(float((clf.predict(Z[te]) == y[te]).mean()))
        for name in CLUSTERINGS:
            if name == "k-means":
                lab = KMeans(k, n_init=10, random_state=seed).fit_predict(Z)
            else:
                nn = min(10, len(y) - 1)
                lab = SpectralClustering(k, affinity="nearest_neighbors", n_neighbors=nn,
                                         random_state=seed).fit_predict(Z)
            scores.setdefault(f"{name} ARI", []).append(float(adjusted_rand_score(y, lab)))
            scores.setdefault(f"{name} NMI", []).append(float(normalized_mutual_info_score(y, lab)))
    return scores


def stratified_subset(y: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of a class-stratified random subset of size ``n`` of labels ``y``."""
    classes = np.unique(y)
    if not 0 < n <= len(y):
        raise ValueError(f"n_images must lie in [1, {len(y)}] (the pool size), got {n}.")
    rng = np.random.default_rng(seed)
    per = [rng.permutation(np.flatnonzero(y == c)) for c in classes]
    want = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    if any(w > len(p) for w, p in zip(want, per, strict=True)):
        raise ValueError(f"the pool has too few images of some class for a stratified subset of {n}.")
    return np.sort(np.concatenate([p[:w] for p, w in zip(per, want, strict=True)]))


def seed_scores(D: np.ndarray, y: np.ndarray, *, metric: str, n_images: int, seeds: list[int],
                alpha: float, dim: int | None, n_neighbors: int, memo: dict | None = None
                ) -> tuple[list[dict], dict[int, int], dict[str, np.ndarray]]:
    """Scores of one pool matrix ``D: (P, P)`` over seeds, each seed on its own subset.

    Seed ``s`` draws a class-stratified subset of ``n_images`` pool images
    (:func:`stratified_subset`), estimates the dimension on it (``alpha``), embeds it and scores
    the embeddings on one 80/20 split / clustering seed ``s``. ``memo`` (keyed by ``metric``,
    which must name the matrix's parameters) reuses embeddings and scores across calls.

    Returns:
        rows (metric, embedding, score, seed, value), the dimension per seed, and the seed-0
        embeddings (for plots).
    """
    memo = {} if memo is None else memo
    rows, dims, first = [], {}, {}
    for seed in seeds:
        idx = stratified_subset(y, n_images, seed)
        Ds, ys = D[np.ix_(idx, idx)], y[idx]
        d = dim if dim is not None else max(2, estimate_dimension(torch.from_numpy(Ds), alpha=alpha,
                                                                  n_neighbors=n_neighbors))
        dims[seed] = d
        key = (metric, seed, d)
        if key not in memo:
            Z = embed_all(Ds, d, n_neighbors=n_neighbors, seed=seed,
                          tsne_cache=memo.setdefault(("t-SNE", metric, seed), {}))
            memo[key] = (Z, {emb: evaluate(z, ys, [seed]) for emb, z in Z.items()})
        Z, scores = memo[key]
        if seed == seeds[0]:
            first = Z
        for emb, sc in scores.items():
            for score, vals in sc.items():
                rows.append({"metric": metric, "embedding": emb, "score": score, "seed": seed,
                             "value": vals[0]})
    return rows, dims, first


def win_rates(rows: list[dict]) -> list[dict]:
    """Paired comparisons (A vs B) per embedding and score kind, with a test over seeds.

    Cells are (score, seed) pairs present for both metrics: ``wins`` / ``ties`` / ``losses``
    count them, ``win_rate`` counts a tie as one half. ``p``: two-sided Wilcoxon signed-rank
    test over seeds of the per-seed mean score difference A - B across the group's scores
    (:func:`training.stats.wilcoxon_signed_rank`; 1.0 with fewer than 2 seeds); ``p_holm``:
    Holm-adjusted over all rows returned (one family); ``p_holm_headline`` (the rows over all
    embeddings and scores only): Holm-adjusted over those, one per comparison.
    ``rows``: dicts with keys metric,
    embedding, score, seed, value; a metric's name may carry a suffix after ``@`` (ignored).
    """
    table = {(r["metric"].split("@")[0], r["embedding"], r["score"], r["seed"]): r["value"] for r in rows}
    out = []
    for (A, B), emb in itertools.product(COMPARISONS, EMBEDDINGS + ("all",)):
        for kind in ("classification", "clustering", "all"):
            w = t = l = 0
            diffs: dict[int, list[float]] = {}
            for (m, e, s, seed), v in table.items():
                if m != A or (emb != "all" and e != emb):
                    continue
                is_clf = s in CLASSIFIERS
                if (kind == "classification" and not is_clf) or (kind == "clustering" and is_clf):
                    continue
                u = table.get((B, e, s, seed))
                if u is None:
                    continue
                w, t, l = w + (v > u), t + (v == u), l + (v < u)
                diffs.setdefault(seed, []).append(v - u)
            n = w + t + l
            if n:
                d = [float(np.mean(x)) for x in diffs.values()]
                p = wilcoxon_signed_rank(d)[1] if len(d) > 1 else 1.0
                out.append({"comparison": f"{A} vs {B}", "embedding": emb, "scores": kind,
                            "win_rate": (w + 0.5 * t) / n, "n": int(n), "wins": int(w), "ties": int(t),
                            "losses": int(l), "seeds": len(d), "mean_diff": float(np.mean(d)), "p": p})
    for r, ph in zip(out, holm([r["p"] for r in out]), strict=True):
        r["p_holm"] = float(ph)
    # The headline family: one row per comparison (all embeddings, all scores).
    head = [r for r in out if r["embedding"] == "all" and r["scores"] == "all"]
    for r, ph in zip(head, holm([r["p"] for r in head]), strict=True):
        r["p_holm_headline"] = float(ph)
    return out


def identical_cells(rows: list[dict]) -> dict[str, tuple[int, int]]:
    """Per metric: how many (embedding, score) cells have the SAME value on every seed, of how many
    (a sign that the seeds are not independent draws)."""
    vals: dict[tuple, list[float]] = {}
    for r in rows:
        vals.setdefault((r["metric"], r["embedding"], r["score"]), []).append(r["value"])
    out: dict[str, list[int]] = {}
    for (m, _, _), v in vals.items():
        c = out.setdefault(m, [0, 0])
        c[0] += int(len(v) > 1 and len(set(v)) == 1)
        c[1] += 1
    return {m: (c[0], c[1]) for m, c in out.items()}


def run(dataset: str, *, n: int, seeds: int, kappa: float, blur: float, tol: float, dim: int | None,
        alphas: tuple[float, ...] = (0.97, 0.99), n_neighbors: int, out_dir: Path, pool: int | None = None,
        hk_blur: float | None = None, root: str | Path | None = None, cache: Path | None = None,
        progress: bool = False, distributed: bool | None = None, memo: dict | None = None,
        command: str | None = None) -> dict:
    """The whole study for one dataset; writes ``hk_embeddings_<dataset>.{md,csv,png}``.

    A pool of ``pool`` class-stratified images (default ``n``) is drawn once and its three
    ``(pool, pool)`` matrices are computed once (cached, resumable); each seed then draws its
    own stratified subset of ``n`` pool images (:func:`seed_scores`). HK uses ``hk_blur``
    (default ``blur``; ``eps = (hk_blur / kappa)^2``), W2 ``blur``. Under torchrun the matrices
    are split over the ranks and only rank 0 evaluates and writes.
    """
    pool = n if pool is None else pool
    if pool < n:
        raise ValueError(f"pool ({pool}) must be at least n_images ({n}).")
    hk_blur = blur if hk_blur is None else hk_blur
    images, y = load_images(dataset, pool, root=root)
    cache = None if cache is None else cache / f"{dataset}_pool{pool}"  # one folder per pool
    kw = dict(tol=tol, cache=cache, progress=progress, distributed=distributed)
    Ds = {"Euclidean": metric_matrix(images, "Euclidean", kappa=kappa, blur=blur, **kw),
          "W2": metric_matrix(images, "W2", kappa=kappa, blur=blur, **kw),
          "HK": metric_matrix(images, "HK", kappa=kappa, blur=hk_blur, **kw)}
    if not _is_rank0():
        return {}
    times = {}
    for name, kb in (("W2", blur), ("HK", hk_blur)):
        j = None
        if cache is not None:
            j = matrix_path(cache, name, n=pool, kappa=kappa, blur=kb, tol=tol).with_suffix(".json")
        times[name] = json.loads(j.read_text()) if j is not None and j.exists() else None
    tag = {"Euclidean": "Euclidean", "W2": f"W2@blur{blur:g}", "HK": f"HK@kappa{kappa:g}_blur{hk_blur:g}"}
    memo = {} if memo is None else memo
    seed_list = list(range(seeds))
    per_alpha = {}
    for alpha in alphas:
        rows, dims, first = [], {}, {}
        for metric, D in Ds.items():
            r, d, z = seed_scores(D, y, metric=tag[metric], n_images=n, seeds=seed_list, alpha=alpha,
                                  dim=dim, n_neighbors=n_neighbors, memo=memo.setdefault(alpha, {}))
            rows += [{**x, "metric": metric} for x in r]
            dims[metric], first[metric] = d, z
        per_alpha[alpha] = {"rows": rows, "wins": win_rates(rows), "dims": dims,
                            "identical": identical_cells(rows), "first": first}
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"hk_embeddings_{dataset}"
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["alpha", "metric", "embedding", "score", "seed", "value"])
        w.writeheader()
        for alpha, res in per_alpha.items():
            w.writerows({"alpha": alpha, **r} for r in res["rows"])
    cfg = dict(n_images=n, pool=pool, seeds=seeds, kappa=kappa, blur_w2=blur, blur_hk=hk_blur,
               eps_hk=(hk_blur / kappa) ** 2, tol=tol, n_neighbors=n_neighbors)
    _write_markdown(stem.with_suffix(".md"), dataset, per_alpha, cfg, times, command)
    a0 = alphas[0]
    _scatter(stem.with_suffix(".png"), per_alpha[a0]["first"], y[stratified_subset(y, n, 0)], dataset)
    return {"alphas": {a: {k: v for k, v in r.items() if k != "first"} for a, r in per_alpha.items()},
            "rows": per_alpha[a0]["rows"], "wins": per_alpha[a0]["wins"], "times": times}


def _fmt_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _write_markdown(path: Path, dataset: str, per_alpha: dict, cfg: dict, times: dict,
                    command: str | None) -> None:
    tinfo = ", ".join(f"{k} matrix {v['seconds']:.0f} s ({v['n']} images, {v['threads']} thread(s), "
                      f"{v['ranks']} rank(s))" for k, v in times.items() if v)
    lines = [
        f"# HK neighbour embeddings: {dataset}",
        "",
        f"Command: `{command or 'python -m training.experiments.hk_embeddings'}`",
        "",
        f"Hardware: {platform.machine()} CPU, {os.cpu_count()} cores shared with other jobs; "
        f"torch threads {torch.get_num_threads()}; "
        f"Python {sys.version.split()[0]}, torch {torch.__version__}.",
        "",
        "Settings: "
        + ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in cfg.items())
        + ".",
        "",
        f"Distance matrices of the pool, computed once: {tinfo or 'loaded from the cache'}.",
        "",
        "Each seed draws its own class-stratified subset of the pool, estimates the dimension on "
        "it, embeds it and scores it on one 80/20 split (classifiers) and one clustering seed. "
        "W/T/L counts (score, seed) cells where the first metric scores higher / equal / lower; "
        "win rate counts a tie as 1/2. p: two-sided Wilcoxon signed-rank test over the seeds of "
        "the per-seed mean score difference. p (Holm, headline): Holm-adjusted over the "
        "three headline rows (all embeddings, all scores; one per comparison); p (Holm, all): "
        f"adjusted over all {len(next(iter(per_alpha.values()))['wins'])} rows of the table "
        f"(one family per alpha). With {cfg['seeds']} seeds the smallest possible p is "
        f"2/2^{cfg['seeds']} = {2 / 2 ** cfg['seeds']:.3g}; Holm multiplies the smallest p of a family "
        f"of m tests by m ({len(next(iter(per_alpha.values()))['wins'])} x {2 / 2 ** cfg['seeds']:.3g} = "
        f"{len(next(iter(per_alpha.values()))['wins']) * 2 / 2 ** cfg['seeds']:.3g} here), so the "
        "per-embedding rows are descriptive.",
        "",
    ]
    for alpha, res in per_alpha.items():
        dims = {m: sorted(set(d.values())) for m, d in res["dims"].items()}
        ident = ", ".join(f"{m} {k} of {t}" for m, (k, t) in res["identical"].items())
        lines += [f"## alpha = {alpha:g}", "",
                  f"Embedding dimensions (local-SVD estimate per seed; t-SNE is 2D): {dims}.", "",
                  f"(embedding, score) cells identical on every seed: {ident}.", "",
                  "| comparison | embedding | scores | W/T/L | win rate | mean diff | p | p (Holm, headline) "
                  "| p (Holm, all) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for w in res["wins"]:
            ph = w.get("p_holm_headline")
            lines.append(f"| {w['comparison']} | {w['embedding']} | {w['scores']} | "
                         f"{w['wins']}/{w['ties']}/{w['losses']} | {w['win_rate']:.0%} | "
                         f"{w['mean_diff']:+.3f} | {_fmt_p(w['p'])} | {'-' if ph is None else _fmt_p(ph)} "
                         f"| {_fmt_p(w['p_holm'])} |")
        lines += ["", f"### Mean scores over seeds (alpha = {alpha:g})", "",
                  "| embedding | score | Euclidean | W2 | HK |", "|---|---|---|---|---|"]
        mean: dict[tuple, list[float]] = {}
        for r in res["rows"]:
            mean.setdefault((r["embedding"], r["score"], r["metric"]), []).append(r["value"])
        scores = list(dict.fromkeys(r["score"] for r in res["rows"]))
        for emb in EMBEDDINGS:
            for s in scores:
                vals = [np.mean(mean.get((emb, s, m), [np.nan])) for m in ("Euclidean", "W2", "HK")]
                lines.append(f"| {emb} | {s} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        lines.append("")
    path.write_text("\n".join(lines) + "\n")


def _scatter(path: Path, embeddings: dict, y: np.ndarray, dataset: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(embeddings)
    fig, axes = plt.subplots(len(metrics), len(EMBEDDINGS), figsize=(3 * len(EMBEDDINGS), 3 * len(metrics)))
    axes = np.atleast_2d(axes)
    for i, m in enumerate(metrics):
        for j, e in enumerate(EMBEDDINGS):
            Z = embeddings[m][e]
            axes[i, j].scatter(Z[:, 0], Z[:, 1], c=y, s=4, cmap="tab10")
            axes[i, j].set_title(f"{m} / {e}", fontsize=9)
            axes[i, j].set_xticks([])
            axes[i, j].set_yticks([])
    fig.suptitle(f"{dataset}: 2D views of the embeddings, coloured by class")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", nargs="+", default=["mnist", "pneumoniamnist"],
                   choices=["mnist", "pneumoniamnist"])
    p.add_argument("--n-images", "--n", dest="n", type=int, default=1000,
                   help="images per seed (a class-stratified subset of the pool)")
    p.add_argument("--pool", type=int, default=None,
                   help="pool size per dataset whose matrices are computed once (default: 2 x n-images)")
    p.add_argument("--seeds", type=int, default=10, help="seeds: subset, embedding, 80/20 split, clustering")
    p.add_argument("--kappa", type=float, nargs="+", default=[2.0],
                   help="HK length scale(s) in pixels; several values run a kappa sweep")
    p.add_argument("--blur", type=float, default=1.0, help="entropic blur in pixels (W2, and HK by default)")
    p.add_argument("--blur-per-kappa", type=float, default=None,
                   help="HK blur = this x kappa, so eps = (blur/kappa)^2 stays fixed across a kappa sweep "
                        "(default: HK uses --blur, so eps changes with kappa)")
    p.add_argument(
        "--tol",
        type=float,
        default=1e-2,
        help="Sinkhorn tolerance (relative to eps); 1e-2 moves the squared distances by < 4e-6 "
        "(W2) and < 1e-9 (HK) relative to 1e-6 on MNIST pairs",
    )
    p.add_argument("--dim", type=int, default=None, help="embedding dimension (default: local-SVD estimate)")
    p.add_argument(
        "--alpha",
        type=float,
        nargs="+",
        default=[0.97, 0.99],
        help="explained-variance threshold(s) of the dimension estimate (the paper: 0.97-0.999)",
    )
    p.add_argument("--n-neighbors", type=int, default=10)
    p.add_argument("--data-root", default=None, help="default: $TORCHUOT_DATA_ROOT")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--cache", default=None, help="folder to cache distance matrices (.npy)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--distributed", action="store_true",
                   help="split the distance matrices over torch.distributed ranks (launch with torchrun; "
                        "automatic when a process group is initialised)")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    pool = 2 * a.n if a.pool is None else a.pool
    cli_args = sys.argv[1:] if argv is None else argv
    command = "python -m training.experiments.hk_embeddings " + " ".join(cli_args)
    memo: dict = {}
    for ds in a.dataset:
        sweep = []
        for kappa in a.kappa:
            out = Path(a.out) if len(a.kappa) == 1 else Path(a.out) / f"kappa{kappa:g}"
            hk_blur = a.blur if a.blur_per_kappa is None else a.blur_per_kappa * kappa
            res = run(ds, n=a.n, pool=pool, seeds=a.seeds, kappa=kappa, blur=a.blur, hk_blur=hk_blur,
                      tol=a.tol, dim=a.dim, alphas=tuple(a.alpha), n_neighbors=a.n_neighbors, out_dir=out,
                      root=a.data_root,
                      cache=None if a.cache is None else Path(a.cache), progress=a.progress,
                      distributed=True if a.distributed else None, memo=memo, command=command)
            if not res:
                continue  # not rank 0
            sweep.append((kappa, hk_blur, res))
            allrow = [w for w in res["wins"] if w["embedding"] == "all" and w["scores"] == "all"]
            _log.info("%s kappa=%g: %s", ds, kappa,
                      ", ".join(f"{w['comparison']} {w['win_rate']:.0%} p={w['p']:.3g}" for w in allrow))
        if len(sweep) > 1:
            _write_sweep(Path(a.out) / f"kappa_sweep_{ds}.md", ds, sweep, command)


def _write_sweep(path: Path, dataset: str, sweep: list, command: str) -> None:
    """One table per alpha: HK vs W2 / Euclidean (all embeddings, all scores) for each kappa."""
    alphas = list(sweep[0][2]["alphas"])
    lines = [f"# kappa sweep: {dataset}", "", f"Command: `{command}`", ""]
    for alpha in alphas:
        lines += [f"## alpha = {alpha:g}", "",
                  "| kappa (px) | HK blur (px) | eps | HK vs W2 | p (Holm, headline) "
                  "| HK vs Euclidean | p (Holm, headline) "
                  "| HK matrix |",
                  "|---|---|---|---|---|---|---|---|"]
        for kappa, hb, res in sweep:
            by = {w["comparison"]: w for w in res["alphas"][alpha]["wins"]
                  if w["embedding"] == "all" and w["scores"] == "all"}
            t = res["times"].get("HK")
            t_txt = "-" if t is None else f"{t['seconds']:.0f} s"
            cells = [f"{by[c]['win_rate']:.0%} | {_fmt_p(by[c]['p'])} ({_fmt_p(by[c]['p_holm_headline'])})"
                     for c in ("HK vs W2", "HK vs Euclidean")]
            lines.append(f"| {kappa:g} | {hb:g} | {(hb / kappa) ** 2:.4g} | " + " | ".join(cells)
                         + f" | {t_txt} |")
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
