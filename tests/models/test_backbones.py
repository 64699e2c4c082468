"""Backbones: the feature layer, ImageNet preprocessing, keras.applications trunks with
`--weights none` and a local weights file, and frozen-then-unfrozen training."""

from __future__ import annotations

import math

import keras
import numpy as np
import pytest
from helpers import BACKEND
from synthetic import make_image_folder

from clusterloss.app import runs
from clusterloss.app.cli.args import config_from_args
from clusterloss.app.cli.main import build_parser, main
from clusterloss.app.runs import train
from clusterloss.models.backbones import APPLICATIONS, ImageNetPreprocessing, make_backbone, settle_batch_norm

# The training tests use the minimalistic MobileNetV3Small (the smallest application; on JAX
# every distinct weight shape compiles its initializer once per process, ~20 s for the full one).
MINIMAL = ("MobileNetV3Small", "pixels", {"minimalistic": True})


def network_of(backbone):
    return backbone.get_layer("trunk").layers[-1]  # the keras.applications model


def test_feature_layer_is_linear_by_default_and_prelu_starts_at_a_quarter():
    keras.utils.set_random_seed(0)
    x = np.random.default_rng(0).normal(size=(64, 28, 28, 1)).astype("float32")
    linear = make_backbone((28, 28, 1), 32, "cnn")  # 32 dims: each one's sign is a coin
    assert [layer.name for layer in linear.layers][-1] == "features"
    assert (linear.predict(x, verbose=0) < 0).mean() > 0.2  # not confined to an orthant
    prelu = make_backbone((28, 28, 1), 2, "cnn", feature="prelu", batch_norm=True)
    assert [layer.name for layer in prelu.layers][-2:] == ["features_bn", "features_prelu"]
    np.testing.assert_allclose(keras.ops.convert_to_numpy(prelu.get_layer("features_prelu").alpha), 0.25)
    with pytest.raises(ValueError, match=r"`feature` must be one of \['linear', 'prelu'\]; got 'relu'"):
        make_backbone((28, 28, 1), 2, feature="relu")


def test_imagenet_preprocessing_matches_keras():
    rng = np.random.default_rng(0)
    images = rng.uniform(size=(2, 4, 5, 3)).astype("float32")
    caffe = keras.applications.resnet50.preprocess_input(images * 255.0)
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ImageNetPreprocessing("caffe")(images)), caffe, rtol=1e-5, atol=1e-3
    )
    gray = images[..., :1]
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(ImageNetPreprocessing("pixels")(gray)),
        np.repeat(gray, 3, axis=-1) * 255.0,
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match="needs images of at least 32x32"):
        make_backbone((16, 16, 3), 4, "mobilenetv3small")


def test_settle_batch_norm_lowers_only_momenta_too_slow_for_the_steps():
    """exp(-10 / steps): after `steps` updates the initial statistics weigh e**-10."""
    inner = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.999, name="slow")])
    model = keras.Sequential([keras.Input((4,)), inner, keras.layers.BatchNormalization(momentum=0.5, name="fast")])
    assert settle_batch_norm(model, 54) == pytest.approx({"slow": 0.830950}, rel=1e-5)  # exp(-10 / 54)
    assert inner.layers[0].momentum ** 54 == pytest.approx(math.exp(-10))
    assert model.get_layer("fast").momentum == 0.5
    assert settle_batch_norm(model, 100_000) == {}  # a long run keeps what it has
    with pytest.raises(ValueError, match="`steps` must be a positive int; got 0"):
        settle_batch_norm(model, 0)


class Snapshots(keras.callbacks.Callback):
    """The trunk network's and the features layer's weights at the end of each epoch."""

    def __init__(self):
        super().__init__()
        self.trunk, self.features = [], []

    def on_epoch_end(self, epoch, logs=None):
        backbone = self.model.backbone
        self.trunk.append([np.array(w) for w in network_of(backbone).get_weights()])
        self.features.append(np.array(backbone.get_layer("features").get_weights()[0]))


def test_local_weights_then_frozen_then_unfrozen(tmp_path, monkeypatch):
    """MobileNetV3Small from a weights file made here, through the command line's settings:
    the first epoch moves only the embedding layer and head, the second the trunk too.
    (3 classes x 10 images of 32x32: 24 for training in batches of 8, so one compiled step
    shape per phase.)"""
    make_image_folder(tmp_path / "photos", classes=3, per_class=10, size=32)
    monkeypatch.setitem(APPLICATIONS, "mobilenetv3small", MINIMAL)
    keras.utils.set_random_seed(123)
    network = keras.applications.MobileNetV3Small(
        include_top=False, weights=None, input_shape=(32, 32, 3), pooling="avg", minimalistic=True
    )
    path = tmp_path / "mobilenet.weights.h5"
    network.save_weights(path)
    saved = [np.array(w) for w in network.get_weights()]
    out = str(tmp_path / "run")
    args = build_parser().parse_args([
        "train", "--data", str(tmp_path / "photos"), "--backbone", "mobilenetv3small",
        "--weights", str(path), "--image-size", "32", "--loss", "softmax", "--epochs", "2",
        "--freeze-backbone-epochs", "1", "--batch-size", "8", "--val-split", "0",
        "--embedding-dim", "8", "--verbose", "0", "--no-evaluate", "--out", out,
    ])  # fmt: skip
    config = config_from_args(args, "softmax", 0, out)
    snapshots = Snapshots()
    metrics = train(config, callbacks=[snapshots])
    assert metrics["num_train"] == 24 and metrics["config"]["weights"] == str(path)
    frozen, unfrozen = snapshots.trunk
    assert all(np.array_equal(a, b) for a, b in zip(frozen, saved))  # loaded, then frozen
    assert any(not np.allclose(a, b) for a, b in zip(unfrozen, saved))  # then fine-tuned
    assert not np.allclose(snapshots.features[0], snapshots.features[1])  # trained throughout
    loaded = keras.saving.load_model(tmp_path / "run" / "model.keras")  # preprocessing registered
    assert loaded.backbone.input_shape == (None, 32, 32, 3)
    # BatchNormalization settles within the 3 unfrozen steps: momentum exp(-10 / 3), not 0.999
    norms = [
        layer for layer in network_of(loaded.backbone).layers if isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert norms and all(layer.momentum == pytest.approx(math.exp(-10 / 3)) for layer in norms)


@pytest.mark.skipif(
    BACKEND != "tensorflow",
    reason="the same Keras graph and weights files on every "
    "backend; built on the TensorFlow pass (JAX compiles each initializer shape: ~60 s)",
)
@pytest.mark.parametrize("kind,width", [("resnet50", 2048), ("efficientnetv2b0", 1280), ("mobilenetv3small", 576)])
def test_each_application_builds_and_loads_a_local_weights_file(kind, width, tmp_path):
    """What docs/cli.md shows: a network's `save_weights` file (saved at another image size)
    is `--weights FILE` of its trunk, grayscale input included."""
    keras.utils.set_random_seed(1)
    network = getattr(keras.applications, APPLICATIONS[kind][0])(
        include_top=False, weights=None, input_shape=(48, 48, 3), pooling="avg"
    )
    path = tmp_path / f"{kind}.weights.h5"
    network.save_weights(path)
    keras.utils.set_random_seed(2)  # another random start, which the file replaces
    backbone = make_backbone((32, 32, 1), 16, kind, weights=str(path))
    assert network_of(backbone).output_shape == (None, width)
    assert backbone.output_shape == (None, 16) and backbone.input_shape == (None, 32, 32, 1)
    loaded, saved = network_of(backbone).get_weights(), network.get_weights()
    assert len(loaded) == len(saved) > 50
    assert all(np.array_equal(a, b) for a, b in zip(loaded, saved))


def test_a_random_application_trunk_is_warned_about_and_not_frozen(tmp_path, monkeypatch, capsys):
    """`--weights none` on a keras.applications trunk: one warning line at the start; with
    `--freeze-backbone-epochs`, one error line, exit 2, nothing written."""
    make_image_folder(tmp_path / "photos", classes=2, per_class=4, size=8)
    command = ["train", "--data", str(tmp_path / "photos"), "--backbone", "mobilenetv3small",
               "--epochs", "2", "--out", str(tmp_path / "run")]  # fmt: skip
    with pytest.raises(SystemExit) as exited:
        main([*command, "--freeze-backbone-epochs", "1"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and not (tmp_path / "run").exists()
    assert err.splitlines() == [
        "clusterloss train: error: --freeze-backbone-epochs 1 would freeze a randomly initialised "
        "trunk (--weights none): pass --weights imagenet or a weights file, or drop "
        "--freeze-backbone-epochs"
    ]

    def stop(*args):  # what comes before training only
        raise runs.RunError("stopped before training")

    monkeypatch.setattr(runs, "_train", stop)
    with pytest.raises(SystemExit):
        main(command)
    assert capsys.readouterr().err.splitlines() == [
        runs.RANDOM_TRUNK.format("mobilenetv3small"),
        "clusterloss train: error: stopped before training",
    ]
    assert "lower accuracy" in runs.RANDOM_TRUNK and "--weights imagenet" in runs.RANDOM_TRUNK
