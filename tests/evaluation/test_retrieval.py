"""Retrieval metrics: PML's AccuracyCalculator numbers, hand-computed cases, bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from clusterloss.evaluation import METRIC_NAMES, PML_NAMES, cluster_labels, retrieval_metrics


def _data(rng, n, dim, classes, clustered, centers=None):
    y = rng.integers(0, classes, n)
    if centers is None:
        centers = rng.normal(size=(classes, dim)) * 2.0
    x = rng.normal(size=(n, dim)) + (centers[y] if clustered else 0.0)
    return x.astype("float32"), y, centers


def _pml(k, avg_of_avgs=False):
    pytest.importorskip("faiss")
    torch = pytest.importorskip("torch")
    accuracy_calculator = pytest.importorskip("pytorch_metric_learning.utils.accuracy_calculator")

    def kmeans(x, n):  # PML's kmeans_func hook: the same seeded scikit-learn k-means as ours
        return torch.tensor(cluster_labels(x.cpu().numpy(), n, seed=0))

    return accuracy_calculator.AccuracyCalculator(
        k=k, avg_of_avgs=avg_of_avgs, kmeans_func=kmeans, device=torch.device("cpu")
    )


def _assert_matches_pml(ours, theirs):
    """Every PML number under our key (`PML_NAMES`: the one vocabulary of the library,
    metrics.json and the report)."""
    assert set(PML_NAMES.values()) <= set(theirs)
    for key, pml_name in PML_NAMES.items():
        assert ours[key] == pytest.approx(theirs[pml_name], abs=1e-6, nan_ok=True), key


@pytest.mark.parametrize("clustered", [False, True], ids=["random", "clustered"])
@pytest.mark.parametrize("k", [None, "max_bin_count", 7])
@pytest.mark.parametrize("same_source", [True, False], ids=["same", "separate"])
def test_matches_pml(clustered, k, same_source):
    rng = np.random.default_rng(hash((clustered, str(k), same_source)) % 2**32)
    q, ql, centers = _data(rng, 240, 12, 10, clustered)
    r, rl, _ = _data(rng, 400, 12, 12, clustered, centers=np.vstack([centers, rng.normal(size=(2, 12))]))
    calc = _pml(k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if same_source:
            theirs = calc.get_accuracy(q, ql)
            ours = retrieval_metrics(q, ql, k=k, metric="euclidean")
        else:
            theirs = calc.get_accuracy(q, ql, r, rl)
            ours = retrieval_metrics(q, ql, r, rl, k=k, metric="euclidean")
    _assert_matches_pml(ours, theirs)
    if clustered:
        assert ours["precision_at_1"] > 0.5


def test_matches_pml_cosine_and_avg_of_avgs():
    """Cosine = PML's L2 ranking on L2-normalised embeddings; avg_of_avgs as PML's."""
    rng = np.random.default_rng(3)
    q, ql, centers = _data(rng, 300, 8, 9, True)
    r, rl, _ = _data(rng, 500, 8, 9, True, centers=centers)
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    rn = r / np.linalg.norm(r, axis=1, keepdims=True)
    for avg in (False, True):
        calc = _pml("max_bin_count", avg_of_avgs=avg)
        _assert_matches_pml(
            retrieval_metrics(q, ql, r, rl, metric="cosine", avg_of_avgs=avg),
            calc.get_accuracy(qn, ql, rn, rl),
        )
        _assert_matches_pml(retrieval_metrics(q, ql, metric="cosine", avg_of_avgs=avg), calc.get_accuracy(qn, ql))


def test_ref_includes_query_matches_pml():
    rng = np.random.default_rng(4)
    q, ql, centers = _data(rng, 150, 6, 5, True)
    extra, el, _ = _data(rng, 100, 6, 5, True, centers=centers)
    r, rl = np.vstack([q, extra]), np.concatenate([ql, el])
    theirs = _pml("max_bin_count").get_accuracy(q, ql, r, rl, ref_includes_query=True)
    ours = retrieval_metrics(q, ql, r, rl, ref_includes_query=True, metric="euclidean")
    _assert_matches_pml(ours, theirs)
    with pytest.raises(ValueError, match="ref_includes_query"):
        retrieval_metrics(q, ql, extra, el, ref_includes_query=True)


def test_hand_computed_same_source_with_tie_and_single_member_class():
    # 1-D points; label 2 has one member (left out: no other reference of its class).
    x = np.array([[0.0], [1.0], [3.0], [4.0], [5.0], [20.0]], "float32")
    y = np.array([0, 0, 1, 1, 1, 2])
    # k = max_bin_count - 1 = 2. Query 2 (x=3): neighbour 3 (B), then a tie at distance 2
    # between index 1 (A) and index 4 (B): the lower index wins -> [B, A].
    for backend in ("auto", "numpy"):
        m = retrieval_metrics(x, y, metric="euclidean", recall_at=(1, 2), backend=backend)
        assert m["precision_at_1"] == pytest.approx(1.0)
        assert m["r_precision"] == pytest.approx((1 + 1 + 0.5 + 1 + 1) / 5)
        assert m["map_at_r"] == pytest.approx(0.9)
        assert m["mean_average_precision"] == pytest.approx(0.9)
        assert m["mean_reciprocal_rank"] == pytest.approx(1.0)
        assert m["recall_at_1"] == pytest.approx(1.0)
        assert m["recall_at_2"] == pytest.approx(1.0)
    _assert_matches_pml(retrieval_metrics(x, y, metric="euclidean"), _pml("max_bin_count").get_accuracy(x, y))


@pytest.mark.parametrize("k", [2, "max_bin_count", None])
def test_exact_duplicates_same_source_match_pml(k):
    """Duplicates ranked before a query's own row: PML drops the last neighbour instead."""
    x = np.zeros((10, 2), "float32")
    x[6:] = [[3.0, 0.0], [3.0, 1.0], [0.0, 4.0], [0.5, 0.0]]
    y = np.array([0, 1, 0, 1, 1, 0, 1, 0, 1, 0])
    for metric, data in (("euclidean", x), ("cosine", x + [1.0, 1.0])):
        pml_data = data / np.linalg.norm(data, axis=1, keepdims=True) if metric == "cosine" else data
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs = _pml(k).get_accuracy(pml_data, y)
            ours = retrieval_metrics(data, y, k=k, metric=metric)
        _assert_matches_pml(ours, theirs)


def test_hand_computed_separate_sets_with_query_of_unknown_class():
    reference = np.array([[0.0], [2.0], [2.5], [10.0]], "float32")
    reference_labels = np.array([0, 1, 0, 1])
    # q0 (A): tie at distance 1 between r0 (A) and r1 (B) -> [A, B, A, B]
    # q1 (B): [B, A, A, B]; q2: class 7 has no reference (left out); q3 (A): [B, A, B, A]
    query = np.array([[1.0], [2.2], [5.0], [9.0]], "float32")
    query_labels = np.array([0, 1, 7, 0])
    m = retrieval_metrics(
        query, query_labels, reference, reference_labels, k=None, metric="euclidean", recall_at=(1, 2)
    )
    assert m["precision_at_1"] == pytest.approx(2 / 3)
    assert m["r_precision"] == pytest.approx(0.5)
    assert m["map_at_r"] == pytest.approx((0.5 + 0.5 + 0.25) / 3)
    assert m["mean_average_precision"] == pytest.approx(((1 + 2 / 3) / 2 + (1 + 2 / 4) / 2 + (1 / 2 + 2 / 4) / 2) / 3)
    assert m["mean_reciprocal_rank"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["recall_at_1"] == pytest.approx(2 / 3)
    assert m["recall_at_2"] == pytest.approx(1.0)
    theirs = _pml(None).get_accuracy(query, query_labels, reference, reference_labels)
    _assert_matches_pml(m, theirs)


def test_no_query_class_in_reference_gives_nan():
    q = np.zeros((3, 2), "float32")
    r = np.ones((4, 2), "float32")
    with pytest.warns(UserWarning, match="None of the query labels"):
        m = retrieval_metrics(q, [0, 1, 2], r, [5, 5, 6, 6], include=("precision_at_1", "r_precision"))
    assert np.isnan(m["precision_at_1"]) and np.isnan(m["r_precision"])


def test_large_label_ids_stay_distinct():
    """PML casts labels to float32: 2**24 and 2**24 + 1 compare equal there, not here."""
    rng = np.random.default_rng(5)
    x, y, _ = _data(rng, 120, 4, 2, True)
    big = np.where(y == 0, 2**24, 2**24 + 1)
    small = retrieval_metrics(x, y, metric="euclidean", exclude=("nmi", "ami"))
    assert retrieval_metrics(x, big, metric="euclidean", exclude=("nmi", "ami")) == small


def test_include_exclude_and_keys():
    rng = np.random.default_rng(6)
    x, y, _ = _data(rng, 60, 4, 3, True)
    m = retrieval_metrics(x, y, include=("precision_at_1", "recall_at_k"), recall_at=[4, 1])
    assert list(m) == ["precision_at_1", "recall_at_1", "recall_at_4"]
    m = retrieval_metrics(x, y, exclude=("nmi", "ami", "recall_at_k"))
    assert set(m) == set(METRIC_NAMES) - {"nmi", "ami", "recall_at_k"}
    assert m["precision_at_1"] == retrieval_metrics(x, y, include=("precision_at_1",))["precision_at_1"]


def test_small_k_warns_and_large_k_is_clamped():
    rng = np.random.default_rng(7)
    x, y, _ = _data(rng, 50, 4, 2, True)
    with pytest.warns(UserWarning, match="max_bin_count"):
        retrieval_metrics(x, y, k=3, include=("r_precision",))
    assert retrieval_metrics(x, y, k=1000, exclude=("nmi", "ami")) == retrieval_metrics(
        x, y, k=None, exclude=("nmi", "ami")
    )


def test_index_as_reference():
    from clusterloss.index import Index

    rng = np.random.default_rng(8)
    q, ql, centers = _data(rng, 80, 5, 4, True)
    r, rl, _ = _data(rng, 200, 5, 4, True, centers=centers)
    index = Index(5, metric="euclidean")
    index.add(r, rl)
    assert retrieval_metrics(q, ql, index, exclude=("nmi", "ami")) == retrieval_metrics(
        q, ql, r, rl, metric="euclidean", exclude=("nmi", "ami")
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"query_labels": np.zeros(9)}, "same length"),
        ({"query": np.zeros((10, 2, 1))}, "shape"),
        ({"query_labels": np.zeros((10, 2))}, "one-hot"),
        ({"k": 0}, "`k`"),
        ({"k": "all"}, "`k`"),
        ({"metric": "manhattan"}, "`metric`"),
        ({"include": ("precision_at_5",)}, "`include`"),
        ({"recall_at": (0,)}, "recall_at"),
        ({"reference": np.zeros((4, 2))}, "reference_labels"),
        ({"reference": np.zeros((4, 2)), "reference_labels": [0, 1]}, "same length"),
        ({"reference": np.zeros((4, 3)), "reference_labels": [0, 1, 0, 1]}, "columns"),
        ({"query": np.full((10, 2), np.nan)}, "finite"),
        ({"query_labels": np.arange(10) + 0.5}, "integer"),
    ],
)
def test_bad_input(kwargs, message):
    args = {"query": np.zeros((10, 2)), "query_labels": np.arange(10) % 2}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(**args)


def test_a_registered_metric_is_computed_like_the_built_in_ones():
    """`register_metric`: precision@2 as one function equals a loop over the queries (self
    excluded), is listed and selectable; a second metric of the same name is refused."""
    from clusterloss.evaluation import register_metric
    from clusterloss.evaluation.retrieval import PER_QUERY

    @register_metric("test_precision_at_2")
    def precision_at_2(ranking):
        return ranking.same[:, :2].mean(axis=1)

    try:
        rng = np.random.default_rng(3)
        x, y, _ = _data(rng, 60, 4, 3, clustered=True)
        found = retrieval_metrics(x, y, include=["test_precision_at_2"], k=2)
        normed = x / np.linalg.norm(x, axis=1, keepdims=True)
        expected = []
        for i in range(len(x)):
            order = [j for j in np.argsort(-(normed @ normed[i]), kind="stable") if j != i]
            expected.append(np.mean(y[order[:2]] == y[i]))
        assert found == {"test_precision_at_2": pytest.approx(np.mean(expected))}
        assert "test_precision_at_2" in retrieval_metrics(x, y, k=2, exclude=["nmi", "ami"])
        with pytest.raises(ValueError, match="exists already"):
            register_metric("map_at_r")(precision_at_2)
    finally:
        PER_QUERY.pop("test_precision_at_2", None)


def test_self_matches_are_dropped_with_their_scores():
    from clusterloss.index import drop_self_matches

    found = np.array([[0, 4, 5], [9, 8, 7], [2, 1, 0]])
    scores = found * 10.0
    kept, kept_scores = drop_self_matches(np.array([0, 1, 2]), found, scores)
    np.testing.assert_array_equal(kept, [[4, 5], [9, 8], [1, 0]])  # row 1: itself absent, the last dropped
    np.testing.assert_array_equal(kept_scores, kept * 10.0)
