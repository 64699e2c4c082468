"""Center loss: class centers owned by a layer, and the loss that pulls features to them."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from clusterloss._native import materialize, scatter_rows, take_rows
from clusterloss._registry import register
from clusterloss._validation import (
    check_choice,
    check_embeddings,
    check_range,
    check_same_batch,
    upcast,
)
from clusterloss.layers.labels import (
    HostLabelCheck,
    all_finite,
    check_num_classes,
    guard_labels,
    nan_unless,
)
from clusterloss.layers.precision import full_precision
from clusterloss.optimizers import mark_sparse_rows

UPDATES = ("paper", "gradient")


@register
class CenterLoss(HostLabelCheck, keras.layers.Layer):
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
    so `lambda = 0` during a warm-up still lets the centers track the features. In both, only
    the batch's classes move: Eq. 4 writes the batch's rows of the centers (O(batch x dim)
    work and memory), and the trainable centers are marked for `RowSparse`, which
    `ClusterModel.compile` and `center_optimizer` use. A frozen layer (`trainable=False`)
    does not move its centers in either mode, like `BatchNormalization`.

    Bad input in a training step: labels outside `[0, num_classes)` give a NaN loss and
    leave the centers untouched; so do NaN or inf features (a diverged model), so that
    `keras.callbacks.TerminateOnNaN` stops training with the centers intact.

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
        super().__init__(**full_precision(kwargs))
        if num_classes is not None:
            num_classes = check_num_classes(num_classes, minimum=1)
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
        )
        if self.update == "gradient":
            mark_sparse_rows(self.centers)
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
        labels, valid = guard_labels(labels, self.num_classes)
        x = ops.cast(upcast(embeddings), self.centers.dtype)
        weight = ops.cast(self._lambda, x.dtype)
        c = materialize(take_rows(self.centers, labels))  # the only read of the centers
        if self.update == "gradient":
            # Features get lambda * dL/dx; centers get the unscaled dL/dc (same value).
            fixed_c = self._half_squared(x, ops.stop_gradient(c))
            fixed_x = self._half_squared(ops.stop_gradient(x), c)
            return nan_unless(valid, weight * fixed_c + fixed_x - ops.stop_gradient(fixed_x))
        value = weight * self._half_squared(x, c)
        if training and self.trainable:
            ok = ops.logical_and(valid, all_finite(x))
            self._move_centers(ops.stop_gradient(x), labels, ok, ops.stop_gradient(c))
        return nan_unless(valid, value)

    @staticmethod
    def _half_squared(x, c):
        return 0.5 * ops.sum(ops.square(x - c), axis=-1)

    def _move_centers(self, x, labels, ok, c) -> None:
        """Eq. 4 on the batch's rows of the centers, only where `ok` (a scalar bool); `c`:
        the centers of `labels`, already read. Reading the centers once, before the write,
        lets XLA write them in place (a second read after it made JAX copy the whole table:
        2 s a step at 1,000,000 x 512)."""
        rows, new, old = self.eq4_rows(self.centers, x, labels, c)
        scatter_rows(self.centers, rows, ops.where(ok, new, old))

    def eq4_rows(self, centers, x, labels, c=None):
        """Eq. 4 for the batch's classes: `(rows, new_rows)`, one row per sample (sorted by
        class; the samples of one class carry the same new center), where

            new_rows[i] = c_j - alpha * (n_j c_j - sum_{y_k=j} x_k) / (1 + n_j),  j = rows[i].

        Only `(batch, dim)` tensors: the classes are grouped by sorting the labels. `c`: the
        rows of `centers` for `labels` when already read. Also returns the old rows."""
        labels = ops.convert_to_tensor(labels, "int32")
        x = ops.cast(x, centers.dtype)
        order = ops.argsort(labels)
        if c is None:
            c = take_rows(centers, labels)
        labels, x, c = ops.take(labels, order), ops.take(x, order, axis=0), ops.take(c, order, axis=0)
        batch = labels.shape[0] if labels.shape[0] is not None else ops.shape(labels)[0]
        first = ops.concatenate([ops.ones((1,), "bool"), labels[1:] != labels[:-1]])
        group = ops.cumsum(ops.cast(first, "int32")) - 1
        counts = ops.segment_sum(ops.ones_like(labels, dtype=x.dtype), group, num_segments=batch)
        sums = ops.segment_sum(x, group, num_segments=batch)
        n = ops.expand_dims(ops.take(counts, group), 1)
        return labels, c - self.alpha * (n * c - ops.take(sums, group, axis=0)) / (1.0 + n), c

    def eq4_update(self, centers, x, labels):
        """Eq. 4 applied to all the centers: `c_j - alpha * (n_j c_j - sum_{y_i=j} x_i) /
        (1 + n_j)` for the classes in `labels`, the other rows unchanged (a new tensor)."""
        centers = ops.convert_to_tensor(centers)
        rows, new, _ = self.eq4_rows(centers, x, labels)
        return ops.scatter_update(centers, ops.expand_dims(rows, 1), new)

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
