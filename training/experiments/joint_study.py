"""Joint-embedding study: EOT eigenmaps, EW_lambda and an entropic-GW baseline (SCOT-style).

Datasets with known correspondences (row i of both views is the same sample):

* ``scurve`` / ``swissroll``: scikit-learn's S-curve / Swiss roll, and a copy under a random
  affine map plus Gaussian noise. Caveat: at 300 points scikit-learn's roll is undersampled;
  10-NN edges jump between its layers (graph geodesics correlate only ~0.4 with the true ones),
  so the Swiss-roll rows measure alignment of two consistently short-circuited graphs. Fewer
  neighbours (``--k-swissroll 4``) disconnect the graph of the affinely distorted copy and
  both metric methods fail (FOSCTTM ~0.5). Labels for kNN transfer: the
  manifold parameter ``t`` cut into 5 equal-count bins.
* ``mnist``: MNIST test images (real data, via ``training.datasets.load_mnist`` and the data
  root), raw pixels vs the same images rotated by 30 degrees and Gaussian-blurred. Labels: digits.

Methods:

* EOT eigenmaps (``torchuot.joint.eot_eigenmaps``; median-heuristic eps; q = 2 and q = 10);
* EW_lambda (``torchuot.joint.ew_lambda_embedding``) into the n x n grid on [0, 1]^2, with
  kNN-graph geodesic intra-distances normalised by their maximum; barycentric projections;
* GW baseline: POT's ``ot.gromov.entropic_gromov_wasserstein`` on the same distance matrices,
  then (as SCOT) the second view is mapped into the first view's feature space by the
  barycentric projection of the coupling.

Metrics: FOSCTTM (0 is perfect, 0.5 random) and 5-NN label-transfer accuracy (train on the
first view's embedding, predict the second's). Writes ``<out>/joint_study.md``, ``.json`` and
one PNG per dataset.

Usage: ``python -m training.experiments.joint_study --help``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from torchuot.joint import (
    cube_symmetries,
    embedding_spread,
    eot_eigenmaps,
    ew_lambda_embedding,
    foscttm,
    foscttm_best_symmetry,
    grid_space,
    knn_geodesic_distances,
    knn_label_transfer_accuracy,
)
from training.datasets import DataNotFoundError, load_mnist

F64 = torch.float64


# ------------------------------------------------------------------------------ data
def _affine_copy(X: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    A = np.eye(3) + 0.3 * rng.standard_normal((3, 3))
    return X @ A.T + rng.standard_normal(3) + noise * X.std() * rng.standard_normal(X.shape)


def _bins(t: np.ndarray, k: int = 5) -> np.ndarray:
    edges = np.quantile(t, np.linspace(0, 1, k + 1)[1:-1])
    return np.digitize(t, edges)


def make_manifold_pair(name: str, n: int, seed: int) -> dict:
    from sklearn.datasets import make_s_curve, make_swiss_roll

    rng = np.random.default_rng(seed)
    gen = make_s_curve if name == "scurve" else make_swiss_roll
    X, t = gen(n, noise=0.02 if name == "scurve" else 0.2, random_state=seed)
    Y = _affine_copy(X, rng, noise=0.05)
    return {"x": X, "y": Y, "labels": _bins(t), "color": t}


def make_mnist_pair(root: Path, n: int, seed: int) -> dict:
    from torchvision.transforms import functional as TF

    images, labels = load_mnist(root, "test")
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(images), n, replace=False)
    raw = torch.tensor(images[idx], dtype=torch.float32)[:, None] / 255.0
    view = TF.gaussian_blur(TF.rotate(raw, 30.0), kernel_size=5, sigma=1.5)
    return {"x": raw.flatten(1).double().numpy(), "y": view.flatten(1).double().numpy(),
            "labels": labels[idx], "color": labels[idx]}


# ------------------------------------------------------------------------------ methods
def _metrics(ex: torch.Tensor, ey: torch.Tensor, labels: torch.Tensor) -> dict:
    return {
        "foscttm": float(foscttm(ex, ey)),
        "knn_acc": float(knn_label_transfer_accuracy(ex, labels, ey, labels, k=5)),
    }


def run_eot(x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor, q: int) -> tuple[dict, tuple]:
    t0 = time.perf_counter()
    emb = eot_eigenmaps(x, y, n_components=q)
    out = _metrics(emb.x_embedding, emb.y_embedding, labels)
    out["seconds"] = time.perf_counter() - t0
    return out, (emb.x_embedding[:, :2], emb.y_embedding[:, :2])


def _distances(v: torch.Tensor, k: int) -> torch.Tensor:
    D = knn_geodesic_distances(v, k, disconnected="max")
    return D / D.max()


def run_ew(Dx, Dy, labels, args, damping: float = 0.5) -> tuple[dict, tuple]:
    t0 = time.perf_counter()
    res = ew_lambda_embedding(Dx, None, Dy, None, grid_space(args.grid), lam=args.lam, eps=args.eps,
                              n_outer=args.n_outer, tol=1e-6, max_iter=3000, damping=damping)
    out = _metrics(res.projection_x, res.projection_y, labels)
    sym, _ = foscttm_best_symmetry(res.projection_x, res.projection_y, cube_symmetries(2), 0.5, ties="half")
    out.update(foscttm_half=float(foscttm(res.projection_x, res.projection_y, ties="half")),
               foscttm_sym=float(sym), spread=float(embedding_spread(res.projection_x, res.space.points)),
               energy_last=float(res.energy[-1]))
    out.update(seconds=time.perf_counter() - t0, gw_x=float(res.gw_x), gw_y=float(res.gw_y),
               wasserstein=float(res.wasserstein), objective_first=float(res.objective[0]),
               objective_last=float(res.objective[-1]),
               monotone=bool((res.objective[1:] <= res.objective[:-1] + 1e-8).all()),
               inner_iters=list(res.inner_iters))
    return out, (res.projection_x, res.projection_y)


def run_gw(x, Dx, Dy, labels, eps: float) -> tuple[dict, tuple]:
    import ot

    t0 = time.perf_counter()
    p = np.full(Dx.shape[0], 1.0 / Dx.shape[0])
    q = np.full(Dy.shape[0], 1.0 / Dy.shape[0])
    T = ot.gromov.entropic_gromov_wasserstein(Dx.numpy(), Dy.numpy(), p, q, "square_loss", epsilon=eps,
                                              max_iter=1000, tol=1e-9)
    T = torch.as_tensor(T, dtype=F64)
    y_in_x = (T.T @ x) / T.sum(0).clamp_min(1e-300)[:, None]  # SCOT: map view 2 into view 1's space
    out = _metrics(x, y_in_x, labels)
    out["seconds"] = time.perf_counter() - t0
    from sklearn.decomposition import PCA

    pca = PCA(2).fit(x.numpy())
    return out, (torch.as_tensor(pca.transform(x.numpy())), torch.as_tensor(pca.transform(y_in_x.numpy())))


# ------------------------------------------------------------------------------ report
def _plot(name: str, embeddings: dict, color: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(embeddings), 2, figsize=(6, 2.6 * len(embeddings)), squeeze=False)
    for row, (method, (ex, ey)) in enumerate(embeddings.items()):
        for col, (e, view) in enumerate(((ex, "view 1"), (ey, "view 2"))):
            ax = axes[row, col]
            ax.scatter(e[:, 0].numpy(), e[:, 1].numpy(), c=color, s=4, cmap="viridis")
            ax.set_title(f"{method}: {view}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(name, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=70)
    plt.close(fig)


def write_report(results: list[dict], args, out: Path) -> None:
    lines = [
        "# Joint-embedding study",
        "",
        f"Command: `python -m training.experiments.joint_study {' '.join(args.argv)}`  ",
        f"n = {args.n} points per view (MNIST: {args.mnist_n}), EW_lambda: {args.grid}x{args.grid} grid, "
        f"lambda = {args.lam}, eps = {args.eps}, {args.n_outer} outer iterations; GW baseline eps = "
        f"{args.gw_eps}; kNN graph k = {args.k} (Swiss roll: {args.k_swissroll}); CPU, {args.threads} "
        "thread(s), shared machine.",
        "",
        "FOSCTTM: 0 is perfect, ~0.5 random. kNN: 5-NN label transfer accuracy (view 1 -> view 2).",
        "",
        "| dataset | method | FOSCTTM | kNN acc | time (s) |",
        "|---|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r['dataset']} | {r['method']} | {r['foscttm']:.3f} | {r['knn_acc']:.3f} | "
                     f"{r['seconds']:.1f} |")
    ew = [r for r in results if r["method"].startswith("EW_lambda")]
    if ew:
        lines += ["", "EW_lambda diagnostics (bi-convex objective first -> last, monotone?, GW terms, "
                  "W term; FOSCTTM with ties half, best over the grid's 8 symmetries; spread of the "
                  "view-1 projection relative to the grid; energy F of the last iterate):", ""]
        for r in ew:
            lines.append(f"- {r['dataset']}, {r['method']}: "
                         f"{r['objective_first']:.4g} -> {r['objective_last']:.4g}, "
                         f"monotone={r['monotone']}, GW_x={r['gw_x']:.3g}, GW_y={r['gw_y']:.3g}, "
                         f"W={r['wasserstein']:.3g}; FOSCTTM {r['foscttm_half']:.3f}, sym "
                         f"{r['foscttm_sym']:.3f}, spread {r['spread']:.2f}, F={r['energy_last']:.4f}")
    lines += [
        "",
        "Notes. EW_lambda runs with the default damping 0.5: the undamped outer iteration settles on",
        "a 2-cycle between a spread and a collapsed embedding on MNIST (energy 0.21 / 0.33), so its",
        "FOSCTTM depends on the stopping parity (0.121 / 0.070 / 0.144 after 20 / 21 / 40 outer",
        "iterations). An earlier run of this command reported 0.486 for MNIST; that value was not",
        "reproduced, but its inner-iteration counts alternated (38, 30, 38, 29, ...) like the",
        "2-cycle. A lower energy F is not a better FOSCTTM: compare the damped and undamped rows,",
        "their F and 'sym' above -- where the raw FOSCTTM is far above 'sym', one view's embedding is",
        "a mirror image of the other's while the two embedded measures coincide (small W): if that",
        "measure is itself nearly symmetric, the Wasserstein term cannot tell the mirror from the",
        "match. One fixed setting here; the paper's",
        "protocol (validation search, positive control, symmetry-aware FOSCTTM, spread, the",
        "true-pairs ceiling, synthetic shapes, Joint MDS) is in `joint_study_protocol.md`",
        "(`python -m training.experiments.joint_protocol`).",
    ]
    (out / "joint_study.md").write_text("\n".join(lines) + "\n")
    (out / "joint_study.json").write_text(json.dumps({"args": {k: v for k, v in vars(args).items()
                                                                if k != "argv"}, "results": results},
                                                     indent=1, default=str))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m training.experiments.joint_study",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["scurve", "swissroll", "mnist"],
                        choices=["scurve", "swissroll", "mnist"])
    parser.add_argument("--n", type=int, default=300, help="points per view (S-curve, Swiss roll)")
    parser.add_argument("--mnist-n", type=int, default=300, help="MNIST images per view")
    parser.add_argument("--grid", type=int, default=15, help="EW_lambda target: n x n grid on [0,1]^2")
    parser.add_argument("--lam", type=float, default=1.0, help="EW_lambda GW weight lambda")
    parser.add_argument("--eps", type=float, default=5e-3, help="EW_lambda entropic eps")
    parser.add_argument("--n-outer", type=int, default=20, help="EW_lambda outer iterations")
    parser.add_argument("--gw-eps", type=float, default=5e-3, help="entropic GW baseline eps")
    parser.add_argument("--k", type=int, default=10, help="kNN graph neighbours for geodesic distances")
    parser.add_argument("--k-swissroll", type=int, default=10,
                        help="kNN neighbours for the Swiss roll (a larger k short-circuits its layers)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder holding MNIST/raw (default: $TORCHUOT_DATA_ROOT or ../shared/data)")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else []
    torch.set_num_threads(args.threads)
    root = args.data_root or Path(os.environ.get("TORCHUOT_DATA_ROOT", Path("..") / "shared" / "data"))
    args.out.mkdir(parents=True, exist_ok=True)

    results = []
    for name in args.datasets:
        if name == "mnist":
            try:
                data = make_mnist_pair(root, args.mnist_n, args.seed)
            except DataNotFoundError as err:
                print(f"skipping mnist: {err}")
                continue
        else:
            data = make_manifold_pair(name, args.n, args.seed)
        x, y = torch.as_tensor(data["x"], dtype=F64), torch.as_tensor(data["y"], dtype=F64)
        labels = torch.as_tensor(data["labels"], dtype=torch.int64)
        k = args.k_swissroll if name == "swissroll" else args.k
        Dx, Dy = _distances(x, k), _distances(y, k)
        pictures = {}
        for q in (2, 10):
            m, emb = run_eot(x, y, labels, q)
            results.append({"dataset": name, "method": f"EOT eigenmaps (q={q})", **m})
            if q == 2:
                pictures["EOT eigenmaps"] = emb
        m, emb = run_ew(Dx, Dy, labels, args)
        results.append({"dataset": name, "method": "EW_lambda", **m})
        m_plain, _ = run_ew(Dx, Dy, labels, args, damping=0.0)
        results.append({"dataset": name, "method": "EW_lambda, no damping", **m_plain})
        pictures["EW_lambda (grid)"] = emb
        m, emb = run_gw(x, Dx, Dy, labels, args.gw_eps)
        results.append({"dataset": name, "method": "entropic GW (SCOT-style)", **m})
        pictures["GW, view 2 mapped to view 1 (PCA)"] = emb
        _plot(name, pictures, np.asarray(data["color"]), args.out / f"joint_study_{name}.png")
        for r in results[-5:]:
            print(f"{name:10s} {r['method']:28s} FOSCTTM {r['foscttm']:.3f}  kNN {r['knn_acc']:.3f}  "
                  f"{r['seconds']:.1f}s")
    write_report(results, args, args.out)
    return results


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
