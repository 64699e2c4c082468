"""`--distribute`: the devices a run trains on, through Keras's own distribution.

- JAX: `keras.distribution.DataParallel` over every device (of every process, after
  `initialize`): each batch is split over the devices, and XLA computes every loss on the
  global batch, as on one device. With Partial FC (`sample_rate < 1`, the setting of heads
  with many classes) on one process, the class head's kernel rows are split over the devices
  too (`_ShardedHead`).
- TensorFlow: `tf.distribute.MirroredStrategy` (Keras 3.15's `keras.distribution` for
  TensorFlow is a prototype): each replica computes its slice's loss, the gradients are summed.
- PyTorch: one device (Keras 3.15 has no torch distribution); said in one line when there
  are several.

`--batch-size` is the global batch: it must be a multiple of the device count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import sys
from typing import Any

import keras

from clusterloss._native import local_devices, mirrored_strategy, process_position
from clusterloss.app.errors import RunError
from clusterloss.data import Batches

DISTRIBUTE = ("auto", "none")
# Keras's environment variables for several processes (`keras.distribution.initialize`).
PROCESS_VARIABLES = (
    "KERAS_DISTRIBUTION_JOB_ADDRESSES",
    "KERAS_DISTRIBUTION_NUM_PROCESSES",
    "KERAS_DISTRIBUTION_PROCESS_ID",
)


def initialize() -> int:
    """Join JAX's distributed runtime when Keras's `KERAS_DISTRIBUTION_*` variables are set
    (call it before any computation); returns this process's index (0 alone)."""
    given = [name for name in PROCESS_VARIABLES if os.environ.get(name)]
    if not given:
        return 0
    if keras.backend.backend() != "jax":
        raise RunError(
            f"{', '.join(given)}: several processes need the JAX backend (Keras "
            f"{keras.__version__}'s distribution); got {keras.backend.backend()}"
        )
    try:
        keras.distribution.initialize()
    except (ValueError, RuntimeError) as error:
        raise RunError(
            f"keras.distribution.initialize() from {', '.join(given)}: {str(error).splitlines()[0]}"
        ) from None
    return process_position()[0]


class _Shard(keras.utils.PyDataset):
    """This process's part of each global batch of `dataset` (a contiguous slice, as JAX
    assembles the global batch in process order), every batch cut to a multiple of `devices`
    rows: `DataParallel` splits a batch evenly, so an epoch's last, uneven batch loses at
    most `devices - 1` rows (different ones each epoch: the batches are shuffled)."""

    def __init__(self, dataset: keras.utils.PyDataset, devices: int, process: int, processes: int):
        super().__init__(
            workers=dataset.workers,
            use_multiprocessing=dataset.use_multiprocessing,
            max_queue_size=dataset.max_queue_size,
        )
        self.dataset, self.devices, self.process, self.processes = dataset, devices, process, processes
        rows = len(dataset.x) if isinstance(dataset, Batches) else len(dataset) * dataset.batch_size
        last = rows - (len(dataset) - 1) * dataset.batch_size
        self.batches = len(dataset) - (last < devices)  # a last batch under `devices` rows goes

    def __len__(self) -> int:
        return self.batches

    def __getitem__(self, index: int):
        batch = self.dataset[index]
        part = len(batch[1]) // self.devices * self.devices // self.processes
        rows = slice(self.process * part, (self.process + 1) * part)
        return keras.tree.map_structure(lambda a: a[rows], batch)

    def on_epoch_begin(self) -> None:
        self.dataset.on_epoch_begin()

    def on_epoch_end(self) -> None:
        self.dataset.on_epoch_end()


class _LocalEpochEnd(keras.callbacks.Callback):
    """First of `fit`'s callbacks: unsets the distribution at each epoch's end and sets it
    again when the next epoch begins and when training ends (the next phase's optimizer is
    made under it). The validation retrieval and checkpoint after it then predict with the
    replicated weights (every device computes the same), since `DataParallel` would split a
    prediction's last, uneven batch over the devices too (an `IndivisibleError`)."""

    def __init__(self, distribution: keras.distribution.Distribution):
        super().__init__()
        self.distribution = distribution

    def on_epoch_begin(self, epoch, logs=None):
        keras.distribution.set_distribution(self.distribution)

    def on_epoch_end(self, epoch, logs=None):
        keras.distribution.set_distribution(None)

    def on_train_end(self, logs=None):
        keras.distribution.set_distribution(self.distribution)


# The class head's kernel: a layer right under the `ClusterModel` (the center loss's are `centers`).
HEAD_KERNEL = r"cluster_model[^/]*/[^/]+/kernel"


class _ShardedHead(keras.distribution.DataParallel):
    """`DataParallel` that splits the rows of the class head's kernel over the devices (the
    layout `ModelParallel` gives with `layout_map[HEAD_KERNEL] = ("batch", None)`), where
    they divide evenly (JAX shards only evenly); `sharded` lists the variables split."""

    def __init__(self):
        super().__init__(auto_shard_dataset=False)  # _Shard does it
        self.sharded: list[str] = []

    def get_variable_layout(self, variable):
        count = self.device_mesh.shape[0]
        if re.fullmatch(HEAD_KERNEL, variable.path) and variable.shape[0] % count == 0:
            if variable.path not in self.sharded:
                self.sharded.append(variable.path)
            return keras.distribution.TensorLayout((self.batch_dim_name, None), self.device_mesh)
        return super().get_variable_layout(variable)


@dataclasses.dataclass(frozen=True)
class Devices:
    """The devices of a run and how it spreads over them (`how`: `"none"`,
    `"DataParallel"` or `"MirroredStrategy"`; `context`: the Keras distribution or the
    TensorFlow strategy)."""

    names: tuple[str, ...]
    how: str = "none"
    context: Any = None
    process: int = 0
    processes: int = 1

    def scope(self) -> contextlib.AbstractContextManager:
        """Where the model is built, compiled and trained."""
        return self.context.scope() if self.context is not None else contextlib.nullcontext()

    def check(self, batch_size: int, pairs: bool, sample_rate: float) -> None:
        """RunError, before training, for a batch the devices cannot share, or a loss that
        TensorFlow's replicas would compute differently (`batch_size`: the real batch)."""
        count = len(self.names)
        if batch_size % count:
            fit = max(count, batch_size // count * count)
            raise RunError(
                f"--batch-size: a batch of {batch_size} is split over {count} devices "
                f"({self.how}); it must be a multiple of {count}: use --batch-size "
                f"{fit}, or --distribute none"
            )
        if self.how == "MirroredStrategy" and (pairs or sample_rate < 1.0):
            what = (
                "pair losses would mine inside each replica's slice"
                if pairs
                else "Partial FC (--sample-rate) would sample classes per replica"
            )
            raise RunError(
                f"--distribute on TensorFlow: {what}; use --backend jax (the loss "
                "sees the global batch) or --distribute none"
            )

    def batches(self, dataset: keras.utils.PyDataset) -> keras.utils.PyDataset:
        """`fit`'s data: `dataset` itself, or under `DataParallel` its shard (`_Shard`)."""
        if self.how != "DataParallel":
            return dataset
        return _Shard(dataset, len(self.names), self.process, self.processes)

    def callbacks(self) -> list[keras.callbacks.Callback]:
        """To put first in `fit`'s callbacks."""
        return [_LocalEpochEnd(self.context)] if self.how == "DataParallel" else []

    def record(self) -> dict[str, Any]:
        """What `metrics.json` says of the devices."""
        record = {"distribute": self.how, "devices": list(self.names), "processes": self.processes}
        if getattr(self.context, "sharded", None):
            record["sharded"] = self.context.sharded
        return record


def plan(distribute: str, partial_fc: bool = False) -> Devices:
    """The devices of a run: with `distribute="auto"` every local device when there are
    several (`clusterloss._native.local_devices`), else one; `partial_fc`: shard the class
    head on JAX (one process: a sharded array spanning processes cannot be saved from one)."""
    names = local_devices()
    process, processes = process_position()
    if processes > 1 and distribute == "none":
        raise RunError(
            f"--distribute none: this is one of {processes} processes "
            "(KERAS_DISTRIBUTION_*); several processes train together with "
            "--distribute auto"
        )
    if distribute == "none" or len(names) < 2:
        return Devices(tuple(names[:1]))
    backend = keras.backend.backend()
    if backend == "jax":
        if partial_fc and processes == 1:
            parallel = _ShardedHead()
        else:
            parallel = keras.distribution.DataParallel(auto_shard_dataset=False)  # _Shard does it
        return Devices(tuple(names), "DataParallel", parallel, process, processes)
    if backend == "tensorflow":
        return Devices(tuple(names), "MirroredStrategy", mirrored_strategy(names))
    print(
        f"clusterloss: --distribute auto: Keras {keras.__version__} has no distribution for "
        f"torch; training on {names[0]} alone of {len(names)} devices (--backend jax or "
        "tensorflow trains on all)",
        file=sys.stderr,
    )
    return Devices(tuple(names[:1]))
