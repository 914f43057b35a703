"""Every loss shares its function's parameters and defaults (read by ``inspect.signature``), and
mixing parameter conventions raises in every function and loss."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

import torchuot as tu
from torchuot import sliced, spectral
from torchuot.couplings import PlanSampler

#: (loss, function): the loss calls the function.
PAIRS = [
    (tu.UnbalancedSinkhornLoss, tu.sinkhorn),
    (tu.SinkhornDivergence, tu.sinkhorn_divergence),
    (tu.HKLoss, tu.hk_distance),
    (sliced.SlicedWassersteinLoss, sliced.sliced_wasserstein),
    (sliced.MaxSlicedWassersteinLoss, sliced.max_sliced_wasserstein),
    (sliced.UnbalancedSlicedLoss, sliced.unbalanced_sliced_ot),
    (sliced.SubspaceSlicedLoss, sliced.subspace_sliced_ot),
    (sliced.MinSWGGLoss, sliced.min_swgg),
    (spectral.SubspaceRobustLoss, spectral.subspace_robust_wasserstein),
]

#: Function parameters a Sinkhorn loss does not take, and why.
NOT_IN_LOSS = {
    "x": "data: forward's argument", "y": "data: forward's argument",
    "a": "data: forward's argument", "b": "data: forward's argument",
    "f_init": "a warm start belongs to one call, not to a module",
    "g_init": "a warm start belongs to one call, not to a module",
}

#: The exceptions to shared defaults, as the losses declare them (checked against the classes).
EXPECTED_DIFFERENCES = {
    (tu.UnbalancedSinkhornLoss, "reach"),
    (sliced.SlicedWassersteinLoss, "root"),
    (sliced.MaxSlicedWassersteinLoss, "root"),
    (sliced.UnbalancedSlicedLoss, "debias"),
    (sliced.SubspaceSlicedLoss, "debias"),
}


def params(obj) -> dict[str, inspect.Parameter]:
    sig = inspect.signature(obj.__init__ if isinstance(obj, type) else obj)
    return {n: p for n, p in sig.parameters.items()
            if n != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}


@pytest.mark.parametrize("loss,fn", PAIRS, ids=[lo.__name__ for lo, _ in PAIRS])
def test_loss_shares_its_functions_defaults(loss, fn):
    lp, fp = params(loss), params(fn)
    differ = getattr(loss, "DEFAULTS_DIFFER", {})
    found = set()
    for name in lp.keys() & fp.keys():
        effective = differ[name][0] if name in differ else lp[name].default
        if effective != fp[name].default or type(effective) is not type(fp[name].default):
            found.add(name)
            assert name in differ, (
                f"{loss.__name__}({name}={lp[name].default!r}) but {fn.__name__}({name}="
                f"{fp[name].default!r}): align them, or declare it in {loss.__name__}.DEFAULTS_DIFFER with "
                "the reason."
            )
    for name, (_value, reason) in differ.items():
        assert name in fp, f"{loss.__name__}.DEFAULTS_DIFFER names {name!r}, not a parameter of {fn.__name__}"
        assert name in found, f"{loss.__name__}.DEFAULTS_DIFFER[{name!r}] is stale: the defaults agree"
        assert len(reason) > 20, f"{loss.__name__}.DEFAULTS_DIFFER[{name!r}] needs its reason"
    assert {(loss, n) for n in found} == {(lo, n) for lo, n in EXPECTED_DIFFERENCES if lo is loss}


@pytest.mark.parametrize("loss,fn", PAIRS[:3], ids=[lo.__name__ for lo, _ in PAIRS[:3]])
def test_sinkhorn_losses_take_every_argument_of_their_function(loss, fn):
    lp, fp = params(loss), params(fn)
    missing = set(fp) - set(lp) - set(NOT_IN_LOSS)
    assert not missing, f"{loss.__name__} lacks {sorted(missing)} of {fn.__name__}"
    for name in ("reg_m", "diameter", "momentum", "options"):
        if name in fp:
            assert name in lp


def test_declared_loss_defaults_are_applied():
    """A default declared in DEFAULTS_DIFFER is the one the loss uses."""
    assert tu.UnbalancedSinkhornLoss().problem_kwargs["reach"] == 1.0
    assert tu.UnbalancedSinkhornLoss(rho=0.3).problem_kwargs["reach"] is None
    assert tu.UnbalancedSinkhornLoss(penalty=tu.KL(0.5)).problem_kwargs["reach"] is None  # its own rho
    assert sliced.SlicedWassersteinLoss().root is False
    assert sliced.UnbalancedSlicedLoss().kw["debias"] is True
    assert sliced.SubspaceSlicedLoss().kw["debias"] is True


X = torch.randn(6, 2, generator=torch.Generator().manual_seed(0))
Y = torch.randn(5, 2, generator=torch.Generator().manual_seed(1))

#: Mixed conventions: each must raise ValueError naming the clash.
MIXES = [
    (dict(reach=0.5, rho=0.25), "one convention"),
    (dict(reach=0.5, tau_a=0.9), "one convention"),
    (dict(rho=0.5, reg_m=0.5), "one convention"),
    (dict(reach=0.5, reg_m=0.5), "one convention"),
    (dict(rho=0.5, tau_b=0.9), "one convention"),
    (dict(blur=0.1, eps=0.01), "not both"),
]


TARGETS = ["sinkhorn", "sinkhorn_divergence", "UnbalancedSinkhornLoss", "SinkhornDivergence",
           "unbalanced_sliced_ot", "subspace_sliced_ot", "UnbalancedSlicedLoss"]


@pytest.mark.parametrize("target,kw,match", [
    (t, kw, m) for t in TARGETS for kw, m in MIXES
    # UnbalancedSlicedLoss takes blur / eps and reach / rho only (no reg_m, tau)
    if t != "UnbalancedSlicedLoss" or not set(kw) - {"reach", "rho", "blur", "eps"}
])
def test_mixing_conventions_raises_everywhere(target, kw, match):
    def call():
        if target in ("sinkhorn", "sinkhorn_divergence"):
            return getattr(tu, target)(X, Y, **kw)
        if target in ("UnbalancedSinkhornLoss", "SinkhornDivergence"):
            return getattr(tu, target)(**kw)
        if target == "unbalanced_sliced_ot":
            return sliced.unbalanced_sliced_ot(X, Y, n_projections=2, **kw)
        if target == "subspace_sliced_ot":
            return sliced.subspace_sliced_ot(X, Y, n_subspaces=2, **kw)
        return sliced.UnbalancedSlicedLoss(**kw)

    with pytest.raises(ValueError, match=match):
        call()


def test_mixing_conventions_raises_for_the_rest():
    C = torch.cdist(X, Y) ** 2
    with pytest.raises(ValueError, match="one convention"):
        tu.sinkhorn_from_cost(C, eps=0.1, rho=0.5, reg_m=0.5)
    with pytest.raises(ValueError, match="one convention"):
        tu.sinkhorn_from_cost(C, eps=0.1, rho=0.5, tau_a=0.9)
    for bad in (lambda: tu.hk_distance(X, Y, blur=0.1, eps=0.01), lambda: tu.HKLoss(blur=0.1, eps=0.01),
                lambda: sliced.SubspaceSlicedLoss(blur=0.1, eps=0.01)):
        with pytest.raises(ValueError, match="not both"):
            bad()
    with pytest.raises(ValueError, match="one convention"):
        PlanSampler("uot", reach=0.5, tau_a=0.8)
    PlanSampler("uot", reach=0.5)  # reach alone (tau_a / tau_b at their defaults) is fine


def test_convention_names_and_deprecation():
    """``convention="dual"`` returns ``result.value`` (the dual objective); ``"primal"`` is its
    deprecated former name (same value, with a DeprecationWarning)."""
    x, y = X.double(), Y.double()
    res = tu.sinkhorn(x, y, blur=0.3, reach=0.5)
    dual = tu.UnbalancedSinkhornLoss(blur=0.3, reach=0.5)
    assert dual.convention == "dual"
    assert torch.equal(dual(x, y), res.value)
    with pytest.warns(DeprecationWarning, match="convention='dual'"):
        old = tu.UnbalancedSinkhornLoss(blur=0.3, reach=0.5, convention="primal")
    assert old.convention == "dual" and torch.equal(old(x, y), res.value)
    geom = tu.UnbalancedSinkhornLoss(blur=0.3, reach=0.5, convention="geomloss")
    assert torch.equal(geom(x, y), res.value_geomloss)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tu.UnbalancedSinkhornLoss(convention="dual")  # the new name does not warn
    with pytest.raises(ValueError, match="convention must be one of"):
        tu.UnbalancedSinkhornLoss(convention="pot")  # ("ott" is valid with reference="counting")
