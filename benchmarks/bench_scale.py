"""Large point clouds: torchuot tensorized / chunked / online vs GeomLoss tensorized / online /
multiscale, in one process on the same inputs.

Task: debiased unbalanced Sinkhorn divergence between two uniform clouds in D = 3
(blur 0.05, reach 0.5, eps-scaling 0.5), forward + backward w.r.t. ``x``, float32.
For each N = M: wall time, peak memory (CPU: growth of the resident set above the value
before the call, sampled every 5 ms; GPU: ``torch.cuda.max_memory_allocated``), the value gap
and the gradient gap to the reference, and the ratios of our time / memory to GeomLoss's best
(fastest) backend.

The reference is torchuot's converged value (tensorized where it fits, else online, else
chunked; the three agree to float32 rounding). torchuot iterates at the target ``eps`` until the
potentials stop moving (``--tol``, library default 1e-6); GeomLoss stops after its annealing
schedule, so with ``scaling=0.5`` its value is biased at small blur (about 14% here at N=1e3; it
approaches torchuot's value as ``--geomloss-scaling`` tends to 1, e.g. 1e-6 at 0.99 -- and
costs proportionally more iterations).

Usage::

    python benchmarks/bench_scale.py                     # N = 1e3, 1e4 on CPU
    python benchmarks/bench_scale.py --sizes 1000 10000 100000 --device cuda
    python benchmarks/bench_scale.py --skip torchuot-chunked geomloss-multiscale
    python benchmarks/bench_scale.py --sizes 1000 --geomloss-scaling 0.9 --tol 1e-3

Every KeOps formula is compiled by a warm-up run on 300 points before anything is timed.
Dense (tensorized) runs are skipped when their cost matrices would not fit in memory.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import math
import os
import threading
import time
import warnings

import torch

import torchuot

BLUR, REACH, SCALING, D = 0.05, 0.5, 0.5, 3


# ---------------------------------------------------------------------------- runners
def torchuot_runner(backend: str, args: argparse.Namespace):
    def run(x, y):
        return torchuot.sinkhorn_divergence(x, y, blur=BLUR, reach=REACH, scaling=SCALING,
                                            tol=args.tol, backend=backend)
    return run


def geomloss_runner(backend: str, args: argparse.Namespace):
    with contextlib.redirect_stdout(io.StringIO()):
        from geomloss import SamplesLoss

    loss = SamplesLoss("sinkhorn", p=2, blur=BLUR, reach=REACH, scaling=args.geomloss_scaling,
                       debias=True, backend=backend)

    def run(x, y):
        return loss(x, y)
    return run


METHODS = {
    "torchuot-tensorized": (torchuot_runner, "tensorized"),
    "torchuot-chunked": (torchuot_runner, "chunked"),
    "torchuot-online": (torchuot_runner, "online"),
    "geomloss-tensorized": (geomloss_runner, "tensorized"),
    "geomloss-online": (geomloss_runner, "online"),
    "geomloss-multiscale": (geomloss_runner, "multiscale"),
}


# ---------------------------------------------------------------------------- measuring
def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(fn, x, y):
    """Run forward + backward once; return (value, grad_x, seconds, peak bytes)."""
    gc.collect()
    xr = x.clone().requires_grad_()
    cuda = x.is_cuda
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss()
    peak, stop = [base], threading.Event()

    def watch():
        while not stop.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.005)

    watcher = None if cuda else threading.Thread(target=watch, daemon=True)
    if watcher:
        watcher.start()
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.redirect_stdout(io.StringIO()):
                val = fn(xr, y)
                (grad,) = torch.autograd.grad(val, xr)
        if cuda:
            torch.cuda.synchronize()
        secs = time.perf_counter() - t0
    finally:
        stop.set()
        if watcher:
            watcher.join()
    mem = (torch.cuda.max_memory_allocated() - base) if cuda else (max(peak[0], _rss()) - base)
    return float(val.detach()), grad.detach(), secs, mem


def dense_fits(n: int, device: torch.device) -> bool:
    """About eight N x N float32 buffers at once (GeomLoss: C_xy, C_yx, C_xx, C_yy + temporaries)."""
    need = 8 * n * n * 4
    if device.type == "cuda":
        return need < 0.8 * torch.cuda.get_device_properties(device).total_memory
    with open("/proc/meminfo") as fh:
        avail = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable"))
    return need < 0.5 * avail


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip", nargs="*", default=[], choices=list(METHODS))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--tol", type=float, default=1e-6, help="torchuot stopping tolerance")
    parser.add_argument("--geomloss-scaling", type=float, default=SCALING,
                        help="GeomLoss eps-scaling ratio (its iteration count)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    methods = {k: v for k, v in METHODS.items() if k not in args.skip}
    runners = {}
    for name, (factory, backend) in methods.items():
        try:
            runners[name] = factory(backend, args)
        except ImportError as err:
            print(f"# {name}: unavailable ({err})")

    gen = torch.Generator().manual_seed(0)
    # Warm-up (KeOps compilation, allocator) on a small problem.
    xw, yw = torch.rand(300, D, generator=gen).to(device), torch.rand(300, D, generator=gen).to(device)
    for name, fn in list(runners.items()):
        try:
            measure(fn, xw, yw)
        except Exception as err:  # noqa: BLE001  (a backend that cannot run here is reported)
            print(f"# {name}: failed at warm-up ({type(err).__name__}: {str(err)[:200]})")
            runners.pop(name)

    cpu = torch.get_num_threads()
    what = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {cpu} torch threads"
    print(f"# device: {device} ({what}), torch {torch.__version__}, D={D}, blur={BLUR}, "
          f"reach={REACH}, scaling={SCALING} (GeomLoss {args.geomloss_scaling}), torchuot tol={args.tol}, "
          "float32")
    header = (f"{'N=M':>8} {'method':<21} {'time s':>9} {'peak MiB':>9} {'value':>12} "
              f"{'value gap':>9} {'grad gap':>9} {'time/GL':>8} {'mem/GL':>7} {'backend':>10}")
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        x = torch.rand(n, D, generator=gen).to(device)
        y = (0.2 + 0.8 * torch.rand(n, D, generator=gen)).to(device)
        rows = {}
        for name, fn in runners.items():
            if name.endswith("tensorized") and not dense_fits(n, device):
                rows[name] = None
                continue
            try:
                rows[name] = measure(fn, x, y)
            except Exception as err:  # noqa: BLE001
                print(f"# {name} N={n}: {type(err).__name__}: {str(err)[:200]}")
                rows[name] = None
        ref_name = next((k for k in ("torchuot-tensorized", "torchuot-online", "torchuot-chunked")
                         if rows.get(k)), None)
        gl = {k: v for k, v in rows.items() if k.startswith("geomloss") and v}
        best = min(gl.values(), key=lambda r: r[2]) if gl else None
        for name, r in rows.items():
            if r is None:
                print(f"{n:>8} {name:<21} {'skipped (dense N x M does not fit / failed)':>50}")
                continue
            val, grad, secs, mem = r
            vgap = ggap = math.nan
            if ref_name:
                rv, rg = rows[ref_name][0], rows[ref_name][1]
                vgap = abs(val - rv) / max(abs(rv), 1e-30)
                ggap = float((grad - rg).norm() / rg.norm().clamp_min(1e-30))
            tr = secs / best[2] if best and name.startswith("torchuot") else math.nan
            # Below 1 MiB the RSS sampler cannot resolve a ratio (KeOps runs allocate ~nothing).
            mr = mem / best[3] if best and best[3] >= 2**20 and name.startswith("torchuot") else math.nan
            used = ""
            if name.startswith("torchuot"):
                used = name.split("-")[1]
            print(f"{n:>8} {name:<21} {secs:>9.3f} {mem / 2**20:>9.1f} {val:>12.6g} {vgap:>9.1e} "
                  f"{ggap:>9.1e} {tr:>8.2f} {mr:>7.2f} {used:>10}")
        if best:
            bname = next(k for k, v in gl.items() if v is best)
            print(f"{'':>8} (GeomLoss best at N={n}: {bname}; gaps vs {ref_name})")


if __name__ == "__main__":
    main()
