"""Worker for tests/test_distributed.py, launched as ``torchrun --standalone --nproc_per_node K
tests/distributed_worker.py OUT_DIR [--kill-rank R --kill-after S]``.

Every rank computes the same small HK matrix with ``distributed=True`` and per-rank checkpoints;
rank 0 saves the matrix to ``OUT_DIR/D.pt``; each rank writes how many blocks of pairs it solved
to ``OUT_DIR/rank<r>.json``. ``--kill-rank`` makes that rank SIGKILL itself right after its
``S``-th checkpoint save (a crash in the middle of the job).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

import torch
import torch.distributed as dist

import torchuot.images as images


def small_images(n: int = 9, size: int = 8) -> torch.Tensor:
    """``(n, size, size)`` sparse non-negative float64 images, the same in every process."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, size, size, generator=g, dtype=torch.float64)
    return torch.where(x > 0.6, x, torch.zeros_like(x))


KW = dict(metric="hk", kappa=2.0, blur=0.7, tol=1e-6, block_size=1, dtype=torch.float64)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--kill-rank", type=int, default=-1)
    p.add_argument("--kill-after", type=int, default=0)
    a = p.parse_args()
    out = Path(a.out)
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])
    solved = {"pairs_blocks": 0, "saves": 0}
    ckpt_dir = (out / "ckpt").resolve()
    # Instrumented through public names only: every block of pairs is one solve_potentials call
    # on a non-symmetric problem, and every checkpoint save ends with an atomic os.replace.
    solve, replace = images.solve_potentials, os.replace

    def counting_solve(problem, *args, **kwargs):
        if not problem.symmetric:
            solved["pairs_blocks"] += 1
        return solve(problem, *args, **kwargs)

    def killing_replace(src, dst, *args, **kwargs):
        replace(src, dst, *args, **kwargs)
        if Path(dst).resolve().parent != ckpt_dir:
            return
        solved["saves"] += 1
        if rank == a.kill_rank and solved["saves"] == a.kill_after:
            os.kill(os.getpid(), signal.SIGKILL)

    images.solve_potentials = counting_solve
    os.replace = killing_replace
    D = images.pairwise_distances(small_images(), checkpoint=out / "ckpt" / "D.pt", distributed=True, **KW)
    (out / f"rank{rank}.json").write_text(json.dumps({**solved, "world": dist.get_world_size()}))
    if rank == 0:
        torch.save(D, out / "D.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
