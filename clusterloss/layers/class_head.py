"""Classification heads that own one weight row per class, with Partial FC sampling.

`ClassHead` is the base of `SoftmaxHead` (a Dense-like layer) and of the cosine heads
(`ArcFace`, `CosFace`, `SphereFace`, `NormFace`). It owns `kernel`, shape
`(num_classes, dim)` (one row per class, as insightface stores it), and

- `head(embeddings)`: inference logits over all classes, `(batch, num_classes)`;
- `head(embeddings, labels=y, training=True)`: training logits (a margin head applies its
  margin to each sample's own class). With `sample_rate < 1` (Partial FC, below), a training
  call returns logits over the sampled classes only, and `return_labels=True` also returns
  the labels as positions among them: `logits, labels = head(x, labels=y, training=True,
  return_labels=True)`.

Partial FC: An et al., "Killing Two Birds with One Stone: Efficient and Robust Training of
Face Recognition CNNs by Partial FC", CVPR 2022 (insightface `PartialFC_V2`). Each training
step uses every class that has a sample in the batch (the positives) plus negatives drawn at
random, `num_sampled = ceil(sample_rate * num_classes)` classes in all (a fixed shape), drawn
as insightface does: uniform scores, 2.0 for the positives, top `num_sampled`, sorted. The
scores come from a `keras.random.SeedGenerator(seed)` (`clusterloss._native.uniform`), so a
seed fixes the sequence.
Inference (and `training=False`) uses all classes. Only the sampled rows get a gradient;
`RowSparse` (which `ClusterModel.compile` puts in place) then leaves the other rows and their
optimizer slots untouched.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from clusterloss import _native
from clusterloss._registry import register
from clusterloss._validation import check_embeddings, check_range, check_same_batch
from clusterloss.layers.labels import HostLabelCheck, check_num_classes, guard_labels, nan_unless
from clusterloss.layers.precision import full_precision
from clusterloss.optimizers import (
    is_route_part,
    mark_sparse_rows,
    route_row_gradient,
    routed_rows,
    takes_sparse_gradient,
)


def class_scores(x, kernel):
    """`x @ kernel.T`: `(batch, dim)` x `(classes, dim)` -> `(batch, classes)`, in `x`'s dtype.

    An einsum rather than `ops.matmul`: Keras 3.15's torch `matmul` computes float64 inputs
    in float32; `einsum` keeps float64 on every backend. On PyTorch the gradient is written
    out so that the kernel's comes in the kernel's own layout: autodiff of the einsum gives it
    transposed, and copying it into place cost 0.14 s of a 1.6 s step at 100,000 x 512
    (XLA has no such copy, and TensorFlow's step was 40 % slower with the custom gradient)."""
    if keras.backend.backend() == "torch":
        return _scores(x, kernel)
    return ops.einsum("bd,cd->bc", x, kernel)


@ops.custom_gradient
def _scores(x, kernel):
    def grad(*args, upstream=None):  # Keras's torch custom gradient passes `upstream=`
        g = args[0] if upstream is None else upstream
        return ops.einsum("bc,cd->bd", g, kernel), ops.einsum("bc,bd->cd", g, x)

    return ops.einsum("bd,cd->bc", x, kernel), grad


def sample_classes(labels, num_classes: int, num_sampled: int, seed):
    """Partial FC sampling: `(index, positions, ok)`.

    `index`: `(num_sampled,)` sorted class ids, every class of `labels` first, then random
    others; `positions`: each label's position in `index`; `ok`: a scalar bool, false when
    the batch has more distinct classes than `num_sampled` (some positives were left out).
    """
    scores = _native.uniform((num_classes,), seed)
    scores = ops.scatter_update(scores, ops.expand_dims(labels, 1), ops.full_like(labels, 2.0, dtype=scores.dtype))
    index = ops.sort(ops.top_k(scores, num_sampled)[1])
    position = ops.scatter_update(
        ops.full((num_classes,), -1, "int32"),
        ops.expand_dims(index, 1),
        ops.arange(num_sampled, dtype="int32"),
    )
    positions = ops.take(position, labels)
    ok = ops.all(positions >= 0)
    return index, ops.maximum(positions, 0), ok


def _row_index(index, rows: int):
    """The rows of the classes in `index` when each class has `rows` consecutive rows."""
    if rows == 1:
        return index
    rows_of = ops.expand_dims(index * rows, 1) + ops.arange(rows, dtype=index.dtype)
    return ops.reshape(rows_of, (-1,))


class ClassHead(HostLabelCheck, keras.layers.Layer):
    """Base class: a head with one weight row per class in `kernel` `(num_classes, dim)`.

    A subclass defines `class_logits(embeddings, weights, labels, training)`, where
    `weights` is the tuple `class_weights()` (rows of `kernel`, and of any other per-class
    variable such as a bias), restricted to the sampled classes with Partial FC, and `labels`
    is `None` at inference. A subclass with several kernel rows per class (sub-centers) sets
    `rows_per_class`: `kernel` is then `(num_classes * rows_per_class, dim)`, class-major,
    and Partial FC samples whole classes (all their rows).

    Args:
        num_classes: number of classes (an int, NumPy ints accepted), >= 2.
        sample_rate: Partial FC, in (0, 1]; 1 (default) uses every class in every step.
            Below 1 it must sample at least 2 classes (checked when the head is built).
        kernel_initializer, kernel_regularizer: for `kernel`. A regularizer would touch every
            class in every step, so it is refused with `sample_rate < 1` (use the optimizer's
            `weight_decay`, which `RowSparse` applies to the sampled rows).
        seed: seed of the Partial FC sampling (an int, or `None` for a random one).
    """

    uses_labels = True
    has_margin = False
    rows_per_class = 1  # kernel rows per class (sub-centers); rows c*r .. c*r+r-1 are class c

    def __init__(
        self,
        num_classes: int,
        sample_rate: float = 1.0,
        kernel_initializer: Any = "glorot_uniform",
        kernel_regularizer: Any = None,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**full_precision(kwargs))
        self.num_classes = check_num_classes(num_classes)
        check_range(sample_rate, "sample_rate", 0.0, 1.0, low_open=True)
        self.sample_rate = float(sample_rate)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        if self.sampled and self.kernel_regularizer is not None:
            raise ValueError(
                "`kernel_regularizer` cannot be used with `sample_rate` < 1: it would update "
                "every class in every step. Use the optimizer's `weight_decay` instead."
            )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed) if self.sampled else None
        self._routes_gradients = False

    @property
    def num_sampled(self) -> int:
        """Classes per training step: `ceil(sample_rate * num_classes)`."""
        return min(self.num_classes, max(1, math.ceil(self.sample_rate * self.num_classes - 1e-9)))

    @property
    def sampled(self) -> bool:
        """True when a training step uses fewer than all classes (Partial FC)."""
        return self.num_sampled < self.num_classes

    def build(self, embedding_shape):
        check_embeddings(keras.KerasTensor(embedding_shape), "embeddings")
        if self.sampled and self.num_sampled < 2:
            raise ValueError(
                f"`sample_rate` must sample at least 2 of the {self.num_classes} classes; got "
                f"{self.sample_rate}, which samples 1: a softmax over one class has no loss to "
                f"train. Use sample_rate >= {2 / self.num_classes:g}."
            )
        if embedding_shape[-1] is None:
            raise ValueError(
                f"The embedding dimension must be known to build {type(self).__name__}; "
                f"got shape {tuple(embedding_shape)}."
            )
        self.kernel = self.add_weight(
            shape=(self.num_classes * self.rows_per_class, embedding_shape[-1]),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
            trainable=True,
            name="kernel",
        )
        self.build_class_variables(embedding_shape)
        if self.sampled:
            for variable in self.class_variables():
                mark_sparse_rows(variable, self._rows_bound(variable))
        if self._routes_gradients:
            self._add_gradient_routes()

    def _rows_bound(self, variable) -> int:
        return self.num_sampled * (variable.shape[0] // self.num_classes)

    def route_gradients(self) -> None:
        """JAX, Partial FC: give the sampled rows' gradient to `RowSparse` through stand-in
        variables (`route_row_gradient`), not as a dense `(num_classes, dim)` array.
        `ClusterModel.compile` calls it when `RowSparse` is the model's own optimizer. It
        adds two trainable variables per class variable (`routed_gradient_i`, zeros of
        `(num_sampled, dim)`, and `routed_rows_i`), which count in `weights` and the model
        summary but are never updated nor saved: a saved head is the same on every backend.
        Does nothing on other backends or without sampling."""
        if self._routes_gradients or not self.sampled or keras.backend.backend() != "jax":
            return
        self._routes_gradients = True
        if self.built:
            self._tracker.unlock()  # as keras.layers.Dense.enable_lora does
            self._add_gradient_routes()
            self._tracker.lock()

    def _add_gradient_routes(self) -> None:
        for i, variable in enumerate(self.class_variables()):
            bound = self._rows_bound(variable)
            standin = self.add_weight(
                shape=(bound,) + tuple(variable.shape[1:]), initializer="zeros", name=f"routed_gradient_{i}"
            )
            marker = self.add_weight(shape=(bound, 3), initializer="zeros", name=f"routed_rows_{i}")
            route_row_gradient(variable, standin, marker)

    def _saved_variables(self) -> list:
        return [v for v in self._trainable_variables + self._non_trainable_variables if not is_route_part(v)]

    def save_own_variables(self, store) -> None:
        for i, variable in enumerate(self._saved_variables()):
            store[f"{i}"] = variable

    def load_own_variables(self, store) -> None:
        variables = self._saved_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Layer '{self.name}' expected {len(variables)} variables, but received "
                f"{len(store.keys())} variables during loading. Expected: "
                f"{[v.name for v in variables]}"
            )
        for i, variable in enumerate(variables):
            variable.assign(store[f"{i}"])

    def build_class_variables(self, embedding_shape) -> None:
        """Create per-class variables besides `kernel` (e.g. a bias)."""

    def class_variables(self) -> list:
        """The variables with one row per class, in the order of `class_weights`."""
        return [self.kernel]

    def class_weights(self, index=None) -> tuple:
        """The per-class variables as tensors, restricted to the classes in `index`."""
        if index is None:
            return tuple(ops.convert_to_tensor(v) for v in self.class_variables())
        weights = []
        for v in self.class_variables():
            rows = _row_index(index, v.shape[0] // self.num_classes)
            values = _native.take_rows(v, rows, sorted_unique=True, sparse_gradient=takes_sparse_gradient(v))
            weights.append(routed_rows(v, rows, values))
        return tuple(weights)

    def class_logits(self, embeddings, weights: tuple, labels=None, training: bool = False):
        """Logits `(batch, len(weights[0]))`; margin on each label's column if given."""
        raise NotImplementedError

    def on_train_step(self, valid) -> None:
        """Called once per training call with labels; `valid`: all labels in range."""

    def check_batch_size(self, batch_size: int) -> None:
        """ValueError when a training batch of `batch_size` may hold more classes than
        Partial FC samples (every class of the batch must be among the sampled ones)."""
        if self.sampled and min(batch_size, self.num_classes) > self.num_sampled:
            raise ValueError(
                f"`sample_rate` * num_classes = {self.num_sampled} sampled classes is less "
                f"than the batch size {batch_size}: a batch may hold more classes than are "
                f"sampled. Use sample_rate >= batch_size / num_classes, or smaller batches."
            )

    def call(self, embeddings, labels=None, training: bool = False, return_labels: bool = False):
        check_embeddings(embeddings)
        if labels is None:
            logits = self.class_logits(embeddings, self.class_weights(), None, training)
            return (logits, None) if return_labels else logits
        check_same_batch(labels, embeddings)
        labels, valid = guard_labels(labels, self.num_classes)
        if training:
            self.on_train_step(valid)
        if training and self.sampled:
            if _native.replicas_in_sync() > 1:
                raise ValueError(
                    "Partial FC (`sample_rate` < 1) is not supported under a TensorFlow "
                    "distribution strategy (each replica would sample its own classes). Use "
                    "JAX's keras.distribution, or sample_rate=1."
                )
            if isinstance(embeddings.shape[0], int):
                self.check_batch_size(embeddings.shape[0])
            index, labels, ok = sample_classes(labels, self.num_classes, self.num_sampled, self.seed_generator)
            weights, valid = self.class_weights(index), ops.logical_and(valid, ok)
        else:
            weights = self.class_weights()
        logits = nan_unless(valid, self.class_logits(embeddings, weights, labels, training))
        return (logits, labels) if return_labels else logits

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return (embeddings_shape[0], self.num_classes)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "sample_rate": self.sample_rate,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "seed": self.seed,
        }


@register
class SoftmaxHead(ClassHead):
    """The plain softmax classifier, `logits = x W^T + b`, with Partial FC.

    Equal to `keras.layers.Dense(num_classes)` (same initializers, `kernel` transposed:
    `(num_classes, dim)`, one row per class), plus `sample_rate` for Partial FC.
    `ClusterModel(backbone, num_classes=n)` uses `SoftmaxHead(n, name="logits")`.

    Args:
        num_classes: number of classes.
        use_bias: add a per-class bias (default True, as `Dense`).
        sample_rate, kernel_initializer, kernel_regularizer, seed: see `ClassHead`.
        bias_initializer: for the bias (default zeros).
    """

    def __init__(
        self,
        num_classes: int,
        use_bias: bool = True,
        sample_rate: float = 1.0,
        kernel_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        kernel_regularizer: Any = None,
        seed: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(
            num_classes,
            sample_rate=sample_rate,
            kernel_initializer=kernel_initializer,
            kernel_regularizer=kernel_regularizer,
            seed=seed,
            **kwargs,
        )
        self.use_bias = bool(use_bias)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build_class_variables(self, embedding_shape) -> None:
        if self.use_bias:
            self.bias = self.add_weight(shape=(self.num_classes,), initializer=self.bias_initializer, name="bias")

    def class_variables(self) -> list:
        return [self.kernel, self.bias] if self.use_bias else [self.kernel]

    def class_logits(self, embeddings, weights: tuple, labels=None, training: bool = False):
        x = ops.cast(embeddings, weights[0].dtype)
        logits = class_scores(x, weights[0])
        return logits + weights[1] if self.use_bias else logits

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "use_bias": self.use_bias,
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
        }
