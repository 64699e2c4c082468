"""Sparse focal and sparse label smoothing: against Keras's one-hot losses and NumPy."""

import keras
import numpy as np
import pytest
from helpers import grad, to_np

import clusterloss as cl

RNG = np.random.default_rng(0)


def np_log_softmax(z):
    z = z.astype("float64")
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def np_focal(labels, logits, gamma, alpha):
    out = []
    for row, y in zip(np_log_softmax(logits), labels):
        p = np.exp(row[y])
        a = alpha[y] if np.ndim(alpha) else alpha
        out.append(-a * (1 - p) ** gamma * row[y])
    return np.array(out)


def np_smoothing(labels, logits, eps):
    log_p = np_log_softmax(logits)
    c = logits.shape[1]
    return np.array([-(1 - eps) * r[y] - eps * r.sum() / c for r, y in zip(log_p, labels)])


@pytest.mark.parametrize("gamma,alpha", [(2.0, 0.25), (0.5, 1.0), (0.0, 0.7), (3.0, 0.1)])
@pytest.mark.parametrize("from_logits", [True, False])
def test_focal_equals_keras_one_hot(gamma, alpha, from_logits):
    logits = RNG.normal(size=(16, 5)).astype("float32") * 3
    labels = RNG.integers(0, 5, 16)
    y_pred = logits if from_logits else to_np(keras.ops.softmax(logits))
    ours = cl.SparseCategoricalFocalCrossentropy(gamma=gamma, alpha=alpha, from_logits=from_logits)
    ref = keras.losses.CategoricalFocalCrossentropy(gamma=gamma, alpha=alpha, from_logits=from_logits)
    one_hot = np.eye(5, dtype="float32")[labels]
    np.testing.assert_allclose(to_np(ours(labels, y_pred)), to_np(ref(one_hot, y_pred)), rtol=1e-5)
    per_sample = cl.sparse_categorical_focal_crossentropy(
        labels, y_pred, gamma=gamma, alpha=alpha, from_logits=from_logits
    )
    expected = keras.losses.categorical_focal_crossentropy(
        one_hot, y_pred, gamma=gamma, alpha=alpha, from_logits=from_logits
    )
    np.testing.assert_allclose(to_np(per_sample), to_np(expected), rtol=1e-5, atol=1e-7)


def test_focal_per_class_alpha_against_numpy():
    logits = RNG.normal(size=(32, 4)).astype("float32") * 4
    labels = RNG.integers(0, 4, 32)
    alpha = [0.1, 0.2, 0.3, 0.4]
    got = cl.sparse_categorical_focal_crossentropy(labels, logits, gamma=1.5, alpha=alpha, from_logits=True)
    np.testing.assert_allclose(to_np(got), np_focal(labels, logits, 1.5, np.array(alpha)), rtol=1e-5)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_label_smoothing_equals_keras_one_hot_and_numpy(eps):
    logits = RNG.normal(size=(16, 7)).astype("float32") * 2
    labels = RNG.integers(0, 7, 16)
    ours = cl.SparseLabelSmoothingCrossentropy(eps, from_logits=True)
    ref = keras.losses.CategoricalCrossentropy(label_smoothing=eps, from_logits=True)
    one_hot = np.eye(7, dtype="float32")[labels]
    np.testing.assert_allclose(to_np(ours(labels, logits)), to_np(ref(one_hot, logits)), rtol=1e-5)
    per_sample = cl.sparse_label_smoothing_crossentropy(labels, logits, eps, from_logits=True)
    np.testing.assert_allclose(to_np(per_sample), np_smoothing(labels, logits, eps), rtol=1e-5)


def test_probability_inputs_match_logits():
    logits = RNG.normal(size=(8, 3)).astype("float32")
    labels = RNG.integers(0, 3, 8)
    probs = to_np(keras.ops.softmax(logits))
    a = cl.sparse_label_smoothing_crossentropy(labels, logits, 0.2, from_logits=True)
    b = cl.sparse_label_smoothing_crossentropy(labels, probs, 0.2, from_logits=False)
    np.testing.assert_allclose(to_np(a), to_np(b), rtol=1e-5)


def test_sample_weight_and_labels_of_shape_batch_by_one():
    logits = RNG.normal(size=(6, 3)).astype("float32")
    labels = RNG.integers(0, 3, 6)
    weights = np.array([1, 0, 2, 0, 1, 1], "float32")
    loss = cl.SparseCategoricalFocalCrossentropy(from_logits=True)
    per = np_focal(labels, logits, 2.0, 0.25)
    np.testing.assert_allclose(
        to_np(loss(labels[:, None], logits, sample_weight=weights)), (per * weights).mean(), rtol=1e-5
    )


LOSSES = {
    "focal-2": (
        lambda y, z: cl.sparse_categorical_focal_crossentropy(y, z, gamma=2.0, from_logits=True),
        lambda y, z: np_focal(y, z, 2.0, 0.25),
    ),
    "focal-0.5": (
        lambda y, z: cl.sparse_categorical_focal_crossentropy(y, z, gamma=0.5, from_logits=True),
        lambda y, z: np_focal(y, z, 0.5, 0.25),
    ),
    "smoothing": (
        lambda y, z: cl.sparse_label_smoothing_crossentropy(y, z, 0.1, from_logits=True),
        lambda y, z: np_smoothing(y, z, 0.1),
    ),
}


@pytest.mark.parametrize("name", LOSSES)
def test_extreme_logits_give_finite_values_and_gradients(name):
    fn, reference = LOSSES[name]
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, 1e4, 5.0], [0.0, 0.0, 1e4]], "float32")
    labels = np.array([0, 0, 1])  # right, wrong, wrong with huge margins
    value = to_np(fn(labels, logits))
    np.testing.assert_allclose(value, reference(labels, logits), rtol=1e-5)
    (g,) = grad(lambda z: keras.ops.sum(fn(labels, z)), logits)
    assert np.all(np.isfinite(g)), g


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", LOSSES)
def test_half_precision_is_finite_and_close(dtype, name):
    fn = LOSSES[name][0]
    logits32 = (RNG.normal(size=(8, 5)) * 30).astype("float32")
    labels = RNG.integers(0, 5, 8)
    half = keras.ops.cast(logits32, dtype)
    value = to_np(fn(labels, half))
    assert np.all(np.isfinite(value))
    reference = to_np(fn(labels, to_np(keras.ops.cast(half, "float32"))))
    np.testing.assert_allclose(value, reference, rtol=1e-5, atol=1e-5)
    (g,) = grad(lambda z: keras.ops.sum(fn(labels, z)), to_np(keras.ops.cast(half, "float32")))
    assert np.all(np.isfinite(g))


@pytest.mark.parametrize(
    "loss",
    [
        cl.SparseCategoricalFocalCrossentropy(gamma=1.0, alpha=[0.2, 0.8], from_logits=True),
        cl.SparseLabelSmoothingCrossentropy(0.2, from_logits=True, reduction="sum"),
    ],
)
def test_config_round_trip(loss):
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    logits = RNG.normal(size=(4, 2)).astype("float32")
    labels = np.array([0, 1, 1, 0])
    np.testing.assert_allclose(to_np(restored(labels, logits)), to_np(loss(labels, logits)))


@pytest.mark.parametrize(
    "labels,logits,message",
    [
        (np.array([0, 3]), np.zeros((2, 3)), r"`y_true` must be < num_classes=3; got a label 3"),
        (np.array([0, -1]), np.zeros((2, 3)), r"`y_true` must be >= 0; got a label -1"),
        (np.array([0.5, 1.0]), np.zeros((2, 3)), r"integer class ids; got float values such as 0.5"),
        (np.eye(3)[[0, 1]], np.zeros((2, 3)), r"shape \(batch,\) or \(batch, 1\); got shape \(2, 3\)"),
        (np.array([0, 1]), np.zeros((2, 3, 1)), r"`y_pred` must have shape \(batch, num_classes\)"),
    ],
)
@pytest.mark.parametrize("fn", [cl.sparse_categorical_focal_crossentropy, cl.sparse_label_smoothing_crossentropy])
def test_bad_input_is_a_clear_value_error(fn, labels, logits, message):
    with pytest.raises(ValueError, match=message):
        fn(labels, logits.astype("float32"), from_logits=True)


def test_bad_hyperparameters():
    with pytest.raises(ValueError, match=r"`alpha` must be in \[0.0, 1.0\]; got 1.5"):
        cl.SparseCategoricalFocalCrossentropy(alpha=1.5)
    with pytest.raises(ValueError, match=r"`gamma` must be in \[0.0, inf\]; got -1"):
        cl.SparseCategoricalFocalCrossentropy(gamma=-1)
    with pytest.raises(ValueError, match=r"`label_smoothing` must be in \[0.0, 1.0\]"):
        cl.SparseLabelSmoothingCrossentropy(2.0)
    with pytest.raises(ValueError, match=r"`alpha` must have one weight per class \(3\); got 2"):
        cl.sparse_categorical_focal_crossentropy([0], np.zeros((1, 3), "float32"), alpha=[0.5, 0.5])
