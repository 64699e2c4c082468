"""The few operations that Keras 3.15 does not expose portably, one implementation per backend.

Besides `_backend.py` (which only names the backends), this is the one module that imports
TensorFlow, JAX or PyTorch, and only inside the function that needs it:

- `native_row_searchsorted`: row-wise `searchsorted` with PyTorch's batched kernel (the
  semi-hard triplet windows); `None` elsewhere.
- `is_jax_tracer`: whether a value is traced by JAX (the seeded miners' generators).
- `uniform`: seeded uniform draws from a `keras.random.SeedGenerator`. Keras 3.15's torch
  `keras.random` turns the generator's seed into a Python int at every draw (a device sync
  per draw on a GPU); on torch this hashes the generator's state on the device instead.
- `materialize`: rows read from a variable that is then written in place, kept as their own
  buffer (JAX: `lax.optimization_barrier`), so that XLA does not fuse the read into a later
  computation and copy the whole variable to keep its old value.
- `nonzero_rows`: the rows of a gradient with a non-zero (or NaN) entry. PyTorch: `any` of
  the float tensor (no `(rows, dim)` temporary); XLA: `sum(|g|) != 0`, a fused reduction,
  where XLA's `any` of a float array took 0.39 s for 1,000,000 x 512 (0.14 s now).
- `inverse_row_norms`: `1 / ||x_i||` per row (0 for a zero row) in the input's dtype. Keras
  3.15's `ops.norm` computes float64 in float32 on torch and on JAX with x64 enabled (so
  elsewhere it is `sqrt(sum(x^2))`); on torch an einsum `cd,cd->c` is a batched matrix
  product (9x slower), and the guard is one native `where`.
- `subtract_scaled_rows`: `a - s[:, None] * rows` for a temporary `a`, in place on PyTorch
  (eager PyTorch would allocate and write two more `(num_classes, dim)` arrays; XLA fuses it).
- `target_entries`, `with_target_entries`: read and replace one entry per row (each
  sample's own class in a `(batch, classes)` logit matrix). Eager PyTorch is fastest with a
  gather and a scatter (each a copy at most); under XLA (JAX, TensorFlow) a scatter is a
  loop of its own that breaks fusion, while a mask `labels[:, None] == arange(classes)` and
  `where` fuse into the neighbouring elementwise passes.

- `l2_normalize`, `matmul_t`, `cross_entropy_rows`, `label_ranks`, `nan_unless_finite`:
  the primitives of InstanceLoss, ProxyNCALoss, the distances, the cosine heads and the
  losses' NaN guard (the overflow-safe `x / ||x||`, `x @ y.T`, `-log softmax(z)[y]` per row,
  the index `torch.unique(labels, return_inverse=True)` gives, and `values` or NaN).
  Eager PyTorch pays ~5-15 us of Keras dispatch (and an operand conversion) per `keras.ops`
  call, which at a small or medium batch is most of these losses' time: here each is a few
  native torch calls (`F.cross_entropy(reduction="none")`, a fused log-softmax + NLL forward
  and backward; the normalisation as one autograd node; the ranks by `torch.unique` on the
  CPU, by a sort and a scatter on a GPU, where `unique` waits for the device). The portable `keras.ops`
  versions (`*_ops`, what JAX and TensorFlow compile) give the same values and gradients.

- `scatter_rows`: write some rows of a variable in place (`variable[rows] = values`). Keras's
  `ops.scatter_update` returns a new full-size tensor on TensorFlow and PyTorch, so a
  `variable.assign(ops.scatter_update(...))` of a `(1_000_000, 512)` table copies 2 GB to
  change a few rows. TensorFlow's `tf.Variable.scatter_nd_update` and PyTorch's `index_copy_`
  write the rows in place. On JAX, `assign(scatter_update)` inside the compiled train step
  is already in place: XLA updates the donated state buffer.
- `label_id_limit`: the largest class id that survives conversion to a backend tensor (JAX
  without `jax_enable_x64` turns int64 into int32, so 2**32 + 1 silently becomes 1).
- `check_tf_dataset_labels`: the same label checks as for NumPy batches, as assertions in a
  `tf.data` pipeline, on the host, before the batches reach any backend.
- `inference_call`: a model's inference call compiled once for serving (`jax.jit` over
  copies of its variables, `tf.function` for any batch size, PyTorch under
  `inference_mode`): about 20x cheaper per call than `model.predict`.
- `saved_model_runner`, `tflite_interpreter`: TensorFlow's SavedModel loader and TF Lite
  interpreter, to check an export in the runtime a deployment uses.
- `take_rows`: `variable[rows]`. On TensorFlow, `ops.take` reads the whole variable first;
  a later in-place write of that variable must then copy it (copy-on-write), so a
  `(1_000_000, 512)` table is copied on every step. `tf.gather` on the variable itself reads
  only the rows. On PyTorch the rows of a variable are read with `embedding(sparse=True)`,
  whose gradient is sparse (autodiff of `take` fills a dense `(num_classes, dim)` array).
- `route_gradient`: JAX's gradient of rows gathered from a variable is a dense array of the
  whole variable's shape (a scatter into zeros: for 1,000,000 x 512, 0.9 s a step on one CPU
  thread with the scan that finds its non-zero rows). It sends the rows' gradient to a
  stand-in variable of the rows' shape instead, and the rows' index to another, for
  `RowSparse` to apply (TensorFlow and PyTorch give the gradient as row slices, below).
- `row_slices`: TensorFlow gives the gradient of a gather (a Partial FC head's sampled rows)
  as `tf.IndexedSlices`, PyTorch (above) as a sparse COO tensor: the rows and their values;
  converting it to a dense tensor would allocate the whole `(num_classes, dim)` matrix.
- `local_devices`, `process_position`, `mirrored_strategy`: the devices a run can train on
  (JAX: its default platform's, of every process; TensorFlow: the logical GPUs, else the
  logical CPUs; PyTorch: the CUDA devices, else the CPU), this process's index and the number
  of processes (JAX's distributed runtime), and TensorFlow's `MirroredStrategy` over some devices.
- `replicas_in_sync`, `any_replica`: under a TensorFlow distribution strategy each replica
  computes the loss of its part of the batch and the gradients are summed, so a loss term
  must be divided by the number of replicas (Keras does so for compiled losses), and a row
  with a zero gradient in one replica may have a non-zero one in another.
"""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import keras
import numpy as np
from keras import ops

LABEL_ERROR = "clusterloss label check"  # marks the assertion messages of `check_tf_dataset_labels`


def _in_stateless_scope() -> bool:
    from keras.src.backend.common.stateless_scope import in_stateless_scope

    return in_stateless_scope()


_JAX_ROWS = dict(indices_are_sorted=True, unique_indices=True, mode="promise_in_bounds")


def scatter_rows(variable: keras.Variable, rows, values, sorted_unique: bool = False) -> None:
    """`variable[rows] = values` along axis 0, in place where the backend allows it.

    Duplicate `rows` must carry identical `values` (the write order is unspecified);
    `sorted_unique=True` promises sorted rows without duplicates (XLA's scatter is then about
    twice as fast on CPU). Inside a `StatelessScope` (JAX train steps, `stateless_call`) and
    under a TensorFlow distribution strategy (where a replica may only `assign` a mirrored
    variable, which then aggregates as the variable says), this is an `assign` of the
    updated whole, which XLA turns into an in-place scatter into the donated state.
    """
    backend = keras.backend.backend()
    values = ops.cast(values, variable.dtype)
    if backend == "tensorflow" and not _in_stateless_scope():
        import tensorflow as tf

        if not tf.distribute.has_strategy():
            variable.value.scatter_nd_update(ops.expand_dims(rows, 1), values)
            return
    if backend == "torch" and not _in_stateless_scope():
        import torch

        with torch.no_grad():
            variable.value.index_copy_(0, rows.to(torch.int64), values)
        return
    if backend == "jax":
        flags = _JAX_ROWS if sorted_unique else {}
        variable.assign(variable.value.at[rows].set(values, **flags))
        return
    variable.assign(ops.scatter_update(variable.value, ops.expand_dims(rows, 1), values))


def take_rows(x, rows, sorted_unique: bool = False, sparse_gradient: bool = False):
    """`x[rows]` along axis 0. Reads only those rows of a TensorFlow variable (`ops.take`
    would read it all, and a later in-place write would then copy it); on JAX,
    `sorted_unique=True` promises sorted rows without duplicates (a faster gather and a
    faster scatter-add in its gradient). `sparse_gradient=True` (only where the optimizer
    takes one: `RowSparse`): the gradient of a PyTorch variable's rows is sparse."""
    backend = keras.backend.backend()
    if backend == "tensorflow" and isinstance(x, keras.Variable) and not _in_stateless_scope():
        import tensorflow as tf

        value = x.value
        if isinstance(value, tf.Variable):
            return tf.gather(value, rows)
    if backend == "jax" and sorted_unique:
        return ops.convert_to_tensor(x).at[rows].get(**_JAX_ROWS)
    if backend == "torch" and sparse_gradient and isinstance(x, keras.Variable) and len(x.shape) == 2:
        import torch

        return torch.nn.functional.embedding(ops.convert_to_tensor(rows), x.value, sparse=True)
    return ops.take(x, rows, axis=0)


def route_gradient(rows, standin, marker, code):
    """JAX: `rows` in the forward pass; in the backward pass, the gradient of `rows` goes to
    `standin` (a variable of `rows`' shape) and `code` (whatever the backward pass receives)
    becomes the gradient of `marker` (a variable of `code`'s shape). Nothing flows back to
    the variable that `rows` were read from."""
    return _jax_route()(rows, ops.convert_to_tensor(standin), ops.convert_to_tensor(marker), code)


@functools.cache
def _jax_route():
    import jax

    @jax.custom_vjp
    def route(rows, standin, marker, code):
        return rows

    def forward(rows, standin, marker, code):
        return rows, code

    def backward(code, gradient):
        return None, gradient, code, None

    route.defvjp(forward, backward)
    return route


def local_devices() -> list[str]:
    """The devices a run can train on: JAX, every device of its default platform (of every
    process after `keras.distribution.initialize`; several CPU devices only when forced with
    `XLA_FLAGS=--xla_force_host_platform_device_count=N`); TensorFlow, the logical GPUs, else
    the logical CPUs (several only when configured with
    `tf.config.set_logical_device_configuration`); PyTorch, the CUDA devices, else the CPU."""
    backend = keras.backend.backend()
    if backend == "jax":
        return keras.distribution.list_devices()
    if backend == "tensorflow":
        import tensorflow as tf

        names = [d.name for d in tf.config.list_logical_devices("GPU")]
        return names or [d.name for d in tf.config.list_logical_devices("CPU")]
    import torch

    return [f"cuda:{i}" for i in range(torch.cuda.device_count())] or ["cpu"]


def process_position() -> tuple[int, int]:
    """`(index, count)` of this process among those of JAX's distributed runtime (`(0, 1)`
    alone)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.process_index(), jax.process_count()
    return 0, 1


def mirrored_strategy(devices: list[str]):
    """TensorFlow's `tf.distribute.MirroredStrategy` over `devices` (names from
    `local_devices`)."""
    import tensorflow as tf

    return tf.distribute.MirroredStrategy(devices)


def replicas_in_sync() -> int:
    """Replicas whose gradients are summed: `num_replicas_in_sync` of the TensorFlow
    distribution strategy; 1 otherwise (JAX's `DataParallel` computes the loss of the global
    batch in one program)."""
    if keras.backend.backend() == "tensorflow" and "tensorflow" in sys.modules:
        import tensorflow as tf

        return tf.distribute.get_strategy().num_replicas_in_sync
    return 1


def any_replica(mask):
    """`mask` (bool) or-ed over the replicas of a TensorFlow distribution strategy (inside a
    replica of the train step, before the optimizer sums the gradients); `mask` elsewhere."""
    if keras.backend.backend() == "tensorflow" and "tensorflow" in sys.modules:
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if tf.distribute.has_strategy() and context is not None and context.num_replicas_in_sync > 1:
            return context.all_reduce("sum", tf.cast(mask, "float32")) > 0
    return mask


def row_slices(gradient):
    """`(indices, values)` of a row-sparse gradient (`tf.IndexedSlices`, a sparse COO torch
    gradient; not coalesced, which on a GPU would wait for the device: duplicates add up in
    the caller), else `None`."""
    backend = keras.backend.backend()
    if backend == "tensorflow" and "tensorflow" in sys.modules:
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):
            return gradient.indices, gradient.values
    if backend == "torch" and getattr(gradient, "is_sparse", False):
        return gradient._indices()[0], gradient._values()
    return None


def label_id_limit() -> int:
    """The largest integer label the current backend keeps exactly in a tensor."""
    if keras.backend.backend() == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            return 2**31 - 1
    return 2**63 - 1


def is_tf_dataset(data: Any) -> bool:
    """A `tf.data.Dataset` (without importing TensorFlow when it is not loaded)."""
    if "tensorflow" not in sys.modules:
        return False
    import tensorflow as tf

    return isinstance(data, tf.data.Dataset)


def check_tf_dataset_labels(dataset, num_classes: int | None, limit: int, name: str = "y"):
    """`dataset` with each batch's labels (second element) checked on the host.

    A bad batch stops the iteration with a `tf.errors.InvalidArgumentError` whose message
    holds `LABEL_ERROR` and one of the messages of `label_error_messages` (`label_error`
    extracts it).
    """
    import tensorflow as tf

    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) < 2 or not isinstance(spec[1], tf.TensorSpec):
        return dataset
    messages = label_error_messages(num_classes, limit, name)

    def check(*element):
        y = tf.reshape(element[1], [-1])
        checks = [tf.debugging.assert_greater(tf.size(y), 0, message=messages["empty"])]
        if y.dtype.is_floating:
            checks.append(tf.debugging.assert_equal(tf.floor(y), y, message=messages["integral"]))
        elif not y.dtype.is_integer:
            raise ValueError(f"`{name}` must be integer class ids; got dtype {y.dtype.name}.")
        checks.append(tf.debugging.assert_non_negative(y, message=messages["negative"]))
        high = limit if num_classes is None else num_classes - 1
        if y.dtype.is_floating or y.dtype.max > high:
            checks.append(tf.debugging.assert_less_equal(y, tf.cast(high, y.dtype), message=messages["high"]))
        with tf.control_dependencies(checks):
            return (element[0], tf.identity(element[1])) + tuple(element[2:])

    return dataset.map(check)


def label_error_messages(num_classes: int | None, limit: int, name: str = "y") -> dict[str, str]:
    """The messages of the `tf.data` label assertions, each tagged with `LABEL_ERROR`."""
    high = (
        f"`{name}` must be < num_classes={num_classes}"
        if num_classes is not None
        else f"`{name}` must be <= {limit}, the largest class id of the {keras.backend.backend()} backend"
    )
    return {
        key: f"{LABEL_ERROR}: {text}"
        for key, text in {
            "empty": f"`{name}` is empty: a batch has no samples",
            "integral": f"`{name}` must be integer class ids; got float values that are not integers",
            "negative": f"`{name}` must be >= 0",
            "high": high,
        }.items()
    }


def label_error(error: Exception) -> str | None:
    """The message of a `check_tf_dataset_labels` assertion that `error` carries, if any."""
    text = str(error)
    start = text.find(LABEL_ERROR + ": ")
    if start < 0:
        return None
    message = text[start + len(LABEL_ERROR) + 2 :]
    for end in ("]", "\n"):
        message = message.split(end)[0]
    return message.strip()


def native_row_searchsorted(sorted_rows, queries, right: bool):
    """Row-wise `searchsorted` with PyTorch's native kernel (`torch.searchsorted` takes batched
    rows), or `None` on the other backends: `keras.ops.searchsorted` is 1-D only, and on JAX and
    TensorFlow the compiled `keras.ops` bisection (`clusterloss.tuples.count_sorted`)
    is fast already, while eager PyTorch would run each of its rounds as separate kernels."""
    if keras.backend.backend() != "torch":
        return None
    import torch

    return torch.searchsorted(sorted_rows.contiguous(), queries.contiguous(), right=right)


def is_jax_tracer(x) -> bool:
    """Whether `x` is a JAX tracer (inside `jax.jit`, `jax.grad` or a compiled train step), where
    a `keras.random.SeedGenerator` outside the model's state is read as a constant and must
    not be assigned. Always False on the other backends."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    return isinstance(x, jax.core.Tracer)


def materialize(x):
    """`x`, computed before anything that follows it (JAX: an optimization barrier; other
    backends: `x` itself). Use it on rows read from a variable that the same step writes in
    place: XLA may otherwise recompute the read inside a later fusion, after the write, and
    then keeps a copy of the whole variable (measured: two (1,000,000, 512) copies a step)."""
    if keras.backend.backend() != "jax":
        return x
    import jax

    return jax.lax.optimization_barrier(x)


def nonzero_rows(values):
    """`(rows,)` bool: the rows of `values` with at least one non-zero or NaN entry (a sum
    of absolute values is zero only for a zero row, NaN for a NaN, inf when it overflows)."""
    if len(values.shape) < 2:
        return ops.cast(values, "bool")
    axes = tuple(range(1, len(values.shape)))
    if keras.backend.backend() == "torch":
        return ops.any(values, axis=axes)
    return ops.sum(ops.abs(values), axis=axes) != 0


def inverse_row_norms(x):
    """`1 / ||x_i||` for each row of a `(rows, dim)` matrix, 0 for a zero row (NaN stays
    NaN), in `x`'s dtype; not differentiable at a zero row (for hand-written gradients)."""
    if keras.backend.backend() == "torch":
        import torch

        norms = torch.linalg.vector_norm(x, dim=1)
        return torch.where(norms == 0, 0.0, norms.reciprocal())
    # Not `ops.norm`: Keras 3.15's JAX `norm` computes float64 in float32 (with x64 enabled).
    norms = ops.sqrt(ops.sum(ops.square(x), axis=1))
    zero = norms == 0
    return ops.where(zero, 0.0, 1.0 / ops.where(zero, 1.0, norms))


def subtract_scaled_rows(a, scale, rows):
    """`a - scale[:, None] * rows`. On PyTorch `a` is overwritten: pass only a temporary
    that nothing else holds (a cosine head's kernel gradient; measured at 100,000 x 512 on
    one thread: 17 ms in place against 200 ms for the two new arrays)."""
    if keras.backend.backend() == "torch":
        return a.addcmul_(scale[:, None], rows, value=-1)
    return a - ops.expand_dims(scale, 1) * rows


def _is_target(x, labels):
    return ops.expand_dims(labels, 1) == ops.arange(ops.shape(x)[-1], dtype=labels.dtype)


def target_entries(x, labels):
    """`x[i, labels[i]]` for a `(batch, classes)` matrix, shape `(batch,)`."""
    if keras.backend.backend() == "torch":
        return ops.take_along_axis(x, ops.expand_dims(labels, 1), axis=-1)[:, 0]
    return ops.sum(ops.where(_is_target(x, labels), x, ops.zeros_like(x)), axis=1)


def with_target_entries(x, labels, values):
    """`x` with `x[i, labels[i]]` replaced by `values[i]`."""
    if keras.backend.backend() == "torch":
        rows = ops.arange(ops.shape(labels)[0], dtype=labels.dtype)
        return ops.scatter_update(x, ops.stack([rows, labels], axis=1), values)
    return ops.where(_is_target(x, labels), ops.expand_dims(values, 1), x)


_MASK32 = 0xFFFFFFFF


def _mix32(x):
    """murmur3's 32-bit finalizer on int64 tensors holding 32-bit values (torch)."""
    x = x & _MASK32
    x = x ^ (x >> 16)
    x = (x * 0x85EBCA6B) & _MASK32
    x = x ^ (x >> 13)
    x = (x * 0xC2B2AE35) & _MASK32
    return x ^ (x >> 16)


def uniform(shape: tuple[int, ...], seed, dtype: str = "float32"):
    """Uniform `[0, 1)` values of `shape` from `seed` (a `keras.random.SeedGenerator`, which
    advances by one draw). JAX and TensorFlow: `keras.random.uniform`. PyTorch: a counter
    hash of the generator's state, computed on the device (Keras's torch draw reads the seed
    on the host): `u_i = (fmix32(i + fmix32(s0 * 0x9E3779B1 + s1)) >> 8) / 2**24` for
    `i = 0 .. size - 1`, `(s0, s1)` the generator's state before the draw."""
    if keras.backend.backend() != "torch" or not isinstance(seed, keras.random.SeedGenerator):
        return keras.random.uniform(shape, dtype=dtype, seed=seed)
    import torch

    state = seed.next().to(torch.int64)
    key = _mix32(state[0] * 0x9E3779B1 + state[1])
    counter = torch.arange(math.prod(shape), dtype=torch.int64, device=state.device)
    bits = _mix32(counter + key) >> 8
    return ops.cast(ops.reshape(bits.to(torch.float32) * 2.0**-24, shape), dtype)


def inference_call(model: keras.Model, live: bool = False):
    """`x (NumPy) -> NumPy outputs` of `model` in inference mode, compiled for the backend
    (JAX compiles once per input shape). The weights are those of the moment of the call
    with `live` (a model still training), else a copy taken now (a server's fixed model)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        call = jax.jit(lambda t, f, x: model.stateless_call(t, f, x, training=False)[0])
        if live:
            return lambda x: np.asarray(
                call([v.value for v in model.trainable_variables], [v.value for v in model.non_trainable_variables], x)
            )
        # copies: Keras's own jitted calls (predict, fit) donate the variables' buffers
        trainable = [jnp.array(v.value) for v in model.trainable_variables]
        fixed = [jnp.array(v.value) for v in model.non_trainable_variables]
        return lambda x: np.asarray(call(trainable, fixed, x))
    if backend == "tensorflow":
        import tensorflow as tf

        dtype = getattr(model.inputs[0], "dtype", "float32") if getattr(model, "inputs", None) else "float32"
        spec = tf.TensorSpec((None, *model.input_shape[1:]), dtype)
        graph = tf.function(lambda x: model(x, training=False), input_signature=[spec])
        return lambda x: graph(x).numpy()
    import torch

    def eager(x):
        with torch.inference_mode():
            return ops.convert_to_numpy(model(ops.convert_to_tensor(x), training=False))

    return eager


def saved_model_runner(path: str):
    """`(runtime name, x -> outputs)` of a SavedModel's `serve` endpoint, in TensorFlow."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return f"tensorflow {tf.__version__}", lambda x: np.asarray(loaded.serve(x))


def tflite_interpreter():
    """TensorFlow's TF Lite `Interpreter` class."""
    import tensorflow as tf

    return tf.lite.Interpreter


def _torch_float(x):
    """`x` as a torch float tensor: float16/bfloat16 and integers upcast as `upcast` does."""
    import torch

    if not isinstance(x, torch.Tensor):
        x = ops.convert_to_tensor(x)
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x if x.is_floating_point() else ops.cast(x, keras.backend.floatx())


def l2_normalize(x, axis: int = -1, return_norm: bool = False):
    """`x / ||x||` along `axis` (and `||x||` with `return_norm=True`), finite for finite `x`; see
    `clusterloss.distances.l2_normalize`. PyTorch, rows of a matrix: the same computation
    in native calls with its gradient written out (one autograd node instead of eight)."""
    if keras.backend.backend() != "torch":
        return l2_normalize_ops(x, axis, return_norm)
    x = _torch_float(x)
    if axis not in (-1, x.ndim - 1) or x.ndim != 2:
        return l2_normalize_ops(x, axis, return_norm)
    unit, norm = _torch_unit_rows().apply(x)
    return (unit, norm) if return_norm else unit


@functools.cache
def _torch_unit_rows():
    import torch

    class UnitRows(torch.autograd.Function):
        """`(x / ||x||, ||x||)` per row of a matrix: the row over its largest entry (its norm
        `L` is then >= 1, so `clamp_min(1)` only touches zero rows), and the gradient written
        out in one node: `(g - u (u . g)) / (peak L) + g_norm u` (`g` for a zero row)."""

        @staticmethod
        def forward(ctx, x):
            ctx.set_materialize_grads(False)  # an unused norm sends None, not zeros
            peak = x.abs().amax(dim=1, keepdim=True)
            peak = peak.masked_fill_(peak == 0, 1.0)
            scaled = x / peak
            length = torch.linalg.vector_norm(scaled, dim=1, keepdim=True)
            denominator = peak * length.clamp_min(1.0)
            unit = scaled.div_(length.clamp_min(1.0))
            ctx.save_for_backward(unit, denominator)
            return unit, (peak * length).squeeze(1)

        @staticmethod
        def backward(ctx, g, g_norm):
            unit, denominator = ctx.saved_tensors
            grad = None
            if g is not None:
                radial = (unit * g).sum(dim=1, keepdim=True)
                grad = torch.addcmul(g, unit, radial, value=-1).div_(denominator)
            if g_norm is not None:
                grad = unit * g_norm[:, None] if grad is None else grad.addcmul_(unit, g_norm[:, None])
            return grad

    return UnitRows


def l2_normalize_ops(x, axis: int = -1, return_norm: bool = False):
    """`l2_normalize` in `keras.ops`: `x` over its largest absolute entry (held constant for
    the gradient, which is exact because `x / ||x||` does not depend on that factor), so the
    sum of squares cannot overflow even for bfloat16 values near 1e38 upcast to float32. A
    row with a NaN or inf gives a NaN row and a NaN norm."""
    from clusterloss._validation import upcast  # it imports this module

    x = upcast(x)  # below, Python operators where they do: on torch they skip Keras's dispatch
    peak = ops.stop_gradient(ops.max(abs(x), axis=axis, keepdims=True))
    peak = ops.where(peak == 0, 1.0, peak)  # comparisons with 0, not > 0: NaN stays NaN
    scaled = x / peak
    squares = ops.sum(scaled * scaled, axis=axis, keepdims=True)
    zero = squares == 0
    length = ops.sqrt(ops.where(zero, 1.0, squares))
    if not return_norm:
        return scaled / length
    norm = ops.where(zero, ops.zeros_like(length), peak * length)
    return scaled / length, ops.squeeze(norm, axis=axis)


def cross_entropy_rows(logits, labels):
    """`-log softmax(logits[i])[labels[i]]` for each row of a `(batch, classes)` matrix, shape
    `(batch,)`; `labels` integer, in `[0, classes)` (checked by the caller). PyTorch:
    `F.cross_entropy(reduction="none")`, one fused op forward and backward."""
    if keras.backend.backend() != "torch":
        return cross_entropy_rows_ops(logits, labels)
    import torch

    return torch.nn.functional.cross_entropy(logits, labels.long(), reduction="none")


def cross_entropy_rows_ops(logits, labels):
    """`cross_entropy_rows` in `keras.ops`."""
    return -target_entries(ops.log_softmax(logits, axis=1), labels)


def label_ranks(labels):
    """For each label, the number of distinct labels in the batch that are smaller (the index
    `torch.unique(labels, return_inverse=True)` gives), int32 `(batch,)`: one sort, O(B log B).
    PyTorch: `torch.unique` on the CPU (30 us less at batch 512); on a GPU, where `unique`
    waits for the device, `label_ranks_by_sort`."""
    if keras.backend.backend() != "torch":
        return label_ranks_ops(labels)
    import torch

    if labels.device.type == "cpu":
        return torch.unique(labels, sorted=True, return_inverse=True)[1].to(torch.int32)
    return label_ranks_by_sort(labels)


def label_ranks_by_sort(labels):
    """`label_ranks` of a torch tensor without a host sync: the rank of each sorted label,
    put back in batch order by a scatter."""
    import torch

    ordered, order = torch.sort(labels)
    new = torch.zeros_like(ordered, dtype=torch.int32)
    new[1:] = ordered[1:] != ordered[:-1]
    return torch.empty_like(new).scatter_(0, order, new.cumsum(0, dtype=torch.int32))


def label_ranks_ops(labels):
    """`label_ranks` in `keras.ops` (the inverse permutation by a second argsort: XLA's
    scatter breaks fusion)."""
    order = ops.argsort(labels)
    ordered = ops.take(labels, order)
    new = ops.cast(ordered[1:] != ordered[:-1], "int32")
    ranks = ops.cumsum(ops.concatenate([ops.zeros((1,), "int32"), new]))
    return ops.take(ranks, ops.argsort(order))


def matmul_t(x, y):
    """`x @ y.T` in the inputs' dtype. PyTorch, for two float32 or two float64 tensors: one
    `torch.matmul` (Keras's converts both operands and computes float64 in float32)."""
    if keras.backend.backend() == "torch":
        import torch

        if isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.dtype == y.dtype:
            if x.dtype in (torch.float32, torch.float64):
                return torch.matmul(x, y.mT)
    return matmul_t_ops(x, y)


def matmul_t_ops(x, y):
    """`matmul_t` in `keras.ops` (float64 by `einsum`: torch's `ops.matmul` computes it in
    float32)."""
    if keras.backend.standardize_dtype(x.dtype) == "float64":
        return ops.einsum("id,jd->ij", x, y)
    return ops.matmul(x, ops.transpose(y))


def nan_unless_finite(values, *tensors):
    """`values` where every entry of every tensor is finite, else NaN everywhere (no host
    sync: a select on the device). PyTorch: native `isfinite`, `all` and `where` (Keras's
    `isfinite` and `all` convert and cast their operands: ~150 us a loss call)."""
    if keras.backend.backend() != "torch" or not tensors:
        return nan_unless_finite_ops(values, *tensors)
    import torch

    if not all(isinstance(t, torch.Tensor) for t in (values, *tensors)):
        return nan_unless_finite_ops(values, *tensors)
    ok = torch.isfinite(tensors[0]).all()
    for t in tensors[1:]:
        ok = ok & torch.isfinite(t).all()
    return torch.where(ok, values, float("nan"))


def nan_unless_finite_ops(values, *tensors):
    """`nan_unless_finite` in `keras.ops`."""
    ok = None
    for t in tensors:
        finite = ops.all(ops.isfinite(t))
        ok = finite if ok is None else ops.logical_and(ok, finite)
    if ok is None:
        return values
    return ops.where(ok, values, float("nan"))
