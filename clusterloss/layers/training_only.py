"""`TrainingOnly(layer)`: a layer that acts in training steps only (e.g. augmentation)."""

from __future__ import annotations

from typing import Any

import keras

from clusterloss._registry import register


@register
class TrainingOnly(keras.layers.Layer):
    """Applies `layer` (which keeps the shape of its input) only when called with
    `training=True`, as `fit`'s training steps do; every other call passes the input
    through, also one without `training` (a direct `model(x)`, an exported model's serving
    function). Keras's random image layers (`RandomFlip`, `RandomZoom`, ...) transform
    whenever `training` is not given, so a model that augments inside must wrap them:
    `TrainingOnly(keras.Sequential([keras.layers.RandomFlip(seed=0), ...]))`."""

    def __init__(self, layer: keras.layers.Layer, **kwargs):
        super().__init__(**kwargs)
        self.layer = layer

    def build(self, input_shape):
        self.layer.build(input_shape)

    def call(self, inputs, training=None):
        return self.layer(inputs, training=True) if training else inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "layer": keras.saving.serialize_keras_object(self.layer)}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TrainingOnly:
        config = dict(config)
        config["layer"] = keras.saving.deserialize_keras_object(config["layer"])
        return cls(**config)
