"""Which Keras backend to use when the user did not say (the only module that names them), the
one backend-native operation the library uses where `keras.ops` has no fast equivalent, and
the JAX tracer test the seeded miners need.

Keras takes `KERAS_BACKEND`, else `keras.json`, else TensorFlow, and fails to import when
that one is not installed. If nothing chose a backend and TensorFlow is missing, use the
first installed of JAX, TensorFlow, PyTorch, so `pip install clusterloss[jax]` just works.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

BACKENDS = ("jax", "tensorflow", "torch")


def installed_backends() -> list[str]:
    return [b for b in BACKENDS if importlib.util.find_spec(b) is not None]


def configured_backend() -> str | None:
    """The backend named by KERAS_BACKEND or keras.json, if any."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras")
    try:
        return json.loads((home / "keras.json").read_text()).get("backend")
    except (OSError, ValueError):
        return None


def choose_default_backend() -> None:
    """Set KERAS_BACKEND before Keras is imported, only where Keras would fail without it."""
    if "keras" in sys.modules or os.environ.get("KERAS_BACKEND"):
        return
    wanted = configured_backend() or "tensorflow"
    installed = installed_backends()
    if wanted not in installed and installed:
        os.environ["KERAS_BACKEND"] = installed[0]


def native_row_searchsorted(sorted_rows, queries, right: bool):
    """Row-wise `searchsorted` with PyTorch's native kernel (`torch.searchsorted` takes batched
    rows), or `None` on the other backends: `keras.ops.searchsorted` is 1-D only, and on JAX and
    TensorFlow the compiled `keras.ops` bisection (`clusterloss.losses._triplets.count_sorted`)
    is fast already, while eager PyTorch would run each of its rounds as separate kernels."""
    import keras

    if keras.backend.backend() != "torch":
        return None
    import torch

    return torch.searchsorted(sorted_rows.contiguous(), queries.contiguous(), right=right)


def is_jax_tracer(x) -> bool:
    """Whether `x` is a JAX tracer (inside `jax.jit`, `jax.grad` or a compiled train step), where
    a `keras.random.SeedGenerator` outside the model's state is read as a constant and must
    not be assigned. Always False on the other backends."""
    import keras

    if keras.backend.backend() != "jax":
        return False
    import jax

    return isinstance(x, jax.core.Tracer)
