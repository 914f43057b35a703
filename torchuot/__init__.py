"""torchuot: differentiable unbalanced optimal transport layers for PyTorch."""

from .costs import CallableCost, Cost, HKConeCost, PowerCost, SquaredEuclidean
from .divergence import hk_distance, sinkhorn_divergence
from .losses import HKLoss, SinkhornDivergence, UnbalancedSinkhornLoss
from .penalties import KL, TV, Balanced, Penalty, ReverseKL
from .result import ConvergenceError, ConvergenceWarning, UOTResult
from .sinkhorn import epsilon_schedule, sinkhorn, sinkhorn_from_cost

__version__ = "0.1.0"

__all__ = [
    "sinkhorn",
    "sinkhorn_from_cost",
    "sinkhorn_divergence",
    "hk_distance",
    "UnbalancedSinkhornLoss",
    "SinkhornDivergence",
    "HKLoss",
    "epsilon_schedule",
    "UOTResult",
    "ConvergenceError",
    "ConvergenceWarning",
    "Cost",
    "SquaredEuclidean",
    "PowerCost",
    "HKConeCost",
    "CallableCost",
    "Penalty",
    "KL",
    "TV",
    "Balanced",
    "ReverseKL",
]
