"""Time to accuracy on large point clouds: torchuot (every backend x accuracy settings) against
GeomLoss (tensorized / online / multiscale x scaling) and OTT-JAX (``sinkhorn_divergence`` x
threshold).

Task: the debiased unbalanced Sinkhorn divergence between two uniform clouds (``x`` in the unit
cube, ``y`` in ``[0.15, 0.95]^D``), blur 0.05 (``eps = 0.0025`` for ``|x-y|^2/2``), reach 0.5,
float32, forward + backward w.r.t. ``x``. For each run: wall time, peak memory (resident-set
growth sampled every ms, ``benchmarks/_common.measure``) and the relative error of the value
against a converged float64 reference, computed once per (N, D) and kept in
``results/bench_scale_refs.json`` (committed; torchuot tensorized float64, tol 1e-9, where it fits; the online
(KeOps) backend at N <= 1e4 else; the multiscale backend with truncate = 10, tol 1e-5 above:
errors below ~1e-5 are not resolved there).

The figure of merit: for each accuracy level (1e-1 ... 1e-4) and N, the fastest run of each
library whose error is at most that level, and our best time over theirs.

Each run is appended to ``outputs/bench_scale/runs.jsonl`` as it finishes (long sweeps can be
stopped and resumed: finished runs are skipped); ``--table`` prints the table from that file.
A family of runs (one library x backend) stops at the first run slower than ``--budget`` s
(runs are ordered from cheap to expensive).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_scale.py --sizes 1000 10000 --dims 2 3
    python benchmarks/bench_scale.py --table --markdown results/bench_scale_table.md
    python benchmarks/bench_scale.py --sizes 100000 --dims 3 --libs torchuot geomloss --budget 900

OTT-JAX is optional (``pip install -e .[bench]``); it is skipped when ``import ott`` fails.
Its cost is ``|x-y|^2`` (no 1/2): it gets ``eps_ott = 2 eps``, ``tau = rho / (rho + eps)`` and
its value is halved.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import measure  # noqa: E402

import torchuot  # noqa: E402
from torchuot.backends import Multiscale  # noqa: E402

BLUR, REACH = 0.05, 0.5
LEVELS = (1e-1, 1e-2, 1e-3, 1e-4)
OUT = Path(os.environ.get("TORCHUOT_BENCH_OUT", "outputs/bench_scale"))


def clouds(n: int, d: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 10 + d)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    y = 0.15 + 0.8 * torch.rand(n, d, generator=g, dtype=torch.float64)
    return x.to(dtype), y.to(dtype)


def dense_fits(n: int, itemsize: int = 4, copies: int = 8) -> bool:
    with open("/proc/meminfo") as fh:
        avail = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable"))
    return copies * n * n * itemsize < 0.5 * avail


# ---------------------------------------------------------------------------- reference
#: Committed references (small, so they cannot be lost with an output folder): one entry per
#: ``n{N}_d{D}`` key with ``value``, ``how``, ``seconds`` and, where they apply, notes.
REFS = Path(__file__).resolve().parent.parent / "results" / "bench_scale_refs.json"


def _load_refs() -> dict:
    return json.loads(REFS.read_text()) if REFS.exists() else {}


def reference(n: int, d: int, device: str = "cpu") -> tuple[float, str]:
    """The float64 reference value of the (N, D) problem: read from :data:`REFS` (or a legacy
    ``outputs/bench_scale/ref_*.json``), else computed once and added to :data:`REFS`."""
    key = f"n{n}_d{d}"
    refs = _load_refs()
    if key in refs:
        return refs[key]["value"], refs[key]["how"]
    legacy = OUT / f"ref_{key}.json"
    if legacy.exists():
        r = json.loads(legacy.read_text())
    else:
        x, y = (t.to(device) for t in clouds(n, d, torch.float64))
        if dense_fits(n, 8, copies=4):
            how, backend = "tensorized float64 tol 1e-9", "tensorized"
        elif n <= 10_000 and torchuot.backends.keops_status(torch.float64)[0]:
            how, backend = "online (KeOps) float64 tol 1e-9", "online"
        else:
            how, backend = "multiscale truncate=10 float64 tol 1e-5", Multiscale(truncate=10.0)
        t0 = time.perf_counter()
        tol = 1e-5 if isinstance(backend, Multiscale) else 1e-9
        v = torchuot.sinkhorn_divergence(x, y, blur=BLUR, reach=REACH, tol=tol, max_iter=20000,
                                         backend=backend)
        r = {"value": float(v), "how": how, "seconds": time.perf_counter() - t0,
             "threads": torch.get_num_threads(), "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}
    refs = _load_refs()
    refs[key] = r
    REFS.write_text(json.dumps(refs, indent=1, sort_keys=True) + "\n")
    return r["value"], r["how"]


# ---------------------------------------------------------------------------- runners
def ours(backend, tol: float, scaling: float = 0.5):
    def run(x, y):
        return torchuot.sinkhorn_divergence(x, y, blur=BLUR, reach=REACH, tol=tol, scaling=scaling,
                                            backend=backend)
    return run


def geomloss(backend: str, scaling: float):
    with contextlib.redirect_stdout(io.StringIO()):
        from geomloss import SamplesLoss
    loss = SamplesLoss("sinkhorn", p=2, blur=BLUR, reach=REACH, scaling=scaling, debias=True, backend=backend)
    return lambda x, y: loss(x, y)


def ott_runner(threshold: float):
    import jax
    import jax.numpy as jnp
    from ott.geometry import pointcloud
    from ott.tools import sinkhorn_divergence as sd

    eps = BLUR**2
    tau = REACH**2 / (REACH**2 + eps)

    @jax.jit
    def value_and_grad(xj, yj):
        def f(xj):
            div, _ = sd.sinkhorn_divergence(pointcloud.PointCloud, xj, yj, epsilon=2 * eps,
                                            solve_kwargs={"tau_a": tau, "tau_b": tau, "threshold": threshold,
                                                          "max_iterations": 5000})
            return div / 2
        return jax.value_and_grad(f)(xj)

    def run(x, y):
        v, gx = value_and_grad(jnp.asarray(x.detach().cpu().numpy()), jnp.asarray(y.cpu().numpy()))
        gx.block_until_ready()
        return float(v)
    run.self_grad = True  # value and gradient computed inside
    return run


def families(n: int, d: int, libs: list[str]) -> dict[str, list[tuple[str, object]]]:
    """Runs grouped by family, each family ordered from cheap to expensive."""
    fam: dict[str, list[tuple[str, object]]] = {}
    tols = (1.0, 1e-1, 1e-2, 1e-3, 1e-6)
    if "torchuot" in libs:
        for be in ("multiscale", "online", "tensorized", "chunked"):
            if be == "tensorized" and not dense_fits(n):
                continue
            if be == "chunked" and n > 10_000:
                continue
            fam[f"torchuot-{be}"] = [(f"tol={t:g}", ours(be, t)) for t in tols]
        # The multiscale backend's two accuracy knobs: the stopping tolerance and the truncation.
        fam["torchuot-multiscale"] = [(f"tol={t:g}", ours("multiscale", t)) for t in (1.0, 0.3) + tols[1:]]
        for tr in (5, 3, 2):
            be = Multiscale(truncate=float(tr))
            fam[f"torchuot-multiscale-t{tr}"] = [(f"tol={t:g},truncate={tr}", ours(be, t))
                                                 for t in (1.0, 0.5, 0.3, 1e-1, 1e-2)]
    if "geomloss" in libs:
        for be in ("multiscale", "online", "tensorized"):
            if be == "tensorized" and not dense_fits(n):
                continue
            if be == "multiscale" and d > 3:
                continue
            fam[f"geomloss-{be}"] = [(f"scaling={s:g}", geomloss(be, s)) for s in (0.5, 0.7, 0.8, 0.9, 0.95)]
    if "ott" in libs:
        try:
            import ott  # noqa: F401

            fam["ott-sinkhorn_divergence"] = [(f"threshold={t:g}", ott_runner(t))
                                              for t in (1e-1, 1e-2, 1e-3, 1e-4)]
        except ImportError as err:
            print(f"# ott-jax unavailable ({err}); pip install -e .[bench]")
    return fam


# ---------------------------------------------------------------------------- sweep and table
def load_runs() -> list[dict]:
    path = OUT / "runs.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sweep(args: argparse.Namespace) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    done = {(r["n"], r["d"], r["family"], r["setting"]) for r in load_runs()}
    # Warm-up: KeOps formulas and JAX traces on a small problem (not timed).
    for n in args.sizes:
        for d in args.dims:
            ref, how = reference(n, d, args.device)
            print(f"# N={n} D={d}: reference {ref:.9g} ({how})", flush=True)
            xw, yw = (t.to(args.device) for t in clouds(300, d))
            x, y = (t.to(args.device) for t in clouds(n, d))
            for fam, runs in families(n, d, args.libs).items():
                if fam in args.skip:
                    continue
                for setting, fn in runs:
                    key = (n, d, fam, setting)
                    if key in done or (args.settings and setting not in args.settings):
                        continue
                    try:
                        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                            warnings.simplefilter("ignore")
                            _call(fn, xw, yw)  # compile / trace at this setting
                            (val, _), secs, mib = measure(lambda fn=fn, x=x, y=y: _call(fn, x, y))
                            for _ in range(args.repeat - 1):  # the fastest of the repeats (load noise)
                                (_, secs2, mib2) = measure(lambda fn=fn, x=x, y=y: _call(fn, x, y))
                                secs, mib = min(secs, secs2), max(mib, mib2)
                    except Exception as err:  # noqa: BLE001  (a failing library is reported, not fatal)
                        print(f"# {fam} {setting} N={n}: {type(err).__name__}: {str(err)[:160]}", flush=True)
                        break
                    err_rel = abs(val - ref) / abs(ref)
                    row = dict(n=n, d=d, family=fam, setting=setting, seconds=secs, peak_mib=mib,
                               value=val, rel_error=err_rel, threads=torch.get_num_threads(),
                               device=args.device, repeat=args.repeat, load_avg=os.getloadavg()[0],
                               utc=time.strftime("%H:%M", time.gmtime()))
                    with open(OUT / "runs.jsonl", "a") as fh:
                        fh.write(json.dumps(row) + "\n")
                    print(f"{n:>8} {d} {fam:<26} {setting:<22} {secs:9.2f} s {mib:8.1f} MiB  "
                          f"err {err_rel:8.1e}", flush=True)
                    if secs > args.budget:
                        print(f"# {fam}: {secs:.0f} s > budget {args.budget} s, stopping this family",
                              flush=True)
                        break


def _call(fn, x, y):
    if getattr(fn, "self_grad", False):
        return fn(x, y), None
    xr = x.clone().requires_grad_()
    v = fn(xr, y)
    (g,) = torch.autograd.grad(v, xr)
    return float(v.detach()), g


def table(markdown: str | None) -> str:
    runs = load_runs()
    lines = ["| N | D | error <= | torchuot best (s) | setting | GeomLoss best (s) | setting | ours/GL "
             "| OTT-JAX best (s) | ours/OTT |", "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["n"], r["d"]) for r in runs})
    for n, d in keys:
        rs = [r for r in runs if r["n"] == n and r["d"] == d]
        for lev in LEVELS:
            best = {}
            for lib in ("torchuot", "geomloss", "ott"):
                ok = [r for r in rs if r["family"].startswith(lib) and r["rel_error"] <= lev]
                best[lib] = min(ok, key=lambda r: r["seconds"]) if ok else None
            o, g, t = best["torchuot"], best["geomloss"], best["ott"]

            def cell(r):
                if not r:
                    return ("--", "")
                return (f"{r['seconds']:.2f}", f"{r['family'].split('-', 1)[1]} {r['setting']}")
            oc, gc_, tc = cell(o), cell(g), cell(t)
            rg = f"{o['seconds'] / g['seconds']:.2f}" if o and g else ("ours only" if o else "--")
            rt = f"{o['seconds'] / t['seconds']:.2f}" if o and t else "--"
            lines.append(f"| {n:,} | {d} | {lev:g} | {oc[0]} | {oc[1]} | {gc_[0]} | {gc_[1]} | {rg} "
                         f"| {tc[0]} | {rt} |")
    text = "\n".join(lines)
    if markdown:
        Path(markdown).write_text(text + "\n")
    return text


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--dims", type=int, nargs="+", default=[3])
    p.add_argument("--libs", nargs="+", default=["torchuot", "geomloss", "ott"])
    p.add_argument("--skip", nargs="*", default=[], help="families to leave out, e.g. torchuot-online")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--budget", type=float, default=300.0, help="seconds: a family stops after a slower run")
    p.add_argument("--repeat", type=int, default=1, help="timed runs per setting; the fastest is kept")
    p.add_argument("--settings", nargs="*", default=[],
                   help="run only these settings, e.g. 'tol=0.5,truncate=3'")
    p.add_argument("--table", action="store_true", help="only print the table of finished runs")
    p.add_argument("--markdown", default=None, help="also write the table there")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if not args.table:
        sweep(args)
    print(table(args.markdown))


if __name__ == "__main__":
    main()
