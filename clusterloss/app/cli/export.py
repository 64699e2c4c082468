"""`clusterloss export RUN_DIR --format saved_model|onnx|litert`: the run's embedding model with
its input scaling inside, for serving without clusterloss (clusterloss.models.export)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from clusterloss.app.config import positive_float
from clusterloss.models.export import DTYPES, FORMATS


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "export",
        help="export the run's embedding model (saved_model, onnx, litert) for serving",
        description="Write the embedding model of RUN_DIR/model.keras (the backbone: embeddings, "
        "not logits) with its input scaling inside, so that a deployment feeds raw decoded "
        "images (values 0-255, or 0-16 for digits) at the model's size and channels, with "
        "Keras's Model.export, and preprocessing.json beside it (input name, shape, dtype, "
        "scale, channels, embedding size, metric). The export is run once in its runtime "
        "(TensorFlow, onnxruntime, LiteRT, where installed) and must give Keras's embeddings. "
        "saved_model needs TensorFlow (backends tensorflow, jax); onnx needs tf2onnx and onnx "
        "(tensorflow), jax2onnx (jax) or onnx (torch); litert the tensorflow backend.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a directory from `clusterloss train`")
    parser.add_argument(
        "--format",
        required=True,
        choices=tuple(FORMATS),
        help="saved_model (a TensorFlow SavedModel folder), onnx (model.onnx) or litert (model.tflite)",
    )
    parser.add_argument("--out", metavar="PATH", help="the folder to write (default RUN_DIR/export/FORMAT)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing export at PATH")
    parser.add_argument(
        "--scale",
        type=positive_float,
        help="raw inputs are multiplied by this inside the model (default: from the run's data: "
        "1/16 for digits, 1/255 for other images and uint8 .npz, 1 for float .npz)",
    )
    parser.add_argument(
        "--input-dtype",
        choices=DTYPES,
        default="float32",
        help="the input's dtype (default float32; uint8 for 8-bit images)",
    )
    parser.set_defaults(run=run)
    return [parser]


def _unavailable(args: argparse.Namespace, error: Exception) -> str:
    """The one line of an export the backend or the installed packages cannot make."""
    from clusterloss.models.export import ExportUnsupported

    if isinstance(error, ExportUnsupported) and error.backends:
        return f"--format {args.format} needs --backend {' or '.join(error.backends)}: {error.reason}"
    if isinstance(error, ExportUnsupported):
        return f"--format {args.format} does not work on --backend {error.backend}: {error.reason}"
    return str(error).strip().splitlines()[0]


def _scale(args: argparse.Namespace, metrics: dict) -> float:
    from clusterloss.app.errors import RunError
    from clusterloss.models.export import data_scale

    if args.scale is not None:
        return args.scale
    config = metrics.get("config", {})
    data = config.get("data", config.get("dataset"))  # "dataset": runs made before own data
    try:
        return data_scale(data or "")
    except ValueError:
        raise RunError(
            f"cannot tell how the run's data ({data}) was scaled: it is not found from "
            "here; pass --scale (e.g. 0.00392156862745098 for 0-255 images)"
        ) from None


def run(args: argparse.Namespace) -> int:
    import keras

    from clusterloss.app.errors import RunError
    from clusterloss.app.results import read_metrics
    from clusterloss.app.rundir import RunDir
    from clusterloss.models.export import (
        LOAD_HINT,
        PREPROCESSING_FILE,
        Preprocessing,
        check_exportable,
        export_embeddings,
    )

    try:
        check_exportable(args.format)
    except (ImportError, ValueError) as error:
        raise RunError(_unavailable(args, error)) from None
    run_dir = RunDir(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "export" / args.format
    if out.exists() and not args.overwrite:
        raise RunError(f"{out} already exists; pass --overwrite to replace it, or choose another --out")
    with run_dir.lock(create=False):
        metrics = read_metrics(run_dir.path)
        if not (run_dir / "model.keras").is_file():
            raise RunError(f"{run_dir.path} holds no model.keras (the run did not finish)")
        prep = Preprocessing(_scale(args, metrics), args.input_dtype)
        model = keras.saving.load_model(run_dir / "model.keras")
        try:
            artifact = export_embeddings(
                model, out, args.format, prep, overwrite=args.overwrite, metric=metrics.get("metric", "cosine")
            )
        except (ImportError, ValueError) as error:
            raise RunError(_unavailable(args, error)) from None
    info = json.loads((out / PREPROCESSING_FILE).read_text())
    shape = ", ".join(["batch", *map(str, info["input_shape"][1:])])
    values = "as trained" if prep.scale == 1 else f"0-{1 / prep.scale:g} (x {prep.scale:.6g} inside)"
    checked = (
        f"same embeddings in {info['check']['runtime']}" if info["check"] else "not checked (no runtime installed)"
    )
    hint = LOAD_HINT[args.format].format(path=str(artifact), name=info["input_name"])
    print(
        f"wrote {artifact} (+ {PREPROCESSING_FILE}): input {info['input_name']!r} {prep.dtype} "
        f"({shape}), values {values} -> {info['embedding_dim']}-D embeddings; {checked}; "
        f"load: {hint}"
    )
    return 0
