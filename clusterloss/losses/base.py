"""The `keras.losses.Loss` base that every clusterloss loss class wraps a plain function with.

As in Keras (`keras/src/losses/losses.py`), each loss is a plain function
`fn(y_true, y_pred, **options) -> one value per sample` and a class that stores `options`,
serializes them in `get_config`, and leaves the reduction and `sample_weight` to Keras.

Two differences from `keras.losses.Loss.__call__`, both about not changing the inputs:

- `y_true` is passed on as given. Keras casts it to the loss dtype (float32), which merges
  distinct integer ids from 2**24 on (16,777,217 becomes 16,777,216) before the loss sees them.
- `y_pred` is computed in float64 when it or the loss's `dtype` is float64, else in float32
  (half precision is upcast inside the functions); the result has that dtype (Keras's own
  reduction computes float64 in float32 on torch).
"""

from __future__ import annotations

from typing import Any, Callable

import keras
from keras import ops
from keras.src.losses.loss import (
    scale_loss_for_distribution,
    squeeze_or_expand_to_same_rank,
    standardize_reduction,
)

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
            return reduce_per_sample(self.call(y_true, y_pred, **inputs), sample_weight,
                                     self.reduction)

    def call(self, y_true, y_pred, **inputs: Any):
        return self.fn(y_true, y_pred, **inputs, **self.options)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.options}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({options})"


def reduce_per_sample(values, sample_weight=None, reduction="sum_over_batch_size"):
    """Keras's reduction of per-sample losses (`keras.losses.Loss.__call__`), in the dtype of
    `values`: weight by `sample_weight`, then `"sum"`, `"sum_over_batch_size"`/`"mean"` (sum
    divided by the number of values), `"mean_with_sample_weight"` (by the sum of the weights),
    or `None`/`"none"`; scaled for `tf.distribute` replicas as Keras does."""
    reduction = standardize_reduction(reduction)
    if sample_weight is not None:
        weights = ops.cast(sample_weight, values.dtype)
        values, weights = squeeze_or_expand_to_same_rank(values, weights)
        values = values * weights
    if reduction in (None, "none") or tuple(values.shape) in ((), (0,)):
        return values
    total = ops.sum(values)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = ops.sum(ops.broadcast_to(weights, ops.shape(values)))
    else:
        divisor = ops.cast(ops.prod(ops.convert_to_tensor(ops.shape(values), "int32")),
                           values.dtype)
    mean = ops.where(divisor == 0, ops.zeros_like(total),
                     total / ops.where(divisor == 0, ops.ones_like(divisor), divisor))
    return scale_loss_for_distribution(mean)
