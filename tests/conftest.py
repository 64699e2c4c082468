"""Shared test fixtures (the shared functions are in helpers.py). The suite runs once per backend:
`KERAS_BACKEND=jax|tensorflow|torch`."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's digits (bundled, no download), shuffled: 1000 train, 500 test rows."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = (x[order] / 16.0).astype("float32"), y[order].astype("int32")
    return x[:1000], y[:1000], x[1000:1500], y[1000:1500]


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
