"""pairwise_distances reports non-convergence through the options' policy, as every solver function,
and its checkpoint key covers every option that changes the values."""

from __future__ import annotations

import warnings

import pytest
import torch

import torchuot
from torchuot.images import pairwise_distances
from torchuot.result import ConvergenceError, ConvergenceWarning


def _disks(n: int = 4, size: int = 10) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float64)
    out = []
    for k in range(n):
        c = 2.5 + 1.5 * k
        out.append((((r[:, None] - c) ** 2 + (r[None, :] - 4.0) ** 2) <= 4.0).double() * (1 + 0.3 * k))
    return torch.stack(out)


KW = dict(metric="hk", kappa=2.0, blur=0.5, dtype=torch.float64, block_size=2)


def test_unconverged_blocks_warn_once_with_a_count():
    imgs = _disks()
    with pytest.warns(ConvergenceWarning, match=r"pairwise_distances: \d+ of \d+ blocks") as rec:
        pairwise_distances(imgs, max_iter=3, tol=1e-10, **KW)
    assert sum(issubclass(w.category, ConvergenceWarning) for w in rec) == 1


def test_raise_and_ignore():
    imgs = _disks()
    with pytest.raises(ConvergenceError, match="pairwise_distances"):
        pairwise_distances(imgs, max_iter=3, tol=1e-10, on_nonconvergence="raise", **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        D = pairwise_distances(imgs, max_iter=3, tol=1e-10, on_nonconvergence="ignore", **KW)
    assert D.shape == (4, 4)
    with warnings.catch_warnings():  # converged runs say nothing under "warn"
        warnings.simplefilter("error")
        pairwise_distances(imgs, tol=1e-8, **KW)


def test_policy_through_options_and_bad_values():
    imgs = _disks(3)
    opts = torchuot.SinkhornOptions(max_iter=3, tol=1e-10, on_nonconvergence="raise")
    with pytest.raises(ConvergenceError):
        pairwise_distances(imgs, options=opts, **KW)
    with pytest.raises(ValueError, match="on_nonconvergence=.*conflicts with options"):
        pairwise_distances(imgs, options=opts, on_nonconvergence="ignore", **KW)
    with pytest.raises(ValueError, match="on_nonconvergence must be one of"):
        pairwise_distances(imgs, on_nonconvergence="silent", **KW)


def test_checkpoint_key_covers_momentum_and_check_every(tmp_path):
    imgs = _disks(3)
    ck = tmp_path / "D.pt"
    pairwise_distances(imgs, checkpoint=ck, **KW)
    for opts in (torchuot.SinkhornOptions(tol=1e-4, momentum=False),
                 torchuot.SinkhornOptions(tol=1e-4, check_every=8)):
        with pytest.raises(ValueError, match="checkpoint"):
            pairwise_distances(imgs, checkpoint=ck, options=opts, **KW)
    pairwise_distances(imgs, checkpoint=ck, options=torchuot.SinkhornOptions(tol=1e-4), **KW)
