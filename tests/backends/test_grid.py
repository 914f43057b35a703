"""torchuot.backends.grid: the kernel dtype of a grid problem and the backend's home."""

from __future__ import annotations

import torch

import torchuot
from torchuot import SinkhornOptions, UOTProblem
from torchuot.backends.grid import needs_float64_kernel
from torchuot.divergence import hk_setup
from torchuot.penalties import KL


def test_hk_stencil_precision_follows_the_kernel_span():
    """Small eps (kappa = 5 px, blur = 1 px: stencil costs up to 150 eps) runs the stencil in float64,
    where float32 sent most soft-mins to the log-domain fallback; kappa = 2 px stays in float32. Both
    agree with the float64 reference. (pairwise_distances takes its kernel dtype from
    needs_float64_kernel.)"""
    g = torch.Generator().manual_seed(3)
    imgs = torch.rand(3, 12, 12, generator=g) * (torch.rand(3, 12, 12, generator=g) > 0.6)
    a, b = imgs[[0, 1]].reshape(2, -1), imgs[[1, 2]].reshape(2, -1)
    options = SinkhornOptions(scaling=0.5, max_iter=1000, tol=1e-4, on_nonconvergence="ignore")
    assert needs_float64_kernel("sqeuclidean", eps=1.0, shape=(12, 12))
    for kappa, want in ((2.0, torch.float32), (5.0, torch.float64)):
        _, eps, rho = hk_setup(kappa, 1.0)
        assert needs_float64_kernel("hk", eps=eps, shape=(12, 12), kappa=kappa) == (want == torch.float64)

        def grid_problem(a, b, exp_dtype, kappa=kappa, eps=eps, rho=rho):
            return UOTProblem.on_grid(a, b, (12, 12), cost="hk", kappa=kappa, eps=eps, penalty=KL(rho),
                                      exp_dtype=exp_dtype, diameter=16.0)

        prob = grid_problem(a, b, want)
        assert prob.ops.exp_dtype == want
        v32 = torchuot.solve(prob, options).value
        assert prob.ops.n_fallback == 0  # no pair needed the log-domain path
        v64 = torchuot.solve(grid_problem(a.double(), b.double(), torch.float64), options).value
        torch.testing.assert_close(v32.double(), v64, rtol=1e-4, atol=1e-6)


def test_grid_backend_lives_in_backends_and_is_re_exported():
    from torchuot import images
    from torchuot.backends import grid

    assert images.GridPairsBackend is grid.GridPairsBackend
    assert images.hk_stencil is grid.hk_stencil
