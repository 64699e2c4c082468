"""Two numbers that say how well embeddings cluster: 1-NN accuracy and the intra/inter ratio."""

from __future__ import annotations

import numpy as np

from clusterloss._validation import as_embeddings, as_labels
from clusterloss.index.knn import KNNClassifier


def class_means(embeddings, labels, num_classes: int | None = None) -> np.ndarray:
    """Mean embedding of each class 0..num_classes-1 (NaN for a class with no sample)."""
    x = as_embeddings(embeddings, "embeddings")
    y = as_labels(labels, "labels", length=len(x))
    k = int(num_classes if num_classes is not None else y.max() + 1)
    sums = np.zeros((k, x.shape[1]), "float64")
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=k)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).astype("float32")


def knn_accuracy(query, query_labels, reference, reference_labels) -> float:
    """Accuracy of 1-nearest-neighbour (Euclidean) classification of queries by references
    (through the index: FAISS when installed, else NumPy)."""
    q = as_embeddings(query, "query")
    r = as_embeddings(reference, "reference", dim=q.shape[1])
    q_labels = as_labels(query_labels, "query_labels", length=len(q), length_name="query")
    r_labels = as_labels(reference_labels, "reference_labels", length=len(r), length_name="reference")
    return KNNClassifier(k=1, metric="euclidean").fit(r, r_labels).score(q, q_labels)


def intra_inter_ratio(test, test_labels, train, train_labels) -> float:
    """Mean distance of a test embedding to its class's train mean, divided by the mean
    distance between two class means (over all pairs of distinct classes). Smaller is
    tighter clusters; it does not change when the embeddings are scaled. NaN when the class
    means coincide (a collapsed embedding): the ratio is undefined."""
    means = class_means(train, train_labels)
    x = as_embeddings(test, "test")
    y = as_labels(test_labels, "test_labels", length=len(x), length_name="test")
    intra = float(np.mean(np.linalg.norm(x - means[y], axis=1)))
    valid = means[~np.isnan(means).any(axis=1)]
    diffs = np.linalg.norm(valid[:, None, :] - valid[None, :, :], axis=-1)
    inter = float(diffs[np.triu_indices(len(valid), 1)].mean())
    return intra / inter if inter > 0 else float("nan")
