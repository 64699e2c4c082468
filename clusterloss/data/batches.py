"""`Batches`: a seeded, resumable `keras.utils.PyDataset` of `(x, y)` (or `x`) batches."""

from __future__ import annotations

import math
from typing import Any

import keras
import numpy as np


class Batches(keras.utils.PyDataset):
    """Batches of an array or of `ImageFiles` (read batch by batch), with labels or without.

    With `shuffle`, epoch e visits the rows in the order drawn from `(seed, e)`: the same
    batches whatever happened before, so training resumed at epoch e sees what an
    uninterrupted run saw. `fit` calls `on_epoch_end`, which moves to the next epoch; give
    `epoch` to start elsewhere. Pass `shuffle=False` to `fit` (this class shuffles).

    Args:
        x: an array (or anything indexed by an integer array, like `ImageFiles`).
        y: labels, or None for `x`-only batches (`predict`).
        batch_size: rows per batch (the last one may be smaller).
        shuffle, seed, epoch: see above.
        **kwargs: `workers`, `use_multiprocessing`, `max_queue_size` of `PyDataset`.
    """

    def __init__(self, x: Any, y=None, batch_size: int = 32, shuffle: bool = False,
                 seed: int = 0, epoch: int = 0, **kwargs: Any):  # fmt: skip
        super().__init__(**kwargs)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
        if y is not None and len(y) != len(x):
            raise ValueError(f"`x` and `y` must have the same length; got {len(x)} and {len(y)}.")
        self.x, self.y = x, (None if y is None else np.asarray(y))
        self.batch_size, self.shuffle, self.seed = batch_size, bool(shuffle), int(seed)
        self.epoch = int(epoch)
        self._orders: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def _order(self) -> np.ndarray:
        if self.epoch not in self._orders:  # one permutation per epoch, not per batch
            rng = np.random.default_rng([self.seed, self.epoch])
            self._orders = {self.epoch: rng.permutation(len(self.x))}
        return self._orders[self.epoch]

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches.")
        start = index * self.batch_size
        if self.shuffle:
            rows = self._order()[start : start + self.batch_size]
        else:
            rows = slice(start, min(start + self.batch_size, len(self.x)))
        x = self.x[rows]
        return x if self.y is None else (x, self.y[rows])

    def on_epoch_end(self) -> None:
        self.epoch += 1
