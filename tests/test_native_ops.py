"""The per-backend fast paths of `clusterloss._native` and the heads' hand-written gradients,
against NumPy, on every backend."""

from __future__ import annotations

import keras
import numpy as np
from helpers import grad, to_np
from keras import ops

from clusterloss import _native
from clusterloss.layers.class_head import class_scores
from clusterloss.layers.margin_heads import _cosine_to_rows

BACKEND = keras.backend.backend()


def test_nonzero_rows_flags_non_zero_nan_and_inf_rows_only():
    rows = np.array(
        [
            [0.0, 0.0, 0.0],
            [0.0, np.nan, 0.0],
            [0.0, 0.0, 1e-30],
            [-0.0, 0.0, -0.0],
            [np.inf, -np.inf, 0.0],
            [3e38, 3e38, 3e38],
            [0.0, -2.0, 2.0],
        ],
        "float32",
    )
    np.testing.assert_array_equal(
        to_np(_native.nonzero_rows(ops.convert_to_tensor(rows))),
        [False, True, True, False, True, True, True],
    )
    assert to_np(_native.nonzero_rows(ops.convert_to_tensor(np.array([0.0, -0.0, 2.0], "float32")))).tolist() == [
        False,
        False,
        True,
    ]


def test_target_entries_read_and_replace_one_entry_per_row():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 7)).astype("float32")
    labels = np.array([0, 6, 3, 3, 1], "int32")
    values = rng.normal(size=5).astype("float32")
    rows = np.arange(5)
    np.testing.assert_array_equal(
        to_np(_native.target_entries(ops.convert_to_tensor(x), ops.convert_to_tensor(labels))), x[rows, labels]
    )
    want = x.copy()
    want[rows, labels] = values
    got = _native.with_target_entries(*map(ops.convert_to_tensor, (x, labels, values)))
    np.testing.assert_array_equal(to_np(got), want)
    # gradients: the replaced entries' go to `values`, the others' to `x`
    weights = rng.normal(size=x.shape).astype("float32")
    gx, gv = grad(
        lambda a, v: ops.sum(
            _native.with_target_entries(a, ops.convert_to_tensor(labels), v) * ops.convert_to_tensor(weights)
        ),
        x,
        values,
    )
    want_gx = weights.copy()
    want_gx[rows, labels] = 0
    np.testing.assert_allclose(gx, want_gx)
    np.testing.assert_allclose(gv, weights[rows, labels])
    (gt,) = grad(
        lambda a: ops.sum(_native.target_entries(a, ops.convert_to_tensor(labels)) * ops.convert_to_tensor(values)), x
    )
    want_gt = np.zeros_like(x)
    want_gt[rows, labels] = values
    np.testing.assert_allclose(gt, want_gt)


def test_row_norms_keep_the_dtype():
    w = np.random.default_rng(1).normal(size=(6, 5))
    dtype = "float32" if BACKEND == "jax" else "float64"  # JAX: float64 needs jax_enable_x64
    got = _native.row_norms(ops.convert_to_tensor(w.astype(dtype)))
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    np.testing.assert_allclose(to_np(got), np.linalg.norm(w, axis=1), rtol=1e-6 if dtype == "float32" else 1e-14)


def test_subtract_scaled_rows():
    rng = np.random.default_rng(2)
    a, rows = rng.normal(size=(2, 4, 3)).astype("float32")
    scale = rng.normal(size=4).astype("float32")
    got = _native.subtract_scaled_rows(
        ops.convert_to_tensor(a.copy()), ops.convert_to_tensor(scale), ops.convert_to_tensor(rows)
    )
    np.testing.assert_allclose(to_np(got), a - scale[:, None] * rows, rtol=1e-6)


def test_class_scores_and_cosine_gradients_match_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(4, 5)).astype("float32")
    w = rng.normal(size=(6, 5)).astype("float32")
    w[2] = 0.0  # a zero row: zero cosines, zero gradient
    g = rng.normal(size=(4, 6)).astype("float32")
    np.testing.assert_allclose(
        to_np(class_scores(ops.convert_to_tensor(x), ops.convert_to_tensor(w))), x @ w.T, rtol=1e-5
    )
    gx, gw = grad(lambda a, b: ops.sum(class_scores(a, b) * ops.convert_to_tensor(g)), x, w)
    np.testing.assert_allclose(gx, g @ w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw, g.T @ x, rtol=1e-5, atol=1e-6)

    norms = np.linalg.norm(w, axis=1)
    inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    cos = (x @ w.T) * inverse
    np.testing.assert_allclose(
        to_np(_cosine_to_rows(ops.convert_to_tensor(x), ops.convert_to_tensor(w))), cos, rtol=1e-5, atol=1e-6
    )
    gx, gw = grad(lambda a, b: ops.sum(_cosine_to_rows(a, b) * ops.convert_to_tensor(g)), x, w)
    # d/dx_b = sum_j g_bj w_j / |w_j|;  d/dw_j = sum_b g_bj (x_b / |w_j| - cos_bj w_j / |w_j|^2)
    want_gx = (g * inverse) @ w
    want_gw = np.zeros_like(w)
    for j in range(len(w)):
        for b in range(len(x)):
            want_gw[j] += g[b, j] * (x[b] * inverse[j] - cos[b, j] * w[j] * inverse[j] ** 2)
    np.testing.assert_allclose(gx, want_gx, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gw, want_gw, rtol=1e-4, atol=1e-6)
    assert np.all(gw[2] == 0)
