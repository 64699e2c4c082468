"""CenterLoss layer: Eq. 4 against a NumPy loop, loss values, gradients, bad input."""

import keras
import numpy as np
import pytest
from helpers import grad, to_np

import clusterloss as cl

RNG = np.random.default_rng(1)


def eq4_numpy(centers, x, labels, alpha):
    """Eq. 4 of Wen et al. written as the paper states it, one class at a time."""
    new = centers.astype("float64").copy()
    for j in range(len(centers)):
        members = [i for i in range(len(x)) if labels[i] == j]
        delta = sum((centers[j] - x[i] for i in members), np.zeros(centers.shape[1]))
        new[j] = centers[j] - alpha * delta / (1 + len(members))
    return new


def make_layer(num_classes=4, dim=3, **kwargs):
    layer = cl.CenterLoss(num_classes, **kwargs)
    layer.build((None, dim))
    layer.centers.assign(RNG.normal(size=(num_classes, dim)).astype("float32"))
    return layer


def test_eq4_update_matches_numpy_loop_with_repeated_labels():
    layer = make_layer(alpha=0.6)
    before = to_np(layer.centers)
    x = RNG.normal(size=(9, 3)).astype("float32")
    labels = np.array([0, 0, 0, 2, 2, 1, 0, 2, 2])  # class 3 absent: its center must not move
    layer(x, labels, training=True)
    np.testing.assert_allclose(to_np(layer.centers), eq4_numpy(before, x, labels, 0.6), rtol=1e-5)
    np.testing.assert_array_equal(to_np(layer.centers)[3], before[3])


def test_inference_call_does_not_move_centers():
    layer = make_layer()
    before = to_np(layer.centers)
    layer(RNG.normal(size=(5, 3)).astype("float32"), np.array([0, 1, 2, 3, 0]), training=False)
    np.testing.assert_array_equal(to_np(layer.centers), before)


def test_centers_converge_to_class_means_for_fixed_features():
    layer = make_layer(alpha=0.5)
    x = RNG.normal(size=(40, 3)).astype("float32") + np.repeat(np.eye(4, 3) * 5, 10, axis=0)
    labels = np.repeat(np.arange(4), 10)
    for _ in range(60):
        layer(x, labels, training=True)
    means = np.stack([x[labels == j].mean(axis=0) for j in range(4)])
    np.testing.assert_allclose(to_np(layer.centers), means, atol=1e-4)


@pytest.mark.parametrize("update", ["paper", "gradient"])
def test_loss_value_is_lambda_times_half_squared_distance(update):
    layer = make_layer(weight=0.3, update=update)
    centers = to_np(layer.centers)
    x = RNG.normal(size=(6, 3)).astype("float32")
    labels = np.array([0, 1, 1, 3, 2, 0])
    expected = [0.3 * 0.5 * np.sum((x[i] - centers[labels[i]]) ** 2) for i in range(6)]
    np.testing.assert_allclose(to_np(layer(x, labels)), expected, rtol=1e-5)


def test_gradient_update_scales_features_not_centers():
    """Features get lambda * (x - c) / B; centers get the unscaled -(sum (x - c)) / B."""
    layer = make_layer(weight=0.25, update="gradient")
    x = RNG.normal(size=(5, 3)).astype("float32")
    labels = np.array([0, 0, 1, 2, 2])
    centers = to_np(layer.centers)

    if keras.backend.backend() == "jax":
        # JAX differentiates pure functions: run the layer statelessly on given centers.
        def total(xx, cc):
            out, _ = layer.stateless_call([cc], [layer._lambda.value], xx, labels)
            return keras.ops.mean(out)

        gx, gc = grad(total, x, centers)
    elif keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        xv = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = keras.ops.mean(layer(xv, labels))
        gx, gc = [tf.convert_to_tensor(g).numpy() for g in tape.gradient(value, [xv, layer.centers.value])]
    else:
        import torch

        xv = torch.tensor(x, requires_grad=True)
        keras.ops.mean(layer(xv, labels)).backward()
        gx, gc = xv.grad.numpy(), layer.centers.value.grad.numpy()
    diff = x - centers[labels]
    np.testing.assert_allclose(gx, 0.25 * diff / 5, rtol=1e-5)
    expected_gc = np.zeros_like(centers)
    for i, j in enumerate(labels):
        expected_gc[j] -= diff[i] / 5
    np.testing.assert_allclose(gc, expected_gc, rtol=1e-5, atol=1e-7)


def test_half_precision_features():
    layer = make_layer()
    x = keras.ops.cast(RNG.normal(size=(4, 3)) * 100, "float16")
    value = to_np(layer(x, np.array([0, 1, 2, 3]), training=True))
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(to_np(layer.centers)))


def test_weight_setter_and_config_round_trip():
    layer = cl.CenterLoss(5, weight=0.2, alpha=0.3, update="gradient", name="c")
    restored = cl.CenterLoss.from_config(layer.get_config())
    assert restored.get_config() == layer.get_config()
    layer.build((None, 2))
    layer.weight = 0.7
    assert layer.weight == pytest.approx(0.7)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"alpha": 1.5}, r"`alpha` must be in \[0.0, 1.0\]; got 1.5"),
        ({"alpha": -0.1}, r"`alpha` must be in \[0.0, 1.0\]; got -0.1"),
        ({"weight": -1.0}, r"`weight` must be in \[0.0, inf\]; got -1.0"),
        ({"update": "sgd"}, r"`update` must be one of \['gradient', 'paper'\]; got 'sgd'"),
        ({"num_classes": 0}, r"`num_classes` must be an int >= 1; got 0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        cl.CenterLoss(**{"num_classes": 3, **kwargs})


@pytest.mark.parametrize(
    "x,labels,message",
    [
        (np.zeros((2, 3)), [0, 4], r"`labels` must be < num_classes=4; got a label 4"),
        (np.zeros((2, 3)), [0, -2], r"`labels` must be >= 0; got a label -2"),
        (np.zeros((2, 3)), [0, 2**32 + 1], r"`labels` must be < num_classes=4; got a label 4294967297"),
        (np.zeros((2, 3)), [0.0, 1.5], r"integer class ids; got float values such as 1.5"),
        (np.zeros((2, 3, 1)), [0, 1], r"`embeddings` must have shape \(batch, dim\); got shape"),
        (np.zeros((3, 3)), [0, 1], r"same batch size; got 2 and 3"),
        (np.zeros((2, 3)), np.eye(2), r"one-hot labels"),
    ],
)
def test_bad_call_input(x, labels, message):
    """NumPy labels are checked on the host, before they become (int32 on JAX) tensors."""
    layer = make_layer()
    with pytest.raises(ValueError, match=message):
        layer(x.astype("float32"), np.asarray(labels))


@pytest.mark.parametrize("update", ["paper", "gradient"])
@pytest.mark.parametrize("labels", [[0, 4], [0, -2], [0.0, 1.5], [0, 2**32 + 1]], ids=["4", "-2", "1.5", "2**32+1"])
def test_labels_out_of_range_give_nan_and_leave_centers(labels, update):
    """Tensor labels (a train step) are not read on the host: bad labels make the loss NaN
    (so TerminateOnNaN stops training) and the centers do not move."""
    if labels[1] == 2**32 + 1 and keras.backend.backend() == "jax":
        pytest.skip("a JAX tensor cannot hold 2**32 + 1 (int32): fit checks it on the host")
    layer = make_layer(update=update)
    before = to_np(layer.centers)
    dtype = "float32" if isinstance(labels[1], float) else "int64"
    labels = keras.ops.convert_to_tensor(np.array(labels, dtype))
    value = to_np(layer(np.ones((2, 3), "float32"), labels, training=True))
    assert np.isnan(value).all()
    np.testing.assert_array_equal(to_np(layer.centers), before)
