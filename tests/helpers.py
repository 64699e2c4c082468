"""Functions shared by the tests (on the python path: pyproject.toml's `pythonpath`); the fixtures
are in conftest.py."""

from __future__ import annotations

import keras
import numpy as np
import pytest

BACKEND = keras.backend.backend()


def to_np(x) -> np.ndarray:
    return np.asarray(keras.ops.convert_to_numpy(x))


def grad(fn, *args):
    """Gradient of the scalar `fn(*args)` with respect to each NumPy array in `args`."""
    if BACKEND == "jax":
        import jax

        return [np.asarray(g) for g in jax.grad(fn, argnums=tuple(range(len(args))))(*args)]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            value = fn(*tensors)
        return [g.numpy() for g in tape.gradient(value, tensors)]
    import torch

    tensors = [torch.tensor(a, requires_grad=True) for a in args]
    fn(*tensors).backward()
    return [t.grad.numpy() for t in tensors]


def value_and_grad(fn, x: np.ndarray) -> tuple[float, np.ndarray]:
    """The scalar `fn(x)` and its gradient; on JAX one compiled function (one compilation beats
    eager JAX's one per operation and shape)."""
    if BACKEND == "jax":
        import jax

        value, g = jax.jit(jax.value_and_grad(fn))(x)
        return float(value), np.asarray(g)
    return float(to_np(fn(x))), grad(fn, x)[0]


class HostCopy(BaseException):  # not an Exception: no `except Exception` can hide it
    pass


def forbid_host_copies(monkeypatch) -> None:
    """Make every host copy of a torch tensor raise `HostCopy` (until `monkeypatch.undo()`)."""
    import torch

    def host_copy(*args, **kwargs):
        raise HostCopy("a torch tensor was copied to the host")

    for name in ("numpy", "item", "tolist", "__array__", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, host_copy)


def knn_accuracy(encoder, digits) -> float:
    """1-NN accuracy of `encoder`'s embeddings of the digits test rows against the train rows
    (called directly: no predict() to compile)."""
    x_train, y_train, x_test, y_test = digits
    train, test = to_np(encoder(x_train)), to_np(encoder(x_test))
    d = (test**2).sum(1)[:, None] + (train**2).sum(1)[None] - 2 * test @ train.T
    return float(np.mean(y_train[np.argmin(d, axis=1)] == y_test))


def fails(capsys, *argv: str) -> str:
    """The one line on stderr of a command that exits with status 2, no traceback (earlier
    output dropped)."""
    from clusterloss.app.cli.main import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert exit_info.value.code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0].strip()


class ExplodeWeights(keras.callbacks.Callback):
    """Makes the weights NaN after the second batch, as a diverging optimizer would."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == 1:
            for weight in self.model.trainable_weights:
                weight.assign(np.full(weight.shape, np.nan, weight.dtype))
