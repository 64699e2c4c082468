"""ClusterModel: fit(x, y) on plain labels, loss parts, lambda schedule, save/load, backends."""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from helpers import BACKEND, to_np

import clusterloss as cl

ROOT = Path(__file__).resolve().parents[2]


def digits(n=512):
    from sklearn.datasets import load_digits

    data = load_digits()
    return (data.data[:n] / 16.0).astype("float32"), data.target[:n].astype("int32")


def make_model(weight=0.1, update="paper", center=True, seed=0):
    keras.utils.set_random_seed(seed)
    backbone = keras.Sequential(
        [keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(2)],
        name="backbone",
    )
    layer = cl.CenterLoss(weight=weight, update=update, name="center_loss") if center else None
    return cl.ClusterModel(backbone, num_classes=10, center_loss=layer)


def compile_model(model, optimizer=None, **kwargs):
    model.compile(
        optimizer=optimizer or keras.optimizers.Adam(3e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        **kwargs,
    )
    return model


def test_fit_on_plain_labels_logs_every_part():
    x, y = digits()
    model = compile_model(make_model())
    history = model.fit(x, y, epochs=3, batch_size=64, verbose=0).history
    assert set(history) == {"loss", "classification_loss", "center_loss", "accuracy"}
    total = np.array(history["classification_loss"]) + np.array(history["center_loss"])
    np.testing.assert_allclose(history["loss"], total, rtol=1e-4)
    assert history["accuracy"][-1] > history["accuracy"][0]
    outputs = model.predict(x[:5], verbose=0)
    assert outputs["logits"].shape == (5, 10) and outputs["embeddings"].shape == (5, 2)
    np.testing.assert_allclose(model.embed(x[:5]), outputs["embeddings"], rtol=1e-5, atol=1e-6)


def test_lambda_zero_trains_like_plain_softmax():
    x, y = digits(256)
    preds = []
    for center in (True, False):
        model = compile_model(make_model(weight=0.0, center=center))
        model.fit(x, y, epochs=2, batch_size=32, shuffle=False, verbose=0)
        preds.append(model.predict(x, verbose=0)["logits"])
    np.testing.assert_allclose(preds[0], preds[1], rtol=1e-4, atol=1e-5)


def test_scheduler_changes_lambda_mid_training():
    x, y = digits(256)
    model = compile_model(make_model(weight=0.5))
    schedule = cl.CenterLossScheduler(cl.warmup(0.2, ramp_epochs=2, start_epoch=2))
    history = model.fit(x, y, epochs=5, batch_size=64, verbose=0, callbacks=[schedule]).history
    np.testing.assert_allclose(history["center_weight"], [0, 0, 0.1, 0.2, 0.2], rtol=1e-6)
    assert history["center_loss"][0] == 0 and history["center_loss"][1] == 0
    assert history["center_loss"][2] > 0 and history["center_loss"][4] > 0
    assert model.center_loss.weight == pytest.approx(0.2)


def test_jit_compile_moves_paper_centers():
    if BACKEND == "torch" and os.environ.get("CLUSTERLOSS_FAST_TESTS"):
        pytest.skip("torch.compile takes about a minute; CLUSTERLOSS_FAST_TESTS is set")
    x, y = digits(256)
    model = compile_model(make_model(), jit_compile=True)
    model.fit(x[:64], y[:64], epochs=1, batch_size=64, verbose=0)  # builds, moves centers once
    before = to_np(model.center_loss.centers)
    features = model.embed(x[:64])
    model.fit(x[:64], y[:64], epochs=1, batch_size=64, shuffle=False, verbose=0)
    expected = model.center_loss.eq4_update(before, features, y[:64])
    np.testing.assert_allclose(to_np(model.center_loss.centers), to_np(expected), rtol=1e-4, atol=1e-5)


def test_gradient_centers_take_their_own_sgd_step():
    x, y = digits(64)
    model = make_model(weight=0.3, update="gradient")
    compile_model(model, optimizer=cl.center_optimizer(keras.optimizers.Adam(1e-3), centers=0.5))
    model.build((None, 64))
    before = to_np(model.center_loss.centers)
    features = model.embed(x)
    model.train_on_batch(x, y)
    grad_c = np.zeros_like(before)
    for i, j in enumerate(y):
        grad_c[j] -= (features[i] - before[j]) / len(x)
    np.testing.assert_allclose(to_np(model.center_loss.centers), before - 0.5 * grad_c, rtol=1e-4, atol=1e-6)


def test_fit_rejects_bad_labels_and_backbones():
    x, y = digits(32)
    model = compile_model(make_model())
    with pytest.raises(ValueError, match=r"`y` must be < num_classes=10; got a label 10"):
        model.fit(x, np.where(y == 0, 10, y), verbose=0)
    with pytest.raises(ValueError, match=r"`y` must be integer class ids; got float values"):
        model.fit(x, y + 0.5, verbose=0)
    flat = keras.Sequential([keras.Input((64,)), keras.layers.Reshape((8, 8))])
    bad = cl.ClusterModel(flat, num_classes=10)
    with pytest.raises(ValueError, match=r"`backbone` must output embeddings of shape \(batch, dim\)"):
        bad.build((None, 64))
    with pytest.raises(ValueError, match=r"`num_classes` must be an int >= 2; got 1"):
        cl.ClusterModel(flat, num_classes=1)


@keras.saving.register_keras_serializable(package="tests")
class HalfSquaredNorm(keras.layers.Layer):
    """A stand-in per-sample loss layer: `layer(embeddings, labels, training) -> (batch,)`."""

    def call(self, embeddings, labels, training=False):
        return 0.5 * keras.ops.sum(keras.ops.square(embeddings), axis=-1)


def test_loss_layers_add_their_mean_and_show_under_their_name(tmp_path):
    x, y = digits(128)
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2)])
    model = cl.ClusterModel(backbone, loss_layers=[HalfSquaredNorm(name="norm")])
    model.compile(keras.optimizers.SGD(0.1))  # no `loss`: the loss layer is the loss
    features = model.embed(x[:32])
    logs = model.train_on_batch(x[:32], y[:32], return_dict=True)
    want = np.mean(0.5 * np.sum(features**2, axis=1))
    assert set(logs) == {"loss", "norm"}
    np.testing.assert_allclose([logs["loss"], logs["norm"]], [want, want], rtol=1e-5)

    full = make_model(weight=0.1)
    full = cl.ClusterModel(
        full.backbone, num_classes=10, center_loss=full.center_loss, loss_layers=[HalfSquaredNorm(name="norm")]
    )
    compile_model(full)
    history = full.fit(x, y, epochs=1, batch_size=64, verbose=0).history
    assert set(history) == {"loss", "classification_loss", "center_loss", "norm", "accuracy"}
    parts = sum(np.array(history[k]) for k in ("classification_loss", "center_loss", "norm"))
    np.testing.assert_allclose(history["loss"], parts, rtol=1e-4)
    full.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.loss_layers[0], HalfSquaredNorm) and loaded.loss_layers[0].name == "norm"
    np.testing.assert_allclose(
        loaded.predict(x[:8], verbose=0)["logits"], full.predict(x[:8], verbose=0)["logits"], rtol=1e-6, atol=1e-6
    )

    nothing = cl.ClusterModel(keras.Sequential([keras.Input((64,)), keras.layers.Dense(2)]))
    nothing.compile("adam")
    with pytest.raises(ValueError, match="No loss to compute"):
        nothing.fit(x, y, verbose=0)
    with pytest.raises(ValueError, match="must be unique"):
        cl.ClusterModel(backbone, loss_layers=[HalfSquaredNorm(name="n"), HalfSquaredNorm(name="n")])


def test_sample_weight_weighs_loss_layers_as_a_compiled_loss():
    # One meaning of `sample_weight` for the compiled loss and the loss layers: Keras's
    # "sum_over_batch_size", the weighted sum divided by the batch (not by the weights' sum).
    x, y = digits(16)
    weights = np.linspace(0.0, 1.0, 16).astype("float32")  # sum 8: not the batch
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((64,)), keras.layers.Dense(2)])
    model = cl.ClusterModel(backbone, num_classes=10, loss_layers=[HalfSquaredNorm(name="norm")])
    model.compile(keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    out = model.predict(x, verbose=0)
    logits = out["logits"].astype("float64")
    log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    ce = -log_p[np.arange(16), y]
    norm = 0.5 * np.sum(out["embeddings"].astype("float64") ** 2, axis=1)
    logs = model.train_on_batch(x, y, sample_weight=weights, return_dict=True)
    np.testing.assert_allclose(logs["classification_loss"], np.sum(weights * ce) / 16, rtol=1e-5)
    np.testing.assert_allclose(logs["norm"], np.sum(weights * norm) / 16, rtol=1e-5)
    np.testing.assert_allclose(logs["loss"], np.sum(weights * (ce + norm)) / 16, rtol=1e-5)


def _save_trained(tmp_path):
    x, y = digits(128)
    model = compile_model(make_model())
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    return model, x, y, path


LOAD_SCRIPT = """
import sys, json, numpy as np, keras, clusterloss
model = keras.saving.load_model(sys.argv[1])
x = np.load(sys.argv[2]); y = np.arange(len(x)) % 10
out = model.predict(x, verbose=0)
center = keras.ops.convert_to_numpy(model.center_loss(out["embeddings"], y))
np.savez(sys.argv[3], logits=out["logits"], embeddings=out["embeddings"], center=center,
         centers=keras.ops.convert_to_numpy(model.center_loss.centers))
if len(sys.argv) > 4:  # resume training here (compiled on this backend) and save again
    model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    model.save(sys.argv[4])
"""


def _load_in_fresh_process(path, x_path, out, backend, resumed=None):
    env = {**os.environ, "KERAS_BACKEND": backend}
    extra = [] if resumed is None else [str(resumed)]
    subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(path), str(x_path), str(out)] + extra,
        check=True,
        env=env,
        cwd=ROOT,
        capture_output=True,
    )
    return np.load(out)


def test_save_and_load_in_a_fresh_process_without_custom_objects(tmp_path):
    model, x, _, path = _save_trained(tmp_path)
    got = _load_in_fresh_process(path, tmp_path / "x.npy", tmp_path / "out.npz", BACKEND)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(got["logits"], expected["logits"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(got["centers"], to_np(model.center_loss.centers))


@pytest.mark.skipif(BACKEND != "jax", reason="runs once, from the JAX pass, for all three")
def test_same_values_on_every_backend_for_the_same_weights(tmp_path):
    model, x, _, path = _save_trained(tmp_path)
    outputs = model.predict(x, verbose=0)
    expected = {
        **outputs,
        "center": to_np(model.center_loss(outputs["embeddings"], np.arange(len(x)) % 10)),
        "centers": to_np(model.center_loss.centers),
    }
    for b in ("tensorflow", "torch"):
        resumed = tmp_path / "torch.keras" if b == "torch" else None
        got = _load_in_fresh_process(path, tmp_path / "x.npy", tmp_path / f"{b}.npz", b, resumed)
        for key in ("logits", "embeddings", "center", "centers"):
            np.testing.assert_allclose(got[key], expected[key], rtol=1e-5, atol=1e-5)
    # A model compiled and trained on torch resumes training here, with its optimizer state
    # (Keras 3.15 records torch's optimizer classes by their torch module; ClusterModel
    # saves their public name).
    model = keras.saving.load_model(tmp_path / "torch.keras")
    steps = int(to_np(model.optimizer.iterations))
    assert steps == 2 * 4 + 4  # 2 epochs of 4 batches here, 1 epoch on torch
    history = model.fit(x, np.arange(len(x)) % 10, batch_size=32, epochs=1, verbose=0).history
    assert np.isfinite(history["loss"]).all() and int(to_np(model.optimizer.iterations)) == steps + 4


def test_embed_of_a_few_rows_is_the_compiled_backbone_with_current_weights():
    """`embed` of up to QUICK_ROWS array rows (a compiled call, padded for JAX) equals
    `predict`, batch norm in inference mode, and follows the weights as training moves them."""
    from clusterloss.models.cluster_model import QUICK_ROWS

    inputs = keras.Input((6,))
    x = keras.layers.Dense(8)(inputs)
    x = keras.layers.BatchNormalization()(x)
    backbone = keras.Model(inputs, keras.layers.Dense(3)(x))
    model = cl.ClusterModel(backbone, num_classes=4)
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    data = np.random.default_rng(0).normal(size=(40, 6)).astype("float32")
    labels = np.arange(40) % 4
    for rows in (1, 3, QUICK_ROWS, QUICK_ROWS + 1):
        np.testing.assert_allclose(
            model.embed(data[:rows]), backbone.predict(data[:rows], verbose=0), rtol=1e-5, atol=1e-6
        )
    before = model.embed(data[:3])
    model.fit(data, labels, epochs=2, batch_size=8, verbose=0)
    after = model.embed(data[:3])
    assert np.abs(after - before).max() > 1e-3
    np.testing.assert_allclose(after, backbone.predict(data[:3], verbose=0), rtol=1e-5, atol=1e-6)
