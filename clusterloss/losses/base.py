"""The `keras.losses.Loss` base that every clusterloss loss class wraps a plain function with
(public: the extension points for an own loss; docs/losses.md, "Adding a loss").

As in Keras (`keras/src/losses/losses.py`), each loss is a plain function
`fn(y_true, y_pred, **options) -> one value per sample` and a class that stores `options`,
serializes them in `get_config`, and leaves the reduction and `sample_weight` to Keras.

The class is derived from the function: `class MyLoss(MetricLoss, fn=my_loss)` gets an
`__init__` whose parameters are `my_loss`'s options (its parameters but `y_true`, `y_pred` and
the per-call references) with their names, defaults and order, then the class's own
(`embedding_regularizer`, `embedding_reg_weight` for a `MetricLoss` unless
`regularized=False`), then `reduction`, `name` (default: the function's name) and `dtype`.
The options are checked once by the function's `@validated(check)` check, which the function
runs on each call and the class at construction: one validation for both.

Two differences from `keras.losses.Loss.__call__`, both about not changing the inputs:

- `y_true` is passed on as given. Keras casts it to the loss dtype (float32), which merges
  distinct integer ids from 2**24 on (16,777,217 becomes 16,777,216) before the loss sees them.
- `y_pred` is computed in float64 when it or the loss's `dtype` is float64, else in float32
  (half precision is upcast inside the functions); the result has that dtype (Keras's own
  reduction computes float64 in float32 on torch).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import keras
from keras import ops

from clusterloss._native import replicas_in_sync
from clusterloss._validation import check_range, upcast
from clusterloss.distances import get_distance
from clusterloss.losses.regularizers import get_embedding_regularizer
from clusterloss.tuples.pairs import get_miner

# Parameters of a loss function that are tensors given per call, not options of its class.
CALL_INPUTS = frozenset({"y_true", "y_pred", "ref_embeddings", "ref_labels", "ref_mask"})


def validated(check: Callable[..., dict[str, Any] | None]):
    """Decorator of a loss function: `check`, called with the options it names (its parameter
    names), runs before the function and raises a `ValueError` for a bad option; it may
    return a dict of normalised values that replace the given ones. A class derived from the
    function runs the same check at construction."""
    names = tuple(inspect.signature(check).parameters)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args: Any, **kwargs: Any):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return fn(**{**bound.arguments, **run_check(checked, bound.arguments)})

        checked.check, checked.check_names, checked.unchecked = check, names, fn
        return checked

    return decorate


def run_check(fn: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The normalised options `fn`'s `@validated` check returns (none without a check)."""
    if getattr(fn, "check", None) is None:
        return {}
    return fn.check(**{name: options[name] for name in fn.check_names}) or {}


def _typed(value: Any, annotation: Any) -> Any:
    """A Python number as the `float`/`bool` its annotation names (configs hold `1.0`, not 1)."""
    if annotation == "float" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if annotation == "bool" and isinstance(value, (bool, int)):
        return bool(value)
    return value


def _derive_init(cls: type, fn: Callable[..., Any]) -> None:
    """Give `cls` an `__init__` with `fn`'s options, the class's own parameters, then
    `reduction`, `name`, `dtype`; see the module docstring."""
    positional = inspect.Parameter.POSITIONAL_OR_KEYWORD
    options = [
        p.replace(kind=positional) for p in inspect.signature(fn).parameters.values() if p.name not in CALL_INPUTS
    ]
    tail = [
        inspect.Parameter("reduction", positional, default="sum_over_batch_size", annotation="str | None"),
        inspect.Parameter("name", positional, default=fn.__name__, annotation="str"),
        inspect.Parameter("dtype", positional, default=None, annotation="str | None"),
    ]
    signature = inspect.Signature([inspect.Parameter("self", positional), *options, *cls.own_parameters, *tail])
    annotations = {p.name: p.annotation for p in options}

    def __init__(self, *args: Any, **kwargs: Any):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        given = dict(bound.arguments)
        del given["self"]
        values = {name: given.pop(name) for name in annotations}
        values.update(run_check(fn, values))
        values = {name: _typed(v, annotations[name]) for name, v in values.items()}
        super(cls, self).__init__(fn, **given, **values)

    __init__.__signature__ = signature
    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    cls.__init__ = __init__


class LossFunctionWrapper(keras.losses.Loss):
    """A `keras.losses.Loss` that calls `fn(y_true, y_pred, **options)`.

    `fn` returns one value per sample, so Keras applies `sample_weight` and the reduction
    (and `tf.distribute` scales it by the number of replicas correctly).

    Use it directly (`LossFunctionWrapper(my_loss, name="my_loss", margin=0.2)`) or derive a
    class from a function: `class MyLoss(LossFunctionWrapper, fn=my_loss)` (see the module
    docstring), registered with `@keras.saving.register_keras_serializable()`.
    """

    own_parameters: tuple[inspect.Parameter, ...] = ()  # a derived class's, after fn's

    def __init_subclass__(cls, fn: Callable[..., Any] | None = None, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if fn is not None:
            _derive_init(cls, fn)

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
            return reduce_per_sample(self.call(y_true, y_pred, **inputs), sample_weight, self.reduction)

    def call(self, y_true, y_pred, **inputs: Any):
        return unchecked(self.fn)(y_true, y_pred, **inputs, **self.options)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), **self.options}

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({options})"


def unchecked(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn` without its `@validated` check (the class checked its options once)."""
    return getattr(fn, "unchecked", fn)


def _same_rank(x, y):
    """Keras's `squeeze_or_expand_to_same_rank`: where the ranks differ by one and the longer
    ends in 1, a rank-1 partner gains that axis, any other loses it (`(batch,)` values and
    `(batch, 1)` weights give `(batch, 1)`)."""
    rank_x, rank_y = len(x.shape), len(y.shape)
    if rank_x == rank_y + 1 and x.shape[-1] == 1:
        return (x, ops.expand_dims(y, -1)) if rank_y == 1 else (ops.squeeze(x, -1), y)
    if rank_y == rank_x + 1 and y.shape[-1] == 1:
        return (ops.expand_dims(x, -1), y) if rank_x == 1 else (x, ops.squeeze(y, -1))
    return x, y


REDUCTIONS = (None, "none", "sum", "sum_over_batch_size", "mean", "mean_with_sample_weight")


def reduce_per_sample(values, sample_weight=None, reduction="sum_over_batch_size"):
    """The one reduction of per-sample losses in clusterloss: a compiled loss's
    (`LossFunctionWrapper.__call__`) and every loss layer's term in `ClusterModel` (center
    loss, `loss_layers`). It is Keras's (`keras.losses.Loss.__call__`) without masks (a
    per-sample metric loss has none), in the dtype of `values` (Keras's computes float64 in
    float32 on torch): weight by `sample_weight`, then `"sum"`, `"sum_over_batch_size"`/`"mean"`
    (the weighted sum divided by the number of values: a weight of 0 drops a sample's term,
    not the sample from the count), `"mean_with_sample_weight"` (divided by the sum of the
    weights), or `None`/`"none"`; divided by the number of `tf.distribute` replicas as Keras
    does (the gradients of the replicas are summed)."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"`reduction` must be one of {list(REDUCTIONS)}; got {reduction!r}.")
    if sample_weight is not None:
        values, weights = _same_rank(values, ops.cast(sample_weight, values.dtype))
        values = values * weights
    if reduction in (None, "none") or tuple(values.shape) in ((), (0,)):
        return values
    total = ops.sum(values)
    if reduction == "sum":
        return total
    if reduction == "mean_with_sample_weight" and sample_weight is not None:
        divisor = ops.sum(ops.broadcast_to(weights, ops.shape(values)))
    elif all(isinstance(n, int) for n in values.shape):  # known: one division, not six ops
        divisor = max(math.prod(values.shape), 1)  # an empty `values` sums to 0
    else:
        divisor = ops.cast(ops.prod(ops.convert_to_tensor(ops.shape(values), "int32")), values.dtype)
    if isinstance(divisor, int):
        mean = total / divisor
    else:
        mean = ops.where(
            divisor == 0, ops.zeros_like(total), total / ops.where(divisor == 0, ops.ones_like(divisor), divisor)
        )
    replicas = replicas_in_sync()
    return mean if replicas == 1 else mean * ops.cast(1.0 / replicas, mean.dtype)


class MetricLoss(LossFunctionWrapper):
    """A `LossFunctionWrapper` whose options may hold a `Distance` and a miner; both are
    written to the config as plain dicts and read back by `__init__`, so a model compiled with
    the loss saves and loads with no `custom_objects`.

    Calling it takes the references as keywords, like the plain function:
    `loss(y_true, y_pred, ref_embeddings=..., ref_labels=...)`.

    `embedding_regularizer` (e.g. `LpRegularizer()`, PML's argument of the same name) adds
    `embedding_reg_weight * regularizer.per_sample(y_pred)` to each anchor's value, so the
    batch mean is PML's `loss + weight * regularizer(embeddings)`. A class derived with
    `regularized=False` does not take these two (a loss on something else than embeddings)."""

    own_parameters = (
        inspect.Parameter(
            "embedding_regularizer", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None, annotation="Any"
        ),
        inspect.Parameter(
            "embedding_reg_weight", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=1.0, annotation="float"
        ),
    )

    def __init_subclass__(cls, regularized: bool = True, **kwargs: Any):
        if not regularized:
            cls.own_parameters = ()
        super().__init_subclass__(**kwargs)

    def __init__(
        self,
        fn,
        reduction="sum_over_batch_size",
        name=None,
        dtype=None,
        embedding_regularizer=None,
        embedding_reg_weight: float = 1.0,
        **options,
    ):
        if "distance" in options:
            options["distance"] = get_distance(options["distance"])
        if "miner" in options:
            options["miner"] = get_miner(options["miner"])
        super().__init__(fn, reduction=reduction, name=name, dtype=dtype, **options)
        self._accepted = frozenset(inspect.signature(fn).parameters)
        self.embedding_regularizer = get_embedding_regularizer(embedding_regularizer)
        self.embedding_reg_weight = float(check_range(embedding_reg_weight, "embedding_reg_weight"))

    @property
    def distance(self):
        return self.options.get("distance")

    @property
    def miner(self):
        return self.options.get("miner")

    def call(self, y_true, y_pred, **inputs: Any):
        """One value per anchor: `fn(y_true, y_pred, **options)` (keywords in `inputs`, such
        as the references or a miner, override the options), plus the embedding
        regularizer's term."""
        unknown = sorted(set(inputs) - self._accepted)
        if unknown:
            raise ValueError(
                f"{type(self).__name__} does not take {', '.join(f'`{k}`' for k in unknown)} "
                "(e.g. reference embeddings; PML refuses them for this loss too)."
            )
        values = unchecked(self.fn)(y_true, y_pred, **{**self.options, **inputs})
        if self.embedding_regularizer is None:
            return values
        term = self.embedding_regularizer.per_sample(y_pred)
        return values + self.embedding_reg_weight * ops.cast(term, values.dtype)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if "distance" in config:
            config["distance"] = config["distance"].get_config()
        if config.get("miner") is not None:
            config["miner"] = keras.saving.serialize_keras_object(config["miner"])
        if self.embedding_regularizer is not None:  # only then: not every class takes it
            config["embedding_regularizer"] = keras.saving.serialize_keras_object(self.embedding_regularizer)
            config["embedding_reg_weight"] = self.embedding_reg_weight
        return config
