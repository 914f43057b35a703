"""Sliced Wasserstein: torchuot vs POT (torch backend), same process, same inputs and directions.

    .venv/bin/python benchmarks/bench_sliced.py                      # N = 1e5 and 1e6, D = 3, L = 256
    .venv/bin/python benchmarks/bench_sliced.py --sizes 100000 --threads 2

For each N both libraries get the same float32 clouds and the same ``L`` unit directions
(POT's ``projections`` is our ``directions.T``). POT's call holds every ``N x L`` projection,
sort index, merged-quantile array and gather at once (about 60 bytes per (point, direction),
~15 GB at N = 1e6, L = 256), so above ``--pot-max-values`` (N * L) POT runs on the first
``--pot-directions`` directions only, and torchuot runs on both that subset (for the ratio on
identical work) and the full set. Peak memory is the peak resident-set growth over the call
(sampled every 5 ms from /proc/self/statm). Timing is wall-clock on CPU.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from functools import partial

import torch

from torchuot.sliced import sample_directions, sliced_wasserstein

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def measure(fn):
    """Run ``fn()`` once -> (result, seconds, peak RSS growth in MiB)."""
    base = _rss()
    peak = [base]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    stop.set()
    th.join()
    peak[0] = max(peak[0], _rss())
    return out, dt, (peak[0] - base) / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6])
    ap.add_argument("--dim", type=int, default=3)
    ap.add_argument("--n-projections", type=int, default=256)
    ap.add_argument("--pot-max-values", type=float, default=3e7,
                    help="largest N * L given to POT in one call (memory guard)")
    ap.add_argument("--pot-directions", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import ot  # noqa: PLC0415  (reference only)

    print(f"torch {torch.__version__}, POT {ot.__version__}, threads={args.threads}, float32, CPU")
    cols = ("N", "L", "library", "time s", "peak MiB", "SW_2", "rel gap", "speedup")
    header = "{:>9} {:>4} {:>9} {:>9} {:>9} {:>10} {:>9} {:>8}".format(*cols)
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        N = int(n)
        g = torch.Generator().manual_seed(args.seed)
        x = torch.randn(N, args.dim, generator=g)
        y = torch.randn(N, args.dim, generator=g) * 0.5 + 1.0
        theta = sample_directions(args.n_projections, args.dim, generator=g, dtype=torch.float32)
        full = N * args.n_projections <= args.pot_max_values
        compare(ot, x, y, theta if full else theta[: args.pot_directions])
        if not full:
            ours, t, m = measure(partial(sliced_wasserstein, x, y, directions=theta))
            print(f"{N:>9} {theta.shape[0]:>4} {'torchuot':>9} {t:>9.2f} {m:>9.0f} {float(ours):>10.6f}"
                  "   (POT not run at this L: memory)")


def compare(ot, x, y, theta) -> None:
    """Time both libraries on the same inputs and directions; print two rows."""
    N, L = x.shape[0], theta.shape[0]
    ours, t_ours, m_ours = measure(partial(sliced_wasserstein, x, y, directions=theta))
    ref, t_pot, m_pot = measure(partial(ot.sliced_wasserstein_distance, x, y, projections=theta.T))
    gap = abs(float(ours) - float(ref)) / abs(float(ref))
    print(f"{N:>9} {L:>4} {'torchuot':>9} {t_ours:>9.2f} {m_ours:>9.0f} {float(ours):>10.6f} "
          f"{gap:>9.1e} {t_pot / t_ours:>7.1f}x")
    print(f"{N:>9} {L:>4} {'POT':>9} {t_pot:>9.2f} {m_pot:>9.0f} {float(ref):>10.6f} {'':>9} {'1.0x':>8}")


if __name__ == "__main__":
    main()
