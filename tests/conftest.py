"""Shared test fixtures. The suite runs once per backend: `KERAS_BACKEND=jax|tensorflow|torch`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
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


class HostCopy(BaseException):  # not an Exception: no `except Exception` can hide it
    pass


def forbid_host_copies(monkeypatch) -> None:
    """Make every host copy of a torch tensor raise `HostCopy` (until `monkeypatch.undo()`)."""
    import torch

    def host_copy(*args, **kwargs):
        raise HostCopy("a torch tensor was copied to the host")

    for name in ("numpy", "item", "tolist", "__array__", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, host_copy)


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits (bundled, no download), shuffled: 1000 train, 500 test rows."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype("float32"), y[order].astype("int32")
    return x[:1000], y[:1000], x[1000:1500], y[1000:1500]


def knn_accuracy(encoder, digits) -> float:
    """1-NN accuracy of `encoder`'s embeddings of the digits test rows against the train rows
    (called directly: no predict() to compile)."""
    x_train, y_train, x_test, y_test = digits
    train, test = to_np(encoder(x_train)), to_np(encoder(x_test))
    d = (test**2).sum(1)[:, None] + (train**2).sum(1)[None] - 2 * test @ train.T
    return float(np.mean(y_train[np.argmin(d, axis=1)] == y_test))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data not found at {SHARED_DATA} (needs ../shared/data beside the repo)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def data_env(shared_data, tmp_path_factory) -> dict[str, str]:
    """Environment for a subprocess whose loaders read copies of ../shared/data, offline."""
    home = tmp_path_factory.mktemp("data")
    shutil.copytree(shared_data / "keras", home / "keras")
    shutil.copytree(shared_data / "scikit_learn_data", home / "scikit_learn_data")
    return {
        **os.environ,
        "KERAS_HOME": str(home / "keras"),
        "SCIKIT_LEARN_DATA": str(home / "scikit_learn_data"),
    }
