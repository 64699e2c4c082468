"""NumPy input checks for the index and the evaluation functions.

These run on extracted embeddings (NumPy arrays, lists, or anything `np.asarray` accepts),
never on backend tensors inside a compiled step, so they work on values directly. Messages
follow `clusterloss._validation`: the argument's name, what was expected, what was given.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from clusterloss._validation import check_choice

METRICS = ("cosine", "euclidean")


def as_embeddings(x: Any, name: str = "embeddings", dim: int | None = None,
                  allow_empty: bool = False) -> np.ndarray:
    """`x` as a C-contiguous float32 array of shape `(n, dim)`, finite."""
    if x is None:
        raise ValueError(f"`{name}` must be an array of shape (n, dim); got None.")
    try:
        array = np.asarray(x)
    except Exception as error:  # ragged lists and the like
        raise ValueError(f"`{name}` must be an array of shape (n, dim); got {type(x).__name__}.") from error
    if array.ndim != 2:
        raise ValueError(f"`{name}` must have shape (n, dim); got shape {array.shape}.")
    if array.dtype.kind not in "fiub":
        raise ValueError(f"`{name}` must hold numbers; got dtype {array.dtype}.")
    if dim is not None and array.shape[1] != dim:
        raise ValueError(
            f"`{name}` must have {dim} columns (the embedding dimension); got shape {array.shape}."
        )
    if array.shape[1] < 1:
        raise ValueError(f"`{name}` must have at least one column; got shape {array.shape}.")
    if not allow_empty and array.shape[0] < 1:
        raise ValueError(f"`{name}` must have at least one row; got shape {array.shape}.")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` must be finite; got NaN or inf values.")
    return array


def as_labels(labels: Any, name: str = "labels", length: int | None = None,
              length_name: str = "embeddings") -> np.ndarray:
    """Integer class ids of shape `(n,)` or `(n, 1)` as int64 `(n,)`.

    Any integer is allowed (negative ids too: evaluation labels are only compared for
    equality). Float labels must be integral. Kept as int64: PML's AccuracyCalculator casts
    labels to float32, which merges distinct ids above 2**24.
    """
    if labels is None:
        raise ValueError(f"`{name}` must be integer class ids of shape (n,); got None.")
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    if array.ndim != 1:
        hint = " (one-hot labels? pass integer class ids)" if array.ndim == 2 else ""
        raise ValueError(
            f"`{name}` must be integer class ids of shape (n,) or (n, 1); got shape {array.shape}{hint}."
        )
    if array.size:
        if array.dtype.kind == "f":
            if not np.all(np.isfinite(array)) or not np.all(np.floor(array) == array):
                bad = array[~(np.floor(array) == array)][0]
                raise ValueError(f"`{name}` must be integer class ids; got float values such as {bad!r}.")
        elif array.dtype.kind not in "iub":
            raise ValueError(f"`{name}` must be integer class ids; got dtype {array.dtype}.")
    array = array.astype(np.int64)
    if length is not None and len(array) != length:
        raise ValueError(
            f"`{name}` and `{length_name}` must have the same length; got {len(array)} and {length}."
        )
    return array


def check_metric(metric: str, name: str = "metric") -> str:
    return check_choice(metric, name, METRICS)


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}.")
    return int(value)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (a zero row stays zero), float32."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    norms[norms == 0] = 1.0
    return x / norms[:, None]
