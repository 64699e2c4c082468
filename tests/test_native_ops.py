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


def test_inverse_row_norms_keep_the_dtype_zero_rows_and_nan():
    w = np.random.default_rng(1).normal(size=(6, 5))
    w[2], w[4, 1] = 0.0, np.nan
    dtype = "float32" if BACKEND == "jax" else "float64"  # JAX: float64 needs jax_enable_x64
    got = _native.inverse_row_norms(ops.convert_to_tensor(w.astype(dtype)))
    assert keras.backend.standardize_dtype(got.dtype) == dtype
    want = 1.0 / np.linalg.norm(w, axis=1)
    want[2] = 0.0
    np.testing.assert_allclose(to_np(got), want, rtol=1e-6 if dtype == "float32" else 1e-14)


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


def _float_dtypes() -> list[str]:
    """float32, and float64 where the backend keeps it (JAX: with `jax_enable_x64`)."""
    if BACKEND == "jax":
        import jax

        return ["float32", "float64"] if jax.config.jax_enable_x64 else ["float32"]
    return ["float32", "float64"]


def _both_paths(fast, portable):
    """The primitive and, where it differs (PyTorch), its portable `keras.ops` version."""
    return [fast, portable] if BACKEND == "torch" else [fast]


def _unit_rows_reference(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`x / ||x||` and `||x||` per row, with `math.hypot` (exact scaling: no overflow)."""
    import math

    norms = np.array([math.hypot(*map(float, row)) for row in x])
    safe = np.where(norms > 0, norms, 1.0)
    return x / safe[:, None], norms


def test_l2_normalize_paths_match_numpy_with_gradients_zero_huge_tiny_and_nan_rows():
    rng = np.random.default_rng(4)
    for dtype in _float_dtypes():
        huge = 1e30 if dtype == "float32" else 1e200  # squares overflow the dtype
        tiny = 1e-36 if dtype == "float32" else 1e-300  # squares underflow the dtype
        x = rng.normal(size=(7, 3))
        x[1] = 0.0  # zero row: zero direction, zero norm, finite gradient
        x[2] = [0.0, 3.0, 0.0]  # norm equals the largest entry (the `clamp_min(1)` edge)
        x[3] *= huge
        x[4] = [tiny, -2 * tiny, 0.0]
        x = x.astype(dtype)
        w, v = rng.normal(size=(2, 7, 3)).astype(dtype)[0], rng.normal(size=7).astype(dtype)
        want_unit, want_norm = _unit_rows_reference(x.astype("float64"))
        # d/dx (u . w + |x| v) = (w - u (u . w)) / |x| + v u; a zero row: w (unit) and 0 (norm)
        safe = np.where(want_norm > 0, want_norm, 1.0)[:, None]
        want_grad = (w - want_unit * np.sum(want_unit * w, axis=1, keepdims=True)) / safe + v[:, None] * want_unit
        want_grad[1] = w[1]
        rtol = 1e-5 if dtype == "float32" else 1e-13
        for fn in _both_paths(_native.l2_normalize, _native.l2_normalize_ops):
            unit, norm = fn(ops.convert_to_tensor(x), return_norm=True)
            assert keras.backend.standardize_dtype(unit.dtype) == dtype
            np.testing.assert_allclose(to_np(unit), want_unit, rtol=rtol, atol=1e-7 if dtype == "float32" else 1e-15)
            np.testing.assert_allclose(to_np(norm), want_norm, rtol=rtol)
            np.testing.assert_allclose(to_np(fn(ops.convert_to_tensor(x))), to_np(unit), rtol=0)
            (g,) = grad(
                lambda a, fn=fn: (
                    ops.sum(fn(a, return_norm=True)[0] * ops.convert_to_tensor(w))
                    + ops.sum(fn(a, return_norm=True)[1] * ops.convert_to_tensor(v))
                ),
                x,
            )
            scale = np.where(want_norm > 0, want_norm, 1.0)[:, None]  # huge/tiny rows: compare g * |x|
            np.testing.assert_allclose(
                g * scale, want_grad * scale, rtol=1e-4 if dtype == "float32" else 1e-12, atol=1e-6
            )
        bad = x.copy()
        bad[0, 1], bad[5, 2] = np.nan, np.inf
        for fn in _both_paths(_native.l2_normalize, _native.l2_normalize_ops):
            unit, norm = map(to_np, fn(ops.convert_to_tensor(bad), return_norm=True))
            assert np.isnan(unit[[0, 5]]).all() and np.isnan(norm[[0, 5]]).all()
            np.testing.assert_allclose(unit[6], want_unit[6], rtol=rtol)
    half = _native.l2_normalize(ops.convert_to_tensor(np.full((2, 4), 6e4, "float16")))
    assert keras.backend.standardize_dtype(half.dtype) == "float32"
    np.testing.assert_allclose(to_np(half), 0.5, rtol=1e-6)


def test_cross_entropy_rows_paths_match_numpy_with_gradients_and_nan():
    rng = np.random.default_rng(5)
    for dtype in _float_dtypes():
        z = (rng.normal(size=(6, 5)) * 30).astype(dtype)
        labels = np.array([0, 4, 2, 2, 1, 3], "int32")
        g = rng.normal(size=6).astype(dtype)
        shifted = z.astype("float64") - z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        want = -log_p[np.arange(6), labels]
        onehot = np.eye(5)[labels]
        want_grad = g[:, None] * (np.exp(log_p) - onehot)  # d/dz of sum g_i l_i
        rtol = 1e-5 if dtype == "float32" else 1e-13
        for fn in _both_paths(_native.cross_entropy_rows, _native.cross_entropy_rows_ops):
            got = fn(ops.convert_to_tensor(z), ops.convert_to_tensor(labels))
            assert keras.backend.standardize_dtype(got.dtype) == dtype
            np.testing.assert_allclose(to_np(got), want, rtol=rtol, atol=1e-6 if dtype == "float32" else 1e-13)
            (gz,) = grad(lambda a, fn=fn: ops.sum(fn(a, ops.convert_to_tensor(labels)) * ops.convert_to_tensor(g)), z)
            np.testing.assert_allclose(gz, want_grad, rtol=rtol, atol=1e-6 if dtype == "float32" else 1e-13)
            bad = z.copy()
            bad[1, 0] = np.nan
            values = to_np(fn(ops.convert_to_tensor(bad), ops.convert_to_tensor(labels)))
            assert np.isnan(values[1]) and np.all(np.isfinite(np.delete(values, 1)))


def test_label_ranks_paths_give_the_inverse_of_unique():
    labels = np.array([7, 3, 7, 0, 3, 9, 3, 2**40 if BACKEND != "jax" else 2**30], "int64")
    want = np.unique(labels, return_inverse=True)[1]
    paths = _both_paths(_native.label_ranks, _native.label_ranks_ops)
    for fn in paths + [_native.label_ranks_by_sort] if BACKEND == "torch" else paths:
        for dtype in ("int32", "int64") if BACKEND != "jax" else ("int32",):
            if dtype == "int32":
                got = fn(ops.convert_to_tensor(np.unique(labels, return_inverse=True)[1].astype("int32") * 5))
            else:
                got = fn(ops.convert_to_tensor(labels))
            assert keras.backend.standardize_dtype(got.dtype) == "int32"
            np.testing.assert_array_equal(to_np(got), want)
        np.testing.assert_array_equal(to_np(fn(ops.convert_to_tensor(np.array([4], "int32")))), [0])


def test_matmul_t_keeps_float64():
    rng = np.random.default_rng(6)
    for dtype in _float_dtypes():
        x, y = rng.normal(size=(2, 4, 3)).astype(dtype)
        for fn in _both_paths(_native.matmul_t, _native.matmul_t_ops):
            got = fn(ops.convert_to_tensor(x), ops.convert_to_tensor(y))
            assert keras.backend.standardize_dtype(got.dtype) == dtype
            np.testing.assert_allclose(to_np(got), x @ y.T, rtol=1e-6 if dtype == "float32" else 1e-14)
            gx, gy = grad(lambda a, b, fn=fn: ops.sum(fn(a, b) * ops.convert_to_tensor(x @ y.T)), x, y)
            np.testing.assert_allclose(gx, (x @ y.T) @ y, rtol=1e-5 if dtype == "float32" else 1e-13)
            np.testing.assert_allclose(gy, (x @ y.T).T @ x, rtol=1e-5 if dtype == "float32" else 1e-13)


def test_nan_unless_finite_paths_keep_values_and_gradients_or_give_nan():
    rng = np.random.default_rng(7)
    for dtype in _float_dtypes():
        values, t = rng.normal(size=(2, 4)).astype(dtype)
        other = rng.normal(size=(3, 2)).astype(dtype)
        for fn in _both_paths(_native.nan_unless_finite, _native.nan_unless_finite_ops):
            got = fn(*map(ops.convert_to_tensor, (values, t, other)))
            assert keras.backend.standardize_dtype(got.dtype) == dtype
            np.testing.assert_array_equal(to_np(got), values)
            (g,) = grad(lambda v, fn=fn: ops.sum(fn(v, ops.convert_to_tensor(t)) * ops.convert_to_tensor(t)), values)
            np.testing.assert_array_equal(g, t)
            for bad in (np.nan, np.inf, -np.inf):
                broken = other.copy()
                broken[2, 1] = bad
                got = fn(*map(ops.convert_to_tensor, (values, t, broken)))
                assert np.isnan(to_np(got)).all()
