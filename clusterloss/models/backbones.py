"""Small backbones for the command line and the benchmarks."""

from __future__ import annotations

import keras
from keras import layers


def make_backbone(
    input_shape: tuple[int, ...], embedding_dim: int, kind: str = "auto"
) -> keras.Model:
    """A backbone `images -> (batch, embedding_dim)` features.

    `"mlp"`: two hidden ReLU layers (default for inputs up to 16x16, e.g. 8x8 digits).
    `"cnn"`: three stages of a 3x3 convolution (32, 64, 128 filters) with PReLU and max
    pooling, a CPU-sized cousin of the center-loss paper's LeNets++ (default for larger images).
    Both end with `Dense(embedding_dim)` + PReLU, the feature layer of the paper's Fig. 3.
    """
    if not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"`embedding_dim` must be a positive int; got {embedding_dim!r}.")
    if kind == "auto":
        kind = "mlp" if input_shape[0] * input_shape[1] <= 256 else "cnn"
    inputs = keras.Input(input_shape)
    if kind == "mlp":
        x = layers.Flatten()(inputs)
        x = layers.Dense(256, activation="relu")(x)
        x = layers.Dense(128, activation="relu")(x)
    elif kind == "cnn":
        x = inputs
        for filters in (32, 64, 128):
            x = layers.Conv2D(filters, 3, padding="same")(x)
            x = layers.PReLU(shared_axes=[1, 2])(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
    else:
        raise ValueError(f"`kind` must be one of ['auto', 'cnn', 'mlp']; got {kind!r}.")
    x = layers.Dense(embedding_dim, name="features")(x)
    outputs = layers.PReLU(name="features_prelu")(x)
    return keras.Model(inputs, outputs, name=f"{kind}_backbone")
