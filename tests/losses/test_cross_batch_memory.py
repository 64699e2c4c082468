"""CrossBatchMemory against pytorch-metric-learning's CrossBatchMemory on the same batches, its
state (eval mode, saving), and training with it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from helpers import grad, to_np
from keras import ops
from pytorch_metric_learning import losses as pl
from pytorch_metric_learning import miners as pm

import clusterloss as cl
from clusterloss._registry import register

DIM, MEMORY = 8, 20

CASES = [  # (id, ours, PML loss, PML miner given to PML's CrossBatchMemory)
    ("contrastive", lambda: cl.CrossBatchMemory(cl.ContrastiveLoss(), DIM, MEMORY), pl.ContrastiveLoss, None),
    (
        "triplet+semihard",
        lambda: cl.CrossBatchMemory(
            cl.TripletMarginLoss(0.1), DIM, MEMORY, miner=cl.TripletMarginMiner(0.2, "semihard")
        ),
        lambda: pl.TripletMarginLoss(0.1),
        lambda: pm.TripletMarginMiner(0.2, "semihard"),
    ),
    ("supcon", lambda: cl.CrossBatchMemory(cl.SupConLoss(), DIM, MEMORY), pl.SupConLoss, None),
    (
        "multi_similarity+miner",
        lambda: cl.CrossBatchMemory(cl.MultiSimilarityLoss(miner=cl.MultiSimilarityMiner()), DIM, MEMORY),
        pl.MultiSimilarityLoss,
        pm.MultiSimilarityMiner,
    ),
]


def _batches(steps=5, batch=6, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(batch, DIM)).astype("float32"), rng.integers(0, 3, batch).astype("int32"))
        for _ in range(steps)
    ]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_equals_pml_cross_batch_memory_over_steps_that_wrap_around(case):
    _, ours, theirs, miner = case
    memory = ours()
    reference = pl.CrossBatchMemory(theirs(), DIM, MEMORY, miner=miner() if miner else None)
    reference.embedding_memory = reference.embedding_memory.double()
    for x, y in _batches():  # 5 batches of 6 in a memory of 20: the queue wraps at step 4
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        expected = reference(xt, torch.tensor(y, dtype=torch.long))
        expected.backward()
        (g,) = grad(lambda t: ops.mean(memory(t, y, training=False)), x)
        per_sample = to_np(memory(x, y, training=True))
        assert per_sample.shape == (6,)
        np.testing.assert_allclose(per_sample.mean(), float(expected.detach()), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    assert int(to_np(memory.filled)) == MEMORY and int(to_np(memory.position)) == 10


def test_eval_mode_reads_the_queue_without_writing_it():
    memory = cl.CrossBatchMemory(cl.ContrastiveLoss(), DIM, MEMORY)
    (x1, y1), (x2, y2) = _batches(2)
    memory(x1, y1, training=True)
    before = to_np(memory.embedding_memory).copy()
    evaluated = to_np(memory(x2, y2, training=False))
    np.testing.assert_array_equal(to_np(memory.embedding_memory), before)
    assert int(to_np(memory.filled)) == 6
    np.testing.assert_allclose(to_np(memory(x2, y2, training=True)), evaluated, rtol=1e-6)
    assert int(to_np(memory.filled)) == 12
    memory.reset_memory()
    assert int(to_np(memory.filled)) == 0 and not to_np(memory.embedding_memory).any()


@register
class MemoryModel(keras.Model):
    """A backbone trained with a CrossBatchMemory loss layer (the per-sample protocol)."""

    def __init__(self, backbone, memory, **kwargs):
        super().__init__(**kwargs)
        self.backbone, self.memory = backbone, memory

    def call(self, x, training=False):
        return self.backbone(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(self.memory(y_pred, y, training=training))

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {**super().get_config(), "backbone": serialize(self.backbone), "memory": serialize(self.memory)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("backbone", "memory"):
            config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


def test_trains_in_a_compiled_fit_and_saves_its_queue(tmp_path):
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = (x[:320] / 16.0).astype("float32"), y[:320].astype("int32")
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((64,)), keras.layers.Dense(DIM)])
    model = MemoryModel(backbone, cl.CrossBatchMemory(cl.ContrastiveLoss(), DIM, 96))
    model.compile(keras.optimizers.Adam(1e-2))
    history = model.fit(x, y, batch_size=32, epochs=2, shuffle=False, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    memory = model.memory
    assert int(to_np(memory.filled)) == 96 and int(to_np(memory.position)) == (20 * 32) % 96
    # The queue holds the last 96 embeddings, oldest overwritten first, labels with them.
    position = int(to_np(memory.position))
    order = (position + np.arange(96)) % 96
    np.testing.assert_array_equal(to_np(memory.label_memory)[order], y[-96:])
    model.save(tmp_path / "xbm.keras")
    loaded = keras.saving.load_model(tmp_path / "xbm.keras")
    for name in ("embedding_memory", "label_memory", "position", "filled"):
        np.testing.assert_array_equal(to_np(getattr(loaded.memory, name)), to_np(getattr(memory, name)))
    assert loaded.memory.get_config() == memory.get_config()


def test_embeddings_of_another_size_are_a_clear_error():
    """The queue is built at construction, so the size is checked at every call (was a
    backend broadcast error inside the call)."""
    memory = cl.CrossBatchMemory(cl.ContrastiveLoss(), DIM, MEMORY)
    x, y = _batches(steps=1)[0]
    with pytest.raises(
        ValueError,
        match=r"`embeddings` must have embedding_size=8 columns; "
        r"got shape \(6, 16\)",
    ):
        memory(np.concatenate([x, x], axis=1), y, training=True)
    assert np.all(to_np(memory.filled) == 0)  # nothing written
