"""L-Softmax, sub-center ArcFace and ProxyNCA heads, and the class-weight regularizers
(RegularFace, center-invariant, sparse centers): values and gradients (embeddings and class
weights) against pytorch-metric-learning 2.9.0 computed here (float64 on TensorFlow and
PyTorch, float32 on JAX), NumPy reference loops, outliers, Partial FC with sub-centers, NaN,
half precision, errors, saving, and a short training run on scikit-learn's digits."""

from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
import pytest
import torch
from helpers import BACKEND, forbid_host_copies, grad, knn_accuracy, to_np
from keras import ops
from pytorch_metric_learning import losses as pl
from pytorch_metric_learning import regularizers as pr

import clusterloss as cl

WIDE = "float32" if BACKEND == "jax" else "float64"  # JAX: x64 off
RTOL = 1e-5 if WIDE == "float32" else 1e-9


def _data(batch=24, dim=8, rows=6, seed=1, scale=2.0):
    rng = np.random.default_rng(seed)
    x = scale * rng.normal(size=(batch, dim))
    w = rng.normal(size=(rows, dim))  # our kernel layout: (rows, dim)
    return x, w


def _value_and_grads(fn, *args, dtype=WIDE):
    """`fn(*args)` and its gradients for each arg, in `dtype` (TensorFlow's row gathers give
    `IndexedSlices`: made dense)."""
    args = [a.astype(dtype) for a in args]
    if BACKEND == "jax":
        import jax

        value, grads = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(len(args)))))(*args)
        return float(value), [np.asarray(g) for g in grads]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.Variable(a) for a in args]
        with tf.GradientTape() as tape:
            value = fn(*tensors)
        return float(value), [tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, tensors)]
    return float(to_np(fn(*args))), grad(fn, *args)


def _assert_same(ours, theirs):
    (v, grads), (v_ref, grads_ref) = ours, theirs
    np.testing.assert_allclose(v, v_ref, rtol=RTOL, atol=RTOL)
    for g, g_ref in zip(grads, grads_ref):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, g_ref, rtol=100 * RTOL, atol=RTOL * max(1.0, np.abs(g_ref).max()))


def _head_loss(head, loss):
    """`(x, kernel) -> loss(y, head(x[, labels=y]))` through `stateless_call`."""
    others = [v.value for v in head.non_trainable_variables]

    def fn(xx, ww, y):
        if head.uses_labels:
            out = head.stateless_call([ww], others, xx, labels=y)[0]
        else:
            out = head.stateless_call([ww], others, xx)[0]
        return loss(y, out)

    return fn


def _pml_value_and_grads(loss, weight_name, x, w, y):
    """PML's value and gradients (embeddings, weights in our `(rows, dim)` layout), float64."""
    loss = loss.double()
    param = getattr(loss, weight_name)
    param.data = torch.tensor(w if weight_name == "proxies" else w.T.copy())
    xt = torch.tensor(x, requires_grad=True)
    value = loss(xt, torch.tensor(y, dtype=torch.long))
    value.backward()
    gw = param.grad.numpy()
    return float(value.detach()), [xt.grad.numpy(), gw if weight_name == "proxies" else gw.T]


# Cross entropy that keeps float64 on torch (Keras's own reduces float64 in float32 there).
SCE = cl.SparseLabelSmoothingCrossentropy(0.0, from_logits=True, dtype=WIDE)

# (id, our head, our loss, PML loss, PML weight attribute, kernel rows per class)
CASES = [
    ("lsoftmax-m4", lambda c: cl.LargeMarginSoftmax(c), SCE, lambda c, d: pl.LargeMarginSoftmaxLoss(c, d), "W", 1),
    (
        "lsoftmax-m3-s0.5",
        lambda c: cl.LargeMarginSoftmax(c, margin=3, scale=0.5),
        SCE,
        lambda c, d: pl.LargeMarginSoftmaxLoss(c, d, margin=3, scale=0.5),
        "W",
        1,
    ),
    (
        "lsoftmax-m1",
        lambda c: cl.LargeMarginSoftmax(c, margin=1),
        SCE,
        lambda c, d: pl.LargeMarginSoftmaxLoss(c, d, margin=1),
        "W",
        1,
    ),
    (
        "subcenter-k3",
        lambda c: cl.SubCenterArcFace(c, scale=16.0, margin=0.5),
        SCE,
        lambda c, d: pl.SubCenterArcFaceLoss(num_classes=c, embedding_size=d, scale=16, margin=math.degrees(0.5)),
        "W",
        3,
    ),
    (
        "subcenter-k2-fallback",
        lambda c: cl.SubCenterArcFace(c, 8.0, 1.4, sub_centers=2),
        SCE,
        lambda c, d: pl.SubCenterArcFaceLoss(
            num_classes=c, embedding_size=d, scale=8, margin=math.degrees(1.4), sub_centers=2
        ),
        "W",
        2,
    ),
    (
        "proxynca-s1",
        lambda c: cl.ProxyNCAHead(c),
        cl.ProxyNCALoss(dtype=WIDE),
        lambda c, d: pl.ProxyNCALoss(c, d),
        "proxies",
        1,
    ),
    (
        "proxynca-s4",
        lambda c: cl.ProxyNCAHead(c),
        cl.ProxyNCALoss(4.0, dtype=WIDE),
        lambda c, d: pl.ProxyNCALoss(c, d, softmax_scale=4.0),
        "proxies",
        1,
    ),
]


def _built(make, classes, dim, kernel):
    head = make(classes)
    head.dtype_policy = WIDE
    head.build((None, dim))
    head.kernel.assign(kernel.astype(WIDE))
    return head


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_value_and_gradients_match_pml(case):
    _, make, loss, make_pml, weight_name, k = case
    classes = 6
    x, w = _data(rows=classes * k)
    y = np.arange(len(x)) % (classes - 1)  # the last class has no sample
    head = _built(make, classes, x.shape[1], w)
    ours = _value_and_grads(lambda xx, ww: _head_loss(head, loss)(xx, ww, y), x, w)
    _assert_same(ours, _pml_value_and_grads(make_pml(classes, x.shape[1]), weight_name, x, w, y))


def test_arcface_matches_pml_in_float64_on_pml_test_inputs():
    # PML's own `test_arcface_loss` inputs: 180 unit 2-D embeddings at 0..179 degrees, 10
    # classes, margin 30 degrees, scale 64 (some targets past pi - m: the fallback). Float64 on
    # every backend, JAX with x64 enabled here: its `ops.norm` computed the class-weight norms in
    # float32 (the gradient was 1e-4 of its largest entry off).
    angles = np.radians(np.arange(180.0))
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    rng = np.random.default_rng(0)
    y, w = rng.integers(0, 10, size=180), rng.normal(size=(10, 2))
    want = _pml_value_and_grads(pl.ArcFaceLoss(10, 2, margin=30, scale=64), "W", x, w, y)
    if BACKEND == "jax":
        import jax

        wide = jax.enable_x64(True)
    else:
        wide = contextlib.nullcontext()
    with wide:
        head = cl.ArcFace(10, scale=64.0, margin=math.radians(30), dtype="float64")
        head.build((None, 2))
        head.kernel.assign(w)
        sce = cl.SparseLabelSmoothingCrossentropy(0.0, from_logits=True, dtype="float64")
        value, grads = _value_and_grads(lambda xx, ww: _head_loss(head, sce)(xx, ww, y), x, w, dtype="float64")
    assert grads[0].dtype == "float64"
    np.testing.assert_allclose(value, want[0], rtol=1e-12)
    for g, g_ref in zip(grads, want[1]):
        np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-10 * np.abs(g_ref).max())


def _np_psi(c, m):
    theta = np.arccos(np.clip(c, -1, 1))
    k = np.minimum(np.floor(theta * m / np.pi), m - 1)
    return (-1.0) ** k * np.cos(m * theta) - 2 * k


def test_large_margin_softmax_logits_match_a_numpy_loop_over_every_k_interval():
    # Embeddings at angles across [0, pi] from class 0 (all four k intervals of m = 4), of
    # several norms, and class weights of different norms: PML's test compares with this loop.
    thetas = np.linspace(0.0, np.pi, 23)
    x = np.zeros((len(thetas), 4))
    x[:, 0], x[:, 1] = np.cos(thetas), np.sin(thetas)
    x *= np.linspace(0.5, 3.0, len(thetas))[:, None]
    w = np.diag([2.0, 0.5, 1.5])[:, :3] @ np.eye(3, 4) + 0.1 * np.eye(3, 4, 1)
    y = np.zeros(len(x), "int64")
    head = _built(lambda c: cl.LargeMarginSoftmax(c, margin=4, scale=0.7), 3, 4, w)
    got = to_np(head(x.astype(WIDE), labels=y))
    want = np.zeros_like(got)
    for i in range(len(x)):
        for j in range(3):
            cos = x[i] @ w[j] / np.linalg.norm(x[i]) / np.linalg.norm(w[j])
            f = _np_psi(cos, 4) if j == y[i] else cos
            want[i, j] = 0.7 * np.linalg.norm(x[i]) * np.linalg.norm(w[j]) * f
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(np.diff(got[:, 0] / np.linalg.norm(x, axis=1)) < 0)  # psi decreases
    # Inference: x . w_j times the scale, no margin.
    np.testing.assert_allclose(to_np(head(x.astype(WIDE))), 0.7 * x @ w.T, rtol=1e-5, atol=1e-6)


def test_large_margin_softmax_gradients_are_finite_where_pml_acos_is_not():
    _, w = _data(rows=4)
    x = np.stack([w[0], -w[1], 3 * w[2], np.zeros_like(w[0])])
    y = np.array([0, 1, 2, 3])
    head = _built(lambda c: cl.LargeMarginSoftmax(c), 4, w.shape[1], w)
    value, grads = _value_and_grads(lambda xx, ww: _head_loss(head, SCE)(xx, ww, y), x, w)
    assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in grads)


def test_lambda_annealing_counts_training_steps():
    x, w = _data(batch=6, rows=3)
    y = np.arange(6) % 3
    head = _built(lambda c: cl.LargeMarginSoftmax(c, margin=2, base=100.0, gamma=1.0), 3, 8, w)
    for _ in range(2):
        got = to_np(head(x.astype(WIDE), labels=y, training=True))
    lam = 100.0 / 3.0
    cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    target = cos[np.arange(6), y]
    f = (lam * target + _np_psi(target, 2)) / (1 + lam)
    want = np.linalg.norm(x, axis=1) * np.linalg.norm(w[y], axis=1) * f
    np.testing.assert_allclose(got[np.arange(6), y], want, rtol=1e-5)
    assert int(to_np(head.iteration)) == 2 and head.current_lambda == pytest.approx(lam)


def test_sub_center_logits_are_the_closest_sub_center_and_k1_is_arcface():
    x, w = _data(batch=10, rows=12)
    head = _built(lambda c: cl.SubCenterArcFace(c, scale=2.0, sub_centers=3), 4, 8, w)
    unit = w / np.linalg.norm(w, axis=1, keepdims=True)
    cos = ((x / np.linalg.norm(x, axis=1, keepdims=True)) @ unit.T).reshape(10, 4, 3).max(-1)
    np.testing.assert_allclose(to_np(head(x.astype(WIDE))), 2.0 * cos, rtol=1e-5, atol=1e-6)
    arc = _built(lambda c: cl.ArcFace(c, scale=2.0), 12, 8, w)
    one = _built(lambda c: cl.SubCenterArcFace(c, scale=2.0, sub_centers=1), 12, 8, w)
    y12 = np.arange(10)
    np.testing.assert_allclose(
        to_np(one(x.astype(WIDE), labels=y12)), to_np(arc(x.astype(WIDE), labels=y12)), rtol=1e-6
    )


@pytest.mark.parametrize("threshold", [75.0, 40.0])
def test_get_outliers_matches_pml(threshold):
    rng = np.random.default_rng(3)
    classes, k, dim = 5, 3, 6
    w = rng.normal(size=(classes * k, dim))
    y = rng.integers(0, classes - 1, size=60)  # the last class has no sample
    x = w[y * k + rng.integers(0, k, size=60)] + 0.8 * rng.normal(size=(60, dim))
    head = _built(lambda c: cl.SubCenterArcFace(c, sub_centers=k), classes, dim, w)
    ours = head.get_outliers(x, y, threshold=threshold, batch_size=16)
    theirs = pl.SubCenterArcFaceLoss(num_classes=classes, embedding_size=dim, sub_centers=k).double()
    theirs.W.data = torch.tensor(w.T.copy())
    outliers, centers = theirs.get_outliers(torch.tensor(x), torch.tensor(y), threshold=threshold)
    assert 0 < len(ours.outliers) < len(x)
    np.testing.assert_array_equal(ours.outliers, np.sort(outliers.numpy()))
    np.testing.assert_allclose(ours.dominant_centers[:-1], centers.numpy().T[:-1], rtol=1e-6)
    assert np.isnan(ours.dominant_centers[-1]).all()
    np.testing.assert_array_equal(head.get_outliers(x, y, threshold, return_dominant_centers=False), ours.outliers)


def test_sub_center_partial_fc_samples_whole_classes():
    classes, k = 20, 3
    x, w = _data(batch=8, rows=classes * k)
    y = np.array([0, 3, 3, 7, 11, 11, 15, 19])
    head = _built(lambda c: cl.SubCenterArcFace(c, scale=4.0, sub_centers=k, sample_rate=0.5, seed=1), classes, 8, w)
    state = [ops.convert_to_tensor(to_np(v)) for v in head.non_trainable_variables]  # a copy
    logits, labels = head(x.astype(WIDE), labels=y, training=True, return_labels=True)
    logits, labels = to_np(logits), to_np(labels)
    full = _built(lambda c: cl.SubCenterArcFace(c, scale=4.0, sub_centers=k), classes, 8, w)
    want = to_np(full(x.astype(WIDE), labels=y, training=True))
    assert logits.shape == (8, 10)
    # Row 0's sampled logits are columns of the full logits, in class order, with the label's.
    columns = [int(np.argmin(np.abs(want[0] - v))) for v in logits[0]]
    assert columns == sorted(columns) and set(y) <= set(columns)
    np.testing.assert_allclose(logits, want[:, columns], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(columns)[labels], y)
    # The same draw again (same sampler state): only the sampled classes' rows get a gradient.

    def fn(xx, ww):
        out, positions = head.stateless_call([ww], state, xx, labels=y, training=True, return_labels=True)[0]
        return SCE(positions, out)

    _, (_, gw) = _value_and_grads(fn, x, w)
    touched = np.abs(gw).reshape(classes, k, -1).max(axis=-1) > 0  # (class, sub-center)
    np.testing.assert_array_equal(np.flatnonzero(touched.any(axis=1)), columns)


REGULARIZERS = [
    ("regularface", lambda: cl.RegularFaceRegularizer(weight=0.5), pr.RegularFaceRegularizer, 0.5, 1),
    ("center_invariant", cl.CenterInvariantRegularizer, pr.CenterInvariantRegularizer, 1.0, 1),
    (
        "sparse_centers",
        lambda: cl.SparseCentersRegularizer(4, 3, weight=2.0),
        lambda: pr.SparseCentersRegularizer(4, 3),
        2.0,
        3,
    ),
]


@pytest.mark.parametrize("case", REGULARIZERS, ids=[c[0] for c in REGULARIZERS])
def test_regularizers_match_pml_value_and_gradient(case):
    _, ours, theirs, weight, k = case
    _, w = _data(rows=4 * k, seed=5)
    regularizer = ours()
    value, grads = _value_and_grads(regularizer, w)
    wt = torch.tensor(w, requires_grad=True)
    expected = weight * theirs()(wt)
    expected.backward()
    _assert_same((value, grads), (float(expected.detach()), [wt.grad.numpy()]))


def test_head_kernel_regularizer_is_pml_weight_regularizer_in_the_model_loss():
    # ClusterModel's loss = cross entropy + weight * R(kernel): PML's loss with
    # weight_regularizer=..., weight_reg_weight=....
    x, w = _data(batch=12, rows=5)
    y = np.arange(12) % 5
    backbone = keras.Sequential([keras.Input((8,)), keras.layers.Identity()])
    head = cl.LargeMarginSoftmax(5, margin=2, kernel_regularizer=cl.RegularFaceRegularizer(0.3))
    model = cl.ClusterModel(backbone, head=head)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.build((None, 8))
    head.kernel.assign(w.astype("float32"))
    xf = x.astype("float32")
    total = float(to_np(model.compute_loss(xf, y, model(xf), training=True)))
    theirs = pl.LargeMarginSoftmaxLoss(
        5, 8, margin=2, weight_regularizer=pr.RegularFaceRegularizer(), weight_reg_weight=0.3
    ).double()
    theirs.W.data = torch.tensor(w.T.copy())
    np.testing.assert_allclose(total, float(theirs(torch.tensor(x), torch.tensor(y))), rtol=1e-5)


NEW_HEADS = [
    ("lsoftmax", lambda: cl.LargeMarginSoftmax(10, margin=2)),
    ("subcenter", lambda: cl.SubCenterArcFace(10, scale=16.0, margin=0.3)),
    ("proxynca", lambda: cl.ProxyNCAHead(10)),
]


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name,make", NEW_HEADS, ids=[h[0] for h in NEW_HEADS])
def test_nan_in_gives_nan_out_and_half_precision_is_finite(name, make, dtype):
    x, _ = _data(batch=10, scale=1.0)
    x = x.astype("float32")
    y = np.arange(10)
    head = make()
    loss = cl.ProxyNCALoss() if name == "proxynca" else SCE
    kwargs = {} if name == "proxynca" else {"labels": y}
    broken = x.copy()
    broken[3, 1] = np.nan
    assert np.isnan(float(to_np(loss(y, head(broken, **kwargs)))))
    out = head(ops.cast(x, dtype), **kwargs)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(to_np(out), to_np(head(x, **kwargs)), rtol=2e-2, atol=2e-2)
    assert np.isfinite(float(to_np(loss(y, out))))


@pytest.mark.parametrize(
    "make,argument",
    [
        (lambda: cl.LargeMarginSoftmax(5, margin=2.5), "margin"),
        (lambda: cl.LargeMarginSoftmax(5, margin=0), "margin"),
        (lambda: cl.LargeMarginSoftmax(5, lambda_min=-1.0), "lambda_min"),
        (lambda: cl.SubCenterArcFace(5, margin=28.6), "degrees"),
        (lambda: cl.SubCenterArcFace(5, sub_centers=0), "sub_centers"),
        (
            lambda: cl.SubCenterArcFace(5, sample_rate=0.5, kernel_regularizer=cl.SparseCentersRegularizer(5, 3)),
            "kernel_regularizer",
        ),
        (lambda: cl.ProxyNCALoss(softmax_scale=0.0), "softmax_scale"),
        (lambda: cl.ProxyNCAHead(1), "num_classes"),
        (lambda: cl.RegularFaceRegularizer(weight=-1.0), "weight"),
        (lambda: cl.SparseCentersRegularizer(5, 1), "centers_per_class"),
        (lambda: cl.SparseCentersRegularizer(5, 3)(ops.ones((14, 4))), "15 rows"),
        (lambda: cl.RegularFaceRegularizer()(ops.ones((1, 4))), "at least 2 rows"),
        (lambda: cl.ProxyNCALoss()(np.array([0, 3]), np.zeros((2, 3), "float32")), "y_true"),
    ],
)
def test_bad_arguments_name_the_argument(make, argument):
    with pytest.raises(ValueError, match=argument):
        make()


def test_get_outliers_checks_its_inputs():
    head = _built(lambda c: cl.SubCenterArcFace(c), 3, 4, np.ones((9, 4)))
    with pytest.raises(ValueError, match="threshold"):
        head.get_outliers(np.ones((2, 4)), [0, 1], threshold=200)
    with pytest.raises(ValueError, match="embeddings"):
        head.get_outliers(np.ones((2, 5)), [0, 1])
    with pytest.raises(ValueError, match="num_classes=3"):
        head.get_outliers(np.ones((2, 4)), [0, 3])


TRAINED = [
    (
        "lsoftmax",
        lambda: cl.LargeMarginSoftmax(  # m = 4 trains with the paper's annealing
            10, base=1000.0, gamma=0.12, kernel_regularizer=cl.CenterInvariantRegularizer(0.01)
        ),
        None,
    ),
    (
        "subcenter",
        lambda: cl.SubCenterArcFace(
            10, scale=16.0, margin=0.3, kernel_regularizer=cl.SparseCentersRegularizer(10, 3, 0.1)
        ),
        None,
    ),
    (
        "proxynca",
        lambda: cl.ProxyNCAHead(10, kernel_regularizer=cl.RegularFaceRegularizer(0.1), name="proxies"),
        lambda: cl.ProxyNCALoss(softmax_scale=8.0),
    ),
]


@pytest.mark.parametrize("name,make,loss", TRAINED, ids=[t[0] for t in TRAINED])
def test_fit_on_digits_then_save_and_load_with_no_custom_objects(name, make, loss, digits, tmp_path):
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(8)])
    model = cl.ClusterModel(backbone, head=make())
    loss = loss() if loss else keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(keras.optimizers.Adam(1e-2), loss=loss)
    before = knn_accuracy(backbone, digits)
    history = model.fit(digits[0], digits[1], batch_size=50, epochs=3, verbose=0)
    after = knn_accuracy(backbone, digits)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after > 0.8 and after > before + 0.1, (before, after)

    model.save(tmp_path / f"{name}.keras")
    loaded = keras.saving.load_model(tmp_path / f"{name}.keras")
    assert type(loaded.head) is type(model.head)
    assert loaded.head.get_config() == model.head.get_config()
    x = digits[2][:16]
    want, got = model(x), loaded(x)
    np.testing.assert_allclose(to_np(got["logits"]), to_np(want["logits"]), rtol=1e-6, atol=1e-6)
    if hasattr(loaded.head, "iteration"):
        assert int(to_np(loaded.head.iteration)) == int(to_np(model.head.iteration)) == 60


@pytest.mark.skipif(BACKEND != "torch", reason="counts host copies of torch tensors")
def test_heads_losses_and_regularizers_never_copy_device_tensors_to_the_host(monkeypatch):
    x, _ = _data(batch=12, scale=1.0)
    xt = torch.tensor(x.astype("float32"), requires_grad=True)
    y = np.arange(12) % 6
    # Partial FC's draws (clusterloss._native.uniform): layers/test_partial_fc.py's host-copy test.
    heads = [
        cl.LargeMarginSoftmax(6, kernel_regularizer=cl.RegularFaceRegularizer()),
        cl.SubCenterArcFace(6, sub_centers=2),
        cl.SubCenterArcFace(6, kernel_regularizer=cl.SparseCentersRegularizer(6, 3)),
        cl.ProxyNCAHead(6, kernel_regularizer=cl.CenterInvariantRegularizer()),
    ]
    for head in heads:
        head.build((None, 8))

    forbid_host_copies(monkeypatch)
    total = cl.ProxyNCALoss()(y, heads[3](xt)) + sum(head.losses[0] for head in (heads[0], heads[2], heads[3]))
    for head in heads[:3]:
        logits, labels = head(xt, labels=y, training=True, return_labels=True)
        total = total + keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).mean()
    total.backward()
    monkeypatch.undo()
    assert np.isfinite(xt.grad.numpy()).all() and np.abs(xt.grad.numpy()).max() > 0
