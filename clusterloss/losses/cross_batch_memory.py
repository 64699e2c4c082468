"""Cross-batch memory: a queue of past embeddings that a pair/triplet loss compares the batch to."""

from __future__ import annotations

import inspect
from typing import Any

import keras
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import (
    check_embeddings,
    check_labels,
    check_positive_int,
    check_same_batch,
    label_dtype,
    upcast,
)
from clusterloss.losses.base import MetricLoss
from clusterloss.tuples.pairs import get_miner


def _takes_references(loss) -> bool:
    return isinstance(loss, MetricLoss) and ("ref_embeddings" in inspect.signature(loss.fn).parameters)


@register
class CrossBatchMemory(keras.layers.Layer):
    """Cross-batch memory (Wang et al., "Cross-Batch Memory for Embedding Learning", CVPR
    2020; PML's `CrossBatchMemory`): the wrapped pair/triplet loss compares each batch with
    the last `memory_size` embeddings seen, not only with itself.

    `call(embeddings, labels, training=False)` first writes the batch into the queue (a ring
    buffer: the oldest entries are overwritten), then returns one value per sample, shape
    `(batch,)`, whose mean is `loss` with the batch as queries and the filled part of the queue
    (this batch included) as references, each query's own slot left out. The queue holds
    `stop_gradient` copies: gradients flow through the queries only, as in PML. With
    `training=False` the value is the same but the queue is not changed.

    The queue is layer state (non-trainable weights: the embeddings, their labels, the write
    position and the number of filled slots, created with the layer: construct it inside a
    `tf.distribute` strategy's scope), so it is saved and loaded with the model and
    works under `jit_compile` on every backend (a `keras.losses.Loss` cannot hold state on
    JAX). The weights use `aggregation="only_first_replica"`, so with `tf.distribute` every
    replica keeps the first replica's queue (each replica's loss still sees only its own
    batch; see docs/losses.md, "Several devices"). Under `keras.distribution.DataParallel` on
    JAX the layer sees the global batch.

    This is the per-sample loss-layer protocol of `CenterLoss`:
    `layer(embeddings, labels, training=...) -> (batch,)`; give it to a model that adds such
    layers to its loss, or call it in your own `compute_loss`.

    Args:
        loss: a clusterloss pair or triplet loss (`ContrastiveLoss`, `TripletMarginLoss`,
            `MultiSimilarityLoss`, `NTXentLoss`, `SupConLoss`, `CircleLoss`, ...), or its
            serialized config.
        embedding_size: the embedding dimension.
        memory_size: the number of past embeddings kept, >= the batch size (PML's default
            1024).
        miner: a miner over (batch, memory) pairs; replaces the loss's own miner (give it to
            one of the two, not both).
    """

    def __init__(self, loss: Any, embedding_size: int, memory_size: int = 1024, miner: Any = None, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(loss, dict):
            loss = keras.saving.deserialize_keras_object(loss)
        if not _takes_references(loss):
            raise ValueError(
                "`loss` must be a clusterloss pair or triplet loss that takes reference "
                f"embeddings (e.g. ContrastiveLoss()); got {loss!r}."
            )
        self.loss = loss
        self.embedding_size = check_positive_int(embedding_size, "embedding_size")
        self.memory_size = check_positive_int(memory_size, "memory_size")
        self.miner = get_miner(miner)
        if self.miner is not None and loss.miner is not None:
            raise ValueError(
                "Give the miner to CrossBatchMemory or to its loss, not both; got "
                f"miner={self.miner!r} and loss.miner={loss.miner!r}."
            )
        # The queue's shape is known now: create it now, not inside a traced train step
        # (tf.distribute cannot create variables there).
        self.build()

    def _check_size(self, embeddings_shape) -> None:
        dim = tuple(embeddings_shape)[-1]
        if dim is not None and dim != self.embedding_size:
            raise ValueError(
                f"`embeddings` must have embedding_size={self.embedding_size} columns; "
                f"got shape {tuple(embeddings_shape)}."
            )

    def build(self, embeddings_shape=None, labels_shape=None):
        if embeddings_shape is not None:
            self._check_size(embeddings_shape)
        state = dict(initializer="zeros", trainable=False, aggregation="only_first_replica")
        self.embedding_memory = self.add_weight(
            shape=(self.memory_size, self.embedding_size), name="embedding_memory", **state
        )
        self.label_memory = self.add_weight(
            shape=(self.memory_size,), dtype=label_dtype(), name="label_memory", **state
        )
        self.position = self.add_weight(shape=(), dtype="int32", name="position", **state)
        self.filled = self.add_weight(shape=(), dtype="int32", name="filled", **state)
        self.built = True

    def call(self, embeddings, labels, training: bool = False):
        check_embeddings(embeddings, allow_empty=False)
        self._check_size(embeddings.shape)  # built at construction: the shape is checked here
        check_same_batch(labels, embeddings)
        labels = check_labels(labels)
        batch = embeddings.shape[0]
        if isinstance(batch, int) and batch > self.memory_size:
            raise ValueError(f"The batch ({batch}) must not be larger than memory_size={self.memory_size}.")
        x = upcast(embeddings)
        n = ops.shape(x)[0]
        size = self.memory_size
        slots = (self.position + ops.arange(n, dtype="int32")) % size  # (batch,)
        memory = ops.scatter_update(
            ops.convert_to_tensor(self.embedding_memory),
            slots[:, None],
            ops.cast(ops.stop_gradient(x), self.embedding_memory.dtype),
        )
        memory_labels = ops.scatter_update(
            ops.convert_to_tensor(self.label_memory), slots[:, None], ops.cast(labels, self.label_memory.dtype)
        )
        filled = ops.minimum(self.filled + n, size)
        if training:
            self.embedding_memory.assign(memory)
            self.label_memory.assign(memory_labels)
            self.position.assign((self.position + n) % size)
            self.filled.assign(filled)
        index = ops.arange(size, dtype="int32")
        ref_mask = ops.logical_and((index < filled)[None, :], ops.not_equal(slots[:, None], index[None, :]))
        override = {} if self.miner is None else {"miner": self.miner}
        return self.loss.call(labels, x, ref_embeddings=memory, ref_labels=memory_labels, ref_mask=ref_mask, **override)

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return (embeddings_shape[0],)

    def reset_memory(self) -> None:
        """Empty the queue."""
        for variable in (self.embedding_memory, self.label_memory, self.position, self.filled):
            variable.assign(ops.zeros(variable.shape, variable.dtype))

    def get_config(self) -> dict[str, Any]:
        serialize = keras.saving.serialize_keras_object
        return {
            **super().get_config(),
            "loss": serialize(self.loss),
            "embedding_size": self.embedding_size,
            "memory_size": self.memory_size,
            "miner": None if self.miner is None else serialize(self.miner),
        }
