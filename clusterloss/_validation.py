"""Input checks shared by every loss, layer and miner.

Static checks (rank, shape) run at trace time, so they also fire under `jit_compile`.
Value checks (label range, integral labels) run only where the values are concrete: NumPy
arrays, Python lists and eager tensors. Inside a compiled train step they are skipped; the
models check `y` once in `fit`/`evaluate` instead.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops


def concrete(x: Any) -> np.ndarray | None:
    """Return `x` as a NumPy array if its values are known now, else `None`."""
    if isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor):
        return None
    try:
        return np.asarray(ops.convert_to_numpy(x))
    except Exception:  # a tracer or graph tensor: values unknown until run time
        return None


def check_labels(labels: Any, num_classes: int | None = None, name: str = "labels"):
    """Validate integer class ids of shape `(batch,)` or `(batch, 1)`; return int32 `(batch,)`."""
    if isinstance(labels, (list, tuple, int)):
        labels = np.asarray(labels)
    shape = tuple(ops.shape(labels))
    if len(shape) == 2 and shape[1] == 1:
        labels = ops.reshape(labels, (-1,))
    elif len(shape) != 1:
        hint = (
            " (one-hot labels? pass integer class ids, or use the categorical Keras loss)"
            if len(shape) == 2
            else ""
        )
        raise ValueError(
            f"`{name}` must be integer class ids of shape (batch,) or (batch, 1); "
            f"got shape {shape}{hint}."
        )
    values = concrete(labels)
    if values is not None and values.size:
        if values.dtype.kind == "f" and not np.all(np.floor(values) == values):
            bad = values[np.floor(values) != values][0]
            raise ValueError(
                f"`{name}` must be integer class ids; got float values such as {float(bad)!r}."
            )
        if values.dtype.kind not in "iuf":
            raise ValueError(
                f"`{name}` must be integer class ids; got dtype {values.dtype}."
            )
        low, high = values.min(), values.max()
        if low < 0:
            raise ValueError(f"`{name}` must be >= 0; got a label {int(low)}.")
        if num_classes is not None and high >= num_classes:
            raise ValueError(
                f"`{name}` must be < num_classes={num_classes}; got a label {int(high)}."
            )
    return ops.cast(labels, "int32")


def check_embeddings(x: Any, name: str = "embeddings", rank: int = 2):
    """Validate a float tensor of the given rank (default `(batch, dim)`)."""
    shape = tuple(ops.shape(x))
    if len(shape) != rank:
        expected = "(batch, dim)" if rank == 2 else f"rank {rank}"
        raise ValueError(f"`{name}` must have shape {expected}; got shape {shape}.")
    return x


def check_same_batch(labels: Any, x: Any, names: tuple[str, str] = ("labels", "embeddings")):
    """Raise if the static batch sizes of `labels` and `x` differ (unknown sizes pass)."""
    a, b = np.shape(labels)[0] if isinstance(labels, (list, tuple)) else labels.shape[0], x.shape[0]
    if isinstance(a, int) and isinstance(b, int) and a != b:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same batch size; got {a} and {b}."
        )


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


def upcast(x: Any):
    """float16/bfloat16 -> float32, so losses never overflow in half precision."""
    x = ops.convert_to_tensor(x)
    if keras.backend.standardize_dtype(x.dtype) in ("float16", "bfloat16"):
        return ops.cast(x, "float32")
    if not keras.backend.is_float_dtype(x.dtype):
        return ops.cast(x, keras.backend.floatx())
    return x
