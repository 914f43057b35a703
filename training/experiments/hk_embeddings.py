"""Hellinger-Kantorovich neighbour embeddings of images: the evaluation of arXiv 2509.19226.

Images -> pairwise Euclidean / W2 / HK distances (:func:`torchuot.images.pairwise_distances`)
-> MDS, Isomap, t-SNE, Laplacian eigenmaps (:mod:`torchuot.embed`) -> 8 classifiers (LDA,
1/3/5-NN, linear SVM, RBF SVM, random forest, multinomial logistic regression) and 2
clusterings (k-means, spectral; ARI and NMI) over 80/20 splits and several seeds -> win-rate
tables (HK vs W2, HK vs Euclidean, W2 vs Euclidean) written as Markdown + CSV, and 2D scatter
plots of the embeddings coloured by class.

Run ``python -m training.experiments.hk_embeddings --help``. Needs scikit-learn and matplotlib
(the ``embed`` extra).
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import time
from pathlib import Path

import numpy as np
import torch

from torchuot.embed import estimate_dimension, isomap, laplacian_eigenmaps, mds, tsne
from torchuot.images import pairwise_distances
from training.datasets import default_data_root, load_medmnist, load_mnist

__all__ = ["load_images", "distance_matrices", "embed_all", "evaluate", "win_rates", "run", "main"]

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
        for stale in path.parent.glob(path.with_suffix("").name + ".partial*.pt"):
            stale.unlink()
    return D


def _is_rank0() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def distance_matrices(images: torch.Tensor, *, kappa: float, blur: float, tol: float,
                      cache: Path | None = None, progress: bool = False,
                      distributed: bool | None = None) -> dict[str, np.ndarray]:
    """Euclidean, W2 and HK ``(n, n)`` matrices (cached in ``cache`` as ``.npy`` files)."""
    return {name: metric_matrix(images, name, kappa=kappa, blur=blur, tol=tol, cache=cache,
                                progress=progress, distributed=distributed)
            for name in ("Euclidean", "W2", "HK")}


def embed_all(D: np.ndarray, dim: int, *, n_neighbors: int, seed: int) -> dict[str, np.ndarray]:
    """The four embeddings of one distance matrix, ``(n, dim)`` each (t-SNE is 2D)."""
    Dt = torch.from_numpy(D)
    g = torch.Generator().manual_seed(seed)
    return {
        "MDS": mds(Dt, dim).numpy(),
        "Isomap": isomap(Dt, dim, n_neighbors=n_neighbors).numpy(),
        "t-SNE": tsne(Dt, 2, perplexity=min(30.0, (len(D) - 1) / 3), generator=g).numpy(),
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


def win_rates(rows: list[dict]) -> list[dict]:
    """For each comparison (A vs B) and embedding, the fraction of (score, seed) cells A wins.

    Ties count one half. ``rows``: dicts with keys metric, embedding, score, seed, value.
    """
    table = {(r["metric"], r["embedding"], r["score"], r["seed"]): r["value"] for r in rows}
    out = []
    for (A, B), emb in itertools.product(COMPARISONS, EMBEDDINGS + ("all",)):
        for kind in ("classification", "clustering", "all"):
            wins = n = 0.0
            for (m, e, s, seed), v in table.items():
                if m != A or (emb != "all" and e != emb):
                    continue
                is_clf = s in CLASSIFIERS
                if (kind == "classification" and not is_clf) or (kind == "clustering" and is_clf):
                    continue
                w = table.get((B, e, s, seed))
                if w is None:
                    continue
                wins += 1.0 if v > w else 0.5 if v == w else 0.0
                n += 1
            if n:
                out.append({"comparison": f"{A} vs {B}", "embedding": emb, "scores": kind,
                            "win_rate": wins / n, "n": int(n)})
    return out


def run(dataset: str, *, n: int, seeds: int, kappa: float, blur: float, tol: float, dim: int | None,
        alpha: float, n_neighbors: int, out_dir: Path, root: str | Path | None = None,
        cache: Path | None = None, progress: bool = False) -> dict:
    """The whole study for one dataset; writes ``hk_embeddings_<dataset>.{md,csv,png}``."""
    images, y = load_images(dataset, n, root=root)
    cache = None if cache is None else cache / dataset  # one cache folder per dataset
    Ds = distance_matrices(images, kappa=kappa, blur=blur, tol=tol, cache=cache, progress=progress)
    seed_list = list(range(seeds))
    rows, embeddings, dims = [], {}, {}
    for metric, D in Ds.items():
        d = dim if dim is not None else max(2, estimate_dimension(torch.from_numpy(D), alpha=alpha,
                                                                  n_neighbors=n_neighbors))
        dims[metric] = d
        embeddings[metric] = embed_all(D, d, n_neighbors=n_neighbors, seed=0)
        for emb, Z in embeddings[metric].items():
            for score, vals in evaluate(Z, y, seed_list).items():
                for seed, v in zip(seed_list, vals, strict=True):
                    rows.append({"metric": metric, "embedding": emb, "score": score, "seed": seed,
                                 "value": v})
    wins = win_rates(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"hk_embeddings_{dataset}"
    with open(stem.with_suffix(".csv"), "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["metric", "embedding", "score", "seed", "value"])
        w.writeheader()
        w.writerows(rows)
    _write_markdown(stem.with_suffix(".md"), dataset, rows, wins, dims,
                    dict(n=n, seeds=seeds, kappa=kappa, blur=blur, tol=tol, alpha=alpha,
                         n_neighbors=n_neighbors))
    _scatter(stem.with_suffix(".png"), embeddings, y, dataset)
    return {"rows": rows, "wins": wins, "dims": dims}


def _write_markdown(path: Path, dataset: str, rows: list[dict], wins: list[dict], dims: dict,
                    cfg: dict) -> None:
    lines = [f"# HK neighbour embeddings: {dataset}", "",
             "Settings: " + ", ".join(f"{k}={v}" for k, v in cfg.items())
             + f"; embedding dimension per metric: {dims} (t-SNE is 2D).", "",
             "## Win rates (fraction of (score, seed) cells where the first metric is better; ties 1/2)", "",
             "| comparison | embedding | classification | clustering | all |", "|---|---|---|---|---|"]
    by = {(w["comparison"], w["embedding"], w["scores"]): w for w in wins}
    for (A, B), emb in itertools.product(COMPARISONS, EMBEDDINGS + ("all",)):
        cells = []
        for kind in ("classification", "clustering", "all"):
            w = by.get((f"{A} vs {B}", emb, kind))
            cells.append("-" if w is None else f"{w['win_rate']:.0%} (n={w['n']})")
        lines.append(f"| {A} vs {B} | {emb} | " + " | ".join(cells) + " |")
    lines += ["", "## Mean scores over seeds", "", "| embedding | score | Euclidean | W2 | HK |",
              "|---|---|---|---|---|"]
    mean = {}
    for r in rows:
        mean.setdefault((r["embedding"], r["score"], r["metric"]), []).append(r["value"])
    scores = list(dict.fromkeys(r["score"] for r in rows))
    for emb in EMBEDDINGS:
        for s in scores:
            vals = [np.mean(mean.get((emb, s, m), [np.nan])) for m in ("Euclidean", "W2", "HK")]
            lines.append(f"| {emb} | {s} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
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
    p.add_argument("--n", type=int, default=1000, help="images per dataset (class-stratified)")
    p.add_argument("--seeds", type=int, default=10, help="80/20 splits / clustering seeds")
    p.add_argument("--kappa", type=float, nargs="+", default=[2.0],
                   help="HK length scale(s) in pixels; several values run a kappa sweep")
    p.add_argument("--blur", type=float, default=1.0, help="entropic blur in pixels")
    p.add_argument("--tol", type=float, default=1e-2,
                   help="Sinkhorn tolerance (relative to eps); 1e-2 moves the squared distances by < 4e-6 "
                        "(W2) and < 1e-9 (HK) relative to 1e-6 on MNIST pairs")
    p.add_argument("--dim", type=int, default=None, help="embedding dimension (default: local-SVD estimate)")
    p.add_argument("--alpha", type=float, default=0.9, help="explained-variance threshold of the estimate")
    p.add_argument("--n-neighbors", type=int, default=10)
    p.add_argument("--data-root", default=None, help="default: $TORCHUOT_DATA_ROOT")
    p.add_argument("--out", default="results", help="output folder")
    p.add_argument("--cache", default=None, help="folder to cache distance matrices (.npy)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--progress", action="store_true")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    for ds in a.dataset:
        for kappa in a.kappa:
            out = Path(a.out) if len(a.kappa) == 1 else Path(a.out) / f"kappa{kappa:g}"
            res = run(ds, n=a.n, seeds=a.seeds, kappa=kappa, blur=a.blur, tol=a.tol, dim=a.dim, alpha=a.alpha,
                      n_neighbors=a.n_neighbors, out_dir=out, root=a.data_root,
                      cache=None if a.cache is None else Path(a.cache), progress=a.progress)
            allrow = [w for w in res["wins"] if w["embedding"] == "all" and w["scores"] == "all"]
            _log.info("%s kappa=%g: %s", ds, kappa,
                      ", ".join(f"{w['comparison']} {w['win_rate']:.0%}" for w in allrow))


if __name__ == "__main__":
    main()
