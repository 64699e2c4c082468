"""Two numbers that say how well embeddings cluster: 1-NN accuracy and the intra/inter ratio."""

from __future__ import annotations

import numpy as np


def _as_2d(x, name: str) -> np.ndarray:
    x = np.asarray(x, dtype="float32")
    if x.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, dim); got shape {x.shape}.")
    return x


def class_means(embeddings, labels, num_classes: int | None = None) -> np.ndarray:
    """Mean embedding of each class 0..num_classes-1 (NaN for a class with no sample)."""
    x = _as_2d(embeddings, "embeddings")
    y = np.asarray(labels).reshape(-1)
    k = int(num_classes if num_classes is not None else y.max() + 1)
    sums = np.zeros((k, x.shape[1]), "float64")
    np.add.at(sums, y, x)
    counts = np.bincount(y, minlength=k)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (sums / counts).astype("float32")


def knn_accuracy(query, query_labels, reference, reference_labels, chunk: int = 1024) -> float:
    """Accuracy of 1-nearest-neighbour (Euclidean) classification of queries by references."""
    q, r = _as_2d(query, "query"), _as_2d(reference, "reference")
    q_lab, r_lab = np.asarray(query_labels).reshape(-1), np.asarray(reference_labels).reshape(-1)
    if len(q) != len(q_lab) or len(r) != len(r_lab):
        raise ValueError("embeddings and labels must have the same length.")
    r_sq = np.sum(r * r, axis=1)
    hits = 0
    for start in range(0, len(q), chunk):
        block = q[start : start + chunk]
        nearest = np.argmin(r_sq[None, :] - 2.0 * block @ r.T, axis=1)
        hits += int(np.sum(r_lab[nearest] == q_lab[start : start + chunk]))
    return hits / max(len(q), 1)


def intra_inter_ratio(test, test_labels, train, train_labels) -> float:
    """Mean distance of a test embedding to its class's train mean, divided by the mean
    distance between two class means (over all pairs of distinct classes). Smaller is
    tighter clusters; it does not change when the embeddings are scaled."""
    means = class_means(train, train_labels)
    x, y = _as_2d(test, "test"), np.asarray(test_labels).reshape(-1)
    intra = float(np.mean(np.linalg.norm(x - means[y], axis=1)))
    valid = means[~np.isnan(means).any(axis=1)]
    diffs = np.linalg.norm(valid[:, None, :] - valid[None, :, :], axis=-1)
    inter = float(diffs[np.triu_indices(len(valid), 1)].mean())
    return intra / inter
