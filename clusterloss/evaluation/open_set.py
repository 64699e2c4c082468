"""Open-set recognition: known classes (with reference embeddings) against unknown queries.

Protocol: each query gets a "known-ness" score, its similarity to the nearest known
reference (`method="nearest"`) or to the nearest class center (`method="center"`, the mean
reference embedding of each class; for cosine, the mean of the normalised embeddings), and
the label of that reference or center. Scores are cosine similarities (`metric="cosine"`,
accept when `similarity >= threshold`) or Euclidean distances (`metric="euclidean"`, accept
when `distance <= threshold`). Rejecting unknown queries is scored by the AUROC of
known-vs-unknown (unknown is the positive class, threshold-free). At a threshold (given, or
the one that accepts a fraction `keep_known` of the known queries) a known query counts as
correct when it is accepted and its label is right, an unknown query when it is rejected.
"""

from __future__ import annotations

import math

import numpy as np

from clusterloss._validation import (
    as_embeddings,
    as_labels,
    check_choice,
    check_metric,
    check_range,
    normalize_rows,
)
from clusterloss.evaluation.embedding_stats import class_means
from clusterloss.index.index import Index


def class_centers(reference, reference_labels, metric: str = "cosine"):
    """`(centers, classes)`: the mean reference embedding of each class (sorted class ids);
    for cosine the mean of the L2-normalised embeddings, normalised again."""
    x = as_embeddings(reference, "reference")
    y = as_labels(reference_labels, "reference_labels", length=len(x), length_name="reference")
    if check_metric(metric) == "cosine":
        x = normalize_rows(x)
    classes, inverse = np.unique(y, return_inverse=True)
    centers = class_means(x, inverse, len(classes))
    if metric == "cosine":
        centers = normalize_rows(centers)
    return centers, classes


def open_set_scores(
    reference,
    reference_labels,
    queries,
    *,
    metric: str = "cosine",
    method: str = "nearest",
    backend: str = "auto",
    batch_size: int = 1024,
):
    """`(scores, predicted_labels)` of each query: cosine similarity to (or Euclidean distance
    from) the nearest known reference or class center, and that reference's or center's
    label."""
    index = _known_index(reference, reference_labels, metric, method, backend, batch_size)
    q = as_embeddings(queries, "queries", dim=index.dim, allow_empty=True)
    return _nearest(index, q)


def _known_index(reference, reference_labels, metric, method, backend, batch_size) -> Index:
    metric = check_metric(metric)
    method = check_choice(method, "method", ("nearest", "center"))
    x = as_embeddings(reference, "reference")
    y = as_labels(reference_labels, "reference_labels", length=len(x), length_name="reference")
    if method == "center":
        x, y = class_centers(x, y, metric=metric)
    index = Index(x.shape[1], metric=metric, backend=backend, batch_size=batch_size)
    index.add(x, y)
    return index


def _nearest(index: Index, q: np.ndarray):
    scores, idx = index.search(q, 1)
    return scores[:, 0].astype(np.float64), index.labels[idx[:, 0]]


def open_set_metrics(
    reference,
    reference_labels,
    known_queries,
    known_query_labels,
    unknown_queries,
    *,
    metric: str = "cosine",
    method: str = "nearest",
    threshold: float | None = None,
    keep_known: float = 0.95,
    backend: str = "auto",
    batch_size: int = 1024,
) -> dict[str, float]:
    """Open-set metrics (see the module docstring).

    Args:
        reference, reference_labels: embeddings and labels of the known classes.
        known_queries, known_query_labels: queries of known classes (labels among the
            reference labels, else they can never be right).
        unknown_queries: queries of classes absent from the references.
        metric: `"cosine"` (threshold on similarity) or `"euclidean"` (on distance).
        method: `"nearest"` reference or class `"center"`.
        threshold: accept a query when its similarity is >= threshold (cosine) or its
            distance <= threshold (euclidean). Default: the threshold that accepts
            `keep_known` of the known queries (the ceil(keep_known * n)-th best score).
        keep_known: fraction of known queries to accept when `threshold` is None.

    Returns:
        `open_set_auroc` (known vs unknown, unknown positive), `closed_set_accuracy` (known
        queries, nearest label, no rejection), `open_set_threshold`,
        `open_set_known_accept_rate`, `open_set_unknown_reject_rate`,
        `open_set_known_accuracy` (known queries accepted with the right label, over all
        known queries), `open_set_accuracy` (known right-and-accepted plus unknown
        rejected, over all queries), and `num_known`, `num_unknown`.
    """
    from sklearn.metrics import roc_auc_score  # noqa: PLC0415

    metric = check_metric(metric)
    check_range(keep_known, "keep_known", low=0.0, high=1.0, low_open=True)
    index = _known_index(reference, reference_labels, metric, method, backend, batch_size)
    known = as_embeddings(known_queries, "known_queries", dim=index.dim)
    known_labels = as_labels(known_query_labels, "known_query_labels", length=len(known), length_name="known_queries")
    unknown = as_embeddings(unknown_queries, "unknown_queries", dim=index.dim)
    known_scores, predicted = _nearest(index, known)
    unknown_scores, _ = _nearest(index, unknown)
    # Work on "known-ness" (higher = more known): similarity, or negative distance.
    sign = 1.0 if metric == "cosine" else -1.0
    known_k, unknown_k = sign * known_scores, sign * unknown_scores
    if threshold is None:
        keep = max(1, math.ceil(keep_known * len(known) - 1e-9))
        threshold_k = float(np.sort(known_k)[::-1][keep - 1])
    else:
        threshold = float(threshold)
        if not math.isfinite(threshold):
            raise ValueError(f"`threshold` must be finite; got {threshold!r}.")
        threshold_k = sign * threshold
    accepted_known = known_k >= threshold_k
    rejected_unknown = unknown_k < threshold_k
    right = predicted == known_labels
    is_unknown = np.concatenate([np.zeros(len(known), bool), np.ones(len(unknown), bool)])
    return {
        "open_set_auroc": float(roc_auc_score(is_unknown, -np.concatenate([known_k, unknown_k]))),
        "closed_set_accuracy": float(np.mean(right)),
        "open_set_threshold": float(sign * threshold_k),
        "open_set_known_accept_rate": float(np.mean(accepted_known)),
        "open_set_unknown_reject_rate": float(np.mean(rejected_unknown)),
        "open_set_known_accuracy": float(np.mean(right & accepted_known)),
        "open_set_accuracy": float(
            (np.sum(right & accepted_known) + np.sum(rejected_unknown)) / (len(known) + len(unknown))
        ),
        "num_known": len(known),
        "num_unknown": len(unknown),
    }
