"""Retrieval metrics on extracted embeddings, with the definitions of PML's AccuracyCalculator.

`retrieval_metrics` gives the numbers of `pytorch_metric_learning.utils.accuracy_calculator.
AccuracyCalculator` (PML 2.9.0, `avg_of_avgs=False` by default) on the same inputs, plus
Recall@k, under the keys shared with metrics.json (`clusterloss.evaluation.keys.PML_NAMES`
gives PML's name of each), computed in bounded memory through `clusterloss.index.Index`
(FAISS or NumPy), so it scales to millions of references. Differences from PML (see docs/evaluation.md):

- labels stay int64 (PML casts them to float32, which merges distinct ids above 2**24);
- `k` larger than the number of references is clamped (PML reads FAISS's -1 padding as the
  last reference's label);
- no query label present in the reference set, or a one-element same-source set, gives NaN
  (PML fails with k = 0);
- k-means for NMI/AMI is scikit-learn's, seeded (PML's default is FAISS's k-means);
- `metric="cosine"` ranks by cosine similarity, which is PML's default L2 ranking on
  L2-normalised embeddings.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from clusterloss._validation import (
    as_embeddings,
    as_labels,
    check_metric,
    check_positive_int,
    normalize_rows,
)
from clusterloss.index.index import _RESULT_ELEMENTS, Index, _progbar, drop_self_matches


@dataclass(frozen=True)
class Ranking:
    """The neighbours of a batch of queries, as a per-query metric sees them.

    Attributes:
        same: `(b, depth)` bool, whether the i-th nearest reference has the query's label.
        relevant: `(b,)` R, the references of the query's class (itself excluded).
        num_k: the neighbours a metric reads (`k`), at most `depth`.
    """

    same: np.ndarray
    relevant: np.ndarray
    num_k: int

    @cached_property
    def head(self) -> np.ndarray:
        return self.same[:, : self.num_k]

    @cached_property
    def ranks(self) -> np.ndarray:
        return np.arange(1, self.num_k + 1, dtype=np.float64)

    @cached_property
    def within_r(self) -> np.ndarray:
        """PML's relevance mask: the first R ranks of each query."""
        return np.arange(self.num_k)[None, :] < self.relevant[:, None]


CLUSTERING_METRICS = ("nmi", "ami")
RECALL = "recall_at_k"  # Recall@k for each k of `recall_at`: `recall_at_1`, `recall_at_2`, ...
PER_QUERY: dict[str, Callable[[Ranking], np.ndarray]] = {}
"""Metric key -> its value for each query of a `Ranking`; the reported number is the mean
over the queries (or over classes, `avg_of_avgs`). `register_metric` adds one."""


def register_metric(name: str):
    """Decorator: `fn(ranking) -> (b,) values` becomes the neighbour metric `name`."""

    def add(fn: Callable[[Ranking], np.ndarray]) -> Callable[[Ranking], np.ndarray]:
        if name in PER_QUERY or name in CLUSTERING_METRICS or name.startswith("recall_at_"):
            raise ValueError(f"a retrieval metric named {name!r} exists already.")
        PER_QUERY[name] = fn
        return fn

    return add


@register_metric("precision_at_1")
def _precision_at_1(r: Ranking) -> np.ndarray:
    return r.head[:, 0].astype(np.float64)


@register_metric("r_precision")
def _r_precision(r: Ranking) -> np.ndarray:
    return (r.head & r.within_r).sum(axis=1) / r.within_r.sum(axis=1).astype(np.float64)


def _average_precision(hits: np.ndarray, r: Ranking) -> np.ndarray:
    return (np.cumsum(hits, axis=1) * hits / r.ranks).sum(axis=1) / r.relevant


@register_metric("map_at_r")
def _map_at_r(r: Ranking) -> np.ndarray:
    return _average_precision(r.head & r.within_r, r)


@register_metric("mean_average_precision")
def _mean_average_precision(r: Ranking) -> np.ndarray:
    return _average_precision(r.head, r)


@register_metric("mean_reciprocal_rank")
def _mean_reciprocal_rank(r: Ranking) -> np.ndarray:
    return np.where(r.head.any(axis=1), 1.0 / (np.argmax(r.head, axis=1) + 1.0), 0.0)


KNN_METRICS = (*PER_QUERY, RECALL)
METRIC_NAMES = KNN_METRICS + CLUSTERING_METRICS


def _known_names() -> tuple[str, ...]:
    return (*PER_QUERY, RECALL, *CLUSTERING_METRICS)


def _select(include, exclude) -> list[str]:
    names = _known_names()
    for value, name in ((include, "include"), (exclude, "exclude")):
        if isinstance(value, str) or not isinstance(value, (tuple, list, set, frozenset)):
            raise ValueError(f"`{name}` must be a list or tuple of metric names; got {value!r}.")
        unknown = [m for m in value if m not in names]
        if unknown:
            raise ValueError(f"`{name}` must hold names from {list(names)}; got unknown {unknown}.")
    chosen = list(include) if include else list(names)
    return [m for m in names if m in chosen and m not in exclude]


def _check_k(k):
    if k is None or (isinstance(k, str) and k == "max_bin_count"):
        return k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"`k` must be an integer >= 1, None or 'max_bin_count'; got {k!r}.")
    return int(k)


def _recall_ks(recall_at) -> tuple[int, ...]:
    if isinstance(recall_at, (int, np.integer)) and not isinstance(recall_at, bool):
        recall_at = (recall_at,)
    if not isinstance(recall_at, (tuple, list)) or not recall_at:
        raise ValueError(f"`recall_at` must be a non-empty list of integers >= 1; got {recall_at!r}.")
    return tuple(sorted({check_positive_int(v, "recall_at") for v in recall_at}))


def _per_query(ranking: Ranking, chosen, recall_ks) -> dict[str, np.ndarray]:
    """Per-query values of each chosen neighbour metric."""
    out = {name: PER_QUERY[name](ranking) for name in chosen if name in PER_QUERY}
    if RECALL in chosen:
        for k in recall_ks:
            out[f"recall_at_{k}"] = ranking.same[:, :k].any(axis=1).astype(np.float64)
    return out


def _average(values: np.ndarray, labels: np.ndarray, avg_of_avgs: bool) -> float:
    if len(values) == 0:
        return float("nan")
    if not avg_of_avgs:
        return float(np.mean(values))
    classes, inverse = np.unique(labels, return_inverse=True)
    sums = np.bincount(inverse, weights=values, minlength=len(classes))
    counts = np.bincount(inverse, minlength=len(classes))
    return float(np.mean(sums / counts))


def cluster_labels(embeddings, n_clusters: int, seed: int = 0, metric: str = "euclidean") -> np.ndarray:
    """k-means (scikit-learn, seeded, one k-means++ initialisation) cluster ids of the rows of
    `embeddings`; with `metric="cosine"` the rows are L2-normalised first."""
    from sklearn.cluster import KMeans  # noqa: PLC0415 - only needed for NMI/AMI

    x = as_embeddings(embeddings, "embeddings")
    if check_metric(metric) == "cosine":
        x = normalize_rows(x)
    n_clusters = check_positive_int(n_clusters, "n_clusters")
    if n_clusters > len(x):
        raise ValueError(f"`n_clusters` must be <= the number of rows ({len(x)}); got {n_clusters}.")
    return KMeans(n_clusters=n_clusters, n_init=1, random_state=seed).fit_predict(x)


def retrieval_metrics(
    query,
    query_labels,
    reference=None,
    reference_labels=None,
    *,
    ref_includes_query: bool = False,
    k="max_bin_count",
    metric: str = "cosine",
    recall_at=(1, 2, 4, 8),
    include=(),
    exclude=(),
    avg_of_avgs: bool = False,
    seed: int = 0,
    backend: str = "auto",
    batch_size: int = 1024,
    verbose: bool = False,
) -> dict[str, float]:
    """Retrieval and clustering metrics of query embeddings against reference embeddings.

    Args:
        query, query_labels: `(n, dim)` embeddings and `(n,)` integer labels.
        reference, reference_labels: the searched set. `reference=None` means the queries
            are also the references (PML's default, `ref_includes_query=True`): each query's
            own row is left out of its neighbours. `reference` may also be a labelled
            `clusterloss.index.Index` (its `metric` then decides; `reference_labels` must be
            None).
        ref_includes_query: the first `len(query)` rows of `reference` are the queries
            (checked, as PML does); their self-matches are removed.
        k: neighbours per query: `"max_bin_count"` (default; the largest class size in the
            references, minus 1 when self-matches are removed: exact R-precision and MAP@R),
            None (all references: PML's default; MAP and MRR over the full ranking) or an
            integer (clamped to the number of references).
        metric: `"cosine"` or `"euclidean"` (PML's default ranking).
        recall_at: k values of Recall@k (fraction of queries with a same-class reference
            among their k nearest).
        include, exclude: metric names, from `METRIC_NAMES` and `register_metric`'s
            (`"recall_at_k"` covers all `recall_at_*` keys). Only what is needed is computed
            (k-means only for nmi/ami).
        avg_of_avgs: average per class, then over classes (PML's option; off by default).
        seed: k-means seed for NMI/AMI.
        backend, batch_size, verbose: neighbour search (`Index`) settings; `verbose` shows a
            progress bar over query batches.

    Returns:
        A dict of floats: `precision_at_1`, `r_precision`, `map_at_r`,
        `mean_average_precision`, `mean_reciprocal_rank`, `nmi`, `ami`, `recall_at_<k>`
        and any registered metric (`clusterloss.evaluation.keys`; `PML_NAMES` maps them to
        PML's names). Queries whose class has no other reference are left
        out of the neighbour metrics (NaN if no query is left, with a warning), as in PML;
        NMI/AMI cluster all queries.
    """
    chosen = _select(include, exclude)
    k = _check_k(k)
    metric = check_metric(metric)
    recall_ks = _recall_ks(recall_at)
    batch_size = check_positive_int(batch_size, "batch_size")
    q = as_embeddings(query, "query")
    q_labels = as_labels(query_labels, "query_labels", length=len(q), length_name="query")

    index = None
    if isinstance(reference, Index):
        index = reference
        if reference_labels is not None:
            raise ValueError("`reference_labels` must be None when `reference` is an Index (it has labels).")
        if index.labels is None:
            raise ValueError("`reference` is an Index without labels; add it with labels.")
        if q.shape[1] != index.dim:
            raise ValueError(f"`query` must have {index.dim} columns (the index's dim); got shape {q.shape}.")
        metric = index.metric
        r_labels = index.labels
        n_ref = len(index)
    elif reference is None:
        if reference_labels is not None:
            raise ValueError("`reference_labels` was given without `reference`.")
        ref_includes_query = True
        r, r_labels = q, q_labels
        n_ref = len(r)
    else:
        r = as_embeddings(reference, "reference", dim=q.shape[1])
        if reference_labels is None:
            raise ValueError("`reference_labels` must be given with `reference`.")
        r_labels = as_labels(reference_labels, "reference_labels", length=len(r), length_name="reference")
        n_ref = len(r)
        if ref_includes_query:
            if len(r) < len(q) or not (np.allclose(q, r[: len(q)]) and np.array_equal(q_labels, r_labels[: len(q)])):
                raise ValueError(
                    "`ref_includes_query=True` needs the first len(query) rows of `reference` and "
                    "`reference_labels` to equal `query` and `query_labels`."
                )
    self_count = int(bool(ref_includes_query))

    results: dict[str, float] = {}
    knn_chosen = [m for m in chosen if m in PER_QUERY or m == RECALL]
    if knn_chosen:
        # R per query: references of its class, minus itself when it is a reference.
        classes, counts = np.unique(r_labels, return_counts=True)
        pos = np.clip(np.searchsorted(classes, q_labels), 0, max(len(classes) - 1, 0))
        found = classes[pos] == q_labels if len(classes) else np.zeros(len(q), bool)
        match_counts = np.where(found, counts[pos] if len(classes) else 0, 0)
        relevant = match_counts - self_count
        not_lone = relevant > 0
        available = n_ref - self_count
        max_bin_count = int(match_counts.max())
        if k is None:
            num_k = available
        elif k == "max_bin_count":
            num_k = max_bin_count - self_count
        else:
            num_k = k
            if k < max_bin_count and {"r_precision", "map_at_r"} & set(knn_chosen):
                warnings.warn(
                    f"k={k} is less than the largest class size in the references "
                    f"({max_bin_count}): r_precision and map_at_r are "
                    "then truncated (as in PML). Use k='max_bin_count' for exact values.",
                    stacklevel=2,
                )
        num_k = min(num_k, available)
        depth = min(max(num_k, max(recall_ks) if RECALL in knn_chosen else 0), available)
        per_query: dict[str, list[np.ndarray]] = {}
        kept_labels = q_labels[not_lone]
        if num_k < 1 or not not_lone.any():
            warnings.warn(
                "None of the query labels has another reference of its class: the neighbour metrics are NaN.",
                stacklevel=2,
            )
        else:
            if index is None:
                index = Index(q.shape[1], metric=metric, kind="flat", backend=backend, batch_size=batch_size)
                index.add(r, r_labels)
            search_k = depth + self_count
            rows = max(1, min(batch_size, _RESULT_ELEMENTS // (search_k + 1)))
            todo = np.nonzero(not_lone)[0]
            bar = _progbar(len(todo), "query") if verbose else None
            for start in range(0, len(todo), rows):
                which = todo[start : start + rows]
                _, found_idx = index.search(q[which], search_k, batch_size=rows, verbose=False)
                if self_count:
                    (found_idx,) = drop_self_matches(which, found_idx)
                same = r_labels[found_idx] == q_labels[which][:, None]
                same &= found_idx >= 0  # padding from an approximate index
                ranking = Ranking(same, relevant[which], num_k)
                for name, values in _per_query(ranking, knn_chosen, recall_ks).items():
                    per_query.setdefault(name, []).append(values)
                if bar is not None:
                    bar.update(min(start + rows, len(todo)))
        names = [m for m in knn_chosen if m != RECALL]
        if RECALL in knn_chosen:
            names += [f"recall_at_{r_}" for r_ in recall_ks]
        for name in names:
            values = np.concatenate(per_query[name]) if name in per_query else np.empty(0)
            results[name] = _average(values, kept_labels, avg_of_avgs)

    if any(m in CLUSTERING_METRICS for m in chosen):
        from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score  # noqa: PLC0415

        clusters = cluster_labels(q, len(np.unique(q_labels)), seed=seed, metric=metric)
        if "nmi" in chosen:
            results["nmi"] = float(normalized_mutual_info_score(q_labels, clusters))
        if "ami" in chosen:
            results["ami"] = float(adjusted_mutual_info_score(q_labels, clusters))
    return results
