"""The `keras.losses.Loss` base that every clusterloss loss class wraps a plain function with.

As in Keras (`keras/src/losses/losses.py`), each loss is a plain function
`fn(y_true, y_pred, **options) -> one value per sample` and a class that stores `options`,
serializes them in `get_config`, and leaves the reduction and `sample_weight` to Keras.
"""

from __future__ import annotations

from typing import Any, Callable

import keras


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

    def call(self, y_true, y_pred):
        return self.fn(y_true, y_pred, **self.options)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.options}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({options})"
