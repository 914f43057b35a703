"""Marginal penalties ``D_phi(pi 1 | a)`` of unbalanced OT, one per side.

Each penalty owns the three things the solver needs from it (Sejourne, Feydy, Vialard,
Trouve, Peyre, "Sinkhorn divergences for unbalanced optimal transport", 2019, Table 1):

* ``aprox(s, eps)``: the Sinkhorn update ``f = -aprox_{phi*}(-s)`` applied to a soft-min ``s``;
* ``dual(f)``: the pointwise dual term ``-phi*(-f)``, so that the dual objective is
  ``<a, dual_a(f)> + <b, dual_b(g)> - eps <a x b, exp((f + g - C)/eps) - 1>``;
* ``primal(m, a)``: the divergence ``D_phi(m | a)`` of a marginal ``m`` to its target ``a``.

``rho`` is the penalty strength in cost units: ``rho = reach**p`` (GeomLoss), ``reg_m`` (POT),
and OTT's ``tau = rho / (rho + eps)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch

from ._typing import Tensor

__all__ = ["Penalty", "KL", "TV", "Balanced", "ReverseKL", "make_penalty", "PenaltyLike"]

def moment_dtype(t: Tensor) -> torch.dtype:
    """Dtype of the translation moments: float64 (their rounding, times ``rho``, is the shift's
    error: in float32 it kept weakly unbalanced problems from converging), float32 on MPS."""
    return torch.float32 if t.device.type == "mps" else torch.float64


# KL potentials are capped at KL_CAP * rho: exp(-KL_CAP) is below float64 resolution, and the
# cap keeps a point with no finite-cost partner (HK truncation) at a finite potential.
KL_CAP = 60.0


class Penalty:
    """Base class of marginal penalties."""

    name: str = "penalty"
    rho: float = math.inf
    #: Half-width of the box ``|f| <= box`` on which the dual term is linear (``-phi*(-f) = f``):
    #: ``inf`` for balanced, ``rho`` for TV, ``None`` otherwise. Two such sides have a closed-form
    #: translation step (the dual is linear along ``(f + lam, g - lam)`` up to the box).
    shift_box: float | None = None

    @property
    def is_balanced(self) -> bool:
        return False

    def aprox(self, s: Tensor, eps: float) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dual(self, f: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def primal(self, m: Tensor, a: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    #: Interval ``(lo, hi)`` of potentials where the dual term ``-phi*(-f)`` is finite, and
    #: whether its ends are open (excluded).
    dual_domain: tuple[float, float] = (-math.inf, math.inf)
    dual_domain_open: bool = False

    def dual_derivatives(self, f: Tensor) -> tuple[Tensor, Tensor] | None:
        """First and second derivatives of the dual term ``-phi*(-f)``, elementwise, or ``None``.

        Used by the loop's translation step where no closed form exists (a line search along
        ``(f + lam, g - lam)``, on which the entropic term is constant).
        """
        return None

    def first_order_gap(self, m: Tensor, a: Tensor, f: Tensor, slack: float = 0.0) -> Tensor | None:
        """L1 distance of a marginal ``m: (B, N)`` to the set ``a * d(-phi*(-.))(f)`` its first-order
        optimality condition asks for (``m = a`` balanced, ``m = a exp(-f/rho)`` KL, ...) -> ``(B,)``,
        or ``None`` when the penalty gives no derivative (the condition cannot be checked).

        Entries with ``a_i = 0`` count ``m_i``; non-finite potentials (a point with no partner)
        count where their marginal is not 0. ``slack``: potentials within it of a kink of the dual
        term (TV's box edges) may take the kink's subdifferential (rounding of the potentials).
        """
        d = self.dual_derivatives(f)
        if d is None:
            return None
        target = torch.where(a > 0, a * torch.nan_to_num(d[0], nan=0.0), torch.zeros_like(a))
        return (m - target).abs().sum(-1)

    def shift_moment(self, f: Tensor, a: Tensor) -> tuple[Tensor, float] | None:
        """``(L, r)`` with ``sum_i a_i dual'(f_i + lam) = exp(L - r lam)`` for every shift ``lam``,
        or ``None`` when the dual term has no such form (then the loop does not shift).

        Used by the translation-invariant step of the loop (Sejourne, Vialard, Peyre,
        "Faster unbalanced optimal transport: translation invariant Sinkhorn", AISTATS 2022).
        """
        return None

    def shift_moment_fn(self, a: Tensor) -> Callable[[Tensor], Tensor]:
        """``f -> L`` of :meth:`shift_moment` for fixed weights ``a: (B, N)``; the loop asks
        for it once per solve, so a penalty may precompute what depends on ``a`` alone."""
        return lambda f: self.shift_moment(f, a)[0]  # type: ignore[index]

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.rho == other.rho  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.rho))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rho={self.rho:g})"


class Balanced(Penalty):
    """Hard constraint ``pi 1 = a`` (``rho = inf``): the classic balanced problem."""

    name = "balanced"
    rho = math.inf
    shift_box = math.inf

    @property
    def is_balanced(self) -> bool:
        return True

    def aprox(self, s: Tensor, eps: float) -> Tensor:
        return s

    def dual(self, f: Tensor) -> Tensor:
        return f

    def primal(self, m: Tensor, a: Tensor) -> Tensor:
        return torch.zeros(m.shape[:-1], dtype=m.dtype, device=m.device)

    def shift_moment(self, f: Tensor, a: Tensor) -> tuple[Tensor, float]:
        return a.to(moment_dtype(a)).sum(-1).log(), 0.0

    def dual_derivatives(self, f: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(f), torch.zeros_like(f)

    def __repr__(self) -> str:
        return "Balanced()"


class KL(Penalty):
    """``rho * KL(m | a) = rho * sum(m log(m / a) - m + a)``.

    Update: ``f = s / (1 + eps / rho)`` (the damping of GeomLoss; Chizat et al. 2018).
    Dual term: ``rho * (1 - exp(-f / rho))``.
    """

    name = "kl"

    def __init__(self, rho: float) -> None:
        self.rho = _check_rho(rho, "KL")

    def aprox(self, s: Tensor, eps: float) -> Tensor:
        return (s / (1 + eps / self.rho)).clamp(max=KL_CAP * self.rho)

    def dual(self, f: Tensor) -> Tensor:
        return -self.rho * torch.expm1(-f / self.rho)

    def primal(self, m: Tensor, a: Tensor) -> Tensor:
        pos = m > 0
        m_safe = torch.where(pos, m, torch.ones_like(m))
        a_safe = torch.where(pos, a, torch.ones_like(a))
        mlogm = torch.where(pos, m * torch.log(m_safe / a_safe), torch.zeros_like(m))
        return self.rho * (mlogm - m + a).sum(-1)

    def shift_moment(self, f: Tensor, a: Tensor) -> tuple[Tensor, float]:
        return self.shift_moment_fn(a)(f), 1.0 / self.rho

    def dual_derivatives(self, f: Tensor) -> tuple[Tensor, Tensor]:
        e = torch.exp(-f / self.rho)
        return e, e / -self.rho

    def shift_moment_fn(self, a: Tensor) -> Callable[[Tensor], Tensor]:
        # sum_i a_i exp(-(f_i + lam)/rho) = exp(L - lam/rho), L = logsumexp_i(log a_i - f_i/rho).
        r = -1.0 / self.rho
        dt = moment_dtype(a)
        a = a.to(dt)
        if bool((a > 0).all()):  # the common case: log(a) once, one fused logsumexp per call
            log_a = a.log()
            return lambda f: torch.logsumexp(torch.add(log_a, f.to(dt), alpha=r), dim=-1)
        # Zero weights: a weighted sum shifted by the largest -f_i/rho over a_i > 0, not a
        # logsumexp of log(0) = -inf (exp(-inf) is a slow path of the CPU kernels); exponents
        # are floored where a term is far below float resolution anyway.
        off = torch.where(a > 0, torch.zeros_like(a), torch.full_like(a, -math.inf))
        floor = -80.0 if a.dtype in (torch.float32, torch.float16, torch.bfloat16) else -700.0

        def moment(f: Tensor) -> Tensor:
            z = torch.mul(f.to(dt), r)
            m = torch.add(z, off).amax(-1, keepdim=True)
            m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
            s = (a * torch.exp(torch.clamp_min(z - m, floor))).sum(-1)
            return s.log() + m.squeeze(-1)

        return moment


class TV(Penalty):
    """``rho * |m - a|_1``: mass is created or destroyed at a flat price ``rho``.

    Update: ``f = clamp(s, -rho, rho)`` (Sejourne et al. 2019, Table 1). Dual term: ``f``.
    """

    name = "tv"

    def __init__(self, rho: float) -> None:
        self.rho = _check_rho(rho, "TV")
        self.shift_box = self.rho
        self.dual_domain = (-self.rho, self.rho)

    def dual_derivatives(self, f: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(f), torch.zeros_like(f)

    def aprox(self, s: Tensor, eps: float) -> Tensor:
        return s.clamp(min=-self.rho, max=self.rho)

    def first_order_gap(self, m: Tensor, a: Tensor, f: Tensor, slack: float = 0.0) -> Tensor:
        # Subdifferential of the dual term f on the box |f| <= rho: {1} inside, [0, 1] at f = rho
        # (mass may be destroyed: m <= a), [1, inf) at f = -rho (mass may be created: m >= a).
        edge = self.rho - slack - 8 * torch.finfo(f.dtype).eps * self.rho
        top, bottom = f >= edge, f <= -edge
        gap = torch.where(top, (m - a).clamp_min(0), torch.where(bottom, (a - m).clamp_min(0), (m - a).abs()))
        return gap.sum(-1)

    def dual(self, f: Tensor) -> Tensor:
        return f

    def primal(self, m: Tensor, a: Tensor) -> Tensor:
        return self.rho * (m - a).abs().sum(-1)


def _check_rho(rho: float, who: str) -> float:
    if isinstance(rho, torch.Tensor):
        rho = float(rho)
    if not isinstance(rho, (int, float)) or math.isnan(rho) or rho <= 0:
        raise ValueError(
            f"{who} penalty strength rho must be a positive number (or inf for a balanced "
            f"side), got {rho!r}. With GeomLoss conventions rho = reach**p, so reach must be > 0."
        )
    return float(rho)


PenaltyLike = Union[str, Penalty, None]
_NAMES = {"kl": KL, "tv": TV, "balanced": Balanced}


def make_penalty(penalty: PenaltyLike, rho: float | None) -> Penalty:
    """Build one side's penalty from a name (``"kl"``, ``"tv"``, ``"balanced"``) and a strength.

    ``rho=None`` or ``inf`` gives :class:`Balanced` whatever the name.
    """
    if isinstance(penalty, Penalty):
        return penalty
    if penalty is None:
        penalty = "kl"
    if not isinstance(penalty, str) or penalty.lower() not in _NAMES:
        raise ValueError(
            f"unknown marginal penalty {penalty!r}: use one of {sorted(_NAMES)} or a "
            "torchuot.penalties.Penalty instance."
        )
    name = penalty.lower()
    if name == "balanced" or rho is None or (isinstance(rho, float) and math.isinf(rho)):
        return Balanced()
    return _NAMES[name](rho)


# ---------------------------------------------------------------------------- reverse KL (Burg)
# Newton iterations of the reverse-KL prox: quadratic convergence from a bracket; 60 is a cap
# that bisection alone would meet to float64 resolution on any bracket of length < 2**10.
_BURG_MAX_NEWTON = 60


class ReverseKL(Penalty):
    """Reverse KL (Burg) divergence ``rho * KL(a | m) = rho * sum(a (m/a - 1 - log(m/a)))``.

    Entropy ``phi(x) = rho (x - 1 - log x)``: deleting a prescribed mode (``m_i -> 0`` where
    ``a_i > 0``) costs infinitely much, while creating mass costs at most ``rho`` per unit
    (``phi'(x) -> rho``). Its conjugate is ``phi*(q) = -rho log(1 - q / rho)`` for ``q < rho``.

    Update (Sejourne et al. 2019, Prop. 6, ``f = -aprox_{phi*}(-s)``): the optimality condition
    of ``min_q eps exp((-s - q)/eps) + phi*(q)`` is ``exp((f - s)/eps) = rho / (rho + f)`` for
    ``q = -f > -rho``, i.e. the marginal ratio ``m/a = exp((f - s)/eps)`` equals ``rho/(rho + f)``.
    With ``u = log(1 + f/rho)`` this is the root of the convex increasing scalar equation

        k(u) = u + (rho/eps) expm1(u) - s/eps = 0        (slope >= 1),

    (a Lambert-W equation, ``rho + f = eps W((rho/eps) exp((rho + s)/eps))``; torch has no W),
    solved entrywise by a safeguarded Newton method in the bracket
    ``[max(s/eps, log1p(s/rho)), 0]`` (``s < 0``) or ``[0, min(s/eps, log1p(s/rho))]`` (``s >= 0``),
    falling back to bisection whenever a Newton step leaves the bracket. The root is found
    without autograd; one differentiable Newton step from it carries the implicit-function
    gradient ``df/ds = (1/eps) / (1/eps + 1/(rho + f))`` when ``grad="unroll"``.

    Dual term: ``-phi*(-f) = rho log(1 + f / rho)`` (``-inf`` for ``f <= -rho``).
    As ``rho -> inf`` the update tends to ``f = s`` (balanced), like KL's.
    """

    name = "reverse_kl"

    dual_domain_open = True

    def __init__(self, rho: float) -> None:
        self.rho = _check_rho(rho, "ReverseKL")
        self.dual_domain = (-self.rho, math.inf)

    def dual_derivatives(self, f: Tensor) -> tuple[Tensor, Tensor]:
        t = 1.0 / (1.0 + f / self.rho)  # d/df rho log(1 + f/rho)
        return t, t * t / -self.rho

    def aprox(self, s: Tensor, eps: float) -> Tensor:
        rho = self.rho
        with torch.no_grad():
            u = _burg_root(s.detach(), eps, rho)
            f0 = rho * torch.expm1(u)
        if not s.requires_grad:
            return f0
        # One Newton step in f from the root: value unchanged, gradient = implicit derivative.
        h = (f0 - s) / eps + torch.log1p(f0 / rho)
        dh = 1.0 / eps + 1.0 / (rho + f0)
        return f0 - h / dh

    def dual(self, f: Tensor) -> Tensor:
        # -inf (not NaN) outside the conjugate's domain f > -rho, e.g. after an over-relaxed step.
        t = f / self.rho
        ok = t > -1
        return torch.where(ok, self.rho * torch.log1p(torch.where(ok, t, torch.zeros_like(t))),
                           torch.full_like(f, -math.inf))

    def primal(self, m: Tensor, a: Tensor) -> Tensor:
        pos_a = a > 0
        pos_m = m > 0
        ok = pos_a & pos_m
        ratio = torch.where(ok, m, torch.ones_like(m)) / torch.where(ok, a, torch.ones_like(a))
        term = torch.where(ok, a * (ratio - 1 - torch.log(ratio)), m)  # a = 0: the term is m
        # A prescribed mode that receives no mass costs infinitely much.
        term = torch.where(pos_a & ~pos_m, torch.full_like(m, math.inf), term)
        return self.rho * term.sum(-1)


def _burg_root(s: Tensor, eps: float, rho: float) -> Tensor:
    """Root ``u`` of ``u + (rho/eps) expm1(u) = s/eps`` entrywise (see :class:`ReverseKL`)."""
    s_in = s
    finite = torch.isfinite(s_in)
    s = torch.where(finite, s_in, torch.zeros_like(s_in))
    c = s / eps
    r = rho / eps
    # log1p(s/rho) is a bound only where s > -rho; elsewhere s/eps is the tighter one.
    l1p = torch.log1p(torch.clamp(s / rho, min=-1.0))
    neg = s < 0
    lo = torch.where(neg, torch.maximum(c, l1p), torch.zeros_like(s))
    hi = torch.where(neg, torch.zeros_like(s), torch.minimum(c, l1p))
    u = hi.clone()  # Newton from the right of a convex increasing function is monotone
    tiny = 4 * torch.finfo(s.dtype).eps
    for _ in range(_BURG_MAX_NEWTON):
        k = u + r * torch.expm1(u) - c
        lo = torch.where(k < 0, u, lo)
        hi = torch.where(k > 0, u, hi)
        step = k / (1.0 + r * torch.exp(u))
        u_new = u - step
        bad = ~((u_new >= lo) & (u_new <= hi)) | ~torch.isfinite(u_new)
        u_new = torch.where(bad, 0.5 * (lo + hi), u_new)
        # Converged when the step is at u's resolution or the residual at that of its terms.
        done = ((u_new - u).abs() <= tiny * (1.0 + u.abs())) | (
            k.abs() <= tiny * (u.abs() + r * torch.exp(u) + c.abs() + r))
        u = torch.where(k == 0, u, u_new)
        if bool(done.all()):
            break
    # s = +inf (no finite-cost partner): f = +inf, an infinite (infeasible) Burg problem;
    # s = -inf: f -> -rho.
    return torch.where(finite, u, torch.where(s_in > 0, s_in, torch.full_like(s_in, -math.inf)))


_NAMES["reverse_kl"] = ReverseKL
_NAMES["burg"] = ReverseKL
