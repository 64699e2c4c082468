"""The embedding model for serving without clusterloss: `serving_model` (the backbone with its
input scaling inside), `export_embeddings` (Keras's own `Model.export` of it, with
`preprocessing.json` beside it, checked against Keras in the format's runtime), and what
each format needs on each backend (`check_exportable`).

Formats, with Keras 3.15.1 (`NEEDS`): `"saved_model"` on TensorFlow and JAX (needs
TensorFlow), `"onnx"` on TensorFlow (tf2onnx, onnx), JAX (jax2onnx) and torch (onnx),
`"litert"` (`.tflite`) on TensorFlow.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

# Our format names -> Keras's.
FORMATS = {"saved_model": "tf_saved_model", "onnx": "onnx", "litert": "litert"}
# Per format, the backends clusterloss exports it on and the modules each needs there.
NEEDS: dict[str, dict[str, tuple[str, ...]]] = {
    "saved_model": {"tensorflow": ("tensorflow",), "jax": ("tensorflow",)},
    "onnx": {"tensorflow": ("tf2onnx", "onnx"), "jax": ("jax2onnx",), "torch": ("onnx",)},
    "litert": {"tensorflow": ("tensorflow",)},
}
# Why a backend missing above cannot export the format.
UNSUPPORTED = {
    ("saved_model", "torch"): "Keras's torch route needs torch_xla and fails on a dynamic batch",
    ("litert", "jax"): "Keras has no LiteRT export on JAX",
    ("litert", "torch"): "Keras's torch route (litert-torch) fixes the batch size at 1",
}
# The model file inside the export folder ("" : the folder is the SavedModel).
ARTIFACT = {"saved_model": "", "onnx": "model.onnx", "litert": "model.tflite"}
PREPROCESSING_FILE = "preprocessing.json"
# How to run each format without clusterloss (x: a batch of raw inputs).
LOAD_HINT = {
    "saved_model": "tf.saved_model.load({path!r}).serve(x)",
    "onnx": "onnxruntime.InferenceSession({path!r}).run(None, {{{name!r}: x}})[0]",
    "litert": "ai_edge_litert.interpreter.Interpreter(model_path={path!r})",
}
# The scale of the built-in data sets' raw values: digits are 0-16, the others 8-bit images.
RAW_SCALE = {"digits": 1 / 16, "fashion-mnist": 1 / 255, "olivetti": 1 / 255}
DTYPES = ("float32", "uint8")
METRICS = ("cosine", "euclidean")  # how the embeddings are compared (clusterloss.index.Index)
CHECK_BATCH = 2  # rows of the check run in the export's runtime
CHECK_TOLERANCE = 1e-3  # relative to the largest embedding value
# torch's ONNX tracer warns that shapes it read may not hold for other inputs
TRACER_WARNINGS = r".*(might cause the trace to be incorrect|registered as constants in the trace)"


class ExportUnsupported(ValueError):
    """`format` cannot be exported on `backend` (`reason`); `backends` can."""

    def __init__(self, format: str, backend: str, reason: str, backends: tuple[str, ...]):
        self.format, self.backend, self.reason, self.backends = format, backend, reason, backends
        use = (
            f"use the {' or '.join(backends)} backend (KERAS_BACKEND, or the command line's --backend)"
            if backends
            else "no other backend exports it"
        )
        super().__init__(f"format {format!r} cannot be exported on the {backend} backend ({reason}); {use}")


@dataclass(frozen=True)
class Preprocessing:
    """What the served model does to its raw input before the backbone: `input * scale`
    (a Keras `Rescaling` layer), on inputs of `dtype` ("float32", or "uint8" for 8-bit
    images). E.g. `Preprocessing(1 / 255)` for images of values 0-255."""

    scale: float = 1.0
    dtype: str = "float32"

    def __post_init__(self):
        scale = self.scale
        number = isinstance(scale, (int, float)) and not isinstance(scale, bool)
        if not number or not math.isfinite(scale) or scale <= 0:
            raise ValueError(f"`scale` must be a positive number; got {scale!r}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {list(DTYPES)}; got {self.dtype!r}.")
        object.__setattr__(self, "scale", float(scale))


def check_exportable(format: str, backend: str | None = None) -> None:
    """Raise `ExportUnsupported` (a ValueError) when `format` cannot be exported on `backend`
    (default: Keras's), or an ImportError naming the missing packages and the pip command."""
    if format not in FORMATS:
        raise ValueError(f"`format` must be one of {list(FORMATS)}; got {format!r}.")
    backend = backend or keras.backend.backend()
    if backend not in NEEDS[format]:
        reason = UNSUPPORTED.get((format, backend), "not a backend clusterloss exports from")
        raise ExportUnsupported(format, backend, reason, tuple(NEEDS[format]))
    missing = [m for m in NEEDS[format][backend] if importlib.util.find_spec(m) is None]
    if missing:
        names = " and ".join(missing)
        raise ImportError(
            f"format {format!r} on the {backend} backend needs {names}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed: pip install "
            f"{' '.join(missing)} (or pip install 'clusterloss[export]')"
        )


def data_scale(source: str | os.PathLike) -> float:
    """The scale that maps the raw values of a data source to what clusterloss trained on:
    1/16 for "digits" (values 0-16), 1/255 for the other built-in sets, a folder of images
    and an .npz of uint8 `x`, 1 for an .npz of float `x` (used as stored)."""
    source = os.fspath(source)
    if source in RAW_SCALE:
        return RAW_SCALE[source]
    path = Path(source)
    if source and path.is_dir():
        return 1 / 255
    if path.suffix != ".npz" or not path.is_file():
        raise ValueError(f"`source` must be a built-in data set, a folder or an .npz file; got {source!r}.")
    try:  # the header of `x` only, not its data
        with zipfile.ZipFile(path) as archive, archive.open("x.npy") as handle:
            formats = np.lib.format
            first = formats.read_magic(handle) == (1, 0)
            dtype = (formats.read_array_header_1_0 if first else formats.read_array_header_2_0)(handle)[2]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ValueError(f"`source` {source}: cannot read the dtype of its array 'x' ({error}).") from None
    return 1 / 255 if dtype == np.uint8 else 1.0


def _input_shape(model: keras.Layer) -> tuple:
    """The input shape of the backbone, batch excluded."""
    backbone = getattr(model, "backbone", model)
    with contextlib.suppress(AttributeError, ValueError):
        return tuple(backbone.input_shape[1:])
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) == 1:
        return tuple(next(iter(shapes.values()))[1:])
    raise ValueError(
        "`model_or_backbone` has no known input shape: give a backbone made with `keras.Input` "
        f"or a ClusterModel that was built or trained; got {type(model).__name__}."
    )


def _preprocessing(preprocessing: Preprocessing | float | None, shape: tuple) -> Preprocessing:
    if preprocessing is None:
        return Preprocessing(1 / 255 if len(shape) == 3 else 1.0)
    if isinstance(preprocessing, Preprocessing):
        return preprocessing
    if isinstance(preprocessing, (int, float)) and not isinstance(preprocessing, bool):
        return Preprocessing(preprocessing)
    raise ValueError(f"`preprocessing` must be a Preprocessing, a scale or None; got {preprocessing!r}.")


def _serving(model, preprocessing) -> tuple[keras.Model, Preprocessing]:
    shape = _input_shape(model)
    prep = _preprocessing(preprocessing, shape)
    backbone = getattr(model, "backbone", model)
    inputs = keras.Input(shape, dtype=prep.dtype, name="images" if len(shape) == 3 else "features")
    x = inputs
    if prep != Preprocessing():
        x = keras.layers.Rescaling(prep.scale, name="rescaling")(x)
    return keras.Model(inputs, backbone(x), name="embeddings"), prep


def serving_model(model_or_backbone: keras.Layer, preprocessing: Preprocessing | float | None = None) -> keras.Model:
    """The embedding model (a `ClusterModel`'s backbone: embeddings, no head) with its input
    preprocessing inside, sharing the backbone's weights.

    `preprocessing`: a `Preprocessing`, a scale (`1 / 16` for digits), or None: images (an
    input of shape `(H, W, C)`) of values 0-255 (scale 1/255, as clusterloss reads image
    files), feature vectors unchanged. The input keeps the model's image size and channels:
    decode images like clusterloss does (Pillow `convert("L")` for 1 channel, `"RGB"` for 3,
    bilinear resize to `(H, W)`); converting colour to grey inside would not match Pillow's
    8-bit rounding. The input is named "images" (or "features" for vectors)."""
    return _serving(model_or_backbone, preprocessing)[0]


def keras_export(
    serving: keras.Model, filepath, format: str, verbose: Any = None, input_signature: Any = None, **kwargs
) -> None:
    """`serving.export(...)` (Keras's format names, or ours), with the packages and backend
    checked first and the input signature of `serving`'s named input by default."""
    ours = {keras_name: name for name, keras_name in FORMATS.items()}.get(format, format)
    if ours in FORMATS:
        check_exportable(ours)
    if input_signature is None:
        spec = keras.InputSpec(shape=serving.input.shape, dtype=serving.input.dtype, name=serving.input.name)
        input_signature = [spec]
    serving.export(
        os.fspath(filepath),
        format=FORMATS.get(format, format),
        verbose=verbose,
        input_signature=input_signature,
        **kwargs,
    )


def _check(serving: keras.Model, prep: Preprocessing, format: str, artifact: Path) -> dict[str, Any] | None:
    """Run the export in its runtime on a random raw batch and compare with Keras: the
    runtime and the largest difference, or None when the runtime is not installed."""
    from clusterloss.models._runtimes import runtime_for

    shape = (CHECK_BATCH, *serving.input.shape[1:])
    x = np.random.default_rng(0).uniform(0, 1 / prep.scale, shape)
    x = (x.round() if prep.dtype == "uint8" else x).astype(prep.dtype)
    expected = keras.ops.convert_to_numpy(serving(x, training=False))
    backend = keras.backend.backend()
    others = tuple(b for b in NEEDS[format] if b != backend)
    try:
        found = runtime_for(format, artifact)
        if found is None:
            return None
        runtime, run = found
        got = np.asarray(run(x))
    except Exception as error:  # the runtime refuses what the exporter wrote
        message = str(error).strip().splitlines()[0][:300]
        raise ExportUnsupported(format, backend, f"the export does not run: {message}", others) from None
    diff = float(np.max(np.abs(got - expected))) if got.shape == expected.shape else math.inf
    if not diff <= CHECK_TOLERANCE * max(1.0, float(np.max(np.abs(expected)))):
        reason = (
            f"the export gives other embeddings than Keras in {runtime}: shape {got.shape} "
            f"vs {expected.shape}, largest difference {diff:.3g}"
        )
        raise ExportUnsupported(format, backend, reason, others)
    return {"runtime": runtime, "max_abs_diff": diff}


def _describe(serving: keras.Model, prep: Preprocessing, format: str, metric: str) -> dict[str, Any]:
    """What `preprocessing.json` holds (without the check)."""
    shape = list(serving.input.shape)
    image = len(shape) == 4
    channels = shape[-1] if image else None
    return {
        "format": format, "file": ARTIFACT[format] or ".", "input_name": serving.input.name,
        "input_shape": shape, "dtype": prep.dtype, "scale": prep.scale,
        "image_size": shape[1:3] if image else None, "channels": channels,
        "color": {1: "L", 3: "RGB"}.get(channels) if image else None,
        "resize": "bilinear" if image else None,
        "embedding_dim": int(serving.output.shape[-1]), "metric": metric,
        "keras": keras.__version__, "backend": keras.backend.backend(),
    }  # fmt: skip


def export_embeddings(model: keras.Layer, path: str | os.PathLike, format: str = "saved_model",
                      preprocessing: Preprocessing | float | None = None, *, metric: str = "cosine",
                      overwrite: bool = False, check: bool = True) -> Path:  # fmt: skip
    """Write the embedding model of `model` (a `ClusterModel` or a backbone) with its input
    preprocessing inside (`serving_model`) to the folder `path`, with Keras's `Model.export`.

    The folder holds the model (`"saved_model"`: the folder is the SavedModel; `"onnx"`:
    `model.onnx`; `"litert"`: `model.tflite`) and `preprocessing.json` (input name, shape,
    dtype, scale, channels, embedding size, `metric`: how to compare embeddings). With
    `check`, the export is run in its runtime (TensorFlow, onnxruntime, LiteRT; skipped when
    not installed) on a random batch and must give Keras's embeddings, else nothing is kept.
    Written under a temporary name beside `path`, then renamed: whole or nothing; an
    existing `path` is replaced only with `overwrite`. Returns the model's path.

    A format the backend cannot export raises `ExportUnsupported` (a ValueError naming the
    backends that can), a missing package an ImportError naming it and the pip command.
    """
    check_exportable(format)
    if metric not in METRICS:
        raise ValueError(f"`metric` must be one of {list(METRICS)}; got {metric!r}.")
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"`path` {path} already exists; pass overwrite=True to replace it.")
    serving, prep = _serving(model, preprocessing)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    shutil.rmtree(temporary, ignore_errors=True)
    try:
        temporary.mkdir()
        artifact = temporary / ARTIFACT[format]
        with warnings.catch_warnings():
            if check:  # the check runs the export at another batch size than torch traced
                warnings.filterwarnings("ignore", message=TRACER_WARNINGS)
            keras_export(serving, artifact, format, verbose=False)
        info = {
            **_describe(serving, prep, format, metric),
            "check": _check(serving, prep, format, artifact) if check else None,
        }
        (temporary / PREPROCESSING_FILE).write_text(json.dumps(info, indent=2) + "\n")
        _replace(temporary, path)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return path / ARTIFACT[format] if ARTIFACT[format] else path


def _replace(new: Path, path: Path) -> None:
    """Rename the folder `new` to `path`, removing what `path` held."""
    old = path.with_name(f".old-{os.getpid()}-{path.name}")
    if path.exists():
        os.replace(path, old)
    os.replace(new, path)
    if old.is_dir():
        shutil.rmtree(old)
    else:
        old.unlink(missing_ok=True)
