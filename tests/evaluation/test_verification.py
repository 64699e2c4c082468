"""Verification metrics: scikit-learn's ROC numbers, a hand-made EER/TAR case, pairs, plot."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from clusterloss.evaluation import (
    far_key,
    make_pairs,
    pair_scores,
    roc_curve,
    roc_metrics,
    save_roc_plot,
    threshold_at_far,
    verification_metrics,
    verification_scores,
)


def _embeddings(rng, n=400, classes=15, dim=8, spread=1.0):
    centers = rng.normal(size=(classes, dim))
    y = rng.integers(0, classes, n)
    return (centers[y] + spread * rng.normal(size=(n, dim))).astype("float32"), y


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_against_sklearn(metric):
    rng = np.random.default_rng(0)
    x, y = _embeddings(rng)
    scores, genuine = verification_scores(x, y, metric=metric)
    m = verification_metrics(x, y, metric=metric)
    assert m["roc_auc"] == pytest.approx(roc_auc_score(genuine, scores), abs=1e-12)
    far, tar, thresholds = sk_roc_curve(genuine, scores, drop_intermediate=False)
    ours = roc_curve(scores, genuine)
    for a, b in zip(ours, (far, tar, thresholds)):
        np.testing.assert_array_equal(a, b)
    assert m["num_genuine_pairs"] + m["num_impostor_pairs"] == len(x) * (len(x) - 1) / 2
    for target in (1e-1, 1e-2, 1e-3):
        # TAR at FAR: the best TPR among ROC points with FPR <= target.
        assert m[f"tar_at_far_{far_key(target)}"] == pytest.approx(tar[far <= target].max(), abs=1e-12)
        t = m[f"threshold_at_far_{far_key(target)}"]
        impostor = scores[~genuine]
        assert np.mean(impostor >= t) <= target
        assert np.mean(impostor >= np.nextafter(t, -np.inf)) > target  # the smallest such
    # EER lies between the FAR and FRR of its bracketing ROC points.
    frr = 1 - tar
    i = int(np.argmax(frr <= far))
    assert far[i - 1] <= m["eer"] <= far[i]
    assert frr[i] <= m["eer"] <= frr[i - 1]


def test_hand_made_case():
    genuine_scores = [0.9, 0.8, 0.7, 0.4]
    impostor_scores = [0.6, 0.5, 0.3, 0.2, 0.1]
    scores = np.array(genuine_scores + impostor_scores)
    is_genuine = np.array([True] * 4 + [False] * 5)
    m = roc_metrics(scores, is_genuine, far_targets=(0.2, 0.4, 0.1))
    # FRR stays 0.25 while FAR goes 0.2 -> 0.4 between thresholds 0.6 and 0.5: EER = 0.25.
    assert m["eer"] == pytest.approx(0.25)
    assert m["eer_threshold"] == pytest.approx(0.5)
    # FAR <= 0.2 with 5 impostors: one impostor (0.6) may pass -> accept > 0.5: TAR 3/4.
    assert m["tar_at_far_2e-1"] == pytest.approx(0.75)
    assert 0.5 < m["threshold_at_far_2e-1"] <= 0.6
    # FAR <= 0.4: two impostors may pass -> accept > 0.3: TAR 4/4.
    assert m["tar_at_far_4e-1"] == pytest.approx(1.0)
    # FAR 0.1 needs >= 10 impostor pairs: not reported.
    assert math.isnan(m["tar_at_far_1e-1"]) and math.isnan(m["threshold_at_far_1e-1"])
    assert m["roc_auc"] == pytest.approx(roc_auc_score(is_genuine, scores))
    assert threshold_at_far(scores, is_genuine, 1.0) == -np.inf


def test_ties_in_impostor_scores():
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.1, 0.1])
    is_genuine = np.array([True, True, False, False, False, False])
    t = threshold_at_far(scores, is_genuine, 0.25)  # one of 4 impostors may pass, but two tie
    assert t > 0.5
    assert roc_metrics(scores, is_genuine, far_targets=(0.25,))["tar_at_far_2.5e-1"] == 0.5


def test_make_pairs_all_and_sampled():
    y = np.array([0, 0, 1, 1, 1, 2])
    i, j, g = make_pairs(y)
    assert len(i) == 15 and (i < j).all()
    assert g.sum() == 1 + 3
    np.testing.assert_array_equal(g, y[i] == y[j])

    rng = np.random.default_rng(1)
    y = rng.integers(0, 50, 3000)
    i, j, g = make_pairs(y, max_pairs=20_000, seed=3)
    assert len(i) == 20_000 and (i < j).all()
    assert len(np.unique(i * 3000 + j)) == 20_000
    assert g.sum() == 10_000  # half the budget each
    np.testing.assert_array_equal(g, y[i] == y[j])
    i2, j2, _ = make_pairs(y, max_pairs=20_000, seed=3)
    np.testing.assert_array_equal(i, i2)
    np.testing.assert_array_equal(j, j2)
    # Uniform over genuine pairs: each class gets a share ~ c(c-1)/2.
    sizes = np.bincount(y)
    expected = sizes * (sizes - 1) / 2
    observed = np.bincount(y[i[g]], minlength=len(sizes))
    np.testing.assert_allclose(observed / g.sum(), expected / expected.sum(), atol=0.01)
    # Uniform over impostor pairs: a sample is in ~ 2 * 10000 * (n - c) / (sum over samples).
    counts = np.bincount(np.concatenate([i[~g], j[~g]]), minlength=3000)
    partners = 3000 - sizes[y]
    assert np.corrcoef(counts, partners)[0, 1] > 0.0
    assert abs(counts.mean() - 20_000 / 3000) < 1e-9 and counts.max() < 25

    # Few genuine pairs: all of them are kept, impostors take the rest of the budget.
    y = np.arange(1000)
    y[:4] = 0
    i, j, g = make_pairs(y, max_pairs=5000, seed=0)
    assert g.sum() == 6 and len(i) == 5000


def test_pair_scores():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(20, 5)).astype("float32")
    i, j, _ = make_pairs(np.arange(20) % 3)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(pair_scores(x, i, j), np.sum(xn[i] * xn[j], axis=1), atol=1e-6)
    np.testing.assert_allclose(
        pair_scores(x, i, j, metric="euclidean"), -np.linalg.norm(x[i] - x[j], axis=1), atol=1e-5
    )


def test_save_roc_plot(tmp_path):
    rng = np.random.default_rng(3)
    x, y = _embeddings(rng, n=150)
    curves = {
        "cosine": verification_scores(x, y),
        "euclidean": verification_scores(x, y, metric="euclidean"),
    }
    path = save_roc_plot(tmp_path / "roc.png", curves)
    assert (tmp_path / "roc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path == tmp_path / "roc.png"
    save_roc_plot(tmp_path / "one.png", curves["cosine"])
    assert (tmp_path / "one.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: verification_metrics(np.zeros((3, 2)), [0, 1]), "same length"),
        (lambda: verification_metrics(np.zeros(3), [0, 1, 2]), "shape"),
        (lambda: verification_metrics(np.eye(3), [0, 1, 2], metric="l1"), "`metric`"),
        (lambda: verification_metrics(np.eye(3), [0, 1, 2]), "genuine and impostor"),
        (lambda: make_pairs([0]), "at least 2"),
        (lambda: make_pairs([0, 1, 1], max_pairs=0), "max_pairs"),
        (lambda: roc_metrics([0.1, 0.2], [True]), "same length"),
        (lambda: roc_metrics([0.1, 0.2], [True, False], far_targets=(0.0,)), "far_targets"),
        (lambda: roc_metrics([0.1, 0.2], [2, 0]), "is_genuine"),
        (lambda: roc_metrics([[0.1, 0.2]], [True, False]), "shape"),
        (lambda: pair_scores(np.eye(3), [0, 1], [1]), "same length"),
        (lambda: pair_scores(np.eye(3), [0], [3]), r"\[0, 3\)"),
    ],
)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()
