"""Backbones `inputs -> (batch, embedding_dim)`: a trunk (small MLP or CNN, or a
`keras.applications` network with its own preprocessing) and the same embedding layer on
top of every trunk.

The embedding layer is `Dense(embedding_dim)`, optionally followed by `BatchNormalization`
and a feature activation:

- `"linear"` (default): nothing. Metric-learning embeddings are compared by cosine or
  distance, so they must be free to point in every direction. The former feature layer,
  Keras' `PReLU()` whose slope starts at 0 (a ReLU at first), confined every embedding to the
  positive orthant (2-D features to a half-plane) and cost the pair losses most of their
  unseen-class retrieval (docs/results.md, section 5).
- `"prelu"`: PReLU with the slope starting at 0.25, the feature layer of the center-loss
  paper's LeNets++ (Wen et al. 2016, Fig. 3), to reproduce its 2-D figures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import keras
from keras import layers, ops

from clusterloss._registry import register

SMALL = ("mlp", "cnn")
# keras.applications trunk: (constructor name, preprocessing of [0, 1] images, keyword args)
APPLICATIONS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "resnet50": ("ResNet50", "caffe", {}),
    "efficientnetv2b0": ("EfficientNetV2B0", "pixels", {}),
    "mobilenetv3small": ("MobileNetV3Small", "pixels", {}),
}
BACKBONES = SMALL + tuple(APPLICATIONS)
FEATURES = ("linear", "prelu")
PRELU_INIT = 0.25  # LeNets++'s initial PReLU slope
APPLICATION_IMAGE_SIZE = 224  # the ImageNet size the applications' weights were trained at
SMALL_IMAGE_SIZE = 64  # images of a folder for the CPU-sized CNN
MIN_APPLICATION_SIZE = 32
TRUNK = "trunk"  # the name of the trunk layer inside a backbone
# After the steps a trunk trains, its BatchNormalization's initial moving statistics weigh
# at most e**-SETTLED (4.5e-5): see `settle_batch_norm`.
SETTLED = 10.0


@register
class ImageNetPreprocessing(layers.Layer):
    """Images in [0, 1] to what a `keras.applications` network expects: `"pixels"`
    (0-255, for networks that rescale inside, e.g. EfficientNetV2, MobileNetV3) or
    `"caffe"` (0-255, RGB to BGR, minus the ImageNet channel means: ResNet50). Grayscale
    images are repeated to three channels."""

    CAFFE_MEANS = (103.939, 116.779, 123.68)  # B, G, R

    def __init__(self, mode: str = "pixels", **kwargs):
        super().__init__(**kwargs)
        if mode not in ("pixels", "caffe"):
            raise ValueError(f"`mode` must be 'pixels' or 'caffe'; got {mode!r}.")
        self.mode = mode

    def call(self, images):
        if images.shape[-1] == 1:
            images = ops.concatenate([images] * 3, axis=-1)
        pixels = images * 255.0
        if self.mode == "caffe":
            pixels = ops.flip(pixels, axis=-1) - ops.convert_to_tensor(self.CAFFE_MEANS, pixels.dtype)
        return pixels

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 3)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "mode": self.mode}


def default_image_size(kind: str) -> int:
    """The side images are resized to for a backbone kind (224 for the applications)."""
    return APPLICATION_IMAGE_SIZE if kind in APPLICATIONS else SMALL_IMAGE_SIZE


def resolve_kind(kind: str, input_shape: tuple[int, ...]) -> str:
    """`"auto"`: an MLP for feature vectors and images up to 16x16, else the CNN."""
    if kind not in ("auto", *BACKBONES):
        raise ValueError(f"`kind` must be one of {['auto', *BACKBONES]}; got {kind!r}.")
    if kind != "auto":
        return kind
    return "mlp" if len(input_shape) == 1 or input_shape[0] * input_shape[1] <= 256 else "cnn"


def make_trunk(input_shape: tuple[int, ...], kind: str = "auto", weights: str | None = None) -> keras.Model:
    """The trunk of a backbone `inputs -> (batch, features)`, named `"trunk"`.

    `"mlp"`: two hidden ReLU layers (256, 128). `"cnn"`: three stages of a 3x3 convolution
    (32, 64, 128 filters) with PReLU and max pooling, a CPU-sized cousin of LeNets++.
    `"resnet50"`, `"efficientnetv2b0"`, `"mobilenetv3small"`: the `keras.applications`
    network without its classifier, global average pooling, after `ImageNetPreprocessing`
    (images in [0, 1], grayscale or RGB, at least 32x32).

    `weights`: None (random), `"imagenet"` (applications only; downloaded once by Keras
    into `~/.keras/models`) or a weights file of this trunk (`trunk.save_weights(path)`;
    for an application, also Keras' own `*_notop.h5` files).
    """
    kind = resolve_kind(kind, input_shape)
    inputs = keras.Input(input_shape)
    if kind in APPLICATIONS:
        constructor, mode, kwargs = APPLICATIONS[kind]
        if len(input_shape) != 3 or min(input_shape[:2]) < MIN_APPLICATION_SIZE:
            raise ValueError(
                f"`{kind}` needs images of at least {MIN_APPLICATION_SIZE}x"
                f"{MIN_APPLICATION_SIZE}; got input shape {tuple(input_shape)}."
            )
        with _loading(weights):
            network = getattr(keras.applications, constructor)(
                include_top=False,
                weights=weights,
                input_shape=(*input_shape[:2], 3),
                pooling="avg",
                **kwargs,
            )
        x = network(ImageNetPreprocessing(mode, name="preprocessing")(inputs))
        return keras.Model(inputs, x, name=TRUNK)
    if weights == "imagenet":
        raise ValueError(f"`weights='imagenet'` needs a keras.applications trunk; got {kind!r}.")
    x = inputs
    if kind == "mlp":
        x = layers.Flatten()(x)
        x = layers.Dense(256, activation="relu")(x)
        x = layers.Dense(128, activation="relu")(x)
    else:
        if len(input_shape) != 3:
            raise ValueError(f"the `cnn` trunk needs images (h, w, c); got input shape {tuple(input_shape)}.")
        for filters in (32, 64, 128):
            x = layers.Conv2D(filters, 3, padding="same")(x)
            x = layers.PReLU(shared_axes=[1, 2])(x)
            x = layers.MaxPooling2D(2)(x)
        x = layers.Flatten()(x)
    trunk = keras.Model(inputs, x, name=TRUNK)
    if weights is not None:
        with _loading(weights):
            trunk.load_weights(weights)
    return trunk


def settle_batch_norm(model: keras.layers.Layer, steps: int) -> dict[str, float]:
    """Lower the momentum of every `BatchNormalization` inside `model` (nested models
    searched) so that its moving statistics settle within `steps` training steps:
    `momentum = min(momentum, exp(-SETTLED / steps))`, so the statistics it started with
    weigh at most e**-10 at the end. The applications' BatchNormalization keeps 0.999
    (MobileNetV3) of its statistics per step: after 60 steps 94 % of them are still the
    initial mean 0 and variance 1, and a randomly initialised trunk then embeds every image
    alike at inference. Long runs are untouched (0.999 from 10,000 steps on). Call it
    before the first `fit` (the momentum is read when the step is traced); returns
    `{layer name: new momentum}` of the layers changed."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"`steps` must be a positive int; got {steps!r}.")
    momentum = math.exp(-SETTLED / steps)
    changed, todo = {}, [model]
    while todo:
        layer = todo.pop()
        if isinstance(layer, layers.BatchNormalization) and layer.momentum > momentum:
            layer.momentum = changed[layer.name] = momentum
        todo += getattr(layer, "layers", [])
    return changed


@contextlib.contextmanager
def _loading(weights: str | None) -> Iterator[None]:
    """A failure to load `weights` (a damaged or foreign file; ImageNet weights that Keras
    cannot download) as one ValueError naming them. Keras raises a bare `Exception` for a
    failed download, so everything but a `KeyboardInterrupt` is caught here."""
    try:
        yield
    except Exception as error:
        if weights is None:
            raise
        text = str(error).strip()
        first = text.splitlines()[0].rstrip(":") if text else type(error).__name__
        where = (
            "ImageNet weights (Keras downloads them once into ~/.keras/models: offline?)"
            if weights == "imagenet"
            else f"{weights!r}, not weights of this trunk"
        )
        raise ValueError(f"`weights`: cannot load {where}: {first}") from None


def make_backbone(
    input_shape: tuple[int, ...],
    embedding_dim: int,
    kind: str = "auto",
    *,
    weights: str | None = None,
    feature: str = "linear",
    batch_norm: bool = False,
) -> keras.Model:
    """A backbone `inputs -> (batch, embedding_dim)`: `make_trunk(input_shape, kind,
    weights)`, then `Dense(embedding_dim)` (+ `BatchNormalization` with `batch_norm`) and the
    `feature` activation (`"linear"` or `"prelu"`; see the module docstring).
    `backbone.get_layer("trunk")` is the trunk, e.g. to freeze it while the embedding layer
    learns first."""
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"`embedding_dim` must be a positive int; got {embedding_dim!r}.")
    if feature not in FEATURES:
        raise ValueError(f"`feature` must be one of {list(FEATURES)}; got {feature!r}.")
    kind = resolve_kind(kind, input_shape)
    trunk = make_trunk(input_shape, kind, weights)
    inputs = keras.Input(input_shape)
    x = layers.Dense(embedding_dim, name="features")(trunk(inputs))
    if batch_norm:
        x = layers.BatchNormalization(name="features_bn")(x)
    if feature == "prelu":
        x = layers.PReLU(keras.initializers.Constant(PRELU_INIT), name="features_prelu")(x)
    return keras.Model(inputs, x, name=f"{kind}_backbone")
