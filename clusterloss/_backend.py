"""Which Keras backend to use when the user did not say. Operations that need a backend's own
library are in `clusterloss._native`.

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
