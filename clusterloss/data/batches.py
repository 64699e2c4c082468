"""`Batches`: a seeded, resumable `keras.utils.PyDataset` of `(x, y)` (or `x`) batches, and
`ReadAhead`, the reading ahead it shares with `MPerClassSampler`."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import keras
import numpy as np

from clusterloss.data.images import ImageFiles

PREFETCH = 2  # batches of image files read ahead by default


def default_prefetch(x: Any) -> int:
    """`PREFETCH` when `x` (or a leaf of it) is `ImageFiles`, else 0 (slicing arrays costs
    nothing)."""
    return PREFETCH if any(isinstance(leaf, ImageFiles) for leaf in keras.tree.flatten(x)) else 0


class ReadAhead(keras.utils.PyDataset):
    """A `PyDataset` whose batch `index` of epoch `epoch` is `batch(epoch, index)`, a pure
    function of them (and of the seed), read ahead here, never by Keras's `workers` (which
    read batches across the end of an epoch, under whichever epoch the counter then held).

    After batch i of epoch e, the next `prefetch` batches (i + 1, ..., on into epoch e + 1
    when the epochs differ) are read in background threads and used only if asked for under
    that same epoch and index: a batch is the same whenever and however it is read, so a
    resumed run sees what an uninterrupted one saw. `fit` calls `on_epoch_end`, which moves
    to the next epoch, at the end of each epoch and once before the first (Keras resets its
    data then): `fit` on a dataset made at epoch e trains its first epoch on e + 1, the same
    in a run started at epoch e and in one that got there. At most `prefetch` batches wait.

    Subclasses define `__len__`, `batch`, and `epochs_differ` (False when every epoch gives
    the same batches).
    """

    epochs_differ = True

    def __init__(self, epoch: int = 0, prefetch: int = 0):
        super().__init__()  # one worker: Keras reads nothing ahead
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 0:
            raise ValueError(f"`prefetch` must be an int >= 0; got {prefetch!r}.")
        self.epoch, self.prefetch = int(epoch), prefetch
        self._lock = threading.Lock()
        self._epochs: dict[int, np.ndarray] = {}
        self._ahead: dict[tuple[int, int], Future] = {}
        self._reader = ThreadPoolExecutor(prefetch, "clusterloss-batches") if prefetch else None

    def batch(self, epoch: int, index: int) -> Any:
        raise NotImplementedError

    def _of_epoch(self, epoch: int, draw: Callable[[int], np.ndarray]) -> np.ndarray:
        """`draw(epoch)` (an epoch's order or batches), drawn once; the last two epochs'
        kept (the current one and the one read ahead)."""
        with self._lock:
            if epoch not in self._epochs:
                self._epochs = {e: v for e, v in self._epochs.items() if e > epoch - 2}
                self._epochs[epoch] = draw(epoch)
            return self._epochs[epoch]

    def _next(self, epoch: int, index: int) -> list[tuple[int, int]]:
        """The `prefetch` batches that follow batch `index` of `epoch`."""
        keys = []
        for _ in range(self.prefetch):
            index += 1
            if index == len(self):
                if not self.epochs_differ:
                    break
                epoch, index = epoch + 1, 0
            keys.append((epoch, index))
        return keys

    def __getitem__(self, index: int):
        if not 0 <= index < len(self):
            raise IndexError(f"batch {index} out of range for {len(self)} batches.")
        key = (self.epoch if self.epochs_differ else 0, index)
        if self._reader is None:
            return self.batch(*key)
        with self._lock:
            found = self._ahead.pop(key, None)
            wanted = self._next(*key)
            for other in set(self._ahead) - set(wanted):  # a guess that was not asked for
                self._ahead.pop(other).cancel()
            for ahead in wanted:
                if ahead not in self._ahead:
                    self._ahead[ahead] = self._reader.submit(self.batch, *ahead)
        return found.result() if found is not None else self.batch(*key)

    def on_epoch_end(self) -> None:
        self.epoch += 1


class Batches(ReadAhead):
    """Batches of an array or of `ImageFiles` (read batch by batch), with labels or without.

    With `shuffle`, epoch e visits the rows in the order drawn from `(seed, e)`; batches are
    read ahead and epochs counted as `ReadAhead` says. Pass `shuffle=False` to `fit` (this
    class shuffles). `ImageFiles` decode each batch's files on all cores.

    Args:
        x: an array (or anything indexed by an integer array, like `ImageFiles`).
        y: labels, or None for `x`-only batches (`predict`).
        batch_size: rows per batch (the last one may be smaller).
        shuffle, seed, epoch: see above.
        prefetch: batches read ahead; None: 2 for `ImageFiles`, 0 for arrays.
    """

    def __init__(self, x: Any, y=None, batch_size: int = 32, shuffle: bool = False,
                 seed: int = 0, epoch: int = 0, prefetch: int | None = None):  # fmt: skip
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int; got {batch_size!r}.")
        if y is not None and len(y) != len(x):
            raise ValueError(f"`x` and `y` must have the same length; got {len(x)} and {len(y)}.")
        super().__init__(epoch, default_prefetch(x) if prefetch is None else prefetch)
        self.x, self.y = x, (None if y is None else np.asarray(y))
        self.batch_size, self.shuffle, self.seed = batch_size, bool(shuffle), int(seed)
        self.epochs_differ = self.shuffle

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.x))

    def batch(self, epoch: int, index: int):
        """Batch `index` of epoch `epoch` (the epoch matters only with `shuffle`)."""
        start = index * self.batch_size
        if self.shuffle:
            rows = self._of_epoch(epoch, self._order)[start : start + self.batch_size]
        else:
            rows = slice(start, min(start + self.batch_size, len(self.x)))
        x = self.x[rows]
        return x if self.y is None else (x, self.y[rows])
