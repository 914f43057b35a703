"""Backends: how a soft-min / kernel product is computed. The Sinkhorn loop is shared.

* ``"tensorized"``: dense ``B x N x M`` cost matrix and a stabilised kernel cache (fastest
  while it fits in memory);
* ``"online"``: KeOps ``LazyTensor`` reductions, ``O(N + M)`` memory (needs pykeops and a
  working compiler; built-in costs only);
* ``"chunked"``: pure torch, row blocks of at most 64 MiB, ``O(block x M)`` memory, any cost;
* :class:`GridPairsBackend` (``grid.py``): batches of pairs of images on one pixel grid, used by
  :func:`torchuot.images.pairwise_distances` (not selectable by name: it needs a grid);
* ``"multiscale"``: coarse-to-fine annealing on cluster centroids, then block-sparse soft-mins
  over the cluster pairs kept by a kernel-truncation test (``D <= 3``, built-in costs; KeOps
  ``ranges`` reductions, or pure-torch tiles without a compiler); ``Multiscale(...)`` sets its
  options (``truncate``, cluster sides, ``use_keops``);
* ``"auto"`` (default): ``"tensorized"`` when one ``B x N x M`` matrix of the inputs' dtype
  takes at most :data:`AUTO_DENSE_MAX_BYTES` (512 MiB: ``B N M <= 2**27`` in float32, e.g.
  ``N = M = 11,585``; ``2**26`` in float64, ``N = M = 8,192``), else ``"multiscale"`` for a
  built-in cost in ``D <= 3`` (it needs no compiler), else ``"online"`` if KeOps compiles here
  and the cost is built-in, else ``"chunked"`` (with a warning when KeOps was wanted but is
  unavailable).

``resolve_backend`` is the one place where a backend is chosen; the choice is recorded in the
solver's result (``result.backend``). :class:`Backend` (``base.py``) is the protocol every backend
implements; :data:`PointCloudBackend` names the concrete classes ``resolve_backend`` builds and
:data:`BackendSpec` what it accepts (a name or a :class:`Multiscale` options object).
"""

from __future__ import annotations

import warnings

from .._typing import Tensor
from ..costs import Cost, HKConeCost, PowerCost, SquaredEuclidean
from .base import Backend
from .chunked import ChunkedBackend
from .grid import GridPairsBackend
from .keops import KeOpsBackend, keops_status
from .multiscale import Multiscale, MultiscaleBackend, cluster_tools_available
from .tensorized import TensorizedBackend, safe_log, safe_logsumexp

__all__ = [
    "Backend",
    "BackendSpec",
    "PointCloudBackend",
    "TensorizedBackend",
    "ChunkedBackend",
    "KeOpsBackend",
    "GridPairsBackend",
    "MultiscaleBackend",
    "Multiscale",
    "resolve_backend",
    "auto_backend_name",
    "keops_status",
    "BACKENDS",
    "AUTO_DENSE_MAX_BYTES",
    "PLAN_MAX_ENTRIES",
    "safe_log",
    "safe_logsumexp",
]

BACKENDS = ("auto", "tensorized", "online", "chunked", "multiscale")

#: ``"auto"`` stays dense while one ``B x N x M`` matrix takes at most this many bytes.
AUTO_DENSE_MAX_BYTES = 2**29

#: ``UOTResult.plan()`` refuses on the online / chunked backends above this many entries.
PLAN_MAX_ENTRIES = 2**24

#: The point-cloud backends :func:`resolve_backend` builds (each implements :class:`Backend`;
#: :class:`GridPairsBackend` is built by ``UOTProblem.on_grid`` instead).
PointCloudBackend = TensorizedBackend | ChunkedBackend | KeOpsBackend | MultiscaleBackend

#: What ``backend=`` accepts: one of :data:`BACKENDS` or a :class:`Multiscale` options object.
BackendSpec = str | Multiscale


def auto_backend_name(x: Tensor, y: Tensor, cost: Cost) -> tuple[str, str]:
    """The backend ``"auto"`` picks for ``x: (B, N, D)``, ``y: (B, M, D)`` and ``cost``.

    Returns:
        ``(name, note)``: ``note`` is non-empty when KeOps was wanted but is unavailable.
    """
    entries = x.shape[0] * x.shape[1] * y.shape[1]
    if entries * x.element_size() <= AUTO_DENSE_MAX_BYTES:
        return "tensorized", ""
    if type(cost) not in (SquaredEuclidean, PowerCost, HKConeCost):
        return "chunked", ""  # no KeOps formula for a user callable
    if x.shape[-1] <= 3 and cluster_tools_available():
        return "multiscale", ""  # truncated kernel: KeOps ranges or torch tiles, no compiler needed
    ok, why = keops_status(x.dtype, x.device)
    return ("online", "") if ok else ("chunked", why)


def resolve_backend(backend: BackendSpec, x: Tensor, y: Tensor, a: Tensor, b: Tensor, cost: Cost
                    ) -> PointCloudBackend:
    """Build the backend named by ``backend`` (``"auto"`` picks one) for this problem.

    Args:
        backend: one of :data:`BACKENDS`, or a :class:`Multiscale` options object.
        x: ``(B, N, D)``, y: ``(B, M, D)`` points; a: ``(B, N)``, b: ``(B, M)`` weights.
        cost: the ground cost.

    Raises:
        ValueError: unknown backend name, or a callable cost on ``"online"``.
        ImportError / RuntimeError: ``"online"`` asked for explicitly but pykeops is
            missing / cannot compile.
    """
    if isinstance(backend, Multiscale):
        return backend.build(x, y, a, b, cost)
    if not isinstance(backend, str) or backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}.")
    if backend == "auto":
        backend, why = auto_backend_name(x, y, cost)
        if why:
            warnings.warn(
                f"backend='auto': the {x.shape[1]} x {y.shape[1]} problem is too large for the "
                f"dense backend and KeOps is unavailable ({why}); using the pure-torch "
                "'chunked' backend instead (slower, same memory class).",
                RuntimeWarning,
                stacklevel=3,
            )
    if backend == "tensorized":
        return TensorizedBackend(x, y, a, b, cost)
    if backend == "online":
        return KeOpsBackend(x, y, a, b, cost)
    if backend == "multiscale":
        return Multiscale().build(x, y, a, b, cost)
    return ChunkedBackend(x, y, a, b, cost)
