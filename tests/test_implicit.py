"""``grad="implicit"``: potentials differentiable by the implicit function theorem, so that losses
built on the plan get exact gradients (gradcheck), equal to unrolling at convergence."""

from __future__ import annotations

import warnings

import pytest
import torch

import torchuot as tu

TIGHT = dict(tol=1e-13, max_iter=100_000)


def setup(n=6, m=7, seed=0, balanced=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    y = torch.rand(m, 2, generator=g, dtype=torch.float64)
    a = torch.rand(n, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(m, generator=g, dtype=torch.float64) + 0.2
    if balanced:
        a, b = a / a.sum(), b / b.sum()
    W = torch.randn(n, m, generator=g, dtype=torch.float64)
    return x, y, a, b, W


@pytest.mark.parametrize(
    "kw",
    [dict(reach=0.5), dict(reach=(0.5, None)), dict(), dict(reach=0.5, penalty="tv")],
    ids=["kl-kl", "kl-balanced", "balanced", "tv"],
)
def test_gradcheck_of_a_plan_loss(kw):
    balanced = kw == {} or kw.get("reach") == (0.5, None)
    x, y, a, b, W = setup(balanced=balanced)
    x.requires_grad_(True)
    # Balanced sides need equal masses: the weights are then held fixed (perturbing them breaks it).
    inputs = (x,) if balanced else (x, a.requires_grad_(True))

    def loss(x, a_=a):
        res = tu.sinkhorn(x, y, a_, b, blur=0.3, grad="implicit", **kw, **TIGHT)
        return (res.plan() * W).sum()

    assert torch.autograd.gradcheck(loss, inputs, atol=1e-7, rtol=1e-5)


def test_envelope_plan_gradient_is_not_the_full_one_and_implicit_equals_unroll():
    x, y, a, b, W = setup()
    x.requires_grad_(True)

    def grad_of(mode):
        res = tu.sinkhorn(x, y, a, b, blur=0.3, reach=0.5, grad=mode, **TIGHT)
        return torch.autograd.grad((res.plan() * W).sum(), x)[0]

    g_imp, g_unroll, g_env = grad_of("implicit"), grad_of("unroll"), grad_of("envelope")
    assert torch.allclose(g_imp, g_unroll, rtol=1e-9, atol=1e-12)
    # The default holds the potentials fixed: right for the value, wrong for the plan.
    assert not torch.allclose(g_env, g_imp, rtol=1e-2, atol=1e-3)


def test_values_and_value_gradients_do_not_depend_on_the_mode():
    x, y, a, b, _ = setup(n=9, m=8)
    x.requires_grad_(True)
    out = {}
    for mode in ("envelope", "implicit"):
        res = tu.sinkhorn(x, y, a, b, blur=0.2, reach=0.7, grad=mode, **TIGHT)
        out[mode] = (res.value, torch.autograd.grad(res.value, x)[0], res.f, res.g)
    for u, v in zip(out["envelope"], out["implicit"], strict=True):
        assert torch.allclose(u.detach(), v.detach(), rtol=1e-12, atol=1e-14)
    d_imp = tu.sinkhorn_divergence(x, y, a, b, blur=0.2, reach=0.7, grad="implicit").detach()
    d_env = tu.sinkhorn_divergence(x, y, a, b, blur=0.2, reach=0.7).detach()
    assert d_imp.item() == d_env.item()


def test_backends_agree_on_implicit_potential_gradients():
    g = torch.Generator().manual_seed(3)
    x = torch.rand(30, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(40, 3, generator=g, dtype=torch.float64)
    grads = {}
    for backend in ("tensorized", "chunked", "online"):
        res = tu.sinkhorn(x, y, blur=0.1, reach=0.5, grad="implicit", backend=backend, tol=1e-12,
                          max_iter=10_000)
        loss = (res.f**2).sum() + (res.g**3).sum()
        grads[backend] = torch.autograd.grad(loss, x)[0]
    for backend in ("chunked", "online"):
        assert torch.allclose(grads[backend], grads["tensorized"], rtol=1e-9, atol=1e-13)


def test_batched_and_cost_matrix():
    g = torch.Generator().manual_seed(4)
    C = torch.rand(2, 5, 6, generator=g, dtype=torch.float64, requires_grad=True)

    def loss(C):
        res = tu.sinkhorn_from_cost(C, eps=0.1, rho=0.5, grad="implicit", **TIGHT)
        return (res.plan() ** 2).sum()

    assert torch.autograd.gradcheck(loss, (C,), atol=1e-8, rtol=1e-5)


def test_adjoint_solve_is_exact_on_a_nonsymmetric_system_and_warns_when_cut_short():
    """The backward pass solves ``(I - J^T) lam = v`` with BiCGSTAB. With unequal sizes and
    penalties ``J`` is not symmetric; solved to ``tol`` the gradient is the unrolled one. A warm
    start at converged potentials with ``max_iter=1`` leaves the forward converged but cuts the
    adjoint solve short: that must warn, and a full budget from the same start must not."""
    g = torch.Generator().manual_seed(0)
    C = torch.rand(7, 9, generator=g, dtype=torch.float64, requires_grad=True)
    a = torch.rand(7, generator=g, dtype=torch.float64) + 0.2
    b = torch.rand(9, generator=g, dtype=torch.float64) + 0.2
    W = torch.randn(7, 9, generator=g, dtype=torch.float64)

    def plan_grad(mode, rho, **kw):
        res = tu.sinkhorn_from_cost(C, a, b, eps=0.1, rho=rho, grad=mode, tol=1e-13, **kw)
        return torch.autograd.grad((res.plan() * W).sum(), C)[0], res

    g_imp, _ = plan_grad("implicit", (0.5, 2.0), max_iter=100_000)
    g_unroll, _ = plan_grad("unroll", (0.5, 2.0), max_iter=100_000)
    assert torch.allclose(g_imp, g_unroll, rtol=1e-9, atol=1e-12)

    g_full, ref = plan_grad("implicit", 10.0, max_iter=100_000)
    warm = dict(f_init=ref.f.detach(), g_init=ref.g.detach(), on_nonconvergence="ignore")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        g_short, res = plan_grad("implicit", 10.0, max_iter=1, **warm)
    assert res.converged and res.n_iters == 1
    assert any("adjoint linear solve" in str(w.message) for w in caught)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g_warm, _ = plan_grad("implicit", 10.0, max_iter=100_000, **warm)
    assert torch.allclose(g_warm, g_full, rtol=1e-9, atol=1e-12)
