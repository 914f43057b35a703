"""Benchmark: minibatch UOT/OT coupling, torchuot vs TorchCFM's OTPlanSampler (POT inside).

Same batches, same problem: MNIST-sized inputs (784 dims, real MNIST digits when the shipped
data is found through ``$TORCHUOT_DATA_ROOT``, else uniform noise), squared-Euclidean cost
divided by its mean, ``eps = 0.01``; unbalanced: OTT's ``tau_a = 0.9, tau_b = 1`` (POT
``reg_m = (eps tau_a / (1 - tau_a), inf)``). TorchCFM receives the points pre-scaled so its
cost ``|x - y|^2`` equals our normalised cost, and float64 (in float32 POT's kernel
``exp(-C / eps)`` underflows at eps = 0.01 and TorchCFM falls back to the uniform plan with a
printed warning; the table reports on how many draws that happened).

Each size is measured on ``--batches`` different minibatch draws (seeded by the size, so a row does
not depend on which other sizes run): the Sinkhorn iteration counts, and so the times, vary from one
draw to the next (e.g. 74 to 150 iterations for "ot" at n = 256).

Columns: wall time and CPU time (median of repeats) of plan + drawing ``n`` pairs, peak RSS
growth during the call (``/proc/self/clear_refs``; allocator reuse can hide part of it), the
L1 error of each normalised plan against the converged float64 plan (torchuot at ``tol=1e-12``;
POT agrees with it to ~1e-9), the L1 gap between the two plans, and the time ratios
TorchCFM / torchuot. Both sides run with the same number of threads: ``--threads`` sets torch's
and, through ``threadpoolctl`` when installed, the BLAS threads NumPy/POT use (otherwise NumPy
would take every core while torch is held to one). Finally the coupling's share of one training
step of the demo model (UNet width 16, Adam) at batch 256.

    python benchmarks/bench_coupling.py [--sizes 64 256 1024] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from torchuot.couplings import PlanSampler, pairwise_cost

EPS, TAU_A = 0.01, 0.9


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def _reset_peak() -> int | None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset the RSS high-water mark
        return _rss_kb("VmRSS")
    except OSError:
        return None


def measure(fn, repeats: int) -> tuple[float, float, float, object]:
    """Median wall time (s), median CPU time (s), peak RSS growth (MiB) and the last ``fn()``.

    CPU time (``time.process_time``, all threads) is reported besides wall time because the
    machine these figures come from may be shared: it is the steadier of the two there. The
    RSS growth is the largest over all calls, the first (cold) one included; later calls reuse
    freed memory, so it is a lower bound of the working memory.
    """
    times, cpus, peak = [], [], 0.0
    out = None
    for k in range(repeats + 1):  # call 0 is the warm-up (memory only)
        base = _reset_peak()
        t, c = time.perf_counter(), time.process_time()
        out = fn()
        if k:
            times.append(time.perf_counter() - t)
            cpus.append(time.process_time() - c)
        if base is not None:
            peak = max(peak, (_rss_kb("VmHWM") - base) / 1024)
    return statistics.median(times), statistics.median(cpus), peak, out


@functools.lru_cache(maxsize=1)
def _domains() -> tuple[torch.Tensor, torch.Tensor] | None:
    """Source: thin digits 0-4; target: dilated digits 5-9 (a translation-like pair), flattened."""
    root = os.environ.get("TORCHUOT_DATA_ROOT")
    try:
        from training.datasets import load_mnist

        images, labels = load_mnist(root or "../shared/data", "test")
    except (FileNotFoundError, ImportError):
        return None
    x = torch.from_numpy(np.array(images, dtype=np.float32)).reshape(len(images), -1) / 127.5 - 1
    src = x[torch.from_numpy(labels < 5)]
    tgt = torch.nn.functional.max_pool2d(x[torch.from_numpy(labels >= 5)].reshape(-1, 1, 28, 28), 3, 1, 1)
    return src, tgt.reshape(len(tgt), -1)


def batches(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    dom = _domains()
    if dom is None:  # no shipped data: uniform noise of the same size
        return torch.rand(n, 784, generator=gen) * 2 - 1, torch.rand(n, 784, generator=gen) * 2 - 1
    src, tgt = dom
    i = torch.randperm(len(src), generator=gen)[:n]
    j = torch.randperm(len(tgt), generator=gen)[:n]
    return src[i], tgt[j]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", type=int, default=5,
                    help="different minibatch draws per size (iterations, and so times, vary by batch)")
    ap.add_argument(
        "--threads", type=int, default=1, help="threads of torch and (threadpoolctl) NumPy's BLAS under POT"
    )
    ap.add_argument("--step-batch", type=int, default=256)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # NumPy's BLAS then picks its own thread count
        limits = contextlib.nullcontext()
    else:
        limits = threadpool_limits(args.threads)
    with limits:
        run(args)


def run(args: argparse.Namespace) -> None:
    try:
        from torchcfm.optimal_transport import OTPlanSampler
    except ImportError:
        OTPlanSampler = None
        print("torchcfm not installed (pip install --no-deps torchcfm): reference columns skipped")

    print(
        f"torch {torch.__version__}, {args.threads} thread(s), eps={EPS}, tau_a={TAU_A}, tau_b=1, cost/mean, "
        f"{args.batches} batch draws per size (seeded by the size), {args.repeats} repeats each"
    )
    print("times in ms: wall / CPU, median over draws of the per-draw medians; speed-up = TorchCFM / "
          "torchuot (wall and CPU of the medians; in brackets the range of the per-draw wall ratios)")
    head = (
        f"{'n':>5} {'method':>6} | {'torchuot':>13} {'MiB':>5} {'iters':>7} {'L1 err':>7} | {'TorchCFM':>13} "
        f"{'MiB':>5} {'L1 err':>7} | {'L1 gap':>7} {'fp32 fallback':>13} | {'speed-up':>11} {'range':>11}"
    )
    print(head)
    print("-" * len(head))
    rho_a = EPS * TAU_A / (1 - TAU_A)
    med = statistics.median
    for n in args.sizes:
        draws = [batches(n, torch.Generator().manual_seed(n * 1000 + k)) for k in range(args.batches)]
        for method, ref_method, ref_kw in (
            ("uot", "unbalanced", dict(reg=EPS, reg_m=(rho_a, float("inf")))),
            ("ot", "sinkhorn", dict(reg=EPS)),
        ):
            keys = ("t", "c", "m", "it", "err", "tr", "cr", "mr", "er", "gap", "fb")
            st: dict[str, list] = {k: [] for k in keys}
            for x0, x1 in draws:
                ours = PlanSampler(method, eps=EPS, tau_a=TAU_A, tau_b=1.0)
                t_o, c_o, m_o, smp = measure(lambda: ours.sample(x0, x1), args.repeats)  # noqa: B023
                exact = PlanSampler(method, eps=EPS, tau_a=TAU_A, tau_b=1.0, tol=1e-12, max_iter=50_000)
                P_star = exact.plan(x0.double(), x1.double())  # the converged float64 plan
                P_ours = ours.plan(x0, x1).double()
                st["t"].append(t_o), st["c"].append(c_o), st["m"].append(m_o), st["it"].append(smp.n_iters)
                st["err"].append(float((P_ours - P_star).abs().sum()))
                if OTPlanSampler is None:
                    continue
                C = pairwise_cost(x0.double(), x1.double())
                s = (2 * C.mean()).rsqrt()  # TorchCFM's |x - y|^2 on scaled points = C / mean(C)
                x0r, x1r = (x0.double() * s), (x1.double() * s)
                ref = OTPlanSampler(ref_method, warn=False, **ref_kw)
                with contextlib.redirect_stdout(io.StringIO()):
                    t_r, c_r, m_r, _ = measure(lambda: ref.sample_plan(x0r, x1r), args.repeats)  # noqa: B023
                    P_ref = torch.as_tensor(ref.get_map(x0r, x1r))
                    P32 = ref.get_map(x0r.float(), x1r.float())
                P_ref = P_ref / P_ref.sum()
                st["tr"].append(t_r), st["cr"].append(c_r), st["mr"].append(m_r)
                st["er"].append(float((P_ref - P_star).abs().sum()))
                st["gap"].append(float((P_ours - P_ref).abs().sum()))
                st["fb"].append(bool(np.allclose(P32, P32.flat[0])) if P32 is not None else True)
            its = f"{min(st['it'])}-{max(st['it'])}"
            t_ms, c_ms = med(st["t"]) * 1e3, med(st["c"]) * 1e3
            row = (f"{n:>5} {method:>6} | {t_ms:>6.1f}/{c_ms:>6.1f} {max(st['m']):>5.1f} {its:>7} "
                   f"{max(st['err']):>7.1e} | ")
            if OTPlanSampler is None:
                print(row + "-")
                continue
            ratios = [r / o for r, o in zip(st["tr"], st["t"], strict=True)]
            fallbacks = f"{sum(st['fb'])}/{len(st['fb'])}"
            print(
                row + f"{med(st['tr']) * 1e3:>6.1f}/{med(st['cr']) * 1e3:>6.1f} {max(st['mr']):>5.1f} "
                f"{max(st['er']):>7.1e} | {max(st['gap']):>7.1e} {fallbacks:>13} | "
                f"{med(st['tr']) / med(st['t']):>4.1f}x/{med(st['cr']) / med(st['c']):>4.1f}x "
                f"[{min(ratios):.1f}-{max(ratios):.1f}]"
            )

    # Share of one training step of the demo model (UNet width 16) at the step batch size.
    from models import UNetVelocity
    from torchuot.flow import cfm_loss

    n = args.step_batch
    x0, x1 = batches(n, torch.Generator().manual_seed(n * 1000))
    x0, x1 = x0.reshape(n, 1, 28, 28), x1.reshape(n, 1, 28, 28)
    net = UNetVelocity(1, width=16)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sampler = PlanSampler("uot", eps=EPS, tau_a=TAU_A, tau_b=1.0)

    def coupling():
        return sampler.sample(x0, x1)

    def step():
        c = sampler.sample(x0, x1)
        loss = cfm_loss(net, x0[c.i], x1[c.j])
        opt.zero_grad()
        loss.backward()
        opt.step()

    t_c, c_c, _, _ = measure(coupling, args.repeats)
    t_s, c_s, _, _ = measure(step, args.repeats)
    print(
        f"\ntraining step of the demo model at batch {n}: wall {t_s * 1e3:.0f} ms / CPU {c_s * 1e3:.0f} ms; "
        f"UOT coupling wall {t_c * 1e3:.1f} ms / CPU {c_c * 1e3:.1f} ms = {100 * t_c / t_s:.1f}% / "
        f"{100 * c_c / c_s:.1f}% of the step"
    )


if __name__ == "__main__":
    main()
