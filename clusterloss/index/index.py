"""`Index`: nearest-neighbour search over labelled embeddings, backed by FAISS or NumPy.

FAISS is optional (`pip install clusterloss[faiss]`) and imported lazily, here only. Without
it, exact search runs on NumPy (chunked matrix products + `argpartition`, bounded memory): the
same results, slower; one line on stderr says so once per process (the `clusterloss.index`
logger's warning: `logging` configures or silences it).

Conventions (both backends):

- `metric="cosine"`: vectors are L2-normalised when added and queried; scores are cosine
  similarities, sorted in decreasing order. `metric="euclidean"`: scores are Euclidean
  distances (not squared), sorted in increasing order.
- Exact search (`kind="flat"`) breaks exact ties by the lower position (insertion order),
  the convention of FAISS's `IndexFlatL2` and therefore of PML's `AccuracyCalculator`.
- `indices` are positions (0-based, in insertion order); `index.labels[indices]` and
  `index.ids[indices]` give the labels and ids. Where fewer than `k` neighbours exist
  (`k > len(index)`, or an approximate index that found fewer), the row is padded with index
  -1 and score -inf (cosine) or +inf (euclidean).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import zipfile
from typing import Any

import numpy as np

from clusterloss._validation import (
    as_embeddings,
    as_labels,
    check_choice,
    check_metric,
    check_positive_int,
    normalize_rows,
)

KINDS = ("flat", "hnsw", "ivf")
BACKENDS = ("auto", "faiss", "numpy")
FORMAT_VERSION = 1

# Elements of one (queries x references) score block in the NumPy path: 2**23 float32 =
# 32 MiB, a few such temporaries at a time, whatever the collection size.
_BLOCK_ELEMENTS = 2**23
# Scores of a search (queries x stored vectors) that an exact FAISS index computes with NumPy.
_SMALL_SEARCH = 2**16
# Elements of one (queries x k) result block: bounds memory when k is very large.
_RESULT_ELEMENTS = 2**24

_faiss_module: Any = None
_faiss_checked = False
_warned_numpy = False


def _load_faiss():
    """The `faiss` module, or None if it cannot be imported (checked once per process).

    `CLUSTERLOSS_DISABLE_FAISS=1` in the environment forces the NumPy path.
    """
    global _faiss_module, _faiss_checked
    if not _faiss_checked:
        _faiss_checked = True
        if os.environ.get("CLUSTERLOSS_DISABLE_FAISS", "") not in ("", "0"):
            _faiss_module = None
        else:
            try:
                import faiss  # noqa: PLC0415 - optional dependency, imported lazily

                _faiss_module = faiss
            except ImportError:
                _faiss_module = None
    return _faiss_module


def faiss_available() -> bool:
    """Whether FAISS can be imported (the `clusterloss[faiss]` extra)."""
    return _load_faiss() is not None


def _warn_numpy_once(reason: str):
    """One line, once per process, without a source line (a logging warning: Python prints
    it to stderr unless logging is configured otherwise)."""
    global _warned_numpy
    if not _warned_numpy:
        _warned_numpy = True
        logging.getLogger("clusterloss.index").warning(
            "clusterloss: %s; exact NumPy search (same results, slower): pip install 'clusterloss[faiss]' for speed",
            reason,
        )


def _progbar(target: int, unit: str):
    from keras.utils import Progbar  # noqa: PLC0415 - keras is already imported by clusterloss

    return Progbar(target, unit_name=unit)


# ----------------------------------------------------------------------------- NumPy top-k


def drop_self_matches(query_rows: np.ndarray, found: np.ndarray, *aligned: np.ndarray) -> tuple[np.ndarray, ...]:
    """`found` (and each array of its shape in `aligned`, e.g. the scores) without each
    query's own row: the queries are references `query_rows` of the searched set. Where a
    query's own row is not among its results, its last result is dropped instead (PML's
    rule), so every row keeps one column fewer."""
    is_self = found == np.asarray(query_rows)[:, None]
    is_self[~is_self.any(axis=1), -1] = True
    return tuple(a[~is_self].reshape(len(found), -1) for a in (found, *aligned))


def _smallest_k(key: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the `k` smallest values of `key` and their columns, sorted by (value, column).

    Ties are broken by the lower column, also at the k-th place (argpartition alone would
    pick an arbitrary subset of the tied values there).
    """
    rows, m = key.shape
    k = min(k, m)
    if k >= m or k * 8 >= m:
        cols = np.argsort(key, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(key, cols, axis=1), cols
    cols = np.argpartition(key, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(key, cols, axis=1)
    kth = vals.max(axis=1, keepdims=True)
    cut_ties = np.nonzero(np.count_nonzero(key == kth, axis=1) > np.count_nonzero(vals == kth, axis=1))[0]
    for r in cut_ties:  # rare: exact ties straddle the k-th place
        cols[r] = np.argsort(key[r], kind="stable")[:k]
        vals[r] = key[r, cols[r]]
    order = np.lexsort((cols, vals), axis=1)
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(cols, order, axis=1)


def _merge(vals_a, idx_a, vals_b, idx_b, k):
    """The k smallest of two candidate lists. Every index in `idx_a` is below every index in
    `idx_b` and each list is sorted by (value, index), so column order is index order among
    equal values and a stable sort keeps the lower-position rule."""
    vals = np.concatenate([vals_a, vals_b], axis=1)
    idx = np.concatenate([idx_a, idx_b], axis=1)
    order = np.argsort(vals, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(vals, order, axis=1), np.take_along_axis(idx, order, axis=1)


def _exact_search(q: np.ndarray, xb: np.ndarray, sqnorms: np.ndarray | None, k: int):
    """Exact k smallest keys of `q` against `xb`: key = -<q, x> (inner product, `sqnorms` is
    None) or |q|^2 + |x|^2 - 2<q, x> clamped at 0 (squared L2).

    Blocks of at most `_BLOCK_ELEMENTS` scores: a few queries at a time when k is large,
    and reference chunks of at least 16 k rows, so merging candidate lists stays cheap."""
    n = len(xb)
    k = min(k, n)
    rows = max(1, _BLOCK_ELEMENTS // max(16 * k, 256))
    if len(q) > rows:
        parts = [_exact_search(q[s : s + rows], xb, sqnorms, k) for s in range(0, len(q), rows)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    chunk = max(16 * k, _BLOCK_ELEMENTS // max(len(q), 1))
    q_sq = np.einsum("ij,ij->i", q, q)[:, None] if sqnorms is not None else None
    best_vals = best_idx = None
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        key = q @ xb[start:stop].T
        if sqnorms is None:
            np.negative(key, out=key)
        else:
            key *= -2.0
            key += q_sq
            key += sqnorms[None, start:stop]
            np.maximum(key, 0.0, out=key)
        vals, idx = _smallest_k(key, k)
        idx = idx.astype(np.int64) + start
        if best_vals is None:
            best_vals, best_idx = vals, idx
        else:
            best_vals, best_idx = _merge(best_vals, best_idx, vals, idx, k)
    return best_vals, best_idx


def _flat_search(faiss, index, q: np.ndarray, k: int):
    """FAISS flat search with a larger database block for its BLAS path (1024 rows by
    default; 16384 measured 2-2.5x faster on 2 cores, at most 64 MiB per 1024 queries).
    FAISS's global setting is restored afterwards."""
    cvar = faiss.cvar
    previous = cvar.distance_compute_blas_database_bs
    cvar.distance_compute_blas_database_bs = max(previous, 16384)
    try:
        return index.search(q, k)
    finally:
        cvar.distance_compute_blas_database_bs = previous


def _read_npz(path: str) -> dict[str, np.ndarray]:
    """The arrays of an `.npz`. Members stored uncompressed (as `np.savez` writes them) are
    memory-mapped read-only instead of copied out of the zip (a 512 MB index: 0.3 s, not 1.1 s
    of decoding); their size is checked against the file, so a truncated file is an error."""
    arrays = {}
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            key = info.filename.removesuffix(".npy")
            if info.compress_type != zipfile.ZIP_STORED:
                with archive.open(info) as member:
                    arrays[key] = np.lib.format.read_array(member, allow_pickle=False)
                continue
            handle.seek(info.header_offset + 26)
            names, extra = struct.unpack("<HH", handle.read(4))
            handle.seek(names + extra, os.SEEK_CUR)
            version = np.lib.format.read_magic(handle)
            reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in reader:
                raise ValueError(f"{key}: .npy format version {version} is not supported")
            shape, fortran, dtype = reader[version](handle)
            if dtype.hasobject:
                raise ValueError(f"{key}: object arrays (pickles) are not loaded")
            start = handle.tell()
            if start + dtype.itemsize * math.prod(shape) > os.fstat(handle.fileno()).st_size:
                raise ValueError(f"{key}: the file is truncated")
            arrays[key] = (
                np.memmap(path, dtype, "r", start, shape, "F" if fortran else "C")
                if math.prod(shape)
                else np.empty(shape, dtype)
            )
    return arrays


def _read_faiss(faiss, blob: np.ndarray):
    """A FAISS index from its serialised bytes, read in place through a callback reader (as
    fast as `faiss.read_index` of a file; `deserialize_index` copies the bytes twice more)."""
    view = memoryview(blob).cast("B")
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        chunk = view[position : position + size].tobytes()
        position += len(chunk)
        return chunk

    return faiss.read_index(faiss.PyCallbackIOReader(read))


# ----------------------------------------------------------------------------- Index


class Index:
    """Nearest-neighbour index of embeddings with optional integer labels and ids.

    Args:
        dim: embedding dimension.
        metric: `"cosine"` (vectors normalised, inner product; scores are similarities) or
            `"euclidean"` (scores are distances).
        kind: `"flat"` (exact: FAISS `IndexFlatIP`/`IndexFlatL2` or NumPy), `"hnsw"`
            (FAISS `IndexHNSWFlat`) or `"ivf"` (FAISS `IndexIVFFlat`, trained on the first
            `add`, or on `train(x)` if called first). Approximate kinds need FAISS.
        backend: `"auto"` (FAISS if importable, else NumPy with a one-line warning once; an
            approximate kind then runs exact), `"faiss"` (error without FAISS) or `"numpy"`
            (exact only).
        hnsw_m, ef_construction, ef_search: HNSW graph degree and beam widths
            (`ef_search` is raised to `k` when smaller).
        nlist, nprobe: IVF lists (default: round(sqrt(n)) of the training set, at most
            n // 39) and lists visited per query (default: max(8, nlist // 16), at most nlist).
        batch_size: queries per search batch and vectors per add batch (x 64).
        verbose: show a `keras.utils.Progbar` for long adds and searches.
    """

    def __init__(
        self,
        dim: int,
        metric: str = "cosine",
        kind: str = "flat",
        backend: str = "auto",
        *,
        hnsw_m: int = 32,
        ef_construction: int = 64,
        ef_search: int = 64,
        nlist: int | None = None,
        nprobe: int | None = None,
        batch_size: int = 1024,
        verbose: bool = False,
    ):
        self.dim = check_positive_int(dim, "dim")
        self.metric = check_metric(metric)
        self.kind = check_choice(kind, "kind", KINDS)
        check_choice(backend, "backend", BACKENDS)
        self.hnsw_m = check_positive_int(hnsw_m, "hnsw_m")
        self.ef_construction = check_positive_int(ef_construction, "ef_construction")
        self.ef_search = check_positive_int(ef_search, "ef_search")
        self.nlist = None if nlist is None else check_positive_int(nlist, "nlist")
        self.nprobe = None if nprobe is None else check_positive_int(nprobe, "nprobe")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.verbose = bool(verbose)

        faiss = _load_faiss() if backend != "numpy" else None
        if backend == "faiss" and faiss is None:
            raise ImportError(
                "`backend='faiss'` needs FAISS, which cannot be imported: "
                "pip install 'clusterloss[faiss]' (or faiss-cpu)."
            )
        if backend == "numpy" and self.kind != "flat":
            raise ValueError(
                f"`kind={self.kind!r}` is an approximate FAISS index; `backend='numpy'` supports only kind='flat'."
            )
        if faiss is None and backend == "auto":
            reason = "FAISS is not installed" + (
                f" (kind={self.kind!r} runs as exact search)" if self.kind != "flat" else ""
            )
            _warn_numpy_once(reason)
        self.backend = "faiss" if faiss is not None else "numpy"
        self._faiss = faiss

        self._n = 0
        self._faiss_index = None
        self._xb = np.empty((0, self.dim), np.float32)  # NumPy backend: growable buffer
        self._sqnorms = np.empty((0,), np.float32)
        self._label_parts: list[np.ndarray] = []
        self._id_parts: list[np.ndarray] = []
        self._has_labels: bool | None = None
        self._has_ids: bool | None = None
        self._labels_cache: np.ndarray | None = None
        self._ids_cache: np.ndarray | None = None
        if self.backend == "faiss" and self.kind != "ivf":
            self._faiss_index = self._new_faiss_index()

    # ------------------------------------------------------------------ properties

    def __len__(self) -> int:
        return self._n

    @property
    def ntotal(self) -> int:
        return self._n

    @property
    def is_exact(self) -> bool:
        return self.kind == "flat" or self.backend == "numpy"

    @property
    def labels(self) -> np.ndarray | None:
        """Labels of the stored vectors in insertion order (int64), or None if none given."""
        if not self._has_labels:
            return None
        if self._labels_cache is None or len(self._labels_cache) != self._n:
            self._labels_cache = np.concatenate(self._label_parts) if self._label_parts else np.empty(0, np.int64)
            self._label_parts = [self._labels_cache]
        return self._labels_cache

    @property
    def ids(self) -> np.ndarray:
        """Ids of the stored vectors (int64); positions 0..n-1 where none were given."""
        if not self._has_ids:
            return np.arange(self._n, dtype=np.int64)
        if self._ids_cache is None or len(self._ids_cache) != self._n:
            self._ids_cache = np.concatenate(self._id_parts)
            self._id_parts = [self._ids_cache]
        return self._ids_cache

    def __repr__(self) -> str:
        return (
            f"Index(dim={self.dim}, metric={self.metric!r}, kind={self.kind!r}, "
            f"backend={self.backend!r}, ntotal={self._n})"
        )

    # ------------------------------------------------------------------ building

    def _faiss_metric(self):
        faiss = self._faiss
        return faiss.METRIC_INNER_PRODUCT if self.metric == "cosine" else faiss.METRIC_L2

    def _new_faiss_index(self, nlist: int | None = None):
        faiss = self._faiss
        if self.kind == "flat":
            return faiss.IndexFlatIP(self.dim) if self.metric == "cosine" else faiss.IndexFlatL2(self.dim)
        if self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, self._faiss_metric())
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
            return index
        quantizer = faiss.IndexFlatIP(self.dim) if self.metric == "cosine" else faiss.IndexFlatL2(self.dim)
        index = faiss.IndexIVFFlat(quantizer, self.dim, nlist, self._faiss_metric())
        return index

    def _prepare(self, x: np.ndarray) -> np.ndarray:
        return normalize_rows(x) if self.metric == "cosine" else x

    def train(self, x) -> Index:
        """Train an IVF index on `x` (a representative sample); a no-op for other kinds."""
        x = as_embeddings(x, "x", dim=self.dim)
        if self.kind != "ivf" or self.backend != "faiss":
            return self
        if self._faiss_index is not None and self._faiss_index.is_trained:
            raise ValueError("this IVF index is already trained; create a new Index to retrain.")
        n = len(x)
        nlist = self.nlist or max(1, min(int(round(math.sqrt(n))), n // 39))
        if nlist > n:
            raise ValueError(f"`nlist` must be <= the number of training vectors ({n}); got {nlist}.")
        self.nlist = nlist
        if self.nprobe is None:
            self.nprobe = min(nlist, max(8, nlist // 16))
        index = self._new_faiss_index(nlist)
        index.train(self._prepare(x))
        index.nprobe = self.nprobe
        self._faiss_index = index
        return self

    def add(
        self, embeddings, labels=None, ids=None, *, batch_size: int | None = None, verbose: bool | None = None
    ) -> Index:
        """Append vectors (and their labels / ids). Labels and ids must be given on every
        call or on none."""
        x = as_embeddings(embeddings, "embeddings", dim=self.dim, allow_empty=True)
        has_labels = labels is not None
        has_ids = ids is not None
        if has_labels:
            labels = as_labels(labels, "labels", length=len(x))
        if has_ids:
            ids = as_labels(ids, "ids", length=len(x))
        for flag, attr, name in ((has_labels, "_has_labels", "labels"), (has_ids, "_has_ids", "ids")):
            current = getattr(self, attr)
            if self._n and current is not None and current != flag:
                raise ValueError(
                    f"`{name}` must be given on every `add` or on none; "
                    f"this index was built {'with' if current else 'without'} {name}."
                )
            setattr(self, attr, flag)
        if len(x) == 0:
            return self
        if self.backend == "faiss" and self.kind == "ivf" and self._faiss_index is None:
            self.train(x)
        self._add_prepared(x, prepared=False, batch_size=batch_size, verbose=verbose)
        if has_labels:
            self._label_parts.append(labels)
        if has_ids:
            self._id_parts.append(ids)
        return self

    def _add_prepared(self, x: np.ndarray, prepared: bool, batch_size=None, verbose=None):
        step = (batch_size or self.batch_size) * 64
        verbose = self.verbose if verbose is None else verbose
        bar = _progbar(len(x), "vector") if verbose and len(x) > step else None
        if prepared and bar is None:  # one add: FAISS grows its storage once, not per chunk
            step = max(len(x), 1)
        if self.backend == "numpy":
            self._reserve(self._n + len(x))
        for start in range(0, len(x), step):
            chunk = x[start : start + step]
            if not prepared:
                chunk = self._prepare(chunk)
            if self.backend == "faiss":
                self._faiss_index.add(np.ascontiguousarray(chunk, dtype=np.float32))
            else:
                stop = self._n + len(chunk)
                self._xb[self._n : stop] = chunk
                if self.metric == "euclidean":
                    self._sqnorms[self._n : stop] = np.einsum("ij,ij->i", chunk, chunk)
            self._n += len(chunk)
            if bar is not None:
                bar.update(min(start + step, len(x)))

    def _reserve(self, size: int):
        if size <= len(self._xb):
            return
        capacity = max(size, int(len(self._xb) * 1.5), 1024)
        xb = np.empty((capacity, self.dim), np.float32)
        xb[: self._n] = self._xb[: self._n]
        self._xb = xb
        if self.metric == "euclidean":
            sq = np.empty((capacity,), np.float32)
            sq[: self._n] = self._sqnorms[: self._n]
            self._sqnorms = sq

    def _stored_vectors(self) -> np.ndarray:
        """A read-only view (no copy) of the stored (prepared) vectors of an exact index."""
        if self.backend == "numpy":
            view = self._xb[: self._n]
        else:
            faiss = self._faiss
            if self._n == 0:
                return np.empty((0, self.dim), np.float32)
            view = faiss.rev_swig_ptr(self._faiss_index.get_xb(), self._n * self.dim).reshape(self._n, self.dim)
        view = view.view()
        view.flags.writeable = False
        return view

    # ------------------------------------------------------------------ search

    def search(
        self, queries, k: int, *, batch_size: int | None = None, verbose: bool | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """The `k` nearest stored vectors of each query.

        Returns `(scores, indices)`, both `(n_queries, k)`: cosine similarities (decreasing)
        or Euclidean distances (increasing), and positions into the index (-1 padding).
        Queries run in batches of `batch_size` (fewer when `k` is large, to bound memory).
        """
        q = as_embeddings(queries, "queries", dim=self.dim, allow_empty=True)
        k = check_positive_int(k, "k")
        if self._n == 0:
            raise ValueError("the index is empty: `add` embeddings before `search`.")
        keys, idx = self._search_keys(q, k, batch_size, verbose)
        return self._scores_from_keys(keys, idx), idx

    def _search_keys(self, q, k, batch_size=None, verbose=None, prepared=False):
        """Keys (smaller is nearer: -similarity or squared distance) and positions, padded
        to `k` columns with (+inf, -1)."""
        nq = len(q)
        k_found = min(k, self._n)
        batch = batch_size or self.batch_size
        batch = max(1, min(batch, _RESULT_ELEMENTS // (k_found + 1)))
        verbose = self.verbose if verbose is None else verbose
        bar = _progbar(nq, "query") if verbose and nq > batch else None
        keys = np.full((nq, k), np.inf, np.float32)
        idx = np.full((nq, k), -1, np.int64)
        for start in range(0, nq, batch):
            chunk = q[start : start + batch]
            if not prepared:
                chunk = self._prepare(chunk)
            kk, ii = self._search_batch(chunk, k_found)
            keys[start : start + len(chunk), :k_found] = kk
            idx[start : start + len(chunk), :k_found] = ii
            if bar is not None:
                bar.update(min(start + batch, nq))
        return keys, idx

    def _search_batch(self, q: np.ndarray, k: int):
        if self.backend == "numpy":
            return _exact_search(
                q, self._xb[: self._n], self._sqnorms[: self._n] if self.metric == "euclidean" else None, k
            )
        if self.kind == "flat" and len(q) * self._n <= _SMALL_SEARCH:
            # FAISS starts (and spins) its OpenMP threads for every search: for a small one
            # that costs ~100x the arithmetic. The NumPy path gives the same answer.
            xb = self._stored_vectors()
            return _exact_search(q, xb, np.einsum("ij,ij->i", xb, xb) if self.metric == "euclidean" else None, k)
        index = self._faiss_index
        exact = self.kind == "flat"
        if self.kind == "hnsw":
            index.hnsw.efSearch = max(self.ef_search, k)
        elif self.kind == "ivf":
            index.nprobe = self.nprobe
        k_search = min(k + 1, self._n) if exact else k
        if exact:
            dist, idx = _flat_search(self._faiss, index, np.ascontiguousarray(q), k_search)
        else:
            dist, idx = index.search(np.ascontiguousarray(q), k_search)
        idx = idx.astype(np.int64, copy=False)
        keys = -dist if self.metric == "cosine" else dist
        keys[idx < 0] = np.inf
        if exact and k_search > k:
            # FAISS returns an arbitrary subset of exact ties at the k-th place (IndexFlatIP
            # does). For those rare rows, search deeper until the whole tie group is in the
            # list, so the sort below keeps the lower positions.
            tied = np.nonzero(keys[:, k - 1] == keys[:, k])[0]
            if len(tied):
                tk, ti = self._search_past_ties(q[tied], k, keys[tied, k - 1], k_search)
                keys[tied, :k] = tk
                idx[tied, :k] = ti
            keys, idx = keys[:, :k], idx[:, :k]
        order = np.lexsort((np.where(idx < 0, np.iinfo(np.int64).max, idx), keys), axis=1)
        return np.take_along_axis(keys, order, axis=1), np.take_along_axis(idx, order, axis=1)

    def _search_past_ties(self, q: np.ndarray, k: int, boundary: np.ndarray, depth: int):
        while True:
            depth = min(depth * 2, self._n)
            dist, idx = _flat_search(self._faiss, self._faiss_index, q, depth)
            keys = -dist if self.metric == "cosine" else dist
            if depth == self._n or not np.any(keys[:, -1] == boundary):
                break
        order = np.lexsort((idx, keys), axis=1)[:, :k]
        return np.take_along_axis(keys, order, axis=1), np.take_along_axis(idx.astype(np.int64), order, axis=1)

    def _scores_from_keys(self, keys: np.ndarray, idx: np.ndarray) -> np.ndarray:
        missing = idx < 0
        if self.metric == "cosine":
            scores = -keys
            scores[missing] = -np.inf
        else:
            scores = np.sqrt(np.maximum(keys, 0.0))
            scores[missing] = np.inf
        return scores

    # ------------------------------------------------------------------ persistence

    def save(self, path) -> None:
        """Save to one `.npz`-format file at `path` (exactly that name): configuration,
        labels, ids, and the vectors (exact index) or the serialised FAISS index."""
        config = {
            "format_version": FORMAT_VERSION,
            "dim": self.dim,
            "metric": self.metric,
            "kind": self.kind,
            "hnsw_m": self.hnsw_m,
            "ef_construction": self.ef_construction,
            "ef_search": self.ef_search,
            "nlist": self.nlist,
            "nprobe": self.nprobe,
            "batch_size": self.batch_size,
            "ntotal": self._n,
            "has_labels": bool(self._has_labels),
            "has_ids": bool(self._has_ids),
        }
        arrays = {"config": np.frombuffer(json.dumps(config).encode("utf-8"), dtype=np.uint8)}
        if self.is_exact:
            arrays["vectors"] = self._stored_vectors()
        elif self._faiss_index is not None:
            arrays["faiss_index"] = self._faiss.serialize_index(self._faiss_index)
        if self._has_labels:
            arrays["labels"] = self.labels
        if self._has_ids:
            arrays["ids"] = self.ids
        with open(os.fspath(path), "wb") as handle:
            np.savez(handle, **arrays)

    @classmethod
    def load(cls, path, backend: str = "auto", verbose: bool = False) -> Index:
        """Load an index written by `save`. An exact index loads on either backend; an
        approximate one needs FAISS. A file that is not a complete, consistent Index file
        (truncated, another format, pickled objects, labels that do not match the vectors)
        is a `ValueError` naming the file and what is wrong."""
        name = repr(os.fspath(path))
        try:
            data = _read_npz(os.fspath(path))
            config = json.loads(bytes(data["config"]).decode("utf-8")) if "config" in data else None
        except OSError:
            raise
        except Exception as error:  # BadZipFile, a pickle, a truncated file, bad JSON
            raise ValueError(
                f"{name} is not a clusterloss Index file (an .npz written by Index.save): "
                f"{type(error).__name__}: {error}"
            ) from error
        if not isinstance(config, dict):
            raise ValueError(f"{name} is not a clusterloss Index file (no config).")
        if config.get("format_version", 0) > FORMAT_VERSION:
            raise ValueError(
                f"{name} was written by a newer clusterloss (format {config['format_version']} > {FORMAT_VERSION})."
            )
        try:
            return cls._from_saved(data, config, name, backend, verbose)
        except (ImportError, ValueError):
            raise
        except Exception as error:  # a damaged array or FAISS blob, a missing config key
            raise ValueError(f"{name} is a damaged clusterloss Index file: {type(error).__name__}: {error}") from error

    @classmethod
    def _from_saved(
        cls, data: dict[str, np.ndarray], config: dict[str, Any], name: str, backend: str, verbose: bool
    ) -> Index:
        kind = config["kind"]
        index = cls(
            config["dim"],
            metric=config["metric"],
            kind=kind,
            backend=backend,
            hnsw_m=config["hnsw_m"],
            ef_construction=config["ef_construction"],
            ef_search=config["ef_search"],
            nlist=config["nlist"],
            nprobe=config["nprobe"],
            batch_size=config["batch_size"],
            verbose=verbose,
        )
        if "faiss_index" in data:
            if index.backend != "faiss":
                raise ImportError(
                    f"{name} holds an approximate FAISS index (kind={kind!r}); "
                    "loading it needs FAISS: pip install 'clusterloss[faiss]'."
                )
            blob = data["faiss_index"]
            if blob.dtype != np.uint8 or blob.ndim != 1:
                raise ValueError(f"{name} is a damaged clusterloss Index file: bad FAISS blob.")
            index._faiss_index = _read_faiss(index._faiss, blob)
            if index._faiss_index.d != index.dim:
                raise ValueError(
                    f"{name} is inconsistent: the FAISS index has dimension "
                    f"{index._faiss_index.d}, config says {index.dim}."
                )
            index._n = int(index._faiss_index.ntotal)
        elif "vectors" in data:
            vectors = data["vectors"]
            if vectors.ndim != 2 or vectors.shape[1] != index.dim or vectors.dtype.kind != "f":
                raise ValueError(
                    f"{name} is inconsistent: vectors of shape {vectors.shape} and dtype "
                    f"{vectors.dtype}, config says dim {index.dim}."
                )
            vectors = np.ascontiguousarray(vectors, dtype=np.float32)
            if index.backend == "faiss" and kind == "ivf":
                index.train(vectors)  # an IVF index saved before FAISS was available
            index._add_prepared(vectors, prepared=True)
        if index._n != config["ntotal"]:
            raise ValueError(f"{name} is inconsistent: {index._n} vectors, config says {config['ntotal']}.")
        index._has_labels = bool(config["has_labels"])
        index._has_ids = bool(config["has_ids"])
        for flag, key, attr in ((index._has_labels, "labels", "_label_parts"), (index._has_ids, "ids", "_id_parts")):
            if not flag:
                continue
            if key not in data:
                raise ValueError(f"{name} is inconsistent: config lists {key}, the file has none.")
            values = data[key]
            if values.shape != (index._n,) or values.dtype.kind not in "iu":
                raise ValueError(
                    f"{name} is inconsistent: {key} of shape {values.shape} and dtype "
                    f"{values.dtype} for {index._n} vectors."
                )
            setattr(index, attr, [values.astype(np.int64)])
        return index
