"""torchuot: differentiable unbalanced optimal transport layers for PyTorch."""

from .costs import CallableCost, Cost, HKConeCost, PowerCost, SquaredEuclidean
from .divergence import hk_distance, sinkhorn_divergence
from .losses import HKLoss, SinkhornDivergence, UnbalancedSinkhornLoss
from .penalties import KL, TV, Balanced, Penalty, ReverseKL
from .problem import SinkhornOptions, UOTProblem
from .result import ConvergenceError, ConvergenceWarning, UOTResult
from .sinkhorn import AdaptiveMomentum, epsilon_schedule, sinkhorn, sinkhorn_from_cost, solve

__version__ = "0.1.0"

__all__ = [
    "UOTProblem",
    "SinkhornOptions",
    "solve",
    "AdaptiveMomentum",
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
