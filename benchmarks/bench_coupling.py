"""Benchmark: minibatch UOT/OT coupling, torchuot vs TorchCFM's OTPlanSampler (POT inside).

Same batches, same problem: MNIST-sized inputs (784 dims, real MNIST digits when the shipped
data is found through ``$TORCHUOT_DATA_ROOT``, else uniform noise), squared-Euclidean cost
divided by its mean, ``eps = 0.01``; unbalanced: OTT's ``tau_a = 0.9, tau_b = 1`` (POT
``reg_m = (eps tau_a / (1 - tau_a), inf)``). TorchCFM receives the points pre-scaled so its
cost ``|x - y|^2`` equals our normalised cost, and float64 (in float32 POT's kernel
``exp(-C / eps)`` underflows at eps = 0.01 and TorchCFM falls back to the uniform plan with a
printed warning; the table reports whether that happened).

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


def batches(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    root = os.environ.get("TORCHUOT_DATA_ROOT")
    try:
        from torchuot.datasets import load_mnist

        images, labels = load_mnist(root or "../shared/data", "test")
        x = torch.from_numpy(np.array(images, dtype=np.float32)).reshape(len(images), -1) / 127.5 - 1
        # Source: thin digits 0-4; target: dilated digits 5-9 (a translation-like pair of batches).
        src = x[torch.from_numpy(labels < 5)]
        tgt = torch.nn.functional.max_pool2d(x[torch.from_numpy(labels >= 5)].reshape(-1, 1, 28, 28), 3, 1, 1)
        i = torch.randperm(len(src), generator=gen)[:n]
        j = torch.randperm(len(tgt), generator=gen)[:n]
        return src[i], tgt[j].reshape(n, -1)
    except (FileNotFoundError, ImportError):
        return torch.rand(n, 784, generator=gen) * 2 - 1, torch.rand(n, 784, generator=gen) * 2 - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024])
    ap.add_argument("--repeats", type=int, default=5)
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

    gen = torch.Generator().manual_seed(0)
    print(
        f"torch {torch.__version__}, {args.threads} thread(s), eps={EPS}, tau_a={TAU_A}, tau_b=1, cost/mean"
    )
    print("times in ms: wall / CPU (median); speed-up = TorchCFM / torchuot, wall and CPU")
    head = (
        f"{'n':>5} {'method':>6} | {'torchuot':>13} {'MiB':>5} {'iters':>5} {'L1 err':>7} | {'TorchCFM':>13} "
        f"{'MiB':>5} {'L1 err':>7} | {'L1 gap':>7} {'fp32 fallback':>13} | {'speed-up':>11}"
    )
    print(head)
    print("-" * len(head))
    rho_a = EPS * TAU_A / (1 - TAU_A)
    for n in args.sizes:
        x0, x1 = batches(n, gen)
        C = pairwise_cost(x0.double(), x1.double())
        s = (2 * C.mean()).rsqrt()  # |x - y|^2 * s^2 = C / mean(C)
        x0r, x1r = (x0.double() * s), (x1.double() * s)
        for method, ref_method, ref_kw in (
            ("uot", "unbalanced", dict(reg=EPS, reg_m=(rho_a, float("inf")))),
            ("ot", "sinkhorn", dict(reg=EPS)),
        ):
            ours = PlanSampler(method, eps=EPS, tau_a=TAU_A, tau_b=1.0)
            t_ours, c_ours, m_ours, smp = measure(lambda: ours.sample(x0, x1), args.repeats)  # noqa: B023
            exact = PlanSampler(method, eps=EPS, tau_a=TAU_A, tau_b=1.0, tol=1e-12, max_iter=50_000)
            P_star = exact.plan(x0.double(), x1.double())  # the converged float64 plan
            P_ours = ours.plan(x0, x1).double()
            row = (
                f"{n:>5} {method:>6} | {t_ours * 1e3:>6.1f}/{c_ours * 1e3:>6.1f} {m_ours:>5.1f} "
                f"{smp.n_iters:>5} {float((P_ours - P_star).abs().sum()):>7.1e} | "
            )
            if OTPlanSampler is None:
                print(row + "-")
                continue
            ref = OTPlanSampler(ref_method, warn=False, **ref_kw)
            with contextlib.redirect_stdout(io.StringIO()):
                t_ref, c_ref, m_ref, _ = measure(lambda: ref.sample_plan(x0r, x1r), args.repeats)  # noqa: B023
                P_ref = torch.as_tensor(ref.get_map(x0r, x1r))
                P32 = ref.get_map(x0r.float(), x1r.float())
            P_ref = P_ref / P_ref.sum()
            gap = float((P_ours - P_ref).abs().sum())
            err_ref = float((P_ref - P_star).abs().sum())
            fallback = bool(np.allclose(P32, P32.flat[0])) if P32 is not None else True
            print(
                row + f"{t_ref * 1e3:>6.1f}/{c_ref * 1e3:>6.1f} {m_ref:>5.1f} {err_ref:>7.1e} | {gap:>7.1e} "
                f"{str(fallback):>13} | {t_ref / t_ours:>4.1f}x/{c_ref / c_ours:>4.1f}x"
            )

    # Share of one training step of the demo model (UNet width 16) at the step batch size.
    from models import UNetVelocity
    from torchuot.flow import cfm_loss

    n = args.step_batch
    x0, x1 = batches(n, gen)
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
