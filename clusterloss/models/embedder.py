"""`Embedder`: a backbone compiled once for small batches (a server's queries, `ClusterModel.
embed` of a few rows): `jax.jit`, `tf.function` (any batch size, one trace) or a PyTorch call
under `inference_mode`. JAX compiles once per input shape, so its batches are padded to a few
sizes (1, 2, 3, 4, 6, 8, 12, ... up to the largest batch: at most a third of a batch is
padding), each compiled at `warm_up` (a server: never while a query waits) or at first use.
About 20x cheaper per call than `model.predict`."""

from __future__ import annotations

import time

import keras
import numpy as np

from clusterloss._native import inference_call


class Embedder:
    """Embeddings of a backbone's inputs, `max_batch` rows per model call.

    Args:
        backbone: a Keras model `inputs -> (batch, dim)` (a `ClusterModel`'s `backbone`).
        max_batch: the largest batch of one call; larger inputs are split.
        live: call the weights of the moment (a model that still trains), not a copy taken
            now (a server's fixed model).
    """

    def __init__(self, backbone: keras.Model, max_batch: int = 32, live: bool = False):
        self.input_shape = tuple(backbone.input_shape[1:])
        self.dim = int(backbone.output_shape[-1])
        self.max_batch = int(max_batch)
        steps = {size for i in range(self.max_batch.bit_length()) for size in (1 << i, 3 << i >> 1)}
        self.sizes = sorted({min(size, self.max_batch) for size in steps | {self.max_batch}})
        self._padded = keras.backend.backend() == "jax"
        given = keras.backend.standardize_dtype(backbone.inputs[0].dtype) if getattr(backbone, "inputs", None) else ""
        self._float = given if "float" in given else "float32"  # what floating inputs become
        self._call = inference_call(backbone, live=live)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """`(n, *input_shape)` inputs -> `(n, dim)` embeddings (floating inputs in the
        backbone's input type, float32 by default)."""
        x = np.asarray(x)
        if np.issubdtype(x.dtype, np.floating):
            x = x.astype(self._float, copy=False)
        parts = []
        for start in range(0, len(x), self.max_batch):
            chunk = x[start : start + self.max_batch]
            size = next(s for s in self.sizes if s >= len(chunk)) if self._padded else len(chunk)
            if size > len(chunk):
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *self.input_shape), chunk.dtype)])
            parts.append(self._call(chunk)[: min(self.max_batch, len(x) - start)])
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def warm_up(self) -> float:
        """Compile (JAX: every padded batch size) now; the seconds it took."""
        start = time.perf_counter()
        for size in self.sizes if self._padded else (1, self.max_batch):
            self(np.zeros((size, *self.input_shape), self._float))
        return time.perf_counter() - start
