"""`ClusterModel`: a backbone that makes embeddings, an optional classifier head, an optional
center loss, trained with plain `fit(x, y)` on integer labels."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_labels
from clusterloss.layers.centers import CenterLoss


def _uses_labels(head) -> bool:
    """Margin heads (ArcFace, ...) need the labels to make their training logits."""
    return bool(getattr(head, "uses_labels", False))


@register
class ClusterModel(keras.Model):
    """Wraps a backbone `inputs -> embeddings` for feature-clustering training.

    `model(x)` returns `{"embeddings": ..., "logits": ...}` (no `"logits"` without a head), so
    `predict(x)` needs no labels and gives both. The loss given to `compile` is applied to the
    logits when there is a head, else to the embeddings (pair and triplet losses); the center
    loss is added on top. The progress bar shows `loss`, its parts and the compiled metrics.

    Example:
        backbone = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2)])
        model = ClusterModel(backbone, num_classes=10, center_loss=CenterLoss(weight=0.01))
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x, y)                      # y: integer labels, nothing else
        features = model.backbone.predict(x)

    Args:
        backbone: a Keras model or layer mapping inputs to `(batch, dim)` embeddings.
        num_classes: number of classes; adds a `Dense(num_classes)` logits head when `head`
            is not given.
        head: a layer mapping embeddings to logits (e.g. `ArcFace`); if it has
            `uses_labels = True`, training logits come from `head(embeddings, labels=y)`.
        center_loss: a `CenterLoss` layer (or `None`).
    """

    def __init__(
        self,
        backbone: keras.layers.Layer,
        num_classes: int | None = None,
        head: keras.layers.Layer | None = None,
        center_loss: CenterLoss | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
            raise ValueError(f"`num_classes` must be an int >= 2; got {num_classes!r}.")
        if head is None and num_classes is not None:
            head = keras.layers.Dense(num_classes, name="logits")
        if num_classes is None and head is not None:
            num_classes = getattr(head, "num_classes", getattr(head, "units", None))
        if center_loss is not None:
            if num_classes is None:
                raise ValueError("A center loss needs `num_classes` (or a head that has it).")
            if center_loss.num_classes is None:
                center_loss.num_classes = num_classes
            elif center_loss.num_classes != num_classes:
                raise ValueError(
                    f"`center_loss.num_classes` ({center_loss.num_classes}) must equal "
                    f"`num_classes` ({num_classes})."
                )
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = head
        self.center_loss = center_loss
        if center_loss is not None:
            part = "classification_loss" if head is not None else "embedding_loss"
            self.main_loss_tracker = keras.metrics.Mean(name=part)
            self.center_loss_tracker = keras.metrics.Mean(name="center_loss")

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        embedding_shape = tuple(self.backbone.compute_output_shape(input_shape))
        if len(embedding_shape) != 2:
            raise ValueError(
                "`backbone` must output embeddings of shape (batch, dim); "
                f"got shape {embedding_shape}."
            )
        for layer in (self.head, self.center_loss):
            if layer is not None and not layer.built:
                layer.build(embedding_shape)
        self.built = True

    def call(self, inputs, training: bool | None = None) -> dict[str, Any]:
        embeddings = self.backbone(inputs, training=training)
        outputs = {"embeddings": embeddings}
        if self.head is not None:
            outputs["logits"] = self.head(embeddings, training=training)
        return outputs

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        embeddings = y_pred["embeddings"]
        if self.head is None:
            target = embeddings
        elif _uses_labels(self.head):
            target = self.head(embeddings, labels=y, training=training)
        else:
            target = y_pred["logits"]
        loss = super().compute_loss(x, y, target, sample_weight, training=training)
        if self.center_loss is None:
            return loss
        per_sample = self.center_loss(embeddings, y, training=training)
        if sample_weight is None:
            center = ops.mean(per_sample)
        else:
            weights = ops.cast(ops.reshape(sample_weight, (-1,)), per_sample.dtype)
            center = ops.sum(per_sample * weights) / ops.maximum(ops.sum(weights), 1e-12)
        self.main_loss_tracker.update_state(loss)
        self.center_loss_tracker.update_state(center)
        return loss + ops.cast(center, loss.dtype)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        target = y_pred.get("logits", y_pred["embeddings"])
        return super().compute_metrics(x, y, target, sample_weight)

    def _check_y(self, y: Any) -> None:
        if isinstance(y, (np.ndarray, list, tuple)) or hasattr(y, "__array__"):
            check_labels(np.asarray(y), self.num_classes, name="y")

    def fit(self, x=None, y=None, *args, **kwargs):
        self._check_y(y)
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._check_y(y)
        return super().evaluate(x, y, *args, **kwargs)

    def embed(self, x, batch_size: int = 256, verbose: Any = 0) -> np.ndarray:
        """Embeddings of `x` as a NumPy array (the backbone alone, no head)."""
        return np.asarray(self.backbone.predict(x, batch_size=batch_size, verbose=verbose))

    def get_config(self) -> dict[str, Any]:
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "backbone": serialize(self.backbone),
            "num_classes": self.num_classes,
            "head": serialize(self.head),
            "center_loss": serialize(self.center_loss),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None):
        config = dict(config)
        for key in ("backbone", "head", "center_loss"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(
                    config[key], custom_objects=custom_objects
                )
        return cls(**config)
