"""`Embedder`: a run's backbone compiled once for serving: `jax.jit`, `tf.function` (any
batch size, one trace) or a PyTorch call under `inference_mode`. JAX compiles once per input
shape, so its batches are padded to a few sizes (1, 2, 3, 4, 6, 8, 12, ... up to the largest
batch: at most a third of a batch is padding), each compiled at `warm_up`, never while a
query waits. About 20x cheaper per call than `model.predict`."""

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
    """

    def __init__(self, backbone: keras.Model, max_batch: int = 32):
        self.input_shape = tuple(backbone.input_shape[1:])
        self.dim = int(backbone.output_shape[-1])
        self.max_batch = int(max_batch)
        steps = {size for i in range(self.max_batch.bit_length()) for size in (1 << i, 3 << i >> 1)}
        self.sizes = sorted({min(size, self.max_batch) for size in steps | {self.max_batch}})
        self._padded = keras.backend.backend() == "jax"
        self._call = inference_call(backbone)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """`(n, *input_shape)` float32 -> `(n, dim)` float32 embeddings."""
        parts = []
        for start in range(0, len(x), self.max_batch):
            chunk = np.asarray(x[start : start + self.max_batch], np.float32)
            size = next(s for s in self.sizes if s >= len(chunk)) if self._padded else len(chunk)
            if size > len(chunk):
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *self.input_shape), np.float32)])
            parts.append(self._call(chunk)[: min(self.max_batch, len(x) - start)])
        return np.concatenate(parts) if parts else np.zeros((0, self.dim), np.float32)

    def warm_up(self) -> float:
        """Compile (JAX: every padded batch size) now; the seconds it took."""
        start = time.perf_counter()
        for size in self.sizes if self._padded else (1, self.max_batch):
            self(np.zeros((size, *self.input_shape), np.float32))
        return time.perf_counter() - start
