"""M-per-class batches: every batch holds M samples of each of `batch_size // M` classes."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from clusterloss.data.batches import ReadAhead, default_prefetch
from clusterloss.models.inputs import LabelCheck


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}.")
    return int(value)


class MPerClassSampler(ReadAhead):
    """A `keras.utils.PyDataset` of batches with exactly `m` samples of each of
    `classes_per_batch = batch_size // m` distinct classes, for pair, triplet and proxy
    losses that need positives in every batch. Works as `model.fit(sampler, epochs=...)` on
    every backend.

    One epoch is `len(sampler)` batches (by default `len(y) // batch_size`), about one pass
    over the data: each class's samples are shuffled and cut into groups of `m`, and each
    batch takes one group from each of `classes_per_batch` classes drawn without replacement,
    with probability proportional to the groups a class has left. A class whose groups run
    out is reshuffled and starts over, so small classes appear more than once an epoch and
    large classes less often than their share. A class's last group, if short, is completed
    with other samples of the same class (no duplicates within a group). The order inside a
    batch (inside each replica's slice) is shuffled. The labels are checked once, here
    (integers >= 0 that the backend holds exactly); `ClusterModel.fit` also checks each batch
    against its `num_classes`.

    Data parallel: with `num_replicas=R`, each batch is R contiguous slices of
    `batch_size // R` samples, and each slice holds m samples of each of its own
    `batch_size // (R * m)` classes. JAX `DataParallel` and `tf.distribute` give each replica a
    contiguous slice of the global batch, so every replica's pair or triplet loss finds its
    positives (under `MirroredStrategy` a pair loss mines only inside its replica's slice).

    The batches depend only on `seed` and the epoch number: `on_epoch_end` (which `fit`
    calls) moves to the next epoch and draws new batches. Two samplers with the same data
    and seed give the same batches. Batches are read ahead (image files: 2 by default) and
    epochs counted as `clusterloss.data.batches.ReadAhead` says.

    Args:
        x: inputs, an array (anything indexable by an integer array) or a dict/list/tuple of
            such arrays, all with `len(y)` rows.
        y: integer class ids, shape `(n,)` or `(n, 1)`.
        m: samples per class in each batch.
        batch_size: a multiple of `m` with `batch_size // m >= 2`, and no more than
            `m * number_of_classes`.
        steps_per_epoch: batches per epoch; default `max(1, len(y) // batch_size)`.
        seed: an int for reproducible batches; `None` draws one (kept in `self.seed`).
        replace: if `False` (default), every class needs at least `m` samples and a
            ValueError names the ones that do not. If `True`, a class with fewer than `m`
            samples contributes all of them plus repeats drawn with replacement to fill its
            group; classes with at least `m` samples are unaffected.
        num_replicas: replicas the global batch is split across (see above); `batch_size`
            must be a multiple of `m * num_replicas`.
        epoch: the epoch to start at.
        prefetch: batches read ahead; None: 2 when `x` holds `ImageFiles`, else 0.
    """

    def __init__(
        self,
        x: Any,
        y: Any,
        m: int = 4,
        batch_size: int = 32,
        steps_per_epoch: int | None = None,
        seed: int | None = None,
        replace: bool = False,
        num_replicas: int = 1,
        epoch: int = 0,
        prefetch: int | None = None,
    ):
        super().__init__(epoch, default_prefetch(x) if prefetch is None else prefetch)
        self.m = _positive_int(m, "m")
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.num_replicas = _positive_int(num_replicas, "num_replicas")
        if self.batch_size % (self.m * self.num_replicas):
            raise ValueError(
                f"`batch_size` ({batch_size}) must be a multiple of `m` * `num_replicas` "
                f"({m} * {num_replicas}): every replica's slice of a batch holds m samples of "
                f"each of its classes."
            )
        self.classes_per_batch = self.batch_size // self.m
        if self.classes_per_batch // self.num_replicas < 2:
            raise ValueError(
                f"`batch_size // (m * num_replicas)` must be >= 2 so that a batch (per replica) "
                f"holds at least 2 classes; got batch_size={batch_size}, m={m}, "
                f"num_replicas={num_replicas}."
            )
        labels = np.asarray(y)
        if labels.size == 0:
            raise ValueError("`y` is empty.")
        LabelCheck(None, name="y")(labels)  # shape, integral, >= 0, fits the backend's ints
        labels = labels.reshape(-1)
        for leaf in keras.tree.flatten(x):
            if len(leaf) != len(labels):
                raise ValueError(f"`x` and `y` must have the same number of rows; got {len(leaf)} and {len(labels)}.")
        self.x = x
        self.y = labels
        self.classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        if len(self.classes) < 2:
            raise ValueError(f"M-per-class sampling needs at least 2 classes; `y` has {len(self.classes)}.")
        if self.classes_per_batch > len(self.classes):
            raise ValueError(
                f"`batch_size // m` = {self.classes_per_batch} classes per batch, but `y` has "
                f"only {len(self.classes)} classes; use a smaller batch_size or a larger m."
            )
        self.replace = bool(replace)
        small = counts < self.m
        if small.any() and not self.replace:
            names = ", ".join(f"{c} ({n})" for c, n in zip(self.classes[small][:5], counts[small][:5]))
            raise ValueError(
                f"`m` = {m} is more than the samples of {int(small.sum())} class(es): {names}"
                f"{', ...' if small.sum() > 5 else ''}. Use a smaller m, drop those classes, "
                f"or pass replace=True to repeat their samples."
            )
        self.class_indices = [np.flatnonzero(inverse == c) for c in range(len(self.classes))]
        if steps_per_epoch is None:
            steps_per_epoch = max(1, len(labels) // self.batch_size)
        self.steps_per_epoch = _positive_int(steps_per_epoch, "steps_per_epoch")
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        self.seed = int(seed)

    def _groups(self, rng: np.random.Generator, members: np.ndarray) -> list[np.ndarray]:
        """One class's samples, shuffled, in groups of exactly m."""
        m = self.m
        order = rng.permutation(members)
        if len(order) < m:  # only with replace=True
            return [np.concatenate([order, rng.choice(members, m - len(order))])]
        groups = [order[i : i + m] for i in range(0, len(order), m)]
        short = len(groups[-1])
        if short < m:
            rest = order[: len(order) - short]
            groups[-1] = np.concatenate([groups[-1], rng.choice(rest, m - short, replace=False)])
        return groups

    @property
    def indices(self) -> np.ndarray:
        """The rows of each batch of the current epoch, `(len(self), batch_size)`."""
        return self._of_epoch(self.epoch, self._draw_epoch)

    def _draw_epoch(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        n_classes = len(self.classes)
        queues: list[list[np.ndarray]] = [[] for _ in range(n_classes)]
        left = np.zeros(n_classes, dtype=np.int64)
        for c in range(n_classes):
            queues[c] = self._groups(rng, self.class_indices[c])
            left[c] = len(queues[c])
        batches = np.empty((self.steps_per_epoch, self.batch_size), dtype=np.int64)
        for step in range(self.steps_per_epoch):
            if np.count_nonzero(left) < self.classes_per_batch:
                for c in np.flatnonzero(left == 0):
                    queues[c] = self._groups(rng, self.class_indices[c])
                    left[c] = len(queues[c])
            chosen = rng.choice(n_classes, size=self.classes_per_batch, replace=False, p=left / left.sum())
            batch = np.concatenate([queues[c].pop() for c in chosen])
            left[chosen] -= 1
            batches[step] = np.concatenate([rng.permutation(part) for part in np.split(batch, self.num_replicas)])
        return batches

    def __len__(self) -> int:
        return self.steps_per_epoch

    def batch(self, epoch: int, index: int):
        """Batch `index` of epoch `epoch`."""
        rows = self._of_epoch(epoch, self._draw_epoch)[index]
        inputs = keras.tree.map_structure(lambda a: a[rows], self.x)
        return inputs, self.y[rows]
