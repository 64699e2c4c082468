"""`KNNClassifier`: a scikit-learn-style k-nearest-neighbour classifier on an `Index`."""

from __future__ import annotations

import numpy as np

from clusterloss._validation import as_embeddings, as_labels, check_choice, check_positive_int
from clusterloss.index.index import Index


class KNNClassifier:
    """k-nearest-neighbour classification of embeddings, searched through an `Index`.

    Same predictions as `sklearn.neighbors.KNeighborsClassifier(n_neighbors=k,
    weights=..., metric=...)` (`metric="cosine"` there for cosine): majority vote, or votes
    weighted by 1 / distance (cosine distance = 1 - similarity; a neighbour at distance 0
    takes all the weight); vote ties go to the smallest class. Scales to millions of
    references with FAISS (`kind="hnsw"`/`"ivf"` for approximate search).

    Args:
        k: number of neighbours.
        weights: `"uniform"` or `"distance"`.
        metric: `"euclidean"` (scikit-learn's default) or `"cosine"`.
        kind, backend, batch_size, verbose, **index_kwargs: passed to `Index`.
    """

    def __init__(
        self,
        k: int = 5,
        weights: str = "uniform",
        metric: str = "euclidean",
        kind: str = "flat",
        backend: str = "auto",
        batch_size: int = 1024,
        verbose: bool = False,
        **index_kwargs,
    ):
        self.k = check_positive_int(k, "k")
        self.weights = check_choice(weights, "weights", ("uniform", "distance"))
        self.metric = check_choice(metric, "metric", ("cosine", "euclidean"))
        self.kind = kind
        self.backend = backend
        self.batch_size = batch_size
        self.verbose = verbose
        self.index_kwargs = index_kwargs
        self.index_: Index | None = None

    def fit(self, X, y) -> KNNClassifier:
        x = as_embeddings(X, "X")
        labels = as_labels(y, "y", length=len(x), length_name="X")
        if self.k > len(x):
            raise ValueError(f"`k` must be <= the number of fitted samples ({len(x)}); got {self.k}.")
        self.classes_, encoded = np.unique(labels, return_inverse=True)
        self.index_ = Index(
            x.shape[1],
            metric=self.metric,
            kind=self.kind,
            backend=self.backend,
            batch_size=self.batch_size,
            verbose=self.verbose,
            **self.index_kwargs,
        )
        self.index_.add(x, encoded)
        self.n_features_in_ = x.shape[1]
        return self

    def _check_fitted(self):
        if self.index_ is None:
            raise ValueError("this KNNClassifier is not fitted yet: call `fit(X, y)` first.")

    def kneighbors(self, X, n_neighbors: int | None = None, return_distance: bool = True):
        """Distances (Euclidean, or cosine distance 1 - similarity) and positions of the
        nearest fitted samples, nearest first, like scikit-learn's `kneighbors`."""
        self._check_fitted()
        k = self.k if n_neighbors is None else check_positive_int(n_neighbors, "n_neighbors")
        if k > len(self.index_):
            raise ValueError(f"`n_neighbors` must be <= the number of fitted samples ({len(self.index_)}); got {k}.")
        x = as_embeddings(X, "X", dim=self.n_features_in_, allow_empty=True)
        scores, idx = self.index_.search(x, k, batch_size=self.batch_size, verbose=self.verbose)
        if not return_distance:
            return idx
        distances = np.maximum(1.0 - scores, 0.0) if self.metric == "cosine" else scores
        return distances, idx

    def predict_proba(self, X) -> np.ndarray:
        """Per-class vote shares, columns in the order of `classes_`.

        Only neighbours that were found vote: an approximate index (`kind="hnsw"`/`"ivf"`)
        may return fewer than `k` (the rest is padding, position -1), and then the query is
        classified by those it found. A query for which nothing was found is an error (raise
        `nprobe` / `ef_search`), never a guess.
        """
        distances, idx = self.kneighbors(X)
        n, k = idx.shape
        found = idx >= 0
        empty = np.flatnonzero(~found.any(axis=1))
        if len(empty):
            raise ValueError(
                f"the index found no neighbour for {len(empty)} of {n} queries (first: row "
                f"{int(empty[0])}); an approximate index missed them: raise `nprobe` (ivf) or "
                "`ef_search` (hnsw), or use kind='flat'."
            )
        neighbour_classes = np.where(found, self.index_.labels[np.where(found, idx, 0)], 0)
        if self.weights == "uniform":
            weights = found.astype(np.float64)
        else:
            with np.errstate(divide="ignore"):
                weights = np.where(found, 1.0 / distances.astype(np.float64), 0.0)
            exact = np.isinf(weights)
            rows = exact.any(axis=1)
            weights[rows] = exact[rows]
        votes = np.zeros((n, len(self.classes_)), np.float64)
        np.add.at(votes, (np.repeat(np.arange(n), k), neighbour_classes.reshape(-1)), weights.reshape(-1))
        return votes / votes.sum(axis=1, keepdims=True)

    def predict(self, X) -> np.ndarray:
        proba = self.predict_proba(X)
        return self.classes_[np.argmax(proba, axis=1)]

    def score(self, X, y) -> float:
        """Mean accuracy of `predict(X)` against `y`."""
        x = as_embeddings(X, "X", dim=self.n_features_in_ if self.index_ is not None else None)
        labels = as_labels(y, "y", length=len(x), length_name="X")
        return float(np.mean(self.predict(x) == labels))
