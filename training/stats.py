"""Paired significance tests for the studies: the Wilcoxon signed-rank test and Holm's correction.

NumPy only (SciPy is not a dependency); checked against ``scipy.stats.wilcoxon`` in the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["wilcoxon_signed_rank", "holm"]


def _ranks(v: np.ndarray) -> np.ndarray:
    """Average ranks (1-based) of ``v``; tied values share the mean of their ranks."""
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v), dtype=float)
    sv = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def wilcoxon_signed_rank(d: Sequence[float] | np.ndarray, *, method: str = "auto") -> tuple[float, float]:
    """Two-sided Wilcoxon signed-rank test of paired differences ``d: (n,)`` against zero.

    Zero differences are dropped (Wilcoxon's convention, SciPy's ``zero_method="wilcox"``). The
    p-value is exact (the null distribution of the positive-rank sum, by counting subsets) for
    ``method="exact"``, or from the normal approximation with the tie correction and no
    continuity correction for ``"approx"``; ``"auto"``: exact when at most 50 non-zero
    differences remain and their absolute values have no ties, else approximate (as SciPy).

    Returns:
        ``(statistic, p)``: ``statistic = min(R+, R-)`` (SciPy's two-sided statistic) and the
        two-sided p-value; ``(nan, 1.0)`` when every difference is zero.
    """
    d = np.asarray(d, dtype=float)
    if d.ndim != 1:
        raise ValueError(f"d must be a 1-D sequence of paired differences, got shape {d.shape}.")
    if not np.isfinite(d).all():
        raise ValueError("d contains NaN or inf differences.")
    if method not in ("auto", "exact", "approx"):
        raise ValueError(f"method must be 'auto', 'exact' or 'approx', got {method!r}.")
    d = d[d != 0]
    n = len(d)
    if n == 0:
        return math.nan, 1.0
    r = _ranks(np.abs(d))
    r_plus = float(r[d > 0].sum())
    r_minus = n * (n + 1) / 2 - r_plus
    stat = min(r_plus, r_minus)
    ties = len(np.unique(np.abs(d))) < n
    if method == "auto":
        method = "exact" if n <= 50 and not ties else "approx"
    if method == "exact":
        # counts[s] = number of sign patterns whose positive ranks 1..n sum to s
        counts = np.zeros(n * (n + 1) // 2 + 1)
        counts[0] = 1.0
        for k in range(1, n + 1):
            counts[k:] = counts[k:] + counts[:-k].copy()
        cdf = counts.cumsum() / 2.0 ** n
        t = int(round(stat))
        p = 2 * cdf[t]  # P(T <= min) doubled; T+ is symmetric about n(n+1)/4
        return stat, float(min(1.0, p))
    _, t_counts = np.unique(np.abs(d), return_counts=True)
    var = n * (n + 1) * (2 * n + 1) / 24 - float((t_counts ** 3 - t_counts).sum()) / 48
    z = (r_plus - n * (n + 1) / 4) / math.sqrt(var) if var > 0 else 0.0
    return stat, float(min(1.0, math.erfc(abs(z) / math.sqrt(2))))


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values ``(m,)`` for a family of ``m`` tests (same order).

    ``p_adj[(k)] = max_{j <= k} min(1, (m - j + 1) p[(j)])`` over the ascending order; reject
    at level ``alpha`` where ``p_adj <= alpha`` (controls the family-wise error rate).
    """
    p = np.asarray(p, dtype=float)
    if p.ndim != 1 or ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
        raise ValueError("p must be a 1-D sequence of p-values in [0, 1].")
    m = len(p)
    order = np.argsort(p, kind="mergesort")
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adj = np.maximum.accumulate(adj)
    out = np.empty(m)
    out[order] = adj
    return out
