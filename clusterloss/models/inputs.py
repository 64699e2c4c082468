"""Label checks on the host, for every kind of data `ClusterModel.fit`/`evaluate` take, and
the library's own `ImageFiles` as batches Keras reads.

The labels are checked where they are NumPy values, before they become backend tensors: once
for arrays, per batch for a `keras.utils.PyDataset` (clusterloss's `MPerClassSampler`
included) and a Python generator, and by assertions in the pipeline for a `tf.data.Dataset`.
Nothing here runs inside the train step, so it costs no device-to-host copy. A bad batch
raises a `ValueError` naming `y`; the layers add an in-graph backstop (`layers/labels.py`)
for anything else (a torch `DataLoader`, a custom loop).
"""

from __future__ import annotations

import types
from typing import Any

import keras
import numpy as np

from clusterloss import _native
from clusterloss._validation import check_labels
from clusterloss.data import Batches, ImageFiles


class LabelCheck:
    """Checks one batch's labels: shape, integral, in `[0, num_classes)`, and within the
    backend's integer range (int32 on JAX without `jax_enable_x64`). Picklable, so a
    `PyDataset` with `use_multiprocessing=True` can carry it to its workers."""

    def __init__(self, num_classes: int | None, name: str = "y"):
        self.num_classes = num_classes
        self.name = name
        self.limit = _native.label_id_limit()  # for the assertions of a tf.data pipeline

    def __call__(self, y: Any) -> None:
        if y is None:
            return
        values = np.asarray(y)
        if values.size == 0:
            raise ValueError(f"`{self.name}` is empty: got a batch with no samples.")
        check_labels(values, self.num_classes, name=self.name)

    def batch(self, batch: Any) -> Any:
        """Check the labels of a `(x, y)` or `(x, y, sample_weight)` batch; return it."""
        if isinstance(batch, (tuple, list)) and len(batch) >= 2:
            self(batch[1])
        return batch


class CheckedPyDataset(keras.utils.PyDataset):
    """A `PyDataset` that checks the labels of each batch of `dataset`, then returns it."""

    def __init__(self, dataset: keras.utils.PyDataset, check: LabelCheck):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self.dataset = dataset
        self.check = check

    @property
    def num_batches(self):
        return self.dataset.num_batches

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index):
        return self.check.batch(self.dataset[index])

    def on_epoch_begin(self) -> None:
        self.dataset.on_epoch_begin()

    def on_epoch_end(self) -> None:
        self.dataset.on_epoch_end()


def _checked_generator(generator, check: LabelCheck):
    for batch in generator:
        yield check.batch(batch)


def checked_data(x: Any, y: Any, check: LabelCheck) -> Any:
    """`x` wrapped so that its labels are checked (`y` is checked now, if given)."""
    if y is not None:
        check(y)
        return x
    if isinstance(x, keras.utils.PyDataset):
        return CheckedPyDataset(x, check)
    if isinstance(x, types.GeneratorType):
        return _checked_generator(x, check)
    if _native.is_tf_dataset(x):
        return _native.check_tf_dataset_labels(x, check.num_classes, check.limit, check.name)
    return x


def checked_validation_data(data: Any, check: LabelCheck) -> Any:
    """`validation_data` of `fit`: a `(x, y[, sample_weight])` tuple or a dataset."""
    if isinstance(data, (tuple, list)) and len(data) >= 2:
        check(data[1])
        return data
    return checked_data(data, None, check)


def raise_label_error(error: Exception) -> None:
    """Re-raise an error of the `tf.data` label assertions as a `ValueError`."""
    message = _native.label_error(error)
    if message is not None:
        raise ValueError(f"{message} (in a batch of the tf.data pipeline).") from error


def image_batches(x: Any, y: Any = None, batch_size: int | None = None, shuffle: bool = False) -> Any:
    """`ImageFiles` as `Batches` of `(x, y)` (or `x` when `y` is None), read batch by batch
    (32 rows when `batch_size` is None; with `shuffle`, a new order every epoch, seeded by
    NumPy's global generator, which `keras.utils.set_random_seed` fixes); anything else:
    `x` (or `(x, y)`) unchanged."""
    if not isinstance(x, ImageFiles):
        return x if y is None else (x, y)
    seed = int(np.random.randint(2**31 - 1)) if shuffle else 0
    return Batches(x, y, batch_size or 32, shuffle=shuffle, seed=seed)
