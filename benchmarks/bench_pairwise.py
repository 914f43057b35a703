"""Pairwise HK / W2 distance matrices of MNIST images: torchuot vs a POT loop vs GeomLoss.

For N images the job is the N (N - 1) / 2 debiased divergences (HK: cone cost, KL strength 1,
eps = (blur/kappa)^2; W2: balanced, cost |x-y|^2/2, eps = blur^2), i.e. N (N - 1) / 2 cross
problems plus N self problems.

* torchuot: :func:`torchuot.images.pairwise_distances` (batched blocks of pairs on the shared
  grid). With ``--sample-pairs`` only that many pairs are timed and the time is extrapolated.
* POT: ``ot.unbalanced.sinkhorn_unbalanced2`` one pair at a time (``reg_m=inf`` for W2), on the
  pixels with positive weight (its exp-domain solver needs them), +inf costs replaced by
  ``120 eps``; a sample of pairs is timed and extrapolated to all pairs and self terms.
* GeomLoss: ``SamplesLoss("sinkhorn", debias=True, backend="tensorized")`` on batched inputs
  (every pixel a point, intensities as weights), the HK cone cost as a callable; a sample
  block is timed and extrapolated.

Accuracy gap: max relative difference of the squared distances to torchuot's on the pairs
that the reference computed. Run: ``python benchmarks/bench_pairwise.py --n 200``.

``--ranks 1 2`` instead times ``pairwise_distances(distributed=True)`` under
``torchrun --standalone --nproc_per_node K`` (gloo, CPU; one torch thread per rank): each
rank's wall time for the whole call (its share of the pairs, then the all-reduce), and checks
that the K-rank matrix equals the one-rank matrix.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

from torchuot.costs import HKConeCost
from torchuot.images import images_to_measures, pairwise_distances
from training.datasets import default_data_root, load_mnist


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def ours(imgs: torch.Tensor, metric: str, kw: dict, sample: int | None, block: int):
    N = len(imgs)
    n_pairs = N * (N - 1) // 2
    t0 = time.perf_counter()
    if sample is None or sample >= n_pairs:
        D = pairwise_distances(imgs, metric=metric, squared=True, block_size=block, **kw)
        return time.perf_counter() - t0, D, False
    # time N self terms + `sample` pairs, extrapolate the pairs
    k = int(math.ceil((1 + math.sqrt(1 + 8 * sample)) / 2))
    D = pairwise_distances(imgs[:k], metric=metric, squared=True, block_size=block, **kw)
    t = time.perf_counter() - t0
    per_pair = t / (k * (k - 1) / 2 + k)
    return per_pair * (n_pairs + N), D, True


def pot_loop(imgs: torch.Tensor, metric: str, kappa: float, blur: float, pairs: list, N: int,
             support_only: bool = True):
    import ot

    x, w = images_to_measures(imgs.double())
    if metric == "hk":
        C = HKConeCost(kappa)(x[None], x[None])[0]
        reg, reg_m = (blur / kappa) ** 2, 1.0
        C = torch.where(torch.isfinite(C), C, torch.full_like(C, 120 * reg))
    else:
        C = torch.cdist(x, x) ** 2 / 2
        reg, reg_m = blur ** 2, float("inf")
        w = w / w.sum(1, keepdim=True)
    C, w = C.numpy(), w.numpy()

    def problem(i, j):
        a, b = w[i], w[j]
        if not support_only:  # the images as histograms on the whole grid, as in POT's examples
            return a, b, C
        ka, kb = a > 0, b > 0
        return a[ka], b[kb], C[np.ix_(ka, kb)]

    kw = dict(method="sinkhorn", reg_type="kl", numItermax=5000, stopThr=1e-6)
    t0 = time.perf_counter()
    out = []
    with warnings.catch_warnings(record=True) as caught:
        # POT stops at a NaN iterate with a warning and returns the previous one: record them.
        warnings.simplefilter("always")
        for i, j in pairs:
            out.append(ot.unbalanced.sinkhorn_unbalanced2(*problem(i, j), reg, reg_m, **kw))
        selfs = sorted({q for pr in pairs for q in pr})
        for i in selfs:
            out.append(ot.unbalanced.sinkhorn_unbalanced2(*problem(i, i), reg, reg_m, **kw))
    t = time.perf_counter() - t0
    per_solve = t / (len(pairs) + len(selfs))
    if any("Numerical errors" in str(w.message) for w in caught) or not np.isfinite(np.asarray(out)).all():
        return math.nan, None  # POT stopped on NaN (zero bins far from mass): not a solve to time
    if not support_only:
        return per_solve * (N * (N - 1) / 2 + N), None
    # Accuracy (untimed): the entropic UOT value of POT's plan, generalised KL terms
    # (POT's returnCost="total" omits their mass terms).
    vals = {}
    for i, j in pairs:
        a, b, M = problem(i, j)
        P = ot.unbalanced.sinkhorn_unbalanced(a, b, M, reg, reg_m, **kw)
        v = float((P * M).sum()) + reg * _kl(P, a[:, None] * b[None, :])
        if math.isfinite(reg_m):
            v += reg_m * (_kl(P.sum(1), a) + _kl(P.sum(0), b))
        vals[(i, j)] = v
    return per_solve * (N * (N - 1) / 2 + N), vals


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    m = p > 0
    return float((p[m] * np.log(p[m] / q[m])).sum() - p.sum() + q.sum())


def geomloss_batched(imgs: torch.Tensor, metric: str, kappa: float, blur: float, pairs: list, N: int):
    from geomloss import SamplesLoss

    x, w = images_to_measures(imgs.float())
    if metric == "hk":
        hk = HKConeCost(kappa)

        def cone(X, Y):  # GeomLoss turns +inf costs into NaN: use 1e4 (kernel exp(-1e4/eps) = 0)
            C = hk(X, Y)
            return torch.where(torch.isfinite(C), C, torch.full_like(C, 1e4))

        loss = SamplesLoss("sinkhorn", p=2, blur=blur / kappa, reach=1.0, debias=True, scaling=0.5,
                           cost=cone, backend="tensorized")
    else:
        loss = SamplesLoss("sinkhorn", p=2, blur=blur, debias=True, scaling=0.5, backend="tensorized")
        w = w / w.sum(1, keepdim=True)
    # GeomLoss returns NaN for some pairs with zero-weight points (0 * inf in its value): give the
    # empty pixels a mass of 1e-10 (total 7.8e-8, far below the reported gaps).
    w = w.clamp_min(1e-10)
    i = torch.tensor([p[0] for p in pairs])
    j = torch.tensor([p[1] for p in pairs])
    B = len(pairs)
    X = x.expand(B, -1, -1).contiguous()
    t0 = time.perf_counter()
    vals = loss(w[i], X, w[j], X)
    t = time.perf_counter() - t0
    return t / B * (N * (N - 1) / 2), vals.double()


_WORKER_ENV = "BENCH_PAIRWISE_WORKER"


def rank_worker(N: int, metric: str, kappa: float, blur: float, tol: float, block: int, out: str) -> None:
    """One torchrun rank: time the distributed call, write its time (and rank 0 the matrix)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    root = os.environ.get("TORCHUOT_DATA_ROOT") or default_data_root()
    X, _ = load_mnist(root, "test")
    imgs = torch.tensor(X[:N], dtype=torch.float32) / 255
    t0 = time.perf_counter()
    D = pairwise_distances(imgs, metric=metric, kappa=kappa, blur=blur, tol=tol, block_size=block,
                           distributed=True)
    t = time.perf_counter() - t0
    rank = dist.get_rank() if dist.is_initialized() else 0
    with open(f"{out}.rank{rank}.json", "w") as fh:
        json.dump({"rank": rank, "seconds": t}, fh)
    if rank == 0:
        torch.save(D, f"{out}.pt")
    if dist.is_initialized():
        dist.destroy_process_group()


def bench_ranks(a) -> None:
    import tempfile

    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    print(f"pairwise_distances(distributed=True), torchrun --standalone, gloo, 1 torch thread per rank; "
          f"kappa={a.kappa} px, blur={a.blur} px, tol={a.tol}, block {a.block}")
    print("| N | metric | ranks | per-rank wall time (s) | speed-up | max diff vs 1 rank |")
    print("|---|---|---|---|---|---|")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        for N in a.n:
            for metric in a.metrics:
                base_t = base_D = None
                for K in a.ranks:
                    out = os.path.join(tmp, f"{metric}{N}_{K}")
                    cmd = [torchrun, "--standalone", "--nproc_per_node", str(K), __file__]
                    # the worker's settings travel in the environment (torchrun would take options
                    # such as --n for its own abbreviations)
                    job = dict(
                        N=N, metric=metric, kappa=a.kappa, blur=a.blur, tol=a.tol, block=a.block, out=out
                    )
                    r = subprocess.run(cmd, env={**env, _WORKER_ENV: json.dumps(job)}, capture_output=True,
                                       text=True)
                    if r.returncode:
                        raise RuntimeError(f"torchrun with {K} ranks failed:\n{r.stderr[-3000:]}")
                    times = [json.load(open(f"{out}.rank{r}.json"))["seconds"] for r in range(K)]
                    D = torch.load(f"{out}.pt")
                    t = max(times)
                    if base_t is None:
                        base_t, base_D = t, D
                    diff = float((D - base_D).abs().max())
                    print(f"| {N} | {metric} | {K} | {t:.1f} ({', '.join(f'{x:.1f}' for x in times)}) "
                          f"| {base_t / t:.2f}x | {diff:.1e} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, nargs="+", default=[200])
    p.add_argument("--metrics", nargs="+", default=["hk", "w2"])
    p.add_argument("--kappa", type=float, default=2.0, help="HK scale in pixels")
    p.add_argument("--blur", type=float, default=1.0, help="blur in pixels")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--block", type=int, default=256)
    p.add_argument("--sample-pairs", type=int, default=None,
                   help="time only this many of our pairs and extrapolate (for large N)")
    p.add_argument("--ref-pairs", type=int, default=20, help="pairs timed for POT / GeomLoss")
    p.add_argument("--grid-pairs", type=int, default=4, help="pairs timed for POT on the whole grid")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--data-root", default=None)
    p.add_argument("--ranks", type=int, nargs="+", default=None,
                   help="time the distributed run with these numbers of torchrun ranks (e.g. 1 2)")
    if _WORKER_ENV in os.environ:  # launched by bench_ranks under torchrun
        rank_worker(**json.loads(os.environ[_WORKER_ENV]))
        return
    a = p.parse_args()
    if a.data_root:
        os.environ["TORCHUOT_DATA_ROOT"] = a.data_root
    if a.ranks:
        bench_ranks(a)
        return
    if a.threads:
        torch.set_num_threads(a.threads)
    root = a.data_root or os.environ.get("TORCHUOT_DATA_ROOT") or default_data_root()
    X, _ = load_mnist(root, "test")
    print(f"torch threads: {torch.get_num_threads()}, kappa={a.kappa} px, blur={a.blur} px, tol={a.tol}")
    print("| N | metric | torchuot s | POT loop, supports s | POT loop, grid s | GeomLoss s "
          "| x vs POT supports | x vs POT grid | x vs GeomLoss | gap vs POT | gap vs GeomLoss "
          "| peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for N in a.n:
        imgs = torch.tensor(X[:N], dtype=torch.float32) / 255
        rng = np.random.default_rng(0)
        kref = min(a.ref_pairs, N * (N - 1) // 2)
        pairs = set()
        while len(pairs) < kref:
            i, j = sorted(rng.choice(min(N, 40), 2, replace=False).tolist())
            pairs.add((i, j))
        pairs = sorted(pairs)
        for metric in a.metrics:
            kw = dict(kappa=a.kappa, blur=a.blur, tol=a.tol)
            t_ours, D, extrap = ours(imgs, metric, kw, a.sample_pairs, a.block)
            # our raw / debiased values on the reference pairs (float64, tight tolerance)
            sub = sorted({q for pr in pairs for q in pr})
            pos = {q: k for k, q in enumerate(sub)}
            Dref = pairwise_distances(imgs[sub], metric=metric, squared=True, dtype=torch.float64, tol=1e-6,
                                      kappa=a.kappa, blur=a.blur)
            Draw = pairwise_distances(imgs[sub], metric=metric, squared=True, dtype=torch.float64, tol=1e-6,
                                      kappa=a.kappa, blur=a.blur, debias=False)
            t_pot, raw = pot_loop(imgs, metric, a.kappa, a.blur, pairs, N)
            t_grid, _ = pot_loop(imgs, metric, a.kappa, a.blur, pairs[: a.grid_pairs], N, support_only=False)
            t_gl, gl = geomloss_batched(imgs, metric, a.kappa, a.blur, pairs, N)
            factor = 1.0 if metric == "hk" else 2.0  # our W2^2 = 2 S_eps (cost |x-y|^2/2)
            ours_sd = torch.tensor([float(Dref[pos[i], pos[j]]) / factor for i, j in pairs],
                                   dtype=torch.float64)
            gap_gl = float(((gl - ours_sd).abs() / ours_sd.abs()).max())
            gap_pot = float(np.max([abs(raw[(i, j)] - float(Draw[pos[i], pos[j]]) / factor)
                                    / abs(float(Draw[pos[i], pos[j]]) / factor) for i, j in pairs]))
            star = "*" if extrap else ""
            print(f"| {N} | {metric} | {t_ours:.1f}{star} | {t_pot:.1f} | {t_grid:.0f} | {t_gl:.1f} "
                  f"| {t_pot / t_ours:.1f}x | {t_grid / t_ours:.0f}x | {t_gl / t_ours:.1f}x | {gap_pot:.1e} "
                  f"| {gap_gl:.1e} | {_peak_mb():.0f} |", flush=True)
    print("(* extrapolated from --sample-pairs; POT and GeomLoss are always extrapolated from --ref-pairs "
          "(--grid-pairs for POT on the whole grid). POT supports: each pair restricted to its non-zero "
          "pixels (a tuned loop); POT grid: the images as 784-bin histograms with the grid cost, as in POT's "
          "examples (nan: POT stopped on NaN iterates there). gap vs POT: raw OT_eps of POT's plan "
          "(supports) vs ours (POT stops at stopThr=1e-6); gap vs GeomLoss: the debiased divergences "
          "(GeomLoss's own eps-scaling and stopping).)")


if __name__ == "__main__":
    main()
