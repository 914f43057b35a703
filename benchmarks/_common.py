"""Shared benchmark helpers: wall-clock timing and peak resident memory of a call."""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE")

try:  # glibc: serve every large block by mmap and give freed memory back, so RSS tracks usage
    import ctypes

    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD = 1 MiB (also disables its dynamic growth)
except (OSError, AttributeError):  # pragma: no cover - non-glibc platforms
    _LIBC = None


def _rss() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * _PAGE


def _sample_rss(stop: threading.Event, top: list[int]) -> None:
    while not stop.is_set():
        top[0] = max(top[0], _rss())
        time.sleep(0.001)


def measure(fn: Callable[[], Any], repeat: int = 1) -> tuple[Any, float, float]:
    """Run ``fn`` ``repeat`` times; return (last result, best seconds, peak extra MiB).

    Peak memory: on CUDA, ``torch.cuda.max_memory_allocated``; on CPU, the resident set size
    sampled every millisecond by a thread, minus its value before the call.
    """
    best, peak, out = float("inf"), 0.0, None
    cuda = torch.cuda.is_available()
    for _ in range(repeat):
        gc.collect()
        if _LIBC is not None:
            _LIBC.malloc_trim(0)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        base_rss = _rss()
        top = [base_rss]
        stop = threading.Event()

        th = threading.Thread(target=_sample_rss, args=(stop, top), daemon=True)
        th.start()
        t0 = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        stop.set()
        th.join()
        top[0] = max(top[0], _rss())
        best = min(best, dt)
        mem = (torch.cuda.max_memory_allocated() - base) if cuda else (top[0] - base_rss)
        peak = max(peak, mem / 2**20)
    return out, best, peak


def markdown_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """Rows of dicts -> a Markdown table with the given columns."""
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        return str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
