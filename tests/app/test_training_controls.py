"""The training controls of `clusterloss train`: the learning-rate schedule (per step, the
formulas written here), its value per epoch in metrics.json and TensorBoard, the optimizer
and its weight decay, augmentation (training images only, seeded), early stopping, mixed
precision, and one-line refusals."""

from __future__ import annotations

import json
import math

import keras
import numpy as np
import pytest
from helpers import BACKEND, to_np

from clusterloss import TrainingOnly, WarmupSchedule
from clusterloss.app.cli.main import main
from clusterloss.app.training import augmentation, make_optimizer

TINY = ["train", "--train-limit", "128", "--test-limit", "60", "--embedding-dim", "4",
        "--verbose", "0", "--no-evaluate"]  # fmt: skip
STEPS = 2  # 128 training rows in batches of 64


@pytest.fixture(scope="module")
def trunk_weights(tmp_path_factory) -> str:
    """A weights file of the digits trunk (the MLP): a frozen phase needs given weights."""
    from clusterloss.data import load_dataset
    from clusterloss.models.backbones import make_trunk

    path = tmp_path_factory.mktemp("weights") / "mlp.weights.h5"
    make_trunk(load_dataset("digits").input_shape, "mlp").save_weights(path)
    return str(path)


def expected_rate(step: int, peak: float, total: int, decay: str, warmup: int) -> float:
    """The learning rate of step `step` (0-based), written out from the docs."""
    if step < warmup:
        return peak * (step + 1) / warmup
    if decay == "cosine":
        return peak * 0.5 * (1 + math.cos(math.pi * min((step - warmup) / (total - warmup), 1.0)))
    if decay == "step":
        return peak * 0.1 ** sum(step >= b * total for b in (0.5, 0.75))
    return peak


@pytest.mark.parametrize("decay", ["constant", "cosine", "step"])
@pytest.mark.parametrize("warmup", [0, 5])
def test_schedule_per_step_is_the_formula(decay, warmup):
    schedule = WarmupSchedule(0.3, 40, decay, warmup_steps=warmup)
    for step in range(45):
        assert float(to_np(schedule(step))) == pytest.approx(
            expected_rate(step, 0.3, 40, decay, warmup), rel=1e-5, abs=1e-7
        ), step
    shifted = WarmupSchedule(0.3, 40, decay, warmup_steps=warmup, offset=7)
    assert float(to_np(shifted(3))) == pytest.approx(expected_rate(10, 0.3, 40, decay, warmup), rel=1e-5, abs=1e-7)
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(shifted))
    assert isinstance(again, WarmupSchedule) and again.get_config() == shifted.get_config()


def test_schedule_refuses_bad_values():
    with pytest.raises(ValueError, match=r"`warmup_steps` must be < `total_steps` \(10\); got 10"):
        WarmupSchedule(0.1, 10, warmup_steps=10)
    with pytest.raises(ValueError, match="`decay` must be one of"):
        WarmupSchedule(0.1, 10, "linear")
    with pytest.raises(ValueError, match="`boundaries` must be increasing"):
        WarmupSchedule(0.1, 10, "step", boundaries=(0.75, 0.5))


def is_a(optimizer, kind) -> bool:
    """`kind` itself, not a subclass (AdamW is an Adam); the torch backend swaps in its own
    subclass of the same name."""
    return isinstance(optimizer, kind) and type(optimizer).__name__ == kind.__name__


@pytest.mark.parametrize(
    ("name", "kind", "decay"),
    [
        ("adam", keras.optimizers.Adam, None),
        ("adamw", keras.optimizers.AdamW, 0.01),
        ("sgd", keras.optimizers.SGD, 0.01),
    ],
)
def test_optimizer_choice(name, kind, decay):
    optimizer = make_optimizer(name, 0.1, decay or 0.0)
    assert is_a(optimizer, kind) and optimizer.weight_decay == decay
    if name == "sgd":
        assert optimizer.momentum == 0.9


def test_schedule_and_optimizer_in_a_run(tmp_path, trunk_weights):
    """cosine with a one-epoch warm-up, across a frozen first epoch (a new optimizer that
    continues the schedule): the logged learning rate at each epoch's end is the formula at
    step epochs x steps; the saved model's optimizer is AdamW with the schedule."""
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "4", "--out", str(out), "--optimizer", "adamw",
                 "--lr-schedule", "cosine", "--warmup-epochs", "1", "--learning-rate", "0.02",
                 "--freeze-backbone-epochs", "1", "--weights", trunk_weights, "--tensorboard"]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["config"]["weight_decay"] == 0.004  # AdamW's default, recorded
    expected = [expected_rate(e * STEPS, 0.02, 4 * STEPS, "cosine", STEPS) for e in (1, 2, 3, 4)]
    np.testing.assert_allclose(metrics["history"]["learning_rate"], expected, rtol=1e-5, atol=1e-9)
    model = keras.saving.load_model(out / "model.keras")
    optimizer = model.optimizer
    assert is_a(optimizer, keras.optimizers.AdamW) and optimizer.weight_decay == 0.004
    schedule = optimizer._learning_rate
    assert isinstance(schedule, WarmupSchedule)
    assert (schedule.decay, schedule.warmup_steps, schedule.offset) == ("cosine", STEPS, STEPS)
    if BACKEND == "tensorflow":  # TensorFlow's own reader of the event file
        import tensorflow as tf

        (path,) = (out / "logs" / "train").iterdir()
        found = [
            v.simple_value
            for e in tf.compat.v1.train.summary_iterator(str(path))
            for v in e.summary.value
            if v.tag == "epoch_learning_rate"
        ]
        np.testing.assert_allclose(found, expected, rtol=1e-5, atol=1e-9)


def test_patience_stops_and_counts_across_the_frozen_phase(tmp_path, trunk_weights):
    """With a learning rate of 1e-12 the validation MAP@R never improves after epoch 1:
    patience 2 stops at the end of epoch 3, although epoch 1 was a phase of its own."""
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "6", "--out", str(out), "--optimizer", "sgd",
                 "--learning-rate", "1e-12", "--val-split", "0.2", "--patience", "2",
                 "--freeze-backbone-epochs", "1", "--weights", trunk_weights]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    values = metrics["history"]["val_map_at_r"]
    assert len(values) == 3 and len(set(values)) == 1
    assert metrics["stopped_epoch"] == 3 and metrics["best_epoch"] == 3


def test_augmentation_is_seeded_and_only_in_training():
    images = np.random.default_rng(0).random((16, 12, 12, 3)).astype("float32")
    a, b, other = (
        augmentation("crop-flip-color", 3),
        augmentation("crop-flip-color", 3),
        augmentation("crop-flip-color", 4),
    )
    first = to_np(a(images, training=True))
    assert not np.allclose(first, images) and first.shape == images.shape
    np.testing.assert_array_equal(to_np(b(images, training=True)), first)  # same seed
    assert not np.allclose(to_np(other(images, training=True)), first)
    assert not np.allclose(to_np(a(images, training=True)), first)  # a new draw each batch
    changed = np.abs(first - images).reshape(16, -1).max(1) > 1e-3
    assert changed.all()  # every image on its own (at least the colour jitter)
    np.testing.assert_array_equal(to_np(a(images, training=False)), images)
    only = TrainingOnly(augmentation("crop-flip-color", 3))  # Keras's layers augment without `training`
    np.testing.assert_array_equal(to_np(only(images)), images)
    np.testing.assert_array_equal(to_np(only(images, training=False)), images)
    np.testing.assert_array_equal(to_np(only(images, training=True)), first)


def test_augmented_run_embeds_validation_and_test_images_unchanged(tmp_path):
    out = tmp_path / "run"
    assert (
        main([*TINY, "--epochs", "1", "--out", str(out), "--augment", "flip", "--val-split", "0.2"]) == 0
    )  # crop-flip-color: in the resume test
    model = keras.saving.load_model(out / "model.keras")
    outer = model.backbone
    inner = next(layer for layer in outer.layers if isinstance(layer, keras.Model))
    images = np.random.default_rng(1).random((8, 8, 8, 1)).astype("float32")
    np.testing.assert_allclose(to_np(model.embed(images)), to_np(inner(images)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(to_np(outer(images)), to_np(inner(images)), rtol=1e-5, atol=1e-6)
    assert not np.allclose(to_np(outer(images, training=True)), to_np(inner(images)))
    saved = np.load(out / "embeddings.npz")
    from clusterloss.app.config import TrainConfig

    data = TrainConfig(train_limit=128, test_limit=60, val_split=0.2).load_data()
    np.testing.assert_allclose(saved["test"], to_np(inner(data.x_test)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["float16", "bfloat16"])
def test_mixed_precision_trains_with_half_compute(tmp_path, mode):
    out = tmp_path / "run"
    assert main([*TINY, "--epochs", "1", "--out", str(out), "--mixed-precision", mode]) == 0
    assert keras.config.dtype_policy().name == "float32"  # restored after the run
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(math.isfinite(v) for v in metrics["history"]["loss"])
    model = keras.saving.load_model(out / "model.keras")
    dense = [layer for layer in model._flatten_layers() if isinstance(layer, keras.layers.Dense)]
    assert dense and all(d.compute_dtype == mode and d.variable_dtype == "float32" for d in dense)
    if mode == "float16":  # Keras's compile wraps the optimizer for the mixed_float16 policy
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    embeddings = model.embed(np.zeros((2, 8, 8, 1), "float32"))
    assert keras.backend.standardize_dtype(embeddings.dtype) == "float32"


class Interrupt(keras.callbacks.Callback):
    """Ctrl-C after epoch 2's checkpoint is written."""

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_interrupted_run_resumes_with_the_same_schedule_augmentation_and_patience(tmp_path, capsys, trunk_weights):
    """Interrupted inside the unfrozen phase and resumed: the same history as an
    uninterrupted run (the schedule's step, the augmentation draws, the patience count)."""
    from clusterloss.app.cli.args import config_from_args
    from clusterloss.app.cli.main import build_parser
    from clusterloss.app.runs import train

    argv = [*TINY, "--epochs", "4", "--val-split", "0.2", "--optimizer", "sgd",
            "--lr-schedule", "step", "--warmup-epochs", "1", "--augment", "crop-flip-color",
            "--freeze-backbone-epochs", "1", "--weights", trunk_weights, "--patience", "3"]  # fmt: skip
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    assert main([*argv, "--out", str(whole)]) == 0
    args = build_parser().parse_args([*argv, "--out", str(resumed)])
    with pytest.raises(KeyboardInterrupt):
        train(config_from_args(args, args.loss, args.seed, args.out), callbacks=[Interrupt()])
    with pytest.raises(SystemExit):  # a changed control is refused, naming it
        main([*argv, "--out", str(resumed), "--resume", "--lr-schedule", "cosine"])
    assert "lr_schedule 'step' (now 'cosine')" in capsys.readouterr().err
    assert main([*argv, "--out", str(resumed), "--resume"]) == 0
    a, b = (json.loads((run / "metrics.json").read_text()) for run in (resumed, whole))
    assert set(a["history"]) == set(b["history"]) and "learning_rate" in a["history"]
    for key, values in b["history"].items():
        np.testing.assert_allclose(a["history"][key], values, rtol=1e-6, atol=1e-7, err_msg=key)
    assert a["stopped_epoch"] == b["stopped_epoch"] and a["best_epoch"] == b["best_epoch"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--optimizer", "rmsprop"], "argument --optimizer: invalid choice: 'rmsprop'"),
        (["--weight-decay", "-1"], "argument --weight-decay: must be >= 0; got -1"),
        (["--learning-rate", "nan"], "argument --learning-rate: expected a finite number; got 'nan'"),
        (["--lr-schedule", "linear"], "argument --lr-schedule: invalid choice: 'linear'"),
        (["--mixed-precision", "float8"], "argument --mixed-precision: invalid choice: 'float8'"),
        (["--augment", "rotate"], "argument --augment: invalid choice: 'rotate'"),
        (
            ["--patience", "2"],
            "--patience stops on validation MAP@R, and digits has no validation split: set --val-split (e.g. 0.1)",
        ),
        (["--epochs", "2", "--warmup-epochs", "2"], "--warmup-epochs must be < --epochs (2); got 2."),
    ],
)
def test_bad_values_are_one_line(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, "--out", str(tmp_path / "run"), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert message in err


def test_augment_refuses_feature_vectors(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "vectors.npz", x=rng.random((60, 5)).astype("float32"), y=np.arange(60) % 3)
    with pytest.raises(SystemExit) as exit_info:
        main([*TINY, "--data", str(tmp_path / "vectors.npz"), "--out", str(tmp_path / "run"), "--augment", "flip"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--augment flip needs images; vectors.npz holds feature vectors of shape (5,)" in err
