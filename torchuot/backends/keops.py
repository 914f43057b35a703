"""Online backend: KeOps ``LazyTensor`` log-sum-exp reductions, nothing of size ``N x M`` stored.

Each soft-min is one KeOps reduction ``log sum_j exp(h_j - C(x_i, y_j) / eps)`` compiled from
a symbolic formula of the cost (GeomLoss's ``online`` backend; Feydy's thesis, Sec. 3.3.2):

* ``|x - y|^2 / 2``: ``SqDist(x, y) / 2``;
* ``|x - y|^p / p``: ``exp(log(SqDist(x, y)) p / 2) / p``;
* HK cone cost: ``-2 log cos(|x - y| / kappa)`` where ``|x - y| / kappa <= pi / 2`` and
  ``-inf`` in the exponent beyond (``IfElse`` on ``pi / 2 - |x - y| / kappa``).

User callable costs cannot be turned into KeOps formulas: they raise a ``ValueError`` here
(``resolve_backend("auto")`` sends them to the chunked backend).

Gradients use an explicit backward (:class:`_KeOpsLogSumExp`): for ``L_i = log sum_j
exp(h_j - C_ij / eps)`` and ``P_ij = exp(h_j - C_ij / eps - L_i)``,
``dL_i/dh_j = P_ij`` and ``dL_i/dx_i = -(1/eps) sum_j P_ij grad_x C_ij``, with
``grad_x C_ij = w(|x_i - y_j|^2) (x_i - y_j)`` written as a KeOps formula that is finite at
``x_i = y_j`` (KeOps' own derivative of ``sqrt`` is not). These are two more reductions, so
the envelope-theorem gradient also needs no ``N x M`` memory.

KeOps compiles each formula once per dtype and dimension on first use and caches it in its
default cache folder (``~/.cache/keops*``); its console messages are silenced
(``pykeops.set_verbose(False)`` around our calls, restored afterwards, and the import-time
banner redirected to ``logging`` at DEBUG level).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import sys
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from .._typing import Tensor
from ..costs import Cost, HKConeCost, PowerCost, SquaredEuclidean
from .chunked import ChunkedBackend
from .tensorized import safe_log

__all__ = ["KeOpsBackend", "keops_status", "SUPPORTED_COSTS"]

logger = logging.getLogger("torchuot")

SUPPORTED_COSTS = (
    "SquaredEuclidean (|x-y|^2/2, the default), PowerCost(p) (|x-y|^p/p) and "
    "HKConeCost(kappa) (cost='hk')"
)

# Stand-in for -inf inside KeOps formulas (KeOps' max-shifted log-sum-exp turns a row of
# -inf into NaN); rows whose result falls below -_BIG / 2 are mapped back to -inf.
_BIG = 1e30

_STATUS: dict[str, Any] = {}


def _import_pykeops() -> Any:
    """Import pykeops quietly: its import-time banner goes to ``logging`` (DEBUG)."""
    if sys.modules.get("pykeops") is not None:
        return sys.modules["pykeops"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        import pykeops  # noqa: F401  (optional dependency)
        import pykeops.torch  # noqa: F401
    text = buf.getvalue().strip()
    if text:
        logger.debug("pykeops import: %s", text)
    return sys.modules["pykeops"]


@contextlib.contextmanager
def _quiet() -> Iterator[Any]:
    """``pykeops`` with its console messages (compilation notices) off, restored afterwards."""
    pykeops = _import_pykeops()
    old = getattr(pykeops, "verbose", True)
    pykeops.set_verbose(False)
    try:
        yield pykeops
    finally:
        pykeops.set_verbose(old)


def keops_status(dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> tuple[bool, str]:
    """Whether KeOps can compile and run a reduction here, and why not.

    Runs a tiny log-sum-exp once per ``(dtype, device)`` (the result is cached for the
    process; the compiled formula stays in KeOps' own cache folder).

    Returns:
        ``(ok, message)``; ``message`` is empty when ``ok``.
    """
    key = f"{dtype}/{torch.device(device).type}"
    if key in _STATUS:
        return _STATUS[key]
    try:
        with _quiet():
            from pykeops.torch import LazyTensor

            x = torch.zeros(2, 1, 1, dtype=dtype, device=device)
            out = (-LazyTensor(x).sqdist(LazyTensor(x.view(1, 2, 1)))).logsumexp(dim=1)
            if not bool(torch.isfinite(out).all()):
                raise RuntimeError("the test reduction returned non-finite values")
        status = (True, "")
    except ImportError as err:
        status = (False, f"pykeops is not installed ({err}); install it with `pip install pykeops`")
    except Exception as err:  # noqa: BLE001  (any compiler/runtime failure is a "no")
        msg = str(err).strip().splitlines()
        status = (False, f"pykeops could not compile or run a formula ({type(err).__name__}: "
                         f"{msg[-1] if msg else ''}); a working C++ compiler (and nvcc for CUDA) is needed")
    _STATUS[key] = status
    return status


# ---------------------------------------------------------------------------- formulas
def _lazy(t: Tensor, axis: int) -> Any:
    """``t: (B, n, k)`` as a KeOps variable indexed by ``i`` (axis 0) or ``j`` (axis 1)."""
    from pykeops.torch import LazyTensor

    return LazyTensor(t.unsqueeze(2) if axis == 0 else t.unsqueeze(1))


#: Floor of ``cos`` in the HK cone cost's formulas (``log`` of it stays finite at the cone's edge).
_COS_FLOOR = 1e-30


def _half_pi_below(dtype: str) -> float:
    """The largest value below ``pi / 2`` in the LazyTensor's dtype (``"float32"`` / ``"float64"``):
    ``c - t >= 0`` is then ``t < pi / 2`` as :class:`~torchuot.costs.HKConeCost` computes it. With
    ``pi / 2`` itself, float32 rounds it up (1.5707964 > pi / 2), and ``t`` equal to that value has
    ``cos(t) < 0``: ``log`` gave NaN for such pairs (about 40 of the 4e8 pairs at N = 2e4)."""
    np_dtype = np.float32 if dtype == "float32" else np.float64
    half_pi = np_dtype(np.pi / 2)
    return float(np.nextafter(half_pi, np_dtype(0)))


def _neg_cost_over_eps(cost: Cost, X: Any, Y: Any, eps: float) -> tuple[Any, Any]:
    """``-C_ij / eps`` and a condition ``>= 0`` where the cost is finite (or ``None``)."""
    d2 = X.sqdist(Y)
    if isinstance(cost, HKConeCost):
        t = d2.sqrt() * (1.0 / cost.kappa)
        inside = _half_pi_below(X.dtype) - t  # >= 0 iff t < pi/2 in the dtype (as HKConeCost)
        t_in = inside.ifelse(t, 0.0)
        # cos(t) > 0 inside; the floor keeps a rounded cos near the cone's edge from log(<= 0) = NaN.
        return ((t_in.cos() - _COS_FLOOR).relu() + _COS_FLOOR).log() * (2.0 / eps), inside
    p = cost.p
    if p == 2.0:
        return d2 * (-0.5 / eps), None
    # exp(log) rather than KeOps' Powf, which loses ~1e-8 relative accuracy in float64.
    return (d2.log() * (p / 2)).exp() * (-1.0 / (p * eps)), None


def _grad_weight(cost: Cost, d2: Any) -> Any:
    """``w(d2)`` with ``grad_x C(x, y) = w(|x - y|^2) (x - y)``, finite at ``x = y``."""
    if isinstance(cost, HKConeCost):
        k2 = cost.kappa**2
        t = d2.sqrt() * (1.0 / cost.kappa)
        inside = _half_pi_below(d2.dtype) - t
        t_in = inside.ifelse(t, 0.0) + (-d2).ifelse(1.0, 0.0)  # no 0/0 at x = y
        cos_in = (t_in.cos() - _COS_FLOOR).relu() + _COS_FLOOR
        w = (t_in.sin() / (cos_in * t_in)) * (2.0 / k2)
        w = (-d2).ifelse(2.0 / k2, w)
        return inside.ifelse(w, 0.0)
    p = cost.p
    if p == 2.0:
        return None  # w = 1
    safe = d2 + (-d2).ifelse(1.0, 0.0)
    return (-d2).ifelse(0.0, (safe.log() * ((p - 2) / 2)).exp())


def _exponent(cost: Cost, X: Any, Y: Any, H: Any, eps: float) -> Any:
    """``h_j - C_ij / eps`` with ``-_BIG`` where the cost is infinite."""
    negc, inside = _neg_cost_over_eps(cost, X, Y, eps)
    E = H + negc
    if inside is not None:
        E = inside.ifelse(E, -_BIG)
    return E


def _finite_h(h: Tensor) -> Tensor:
    return torch.where(torch.isfinite(h), h, torch.full_like(h, -_BIG)).contiguous()


def _lse(cost: Cost, x: Tensor, y: Tensor, h: Tensor, eps: float) -> Tensor:
    """``L_i = log sum_j exp(h_j - C(x_i, y_j)/eps)`` -> ``(B, N)``; ``-inf`` for empty rows."""
    with _quiet():
        X, Y = _lazy(x.contiguous(), 0), _lazy(y.contiguous(), 1)
        H = _lazy(_finite_h(h).unsqueeze(-1), 1)
        L = _exponent(cost, X, Y, H, eps).logsumexp(dim=2).squeeze(-1)
    return torch.where(L < -_BIG / 2, torch.full_like(L, -math.inf), L)


class _KeOpsLogSumExp(torch.autograd.Function):
    """``L = lse_j(h_j - C(x_i, y_j)/eps)`` with a backward made of two KeOps reductions."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, h: Tensor, eps: float, cost: Cost) -> Tensor:  # noqa: D102
        L = _lse(cost, x.detach(), y.detach(), h.detach(), eps)
        ctx.save_for_backward(x, y, h, L)
        ctx.eps, ctx.cost = eps, cost
        return L

    @staticmethod
    def backward(ctx, u: Tensor):  # noqa: D102
        x, y, h, L = ctx.saved_tensors
        eps, cost = ctx.eps, ctx.cost
        need_x, need_y, need_h = ctx.needs_input_grad[:3]
        valid = torch.isfinite(L)
        u0 = torch.where(valid, u, torch.zeros_like(u)).contiguous()
        L0 = torch.where(valid, L, torch.zeros_like(L)).contiguous()
        gx = gy = gh = None
        with _quiet():
            X, Y = _lazy(x.detach().contiguous(), 0), _lazy(y.detach().contiguous(), 1)
            H = _lazy(_finite_h(h.detach()).unsqueeze(-1), 1)
            P = (_exponent(cost, X, Y, H, eps) - _lazy(L0.unsqueeze(-1), 0)).exp()  # P_ij
            diff = X - Y
            w = _grad_weight(cost, X.sqdist(Y))
            G = diff if w is None else w * diff  # grad_x C_ij
            if need_x:
                gx = -(u0.unsqueeze(-1) / eps) * (P * G).sum(dim=2)
            if need_y or need_h:
                U = _lazy(u0.unsqueeze(-1), 0)
                UP = U * P
                if need_h:
                    gh = UP.sum(dim=1).squeeze(-1)
                if need_y:
                    gy = (UP * G).sum(dim=1) / eps
        return gx, gy, gh, None, None


# ---------------------------------------------------------------------------- backend
class KeOpsBackend:
    """KeOps online backend (``backend="online"``): ``O(N + M)`` memory.

    Args:
        x: ``(B, N, D)`` source points. y: ``(B, M, D)`` target points.
        a: ``(B, N)`` source weights. b: ``(B, M)`` target weights.
        cost: one of the built-in costs (see :data:`SUPPORTED_COSTS`).

    Raises:
        ValueError: for a user callable (or other non built-in) cost.
        ImportError / RuntimeError: if pykeops is missing or cannot compile.
    """

    name = "online"

    def __init__(self, x: Tensor, y: Tensor, a: Tensor, b: Tensor, cost: Cost) -> None:
        if type(cost) not in (SquaredEuclidean, PowerCost, HKConeCost):
            raise ValueError(
                f"backend='online' (KeOps) supports the costs {SUPPORTED_COSTS}; got {cost!r}. "
                "A user callable cost runs on backend='chunked' (memory-light) or 'tensorized'."
            )
        ok, why = keops_status(x.dtype, x.device)
        if not ok:
            err = ImportError if "not installed" in why else RuntimeError
            raise err(f"backend='online' is unavailable: {why}. Use backend='chunked' instead.")
        self.x, self.y, self.a, self.b, self.cost = x, y, a, b, cost
        self.log_a = safe_log(a)
        self.log_b = safe_log(b)
        # Plan rows, the dense plan of small problems and <pi, C> reuse the torch row blocks.
        self._blocks = ChunkedBackend(x, y, a, b, cost)

    @property
    def C(self) -> Tensor:
        """The online backend never forms the cost matrix."""
        raise AttributeError(
            "the online (KeOps) backend never forms the N x M cost matrix; use "
            "backend='tensorized' to get it, or the plan products of the result."
        )

    # ------------------------------------------------------------------ soft-min (loop)
    def softmin_x(self, eps: float, g: Tensor) -> Tensor:
        """``-eps log sum_j b_j exp((g_j - C_ij)/eps)`` -> ``(B, N)`` (no autograd)."""
        with torch.no_grad():
            return -eps * _lse(self.cost, self.x.detach(), self.y.detach(), self.log_b + g / eps, eps)

    def softmin_y(self, eps: float, f: Tensor) -> Tensor:
        """``-eps log sum_i a_i exp((f_i - C_ij)/eps)`` -> ``(B, M)`` (no autograd)."""
        with torch.no_grad():
            return -eps * _lse(self.cost, self.y.detach(), self.x.detach(), self.log_a + f / eps, eps)

    def softmin_x_autograd(self, eps: float, g: Tensor) -> Tensor:
        """Soft-min ``(B, N)``, differentiable w.r.t. ``x, y, b`` and ``g`` (KeOps backward)."""
        return -eps * _KeOpsLogSumExp.apply(self.x, self.y, self.log_b + g / eps, eps, self.cost)

    def softmin_y_autograd(self, eps: float, f: Tensor) -> Tensor:
        """Soft-min ``(B, M)``, differentiable w.r.t. ``x, y, a`` and ``f`` (costs are symmetric)."""
        return -eps * _KeOpsLogSumExp.apply(self.y, self.x, self.log_a + f / eps, eps, self.cost)

    # ------------------------------------------------------------------ plan access
    def apply(self, eps: float, f: Tensor, g: Tensor, v: Tensor, axis: int) -> Tensor:
        """Plan-vector product (no autograd): ``axis=1``: ``pi @ v``, ``v: (B, M, K)`` -> ``(B, N, K)``;
        ``axis=0``: ``pi^T @ v``, ``v: (B, N, K)`` -> ``(B, M, K)``.

        ``(pi v)_i = m_i * sum_j softmax_j(h_j - C_ij/eps) v_j`` with the row mass
        ``m_i = a_i exp(f_i/eps + lse_j(h_j - C_ij/eps))``, ``h = log b + g/eps``.
        """
        with torch.no_grad():
            f, g, v = f.detach(), g.detach(), v.detach()
            if axis == 1:
                pts, other, log_w, h_other, log_self, pot = self.x, self.y, self.log_b, g, self.log_a, f
            else:
                pts, other, log_w, h_other, log_self, pot = self.y, self.x, self.log_a, f, self.log_b, g
            pts, other = pts.detach().contiguous(), other.detach().contiguous()
            h = log_w + h_other / eps
            L = _lse(self.cost, pts, other, h, eps)
            mass = torch.exp(log_self + pot / eps + L)
            with _quiet():
                X, Y = _lazy(pts, 0), _lazy(other, 1)
                H = _lazy(_finite_h(h).unsqueeze(-1), 1)
                V = _lazy(v.contiguous(), 1)
                avg = _exponent(self.cost, X, Y, H, eps).sumsoftmaxweight(V, dim=2)
            avg = torch.where(torch.isfinite(L).unsqueeze(-1), avg, torch.zeros_like(avg))
            return mass.unsqueeze(-1) * avg

    def plan(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """The dense plan ``(B, N, M)`` (small problems only)."""
        return self._blocks.plan(eps, f, g)

    def plan_rows(self, eps: float, f: Tensor, g: Tensor, rows: Tensor) -> Tensor:
        """Rows ``rows: (B, k)`` of the plan -> ``(B, k, M)`` (torch row blocks)."""
        return self._blocks.plan_rows(eps, f, g, rows)

    def transport_cost(self, eps: float, f: Tensor, g: Tensor) -> Tensor:
        """``<pi, C> -> (B,)`` (torch row blocks)."""
        return self._blocks.transport_cost(eps, f, g)
