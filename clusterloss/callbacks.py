"""Callbacks that change loss weights during training."""

from __future__ import annotations

from collections.abc import Callable

import keras


def warmup(value: float, ramp_epochs: int = 0, start_epoch: int = 0) -> Callable[[int], float]:
    """A lambda schedule: 0 before `start_epoch`, then a linear ramp to `value` over
    `ramp_epochs` epochs (0: a step), then `value`.

    `warmup(0.01, start_epoch=200)` is "lambda = 0 for the first 200 epochs, then 0.01";
    `warmup(0.01, ramp_epochs=10)` is a linear warm-up over the first 10 epochs.
    """

    def schedule(epoch: int) -> float:
        if epoch < start_epoch:
            return 0.0
        if ramp_epochs <= 0:
            return float(value)
        return float(value) * min(1.0, (epoch - start_epoch + 1) / ramp_epochs)

    return schedule


class CenterLossScheduler(keras.callbacks.Callback):
    """Sets the center loss weight lambda at the start of each epoch, like
    `keras.callbacks.LearningRateScheduler` does for the learning rate.

    Args:
        schedule: `epoch (0-based) -> lambda`, e.g. `warmup(0.01, start_epoch=5)`.
        verbose: 1 prints the value when it changes.

    The value is also logged as `center_weight`, so it shows in `History`.
    """

    def __init__(self, schedule: Callable[[int], float], verbose: int = 0):
        super().__init__()
        self.schedule = schedule
        self.verbose = verbose

    def _layer(self):
        layer = getattr(self.model, "center_loss", None)
        if layer is None:
            raise ValueError("CenterLossScheduler needs a model with a `center_loss` layer.")
        return layer

    def on_epoch_begin(self, epoch: int, logs=None) -> None:
        layer = self._layer()
        value = float(self.schedule(epoch))
        if self.verbose and value != layer.weight:
            print(f"\nEpoch {epoch + 1}: center loss weight set to {value:g}.")
        layer.weight = value

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        if logs is not None:
            logs["center_weight"] = self._layer().weight
