"""`embed(model, x)`: the embeddings of any Keras model, in batches, as a NumPy array."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from clusterloss.data.batches import Batches


def embed(model: keras.Model, x: Any, batch_size: int = 256, verbose: Any = 0) -> np.ndarray:
    """Embeddings of `x` in batches of `batch_size` (a `keras.utils.Progbar` per batch with
    `verbose`), as a float32 NumPy array `(n, dim)`.

    `model`: a `ClusterModel` (its `embed`, the backbone alone) or any Keras model whose
    output is the embeddings or a dict holding `"embeddings"`. `x`: an array, a
    `keras.utils.PyDataset`, or anything indexed by integer arrays (e.g. `ImageFiles`,
    read batch by batch: a folder is never loaded at once).
    """
    if not isinstance(x, (np.ndarray, keras.utils.PyDataset)):
        x = Batches(x, batch_size=batch_size)
    if hasattr(model, "embed"):
        out = model.embed(x, batch_size=batch_size, verbose=verbose)
    else:
        out = model.predict(x, batch_size=batch_size, verbose=verbose)
    if isinstance(out, dict):
        if "embeddings" not in out:
            raise ValueError(f"`model` outputs a dict without 'embeddings'; keys: {sorted(out)}.")
        out = out["embeddings"]
    return np.asarray(out, dtype=np.float32)
