"""Give the class centers (or any other variables) their own optimizer."""

from __future__ import annotations

import keras


def center_optimizer(
    default: keras.optimizers.Optimizer | str = "adam",
    centers: keras.optimizers.Optimizer | float = 0.5,
    pattern: str = ".*centers",
) -> keras.optimizers.MultiOptimizer:
    """A `keras.optimizers.MultiOptimizer`: `centers` for variables whose path matches
    `pattern`, `default` for the rest.

    The recipe of pytorch-center-loss that seed 004's readers ask for is
    `center_optimizer("adam", centers=0.5)`: SGD with learning rate 0.5 for the centers of a
    `CenterLoss(update="gradient")`, Adam for the network.
    """
    default = keras.optimizers.get(default)
    if not isinstance(centers, keras.optimizers.Optimizer):
        centers = keras.optimizers.SGD(learning_rate=float(centers))
    return keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(default, {pattern: centers})
    )
