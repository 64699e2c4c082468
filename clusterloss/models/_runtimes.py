"""Runs an exported embedding model in the runtime a deployment would use (TensorFlow for a
SavedModel, onnxruntime for ONNX, LiteRT for `.tflite`; TensorFlow itself is imported in
`clusterloss._native`), which `export.py` uses to check an export against Keras."""

from __future__ import annotations

import importlib.metadata
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clusterloss._native import saved_model_runner, tflite_interpreter


def _saved_model(path: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    return saved_model_runner(str(path))


def _onnx(path: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return f"onnxruntime {onnxruntime.__version__}", lambda x: session.run(None, {name: x})[0]


def _litert(path: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    if importlib.util.find_spec("ai_edge_litert") is not None:
        from ai_edge_litert.interpreter import Interpreter

        runtime = f"ai-edge-litert {importlib.metadata.version('ai-edge-litert')}"
    else:
        Interpreter, runtime = tflite_interpreter(), "tf.lite"
    interpreter = Interpreter(model_path=str(path))

    def run(x: np.ndarray) -> np.ndarray:
        index = interpreter.get_input_details()[0]["index"]
        interpreter.resize_tensor_input(index, x.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(index, x)
        interpreter.invoke()
        return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])

    return runtime, run


# format -> (the modules, any one of which runs it; loader)
RUNTIMES = {
    "saved_model": (("tensorflow",), _saved_model),
    "onnx": (("onnxruntime",), _onnx),
    "litert": (("ai_edge_litert", "tensorflow"), _litert),
}


def runtime_for(format: str, path: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]] | None:
    """`(runtime name, run)` for an artifact of `format` at `path`, or None when no runtime
    of it is installed."""
    modules, load = RUNTIMES[format]
    return load(path) if any(importlib.util.find_spec(m) for m in modules) else None
