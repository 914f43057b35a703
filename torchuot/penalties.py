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
from typing import Union

import torch

from ._typing import Tensor

__all__ = ["Penalty", "KL", "TV", "Balanced", "make_penalty", "PenaltyLike"]

# KL potentials are capped at KL_CAP * rho: exp(-KL_CAP) is below float64 resolution, and the
# cap keeps a point with no finite-cost partner (HK truncation) at a finite potential.
KL_CAP = 60.0


class Penalty:
    """Base class of marginal penalties."""

    name: str = "penalty"
    rho: float = math.inf

    @property
    def is_balanced(self) -> bool:
        return False

    def aprox(self, s: Tensor, eps: float) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def dual(self, f: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def primal(self, m: Tensor, a: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

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

    @property
    def is_balanced(self) -> bool:
        return True

    def aprox(self, s: Tensor, eps: float) -> Tensor:
        return s

    def dual(self, f: Tensor) -> Tensor:
        return f

    def primal(self, m: Tensor, a: Tensor) -> Tensor:
        return torch.zeros(m.shape[:-1], dtype=m.dtype, device=m.device)

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


class TV(Penalty):
    """``rho * |m - a|_1``: mass is created or destroyed at a flat price ``rho``.

    Update: ``f = clamp(s, -rho, rho)`` (Sejourne et al. 2019, Table 1). Dual term: ``f``.
    """

    name = "tv"

    def __init__(self, rho: float) -> None:
        self.rho = _check_rho(rho, "TV")

    def aprox(self, s: Tensor, eps: float) -> Tensor:
        return s.clamp(min=-self.rho, max=self.rho)

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
            f"unknown marginal penalty {penalty!r}: use 'kl', 'tv', 'balanced' or a "
            "torchuot.penalties.Penalty instance."
        )
    name = penalty.lower()
    if name == "balanced" or rho is None or (isinstance(rho, float) and math.isinf(rho)):
        return Balanced()
    return _NAMES[name](rho)
