"""Bad inputs and faults on the model side (docs/reliability.md, "Models, layers, heads and
input paths"): one test per row of that table, on every backend."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import BACKEND, to_np

import clusterloss as cl

RNG = np.random.default_rng(0)
X = RNG.normal(size=(48, 8)).astype("float32")
Y = np.arange(48) % 3
SCE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def model(head=None, update="paper", **kwargs):
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    center = cl.CenterLoss(weight=0.1, update=update)
    return cl.ClusterModel(backbone, num_classes=3, head=head, center_loss=center, **kwargs)


def compiled(head=None, update="paper", **kwargs):
    m = model(head, update)
    m.compile(keras.optimizers.Adam(1e-2), SCE, **kwargs)
    return m


class Batches(keras.utils.PyDataset):
    def __init__(self, x, y, size=16):
        super().__init__()
        self.x, self.y, self.size = x, y, size

    def __len__(self):
        return -(-len(self.y) // self.size) if self.size else 1  # size 0: one empty batch

    def __getitem__(self, i):
        rows = slice(i * self.size, (i + 1) * self.size)
        return self.x[rows], self.y[rows]


def _data(path, y):
    if path == "arrays":
        return {"x": X, "y": y, "batch_size": 16}
    if path == "pydataset":
        return {"x": Batches(X, y)}
    if path == "sampler":
        return {"x": cl.MPerClassSampler(X, y, m=2, batch_size=4, seed=0)}
    if path == "generator":
        return {"x": ((X[i : i + 16], y[i : i + 16]) for i in range(0, 48, 16)), "steps_per_epoch": 3}
    tf = pytest.importorskip("tensorflow")
    return {"x": tf.data.Dataset.from_tensor_slices((X, y)).batch(16)}


@pytest.mark.parametrize("path", ["arrays", "pydataset", "sampler", "generator", "tf.data"])
@pytest.mark.parametrize(
    "bad,message",
    [
        (7, r"`y` must be < num_classes=3"),
        (-1, r"`y` must be >= 0"),
        (2**32 + 1, r"`y` must be < num_classes=3|`y` must be < 2\*\*31 on the JAX backend"),
    ],
    ids=["7", "-1", "2**32+1"],
)
def test_labels_out_of_range_on_every_input_path(path, bad, message):
    y = Y.astype("int64")
    y[:8] = bad
    m = compiled()
    with pytest.raises(ValueError, match=message):  # the sampler checks at construction
        m.fit(verbose=0, **_data(path, y))


def test_label_ids_that_the_backend_cannot_hold_are_rejected_without_num_classes():
    """No head, no centers (pair losses): ids must still survive the conversion to a tensor
    (JAX without x64 has int32 labels: 2**32 + 1 would become 1)."""
    y = np.array([0, 1, 2**32 + 1, 1])
    limit = 2**31 - 1 if BACKEND == "jax" else None
    if limit is None:
        cl.MPerClassSampler(X[:4], y, m=1, batch_size=2, replace=True)  # accepted
        return
    with pytest.raises(
        ValueError,
        match=r"`y` must be < 2\*\*31 on the JAX backend \(64-bit integers are off\); got a label 4294967297",
    ):
        cl.MPerClassSampler(X[:4], y, m=1, batch_size=2, replace=True)


@pytest.mark.parametrize("head", ["softmax", "sphereface"])
def test_labels_out_of_range_inside_the_graph_give_nan_and_leave_state(head):
    """`train_on_batch` skips the host check: the in-graph backstop makes the loss NaN, leaves
    the centers and SphereFace's counter as they were, and gives a zero gradient."""
    m = compiled(cl.SphereFace(3) if head == "sphereface" else None)
    m.train_on_batch(X[:8], Y[:8])
    centers = to_np(m.center_loss.centers)
    weights = [to_np(w) for w in m.backbone.weights]
    y = keras.ops.convert_to_tensor(np.array([0, 1, 2, 1, 0, 1, 2, 7]))
    loss = m.train_on_batch(X[:8], y, return_dict=True)["loss"]
    assert np.isnan(loss)
    np.testing.assert_array_equal(to_np(m.center_loss.centers), centers)
    if head == "sphereface":
        assert int(to_np(m.head.iteration)) == 1
    for before, w in zip(weights, m.backbone.weights):
        assert np.all(np.isfinite(to_np(w)))  # Adam moved them with a zero gradient: finite
        assert np.abs(to_np(w) - before).max() < 0.02


class StepCount(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1


@pytest.mark.parametrize("eager", [False, True], ids=["compiled", "eager"])
def test_diverged_model_gives_nan_and_terminate_on_nan_stops(eager):
    m = compiled(cl.ArcFace(3, scale=16.0), run_eagerly=eager)
    m.build((None, 8))
    kernel = m.backbone.layers[0].kernel
    value = to_np(kernel).copy()
    value[0, 0] = np.nan  # NaN embeddings from now on
    kernel.assign(value)
    centers = to_np(m.center_loss.centers)
    steps = StepCount()
    history = m.fit(
        X, Y, batch_size=16, epochs=2, verbose=0, callbacks=[keras.callbacks.TerminateOnNaN(), steps]
    ).history
    assert steps.steps == 1 and np.isnan(history["loss"]).all()
    assert np.isnan(history["classification_loss"]).all() and np.isnan(history["center_loss"]).all()
    np.testing.assert_array_equal(to_np(m.center_loss.centers), centers)


@pytest.mark.parametrize("name", ["SoftmaxHead", "ArcFace", "CosFace", "SphereFace", "NormFace"])
def test_nan_embeddings_give_nan_logits_in_every_head(name):
    head = getattr(cl, name)(3)
    x = X[:4].copy()
    x[1, 2] = np.nan
    for logits in (head(x), head(x, labels=Y[:4], training=True)):
        assert np.isnan(to_np(logits)[1]).all()
        assert np.isnan(to_np(SCE(Y[:4], logits)))


def test_empty_batches_are_errors():
    m = compiled()
    with pytest.raises(ValueError, match=r"`y` is empty: got a batch with no samples"):
        m.fit(X[:0], Y[:0], verbose=0)
    with pytest.raises(ValueError, match=r"`y` is empty: got a batch with no samples"):
        m.fit(Batches(X[:0], Y[:0], size=0), verbose=0)
    with pytest.raises(ValueError, match=r"`y` is empty"):
        cl.MPerClassSampler(X[:0], Y[:0], m=2, batch_size=4)


def test_numpy_integers_are_accepted_where_an_int_is_expected():
    three = np.int64(3)
    m = cl.ClusterModel(
        keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)]),
        num_classes=three,
        center_loss=cl.CenterLoss(three),
    )
    assert m.num_classes == 3 and type(m.num_classes) is int
    for head in (cl.ArcFace(three), cl.SoftmaxHead(np.int32(3)), cl.SphereFace(3, margin=np.int64(2))):
        assert head.num_classes == 3
    sampler = cl.MPerClassSampler(X, Y, m=np.int64(2), batch_size=np.int64(4))
    assert sampler.batch_size == 4


@pytest.mark.parametrize(
    "make,message",
    [
        (
            lambda: cl.ClusterModel(keras.layers.Dense(4), num_classes=3, head=cl.ArcFace(4)),
            r"`head` has 4 classes but `num_classes` is 3",
        ),
        (
            lambda: cl.ClusterModel(keras.layers.Dense(4), num_classes=3, center_loss=cl.CenterLoss(4)),
            r"`center_loss.num_classes` \(4\) must equal `num_classes` \(3\)",
        ),
        (lambda: cl.center_optimizer("adam", centers=-0.5), r"`centers` must be in \[0.0, inf\]; got -0.5"),
        (lambda: cl.center_optimizer("adam", centers=float("nan")), r"`centers` must be finite; got nan"),
        (lambda: cl.ArcFace(3, sample_rate=0.0), r"`sample_rate` must be in \(0.0, 1.0\]; got 0.0"),
        (lambda: cl.ArcFace(3, sample_rate=0.5, kernel_regularizer="l2"), r"`kernel_regularizer` cannot"),
        (lambda: cl.ClusterModel(keras.layers.Dense(4), num_classes=True), r"`num_classes` must be an int >= 2"),
        (lambda: cl.RowSparse(keras.optimizers.Lamb()), r"RowSparse needs an element-wise optimizer"),
    ],
    ids=["head-mismatch", "center-mismatch", "negative-lr", "nan-lr", "sample-rate", "regularizer", "bool", "lamb"],
)
def test_silently_accepted_arguments_are_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()


@pytest.mark.parametrize("update", ["paper", "gradient"])
def test_frozen_center_loss_keeps_its_centers(update):
    m = model(update=update)
    m.center_loss.trainable = False
    m.compile(keras.optimizers.Adam(1e-2), SCE)
    m.build((None, 8))
    m.center_loss.centers.assign(RNG.normal(size=(3, 4)).astype("float32"))
    before = to_np(m.center_loss.centers)
    m.train_on_batch(X[:16], Y[:16])
    np.testing.assert_array_equal(to_np(m.center_loss.centers), before)
    m.center_loss.trainable = True  # and it moves again once unfrozen
    m.compile(keras.optimizers.Adam(1e-2), SCE)
    m.train_on_batch(X[:16], Y[:16])
    assert not np.array_equal(to_np(m.center_loss.centers), before)


@pytest.mark.parametrize("policy", ["float64", "mixed_float16", "mixed_bfloat16"])
def test_float64_and_mixed_precision_fits_with_center_loss_and_a_margin_head(policy):
    if policy == "float64" and BACKEND == "jax":
        import jax

        if not jax.config.jax_enable_x64:
            pytest.skip("JAX computes float64 only with jax_enable_x64 (JAX_ENABLE_X64=1)")
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        m = compiled(cl.ArcFace(3, scale=16.0))
        history = m.fit(
            X.astype("float64" if policy == "float64" else "float32"), Y, batch_size=16, epochs=2, verbose=0
        ).history
        out = m.predict(X[:4], verbose=0)
    finally:
        keras.config.set_dtype_policy(previous)
    assert np.isfinite(history["loss"]).all() and history["loss"][-1] < history["loss"][0]
    wide = "float64" if policy == "float64" else "float32"
    assert out["logits"].dtype == wide and m.center_loss.centers.dtype == wide
    assert m.head.kernel.dtype == wide
    # The logits are the scaled cosines: compare with NumPy in float64. (Under a mixed policy
    # XLA may hand the head the embeddings before their rounding to half precision.)
    e = out["embeddings"].astype("float64")
    w = to_np(m.head.kernel).astype("float64")
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=1, keepdims=True)).T
    tolerance = {"float64": 1e-12, "mixed_float16": 2e-3, "mixed_bfloat16": 2e-2}[policy]
    np.testing.assert_allclose(out["logits"], 16.0 * cos, atol=tolerance * 16)
