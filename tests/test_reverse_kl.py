"""Reverse-KL (Burg) marginal penalty: prox against Lambert W, closed-form Diracs, brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from scipy.special import lambertw

import torchuot
from torchuot.penalties import KL, ReverseKL, make_penalty

DT = torch.float64


@pytest.mark.parametrize("rho,eps", [(1.0, 0.1), (0.01, 1.0), (10.0, 0.2), (2.0, 2.0), (1.0, 1e-2)])
def test_aprox_matches_lambert_w_closed_form(rho, eps):
    # rho + f = eps W((rho/eps) exp((rho + s)/eps)) solves exp((f - s)/eps) = rho / (rho + f).
    s = torch.tensor([-3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.3, 1.0, 2.0, 3.0], dtype=DT) * min(rho, 1.0)
    f = ReverseKL(rho).aprox(s, eps)
    ref = eps * lambertw((rho / eps) * np.exp((rho + s.numpy()) / eps)).real - rho
    np.testing.assert_allclose(f.numpy(), ref, rtol=1e-10, atol=1e-12 * rho)
    # The optimality condition itself (where rho + f is representable: for s << -rho the root
    # is rho + f = rho exp(-|s|/eps), below f's resolution, and f rounds to -rho).
    ok = f > -rho
    resid = (f - s) / eps + torch.log1p(f / rho)
    assert int(ok.sum()) >= 8 and float(resid[ok].abs().max()) < 1e-9


def test_aprox_extreme_inputs_finite_and_monotone():
    pen = ReverseKL(0.5)
    s = torch.linspace(-1e3, 1e4, 2001, dtype=DT)
    f = pen.aprox(s, 1e-3)
    assert bool(torch.isfinite(f).all())
    assert bool((f > -0.5 - 1e-12).all())
    assert bool((torch.diff(f) >= 0).all())  # the prox is monotone in s
    inf = pen.aprox(torch.tensor([math.inf, -math.inf], dtype=DT), 0.1)
    assert inf[0] == math.inf and inf[1] == -0.5


def test_aprox_gradient_is_implicit_derivative():
    pen = ReverseKL(0.7)
    s = torch.tensor([-0.5, 0.1, 2.0], dtype=DT, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: pen.aprox(t, 0.3), (s,))


def test_dual_and_primal_terms():
    pen = ReverseKL(2.0)
    f = torch.tensor([-1.0, 0.0, 3.0], dtype=DT)
    torch.testing.assert_close(pen.dual(f), 2.0 * torch.log1p(f / 2.0))
    # Outside the conjugate's domain f > -rho the dual term is -inf, never NaN.
    assert pen.dual(torch.tensor([-2.0, -5.0], dtype=DT)).tolist() == [-math.inf, -math.inf]
    m = torch.tensor([0.5, 1.0, 2.0], dtype=DT)
    a = torch.tensor([1.0, 1.0, 1.0], dtype=DT)
    r = m / a
    torch.testing.assert_close(pen.primal(m, a), 2.0 * (a * (r - 1 - torch.log(r))).sum())
    # Deleting a prescribed mode is forbidden; mass where a = 0 costs rho per unit.
    assert pen.primal(torch.tensor([0.0, 1.0], dtype=DT), torch.tensor([1.0, 1.0], dtype=DT)) == math.inf
    torch.testing.assert_close(pen.primal(torch.tensor([0.3], dtype=DT), torch.tensor([0.0], dtype=DT)),
                               torch.tensor(0.6, dtype=DT))


def test_names_and_errors():
    assert isinstance(make_penalty("reverse_kl", 1.0), ReverseKL)
    assert isinstance(make_penalty("burg", 1.0), ReverseKL)
    assert make_penalty("burg", 3.0) == ReverseKL(3.0)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="rho"):
            ReverseKL(bad)


def _dirac_problem(al, be, eps, rho, pi_star):
    # Stationarity of pi c + eps KL(pi|al be) + rho KL(al|pi) + rho KL(be|pi) in pi:
    # c + eps log(pi/(al be)) + rho (1 - al/pi) + rho (1 - be/pi) = 0; choose c so pi* solves it.
    c = -eps * math.log(pi_star / (al * be)) - rho * (2 - (al + be) / pi_star)
    value = (pi_star * c + eps * (pi_star * math.log(pi_star / (al * be)) - pi_star + al * be)
             + rho * (pi_star - al - al * math.log(pi_star / al))
             + rho * (pi_star - be - be * math.log(pi_star / be)))
    return c, value


@pytest.mark.parametrize("al,be,eps,rho,pi_star", [(1.0, 2.0, 0.1, 0.5, 0.7), (0.3, 0.3, 0.05, 2.0, 0.2),
                                                   (1.0, 1.0, 0.5, 0.1, 0.6)])
def test_single_diracs_closed_form(al, be, eps, rho, pi_star):
    c, value = _dirac_problem(al, be, eps, rho, pi_star)
    assert c > 0
    x = torch.zeros(1, 1, dtype=DT)
    y = torch.tensor([[math.sqrt(2 * c)]], dtype=DT)  # library cost |x - y|^2 / 2 = c
    res = torchuot.sinkhorn(x, y, torch.tensor([al], dtype=DT), torch.tensor([be], dtype=DT),
                            eps=eps, rho=rho, penalty="reverse_kl", tol=1e-12)
    assert res.converged
    torch.testing.assert_close(res.plan(), torch.tensor([[pi_star]], dtype=DT), rtol=1e-9, atol=0)
    torch.testing.assert_close(res.value, torch.tensor(value, dtype=DT), rtol=1e-9, atol=0)
    torch.testing.assert_close(res.primal, res.value.detach(), rtol=1e-9, atol=0)


def _bruteforce_primal(C, a, b, eps, rho):
    """min over log pi of the Burg-penalised entropic primal (scipy L-BFGS-B, float64)."""
    N, M = C.shape

    def obj(z):
        P = np.exp(z.reshape(N, M))
        r, c = P.sum(1), P.sum(0)
        logr = z.reshape(N, M) - np.log(np.outer(a, b))
        val = (P * C).sum() + eps * (P * logr - P).sum() + eps * a.sum() * b.sum()
        val += rho * (r - a - a * np.log(r / a)).sum() + rho * (c - b - b * np.log(c / b)).sum()
        G = C + eps * logr + rho * (1 - a / r)[:, None] + rho * (1 - b / c)[None, :]
        return val, (G * P).ravel()

    z0 = np.log(np.outer(a, b)).ravel()
    opts = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 10000}
    out = minimize(obj, z0, jac=True, method="L-BFGS-B", options=opts)
    return out.fun, np.exp(out.x.reshape(N, M))


def test_solver_matches_bruteforce_and_primal_equals_dual(gen):
    x = torch.rand(3, 2, generator=gen, dtype=DT)
    y = torch.rand(4, 2, generator=gen, dtype=DT) + 0.3
    a = torch.tensor([0.2, 0.5, 0.3], dtype=DT)
    b = torch.tensor([0.1, 0.4, 0.6, 0.2], dtype=DT)
    eps, rho = 0.05, 0.3
    res = torchuot.sinkhorn(x, y, a, b, eps=eps, rho=rho, penalty="reverse_kl", tol=1e-12)
    assert res.converged and isinstance(res.penalty_a, ReverseKL)
    torch.testing.assert_close(res.primal, res.value.detach(), rtol=1e-9, atol=1e-12)
    C = (0.5 * torch.cdist(x, y) ** 2).numpy()
    ref_val, ref_plan = _bruteforce_primal(C, a.numpy(), b.numpy(), eps, rho)
    assert abs(float(res.value) - ref_val) <= 1e-7 * abs(ref_val)
    np.testing.assert_allclose(res.plan().numpy(), ref_plan, rtol=1e-4, atol=1e-8)


def test_envelope_gradient_gradcheck(gen):
    x = torch.rand(3, 2, generator=gen, dtype=DT, requires_grad=True)
    y = torch.rand(2, 2, generator=gen, dtype=DT)

    def fn(xx):
        return torchuot.sinkhorn(xx, y, eps=0.1, rho=0.5, penalty="reverse_kl", tol=1e-13).value

    assert torch.autograd.gradcheck(fn, (x,), atol=1e-6)


def test_burg_keeps_small_mode_alive_where_kl_deletes_it():
    # A small source mode far from every target: KL almost deletes it, Burg cannot
    # (its marginal ratio is rho / (rho + f) > 0 and the deletion cost is unbounded).
    x = torch.tensor([[0.0], [0.1], [3.0]], dtype=DT)
    a = torch.tensor([0.45, 0.45, 0.1], dtype=DT)
    y = torch.tensor([[0.05], [0.15]], dtype=DT)
    kw = dict(eps=0.01, rho=0.2, tol=1e-10)
    kl = torchuot.sinkhorn(x, y, a, None, penalty="kl", **kw)
    burg = torchuot.sinkhorn(x, y, a, None, penalty="reverse_kl", **kw)
    ratio_kl = float(kl.marginal(1)[2] / a[2])
    ratio_burg = float(burg.marginal(1)[2] / a[2])
    assert ratio_kl < 1e-6  # exp(-f/rho) with f ~ C = 4.5 >> rho
    assert ratio_burg > 0.04  # rho / (rho + f) ~ 0.2 / 4.5
    assert isinstance(KL(0.2), KL)
