"""Regularizers on embeddings, added to a pair/triplet loss (PML's `embedding_regularizer`)."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_embeddings, check_range, upcast


@register
class LpRegularizer(keras.regularizers.Regularizer):
    """The mean Lp norm of the embeddings (PML's `LpRegularizer`):

        R = mean_i ||x_i||_p ** power

    Give it to a pair or triplet loss as PML does, `ContrastiveLoss(embedding_regularizer=
    LpRegularizer(), embedding_reg_weight=1.0)`: the loss adds `weight * ||x_i||_p ** power`
    to each anchor's value, so the batch mean is PML's `loss + weight * R` (value and
    gradient). It is computed on the embeddings as the model outputs them (before any
    normalisation of the loss's distance), as PML. It is also a Keras regularizer:
    `keras.layers.Dense(64, activity_regularizer=LpRegularizer())` adds `R` of the layer's
    output to the model's loss.

    Args:
        p: the norm's order, >= 1 (default 2, PML's).
        power: the exponent applied to the norm, > 0 (default 1, PML's).

    Gradients are finite for a zero embedding (0 there, as `torch.norm`'s). NaN/inf
    embeddings give NaN.
    """

    def __init__(self, p: float = 2.0, power: float = 1.0):
        check_range(p, "p", 1.0)
        check_range(power, "power", 0.0, low_open=True)
        self.p = float(p)
        self.power = float(power)

    def per_sample(self, x):
        """`||x_i||_p ** power`, shape `(batch,)`, in float32 (float64 for float64 input)."""
        check_embeddings(x, "embeddings")
        x = upcast(x)
        # `**`, not ops.power: Keras 3.15's torch backend computes ops.power of float64 in float32
        total = ops.sum(ops.square(x) if self.p == 2.0 else ops.abs(x) ** self.p, axis=-1)
        exponent = self.power / self.p  # ||x||_p ** power = (sum |x|^p) ** (power / p)
        if exponent == 1.0:
            return total
        positive = total > 0
        return ops.where(positive, ops.where(positive, total, 1.0) ** exponent, total * 0)

    def __call__(self, x):
        return ops.mean(self.per_sample(x))

    def get_config(self) -> dict[str, Any]:
        return {"p": self.p, "power": self.power}

    def __repr__(self) -> str:
        return f"LpRegularizer(p={self.p}, power={self.power})"


def get_embedding_regularizer(regularizer: Any):
    """`None`, an embedding regularizer (an object with `per_sample(embeddings)`), or its
    serialized config -> the regularizer or `None`."""
    if regularizer is None:
        return None
    if isinstance(regularizer, dict):
        regularizer = keras.saving.deserialize_keras_object(regularizer)
    if not callable(getattr(regularizer, "per_sample", None)):
        raise ValueError(
            "`embedding_regularizer` must be an embedding regularizer (e.g. LpRegularizer()) "
            f"or None; got {regularizer!r}."
        )
    return regularizer


__all__ = ["LpRegularizer", "get_embedding_regularizer"]
