"""Debiased unbalanced Sinkhorn divergence: torchuot vs GeomLoss (tensorized) vs POT.

One process, the same inputs for everyone. For each size we first compute a converged
float64 reference with torchuot (tol 1e-10; its primal-dual gap certifies it), then give each
library the cheapest setting that reaches the target accuracy (``--target``, relative):

* torchuot: the loosest ``tol`` in a ladder;
* GeomLoss ``SamplesLoss("sinkhorn", backend="tensorized")``: the smallest ``scaling``
  (GeomLoss runs one iteration per eps stage and stops at the target blur, so its accuracy is
  set by ``scaling``);
* POT ``ot.unbalanced.sinkhorn_unbalanced`` (``sinkhorn_stabilized``, float64 NumPy, the three
  problems of the divergence; forward only: POT has no debiased divergence nor envelope gradient
  here), the loosest ``stopThr`` (POT's rule watches the change of the scalings, which can
  stall far from the optimum: it often needs 1e-11 or less to reach 1e-4 on the value).

Timed: forward + backward w.r.t. x (torchuot and GeomLoss), float32 on the CPU unless
``--device cuda``. Printed: time, peak memory, the gap to the reference and the ratios
torchuot/GeomLoss.

    python benchmarks/bench_sinkhorn.py                       # N in {1000, 4000}, D in {2, 3}
    python benchmarks/bench_sinkhorn.py --sizes 1000 --dims 2 --no-pot
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, measure  # noqa: E402

import torchuot as tu  # noqa: E402


def make_data(n: int, d: int, seed: int, device: str):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g)
    y = torch.rand(n, d, generator=g) * 0.8 + 0.15
    a = torch.full((n,), 1.0 / n)
    b = torch.full((n,), 1.3 / n)  # unequal masses: 1 vs 1.3
    return [t.to(device) for t in (x, y, a, b)]


def run_torchuot(x, y, a, b, blur, reach, tol):
    xg = x.clone().requires_grad_(True)

    def fn():
        v = tu.sinkhorn_divergence(xg, y, a, b, blur=blur, reach=reach, tol=tol, max_iter=5000)
        v.backward()
        return float(v)

    return fn


def run_geomloss(x, y, a, b, blur, reach, scaling):
    from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=blur, reach=reach, scaling=scaling, backend="tensorized")
    xg = x.clone().requires_grad_(True)

    def fn():
        v = loss(a, xg, b, y)
        v.backward()
        return float(v)

    return fn


def run_pot(x, y, a, b, blur, reach, stop):
    import ot

    eps, rho = blur**2, reach**2
    X, Y, A, B = (t.detach().cpu().double().numpy() for t in (x, y, a, b))

    def ot_value(P, u, v, C, wa, wb):
        # primal objective of POT's plan (its 'total_cost' is not this objective)
        def kl(p, q):
            return float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1) / q), 0) - p + q))
        return float((P * C).sum()) + eps * kl(P, np.outer(wa, wb)) + rho * (
            kl(P.sum(1), wa) + kl(P.sum(0), wb))

    def solve(U, V, wa, wb):
        C = ((U[:, None, :] - V[None, :, :]) ** 2).sum(-1) / 2
        P = ot.unbalanced.sinkhorn_unbalanced(wa, wb, C, eps, rho, reg_type="kl",
                                              method="sinkhorn_stabilized", numItermax=20000,
                                              stopThr=stop)
        return ot_value(P, None, None, C, wa, wb)

    def fn():
        return (solve(X, Y, A, B) - 0.5 * solve(X, X, A, A) - 0.5 * solve(Y, Y, B, B)
                + 0.5 * eps * (A.sum() - B.sum()) ** 2)

    return fn


def cheapest(make, settings, ref, target, repeat):
    """First setting (cheapest first) whose value is within ``target`` of ``ref``."""
    last = None
    for s in settings:
        val, dt, mem = measure(make(s), repeat=repeat)
        gap = abs(val - ref) / abs(ref)
        last = dict(setting=s, time_s=dt, peak_MiB=mem, rel_gap=gap, value=val)
        if gap <= target:
            return last, True
    return last, False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000])
    ap.add_argument("--dims", type=int, nargs="+", default=[2, 3])
    ap.add_argument("--blur", type=float, default=0.05)
    ap.add_argument("--reach", type=float, default=0.5)
    ap.add_argument("--target", type=float, default=1e-4, help="relative accuracy to match")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-pot", action="store_true", help="skip POT (slow at N=4000)")
    ap.add_argument("--geomloss-scalings", type=float, nargs="+",
                    default=[0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995],
                    help="GeomLoss scalings to try, cheapest first (start higher to save time)")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    for n in args.sizes:
        for d in args.dims:
            x, y, a, b = make_data(n, d, seed=n + d, device=args.device)
            ref = float(tu.sinkhorn_divergence(x.double(), y.double(), a.double(), b.double(),
                                               blur=args.blur, reach=args.reach, tol=1e-10,
                                               max_iter=20000))
            ours, ok1 = cheapest(partial(run_torchuot, x, y, a, b, args.blur, args.reach),
                                 [1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4], ref, args.target, args.repeat)
            geo, ok2 = cheapest(partial(run_geomloss, x, y, a, b, args.blur, args.reach),
                                args.geomloss_scalings, ref, args.target, args.repeat)
            entries = [("torchuot", "tol", ours, ok1), ("geomloss-tensorized", "scaling", geo, ok2)]
            if not args.no_pot:
                pot, ok3 = cheapest(partial(run_pot, x, y, a, b, args.blur, args.reach),
                                    [1e-5, 1e-7, 1e-9, 1e-11, 1e-13], ref, args.target, 1)
                entries.append(("pot (fwd only, f64)", "stopThr", pot, ok3))
            for name, knob, r, ok in entries:
                rows.append(dict(
                    N=n, D=d, library=name, setting=f"{knob}={r['setting']:g}",
                    time_s=r["time_s"], peak_MiB=r["peak_MiB"], rel_gap=r["rel_gap"],
                    reached_target="yes" if ok else "NO",
                    time_vs_geomloss=r["time_s"] / geo["time_s"],
                    mem_vs_geomloss=r["peak_MiB"] / max(geo["peak_MiB"], 1e-9),
                ))
            print(markdown_table(rows[-len(entries):], list(rows[-1].keys())), flush=True)
    print(f"\n## bench_sinkhorn: blur={args.blur}, reach={args.reach}, target={args.target:g}, "
          f"device={args.device}, float32, threads={torch.get_num_threads()}\n")
    print(markdown_table(rows, list(rows[0].keys())))


if __name__ == "__main__":
    main()
