"""Open-set metrics: AUROC of unknown rejection, threshold rules, accuracies."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from clusterloss.evaluation import class_centers, open_set_metrics, open_set_scores


def _split(rng, dim=8, known=6, unknown=4, spread=0.8):
    centers = rng.normal(size=(known + unknown, dim)) * 1.5

    def draw(classes, n):
        y = rng.choice(classes, n)
        return (centers[y] + spread * rng.normal(size=(n, dim))).astype("float32"), y

    reference, reference_labels = draw(np.arange(known), 300)
    known_q, known_labels = draw(np.arange(known), 120)
    unknown_q, _ = draw(np.arange(known, known + unknown), 80)
    return reference, reference_labels, known_q, known_labels, unknown_q


def _brute_nearest(reference, labels, queries, metric):
    if metric == "cosine":
        r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        sims = q @ r.T
        best = np.argmax(sims, axis=1)
        return sims[np.arange(len(q)), best], labels[best]
    d = np.linalg.norm(queries[:, None] - reference[None], axis=-1)
    best = np.argmin(d, axis=1)
    return d[np.arange(len(queries)), best], labels[best]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("method", ["nearest", "center"])
def test_against_brute_force(metric, method):
    rng = np.random.default_rng(0)
    reference, reference_labels, known_q, known_labels, unknown_q = _split(rng)
    base = reference
    base_labels = reference_labels
    if method == "center":
        base, base_labels = class_centers(reference, reference_labels, metric=metric)
    ks, kl = _brute_nearest(base, base_labels, known_q, metric)
    us, _ = _brute_nearest(base, base_labels, unknown_q, metric)
    scores, predicted = open_set_scores(reference, reference_labels, known_q, metric=metric, method=method)
    np.testing.assert_allclose(scores, ks, atol=1e-5)
    np.testing.assert_array_equal(predicted, kl)

    m = open_set_metrics(reference, reference_labels, known_q, known_labels, unknown_q, metric=metric, method=method)
    sign = 1.0 if metric == "cosine" else -1.0
    is_unknown = np.r_[np.zeros(len(ks)), np.ones(len(us))]
    assert m["open_set_auroc"] == pytest.approx(roc_auc_score(is_unknown, -sign * np.r_[ks, us]), abs=1e-4)
    assert m["open_set_auroc"] > 0.8
    assert m["closed_set_accuracy"] == pytest.approx(np.mean(kl == known_labels))
    # Default threshold keeps 95% of the known queries (114 of 120).
    assert m["open_set_known_accept_rate"] == pytest.approx(114 / 120)
    accepted = sign * ks >= sign * m["open_set_threshold"]
    assert accepted.sum() == 114
    assert m["open_set_unknown_reject_rate"] == pytest.approx(np.mean(sign * us < sign * m["open_set_threshold"]))
    assert m["open_set_known_accuracy"] == pytest.approx(np.mean(accepted & (kl == known_labels)))
    assert m["open_set_accuracy"] == pytest.approx(
        (np.sum(accepted & (kl == known_labels)) + m["open_set_unknown_reject_rate"] * len(us)) / 200
    )


def test_explicit_threshold():
    reference = np.array([[1.0, 0.0], [0.0, 1.0]], "float32")
    labels = np.array([0, 1])
    known_q = np.array([[1.0, 0.1], [0.1, 1.0], [1.0, 1.0]], "float32")
    unknown_q = np.array([[-1.0, 0.2], [0.9, 0.95]], "float32")
    m = open_set_metrics(reference, labels, known_q, [0, 1, 0], unknown_q, threshold=0.9)
    # similarities: known 0.995, 0.995, 0.707; unknown 0.196 (vs [0, 1]), 0.73
    assert m["open_set_threshold"] == 0.9
    assert m["open_set_known_accept_rate"] == pytest.approx(2 / 3)
    assert m["open_set_unknown_reject_rate"] == pytest.approx(1.0)
    assert m["closed_set_accuracy"] == pytest.approx(1.0)
    assert m["open_set_known_accuracy"] == pytest.approx(2 / 3)
    assert m["open_set_accuracy"] == pytest.approx(4 / 5)
    m = open_set_metrics(
        reference, labels, known_q, [0, 1, 0], unknown_q, metric="euclidean", threshold=0.5
    )  # distances: 0.1, 0.1, 1.0; unknown 2.01, 0.9
    assert m["open_set_known_accept_rate"] == pytest.approx(2 / 3)
    assert m["open_set_unknown_reject_rate"] == pytest.approx(1.0)
    m = open_set_metrics(reference, labels, known_q, [0, 1, 0], unknown_q, keep_known=1.0)
    assert m["open_set_known_accept_rate"] == 1.0 and m["open_set_threshold"] == pytest.approx(np.sqrt(0.5), abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"metric": "dot"}, "`metric`"),
        ({"method": "mean"}, "`method`"),
        ({"keep_known": 0.0}, "keep_known"),
        ({"keep_known": 1.5}, "keep_known"),
        ({"threshold": float("nan")}, "threshold"),
        ({"known_query_labels": [0]}, "same length"),
        ({"unknown_queries": np.zeros((2, 3))}, "2 columns"),
        ({"reference_labels": [0]}, "same length"),
    ],
)
def test_bad_input(kwargs, message):
    args = {
        "reference": np.eye(2),
        "reference_labels": [0, 1],
        "known_queries": np.eye(2),
        "known_query_labels": [0, 1],
        "unknown_queries": np.ones((1, 2)),
    }
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        open_set_metrics(**args)
