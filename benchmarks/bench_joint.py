"""Benchmark: EW_lambda outer iterations and its chain multi-marginal Sinkhorn, CPU.

For a 20x20 and a 50x50 grid on [0, 1]^2 (M = 400 / 2500) and 300 points per dataset:

* time per EW_lambda outer iteration (GW linearisation + one chain Sinkhorn solve + pairwise
  marginals), averaged over ``--outer`` iterations, and the process's peak RSS (each
  configuration runs in a fresh subprocess so peaks do not mix);
* the chain Sinkhorn (free Z nodes composed into one X-Y log-kernel per eps stage) against a
  reference on the same costs: plain tree message passing through all four nodes every
  sweep (the structure of ``tree_sinkhorn_torch`` in MoePien/RelaxedEmbeddedWasserstein, in
  the log domain), both run for the same number of sweeps; reported: time per sweep, ratio,
  and the max gap between the two ``pi_{X Z1}``;
* storage: the factored plan (potentials + pairwise costs) vs the dense 4-plan it represents.

Usage: ``python benchmarks/bench_joint.py [--grids 20 50] [--n 300] [--outer 3] [--sweeps 50]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
import warnings

import torch

F64 = torch.float64


def _reference_sweeps(costs, weights, eps: float, sweeps: int):
    """Unreduced log-domain tree Sinkhorn on X - Z1 - Z2 - Y (balanced ends, free Z's)."""
    from torchuot.backends.tensorized import safe_logsumexp

    C1, C2, C3 = costs
    lw = [w.log() for w in weights]
    f = torch.zeros_like(weights[0])
    g = torch.zeros_like(weights[3])
    for _ in range(sweeps):
        # message from Y down to X through Z2 and Z1 (all four nodes every sweep)
        m = safe_logsumexp(lw[3][None, :] + g[None, :] / eps - C3 / eps, 1) + lw[2]
        m = safe_logsumexp(m[None, :] - C2 / eps, 1) + lw[1]
        f = -eps * safe_logsumexp(m[None, :] - C1 / eps, 1)
        m = safe_logsumexp(lw[0][:, None] + f[:, None] / eps - C1 / eps, 0) + lw[1]
        m = safe_logsumexp(m[:, None] - C2 / eps, 0) + lw[2]
        g = -eps * safe_logsumexp(m[:, None] - C3 / eps, 0)
    return f, g


def _run(cfg: dict) -> dict:
    torch.set_num_threads(cfg["threads"])
    from torchuot.joint import chain_sinkhorn, ew_lambda_embedding, grid_space, gw_linear_cost
    from torchuot.penalties import Balanced

    g = torch.Generator().manual_seed(0)
    n, side = cfg["n"], cfg["grid"]
    u = torch.rand(n, 2, generator=g, dtype=F64) * torch.tensor([1.0, 0.6], dtype=F64)
    v = u + 0.02 * torch.randn(n, 2, generator=g, dtype=F64)
    Dx, Dy = torch.cdist(u, u), torch.cdist(v, v)
    Dx, Dy = Dx / Dx.max(), Dy / Dy.max()
    Z = grid_space(side)
    M = Z.size
    out = {"grid": f"{side}x{side}", "M": M, "n": n}

    t0 = time.perf_counter()
    res = ew_lambda_embedding(Dx, None, Dy, None, Z, lam=cfg["lam"], eps=cfg["eps"], n_outer=cfg["outer"],
                              tol=1e-6, max_iter=3000)
    out["s_per_outer"] = (time.perf_counter() - t0) / cfg["outer"]
    out["inner_sweeps"] = list(res.inner_iters)
    out["peak_rss_mb_ew"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # Same linear problem for both solvers: the first block's costs.
    wx = torch.full((n,), 1 / n, dtype=F64)
    pi0 = wx[:, None] * Z.weights[None, :]
    costs = [2 * cfg["lam"] * gw_linear_cost(Dx, Z.distances, pi0), Z.distances**2,
             2 * cfg["lam"] * gw_linear_cost(Dy, Z.distances, pi0).T]
    weights = [wx, Z.weights, Z.weights, wx.clone()]
    S = cfg["sweeps"]
    t0 = time.perf_counter()
    pens = [Balanced(), None, None, Balanced()]
    warnings.simplefilter("ignore", RuntimeWarning)  # fixed sweep count: "not converged" is expected
    plan = chain_sinkhorn(costs, weights, pens, cfg["eps"], eps_start=cfg["eps"], max_iter=S, tol=1e-300)
    pxz = plan.pair_marginal(0)
    out["ours_s_per_sweep"] = (time.perf_counter() - t0) / S
    t0 = time.perf_counter()
    f, gg = _reference_sweeps(costs, weights, cfg["eps"], S)
    out["ref_s_per_sweep"] = (time.perf_counter() - t0) / S
    ref_plan = type(plan)((f, torch.zeros(M, dtype=F64), torch.zeros(M, dtype=F64), gg), plan.costs,
                          plan.weights, plan.penalties, plan.eps, S, False)
    out["gap_pi_xz"] = float((ref_plan.pair_marginal(0) - pxz).abs().max())
    out["pi_xz_max"] = float(pxz.max())
    out["factored_mb"] = 8 * (2 * n * M + M * M + 2 * n + 2 * M) / 2**20
    out["dense_4plan_gb"] = 8 * n * M * M * n / 2**30
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--grids", type=int, nargs="+", default=[20, 50])
    p.add_argument("--n", type=int, default=300)
    p.add_argument("--outer", type=int, default=3)
    p.add_argument("--sweeps", type=int, default=50)
    p.add_argument("--lam", type=float, default=1.0)
    p.add_argument("--eps", type=float, default=5e-3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    ctx = mp.get_context("spawn")
    rows = []
    for side in a.grids:
        cfg = dict(n=a.n, grid=side, outer=a.outer, sweeps=a.sweeps, lam=a.lam, eps=a.eps, threads=a.threads)
        with ctx.Pool(1) as pool:
            rows.append(pool.apply(_run, (cfg,)))
    print(f"EW_lambda on CPU ({a.threads} thread(s)), n = {a.n} per dataset, lambda = {a.lam}, eps = {a.eps}")
    hdr = (f"{'grid':>6} {'M':>5} {'s/outer':>8} {'sweeps/outer':>16} {'ours s/sweep':>12} "
           f"{'ref s/sweep':>11} {'ref/ours':>8} {'gap pi_XZ':>9} {'peak RSS MB':>11} {'factored MB':>11} "
           f"{'dense 4-plan GB':>15}")
    print(hdr)
    for r in rows:
        print(f"{r['grid']:>6} {r['M']:>5} {r['s_per_outer']:>8.2f} {str(r['inner_sweeps']):>16} "
              f"{r['ours_s_per_sweep']:>12.2e} {r['ref_s_per_sweep']:>11.2e} "
              f"{r['ref_s_per_sweep'] / r['ours_s_per_sweep']:>8.1f} {r['gap_pi_xz']:>9.1e} "
              f"{r['peak_rss_mb']:>11.0f} {r['factored_mb']:>11.1f} {r['dense_4plan_gb']:>15.1f}")
    print("gap pi_XZ: max |ours - reference| over entries of pi_{X Z1} after the same number of sweeps "
          f"(entries are up to {max(r['pi_xz_max'] for r in rows):.1e}).")


if __name__ == "__main__":
    main()
