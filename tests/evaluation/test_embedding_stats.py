"""knn_accuracy and intra_inter_ratio (the numbers `clusterloss train` reports) against
scikit-learn and a slow NumPy loop."""

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from clusterloss.evaluation.embedding_stats import class_means, intra_inter_ratio, knn_accuracy

RNG = np.random.default_rng(3)


def clustered(n, classes=4, dim=3, spread=1.5):
    y = RNG.integers(0, classes, n)
    return (RNG.normal(size=(n, dim)) * spread + np.eye(classes, dim)[y] * 3).astype("float32"), y


def test_knn_accuracy_equals_scikit_learn_one_nearest_neighbour():
    train, y_train = clustered(300)
    test, y_test = clustered(120)
    expected = KNeighborsClassifier(1).fit(train, y_train).score(test, y_test)
    assert 0.3 < expected < 1.0  # a case where mistakes happen
    assert knn_accuracy(test, y_test, train, y_train) == pytest.approx(expected)


def test_intra_inter_ratio_against_a_slow_loop():
    train, y_train = clustered(200)
    test, y_test = clustered(80)
    means = {c: np.mean([train[i] for i in range(len(train)) if y_train[i] == c], axis=0) for c in range(4)}
    intra = np.mean([np.linalg.norm(test[i] - means[y_test[i]]) for i in range(len(test))])
    pairs = [(a, b) for a in range(4) for b in range(a + 1, 4)]
    inter = np.mean([np.linalg.norm(means[a] - means[b]) for a, b in pairs])
    got = intra_inter_ratio(test, y_test, train, y_train)
    assert got == pytest.approx(intra / inter, rel=1e-5)
    assert intra_inter_ratio(test * 7, y_test, train * 7, y_train) == pytest.approx(got, rel=1e-5)


def test_class_means_mark_absent_classes_nan():
    means = class_means(np.array([[1.0, 2.0], [3.0, 4.0]]), [0, 0], num_classes=2)
    np.testing.assert_allclose(means[0], [2.0, 3.0])
    assert np.isnan(means[1]).all()


def test_bad_input():
    with pytest.raises(ValueError, match=r"`query` must have shape \(n, dim\)"):
        knn_accuracy(np.zeros(3), [0, 1, 2], np.zeros((3, 2)), [0, 1, 2])
    with pytest.raises(ValueError, match=r"`test_labels` and `test` must have the same length"):
        intra_inter_ratio(np.zeros((3, 2)), [0, 1], np.zeros((3, 2)), [0, 1, 1])
