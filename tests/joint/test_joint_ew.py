"""EW_lambda: the chain multi-marginal Sinkhorn against brute force, the outer loop's
monotone objective, identical inputs, the lambda limit; target spaces and graph geodesics."""

import math

import pytest
import torch

from torchuot.joint import (
    chain_sinkhorn,
    custom_space,
    embedding_spread,
    ew_lambda_embedding,
    foscttm,
    grid_space,
    gw_linear_cost,
    knn_geodesic_distances,
    sphere_space,
    torus_space,
)
from torchuot.joint.spaces import TargetSpace
from torchuot.penalties import KL, Balanced

F64 = torch.float64


@pytest.fixture(autouse=True)
def _threads():
    """One intra-op thread (overrides conftest's): these tensors are small, and extra threads
    only add synchronisation -- on a machine shared with other jobs they stall (we measured a
    20-40x slowdown of the Sinkhorn sweeps with 2 threads under load)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


# ------------------------------------------------------------------ brute force reference
def _brute_force_chain(costs, weights, penalties, eps):
    """Maximise the dual over the dense enumerated 4-plan (36 entries) with L-BFGS."""
    n = [w.numel() for w in weights]
    K = len(n)

    def shaped(v, axes):
        return v.reshape([n[j] if j in axes else 1 for j in range(K)])

    logR = sum(shaped(torch.log(w), (k,)) for k, w in enumerate(weights))
    C = sum(shaped(c, (k, k + 1)) for k, c in enumerate(costs))
    free = [k for k in range(K) if penalties[k] is not None]
    sizes = [n[k] for k in free]
    mR = math.prod(float(w.sum()) for w in weights)

    def split(v):
        return torch.split(v, sizes)

    def log_plan(v):
        full = sum(shaped(p, (k,)) for k, p in zip(free, split(v), strict=True))
        return logR + (full - C) / eps

    def neg_dual(v):
        val = sum((weights[k] * penalties[k].dual(p)).sum() for k, p in zip(free, split(v), strict=True))
        return -(val - eps * (torch.exp(log_plan(v)).sum() - mR))

    v = torch.zeros(sum(sizes), dtype=F64, requires_grad=True)
    opt = torch.optim.LBFGS([v], lr=1, max_iter=1000, tolerance_grad=1e-15, tolerance_change=1e-18,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = neg_dual(v)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    v = v.detach()
    P = torch.exp(log_plan(v))
    primal = (C * P).sum() + eps * (P * (torch.log(P) - logR) - P).sum() + eps * mR
    for k in free:
        other = tuple(j for j in range(K) if j != k)
        primal = primal + penalties[k].primal(P.sum(other), weights[k])
    return P, -float(neg_dual(v)), float(primal)


@pytest.mark.parametrize("case", ["balanced_ends", "kl_everywhere_but_one", "free_first", "free_last"])
def test_chain_sinkhorn_matches_brute_force(case):
    g = torch.Generator().manual_seed(3)
    n = [2, 3, 3, 2]
    w = [torch.rand(k, generator=g, dtype=F64) + 0.2 for k in n]
    w[3] = w[3] / w[3].sum() * w[0].sum()
    costs = [torch.rand(n[k], n[k + 1], generator=g, dtype=F64) for k in range(3)]
    if case == "balanced_ends":  # EW_lambda's structure: hard X, Y marginals, free Z1, Z2
        pens = [Balanced(), None, None, Balanced()]
    elif case == "kl_everywhere_but_one":
        pens = [KL(0.7), None, KL(0.3), KL(2.0)]
    elif case == "free_first":  # free nodes before the first penalised one ("dangling" messages)
        pens = [None, KL(0.5), None, Balanced()]
    else:
        pens = [KL(1.0), None, Balanced(), None]
    eps = 0.1
    plan = chain_sinkhorn(costs, w, pens, eps, tol=1e-12)
    assert plan.converged
    P_ref, dual_ref, primal_ref = _brute_force_chain(costs, w, pens, eps)
    P = plan.dense()
    torch.testing.assert_close(P, P_ref, atol=1e-7, rtol=0)
    assert float(plan.dual()) == pytest.approx(dual_ref, abs=1e-10)
    assert float(plan.primal()) == pytest.approx(primal_ref, abs=1e-8)
    assert float(plan.primal()) == pytest.approx(float(plan.dual()), abs=1e-10)
    # Marginals and pairwise marginals from the factored messages equal sums of the dense plan.
    for k in range(4):
        other = tuple(j for j in range(4) if j != k)
        torch.testing.assert_close(plan.marginal(k), P.sum(other), atol=1e-12, rtol=1e-10)
    for k in range(3):
        other = tuple(j for j in range(4) if j not in (k, k + 1))
        torch.testing.assert_close(plan.pair_marginal(k), P.sum(other), atol=1e-12, rtol=1e-10)
    assert float(plan.mass) == pytest.approx(float(P.sum()), rel=1e-12)
    if case == "balanced_ends":
        torch.testing.assert_close(plan.marginal(0), w[0], atol=1e-10, rtol=0)
        torch.testing.assert_close(plan.marginal(3), w[3], atol=1e-10, rtol=0)


def test_log_matmul_recovers_underflowing_entries():
    """Entries whose shifted product underflows are recomputed exactly (float32 on purpose)."""
    from torchuot.joint.ew_lambda import log_matmul

    g = torch.Generator().manual_seed(0)
    A = -200 * torch.rand(5, 6, generator=g)
    B = -200 * torch.rand(6, 4, generator=g)
    A[0, 0], B[1, 0] = 0.0, 0.0  # row/column maxima in different places: the shifts overshoot
    exact = torch.logsumexp(A[:, :, None].double() + B[None].double(), dim=1)
    out = log_matmul(A, B)
    assert bool(torch.isfinite(out).all())
    torch.testing.assert_close(out.double(), exact, rtol=1e-5, atol=1e-3)


def test_chain_sinkhorn_errors():
    w = [torch.full((2,), 0.5, dtype=F64)] * 3
    C = [torch.zeros(2, 2, dtype=F64)] * 2
    with pytest.raises(ValueError, match="costs must be a list of K - 1"):
        chain_sinkhorn(C[:1], w, [None] * 3, 0.1)
    with pytest.raises(ValueError, match=r"costs\[1\] must have shape"):
        chain_sinkhorn([C[0], torch.zeros(3, 2, dtype=F64)], w, [None] * 3, 0.1)
    with pytest.raises(ValueError, match="eps"):
        chain_sinkhorn(C, w, [None] * 3, 0.0)
    with pytest.raises(TypeError, match="Penalty or None"):
        chain_sinkhorn(C, w, ["kl", None, None], 0.1)
    with pytest.raises(ValueError, match="NaN or inf"):
        chain_sinkhorn([C[0], torch.full((2, 2), math.nan, dtype=F64)], w, [None] * 3, 0.1)
    with pytest.raises(ValueError, match="dense"):
        big = [torch.full((300,), 1 / 300, dtype=F64)] * 3
        chain_sinkhorn([torch.zeros(300, 300, dtype=F64)] * 2, big, [None] * 3, 0.1).dense()


def test_gw_linear_cost_matches_definition():
    g = torch.Generator().manual_seed(0)
    DX = torch.rand(4, 4, generator=g, dtype=F64)
    DZ = torch.rand(3, 3, generator=g, dtype=F64)
    P = torch.rand(4, 3, generator=g, dtype=F64)
    L = (DX[:, None, :, None] - DZ[None, :, None, :]) ** 2  # (x, z, x', z')
    torch.testing.assert_close(gw_linear_cost(DX, DZ, P), (L * P[None, None]).sum((2, 3)))


# ------------------------------------------------------------------ the outer loop
def _sheet(n: int, seed: int, noise: float = 0.0):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(n, 2, generator=g, dtype=F64) * torch.tensor([1.0, 0.6], dtype=F64)
    v = u + noise * torch.randn(n, 2, generator=g, dtype=F64)
    Du, Dv = torch.cdist(u, u), torch.cdist(v, v)
    return Du / Du.max(), Dv / Dv.max()


def test_objective_decreases_monotonically():
    Dx, Dy = _sheet(40, 0, noise=0.02)
    # The claim is about plain block-coordinate descent (no relaxation), so damping=0.0.
    res = ew_lambda_embedding(Dx, None, Dy, None, grid_space(6), lam=1.0, eps=1e-2, n_outer=8, tol=1e-9,
                              damping=0.0)
    obj = res.objective
    assert obj.shape == (8,) and res.n_outer == 8
    steps = obj[1:] - obj[:-1]
    # Each block step is an exact minimisation of a symmetric bi-convex J: J(pi_{k+1}, pi_k) can
    # only go down (up to the inner Sinkhorn tolerance).
    assert bool((steps <= 1e-9 * obj.abs().max()).all()), steps
    assert float(obj[-1]) < 0.5 * float(obj[0])
    # The EW objective F(pi_k) = J(pi_k, pi_k) itself need not be monotone (the iterates may
    # alternate), but it has dropped well below the start.
    assert float(res.energy[-1]) < 0.5 * float(res.energy[0])
    # Hard marginals are met; the Z marginals are probability measures on the grid.
    torch.testing.assert_close(res.coupling_x.sum(1), torch.full((40,), 1 / 40, dtype=F64), atol=1e-8, rtol=0)
    assert float(res.marginal_x.sum()) == pytest.approx(1.0, abs=1e-8)


def test_identical_inputs_align():
    Dx, _ = _sheet(40, 1)
    res = ew_lambda_embedding(Dx, None, Dx.clone(), None, grid_space(6), lam=1.0, eps=1e-2, n_outer=10)
    assert float(foscttm(res.projection_x, res.projection_y)) < 0.02
    # ... and the embedding is not collapsed (a collapsed one would score 0 too).
    assert float(res.projection_x.std(0).min()) > 0.03


def test_noisy_copy_aligns():
    Dx, Dy = _sheet(40, 2, noise=0.02)
    res = ew_lambda_embedding(Dx, None, Dy, None, grid_space(6), lam=1.0, eps=1e-2, n_outer=10)
    assert float(foscttm(res.projection_x, res.projection_y)) < 0.05
    assert float(res.projection_x.std(0).min()) > 0.03


def test_large_lambda_makes_embeddings_nearly_isometric():
    Dx, _ = _sheet(40, 0)
    Z = grid_space(6)
    gw = {}
    for lam in (0.01, 3.0):
        res = ew_lambda_embedding(Dx, None, Dx, None, Z, lam=lam, eps=1e-2, n_outer=10)
        gw[lam] = float(res.gw_x)
    indep = torch.full((40, 36), 1 / (40 * 36), dtype=F64)
    gw_indep = float((gw_linear_cost(Dx, Z.distances, indep) * indep).sum())
    assert gw[3.0] < 0.15 * gw[0.01]
    assert gw[3.0] < 0.1 * gw_indep


def test_unbalanced_and_other_spaces_run():
    Dx, Dy = _sheet(30, 3, noise=0.02)
    wy = torch.full((30,), 1.5 / 30, dtype=F64)  # different mass: needs relaxed marginals
    with pytest.raises(ValueError, match="equal masses"):
        ew_lambda_embedding(Dx, None, Dy, wy, grid_space(5), lam=1.0, eps=1e-2)
    res = ew_lambda_embedding(Dx, None, Dy, wy, grid_space(5), lam=1.0, eps=1e-2, rho=1.0, n_outer=3)
    assert bool(torch.isfinite(res.objective).all())
    assert 1.0 < float(res.plan.mass) < 1.5
    for Z in (sphere_space(40), torus_space(6)):
        r = ew_lambda_embedding(Dx / 2, None, Dy / 2, None, Z, lam=1.0, eps=2e-2, n_outer=3)
        assert r.projection_x.shape == (30, Z.points.shape[1])
        assert bool(torch.isfinite(r.objective).all())
    pts = torch.rand(20, 2, dtype=F64)
    r = ew_lambda_embedding(Dx, None, Dy, None, pts, torch.cdist(pts, pts), lam=1.0, eps=2e-2, n_outer=2)
    assert r.space.name == "custom" and r.coupling_y.shape == (30, 20)


def test_ew_input_errors():
    Dx, _ = _sheet(10, 0)
    Z = grid_space(3)
    with pytest.raises(ValueError, match="Dx must be a square"):
        ew_lambda_embedding(Dx[:5], None, Dx, None, Z, lam=1.0, eps=0.1)
    with pytest.raises(ValueError, match="wy must be a tensor of shape"):
        ew_lambda_embedding(Dx, None, Dx, torch.ones(3, dtype=F64), Z, lam=1.0, eps=0.1)
    with pytest.raises(ValueError, match="lam must be"):
        ew_lambda_embedding(Dx, None, Dx, None, Z, lam=-1.0, eps=0.1)
    with pytest.raises(ValueError, match="eps must be"):
        ew_lambda_embedding(Dx, None, Dx, None, Z, lam=1.0, eps=0)
    with pytest.raises(ValueError, match="init must be"):
        ew_lambda_embedding(Dx, None, Dx, None, Z, lam=1.0, eps=0.1, init="mds")
    with pytest.raises(ValueError, match="rho must be"):
        ew_lambda_embedding(Dx, None, Dx, None, Z, lam=1.0, eps=0.1, rho=-2.0)
    with pytest.raises(TypeError, match="Z must be"):
        ew_lambda_embedding(Dx, None, Dx, None, "grid", lam=1.0, eps=0.1)
    with pytest.raises(ValueError, match="non-negative distances"):
        ew_lambda_embedding(-Dx, None, Dx, None, Z, lam=1.0, eps=0.1)


# ------------------------------------------------------------------ spaces and graphs
def test_spaces():
    G = grid_space(4)
    assert G.points.shape == (16, 2) and float(G.distances.max()) == pytest.approx(math.sqrt(2))
    S = sphere_space(50)
    torch.testing.assert_close(S.points.norm(dim=1), torch.ones(50, dtype=F64))
    assert float(S.distances.max()) <= math.pi + 1e-12
    i, j = 3, 17  # geodesic = angle between the unit vectors
    assert float(S.distances[i, j]) == pytest.approx(math.acos(float(S.points[i] @ S.points[j])))
    T = torus_space(5)
    # (u, v) = (0, 0) and (4/5, 0) are neighbours across the seam: distance 1/5.
    a = int(((T.params[:, 0] == 0) & (T.params[:, 1] == 0)).nonzero())
    b = int(((T.params[:, 0] - 0.8).abs() < 1e-12).logical_and(T.params[:, 1] == 0).nonzero())
    assert float(T.distances[a, b]) == pytest.approx(0.2)
    assert float(T.distances.max()) == pytest.approx(math.sqrt(0.4**2 + 0.4**2))
    torch.testing.assert_close(T.project(T.points), T.points)
    C = custom_space(torch.rand(7, 3, dtype=F64))
    assert C.size == 7 and float(C.weights.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="n must be"):
        grid_space(1)
    with pytest.raises(ValueError, match="distances must have shape"):
        TargetSpace(torch.zeros(3, 2, dtype=F64), torch.zeros(2, 2, dtype=F64), torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="weights must be > 0"):
        TargetSpace(torch.zeros(2, 2, dtype=F64), torch.zeros(2, 2, dtype=F64), torch.zeros(2, dtype=F64))


def test_knn_geodesics_on_a_line_and_against_scipy():
    s = torch.tensor([0.0, 0.1, 0.3, 0.35, 0.8, 1.0], dtype=F64)
    x = torch.stack([s, torch.zeros_like(s)], 1)
    D = knn_geodesic_distances(x, k=2)
    torch.testing.assert_close(D, (s[:, None] - s[None, :]).abs())
    g = torch.Generator().manual_seed(0)
    t = torch.rand(80, generator=g, dtype=F64) * 3
    y = torch.stack([t * torch.cos(3 * t), t * torch.sin(3 * t), torch.rand(80, generator=g, dtype=F64)], 1)
    pytest.importorskip("scipy")
    torch.testing.assert_close(knn_geodesic_distances(y, 8), knn_geodesic_distances(y, 8, method="scipy"))


def test_knn_geodesics_disconnected():
    x = torch.tensor([[0.0], [0.1], [5.0], [5.1]], dtype=F64)
    with pytest.raises(ValueError, match="disconnected"):
        knn_geodesic_distances(x, k=1)
    D = knn_geodesic_distances(x, k=1, disconnected="max")
    assert float(D[0, 2]) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="k must be"):
        knn_geodesic_distances(x, k=4)
    with pytest.raises(ValueError, match="method"):
        knn_geodesic_distances(x, k=1, method="dijkstra")


# ------------------------------------------------------------------ damping (issue 16)
def _gaussian_pair(seed: int):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(40, 10, generator=g, dtype=F64)
    Y = X + 0.5 * torch.randn(40, 10, generator=g, dtype=F64)
    Dx, Dy = torch.cdist(X, X), torch.cdist(Y, Y)
    return Dx / Dx.max(), Dy / Dy.max()


def test_damping_removes_the_two_cycle():
    # Undamped block-coordinate descent settles on a 2-cycle here (as on MNIST): F(pi_k)
    # alternates between two values, pi_{k+2} = pi_k. The default damping must converge to one
    # state with a lower energy than either state of the cycle.
    Dx, Dy = _gaussian_pair(5)
    kw = dict(lam=1.0, eps=5e-3, n_outer=24, tol=1e-6)
    plain = ew_lambda_embedding(Dx, None, Dy, None, grid_space(6), damping=0.0, **kw)
    e = plain.energy
    assert float((e[-1] - e[-2]).abs()) > 0.05            # the two states differ ...
    assert float((e[-1] - e[-3]).abs()) < 0.05 * float((e[-1] - e[-2]).abs())  # ... and repeat
    damped = ew_lambda_embedding(Dx, None, Dy, None, grid_space(6), **kw)  # default damping
    d = damped.energy
    assert float((d[-1] - d[-2]).abs()) < 0.01
    assert float(d[-1]) < 0.8 * float(torch.minimum(e[-1], e[-2]))
    with pytest.raises(ValueError, match="damping"):
        ew_lambda_embedding(Dx, None, Dy, None, grid_space(3), lam=1.0, eps=1e-2, damping=1.0)


def test_positive_control_same_view_twice():
    # The same view twice must align: FOSCTTM ~ 0 (ties counted half, so a collapse cannot pass)
    # with a spread-out embedding.
    Dx, _ = _gaussian_pair(1)
    res = ew_lambda_embedding(Dx, None, Dx.clone(), None, grid_space(6), lam=1.0, eps=1e-2, n_outer=10,
                              tol=1e-6)
    assert float(foscttm(res.projection_x, res.projection_y, ties="half")) < 0.01
    assert float(embedding_spread(res.projection_x, res.space.points)) > 0.3


def test_init_from_couplings_reproduces_them():
    Dx, Dy = _sheet(20, 4, noise=0.02)
    Z = grid_space(4)
    first = ew_lambda_embedding(Dx, None, Dy, None, Z, lam=1.0, eps=1e-2, n_outer=3, damping=0.0)
    # Restart from the result's couplings: the next step is the same as continuing the run.
    cont = ew_lambda_embedding(Dx, None, Dy, None, Z, lam=1.0, eps=1e-2, n_outer=4, damping=0.0)
    again = ew_lambda_embedding(Dx, None, Dy, None, Z, lam=1.0, eps=1e-2, n_outer=1, damping=0.0,
                                init=(first.coupling_x, first.coupling_y))
    torch.testing.assert_close(again.coupling_x, cont.coupling_x, atol=5e-5, rtol=0)  # entries ~3e-3
    fresh = ew_lambda_embedding(Dx, None, Dy, None, Z, lam=1.0, eps=1e-2, n_outer=1, damping=0.0)
    assert float((fresh.coupling_x - cont.coupling_x).abs().max()) > 1e-3
    with pytest.raises(ValueError, match="coupling_x"):
        ew_lambda_embedding(Dx, None, Dy, None, Z, lam=1.0, eps=1e-2,
                            init=(first.coupling_x[:5], first.coupling_y))


def test_grid_space_in_three_dimensions():
    G = grid_space(3, 3)
    assert G.points.shape == (27, 3) and G.distances.shape == (27, 27)
    assert float(G.distances.max()) == pytest.approx(math.sqrt(3))
    assert float(G.weights.sum()) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dim"):
        grid_space(3, 0)
