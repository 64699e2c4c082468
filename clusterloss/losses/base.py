"""The `keras.losses.Loss` base that every clusterloss loss class wraps a plain function with.

As in Keras (`keras/src/losses/losses.py`), each loss is a plain function
`fn(y_true, y_pred, **options) -> one value per sample` and a class that stores `options`,
serializes them in `get_config`, and leaves the reduction and `sample_weight` to Keras.

Two differences from `keras.losses.Loss.__call__`, both about not changing the inputs:

- `y_true` is passed on as given. Keras casts it to the loss dtype (float32), which merges
  distinct integer ids from 2**24 on (16,777,217 becomes 16,777,216) before the loss sees them.
- `y_pred` is computed in float64 when it or the loss's `dtype` is float64, else in float32
  (half precision is upcast inside the functions); the result has that dtype.
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras.src.losses.loss import reduce_weighted_values

from clusterloss._validation import upcast


class LossFunctionWrapper(keras.losses.Loss):
    """A `keras.losses.Loss` that calls `fn(y_true, y_pred, **options)`.

    `fn` returns one value per sample, so Keras applies `sample_weight` and the reduction
    (and `tf.distribute` scales it by the number of replicas correctly).
    """

    def __init__(
        self,
        fn: Callable[..., Any],
        reduction: str | None = "sum_over_batch_size",
        name: str | None = None,
        dtype: str | None = None,
        **options: Any,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.fn = fn
        self.options = options

    def __call__(self, y_true, y_pred, sample_weight=None, **inputs: Any):
        """`fn(y_true, y_pred, **inputs, **options)` reduced as Keras does; `inputs` are extra
        per-call tensors a loss accepts (e.g. `ref_embeddings`, `ref_labels`)."""
        with keras.name_scope(self.name):
            wide = keras.backend.standardize_dtype(self.dtype) == "float64"
            y_pred = upcast(y_pred, "float64" if wide else None)
            losses = self.call(y_true, y_pred, **inputs)
            return reduce_weighted_values(
                losses, sample_weight=sample_weight, reduction=self.reduction,
                dtype=keras.backend.standardize_dtype(losses.dtype))

    def call(self, y_true, y_pred, **inputs: Any):
        return self.fn(y_true, y_pred, **inputs, **self.options)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.options}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({options})"
