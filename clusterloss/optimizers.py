"""Optimizers for class-indexed weights (class centers, class weights of a head).

- `RowSparse(optimizer)`: updates a class-indexed variable only in the rows (classes) whose
  gradient is non-zero in this step, and leaves the other rows and their optimizer slots
  bit-identical. Adam, momentum and weight decay otherwise move every row at every step, even
  with a zero gradient: with Partial FC (a head that samples its classes) or a center loss
  with trainable centers, classes absent from a step would still drift.
- `center_optimizer(default, centers)`: the centers of `CenterLoss(update="gradient")` get
  their own optimizer (SGD 0.5 in pytorch-center-loss), the rest of the model `default`.
- `WarmupSchedule`: a learning rate per step with a linear warm-up, then constant, cosine or
  step decay (what `clusterloss train --lr-schedule` uses).
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from clusterloss._native import (
    any_replica,
    nonzero_rows,
    route_gradient,
    row_slices,
    scatter_rows,
    take_rows,
)
from clusterloss._registry import register
from clusterloss._validation import check_choice, check_positive_int, check_range

_SPARSE_ROWS = "_clusterloss_sparse_rows"
_SPARSE_GRADIENT = "_clusterloss_sparse_gradient"
_ROUTE = "_clusterloss_route"  # on a variable: its (stand-in, marker) pair
_ROUTE_PART = "_clusterloss_route_part"  # on a stand-in or a marker
_CODE_BASE = 4096  # a row index travels as two exact float32 digits in this base


def mark_sparse_rows(variable: keras.Variable, max_rows: int | None = None) -> None:
    """Mark `variable`, which holds one row per class along axis 0, for `RowSparse` updates.

    `max_rows` bounds the number of rows that can have a non-zero gradient in one step (a
    Partial FC head: the classes it samples). `RowSparse` then gathers those rows, updates
    them and writes them back: the work is O(max_rows x dim). With `None` (no bound known),
    `RowSparse` updates the whole variable and puts the zero-gradient rows back: the same
    result, with O(rows x dim) work. Class-indexed layers of clusterloss mark their
    variables themselves; call this for your own tables (e.g. an embedding matrix).
    """
    setattr(variable, _SPARSE_ROWS, 0 if max_rows is None else check_positive_int(max_rows, "max_rows"))


def takes_sparse_gradient(variable: keras.Variable) -> bool:
    """True once a `RowSparse` with `takes_row_slices` has been built for `variable` with a
    bound on its rows: a layer may then give the gradient of the variable's rows as row
    slices (a sparse torch gradient), which other optimizers (and `LossScaleOptimizer`'s
    finiteness check) do not take."""
    return bool(getattr(variable, _SPARSE_GRADIENT, False))


def route_row_gradient(variable: keras.Variable, standin: keras.Variable, marker: keras.Variable) -> None:
    """JAX: let the gradient of `variable`'s sampled rows reach `RowSparse` through
    `standin` (`(max_rows,) + variable.shape[1:]`) and their index through `marker`
    `(max_rows, 3)` (`routed_rows`), instead of as a dense array of `variable`'s shape.
    Both are trainable zeros that nothing updates, and a layer leaves them out of its saved
    variables (`is_route_part`): a saved model is the same on every backend."""
    setattr(variable, _ROUTE, (standin, marker))
    for part in (standin, marker):
        setattr(part, _ROUTE_PART, True)


def is_route_part(variable: keras.Variable) -> bool:
    """Whether `variable` is a stand-in or marker of `route_row_gradient`."""
    return bool(getattr(variable, _ROUTE_PART, False))


def routed_rows(variable: keras.Variable, rows, values):
    """`values` (`variable[rows]`, `rows` sorted without duplicates), whose gradient goes to
    `variable`'s route when it has one that its `RowSparse` takes; `values` otherwise."""
    route = getattr(variable, _ROUTE, None)
    if route is None or not takes_sparse_gradient(variable):
        return values
    rows = ops.cast(rows, "int32")
    code = ops.cast(ops.stack([rows // _CODE_BASE, rows % _CODE_BASE, ops.ones_like(rows)], axis=1), "float32")
    return route_gradient(values, route[0], route[1], code)


def _routed_gradient(code, gradient):
    """`(rows, gradient)` from a route's marker and stand-in gradients. A layer that read
    the rows twice in one step sums two codes: the gradient is then NaN (training stops on
    it) rather than applied to the wrong rows."""
    rows = ops.cast(code[:, 0], "int32") * _CODE_BASE + ops.cast(code[:, 1], "int32")
    once = ops.all(code[:, 2] == 1.0)
    return rows, ops.where(once, gradient, ops.full_like(gradient, float("nan")))


def sparse_rows_bound(variable: keras.Variable) -> int | None:
    """`None` if `variable` is not marked, 0 if marked with no bound, else the bound."""
    return getattr(variable, _SPARSE_ROWS, None)


def _row_mask(gradient, rows: int):
    """`(rows,)` bool: the rows with a non-zero gradient, in any replica (the gradient here
    is a replica's own, before the optimizer sums them)."""
    slices = row_slices(gradient)
    if slices is None:
        return any_replica(nonzero_rows(gradient))
    indices, values = slices
    hits = ops.segment_sum(ops.cast(nonzero_rows(values), "int32"), indices, num_segments=rows)
    return any_replica(hits > 0)


def _gradient_rows(gradient, mask, rows):
    """The rows `rows` of `gradient` (dense or `tf.IndexedSlices`, whose duplicates add up)."""
    slices = row_slices(gradient)
    if slices is None:
        return take_rows(gradient, rows, sorted_unique=True)
    indices, values = slices
    position = ops.scatter_update(
        ops.full(mask.shape, -1, "int32"),
        ops.expand_dims(rows, 1),
        ops.arange(rows.shape[0], dtype="int32"),
    )
    # A slice whose row was not gathered (-1) has an all-zero value (`mask` holds every row
    # with a non-zero or NaN entry): adding it to row 0 changes nothing. The scatter adds
    # up duplicates, in one pass (Keras's torch `segment_sum` makes several, and its
    # `ops.scatter` loops over the rows in Python).
    at = ops.expand_dims(ops.maximum(ops.take(position, indices), 0), 1)
    zeros = ops.zeros((rows.shape[0],) + tuple(values.shape[1:]), values.dtype)
    return ops.scatter_update(zeros, at, values, reduction="add")


def _rows_like(mask, values):
    """`mask` `(rows,)` reshaped to broadcast against `values` `(rows, ...)`."""
    return ops.reshape(mask, (-1,) + (1,) * (len(values.shape) - 1))


@register
class RowSparse(keras.optimizers.Optimizer):
    """Row-sparse ("lazy") updates of class-indexed variables with any element-wise optimizer.

    For every variable marked with `mark_sparse_rows` (the class weights of a head with
    `sample_rate < 1`, the centers of `CenterLoss(update="gradient")`), a row whose gradient
    is entirely zero in a step keeps its value and its optimizer slots (Adam's moments,
    momentum) bit-identical, as if the optimizer had not seen that row; the other rows get
    exactly `optimizer`'s update. Weight decay applies to the updated rows only. Unmarked
    variables get `optimizer`'s ordinary update.

    `ClusterModel.compile` wraps a plain optimizer in `RowSparse` when the model has a
    Partial FC head or trainable centers. It also works inside a
    `keras.optimizers.MultiOptimizer` (`center_optimizer` builds one), e.g.
    `OptimizerMap(RowSparse(keras.optimizers.AdamW()), {".*centers": RowSparse(SGD(0.5))})`.

    Works with the element-wise optimizers of Keras (SGD, Adam, AdamW, Adamax, RMSprop,
    Adagrad, Adadelta, Lion, Ftrl): their update of one element depends only on that
    element's gradient, value and slots. Lamb (a per-variable trust ratio), Muon (each
    matrix's update orthogonalised as a whole) and the optimizers with state that is not
    per element (Adafactor's factored moments, Nadam's momentum product) raise a
    ValueError. Clipping (`clipnorm`, `global_clipnorm`) applies per wrapped optimizer;
    `use_ema` and `gradient_accumulation_steps` are not supported.

    Args:
        optimizer: a Keras optimizer instance or name (`"adam"`).
    """

    def __init__(
        self,
        optimizer: keras.optimizers.Optimizer | str = "adam",
        name: str | None = None,
        loss_scale_factor: float | None = None,
    ):
        optimizer = keras.optimizers.get(optimizer)
        if isinstance(optimizer, (RowSparse, keras.optimizers.MultiOptimizer, keras.optimizers.LossScaleOptimizer)):
            raise ValueError(
                f"`optimizer` must be a plain Keras optimizer (Adam, SGD, ...); got "
                f"{type(optimizer).__name__}. Put RowSparse inside a MultiOptimizer instead."
            )
        whole = {
            keras.optimizers.Lamb: "scales each variable's update by a norm over the whole variable",
            keras.optimizers.Muon: "orthogonalises each matrix's update as a whole (Newton-Schulz)",
        }
        for kind, why in whole.items():
            if isinstance(optimizer, kind):
                raise ValueError(
                    f"RowSparse needs an element-wise optimizer; {kind.__name__} {why}. Use Adam, AdamW, SGD, ..."
                )
        if optimizer.use_ema or optimizer.gradient_accumulation_steps:
            raise ValueError(
                "RowSparse does not support `use_ema` or `gradient_accumulation_steps` of the "
                f"wrapped optimizer; got use_ema={optimizer.use_ema}, "
                f"gradient_accumulation_steps={optimizer.gradient_accumulation_steps}."
            )
        super().__init__(learning_rate=0.0, name=name, loss_scale_factor=loss_scale_factor)
        self.optimizer = optimizer
        # Set by `ClusterModel.compile` when this is the model's own optimizer (nothing wraps
        # it): the gradients reach `apply` as they are, so sparse ones may be used.
        self.takes_row_slices = False
        self.optimizer.loss_scale_factor = loss_scale_factor

    # ------------------------------------------------------------------ forwarding
    @property
    def learning_rate(self):
        return self.optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        self.optimizer.learning_rate = value

    @property
    def loss_scale_factor(self):
        return getattr(self, "_loss_scale_factor", None)

    @loss_scale_factor.setter
    def loss_scale_factor(self, value):
        self._loss_scale_factor = value
        if hasattr(self, "optimizer"):
            self.optimizer.loss_scale_factor = value

    @property
    def variables(self):
        return self._variables[:] + self.optimizer.variables

    # ------------------------------------------------------------------ build
    def build(self, var_list):
        if self.built:
            return
        object.__setattr__(self, "_plan", {})  # holds variables: keep it out of tracking
        inner_vars, scratch_of = [], {}
        keys = {self._var_key(var) for var in var_list}
        for var in var_list:
            if is_route_part(var):
                continue
            bound = sparse_rows_bound(var)
            rows = var.shape[0] if len(var.shape) else 0
            if bound is None or not rows:
                inner_vars.append(var)
            elif 0 < bound < rows:
                scratch = self.add_variable((bound,) + tuple(var.shape[1:]), dtype=var.dtype, name=var.name)
                scratch_of[self._var_key(var)] = scratch
                inner_vars.append(scratch)
            else:
                inner_vars.append(var)
        slots = self._build_inner(inner_vars)
        for var in var_list:
            key = self._var_key(var)
            bound = sparse_rows_bound(var)
            if is_route_part(var):
                self._plan[key] = ("route",)
            elif key in scratch_of:
                scratch = scratch_of[key]
                pairs = []
                for slot, initializer, slot_name in slots[id(scratch)]:
                    full = self.add_variable(
                        tuple(var.shape),
                        initializer=initializer,
                        dtype=slot.dtype,
                        layout=getattr(var, "_layout", None),
                        name=f"{var.path.replace('/', '_')}_{slot_name}",
                    )
                    pairs.append((full, slot))
                route = getattr(var, _ROUTE, None)
                if not self.takes_row_slices or (
                    route is not None and not all(self._var_key(p) in keys for p in route)
                ):
                    route = None
                self._plan[key] = ("gather", bound, scratch, pairs, route)
                # JAX has no row-slice gradient: only a complete route stands in for one.
                jax_unrouted = keras.backend.backend() == "jax" and route is None
                setattr(var, _SPARSE_GRADIENT, self.takes_row_slices and not jax_unrouted)
            elif bound is not None and len(var.shape):
                self._plan[key] = ("mask", [slot for slot, _, _ in slots[id(var)]])
            else:
                self._plan[key] = ("plain",)
        super().build(var_list)

    def _build_inner(self, variables) -> dict[int, list]:
        """Build the wrapped optimizer on `variables`, recording each variable's slots."""
        inner = self.optimizer
        before = {id(v) for v in inner.variables}
        slots: dict[int, list] = {id(v): [] for v in variables}
        original = inner.add_variable_from_reference

        def recording(reference_variable, name=None, initializer="zeros"):
            slot = original(reference_variable, name=name, initializer=initializer)
            slots[id(reference_variable)].append((slot, initializer, name or "var"))
            return slot

        inner.add_variable_from_reference = recording
        try:
            with keras.name_scope(inner.name, caller=inner):
                inner.build(variables)
            inner.built = True
        finally:
            del inner.add_variable_from_reference
        recorded = {id(slot) for items in slots.values() for slot, _, _ in items}
        for var in variables:
            for slot, _, _ in slots[id(var)]:
                if tuple(slot.shape) != tuple(var.shape):
                    self._refuse(f"a state of shape {tuple(slot.shape)} for a variable of shape {tuple(var.shape)}")
        other = [v for v in inner.variables if id(v) not in before and id(v) not in recorded]
        if other:
            self._refuse(f"state that is not per element ({other[0].name}, shape {tuple(other[0].shape)})")
        return slots

    def _refuse(self, what: str):
        raise ValueError(
            f"RowSparse needs an element-wise optimizer; {type(self.optimizer).__name__} keeps "
            f"{what}. Use SGD, Adam, AdamW, RMSprop, Adagrad, Lion, ..."
        )

    # ------------------------------------------------------------------ update
    def apply(self, grads, trainable_variables=None):
        if len(grads) == 0:
            return
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        inner_grads, inner_vars, finish = [], [], []
        grad_of = {self._var_key(var): grad for grad, var in zip(grads, trainable_variables)}
        for grad, var in zip(grads, trainable_variables):
            if grad is None:
                continue
            plan = self._plan[self._var_key(var)]
            if plan[0] == "route":
                continue
            if plan[0] == "plain":
                inner_grads.append(grad)
                inner_vars.append(var)
            elif plan[0] == "mask":
                kept = [var] + plan[1]
                before = [ops.copy(v.value) for v in kept]  # torch updates in place
                finish.append((_restore, (_row_mask(grad, var.shape[0]), kept, before)))
                inner_grads.append(ops.convert_to_tensor(grad))
                inner_vars.append(var)
            else:
                _, bound, scratch, pairs, route = plan
                if route is not None:
                    gradient, code = (grad_of[self._var_key(part)] for part in route)
                    rows, grad_rows = _routed_gradient(code, gradient)
                    keep = nonzero_rows(grad_rows)
                else:
                    mask = _row_mask(grad, var.shape[0])
                    rows = ops.sort(ops.top_k(ops.cast(mask, "float32"), bound)[1])
                    keep, grad_rows = ops.take(mask, rows), _gradient_rows(grad, mask, rows)
                moved = [(var, scratch)] + pairs
                before = [take_rows(full, rows, sorted_unique=True) for full, _ in moved]
                for (_, part), value in zip(moved, before):
                    part.assign(value)
                finish.append((_write_rows, (rows, keep, moved, before)))
                inner_grads.append(grad_rows)
                inner_vars.append(scratch)
        self.optimizer.apply(inner_grads, inner_vars)
        for fn, args in finish:
            fn(*args)
        self._iterations.assign_add(1)

    def finalize_variable_values(self, var_list):
        """Nothing to do: `use_ema` is not supported."""

    def get_config(self) -> dict[str, Any]:
        return {
            "optimizer": keras.saving.serialize_keras_object(self.optimizer),
            "name": self.name,
            "loss_scale_factor": self.loss_scale_factor,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizer"] = keras.saving.deserialize_keras_object(config["optimizer"], custom_objects=custom_objects)
        return cls(**config)


def _restore(mask, variables, before) -> None:
    """Put back the rows of `variables` where `mask` is false."""
    for var, old in zip(variables, before):
        var.assign(ops.where(_rows_like(mask, old), var.value, old))


def _write_rows(rows, keep, moved, before) -> None:
    """Copy the gathered `rows` back (`(full, scratch)` pairs) where `keep` is true; the
    other gathered rows (zero gradient) get their `before` values back."""
    for (full, scratch), old in zip(moved, before):
        new = ops.where(_rows_like(keep, old), scratch.value, old)
        scatter_rows(full, rows, new, sorted_unique=True)


def center_optimizer(
    default: keras.optimizers.Optimizer | str = "adam",
    centers: keras.optimizers.Optimizer | float = 0.5,
    pattern: str = ".*centers",
) -> keras.optimizers.MultiOptimizer:
    """A `keras.optimizers.MultiOptimizer`: `centers` for variables whose path matches
    `pattern`, `default` for the rest, both wrapped in `RowSparse` (so a center, or a class
    weight of a Partial FC head, absent from a step stays where it is).

    The recipe of pytorch-center-loss that seed 004's readers ask for is
    `center_optimizer("adam", centers=0.5)`: SGD with learning rate 0.5 for the centers of a
    `CenterLoss(update="gradient")`, Adam for the network. A float `centers` is SGD's
    learning rate and must be finite and >= 0.
    """
    default = keras.optimizers.get(default)
    if not isinstance(centers, keras.optimizers.Optimizer):
        check_range(centers, "centers", 0.0)
        centers = keras.optimizers.SGD(learning_rate=float(centers))
    return keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(RowSparse(default), {pattern: RowSparse(centers)})
    )


@register
class WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The learning rate of step `s` (0-based, counting from `offset`) of `total_steps`:

    - warm-up, `s < warmup_steps`: `learning_rate * (s + 1) / warmup_steps`;
    - then `"constant"`: `learning_rate`;
      `"cosine"`: `learning_rate * (1 + cos(pi * p)) / 2`, `p = (s - warmup_steps) /
      (total_steps - warmup_steps)`, from the peak after the warm-up towards 0 at the end;
      `"step"`: `learning_rate * factor ** k`, `k` the number of `boundaries` (fractions of
      `total_steps`) that `s / total_steps` has reached (x0.1 from 50% and from 75% of the
      run by default).

    `offset` is added to the optimizer's step count: an optimizer made for the second part
    of a run (after a frozen trunk) continues the schedule where the first left it.
    """

    DECAYS = ("constant", "cosine", "step")

    def __init__(self, learning_rate: float, total_steps: int, decay: str = "constant",
                 warmup_steps: int = 0, boundaries: tuple[float, ...] = (0.5, 0.75),
                 factor: float = 0.1, offset: int = 0, name: str | None = None):  # fmt: skip
        check_range(learning_rate, "learning_rate", 0.0, low_open=True)
        check_positive_int(total_steps, "total_steps")
        check_choice(decay, "decay", self.DECAYS)
        for value, key in ((warmup_steps, "warmup_steps"), (offset, "offset")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"`{key}` must be an integer >= 0; got {value!r}.")
        if warmup_steps >= total_steps:
            raise ValueError(f"`warmup_steps` must be < `total_steps` ({total_steps}); got {warmup_steps}.")
        boundaries = tuple(float(b) for b in boundaries)
        if boundaries:
            check_range(boundaries, "boundaries", 0.0, 1.0, low_open=True)
        if list(boundaries) != sorted(set(boundaries)):
            raise ValueError(f"`boundaries` must be increasing; got {boundaries!r}.")
        check_range(factor, "factor", 0.0, low_open=True)
        self.learning_rate, self.total_steps, self.decay = float(learning_rate), total_steps, decay
        self.warmup_steps, self.boundaries, self.factor = warmup_steps, boundaries, float(factor)
        self.offset, self.name = offset, name

    def __call__(self, step):
        s = ops.cast(step, "float32") + float(self.offset)
        peak = self.learning_rate
        if self.decay == "cosine":
            p = ops.clip((s - self.warmup_steps) / (self.total_steps - self.warmup_steps), 0.0, 1.0)
            after = peak * 0.5 * (1.0 + ops.cos(math.pi * p))
        elif self.decay == "step":
            reached = sum(ops.cast(s >= b * self.total_steps, "float32") for b in self.boundaries)
            after = peak * ops.power(self.factor, reached)
        else:
            after = ops.full_like(s, peak)
        if not self.warmup_steps:
            return after
        return ops.where(s < self.warmup_steps, peak * (s + 1.0) / self.warmup_steps, after)

    def get_config(self) -> dict[str, Any]:
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "decay": self.decay,
            "warmup_steps": self.warmup_steps,
            "boundaries": list(self.boundaries),
            "factor": self.factor,
            "offset": self.offset,
            "name": self.name,
        }
