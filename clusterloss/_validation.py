"""Input checks shared by every loss, layer and miner.

Static checks (rank, shape) run at trace time, so they also fire under `jit_compile`.
Value checks (label range, integral labels) run only on host data: NumPy arrays, Python lists
and numbers. A backend tensor (eager or traced) is never copied to the host here (that would
be a device sync on every loss call); the models check `y` once in `fit`/`evaluate`, and the
losses turn NaN/inf into a NaN loss inside the graph.

The NumPy-side checks at the end (`as_embeddings`, `as_labels`, `check_metric`,
`check_positive_int`) are for extracted embeddings (the index and the evaluation functions):
they take anything `np.asarray` accepts and return NumPy arrays. Both sides share the label
rules and messages: the argument's name, what was expected, what was given.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from clusterloss._native import label_id_limit


def concrete(x: Any) -> np.ndarray | None:
    """`x` as a NumPy array if it is host data (NumPy, list, tuple, Python number), else `None`:
    backend tensors are never copied to the host (no device sync in a train step)."""
    if isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        return np.asarray(x)
    return None


def _labels_shape_message(name: str, shape, rows: str, hint: str | None = "") -> str:
    """`hint`: None for no hint, else appended to the one-hot hint shown for rank-2 labels."""
    if len(shape) == 2 and hint is not None:
        suffix = f" (one-hot labels? pass integer class ids{hint})"
    else:
        suffix = ""
    return f"`{name}` must be integer class ids of shape ({rows},) or ({rows}, 1); got shape {shape}{suffix}."


def _check_label_values(values: np.ndarray, name: str, allow_bool: bool = True) -> None:
    """Integer (or bool) dtype, or floats holding finite integral values."""
    if values.dtype.kind == "f":
        bad = ~np.isfinite(values) | (np.floor(values) != values)
        if bad.any():
            raise ValueError(
                f"`{name}` must be integer class ids; got float values such as {float(values[bad].flat[0])!r}."
            )
    elif values.dtype.kind not in ("iub" if allow_bool else "iu"):
        raise ValueError(f"`{name}` must be integer class ids; got dtype {values.dtype}.")


def label_dtype() -> str:
    """The widest integer dtype labels keep on this backend: int64, or int32 on JAX (whose
    default x64-off mode turns every int64 array into int32)."""
    return "int32" if keras.backend.backend() == "jax" else "int64"


def check_labels(labels: Any, num_classes: int | None = None, name: str = "labels"):
    """Validate integer class ids of shape `(batch,)` or `(batch, 1)`; return them `(batch,)`.

    The ids keep their exact value: int64 (and float) labels come back as `label_dtype()`
    (int64, or int32 on JAX), narrower integers as int32. On JAX, host ids that do not fit in
    int32 are a `ValueError` instead of a silent wrap-around.
    """
    if isinstance(labels, (list, tuple, int)):
        labels = np.asarray(labels)
    shape = tuple(ops.shape(labels))
    if len(shape) == 2 and shape[1] == 1:
        labels = ops.reshape(labels, (-1,))
    elif len(shape) != 1:
        hint = ", or use the categorical Keras loss" if len(shape) == 2 else None
        raise ValueError(_labels_shape_message(name, shape, "batch", hint))
    values = concrete(labels)
    if values is not None and values.size:
        _check_label_values(values, name, allow_bool=False)
        low, high = values.min(), values.max()
        if low < 0:
            raise ValueError(f"`{name}` must be >= 0; got a label {int(low)}.")
        if num_classes is not None and high >= num_classes:
            raise ValueError(f"`{name}` must be < num_classes={num_classes}; got a label {int(high)}.")
        if high > label_id_limit():
            raise ValueError(
                f"`{name}` must be < 2**31 on the JAX backend (64-bit integers are off); got a "
                f"label {int(high)}. Map the ids to 0..n-1 first, e.g. "
                "`np.unique(y, return_inverse=True)[1]`."
            )
    dtype = keras.backend.standardize_dtype(labels.dtype)
    wide = dtype in ("int64", "uint32", "uint64") or "float" in dtype
    return ops.cast(labels, label_dtype() if wide else "int32")


def check_embeddings(x: Any, name: str = "embeddings", rank: int = 2, allow_empty: bool = True):
    """Validate a float tensor of the given rank (default `(batch, dim)`); with
    `allow_empty=False`, a batch statically known to hold no row is an error."""
    shape = tuple(ops.shape(x))
    if len(shape) != rank:
        expected = "(batch, dim)" if rank == 2 else f"rank {rank}"
        raise ValueError(f"`{name}` must have shape {expected}; got shape {shape}.")
    if not allow_empty and isinstance(shape[0], int) and shape[0] == 0:
        raise ValueError(f"`{name}` must hold at least one row; got an empty batch, shape {shape}.")
    return x


def check_same_batch(labels: Any, x: Any, names: tuple[str, str] = ("labels", "embeddings")):
    """Raise if the static batch sizes of `labels` and `x` differ (unknown sizes pass)."""
    a, b = np.shape(labels)[0] if isinstance(labels, (list, tuple)) else labels.shape[0], x.shape[0]
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise ValueError(f"`{names[0]}` and `{names[1]}` must have the same batch size; got {a} and {b}.")


def check_range(
    value: float,
    name: str,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
):
    """Raise a ValueError naming `name` if `value` is outside `[low, high]`."""
    array = np.asarray(value, dtype="float64")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must be finite; got {value!r}.")
    too_low = low is not None and (np.any(array <= low) if low_open else np.any(array < low))
    too_high = high is not None and np.any(array > high)
    if too_low or too_high:
        left = "(" if low_open else "["
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"`{name}` must be in {left}{lo}, {hi}]; got {value!r}.")
    return value


def check_choice(value: str, name: str, choices) -> str:
    """Raise a ValueError naming `name` if `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {sorted(choices)}; got {value!r}.")
    return value


def upcast(x: Any, dtype: str | None = None):
    """float16/bfloat16 -> float32, so losses never overflow in half precision; float32 and
    float64 stay; integers -> floatx. `dtype="float64"` widens float32 to float64 too."""
    x = ops.convert_to_tensor(x)
    current = keras.backend.standardize_dtype(x.dtype)
    if dtype == "float64" and current != "float64":
        return ops.cast(x, "float64")
    if current in ("float16", "bfloat16"):
        return ops.cast(x, "float32")
    if not keras.backend.is_float_dtype(current):
        return ops.cast(x, keras.backend.floatx())
    return x


def compute_dtype(*tensors: Any) -> str:
    """The float dtype a loss computes in: float64 if any input is float64, else float32
    (half precision is upcast)."""
    for t in tensors:
        if t is not None and keras.backend.standardize_dtype(t.dtype) == "float64":
            return "float64"
    return "float32"


# ----------------------------------------------------------------------------- NumPy side

METRICS = ("cosine", "euclidean")  # metrics of the index and the evaluation functions


def as_embeddings(x: Any, name: str = "embeddings", dim: int | None = None, allow_empty: bool = False) -> np.ndarray:
    """`x` as a C-contiguous float32 NumPy array of shape `(n, dim)`, finite."""
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
        raise ValueError(f"`{name}` must have {dim} columns (the embedding dimension); got shape {array.shape}.")
    if array.shape[1] < 1:
        raise ValueError(f"`{name}` must have at least one column; got shape {array.shape}.")
    if not allow_empty and array.shape[0] < 1:
        raise ValueError(f"`{name}` must have at least one row; got shape {array.shape}.")
    array = np.ascontiguousarray(array, dtype=np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"`{name}` must be finite; got NaN or inf values.")
    return array


def as_labels(
    labels: Any, name: str = "labels", length: int | None = None, length_name: str = "embeddings"
) -> np.ndarray:
    """Integer class ids of shape `(n,)` or `(n, 1)` as an int64 NumPy array `(n,)`.

    The rules of `check_labels` without its range check: any integer is allowed (negative
    ids too: evaluation labels are only compared for equality), float labels must be
    integral, bool passes. Kept as int64: PML's AccuracyCalculator casts labels to float32,
    which merges distinct ids above 2**24.
    """
    if labels is None:
        raise ValueError(f"`{name}` must be integer class ids of shape (n,); got None.")
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    if array.ndim != 1:
        raise ValueError(_labels_shape_message(name, array.shape, "n"))
    if array.size:
        _check_label_values(array, name, allow_bool=True)
    array = array.astype(np.int64)
    if length is not None and len(array) != length:
        raise ValueError(f"`{name}` and `{length_name}` must have the same length; got {len(array)} and {length}.")
    return array


def check_metric(metric: str, name: str = "metric") -> str:
    """One of `METRICS` ("cosine", "euclidean")."""
    return check_choice(metric, name, METRICS)


def check_positive_int(value: Any, name: str) -> int:
    """A Python or NumPy integer >= 1 (not a bool), as `int`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an integer >= 1; got {value!r}.")
    return int(value)


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows of a NumPy array scaled to unit L2 norm (a zero row stays zero), float32."""
    norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
    norms[norms == 0] = 1.0
    return x / norms[:, None]
