"""Class ids inside a train step: an in-graph range check that turns bad labels into NaN.

The host checks (`ClusterModel.fit`, `MPerClassSampler`) reject bad labels with a
`ValueError` before they reach a backend. Labels that arrive some other way (a `tf.data`
pipeline, a custom loop) are checked here, with fixed shapes and no host copy: a label
outside `[0, num_classes)` (or a non-integral float label) makes the layer's output NaN, so
the loss is NaN and `keras.callbacks.TerminateOnNaN` stops training, and the layer leaves its
state (centers, counters) untouched in that step. The offending label is replaced by 0 for the
computation, so the rest stays finite and the gradient of the NaN step is exactly zero.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from clusterloss._validation import check_labels


def check_num_classes(value: Any, name: str = "num_classes", minimum: int = 2) -> int:
    """A Python or NumPy integer `>= minimum` (not a bool), as `int`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}; got {value!r}.")
    return int(value)


def check_host_labels(labels: Any, num_classes: int | None, name: str = "labels") -> None:
    """Check labels that are still NumPy values (a list, a NumPy array) before `Layer.__call__`
    turns them into backend tensors (JAX without x64 would wrap 2**32 + 1 to 1 there):
    a `ValueError` for ids outside `[0, num_classes)`. Backend tensors are not read."""
    if isinstance(labels, (np.ndarray, np.generic, list, tuple)):
        check_labels(np.asarray(labels), num_classes, name=name)


class HostLabelCheck:
    """Mixin for a layer called as `layer(embeddings, labels, ...)` with a `num_classes`
    attribute: `check_host_labels` on the labels before `Layer.__call__` converts them."""

    num_classes: int | None

    def __call__(self, *args, **kwargs):
        check_host_labels(kwargs.get("labels", args[1] if len(args) > 1 else None), self.num_classes)
        return super().__call__(*args, **kwargs)


def guard_labels(labels: Any, num_classes: int, name: str = "labels"):
    """`(safe_labels, valid)`: int32 labels of shape `(batch,)` with every label outside
    `[0, num_classes)` replaced by 0, and a scalar bool, true when all labels are valid.

    Shapes, and the values of NumPy labels, are checked by `check_labels` (a `ValueError`).
    The range test runs on the labels' own dtype, before the int32 cast, so that an int64
    id such as 2**32 + 1 is not wrapped into a valid one.
    """
    checked = check_labels(labels, num_classes, name=name)
    raw = ops.reshape(ops.convert_to_tensor(labels), (-1,))
    valid = ops.logical_and(raw >= 0, raw < num_classes)
    if keras.backend.is_float_dtype(raw.dtype):
        valid = ops.logical_and(valid, ops.floor(raw) == raw)
    return ops.where(valid, checked, ops.zeros_like(checked)), ops.all(valid)


def nan_unless(valid, values):
    """`values` where `valid` (a scalar bool) is true, else NaN everywhere."""
    return ops.where(valid, values, ops.full_like(values, float("nan")))


def all_finite(x):
    """A scalar bool: no NaN or inf in `x`."""
    return ops.all(ops.isfinite(x))
