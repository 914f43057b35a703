"""training.stats: the Wilcoxon signed-rank helper against SciPy, Holm's correction."""

from __future__ import annotations

import numpy as np
import pytest

from training.stats import holm, wilcoxon_signed_rank

stats = pytest.importorskip("scipy.stats")


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("n", [5, 10, 23])
def test_exact_matches_scipy(seed, n):
    d = np.random.default_rng(seed).normal(0.3, 1.0, n)
    ours = wilcoxon_signed_rank(d, method="exact")
    ref = stats.wilcoxon(d, method="exact")
    assert ours[0] == pytest.approx(ref.statistic)
    assert ours[1] == pytest.approx(ref.pvalue, rel=1e-10)
    assert wilcoxon_signed_rank(d) == ours  # auto: exact without ties


@pytest.mark.parametrize("seed", range(4))
def test_approx_with_ties_and_zeros_matches_scipy(seed):
    d = np.random.default_rng(seed).integers(-3, 5, 30).astype(float)  # ties and zeros
    ours = wilcoxon_signed_rank(d)
    ref = stats.wilcoxon(d, method="approx", zero_method="wilcox", correction=False)
    assert ours[0] == pytest.approx(ref.statistic)
    assert ours[1] == pytest.approx(ref.pvalue, rel=1e-10)


def test_ten_seeds_all_one_way_gives_the_smallest_exact_p():
    s, p = wilcoxon_signed_rank(np.arange(1, 11) * 0.01)
    assert s == 0 and p == pytest.approx(2 / 2 ** 10)
    assert wilcoxon_signed_rank(np.zeros(10)) [1] == 1.0


def test_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        wilcoxon_signed_rank([0.1, np.nan])
    with pytest.raises(ValueError, match="1-D"):
        wilcoxon_signed_rank(np.ones((2, 2)))
    with pytest.raises(ValueError, match="method"):
        wilcoxon_signed_rank([1.0], method="x")
    with pytest.raises(ValueError, match="p-values"):
        holm([0.5, 1.5])


def test_holm_against_hand_computation():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    assert holm([]).shape == (0,)
