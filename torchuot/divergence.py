"""Debiased unbalanced Sinkhorn divergences and Hellinger-Kantorovich distances.

``S_eps(a, b) = OT_eps(a, b) - OT_eps(a, a)/2 - OT_eps(b, b)/2 + eps (m(a) - m(b))^2 / 2``

(Sejourne, Feydy, Vialard, Trouve, Peyre 2019, Def. 6 / Eq. 15), with ``OT_eps`` the entropic
UOT value of :func:`torchuot.sinkhorn` (dual = primal with ``eps KL(pi | a x b)``). It is
non-negative for KL penalties (and balanced ones), zero iff ``a = b``, and equals GeomLoss's
``SamplesLoss("sinkhorn", debias=True)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from ._typing import Tensor
from ._validation import check_positive
from .costs import CostLike, HKConeCost
from .penalties import PenaltyLike
from .problem import SinkhornOptions, UOTProblem
from .sinkhorn import check_convergence, dual_value, solve_potentials

__all__ = ["sinkhorn_divergence", "hk_distance", "hk_setup", "debiased_value", "HK_RHO"]

#: KL strength of the HK distance's marginal penalties: HK is the UOT problem with the cone cost
#: and KL(1) on both sides (Liero, Mielke, Savare 2018, Thm. 7.20).
HK_RHO = 1.0


def hk_setup(kappa: float, blur: float) -> tuple[HKConeCost, float, float]:
    """HK's conventions, stated once: ``(cost, eps, rho)`` for length scale ``kappa`` and ``blur``.

    ``eps = (blur / kappa)**2`` since the cone cost is ``~ |x-y|^2 / kappa^2`` at short range;
    ``rho`` is :data:`HK_RHO`. Shared by :func:`hk_distance` and
    :func:`torchuot.images.pairwise_distances`.
    """
    cost = HKConeCost(check_positive(kappa, "kappa"))  # type: ignore[arg-type]
    blur = check_positive(blur, "blur")  # type: ignore[assignment]
    return cost, (blur / cost.kappa) ** 2, HK_RHO


def debiased_value(ot_ab: Tensor, ot_aa: Tensor, ot_bb: Tensor, eps: float, mass_a: Tensor,
                   mass_b: Tensor) -> Tensor:
    """``S_eps = OT(a, b) - (OT(a, a) + OT(b, b)) / 2 + eps (m(a) - m(b))^2 / 2``, all ``(B,)``.

    The debiasing of the module docstring, written once (the pairwise image code uses it too).
    """
    return ot_ab - 0.5 * (ot_aa + ot_bb) + 0.5 * eps * (mass_a - mass_b) ** 2


def sinkhorn_divergence(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    cost: CostLike = None,
    p: float = 2.0,
    blur: float | None = None,
    eps: float | None = None,
    reach: object = None,
    rho: object = None,
    reg_m: object = None,
    tau_a: float | None = None,
    tau_b: float | None = None,
    penalty: PenaltyLike | Sequence[PenaltyLike] = "kl",
    scaling: float = 0.5,
    diameter: float | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    grad: str = "envelope",
    backend: str = "auto",
    momentum: bool = True,
    on_nonconvergence: str = "warn",
    options: SinkhornOptions | None = None,
    potentials: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Debiased (unbalanced) Sinkhorn divergence ``S_eps(a, b)``.

    Arguments and conventions as :func:`torchuot.sinkhorn` (``options`` included). The self terms
    ``OT(a, a)`` and ``OT(b, b)`` use the source's and the target's penalty on both sides
    respectively (:meth:`UOTProblem.self_problem`), and the schedule of the cross problem.
    ``on_nonconvergence`` applies to each of the three solves.

    Args:
        potentials: return the debiased potentials ``(f_ab - f_aa, g_ab - g_bb)`` instead of the
            value (GeomLoss's ``potentials=True``), from the same three solves: ``(N,)``, ``(M,)``
            (batched ``(B, N)``, ``(B, M)``); detached unless ``grad`` is ``"implicit"`` or
            ``"unroll"``.

    Returns:
        ``(B,)`` values, or a scalar for unbatched inputs. Differentiable.
    """
    opts = SinkhornOptions.merge(options, scaling=scaling, max_iter=max_iter, tol=tol, grad=grad,
                                 momentum=momentum, on_nonconvergence=on_nonconvergence)
    prob = UOTProblem.from_points(
        x, y, a, b, cost=cost, p=p, blur=blur, eps=eps, reach=reach, rho=rho, reg_m=reg_m,
        tau_a=tau_a, tau_b=tau_b, penalty=penalty, diameter=diameter, backend=backend,
    )
    # One schedule for the three problems, from the joint diameter (as GeomLoss).
    prob_aa, prob_bb = prob.self_problem("a"), prob.self_problem("b")
    # A value only: its implicit gradient is the envelope one (no linear solve needed).
    if opts.grad == "implicit" and not potentials:
        opts = dataclasses.replace(opts, grad="envelope")
    s_xy, s_xx, s_yy = (solve_potentials(q, opts) for q in (prob, prob_aa, prob_bb))
    check_convergence(opts.on_nonconvergence, [s_xy, s_xx, s_yy], "sinkhorn_divergence")
    if potentials:
        F, G = s_xy.f - s_xx.f, s_xy.g - s_yy.f
        return (F, G) if prob.batched else (F[0], G[0])
    ot_ab = dual_value(prob.ops, prob.penalty_a, prob.penalty_b, prob.eps, s_xy.f, s_xy.g)
    ot_aa = dual_value(prob_aa.ops, prob_aa.penalty_a, prob_aa.penalty_a, prob.eps, s_xx.f, s_xx.f)
    ot_bb = dual_value(prob_bb.ops, prob_bb.penalty_b, prob_bb.penalty_b, prob.eps, s_yy.f, s_yy.f)
    out = debiased_value(ot_ab, ot_aa, ot_bb, prob.eps, prob.a.sum(-1), prob.b.sum(-1))
    return out if prob.batched else out[0]


def hk_distance(
    x: Tensor,
    y: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    kappa: float = 1.0,
    blur: float | None = None,
    eps: float | None = None,
    debias: bool = True,
    squared: bool = True,
    scaling: float = 0.5,
    diameter: float | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    grad: str = "envelope",
    backend: str = "auto",
    momentum: bool = True,
    on_nonconvergence: str = "warn",
    options: SinkhornOptions | None = None,
) -> Tensor:
    """Entropic Hellinger-Kantorovich distance (squared by default).

    The UOT problem with the cone cost ``-2 log cos(min(|x-y|/kappa, pi/2))`` and KL marginal
    penalties of strength 1 on both sides; for Diracs ``m1 delta_x``, ``m2 delta_y`` its
    unregularised value is ``m1 + m2 - 2 sqrt(m1 m2) cos(min(|x-y|/kappa, pi/2))``.

    Args:
        kappa: HK length scale (mass travels at most ``kappa * pi / 2``).
        blur: length scale of the entropic blur; ``eps = (blur / kappa)**2`` (the cost is
            ``~ |x-y|^2 / kappa^2`` at short range). Or give ``eps`` directly.
            Default ``blur = 0.05 * kappa``.
        debias: return the debiased divergence (zero on identical inputs) rather than ``OT_eps``.
        squared: return ``HK^2`` (default) or ``HK = sqrt(max(HK^2, 0))``.
        scaling, diameter, max_iter, tol, grad, backend, momentum, on_nonconvergence, options: as
            in :func:`torchuot.sinkhorn`.
    """
    if blur is not None and eps is not None:
        raise ValueError("give either blur or eps, not both.")
    kappa = check_positive(kappa, "kappa")  # type: ignore[assignment]
    cost, eps_blur, rho = hk_setup(kappa, 0.05 * kappa if blur is None else blur)
    eps = eps_blur if eps is None else eps
    kw = dict(cost=cost, eps=eps, rho=rho, penalty="kl", scaling=scaling, diameter=diameter,
              max_iter=max_iter, tol=tol, grad=grad, backend=backend, momentum=momentum,
              on_nonconvergence=on_nonconvergence, options=options)
    if debias:
        val = sinkhorn_divergence(x, y, a, b, **kw)  # type: ignore[arg-type,assignment]
    else:
        from .sinkhorn import sinkhorn

        val = sinkhorn(x, y, a, b, **kw).value  # type: ignore[arg-type]
    if squared:
        return val
    return torch.sqrt(val.clamp_min(torch.finfo(val.dtype).tiny))

