"""The training controls of `clusterloss train` and the Keras objects behind them: the
optimizer with its weight decay and learning-rate schedule, augmentation of training images,
early stopping on the validation retrieval metric, mixed precision, and the learning rate in
each epoch's logs."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import keras
from keras import layers

from clusterloss.layers import TrainingOnly
from clusterloss.optimizers import WarmupSchedule

OPTIMIZERS = ("adam", "adamw", "sgd")
SGD_MOMENTUM = 0.9
SCHEDULES = WarmupSchedule.DECAYS
AUGMENTATIONS = ("none", "flip", "crop-flip", "crop-flip-color")
PRECISIONS = ("none", "float16", "bfloat16")
CROP = 0.2  # "crop": zoom in by up to 20% (a crop of 80-100% of each side) ...
SHIFT = 0.1  # ... moved by up to 10% of the side
JITTER = 0.2  # "color": brightness and contrast factors


def default_weight_decay(optimizer: str) -> float:
    """AdamW's own default (Keras's `AdamW(weight_decay=...)`) for adamw, else 0 (off)."""
    if optimizer == "adamw":
        return float(inspect.signature(keras.optimizers.AdamW).parameters["weight_decay"].default)
    return 0.0


def make_optimizer(
    name: str, learning_rate: float | keras.optimizers.schedules.LearningRateSchedule, weight_decay: float
) -> keras.optimizers.Optimizer:
    """`adam`, `adamw` or `sgd` (momentum 0.9). Keras applies `weight_decay` the same
    decoupled way in each (`w -= learning_rate * weight_decay * w` every step); 0 is off."""
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    decay = weight_decay or None
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, weight_decay=decay)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=SGD_MOMENTUM, weight_decay=decay)
    raise ValueError(f"`optimizer` must be one of {list(OPTIMIZERS)}; got {name!r}.")


def make_learning_rate(
    learning_rate: float, schedule: str, epochs: int, warmup_epochs: int, steps_per_epoch: int, first_epoch: int = 0
):
    """The optimizer's learning rate: a float for a constant one without warm-up, else a
    `WarmupSchedule` per step over `epochs` (`first_epoch`: where this optimizer starts)."""
    if schedule == "constant" and not warmup_epochs:
        return learning_rate
    return WarmupSchedule(
        learning_rate,
        epochs * steps_per_epoch,
        schedule,
        warmup_steps=warmup_epochs * steps_per_epoch,
        offset=first_epoch * steps_per_epoch,
    )


def augmentation(kind: str, seed: int) -> keras.Sequential:
    """The random layers of `kind` (`AUGMENTATIONS`), each seeded from `seed`:
    `flip`: `RandomFlip("horizontal")`; `crop-flip`: first `RandomZoom` (zoom in by up to
    20%) and `RandomTranslation` (up to 10%, reflected at the border), i.e. a random crop of
    80-100% of each side resized back; `crop-flip-color`: then `RandomBrightness` and
    `RandomContrast` (factor 0.2, images in [0, 1]). Each transforms every image on its own,
    whenever called without `training=False` (`wrap_backbone` puts them in `TrainingOnly`)."""
    parts: list[layers.Layer] = []
    if kind.startswith("crop"):
        parts += [layers.RandomZoom((-CROP, 0.0), seed=seed), layers.RandomTranslation(SHIFT, SHIFT, seed=seed + 1)]
    parts.append(layers.RandomFlip("horizontal", seed=seed + 2))
    if kind.endswith("color"):
        parts += [
            layers.RandomBrightness(JITTER, value_range=(0.0, 1.0), seed=seed + 3),
            layers.RandomContrast(JITTER, value_range=(0.0, 1.0), seed=seed + 4),
        ]
    return keras.Sequential(parts, name="augmentation")


def wrap_backbone(backbone: keras.Model, augment: str, seed: int, float32_output: bool) -> keras.Model:
    """`backbone` behind `augmentation(augment, seed)` (unless "none"; in training steps
    only, `TrainingOnly`), and with its
    embeddings cast to float32 (`float32_output`, for mixed precision: the model's outputs
    and what is stored stay float32)."""
    inputs = keras.Input(backbone.input_shape[1:])
    x = TrainingOnly(augmentation(augment, seed), name="augment")(inputs) if augment != "none" else inputs
    x = backbone(x)
    if float32_output:
        x = layers.Activation("linear", dtype="float32", name="float32_embeddings")(x)
    return keras.Model(inputs, x, name=backbone.name)


@contextlib.contextmanager
def precision(mode: str) -> Iterator[None]:
    """Layers made inside use `mixed_<mode>` (float32 variables, float16/bfloat16
    computations; "none": as before); the previous global policy comes back after."""
    if mode == "none":
        yield
        return
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(f"mixed_{mode}")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


class LearningRateLog(keras.callbacks.Callback):
    """Adds `learning_rate` to each epoch's logs: the learning rate of `optimizer` (the one
    the run scheduled, inside any wrapper) at the epoch's end, as
    `keras.callbacks.TensorBoard` logs it. List it before the callbacks that record logs."""

    def __init__(self):
        super().__init__()
        self.optimizer: keras.optimizers.Optimizer | None = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if logs is not None and self.optimizer is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.optimizer.learning_rate))


class Patience(keras.callbacks.EarlyStopping):
    """`EarlyStopping` on `monitor` (higher is better) that counts across `fit` calls (the
    phases of a run) and a resume: each `fit` begins by replaying `history` (the values
    logged so far, `None` where not evaluated). Epochs without the value are skipped
    quietly, so `patience` counts evaluations."""

    def __init__(self, monitor: str, patience: int, history: dict[str, list], verbose: int = 0):
        super().__init__(monitor, patience=patience, mode="max", verbose=verbose)
        self.history = history

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for epoch, value in enumerate(self.history.get(self.monitor, [])):
            self.on_epoch_end(epoch, {self.monitor: value})

    def on_epoch_end(self, epoch, logs=None):
        if (logs or {}).get(self.monitor) is not None:
            super().on_epoch_end(epoch, logs)

    @property
    def stopped(self) -> int | None:
        """The epoch (1-based) at whose end it stopped training, or None."""
        return self.stopped_epoch + 1 if self.stopped_epoch else None
