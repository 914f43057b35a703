"""TorchCFM as a reference: our flow-matching pieces against the real ``torchcfm`` package.

Same inputs, both libraries, one process. TorchCFM's plan sampler uses the cost ``|x - y|^2``
divided by its maximum (``normalize_cost=True``); ours is ``|x - y|^2 / 2`` divided by its
maximum (``normalize_cost="max"``), the same matrix, so the plans must agree:
- ``"exact"``: POT's network simplex on both sides (a permutation for generic points);
- ``"sinkhorn"`` (POT's ``ot.sinkhorn``, ``reg``) against our ``"ot"`` with ``eps = reg``;
- ``"unbalanced"`` (POT's ``sinkhorn_knopp_unbalanced``, KL penalty ``reg_m`` and entropy
  relative to ``a x b``) against our ``"uot"`` with OTT's ``tau = reg_m / (reg_m + reg)``.
TorchCFM returns the plan with its mass, ours divided by its mass: compared after normalising.
"""

from __future__ import annotations

import pytest
import torch

torchcfm = pytest.importorskip("torchcfm")
from torchcfm.conditional_flow_matching import (  # noqa: E402
    ConditionalFlowMatcher as RefCFM,
)
from torchcfm.optimal_transport import OTPlanSampler  # noqa: E402

from torchuot.couplings import PlanSampler  # noqa: E402
from torchuot.flow import ConditionalFlowMatcher  # noqa: E402


def _batches(n: int = 24, m: int = 20, d: int = 3, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn(n, d, generator=g, dtype=torch.float64)
    x1 = torch.randn(m, d, generator=g, dtype=torch.float64) * 0.7 + 1.5
    return x0, x1


def _ref_plan(sampler: OTPlanSampler, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    P = torch.as_tensor(sampler.get_map(x0, x1), dtype=torch.float64)
    return P / P.sum()


def test_exact_plan_matches_torchcfm() -> None:
    x0, x1 = _batches(16, 16)
    ref = _ref_plan(OTPlanSampler("exact"), x0, x1)
    ours = PlanSampler("exact", normalize_cost="max").plan(x0, x1)
    torch.testing.assert_close(ours, ref, atol=1e-12, rtol=0)
    # A permutation: every row has one entry 1/n.
    assert int((ours > 0).sum()) == 16


@pytest.mark.parametrize("reg", [0.05, 0.2])
def test_sinkhorn_plan_matches_torchcfm(reg: float) -> None:
    x0, x1 = _batches()
    ref = _ref_plan(OTPlanSampler("sinkhorn", reg=reg, normalize_cost=True), x0, x1)
    ours = PlanSampler("ot", eps=reg, normalize_cost="max", tol=1e-10, max_iter=20_000).plan(x0, x1)
    # POT stops at its marginal threshold 1e-9: the plans agree to that order.
    torch.testing.assert_close(ours, ref, atol=1e-8, rtol=0)


@pytest.mark.parametrize(("reg", "reg_m"), [(0.05, 1.0), (0.1, 0.3)])
def test_unbalanced_plan_matches_torchcfm(reg: float, reg_m: float) -> None:
    x0, x1 = _batches()
    ref_sampler = OTPlanSampler("unbalanced", reg=reg, reg_m=reg_m, normalize_cost=True)
    # POT's unbalanced Sinkhorn stops at 1e-6 after at most 1000 iterations by default: run it
    # to convergence so that the comparison measures the solvers, not POT's stopping rule.
    ref_sampler.ot_fn.keywords.update(numItermax=100_000, stopThr=1e-14)
    ref = _ref_plan(ref_sampler, x0, x1)
    tau = reg_m / (reg_m + reg)
    ours = PlanSampler(
        "uot", eps=reg, tau_a=tau, tau_b=tau, normalize_cost="max", tol=1e-12, max_iter=50_000
    ).plan(x0, x1)
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=1e-7)


def test_exact_pairs_lie_on_torchcfm_permutation() -> None:
    """Both samplers draw pairs from the same permutation plan: every drawn pair is on it."""
    x0, x1 = _batches(32, 32, seed=3)
    perm = _ref_plan(OTPlanSampler("exact"), x0, x1).argmax(1)
    s = PlanSampler("exact").sample(x0, x1, generator=torch.Generator().manual_seed(0))
    assert torch.equal(perm[s.i], s.j)
    ref_x0, ref_x1 = OTPlanSampler("exact").sample_plan(x0, x1)
    i = torch.cdist(ref_x0, x0).argmin(1)
    j = torch.cdist(ref_x1, x1).argmin(1)
    assert torch.equal(perm[i], j)


@pytest.mark.parametrize("sigma", [0.0, 0.3])
def test_interpolant_and_target_velocity_match_torchcfm(sigma: float) -> None:
    """I-CFM: ``x_t = (1 - t) x0 + t x1 + sigma z`` and ``u_t = x1 - x0`` on both sides."""
    x0, x1 = _batches(12, 12)
    x0, x1 = x0.reshape(12, 3, 1), x1.reshape(12, 3, 1)  # image-like trailing dims
    t = torch.linspace(0.0, 1.0, 12, dtype=torch.float64)
    ref = RefCFM(sigma=sigma)
    t_r, xt_r, ut_r, z_r = ref.sample_location_and_conditional_flow(x0, x1, t=t, return_noise=True)
    t_o, xt_o, ut_o, z_o = ConditionalFlowMatcher(sigma=sigma).sample_location_and_conditional_flow(
        x0, x1, t=t, return_noise=True, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(t_o, t_r)
    torch.testing.assert_close(ut_o, ut_r, atol=1e-15, rtol=0)
    # The noise draws differ (different RNG streams); the means of the paths coincide.
    torch.testing.assert_close(xt_o - sigma * z_o, xt_r - sigma * z_r, atol=1e-14, rtol=0)
    torch.testing.assert_close(xt_o - sigma * z_o, ref.compute_mu_t(x0, x1, t), atol=1e-14, rtol=0)
