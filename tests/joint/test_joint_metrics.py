"""Alignment metrics on hand-made cases with known values."""

import pytest
import torch

from torchuot.joint import (
    cube_symmetries,
    embedding_spread,
    foscttm,
    foscttm_best_symmetry,
    foscttm_from_distances,
    knn_label_transfer_accuracy,
    knn_predict,
)


def test_foscttm_perfect_and_reversed():
    x = torch.arange(5, dtype=torch.float64)[:, None]
    assert float(foscttm(x, x.clone())) == 0.0
    # y reversed: y_j = 4 - j, d(x_i, y_j) = |i - 4 + j|, the partner sits at |2i - 4|.
    # i=0: partner at 4, the other 4 are closer (4/4); i=1: partner at 2, closer y = 2, 1, 0
    # (3/4); i=2: 0/4; i=3: 3/4; i=4: 4/4 -> mean 14/20; columns are the same by symmetry.
    y = x.flip(0)
    assert float(foscttm(x, y)) == pytest.approx(0.7)


def test_foscttm_from_distances_asymmetric_case():
    d = torch.tensor([[0.0, 1.0, 2.0], [0.5, 1.0, 3.0], [3.0, 0.1, 0.2]])
    # rows: i=0: none closer than 0 -> 0; i=1: 0.5 < 1.0 -> 1; i=2: 0.1 < 0.2 -> 1  => 2/3 / 2
    # cols: j=0: none < 0 -> 0; j=1: 1.0 vs col [1.0, 1.0, 0.1] -> 0.1 closer -> 1;
    #       j=2: 0.2 vs [2.0, 3.0, 0.2] -> 0  => 1/3 / 2
    expected = 0.5 * ((0 + 1 + 1) / 3 + (0 + 1 + 0) / 3) / 2
    assert float(foscttm_from_distances(d)) == pytest.approx(expected)


def test_foscttm_ties_do_not_count():
    x = torch.zeros(4, 2, dtype=torch.float64)
    assert float(foscttm(x, x)) == 0.0


def test_foscttm_errors():
    with pytest.raises(ValueError, match="same shape"):
        foscttm(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="square"):
        foscttm_from_distances(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="at least 2"):
        foscttm_from_distances(torch.zeros(1, 1))
    with pytest.raises(TypeError, match="x_emb"):
        foscttm([[0.0]], torch.zeros(1, 1))
    with pytest.raises(ValueError, match="NaN"):
        foscttm(torch.full((3, 1), float("nan")), torch.zeros(3, 1))


def test_knn_predict_hand_case_and_tie_break():
    train = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])
    query = torch.tensor([[0.4], [10.5], [1.6]])
    # k=3: q0 -> {0, 1, 2} labels 0,0,1 -> 0; q1 -> {10, 11, 2} -> 1;
    # q2 -> {2 (0.4), 1 (0.6), 0 (1.6)} -> 1,0,0 -> 0.
    assert knn_predict(train, labels, query, k=3).tolist() == [0, 1, 0]
    # k=2 at q2: labels {1, 0}, a tie: the class of the nearest neighbour (1) wins.
    assert knn_predict(train, labels, query[2:], k=2).tolist() == [1]
    acc = knn_label_transfer_accuracy(train, labels, query, torch.tensor([0, 1, 1]), k=3)
    assert float(acc) == pytest.approx(2 / 3)


def test_knn_matches_sklearn_without_ties():
    neighbors = pytest.importorskip("sklearn.neighbors")
    g = torch.Generator().manual_seed(0)
    train = torch.randn(60, 3, generator=g, dtype=torch.float64)
    labels = (train[:, 0] > 0).long() + (train[:, 1] > 0.5).long()
    query = torch.randn(40, 3, generator=g, dtype=torch.float64)
    for k in (1, 5):  # with 3 classes k=5 may tie; compare only where sklearn's vote is strict
        clf = neighbors.KNeighborsClassifier(n_neighbors=k).fit(train.numpy(), labels.numpy())
        ours = knn_predict(train, labels, query, k=k)
        proba = torch.tensor(clf.predict_proba(query.numpy()))
        top = proba.topk(2, dim=1).values
        strict = top[:, 0] > top[:, 1]
        assert strict.sum() > 30
        assert torch.equal(ours[strict], torch.tensor(clf.predict(query.numpy()))[strict])


def test_knn_errors():
    x = torch.zeros(4, 2)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(x, torch.zeros(4, dtype=torch.long), x, k=5)
    with pytest.raises(TypeError, match="integer class labels"):
        knn_predict(x, torch.zeros(4), x, k=1)
    with pytest.raises(ValueError, match="train_labels"):
        knn_predict(x, torch.zeros(3, dtype=torch.long), x, k=1)
    with pytest.raises(ValueError, match="embedding dimension"):
        knn_predict(x, torch.zeros(4, dtype=torch.long), torch.zeros(2, 3), k=1)
    with pytest.raises(ValueError, match="query_labels"):
        knn_label_transfer_accuracy(x, torch.zeros(4, dtype=torch.long), x, torch.zeros(3), k=1)


# ------------------------------------------------------------------ issue 16: ties, symmetries, spread
def test_foscttm_half_ties_scores_a_collapse_at_chance():
    x = torch.zeros(5, 2, dtype=torch.float64)
    assert float(foscttm(x, x, ties="half")) == pytest.approx(0.5)
    # One tie per row: x = (0, 1, 2), y = (0, 1, 1) -> d row 1: |1-0|, |1-1|, |1-1|: partner at 0,
    # one other at 0 -> 1/2. Hand count: rows (0, 0.5, 0.5 + 1 (y_1=1 is closer? no: d=1 vs 1: tie
    # -> 0.5) ...) computed below from the definition instead of trusting the comment.
    xs = torch.tensor([[0.0], [1.0], [2.0]], dtype=torch.float64)
    ys = torch.tensor([[0.0], [1.0], [1.0]], dtype=torch.float64)
    d = torch.cdist(xs, ys)
    # rows: i=0: d=[0,1,1], partner 0 -> 0. i=1: d=[1,0,0], partner 0, one tie -> 0.5.
    # i=2: d=[2,1,1], partner 1, one tie (j=1) -> 0.5.  rows mean = 1/3
    # cols: j=0: [0,1,2] partner 0 -> 0. j=1: [1,0,1] partner 0 -> 0. j=2: [1,0,1] partner 1:
    # j... closer: x_1 (0) -> 1, tie: x_0 (1) -> 0.5 -> 1.5.  cols mean = 0.5
    expected = 0.5 * (1 / 3 + 0.5) / 2
    assert float(foscttm_from_distances(d, ties="half")) == pytest.approx(expected)
    assert float(foscttm(xs, ys, ties="half")) == pytest.approx(expected)
    # strict counting: rows (0, 0, 0) and cols (0, 0, 1) -> (0 + 1/3) / 2 / 2
    assert float(foscttm(xs, ys)) == pytest.approx(0.5 * (0 + 1 / 3) / 2)
    with pytest.raises(ValueError, match="ties"):
        foscttm(xs, ys, ties="random")


def test_foscttm_best_symmetry_finds_the_mirror():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(30, 2, generator=g, dtype=torch.float64)
    mirror = x.clone()
    mirror[:, 0] = 1 - mirror[:, 0]                  # reflected about u = 0.5
    rot = torch.stack([1 - x[:, 1], x[:, 0]], 1)     # rotated by 90 degrees about the centre
    G = cube_symmetries(2)
    assert G.shape == (8, 2, 2)
    torch.testing.assert_close(G[0], torch.eye(2, dtype=torch.float64))
    assert float(foscttm(x, mirror)) > 0.1 and float(foscttm(x, rot)) > 0.1
    for y in (mirror, rot):
        value, index = foscttm_best_symmetry(x, y, G, 0.5)
        assert float(value) == 0.0 and index != 0
    value, index = foscttm_best_symmetry(x, x.clone(), G, 0.5)
    assert float(value) == 0.0 and index == 0   # identity first: ties go to it
    assert cube_symmetries(3).shape == (48, 3, 3)
    with pytest.raises(ValueError, match="symmetries"):
        foscttm_best_symmetry(x, x, torch.eye(3)[None], 0.5)
    with pytest.raises(ValueError, match="orthogonal"):
        foscttm_best_symmetry(x, x, 2 * torch.eye(2, dtype=torch.float64)[None], 0.5)


def test_embedding_spread():
    pts = torch.tensor([[0.0, 0.0], [2.0, 0.0]], dtype=torch.float64)
    assert float(embedding_spread(pts)) == pytest.approx(1.0)
    assert float(embedding_spread(pts, 2 * pts)) == pytest.approx(0.5)
    assert float(embedding_spread(torch.ones(4, 2, dtype=torch.float64), pts)) == 0.0
    with pytest.raises(ValueError, match="reference"):
        embedding_spread(pts, torch.zeros(3, 2, dtype=torch.float64))
