"""Partial FC (sampled classes), RowSparse updates, SoftmaxHead, one head pass per training
step, and no device-to-host copy in a training step."""

from __future__ import annotations

import threading
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
from helpers import BACKEND, to_np

import clusterloss as cl

SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
RNG = np.random.default_rng(0)


def _fmix32(x):
    x = x & 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x85EBCA6B) & 0xFFFFFFFF
    x ^= x >> 13
    x = (x * 0xC2B2AE35) & 0xFFFFFFFF
    return x ^ (x >> 16)


def first_scores(num_classes, seed):
    """The first draw of a fresh SeedGenerator(seed): Keras's on JAX and TensorFlow; on torch
    the documented device-side hash of the generator's state (seed, 0), in Python integers."""
    if BACKEND != "torch":
        return to_np(keras.random.uniform((num_classes,), seed=keras.random.SeedGenerator(seed)))
    key = _fmix32(seed * 0x9E3779B1 + 0)
    return np.array([(_fmix32(i + key) >> 8) * 2.0**-24 for i in range(num_classes)], "float32")


def numpy_sample(labels, num_classes, num_sampled, seed):
    """insightface's PartialFC_V2 sampling, on the scores of a fresh SeedGenerator(seed)."""
    scores = first_scores(num_classes, seed).copy()
    scores[labels] = 2.0
    index = np.sort(np.argsort(-scores, kind="stable")[:num_sampled])
    return index, np.searchsorted(index, labels)


@pytest.mark.parametrize("name", ["SoftmaxHead", "ArcFace"])
def test_sampled_logits_match_a_numpy_reference(name):
    classes, x = 12, RNG.normal(size=(6, 4)).astype("float32")
    y = np.array([3, 7, 3, 11, 0, 7])
    head = getattr(cl, name)(classes, sample_rate=0.5, seed=5)
    logits, positions = head(x, labels=y, training=True, return_labels=True)
    index, want_positions = numpy_sample(y, classes, 6, seed=5)
    assert set(y) <= set(index) and len(index) == head.num_sampled == 6
    np.testing.assert_array_equal(to_np(positions), want_positions)
    w = to_np(head.kernel)[index].astype("float64")
    if name == "SoftmaxHead":
        want = x @ w.T + to_np(head.bias)[index]
    else:
        cos = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
        rows = np.arange(len(y))
        target = cos[rows, want_positions]
        theta = np.arccos(np.clip(target, -1, 1))
        cos[rows, want_positions] = np.where(
            target > np.cos(np.pi - 0.5), np.cos(theta + 0.5), target - 0.5 * np.sin(0.5)
        )
        want = 64.0 * cos
    np.testing.assert_allclose(to_np(logits), want, rtol=1e-5, atol=1e-4)
    # Inference (and training=False) uses every class.
    assert tuple(head(x).shape) == (6, classes)
    assert tuple(head(x, labels=y, training=False).shape) == (6, classes)


def test_a_sample_rate_that_keeps_every_class_is_the_full_head():
    x, y = RNG.normal(size=(6, 4)).astype("float32"), np.array([0, 1, 2, 3, 4, 5])
    full, almost = cl.CosFace(12), cl.CosFace(12, sample_rate=0.95)  # ceil(11.4) = 12
    full.build((None, 4))
    almost.build((None, 4))
    almost.kernel.assign(full.kernel)
    assert not almost.sampled and almost.seed_generator is None
    np.testing.assert_array_equal(to_np(full(x, labels=y, training=True)), to_np(almost(x, labels=y, training=True)))
    with pytest.raises(ValueError, match=r"3 sampled classes is less than the batch size 6"):
        cl.CosFace(12, sample_rate=0.25)(x, labels=y, training=True)


def _pfc_model(optimizer, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model = cl.ClusterModel(
        backbone,
        head=cl.SoftmaxHead(20, sample_rate=0.25, seed=1),
        center_loss=cl.CenterLoss(weight=0.1, update="gradient"),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the dense reference has no RowSparse: it warns
        model.compile(optimizer, SCE)
    model.build((None, 8))
    return model


def _slot(model, variable, kind):
    name = variable.path.replace("/", "_") + "_" + kind
    return next(to_np(v) for v in model.optimizer.variables if v.name == name)


def test_row_sparse_leaves_absent_classes_and_their_slots_bit_identical():
    x = RNG.normal(size=(4, 8)).astype("float32")  # batch <= 5 sampled classes
    y1, y2 = np.array([0, 1, 0, 1]), np.array([2, 3, 2, 3])
    sparse = _pfc_model(keras.optimizers.AdamW(1e-2, weight_decay=0.5))
    dense = _pfc_model(
        keras.optimizers.MultiOptimizer(  # AdamW on every row: the reference
            keras.optimizers.OptimizerMap(keras.optimizers.AdamW(1e-2, weight_decay=0.5))
        )
    )
    assert isinstance(sparse.optimizer, cl.RowSparse)
    k0, c0 = to_np(sparse.head.kernel), to_np(sparse.center_loss.centers)
    sparse.train_on_batch(x, y1)
    dense.train_on_batch(x, y1)
    k1, c1 = to_np(sparse.head.kernel), to_np(sparse.center_loss.centers)
    sampled = np.flatnonzero(np.any(k1 != k0, axis=1))
    assert len(sampled) == 5 and {0, 1} <= set(sampled)  # 0.25 * 20 classes, positives first
    np.testing.assert_array_equal(np.flatnonzero(np.any(c1 != c0, axis=1)), [0, 1])
    # The sampled rows got AdamW's update; the dense AdamW also decayed every other row.
    np.testing.assert_allclose(k1[sampled], to_np(dense.head.kernel)[sampled], rtol=1e-6, atol=1e-7)
    assert np.all(np.any(to_np(dense.head.kernel) != k0, axis=1))
    m1 = _slot(sparse, sparse.head.kernel, "momentum")
    # Step 2, other classes: the rows of step 1 not sampled now keep value and moments.
    sparse.train_on_batch(x, y2)
    k2, m2 = to_np(sparse.head.kernel), _slot(sparse, sparse.head.kernel, "momentum")
    resampled = np.flatnonzero(np.any(k2 != k1, axis=1))
    assert len(resampled) == 5 and {2, 3} <= set(resampled)
    kept = np.setdiff1d(np.arange(20), resampled)
    np.testing.assert_array_equal(k2[kept], k1[kept])
    np.testing.assert_array_equal(m2[kept], m1[kept])
    assert np.any(m1[np.setdiff1d(sampled, resampled)] != 0)  # moments that would have decayed
    c2 = to_np(sparse.center_loss.centers)
    np.testing.assert_array_equal(c2[[0, 1]], c1[[0, 1]])


def test_sparse_row_gradients_give_the_dense_gradients_result():
    # ClusterModel.compile lets the head give its sampled rows' gradient as row slices (a
    # sparse torch gradient; TensorFlow's is IndexedSlices anyway) once RowSparse is built;
    # RowSparse with `takes_row_slices=False` gets the dense gradient: same training.
    x = RNG.normal(size=(4, 8)).astype("float32")
    models = [_pfc_model(keras.optimizers.Adam(1e-2)) for _ in range(2)]
    assert models[0].optimizer.takes_row_slices
    models[1].optimizer.takes_row_slices = False
    for y in (np.array([0, 1, 0, 1]), np.array([2, 3, 2, 3]), np.array([4, 0, 5, 1])):
        for model in models:
            model.train_on_batch(x, y)
    np.testing.assert_allclose(to_np(models[0].head.kernel), to_np(models[1].head.kernel), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        _slot(models[0], models[0].head.kernel, "velocity"),
        _slot(models[1], models[1].head.kernel, "velocity"),
        rtol=1e-6,
        atol=1e-9,
    )
    if BACKEND == "torch":
        assert models[0].head.kernel.value.grad.is_sparse
        assert not models[1].head.kernel.value.grad.is_sparse
    # JAX: the rows' gradient goes through the head's stand-ins (no dense kernel gradient).
    routed = [cl.optimizers.takes_sparse_gradient(m.head.kernel) for m in models]
    assert routed == [True, False]
    names = sorted(v.name for v in models[0].head.weights if cl.optimizers.is_route_part(v))
    assert names == (
        ["routed_gradient_0", "routed_gradient_1", "routed_rows_0", "routed_rows_1"] if BACKEND == "jax" else []
    )


def _routed_table(rows, dim=2, max_rows=2):
    table = keras.Variable(np.zeros((rows, dim), "float32"), name="table")
    cl.mark_sparse_rows(table, max_rows)
    standin = keras.Variable(np.zeros((max_rows, dim), "float32"), name="standin")
    marker = keras.Variable(np.zeros((max_rows, 3), "float32"), name="marker")
    cl.optimizers.route_row_gradient(table, standin, marker)
    optimizer = cl.RowSparse(keras.optimizers.SGD(1.0))
    optimizer.takes_row_slices = True
    variables = [table, standin, marker]
    optimizer.build(variables)
    return optimizer, variables


@pytest.mark.parametrize("count", [1.0, 2.0])
def test_row_sparse_applies_a_routed_gradient_to_its_rows(count):
    # Rows 5 and 10_000 (= 2 * 4096 + 1808) get -gradient with SGD(1): the index travels as
    # two float32 digits in base 4096; a layer that read the rows twice (count 2) gives NaN.
    optimizer, variables = _routed_table(10_001)
    gradient = np.array([[1.0, 2.0], [3.0, -4.0]], "float32")
    code = np.array([[0, 5, count], [2, 1808, count]], "float32")
    optimizer.apply([np.zeros((10_001, 2), "float32"), gradient, code], variables)
    table = to_np(variables[0])
    want = np.zeros((10_001, 2), "float32")
    want[[5, 10_000]] = -gradient if count == 1 else np.nan
    np.testing.assert_array_equal(table, want)
    np.testing.assert_array_equal(to_np(variables[1]), 0)  # the stand-ins never move


def test_a_saved_partial_fc_model_has_no_stand_ins_and_trains_on_after_loading(tmp_path):
    # The saved file is the same on every backend; the loaded model routes again on JAX and
    # its next step equals the original model's next step (weights and Adam's moments).
    x = RNG.normal(size=(4, 8)).astype("float32")
    y = np.array([0, 1, 0, 1])
    model = _pfc_model(keras.optimizers.Adam(1e-2))
    model.train_on_batch(x, y)
    path = str(tmp_path / "pfc.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    with zipfile.ZipFile(path) as archive, h5py.File(archive.open("model.weights.h5")) as weights:
        assert sorted(weights["head"]["vars"]) == ["0", "1"]  # kernel, bias
    y2 = np.array([2, 3, 2, 3])
    loaded.head.seed_generator.state.assign(to_np(model.head.seed_generator.state))  # not saved
    model.train_on_batch(x, y2)
    loaded.train_on_batch(x, y2)
    np.testing.assert_allclose(to_np(loaded.head.kernel), to_np(model.head.kernel), rtol=1e-6, atol=1e-7)


def test_row_sparse_refuses_optimizers_that_are_not_element_wise():
    with pytest.raises(ValueError, match="element-wise optimizer; Lamb"):
        cl.RowSparse(keras.optimizers.Lamb())
    table = keras.Variable(np.zeros((4, 3)), name="table")
    cl.mark_sparse_rows(table, max_rows=2)
    with pytest.raises(ValueError, match="element-wise optimizer; Adafactor keeps state that"):
        cl.RowSparse(keras.optimizers.Adafactor()).build([table])
    # Muon's state has the variable's shape, but its update of a matrix is not per element
    with pytest.raises(ValueError, match="element-wise optimizer; Muon orthogonalises each matrix"):
        cl.RowSparse(keras.optimizers.Muon())
    with pytest.raises(ValueError, match=r"element-wise optimizer; Nadam keeps state that is not per"):
        cl.RowSparse(keras.optimizers.Nadam()).build([table])
    listed = cl.RowSparse.__doc__.split("element-wise optimizers of Keras (")[1].split(")")[0]
    accepted = " ".join(listed.split())
    assert accepted == "SGD, Adam, AdamW, Adamax, RMSprop, Adagrad, Adadelta, Lion, Ftrl"


def test_partial_fc_that_samples_one_class_is_refused():
    """A softmax over the one sampled class has zero loss: it would train nothing."""
    with pytest.raises(
        ValueError,
        match=r"`sample_rate` must sample at least 2 of the 10 classes; "
        r"got 0\.1, which samples 1: .* Use sample_rate >= 0\.2\.",
    ):
        cl.ArcFace(10, sample_rate=0.1).build((None, 4))
    cl.ArcFace(10, sample_rate=0.2).build((None, 4))


def test_softmax_head_equals_dense():
    x = RNG.normal(size=(5, 4)).astype("float32")
    dense = keras.layers.Dense(6)
    head = cl.SoftmaxHead(6)
    want = to_np(dense(x))
    head.build((None, 4))
    head.kernel.assign(to_np(dense.kernel).T)
    head.bias.assign(to_np(dense.bias) + 0.5)
    np.testing.assert_allclose(to_np(head(x)), want + 0.5, rtol=1e-6, atol=1e-6)


def test_one_head_computation_per_training_step():
    """The training forward pass leaves the label head to `compute_loss`, which runs it once
    and hands its logits to the metrics. Counted inside the train and test steps: in the
    trace on JAX (what the compiled step computes), eagerly on TensorFlow (whose first call
    traces twice) and torch."""
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model = cl.ClusterModel(backbone, head=cl.CosFace(3, scale=8.0, margin=0.35))
    model.compile("adam", SCE, metrics=["accuracy"], run_eagerly=BACKEND == "tensorflow")
    calls, inside = [], [False]
    original = model.head.call

    def counted(*args, **kwargs):
        if inside[0]:
            calls.append(kwargs.get("labels") is not None)
        return original(*args, **kwargs)

    def step(method):
        def run(*args):  # (data), or (state, data) on JAX
            inside[0] = True
            try:
                return method(*args)
            finally:
                inside[0] = False

        return run

    model.head.call = counted
    model.train_step, model.test_step = step(model.train_step), step(model.test_step)
    x, y = RNG.normal(size=(32, 8)).astype("float32"), np.arange(32) % 3
    logs = model.fit(x, y, batch_size=32, epochs=1, verbose=0).history
    assert calls == [True] and 0 <= logs["accuracy"][0] <= 1
    model.evaluate(x, y, batch_size=32, verbose=0)  # accuracy: inference logits; loss: margin
    assert calls[1:] == [False, True]


@pytest.mark.skipif(BACKEND != "torch", reason="torch runs eagerly: a host copy is a device sync")
def test_no_device_to_host_copy_in_a_torch_training_step():
    import torch

    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model = cl.ClusterModel(
        backbone, head=cl.ArcFace(20, sample_rate=0.5), center_loss=cl.CenterLoss(weight=0.1, update="gradient")
    )
    model.compile("adam", SCE, metrics=["accuracy"])
    training = [None]
    copies = []

    def counted(name, original):
        def wrapper(*args, **kwargs):
            if training[0] == threading.get_ident():  # Keras converts logs in another thread
                copies.append(name)
            return original(*args, **kwargs)

        return wrapper

    names = ("numpy", "item", "cpu", "tolist", "__array__", "__int__", "__float__", "__bool__", "__index__")
    patches = {(torch.Tensor, n): getattr(torch.Tensor, n) for n in names}
    patches[(keras.ops, "convert_to_numpy")] = keras.ops.convert_to_numpy
    step = model.train_step

    def counted_step(*args):
        training[0] = threading.get_ident()
        try:
            return step(*args)
        finally:
            training[0] = None

    try:
        for (owner, name), original in patches.items():
            setattr(owner, name, counted(name, original))
        model.train_step = counted_step
        training[0] = threading.get_ident()
        torch.ones(2).numpy()  # the counter counts
        training[0] = None
        assert copies == ["numpy"]
        copies.clear()
        x, y = RNG.normal(size=(64, 8)).astype("float32"), RNG.integers(0, 20, 64)
        model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # 8 steps
    finally:
        for (owner, name), original in patches.items():
            setattr(owner, name, original)
    assert copies == []
