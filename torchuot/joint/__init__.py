"""Joint embeddings of two datasets: EOT eigenmaps, EW_lambda, Joint MDS, target spaces and metrics."""

from .eot_eigenmaps import EOTEmbedding, eot_eigenmaps, median_bandwidth
from .ew_lambda import ChainPlan, EWResult, chain_sinkhorn, ew_lambda_embedding, gw_linear_cost
from .graphs import knn_geodesic_distances, knn_graph
from .jmds import (
    JointMDSResult,
    check_distance_matrix,
    entropic_gromov_wasserstein,
    joint_mds,
    procrustes,
    smacof,
)
from .metrics import (
    cube_symmetries,
    embedding_spread,
    foscttm,
    foscttm_best_symmetry,
    foscttm_from_distances,
    knn_label_transfer_accuracy,
    knn_predict,
)
from .spaces import TargetSpace, custom_space, grid_space, sphere_space, torus_space

__all__ = [
    "eot_eigenmaps",
    "EOTEmbedding",
    "median_bandwidth",
    "ew_lambda_embedding",
    "EWResult",
    "chain_sinkhorn",
    "ChainPlan",
    "gw_linear_cost",
    "joint_mds",
    "JointMDSResult",
    "smacof",
    "procrustes",
    "entropic_gromov_wasserstein",
    "check_distance_matrix",
    "knn_geodesic_distances",
    "knn_graph",
    "foscttm",
    "foscttm_from_distances",
    "foscttm_best_symmetry",
    "cube_symmetries",
    "embedding_spread",
    "knn_label_transfer_accuracy",
    "knn_predict",
    "TargetSpace",
    "grid_space",
    "sphere_space",
    "torus_space",
    "custom_space",
]
