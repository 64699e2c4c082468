"""Center loss: class centers owned by a layer, and the loss that pulls features to them."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import (
    check_choice,
    check_embeddings,
    check_labels,
    check_range,
    check_same_batch,
    upcast,
)

UPDATES = ("paper", "gradient")


@register
class CenterLoss(keras.layers.Layer):
    """Class centers and the center loss of Wen et al., "A Discriminative Feature Learning
    Approach for Deep Face Recognition", ECCV 2016.

    `call(embeddings, labels)` returns one value per sample,

        L_i = lambda * 1/2 * ||x_i - c_{y_i}||^2,

    which the model averages over the batch (with `sample_weight`). The centers live here,
    in the layer, because a `keras.losses.Loss` cannot own state on every backend.

    How the centers move (`update`):
      - `"paper"` (default): non-trainable, never touched by the optimizer; on each training
        call, Eq. 4 of the paper moves them toward the batch features:
        `c_j -= alpha * sum_{i: y_i = j}(c_j - x_i) / (1 + n_j)`.
      - `"gradient"`: trainable weights moved by the optimizer, like pytorch-center-loss; give
        them their own optimizer or learning rate with `center_optimizer(...)`.
    In both, `lambda` scales only the features' gradient, never the center step (as in the
    Caffe reference and in pytorch-center-loss, which divides the center gradient by lambda),
    so `lambda = 0` during a warm-up still lets the centers track the features.

    Conventions compared (for the same features):
      - this layer: `lambda * mean_i 1/2 ||x_i - c_{y_i}||^2`, so the feature gradient is
        `lambda * (x_i - c_{y_i}) / B`.
      - Caffe reference (ydwen/caffe-face): the same value, `sum / (2M)`; centers by Eq. 4 times
        the solver's learning rate (lr_mult 1), so alpha moves with the lr schedule there.
      - pytorch-center-loss (KaiyangZhou): `sum_i ||x_i - c_{y_i}||^2 / B`, no 1/2: twice this
        value, so its `weight_cent` equals `lambda / 2` here; centers by SGD (lr 0.5).
      - the paper's Eq. 2 writes `lambda / 2 * sum_i` with no mean over the batch.

    Args:
        num_classes: number of classes; the model fills it in when left `None`.
        weight: lambda, the loss weight. A callback may change it during training
            (`CenterLossScheduler`); it is a non-trainable variable, so a change takes effect
            under `jit_compile` too.
        alpha: the center learning rate of Eq. 4, in [0, 1] (`"paper"` only).
        update: `"paper"` or `"gradient"`.
        center_initializer: initializer of the centers; zeros by default (pytorch-center-loss
            starts from a standard normal; Eq. 4 brings either to the class means quickly).
    """

    def __init__(
        self,
        num_classes: int | None = None,
        weight: float = 0.01,
        alpha: float = 0.5,
        update: str = "paper",
        center_initializer: Any = "zeros",
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 1):
            raise ValueError(f"`num_classes` must be a positive int; got {num_classes!r}.")
        check_range(weight, "weight", 0.0)
        check_range(alpha, "alpha", 0.0, 1.0)
        check_choice(update, "update", UPDATES)
        self.num_classes = num_classes
        self.initial_weight = float(weight)
        self.alpha = float(alpha)
        self.update = update
        self.center_initializer = keras.initializers.get(center_initializer)

    def build(self, embedding_shape):
        check_embeddings(keras.KerasTensor(embedding_shape), "embeddings")
        if self.num_classes is None:
            raise ValueError("`num_classes` must be set before the CenterLoss layer is built.")
        self.centers = self.add_weight(
            shape=(self.num_classes, embedding_shape[-1]),
            initializer=self.center_initializer,
            trainable=self.update == "gradient",
            aggregation="mean",
            name="centers",
            dtype="float32",
        )
        self._lambda = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(self.initial_weight),
            trainable=False,
            name="weight",
            dtype="float32",
        )

    @property
    def weight(self) -> float:
        """lambda, the current loss weight."""
        if not self.built:
            return self.initial_weight
        return float(ops.convert_to_numpy(self._lambda))

    @weight.setter
    def weight(self, value: float) -> None:
        check_range(value, "weight", 0.0)
        if self.built:
            self._lambda.assign(float(value))
        else:  # a callback may set it before the first step builds the model
            self.initial_weight = float(value)

    def call(self, embeddings, labels, training: bool = False):
        check_embeddings(embeddings)
        check_same_batch(labels, embeddings)
        labels = check_labels(labels, self.num_classes)
        x = upcast(embeddings)
        centers = ops.convert_to_tensor(self.centers)
        half_sq = 0.5 * ops.sum(ops.square(x - ops.take(centers, labels, axis=0)), axis=-1)
        if self.update == "gradient":
            # Features get lambda * dL/dx; centers get the unscaled dL/dc (same value).
            fixed_c = 0.5 * ops.sum(
                ops.square(x - ops.take(ops.stop_gradient(centers), labels, axis=0)), axis=-1
            )
            fixed_x = 0.5 * ops.sum(
                ops.square(ops.stop_gradient(x) - ops.take(centers, labels, axis=0)), axis=-1
            )
            return self._lambda * fixed_c + fixed_x - ops.stop_gradient(fixed_x)
        if training:
            self.centers.assign(self.eq4_update(centers, ops.stop_gradient(x), labels))
        return self._lambda * half_sq

    def eq4_update(self, centers, x, labels):
        """Eq. 4: `c_j - alpha * (n_j c_j - sum_{y_i=j} x_i) / (1 + n_j)` for every class j."""
        n = self.num_classes
        centers, x = ops.convert_to_tensor(centers, "float32"), ops.convert_to_tensor(x, "float32")
        labels = ops.convert_to_tensor(labels, "int32")
        counts = ops.segment_sum(ops.ones_like(labels, dtype=x.dtype), labels, num_segments=n)
        sums = ops.segment_sum(x, labels, num_segments=n)
        delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
        return centers - self.alpha * delta

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return (embeddings_shape[0],)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "weight": self.initial_weight,
            "alpha": self.alpha,
            "update": self.update,
            "center_initializer": keras.initializers.serialize(self.center_initializer),
        }
