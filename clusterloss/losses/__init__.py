"""Losses: each a plain function and a `keras.losses.Loss` class, registered for saving."""

from clusterloss.losses.classification import (
    SparseCategoricalFocalCrossentropy,
    SparseLabelSmoothingCrossentropy,
    sparse_categorical_focal_crossentropy,
    sparse_label_smoothing_crossentropy,
)

__all__ = [
    "SparseCategoricalFocalCrossentropy",
    "SparseLabelSmoothingCrossentropy",
    "sparse_categorical_focal_crossentropy",
    "sparse_label_smoothing_crossentropy",
]
