"""`ClusterModel`: a backbone that makes embeddings, an optional classifier head, optional
per-sample loss layers (the center loss, a cross-batch memory, ...), trained with plain
`fit(x, y)` on integer labels."""

from __future__ import annotations

import inspect
import warnings
from typing import Any

import keras
import numpy as np
from keras import ops

from clusterloss import _native
from clusterloss._registry import register
from clusterloss.data import ImageFiles
from clusterloss.layers.centers import CenterLoss
from clusterloss.layers.class_head import ClassHead, SoftmaxHead
from clusterloss.layers.labels import check_num_classes, guard_labels, nan_unless
from clusterloss.losses.base import reduce_per_sample
from clusterloss.models import inputs
from clusterloss.models.embedder import Embedder
from clusterloss.optimizers import RowSparse

QUICK_ROWS = 32  # `embed` of at most this many array rows: a compiled call, not predict


def _quick(backbone: keras.Model) -> bool:
    """Whether `backbone` can be called compiled on an array: built, one input."""
    return backbone.built and len(getattr(backbone, "inputs", None) or ()) == 1


HEAD_LABELS = "head_labels"  # y_pred key: the labels of the training logits (Partial FC)
_RESERVED = ("loss", "classification_loss", "embedding_loss")


def _portable(config: Any) -> Any:
    """A compile config with the backend-specific optimizer classes named by their public
    name: PyTorch's `keras.optimizers.Adam` is `keras.src.backend.torch.optimizers.torch_adam
    .Adam`, which Keras 3.15 records as such, so a model saved on torch could not be compiled
    on JAX or TensorFlow. `keras.optimizers.Adam` is the right class on every backend."""
    if isinstance(config, dict):
        config = {key: _portable(value) for key, value in config.items()}
        module = config.get("module")
        if isinstance(module, str) and module.startswith("keras.src.backend.") and ".optimizers." in module:
            config["module"] = "keras.optimizers"
        return config
    if isinstance(config, (list, tuple)):
        return type(config)(_portable(value) for value in config)
    return config


def _arguments(method, x, y, args: tuple, kwargs: dict) -> dict[str, Any]:
    """The arguments of a call of `method(self, x, y, *args, **kwargs)` by name."""
    bound = inspect.signature(method).bind(None, x, y, *args, **kwargs).arguments
    bound.pop("self")
    extra = bound.pop("kwargs", {})
    return {**bound, **extra}


def _uses_labels(head) -> bool:
    """Margin heads (ArcFace, ...) and `SoftmaxHead` take the labels in training."""
    return bool(getattr(head, "uses_labels", False))


def _has_row_sparse(optimizer) -> bool:
    """Whether `optimizer` is, or contains, a `RowSparse`."""
    inner = getattr(optimizer, "inner_optimizer", optimizer)  # LossScaleOptimizer
    if isinstance(inner, RowSparse):
        return True
    return any(isinstance(o, RowSparse) for o in getattr(inner, "optimizers", []))


@register
class ClusterModel(keras.Model):
    """Wraps a backbone `inputs -> embeddings` for feature-clustering training.

    `model(x)` returns `{"embeddings": ..., "logits": ...}` (no `"logits"` without a head), so
    `predict(x)` needs no labels and gives both. The loss given to `compile` is applied to the
    logits when there is a head, else to the embeddings (pair and triplet losses); the mean of
    each loss layer (`center_loss`, `loss_layers`) is added on top. The progress bar shows
    `loss`, its parts and the compiled metrics.

    One head computation per training step: a head that takes labels (every `ClassHead`:
    `SoftmaxHead`, `ArcFace`, ...) is not run in the training forward pass; `compute_loss`
    runs it once with the labels, and the compiled metrics (`accuracy`) see those training
    logits: with the margin for a margin head, over the sampled classes with Partial FC (so
    training accuracy is a little pessimistic). `evaluate` and `predict` use the inference
    logits (no margin, all classes); `evaluate`'s loss is on the training-style logits
    (margin, all classes), which costs a margin head a second head computation there.

    Example:
        backbone = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2)])
        model = ClusterModel(backbone, num_classes=10, center_loss=CenterLoss(weight=0.01))
        model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      metrics=["accuracy"])
        model.fit(x, y)                      # y: integer labels, nothing else
        features = model.backbone.predict(x)

    Args:
        backbone: a Keras model or layer mapping inputs to `(batch, dim)` embeddings.
        num_classes: number of classes; adds a `SoftmaxHead(num_classes, name="logits")`
            (a Dense layer with Partial FC) when `head` is not given.
        head: a layer mapping embeddings to logits (e.g. `ArcFace`); if it has
            `uses_labels = True`, training logits come from `head(embeddings, labels=y,
            training=True)`. Its `num_classes` must equal `num_classes` when both are given.
        center_loss: a `CenterLoss` layer (or `None`), shown as `center_loss`.
        loss_layers: more per-sample loss layers, each called as
            `layer(embeddings, labels, training=...) -> (batch,)` (e.g. a cross-batch
            memory); the (sample-weighted) mean of each is added to the loss and shown under
            the layer's `name`. With loss layers, `compile` needs no `loss`.
    """

    def __init__(
        self,
        backbone: keras.layers.Layer,
        num_classes: int | None = None,
        head: keras.layers.Layer | None = None,
        center_loss: CenterLoss | None = None,
        loss_layers: list[keras.layers.Layer] | tuple[keras.layers.Layer, ...] | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if num_classes is not None:
            num_classes = check_num_classes(num_classes)
        if head is None and num_classes is not None:
            head = SoftmaxHead(num_classes, name="logits")
        if head is not None:
            head_classes = getattr(head, "num_classes", getattr(head, "units", None))
            if num_classes is None:
                num_classes = head_classes
            elif head_classes is not None and head_classes != num_classes:
                raise ValueError(
                    f"`head` has {head_classes} classes but `num_classes` is {num_classes}; "
                    f"give one of them, or make them equal."
                )
        if loss_layers is not None and not isinstance(loss_layers, (list, tuple)):
            raise ValueError(f"`loss_layers` must be a list of layers; got {type(loss_layers).__name__}.")
        loss_layers = list(loss_layers or [])
        terms = ([("center_loss", center_loss)] if center_loss is not None else []) + [
            (layer.name, layer) for layer in loss_layers
        ]
        names = [name for name, _ in terms]
        for name, layer in terms:
            if not isinstance(layer, keras.layers.Layer):
                raise ValueError(f"A loss layer must be a keras Layer; got {layer!r}.")
            if name in _RESERVED or names.count(name) > 1:
                raise ValueError(
                    f"Loss layer names must be unique and not one of {list(_RESERVED)}; got "
                    f"{names}. Give the layers distinct `name`s."
                )
            self._fill_num_classes(name, layer, num_classes)
        self.backbone = backbone
        self.num_classes = num_classes
        self.head = head
        self.center_loss = center_loss
        self.loss_layers = loss_layers
        self._terms = terms
        self.term_trackers = [keras.metrics.Mean(name=name) for name in names]
        part = "classification_loss" if head is not None else "embedding_loss"
        self.main_loss_tracker = keras.metrics.Mean(name=part) if terms else None
        self._compiled_loss_given = True

    @staticmethod
    def _fill_num_classes(name: str, layer, num_classes: int | None) -> None:
        if not hasattr(layer, "num_classes"):
            return
        if layer.num_classes is None:
            if num_classes is None:
                raise ValueError(f"The loss layer `{name}` needs `num_classes` (or a head that has it).")
            layer.num_classes = num_classes
        elif num_classes is not None and layer.num_classes != num_classes:
            raise ValueError(f"`{name}.num_classes` ({layer.num_classes}) must equal `num_classes` ({num_classes}).")

    def build(self, input_shape):
        if not self.backbone.built:
            self.backbone.build(input_shape)
        embedding_shape = tuple(self.backbone.compute_output_shape(input_shape))
        if len(embedding_shape) != 2:
            raise ValueError(f"`backbone` must output embeddings of shape (batch, dim); got shape {embedding_shape}.")
        for layer in [self.head] + [layer for _, layer in self._terms]:
            if layer is not None and not layer.built:
                layer.build(embedding_shape)
        self.built = True

    # ------------------------------------------------------------------ train step
    def call(self, inputs, training: bool | None = None) -> dict[str, Any]:
        embeddings = self.backbone(inputs, training=training)
        outputs = {"embeddings": embeddings}
        if self.head is not None and not (training and _uses_labels(self.head)):
            outputs["logits"] = self.head(embeddings, training=training)
        return outputs

    def _head_target(self, embeddings, y, y_pred, training):
        """`(target, labels)` for the compiled loss. A label head runs here, once, with the
        labels; in training (where `call` left it out) its logits and their labels go to
        `compute_metrics` through `y_pred`."""
        head = self.head
        if head is None:
            return embeddings, y
        margin = _uses_labels(head) and (training or getattr(head, "has_margin", True))
        if "logits" in y_pred and not margin:
            return y_pred["logits"], y
        if isinstance(head, ClassHead):
            logits, labels = head(embeddings, labels=y, training=training, return_labels=True)
        else:
            logits, labels = head(embeddings, labels=y, training=training), y
        if "logits" not in y_pred:
            y_pred["logits"], y_pred[HEAD_LABELS] = logits, labels
        return logits, labels

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        embeddings = y_pred["embeddings"]
        target, labels = self._head_target(embeddings, y, y_pred, training)
        total = None
        replicas = _native.replicas_in_sync()  # Keras divides compiled losses by it
        if self._compile_loss is not None or self.losses:
            total = super().compute_loss(x, labels, target, sample_weight, training=training)
            if self.main_loss_tracker is not None and self._compiled_loss_given:
                self.main_loss_tracker.update_state(total * replicas)
        for (_, layer), tracker in zip(self._terms, self.term_trackers):
            # Reduced as a compiled loss is (sample_weight: the weighted sum over the batch).
            value = reduce_per_sample(layer(embeddings, y, training=training), sample_weight)
            tracker.update_state(value * replicas)
            total = value if total is None else total + ops.cast(value, total.dtype)
        if total is None:
            raise ValueError(
                "No loss to compute: pass a `loss` to `compile`, or give the model a `center_loss` or `loss_layers`."
            )
        if self.num_classes is not None and y is not None:
            total = nan_unless(guard_labels(y, self.num_classes, name="y")[1], total)
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        target = y_pred.get("logits", y_pred["embeddings"])
        return super().compute_metrics(x, y_pred.get(HEAD_LABELS, y), target, sample_weight)

    # ------------------------------------------------------------------ compile, fit
    def _needs_row_sparse(self) -> bool:
        head_samples = getattr(self.head, "sampled", False)
        trainable_centers = any(getattr(layer, "update", None) == "gradient" for _, layer in self._terms)
        return bool(head_samples or trainable_centers)

    def compile(self, optimizer="rmsprop", loss=None, *args, **kwargs):
        """`keras.Model.compile`. When the model has class weights that only some classes
        update per step (a head with `sample_rate < 1`, or `CenterLoss(update="gradient")`),
        a plain `optimizer` is wrapped in `RowSparse`, so that absent classes and their
        optimizer slots stay untouched."""
        optimizer = keras.optimizers.get(optimizer)
        if self._needs_row_sparse():
            if isinstance(optimizer, (keras.optimizers.MultiOptimizer, keras.optimizers.LossScaleOptimizer)):
                if not _has_row_sparse(optimizer):
                    warnings.warn(
                        "This model has class weights updated by only some classes per step "
                        "(Partial FC or trainable centers), and the optimizer has no RowSparse: "
                        "momentum and weight decay will move the absent classes. Wrap their "
                        "optimizer in `clusterloss.RowSparse`.",
                        stacklevel=2,
                    )
            elif not isinstance(optimizer, RowSparse):
                optimizer = RowSparse(optimizer)
        self._compiled_loss_given = loss is not None
        super().compile(optimizer, loss, *args, **kwargs)
        if isinstance(self.optimizer, RowSparse):  # not wrapped (e.g. in a LossScaleOptimizer)
            self.optimizer.takes_row_slices = True
            if isinstance(self.head, ClassHead):
                self.head.route_gradients()

    def get_compile_config(self):
        config = super().get_compile_config()
        return None if config is None else _portable(config)

    def compile_from_config(self, config):
        """Compile from a saved config (`keras.saving.load_model` calls it), on any backend."""
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.built:
            self.optimizer.build(self.trainable_variables)

    @property
    def metrics(self):
        unused = None if self._compiled_loss_given else self.main_loss_tracker
        return [m for m in super().metrics if unused is None or m is not unused]

    def _label_check(self) -> inputs.LabelCheck:
        return inputs.LabelCheck(self.num_classes, name="y")

    def fit(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.fit`; `x` and `validation_data=(x_val, y_val)` may also be
        `ImageFiles`, read batch by batch (`x` shuffled every epoch unless `shuffle=False`)."""
        check = self._label_check()
        kwargs = _arguments(keras.Model.fit, inputs.checked_data(x, y, check), y, args, kwargs)
        size = kwargs.get("batch_size")
        if isinstance(x, ImageFiles):
            kwargs.update(
                x=inputs.image_batches(x, y, size, kwargs.get("shuffle", True)), y=None, batch_size=None, shuffle=False
            )
        validation = kwargs.get("validation_data")
        if validation is not None:  # a tuple's labels are checked now, a dataset's per batch
            kwargs["validation_data"] = inputs.checked_validation_data(validation, check)
            if isinstance(validation, (tuple, list)) and len(validation) == 2:
                size = kwargs.get("validation_batch_size") or size
                kwargs["validation_data"] = inputs.image_batches(*validation, size)
        try:
            return super().fit(**kwargs)
        except Exception as error:
            inputs.raise_label_error(error)
            raise

    def evaluate(self, x=None, y=None, *args, **kwargs):
        """`keras.Model.evaluate`; `x` may also be `ImageFiles`, read batch by batch."""
        x_checked = inputs.checked_data(x, y, self._label_check())
        kwargs = _arguments(keras.Model.evaluate, x_checked, y, args, kwargs)
        if isinstance(x, ImageFiles):
            kwargs.update(x=inputs.image_batches(x, y, kwargs.get("batch_size")), y=None, batch_size=None)
        try:
            return super().evaluate(**kwargs)
        except Exception as error:
            inputs.raise_label_error(error)
            raise

    def embed(self, x, batch_size: int = 256, verbose: Any = 0):
        """Embeddings of `x` (an array, a dataset, or `ImageFiles`: read batch by batch) as a
        NumPy array (the backbone alone, no head). A few rows of an array (at most
        `QUICK_ROWS`, e.g. one query) go through a compiled call of the backbone, not
        `predict` (whose set-up costs more than the call: 45 ms on TensorFlow)."""
        if isinstance(x, np.ndarray) and 0 < len(x) <= min(QUICK_ROWS, batch_size) and _quick(self.backbone):
            return self._quick_embed(x)
        x = inputs.image_batches(x, batch_size=batch_size)
        return np.asarray(self.backbone.predict(x, batch_size=batch_size, verbose=verbose))

    def _quick_embed(self, x: np.ndarray) -> np.ndarray:
        if getattr(self, "_quick_call", None) is None:
            self._quick_call = Embedder(self.backbone, QUICK_ROWS, live=True)
        return self._quick_call(x)

    def export(self, filepath, format: str = "tf_saved_model", verbose: Any = None,
               input_signature: Any = None, preprocessing: Any = None, **kwargs) -> None:  # fmt: skip
        """`keras.Model.export` of the **embeddings**: the backbone alone, not the head's
        logits, on every backend that can export `format` (also after `load_model`; see
        `clusterloss.models.export`). Formats and arguments as Keras's (`"tf_saved_model"`,
        `"onnx"`, `"litert"`, ...). `preprocessing` None: the inputs of `embed`; a scale or an
        `export.Preprocessing`: that input scaling inside (e.g. `1 / 255` for raw images).
        `export.export_embeddings` also writes `preprocessing.json` and checks the export."""
        from clusterloss.models.export import Preprocessing, keras_export, serving_model

        serving = serving_model(self, Preprocessing() if preprocessing is None else preprocessing)
        keras_export(serving, filepath, format, verbose, input_signature, **kwargs)

    def get_config(self) -> dict[str, Any]:
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "backbone": serialize(self.backbone),
            "num_classes": self.num_classes,
            "head": serialize(self.head),
            "center_loss": serialize(self.center_loss),
            "loss_layers": [serialize(layer) for layer in self.loss_layers],
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects=None):
        config = dict(config)
        for key in ("backbone", "head", "center_loss"):
            if config.get(key) is not None:
                config[key] = keras.saving.deserialize_keras_object(config[key], custom_objects=custom_objects)
        config["loss_layers"] = [
            keras.saving.deserialize_keras_object(layer, custom_objects=custom_objects)
            for layer in config.get("loss_layers") or []
        ]
        return cls(**config)
