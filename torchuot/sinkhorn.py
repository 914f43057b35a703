"""THE unbalanced Sinkhorn loop (there is one), its epsilon schedule and stopping rule.

Parameter conventions -- one mapping, used by every function of the library:

===================  ==========================  ===========================================
GeomLoss             OTT-JAX                     POT
===================  ==========================  ===========================================
``blur``             ``eps = blur**p``           ``reg = eps``
``reach``            ``tau = rho / (rho + eps)``  ``reg_m = rho = reach**p``
``scaling``          (eps-scaling ratio per stage: ``eps_{k+1} = eps_k * scaling**p``)
===================  ==========================  ===========================================

with ``p`` the cost's exponent (2 for the default ``|x - y|^2 / 2``). ``reach=None``,
``rho=inf`` or ``tau=1`` is a balanced side.

The loop works on dual potentials in the log domain (Sejourne et al. 2019, Alg. 1; Feydy's
thesis, Alg. 3.5): ``f <- aprox_a(softmin_x(eps, g))``, ``g <- aprox_b(softmin_y(eps, f))``,
with epsilon-scaling from the cost's diameter down to the target ``eps`` (one sweep per
stage), then iterations at the target ``eps`` until the sup-norm change of the potentials is
below ``tol * eps`` (a relative change of the plan's entries) or the dtype's resolution. The
changes stay on the device and are read every :data:`CHECK_EVERY` iterations (one host
synchronisation per block; POT checks every 10).

Layers: :func:`solve` ``(UOTProblem, SinkhornOptions) -> UOTResult`` is the entry point;
:func:`solve_potentials` is the layer below it (potentials and the marginal check, no value, no
policy); :func:`sinkhorn` and :func:`sinkhorn_from_cost` are adapters that build the problem
(:mod:`torchuot.problem`, where the conventions above are resolved) and the options from their
keyword arguments.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch

from ._typing import Tensor
from .costs import CostLike
from .penalties import Penalty, PenaltyLike
from .problem import (  # noqa: F401 - re-exported: the conventions were stated here first
    CHECK_EVERY,
    GRAD_MODES,
    SinkhornOptions,
    UOTProblem,
    check_coordinate_range,
    check_costs,
    check_policy,
    max_diameter,
    resolve_eps,
    resolve_penalties,
)
from .result import (
    ConvergenceError,
    ConvergenceWarning,
    UOTResult,
    first_order_residuals,
    marginal_tolerance,
)

__all__ = [
    "solve",
    "solve_potentials",
    "Potentials",
    "sinkhorn",
    "sinkhorn_from_cost",
    "sinkhorn_loop",
    "AdaptiveMomentum",
    "epsilon_schedule",
    "resolve_eps",
    "resolve_penalties",
    "max_diameter",
    "dual_value",
    "check_convergence",
    "GRAD_MODES",
]


# ---------------------------------------------------------------------------- parameters
def epsilon_schedule(eps_start: float, eps: float, scaling: float, p: float = 2.0) -> list[float]:
    """Geometric schedule from ``eps_start`` down to ``eps``, ratio ``scaling**p`` per stage.

    As GeomLoss's ``epsilon_schedule`` (``eps_start = diameter**p``): the last entry is ``eps``.
    """
    if not 0 < scaling < 1:
        raise ValueError(f"scaling must lie in (0, 1), got {scaling!r}.")
    if eps_start <= eps:
        return [eps]
    logs = np.arange(math.log(eps_start), math.log(eps), p * math.log(scaling))
    return [eps_start] + [float(math.exp(e)) for e in logs] + [eps]


# ---------------------------------------------------------------------------- the loop


def sinkhorn_loop(
    softmin_x: Callable[[float, Tensor], Tensor],
    softmin_y: Callable[[float, Tensor], Tensor],
    penalty_a: Penalty,
    penalty_b: Penalty,
    eps_list: Sequence[float],
    g_init: Tensor,
    weights: tuple[Tensor, Tensor],
    *,
    max_iter: int,
    tol: float,
    symmetric: bool = False,
    momentum: bool | AdaptiveMomentum = True,
    check_every: int = CHECK_EVERY,
) -> tuple[Tensor, Tensor, int, bool]:
    """The single Sinkhorn loop, for every backend, penalty and problem.

    Cross problems use alternating (Gauss-Seidel) updates; symmetric problems ``OT(a, a)``
    (``symmetric=True``) use the averaged fixed-point update ``f <- (f + T(f)) / 2``
    (Feydy et al. 2019, Eq. 25), and return ``g = f``.

    Convergence is read in one host synchronisation every ``check_every`` iterations (POT
    checks every 10): the stopping rule (sup-norm change of ``f`` and ``g``) is tested on the
    last iteration of each block; the momentum sees the change of ``g`` of every iteration,
    recorded on the device in between.

    Args:
        g_init: starting target potential ``(B, M)`` (zeros: GeomLoss's initialisation).
        weights: ``(a, b)``, the measures' weights (for the translation step).
        momentum: adaptive over-relaxation at the target eps (cross problems only): ``True`` (the
            default :class:`AdaptiveMomentum`), ``False``, or a rule instance (copied fresh).
        check_every: iterations between two convergence checks at the target eps.

    Returns:
        ``f: (B, N)``, ``g: (B, M)``, the number of iterations, and convergence.
    """
    # A cap shorter than the schedule: skip its first stages rather than stop before the target
    # eps (potentials of a larger eps give a meaningless, even non-finite, value at the target).
    eps_list = list(eps_list)[-max(max_iter, 1):]
    eps0 = eps_list[0]
    f = penalty_a.aprox(softmin_x(eps0, g_init), eps0)
    g = f if symmetric else penalty_b.aprox(softmin_y(eps0, f), eps0)
    n_iters = 1
    translate = _translation(penalty_a, penalty_b, f, g, weights)

    def step(e: float, f: Tensor, g: Tensor, omega: float = 1.0) -> tuple[Tensor, Tensor]:
        if symmetric:
            f = 0.5 * (f + penalty_a.aprox(softmin_x(e, f), e))
            return f, f
        # Over-relaxed update f <- f + omega (T(g) - f) (omega = 1: plain Sinkhorn).
        f_t = penalty_a.aprox(softmin_x(e, g), e)
        f = f_t if omega == 1.0 else torch.lerp(f, f_t, omega)
        g_t = penalty_b.aprox(softmin_y(e, f), e)
        g = g_t if omega == 1.0 else torch.lerp(g, g_t, omega)
        return (f, g) if translate is None else translate(f, g)

    # Both sides balanced: the potentials are defined up to (f + c, g - c), and nothing stops them
    # drifting along that line (by ~ the largest cost during annealing); f + g - C then cancels
    # catastrophically. Each check re-centres them (same plan, same value for equal masses).
    recentre = None if symmetric or not (penalty_a.is_balanced and penalty_b.is_balanced) else \
        _recentre_fn(*weights)
    if recentre is not None:
        f, g = recentre(f, g)

    # Annealing: one sweep per stage, keeping at least one iteration at the target eps.
    for e in eps_list[1:-1]:
        if n_iters >= max_iter - 1:
            break
        f, g = step(e, f, g)
        if recentre is not None:
            f, g = recentre(f, g)
        n_iters += 1

    eps = eps_list[-1]
    res = torch.finfo(f.dtype).eps
    check_every = max(int(check_every), 1)
    mom = None if symmetric or not momentum else (
        momentum.fresh() if isinstance(momentum, AdaptiveMomentum) else AdaptiveMomentum())
    converged = False
    pending: list[Tensor] = []  # this block's changes of g, on the device
    # Potentials are finite unless some costs are infinite (HK cone, callables): the change is
    # then measured over the finite entries; a non-finite change later switches to that too.
    finite = bool(torch.isfinite(f.detach()).all() & torch.isfinite(g.detach()).all())
    # Under grad="unroll" the change is measured on detached copies (no graph for it).
    plain = (lambda t: t) if not torch.is_grad_enabled() else torch.Tensor.detach
    while n_iters < max_iter:
        f_new, g_new = step(eps, f, g, 1.0 if mom is None else mom.omega)
        n_iters += 1
        # Every iteration records max |g_new - g| (the momentum's rate signal; g = T(f) contracts
        # at the rate of f); the stopping rule also takes max |f_new - f| of a block's last one.
        pending.append(_sup_diff(plain(g_new), plain(g), finite))
        f_prev, f, g = f, f_new, g_new
        # Read the block at its end, at the last iteration, and where the momentum decides.
        if len(pending) < check_every and n_iters < max_iter and not (
            mom is not None and mom.wants_read(len(mom.changes) + len(pending))
        ):
            continue
        block = torch.stack(
            pending + [_sup_diff(plain(f), plain(f_prev), finite), _sup(plain(f)), _sup(plain(g))]
        ).tolist()
        pending = []
        *changes_g, change_f, sup_f, sup_g = block
        if not all(map(math.isfinite, block[:-2])):
            finite = False  # a potential left the finite range: measure as above from now on
            continue
        thr = max(tol * eps, 16 * res * max(sup_f, sup_g, eps))
        if max(change_f, changes_g[-1]) <= thr:  # sup-norm change of the last iteration
            converged = True
            break
        if recentre is not None:
            f, g = recentre(f, g)
        if mom is not None:
            mom.update(changes_g)
    return f, g, n_iters, converged


def _recentre_fn(a: Tensor, b: Tensor) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(f, g) -> (f + c, g - c)`` with ``c`` that equalises the weighted means of ``f: (B, N)``
    and ``g: (B, M)`` (over positive weights and finite potentials)."""
    pos_a, pos_b = a > 0, b > 0

    def mean(t: Tensor, w: Tensor, pos: Tensor) -> Tensor:
        ok = pos & torch.isfinite(t)
        ww = torch.where(ok, w, torch.zeros_like(w))
        return (ww * torch.where(ok, t, torch.zeros_like(t))).sum(-1, keepdim=True) / ww.sum(
            -1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)

    def recentre(f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        c = 0.5 * (mean(g, b, pos_b) - mean(f, a, pos_a))
        return f + c, g - c

    return recentre


def _translation(
    penalty_a: Penalty, penalty_b: Penalty, f: Tensor, g: Tensor, weights: tuple[Tensor, Tensor]
) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]] | None:
    """The translation-invariant step of the loop, or ``None`` where it cannot move anything.

    Translation-invariant Sinkhorn (Sejourne et al. 2022, Prop. 2): ``(f + lam, g - lam)``
    with the ``lam`` that maximises the dual along that line; removes the slowly damped mode
    (rate ``1/(1 + eps/rho)``) of KL problems. The fixed point is unchanged (``lam = 0``
    there). With ``sum_i a_i dual'(f_i + lam) = exp(L_a - r_a lam)`` (and the same for ``g``),
    ``lam = (L_a - L_b) / (r_a + r_b)``. A side with ``r = 0`` (a linear dual term: balanced)
    has a moment ``L`` that does not depend on its potential; it is computed once here.
    """
    a, b = weights
    box_a, box_b = penalty_a.shift_box, penalty_b.shift_box
    if box_a is not None and box_b is not None:  # linear dual terms (TV, balanced)
        return None if math.isinf(box_a) and math.isinf(box_b) else _box_translation(box_a, box_b, a, b)
    ma, mb = penalty_a.shift_moment(f, a), penalty_b.shift_moment(g, b)
    if ma is None or mb is None:  # no closed form: a short line search, where derivatives exist
        # (a penalty that overrides dual_derivatives supports the line search: no trial evaluation)
        ok = all(type(p).dual_derivatives is not Penalty.dual_derivatives for p in (penalty_a, penalty_b))
        return _newton_translation(penalty_a, penalty_b, a, b) if ok else None
    if ma[1] + mb[1] == 0:
        return None  # balanced on both sides: nothing to translate
    # The moments come in moment_dtype (float64): at the fixed point lam is 0 up to their rounding
    # times 1/(r_a + r_b) ~ rho, a shift that the damped Sinkhorn step undoes at rate eps/rho only.
    inv_r = torch.tensor(1.0 / (ma[1] + mb[1]), dtype=ma[0].dtype, device=f.device)  # 0-d: cheaper
    moment_a = (lambda f: ma[0]) if ma[1] == 0 else penalty_a.shift_moment_fn(a)
    moment_b = (lambda g: mb[0]) if mb[1] == 0 else penalty_b.shift_moment_fn(b)

    def translate(f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        lam = ((moment_a(f) - moment_b(g)) * inv_r).to(f.dtype).unsqueeze(-1)
        return f + lam, g - lam

    return translate


def _box_translation(box_a: float, box_b: float, a: Tensor, b: Tensor
                     ) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Translation step for two linear dual terms (TV and/or balanced, not both balanced).

    Along ``(f + lam, g - lam)`` the entropic term is constant and the dual changes by
    ``lam (m(a) - m(b))``: the exact line search moves ``lam`` to the edge of the boxes
    ``|f + lam| <= box_a``, ``|g - lam| <= box_b`` in the direction of the larger mass. Without it
    TV potentials creep towards ``+-rho`` by about ``eps log(m(a)/m(b))`` an iteration (thousands
    of iterations when ``rho`` is large).
    """
    up_sign = torch.sign(a.sum(-1) - b.sum(-1)).unsqueeze(-1)  # (B, 1): +1, -1 or 0

    def translate(f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        up = torch.minimum(box_a - f.amax(-1, keepdim=True), box_b + g.amin(-1, keepdim=True))
        down = torch.maximum(-box_a - f.amin(-1, keepdim=True), g.amax(-1, keepdim=True) - box_b)
        lam = torch.where(up_sign > 0, up, torch.where(up_sign < 0, down, torch.zeros_like(up)))
        return f + lam, g - lam

    return translate


#: Safeguarded Newton iterations of the translation line search (per Sinkhorn iteration).
_SHIFT_NEWTON = 4


def _newton_translation(penalty_a: Penalty, penalty_b: Penalty, a: Tensor, b: Tensor
                        ) -> Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Translation step by a line search, for penalties without a closed form (reverse KL, KL
    against TV, ...): maximise the concave ``D(lam) = <a, psi_a(f + lam)> + <b, psi_b(g - lam)>``
    (``psi = -phi*(-.)``; the entropic term is constant along the line) by a few safeguarded
    Newton steps in a bracket: the potentials' domains (TV box, reverse KL's ``f > -rho``, open
    ends approached at most half-way) and a trust region of the smallest finite ``rho``.
    Non-finite quantities (infinite potentials) give ``lam = 0``: a plain Sinkhorn step.
    """
    rhos = [p.rho for p in (penalty_a, penalty_b) if math.isfinite(p.rho)]
    trust = min(rhos) if rhos else 1.0
    (lo_a, hi_a), (lo_b, hi_b) = penalty_a.dual_domain, penalty_b.dual_domain
    half_a = 0.5 if penalty_a.dual_domain_open else 1.0
    half_b = 0.5 if penalty_b.dual_domain_open else 1.0

    def translate(f: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        # Bracket: lo_a < f + lam < hi_a and lo_b < g - lam < hi_b for every point, and |lam| <= trust.
        upper = torch.minimum((hi_a - f.amax(-1)) * half_a, (g.amin(-1) - lo_b) * half_b).clamp(max=trust)
        lower = torch.maximum((lo_a - f.amin(-1)) * half_a, (g.amax(-1) - hi_b) * half_b).clamp(min=-trust)
        lam = torch.zeros_like(upper)
        for _ in range(_SHIFT_NEWTON):
            l2 = lam.unsqueeze(-1)
            d1a, d2a = penalty_a.dual_derivatives(f + l2)  # type: ignore[misc]
            d1b, d2b = penalty_b.dual_derivatives(g - l2)  # type: ignore[misc]
            D1 = (a * d1a).nansum(-1) - (b * d1b).nansum(-1)  # D'(lam), decreasing in lam
            D2 = (a * d2a).nansum(-1) + (b * d2b).nansum(-1)  # D''(lam) <= 0
            lower = torch.where(D1 > 0, lam, lower)
            upper = torch.where(D1 < 0, lam, upper)
            newton = lam - D1 / D2.clamp(max=-torch.finfo(D2.dtype).tiny)
            inside = (newton > lower) & (newton < upper)
            lam = torch.where(inside, newton, 0.5 * (lower + upper))
        lam = torch.where(torch.isfinite(lam) & (lower <= upper), lam, torch.zeros_like(lam)).unsqueeze(-1)
        return f + lam, g - lam

    return translate


def _sup(t: Tensor) -> Tensor:
    """``max |t|`` over the finite entries (a 0-d tensor on ``t``'s device; call without grad)."""
    return torch.linalg.vector_norm(torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0), math.inf)


def _sup_diff(t: Tensor, t_old: Tensor, finite: bool) -> Tensor:
    """``max |t - t_old|`` (over the finite entries unless ``finite``), a 0-d tensor (no sync)."""
    return torch.linalg.vector_norm(t - t_old, math.inf) if finite else _sup(t - t_old)


class AdaptiveMomentum:
    """Adaptive over-relaxation of the loop at the target eps, with a safeguard.

    Rate estimate (Lehmann, von Renesse, Sambale, Uschmajew 2021, Eq. 5; OTT's ``Momentum``):
    after a few plain iterations, the contraction rate ``r`` of the change of ``g`` gives
    ``omega = 2 / (1 + sqrt(1 - r))``. The estimate assumes the asymptotic, linear regime; far
    from it (potentials still travelling, skewed marginals) the over-relaxed map can cycle where
    plain Sinkhorn converges (a 7 x 7 balanced problem did not converge in 20,000 iterations).
    Safeguard, in the spirit of Lehmann et al. 2021 (Sec. 4) and Thibault et al. 2021: an
    over-relaxed run whose change of ``g`` exceeds :attr:`RISE` times its smallest one, or finds
    no new smallest change within :attr:`PATIENCE` iterations, has failed: omega falls back to 1,
    and a new attempt follows after plain iterations whose number doubles with each failure, with
    the extra relaxation ``omega - 1`` halved from the second failure on (down to a quarter).
    Failed attempts thus cost a bounded number of iterations, and the loop converges wherever
    plain Sinkhorn does.

    The loop feeds it each block's changes (:meth:`update`) and reads :attr:`omega`.
    """

    #: Plain iterations at the target eps before the first rate estimate.
    START = 8
    #: Changes whose consecutive ratios make one rate estimate.
    WINDOW = 4
    #: Cap of the estimated rate of the observed iteration (keeps omega below 2).
    MAX_RATE = 0.999
    #: Cap of the inferred rate of the plain iteration.
    MAX_PLAIN_RATE = 0.99
    #: An over-relaxed run that finds no new smallest change in this many iterations has failed.
    PATIENCE = 24
    #: An over-relaxed run whose change exceeds this multiple of its smallest one has failed.
    RISE = 8.0
    #: Failures after which the extra relaxation ``omega - 1`` is not halved further.
    MAX_HALVINGS = 2
    #: Failures that do not halve it (a transient in the first attempt is common).
    FREE_FAILURES = 1

    def __init__(self) -> None:
        self._reset()

    def fresh(self) -> AdaptiveMomentum:
        """A copy of this rule (its class and any constants set on the instance) in its initial
        state: :class:`~torchuot.SinkhornOptions` holds a template, each solve runs a fresh copy."""
        new = copy.copy(self)
        new._reset()
        return new

    def _reset(self) -> None:
        self.omega = 1.0
        self.changes: list[float] = []
        self.points: tuple[int, ...] = (self.START, 2 * self.START, 4 * self.START)  # estimate here
        self.rises = 0
        self.failures = 0
        self.best = math.inf  # smallest change of the current over-relaxed run
        self.since = 0  # iterations since that smallest change

    def wants_read(self, k: int) -> bool:
        """Whether the loop must end its block after the ``k``-th change (an estimate is due)."""
        return k - 1 in self.points

    def update(self, block: list[float]) -> None:
        """Record a block of changes ``max |g_new - g|`` (one per iteration) and update omega."""
        for change in block:
            k = len(self.changes)
            was = self.omega
            if k in self.points and k >= self.WINDOW and min(self.changes[k - self.WINDOW:]) > 0:
                self._estimate(change)
            elif self.omega > 1.0 and k > 0:
                self._halve_on_rises(change)
            self.changes.append(change)
            if self.omega > 1.0 and (was == 1.0 or change < self.best):  # start, or progress
                self.best, self.since = change, 0
            elif self.omega > 1.0:
                self.since += 1
        if self.omega > 1.0 and (self.since >= self.PATIENCE or max(block) > self.RISE * self.best):
            self._fail()

    def _estimate(self, change: float) -> None:
        k = len(self.changes)
        window = self.changes[k - self.WINDOW:] + [change]
        # The slowest recent contraction is the best guess of the asymptotic one.
        mu = min(max(window[i + 1] / window[i] for i in range(self.WINDOW)), self.MAX_RATE)
        omega = self.omega
        # Rate of the plain iteration behind it: SOR theory for consistently ordered
        # systems, (mu + omega - 1)^2 = mu omega^2 lam (lam = mu when omega = 1).
        lam = min((mu + omega - 1) ** 2 / (mu * omega**2), self.MAX_PLAIN_RATE)
        new = 2.0 / (1.0 + math.sqrt(1.0 - lam))
        # each failure halves the extra relaxation of the next attempts (down to a quarter)
        new = 1.0 + (new - 1.0) / 2 ** min(max(self.failures - self.FREE_FAILURES, 0), self.MAX_HALVINGS)
        self.omega = max(new, omega) if omega > 1.0 else new
        self.rises = 0

    def _halve_on_rises(self, change: float) -> None:
        # A change of omega perturbs the iteration for a few steps: judge rises three in a row
        # only 4 iterations after an estimate point.
        k, start = len(self.changes), self.START
        settled = k > start and k % start >= 4 or k > 4 * start + 4
        self.rises = self.rises + 1 if (settled and change > self.changes[-1]) else 0
        if self.rises >= 3:
            self.omega, self.rises = 1.0 + (self.omega - 1.0) / 2, 0

    def _fail(self) -> None:
        self.failures += 1
        self.omega, self.rises, self.since, self.best = 1.0, 0, 0, math.inf
        # Plain iterations, then a new (smaller) attempt; the wait doubles with each failure.
        k, wait = len(self.changes), self.START * 2 ** (self.failures - 1)
        self.points = (k + wait, k + 2 * wait, k + 4 * wait)  # as at the start, scaled by the wait


# ---------------------------------------------------------------------------- solve
class Potentials(NamedTuple):
    """Potentials of one solve and its end-of-solve check (:func:`solve_potentials`).

    ``f: (B, N)``, ``g: (B, M)`` (batched; ``g = f`` for a symmetric problem), the iterations,
    whether the first-order marginal conditions hold to ``marginal_tol``, and the relative
    residuals ``(B,)`` of each side.
    """

    f: Tensor
    g: Tensor
    n_iters: int
    converged: bool
    residual_a: Tensor  # (B,) relative first-order residuals
    residual_b: Tensor
    marginal_tol: float


Solved = Potentials  # the former private name


def _as_options(options: object) -> SinkhornOptions:
    if options is None:
        return SinkhornOptions()
    if not isinstance(options, SinkhornOptions):
        raise TypeError(f"options must be a torchuot.SinkhornOptions, got {type(options)!r}.")
    return options


def solve_potentials(problem: UOTProblem, options: SinkhornOptions | None = None, *,
                     f_init: Tensor | None = None, g_init: Tensor | None = None) -> Potentials:
    """Run the Sinkhorn loop on ``problem`` and check the marginal conditions at its end.

    The lower layer of :func:`solve`: no value, no result object and no non-convergence policy
    (apply it with :func:`check_convergence`); for callers that need the potentials only or
    combine several solves (the debiased divergence, the minibatch couplings, image blocks).
    Potentials are batched ``(B, N)`` / ``(B, M)`` whatever ``problem.batched`` says.

    Args:
        problem: a :class:`~torchuot.UOTProblem`.
        options: a :class:`~torchuot.SinkhornOptions` (default ``SinkhornOptions()``).
        f_init, g_init: warm start (see :func:`sinkhorn`), unbatched iff the problem is.
    """
    if not isinstance(problem, UOTProblem):
        raise TypeError(f"problem must be a torchuot.UOTProblem, got {type(problem)!r}.")
    options = _as_options(options)
    warm = _warm_start(f_init, g_init, problem.a, problem.b, problem.batched)
    eps_list = epsilon_schedule(problem.eps_start, problem.eps, options.scaling, problem.p)
    return _solve_full(problem.ops, problem.penalty_a, problem.penalty_b, eps_list, options.max_iter,
                       options.tol, options.grad, symmetric=problem.symmetric, momentum=options.momentum,
                       warm=warm, check_every=options.check_every)


def solve(problem: UOTProblem, options: SinkhornOptions | None = None, *,
          f_init: Tensor | None = None, g_init: Tensor | None = None) -> UOTResult:
    """Solve an unbalanced OT problem: the potentials, the value and the plan's accessors.

    ``solve(UOTProblem.from_points(x, y, ...), SinkhornOptions(...))`` is :func:`sinkhorn`
    (and ``from_cost`` gives :func:`sinkhorn_from_cost`): the same loop, value and gradients.

    Args:
        problem: a :class:`~torchuot.UOTProblem` (``from_points``, ``from_cost``, ``on_grid``).
        options: a :class:`~torchuot.SinkhornOptions` (default ``SinkhornOptions()``): the
            eps-scaling ratio, tolerance, iteration cap, momentum, gradient mode, check interval
            and non-convergence policy.
        f_init, g_init: warm-start potentials ``(N,)`` / ``(M,)`` (batched ``(B, N)`` / ``(B, M)``).

    Returns:
        A :class:`~torchuot.UOTResult`; ``value`` is the dual objective at the potentials (the
        entropic UOT value ``OT_eps``), differentiable by the options' gradient mode (under
        ``grad="implicit"`` the potentials are differentiable by the implicit function theorem
        and the value keeps its envelope gradient, which is the same).
    """
    return _solve_reported(problem, options, "solve", f_init, g_init)


def _solve_reported(problem: UOTProblem, options: SinkhornOptions | None, where: str,
                    f_init: Tensor | None, g_init: Tensor | None) -> UOTResult:
    """:func:`solve`, its non-convergence message naming ``where`` (the public entry point)."""
    options = _as_options(options)
    solved = solve_potentials(problem, options, f_init=f_init, g_init=g_init)
    check_convergence(options.on_nonconvergence, [solved], where, stacklevel=4)
    f, g = solved.f, solved.g
    ops, pen_a, pen_b = problem.ops, problem.penalty_a, problem.penalty_b
    # The value's implicit gradient is the envelope one (dvalue/df = 0 at the optimum): skip the solve.
    fv, gv = (f.detach(), g.detach()) if options.grad == "implicit" else (f, g)
    value = dual_value(ops, pen_a, pen_b, problem.eps, fv, gv)
    out = (lambda t: t) if problem.batched else (lambda t: t[0])
    return UOTResult(
        f=out(f),
        g=out(g),
        value=out(value),
        eps=problem.eps,
        penalty_a=pen_a,
        penalty_b=pen_b,
        n_iters=solved.n_iters,
        converged=solved.converged,
        backend=ops.name,
        batched=problem.batched,
        _ops=ops,
        marginal_tol=solved.marginal_tol,
        residuals=(out(solved.residual_a), out(solved.residual_b)),
    )


# ---------------------------------------------------------------------------- adapters
def sinkhorn(
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
    f_init: Tensor | None = None,
    g_init: Tensor | None = None,
    options: SinkhornOptions | None = None,
    reference: str = "product",
) -> UOTResult:
    """Entropic unbalanced optimal transport between two weighted point clouds.

    Solves ``min_pi <pi, C> + eps KL(pi | a x b) + D_a(pi 1 | a) + D_b(pi^T 1 | b)`` by
    log-domain Sinkhorn iterations with epsilon-scaling (see the module docstring for the
    parameter conventions); ``reference="counting"`` puts ``KL(pi | 1)`` in place of
    ``KL(pi | a x b)``.

    Args:
        x: ``(N, D)`` or ``(B, N, D)`` source points. y: ``(M, D)`` or ``(B, M, D)`` targets.
        a: ``(N,)`` / ``(B, N)`` non-negative source weights (default uniform ``1/N``).
        b: ``(M,)`` / ``(B, M)`` target weights (default uniform ``1/M``). Masses may differ.
        cost: ``None`` (``|x-y|^p/p``), ``"hk"``, a :class:`~torchuot.costs.Cost` or a callable.
        p: exponent of the default cost and of the ``blur``/``reach`` to ``eps``/``rho`` map.
        blur, eps: entropic regularisation (one of them; default ``blur=0.05``).
        reach, rho, reg_m, tau_a, tau_b: marginal penalty strength, in one convention
            (default: balanced). A pair gives one value per side.
        penalty: ``"kl"`` (default), ``"tv"``, ``"balanced"``, a Penalty, or a pair per side.
        scaling: eps-scaling ratio in length units (``eps`` shrinks by ``scaling**p`` a stage).
        diameter: largest distance in the data (computed from a bounding box if ``None``).
        max_iter: iteration cap (annealing stages included).
        tol: stop when ``max |f_new - f| <= tol * eps`` (or the dtype's resolution).
        grad: ``"envelope"`` (iterate without autograd, one differentiable evaluation of the
            dual at the optimum: exact gradients of the value; the potentials, and the plan's
            dependence on them, are held fixed), ``"implicit"`` (the potentials are differentiable
            too, by the implicit function theorem: exact gradients of the plan, ``apply`` and
            anything built on them, at the memory of two iterations; the backward pass solves a
            linear system) or ``"unroll"`` (differentiate through every iteration).
        backend: ``"auto"`` (default), ``"tensorized"``, ``"online"`` (KeOps), ``"chunked"``,
            ``"multiscale"``, or a :class:`~torchuot.backends.Multiscale` options object (see
            :mod:`torchuot.backends`).
        momentum: adaptive over-relaxation at the target ``eps`` (Lehmann et al. 2021), on
            by default, with a safeguard that falls back to plain iterations where it does not
            help (:class:`AdaptiveMomentum`); ``False`` gives plain Sinkhorn iterations.
        on_nonconvergence: what to do when the solve ends unconverged (``max_iter`` reached, or
            the marginal conditions miss ``result.marginal_tol``, e.g. a float32 stall):
            ``"warn"`` (default, a :class:`~torchuot.result.ConvergenceWarning`), ``"raise"``
            (:class:`~torchuot.result.ConvergenceError`) or ``"ignore"``.
        f_init, g_init: warm start (POT / OTT style): potentials ``(N,)`` / ``(M,)`` (batched
            ``(B, N)`` / ``(B, M)``), e.g. ``res.f``, ``res.g`` of the previous step of a training
            loop or gradient flow. Either or both; the solve then starts at the target ``eps``
            (no annealing). Same fixed point, fewer iterations when they are close to it.
        options: a :class:`~torchuot.SinkhornOptions` holding ``scaling``, ``max_iter``, ``tol``,
            ``grad``, ``momentum`` and ``on_nonconvergence`` (and ``check_every``) instead of the
            keyword arguments. An argument left at its default yields to ``options``; an argument
            given a different value than ``options`` holds raises ``ValueError`` (never a silent
            pick). The same holds for every solver function and loss of the library.
        reference: the entropy's reference measure: ``"product"`` (default, ``KL(pi | a x b)``:
            GeomLoss, POT ``reg_type="kl"``) or ``"counting"`` (``KL(pi | 1)``, the plain entropy
            of OTT-JAX's unbalanced Sinkhorn and POT ``reg_type="entropy"``; then
            ``pi = exp((f + g - C)/eps)`` and the potentials are OTT's, and
            :attr:`~torchuot.UOTResult.value_ott` is OTT's ``reg_ot_cost``). The plans differ when a
            side is unbalanced and the weights are not uniform; balanced problems share their plan.

    Equivalent to ``solve(UOTProblem.from_points(x, y, a, b, ...), options)`` (see
    :func:`solve`).

    Returns:
        A :class:`~torchuot.result.UOTResult`.

    Raises:
        ValueError: bad arguments; a balanced side with a point that has no finite-cost partner
            (infeasible); costs that are NaN, ``-inf`` or overflow the dtype.
    """
    opts = SinkhornOptions.merge(options, scaling=scaling, max_iter=max_iter, tol=tol, grad=grad,
                                 momentum=momentum, on_nonconvergence=on_nonconvergence)
    problem = UOTProblem.from_points(
        x, y, a, b, cost=cost, p=p, blur=blur, eps=eps, reach=reach, rho=rho, reg_m=reg_m,
        tau_a=tau_a, tau_b=tau_b, penalty=penalty, diameter=diameter, backend=backend,
        reference=reference,
    )
    return _solve_reported(problem, opts, "sinkhorn", f_init, g_init)


def _warm_start(f_init: object, g_init: object, a: Tensor, b: Tensor, batched: bool
                ) -> tuple[Tensor | None, Tensor | None] | None:
    """Validate warm-start potentials against the weights ``a: (B, N)``, ``b: (B, M)``."""
    if f_init is None and g_init is None:
        return None
    out = []
    for name, t, w in (("f_init", f_init, a), ("g_init", g_init, b)):
        if t is None:
            out.append(None)
            continue
        if isinstance(t, np.ndarray):
            t = torch.as_tensor(t, device=w.device)
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a tensor of potentials, got {type(t)!r}.")
        tb = t if batched else t.unsqueeze(0)
        if tuple(tb.shape) != tuple(w.shape):
            want = tuple(w.shape) if batched else tuple(w.shape[1:])
            raise ValueError(
                f"{name} must have the shape of its side's weights {want} (e.g. res.f / res.g of an "
                f"earlier solve), got {tuple(t.shape)}."
            )
        if not bool(torch.isfinite(tb).all()):
            raise ValueError(f"{name} contains NaN or inf; warm starts must be finite potentials.")
        out.append(tb.to(dtype=w.dtype, device=w.device).detach())
    return out[0], out[1]


def sinkhorn_from_cost(
    C: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    eps: float,
    rho: object = None,
    reg_m: object = None,
    tau_a: float | None = None,
    tau_b: float | None = None,
    penalty: PenaltyLike | Sequence[PenaltyLike] = "kl",
    scaling: float = 0.5,
    max_iter: int = 1000,
    tol: float = 1e-6,
    grad: str = "envelope",
    momentum: bool = True,
    on_nonconvergence: str = "warn",
    f_init: Tensor | None = None,
    g_init: Tensor | None = None,
    options: SinkhornOptions | None = None,
    reference: str = "product",
) -> UOTResult:
    """Entropic unbalanced OT from a cost matrix, POT style (``ot.sinkhorn_unbalanced(a, b, M,
    reg, reg_m)``): the same loop and result as :func:`sinkhorn`, on the dense backend.

    Args:
        C: ``(N, M)`` or ``(B, N, M)`` cost matrix; ``+inf`` entries forbid a pair (the plan is
            0 there). Differentiable: the value's gradient w.r.t. ``C`` is the plan.
        a: ``(N,)`` / ``(B, N)`` non-negative source weights (default uniform ``1/N``).
        b: ``(M,)`` / ``(B, M)`` target weights (default uniform ``1/M``).
        eps: entropic regularisation (POT's ``reg``), in the units of ``C``.
        rho, reg_m, tau_a, tau_b: marginal penalty strength in one convention (default:
            balanced); a pair gives one value per side.
        penalty, max_iter, tol, grad, momentum, on_nonconvergence, f_init, g_init, options: as in
            :func:`sinkhorn`.
        reference: ``"product"`` (POT's ``reg_type="kl"``, the default) or ``"counting"`` (POT's
            ``reg_type="entropy"``, OTT-JAX's ``Geometry(cost_matrix=C)`` problems); see
            :func:`sinkhorn`.

    POT's inputs are accepted where unambiguous: ``C``, ``a``, ``b`` (and warm starts) as NumPy
    arrays (turned into tensors, dtype kept; the result holds tensors), ``reg_m`` as a number or a
    one- or two-element list / array.
        scaling: eps-scaling ratio: eps shrinks by ``scaling**2`` a stage, from the largest
            finite ``|C|`` down to ``eps``.

    Returns:
        A :class:`~torchuot.result.UOTResult` (``barycentric_projection`` needs points and is
        not available; ``plan``, marginals, ``apply`` and ``sample_pairs`` are).
    """
    opts = SinkhornOptions.merge(options, scaling=scaling, max_iter=max_iter, tol=tol, grad=grad,
                                 momentum=momentum, on_nonconvergence=on_nonconvergence)
    problem = UOTProblem.from_cost(C, a, b, eps=eps, rho=rho, reg_m=reg_m, tau_a=tau_a, tau_b=tau_b,
                                   penalty=penalty, reference=reference)
    return _solve_reported(problem, opts, "sinkhorn_from_cost", f_init, g_init)


# ---------------------------------------------------------------------------- the solve's layers
def _solve(ops, pen_a: Penalty, pen_b: Penalty, eps_list: list[float], max_iter: int, tol: float,
           grad: str, *, symmetric: bool, momentum: bool = True) -> tuple[Tensor, Tensor, int, bool]:
    """:func:`_solve_full` as ``(f, g, n_iters, converged)`` (kept for tests of a built backend)."""
    return tuple(_solve_full(ops, pen_a, pen_b, eps_list, max_iter, tol, grad, symmetric=symmetric,
                             momentum=momentum)[:4])  # type: ignore[return-value]


def _solve_full(ops, pen_a: Penalty, pen_b: Penalty, eps_list: list[float], max_iter: int, tol: float,
                grad: str, *, symmetric: bool, momentum: bool | AdaptiveMomentum = True,
                warm: tuple[Tensor | None, Tensor | None] | None = None,
                check_every: int = CHECK_EVERY) -> Potentials:
    """Run the loop on a backend, check the result, and attach the gradient mode.

    ``converged`` means the first-order marginal conditions hold at the returned potentials to
    :func:`~torchuot.result.marginal_tolerance` (relative L1), measured once per side by an exact
    log-domain soft-min. The loop's stopping rule (changes of the potentials) decides when to stop,
    not whether the answer is right: a float32 stall or a cached kernel's rounding can bring the
    changes below the threshold away from the optimum, and a run that reaches ``max_iter`` while
    its potentials still move by more than ``tol * eps`` can already satisfy its marginals.

    ``warm = (f_init, g_init)`` (batched, either may be ``None``): a warm start at the target eps
    (no annealing); ``g`` is then started from ``g_init``, or from the target update of ``f_init``.
    """
    if grad == "unroll":
        sx, sy, ctx = ops.softmin_x_autograd, ops.softmin_y_autograd, nullcontext()
    else:
        sx, sy, ctx = ops.softmin_x, ops.softmin_y, torch.no_grad()
    with ctx:
        g0, n0 = torch.zeros_like(ops.b), 0
        coarse_start = getattr(ops, "coarse_start", None)  # backends with coarse levels (multiscale)
        if warm is not None and (warm[0] is not None or warm[1] is not None):
            f_init, g_init = warm
            eps_list, coarse_start = [eps_list[-1]], None  # from the given potentials, at the target
            e = eps_list[0]
            g0 = g_init if g_init is not None else pen_b.aprox(sy(e, f_init), e)
        if coarse_start is not None:  # run the stages they can do coarsely; the loop does the rest
            with torch.no_grad():
                g0, eps_list, n0 = coarse_start(pen_a, pen_b, eps_list, symmetric=symmetric)
        f, g, n, _stopped = sinkhorn_loop(sx, sy, pen_a, pen_b, eps_list, g0, (ops.a, ops.b),
                                      max_iter=max(max_iter - n0, 1), tol=tol, symmetric=symmetric,
                                      momentum=momentum, check_every=check_every)
        n += n0
    release = getattr(ops, "release_cache", None)
    if release is not None:  # loop-only buffers (the tensorized kernel cache) are not needed now
        release()
    eps = eps_list[-1]
    mtol = marginal_tolerance(tol, f.dtype)
    # A potential within eps * mtol of a kink (TV's box edge) changes the marginal by < mtol.
    ra, rb = first_order_residuals(ops, pen_a, pen_b, eps, f.detach(), g.detach(), symmetric, eps * mtol)
    conv = bool(((ra <= mtol) & (rb <= mtol)).all())
    if grad == "envelope":
        f, g = f.detach(), g.detach()
    elif grad == "implicit":
        f, g = _implicit_potentials(ops, pen_a, pen_b, eps, f.detach(), g.detach(), symmetric,
                                    max_iter, tol)
    return Potentials(f, g, n, conv, ra, rb, mtol)


def check_convergence(policy: str, solves: Sequence[Potentials], where: str, stacklevel: int = 3) -> None:
    """Apply the non-convergence policy (``"warn"``, ``"raise"``, ``"ignore"``) to ``solves``."""
    bad = [s for s in solves if not s.converged]
    if policy == "ignore" or not bad:
        return
    s = bad[0]
    ra, rb = float(s.residual_a.max()), float(s.residual_b.max())
    msg = (
        f"{where} did not converge: after {s.n_iters} iterations the relative marginal residuals are "
        f"{ra:.3g} (source) and {rb:.3g} (target), tolerance {s.marginal_tol:.3g}. The result may be "
        "wrong: raise max_iter, increase blur / eps, use float64, or pass on_nonconvergence='ignore' "
        "to accept it."
    )
    if policy == "raise":
        raise ConvergenceError(msg)
    warnings.warn(msg, ConvergenceWarning, stacklevel=stacklevel)


def _implicit_potentials(ops, pen_a: Penalty, pen_b: Penalty, eps: float, f: Tensor, g: Tensor,
                         symmetric: bool, max_iter: int, tol: float) -> tuple[Tensor, Tensor]:
    """Converged potentials made differentiable by the implicit function theorem.

    The loop's fixed point is ``z = T(z; x, y, a, b)`` with ``T(g) = aprox_b(softmin_y(aprox_a(
    softmin_x(g))))`` (cross problems; ``T(f) = aprox(softmin_x(f))`` for ``OT(a, a)``), and
    ``f = aprox_a(softmin_x(g))``. Then ``dz = (I - J)^{-1} dT`` with ``J = dT/dz``: the backward
    pass solves the adjoint system ``(I - J^T) lam = v`` (BiCGSTAB on vector-Jacobian products of
    one differentiable step; Blondel et al. 2022, OTT's ``implicit_diff``) and sends ``lam`` through
    ``dT``. Values are the converged ones; only the gradients change (no unrolled iterations kept:
    memory of two differentiable steps). With both sides balanced, ``J`` has the eigenvalue 1 of the
    constant shift ``g + c``; the incoming gradient is projected off that mode (the plan does not
    see it).
    """
    z_star = f if symmetric else g

    def step(h: Tensor) -> Tensor:
        if symmetric:
            return pen_a.aprox(ops.softmin_x_autograd(eps, h), eps)
        return pen_b.aprox(ops.softmin_y_autograd(eps, pen_a.aprox(ops.softmin_x_autograd(eps, h), eps)), eps)

    with torch.enable_grad():
        t_z = step(z_star)  # depends on the inputs only (z_star is detached)
        if not t_z.requires_grad:  # no input asks for a gradient: nothing to differentiate
            return f, g
        z0 = z_star.clone().requires_grad_()
        t0 = step(z0)  # the graph of J^T products
    shift_mode = pen_a.is_balanced and pen_b.is_balanced
    res_tol = max(tol, 8 * torch.finfo(z_star.dtype).eps)

    def adjoint(v: Tensor) -> Tensor:
        if shift_mode:
            v = v - v.mean(-1, keepdim=True)

        def A(u: Tensor) -> Tensor:  # (I - J^T) u
            (jt,) = torch.autograd.grad(t0, z0, u, retain_graph=True)
            return u - jt

        return _bicgstab(A, v, res_tol, max_iter)

    # z has the converged value and the gradient of one step; the hook turns it into (I - J)^{-1}.
    z = z_star + (t_z - t_z.detach())
    z.register_hook(adjoint)
    if symmetric:
        return z, z
    f_z = pen_a.aprox(ops.softmin_x_autograd(eps, z), eps)
    return f + (f_z - f_z.detach()), z  # the converged f, with the gradient of f = aprox(softmin(g))


def _bicgstab(A: Callable[[Tensor], Tensor], v: Tensor, tol: float, max_iter: int) -> Tensor:
    """Solve ``A lam = v`` (BiCGSTAB, van der Vorst 1992), treating the whole tensor as one vector.

    Starts from ``lam = v`` (the first Neumann term); stops at a residual ``|r| <= tol |v|``.
    """
    norm_v = float(torch.linalg.vector_norm(v))
    if norm_v == 0.0 or not math.isfinite(norm_v):
        return v
    x = v.clone()
    r = v - A(x)
    r_hat = r.clone()
    rho_old = alpha = omega = 1.0
    p = torch.zeros_like(v)
    av = torch.zeros_like(v)
    for _ in range(max_iter):
        if float(torch.linalg.vector_norm(r)) <= tol * norm_v:
            return x
        rho = float((r_hat * r).sum())
        if rho == 0.0:
            break
        p = r + (rho / rho_old) * (alpha / omega) * (p - omega * av)
        av = A(p)
        alpha = rho / float((r_hat * av).sum())
        s = r - alpha * av
        if float(torch.linalg.vector_norm(s)) <= tol * norm_v:
            return x + alpha * p
        t = A(s)
        tt = float((t * t).sum())
        omega = float((t * s).sum()) / tt if tt > 0 else 0.0
        x = x + alpha * p + omega * s
        r = s - omega * t
        rho_old = rho
        if omega == 0.0:
            break
    res = float(torch.linalg.vector_norm(r)) / norm_v
    if res > tol:
        warnings.warn(
            f"grad='implicit': the adjoint linear solve stopped at a relative residual {res:.2g} > "
            f"{tol:.2g} after at most {max_iter} iterations; the gradient is approximate. Increase "
            "max_iter or eps, or use grad='unroll'.", RuntimeWarning, stacklevel=2,
        )
    return x


def dual_value(ops, pen_a: Penalty, pen_b: Penalty, eps: float, f: Tensor, g: Tensor) -> Tensor:
    """Dual objective ``<a, -phi_a*(-f)> + <b, -phi_b*(-g)> - eps <a x b, exp((f+g-C)/eps) - 1>``.

    With ``f, g`` detached its gradient w.r.t. ``x, y, a, b`` is the envelope-theorem
    gradient (``dC -> pi``); one differentiable soft-min, no ``N x M`` plan is stored.
    Uses ``sum_j b_j exp((f_i + g_j - C_ij)/eps) = exp((f_i - softmin_x(g)_i)/eps)``.
    """
    a, b = ops.a, ops.b
    S = ops.softmin_x_autograd(eps, g)
    row_mass = a * torch.exp((f - S) / eps)  # pi 1, (B, N)
    return (
        (a * pen_a.dual(f)).sum(-1)
        + (b * pen_b.dual(g)).sum(-1)
        - eps * row_mass.sum(-1)
        + eps * a.sum(-1) * b.sum(-1)
    )
