"""Manifold learning on precomputed distance matrices (torch + numpy; no scikit-learn needed).

Every method takes a symmetric ``(N, N)`` distance matrix -- e.g. from
:func:`torchuot.images.pairwise_distances` -- and returns an ``(N, dim)`` embedding:

* :func:`mds`: metric MDS by SMACOF (Guttman transforms, de Leeuw 1977), started from
  classical (Torgerson) MDS;
* :func:`isomap`: geodesic distances on the k-nearest-neighbour graph (Tenenbaum et al. 2000),
  then classical MDS;
* :func:`tsne`: exact t-SNE on the precomputed metric (van der Maaten & Hinton 2008);
* :func:`laplacian_eigenmaps`: heat-kernel affinities on the kNN graph, bottom eigenvectors of
  the normalised Laplacian (Belkin & Niyogi 2003);
* :func:`estimate_dimension`: the local-SVD heuristic (explained-variance threshold ``alpha``
  in kNN neighbourhoods) used to choose the embedding dimension.

scikit-learn (the ``embed`` extra) is only used by the tests and the evaluation runner, to
check these against ``sklearn.manifold`` and to score embeddings.
"""

from .manifold import (
    classical_mds,
    estimate_dimension,
    isomap,
    knn_graph,
    laplacian_eigenmaps,
    mds,
    tsne,
)

__all__ = [
    "classical_mds",
    "mds",
    "isomap",
    "tsne",
    "laplacian_eigenmaps",
    "estimate_dimension",
    "knn_graph",
]
