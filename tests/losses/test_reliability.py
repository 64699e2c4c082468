"""Bad inputs and faults of the pair/triplet/proxy losses, miners and distances: one test per row
of docs/reliability.md, section "Losses, miners and distances" (the row's name is in the test's)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from helpers import BACKEND, forbid_host_copies, grad, to_np
from keras import ops
from pytorch_metric_learning import losses as pl
from pytorch_metric_learning import miners as pm

import clusterloss as cl
from clusterloss.distances import Distance
from clusterloss.layers import ProxyAnchorHead

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 8)).astype("float32")
Y = np.repeat(np.arange(4), 4).astype("int32")

# name -> (make the loss, the kind of y_pred it takes)
LOSSES = {
    "triplet": (lambda: cl.TripletMarginLoss(), "embeddings"),
    "triplet+semihard": (lambda: cl.TripletMarginLoss(miner=cl.TripletMarginMiner(0.2, "semihard")), "embeddings"),
    "contrastive": (cl.ContrastiveLoss, "embeddings"),
    "multi_similarity+miner": (lambda: cl.MultiSimilarityLoss(miner=cl.MultiSimilarityMiner()), "embeddings"),
    "ntxent": (cl.NTXentLoss, "embeddings"),
    "supcon": (cl.SupConLoss, "embeddings"),
    "circle": (cl.CircleLoss, "embeddings"),
    "proxy_anchor": (cl.ProxyAnchorLoss, "cosines"),
    "explicit_triplet": (cl.ExplicitTripletLoss, "triplets"),
}
PAIR_LOSSES = [k for k, (_, kind) in LOSSES.items() if kind == "embeddings"]
MINERS = [
    lambda: cl.TripletMarginMiner(0.2, "semihard"),
    cl.BatchHardMiner,
    cl.BatchSemiHardMiner,
    cl.MultiSimilarityMiner,
    lambda: cl.PairMarginMiner(0.2, 0.8),
]


def _inputs(kind, x=X):
    if kind == "cosines":  # what a ProxyAnchorHead outputs: (batch, num_classes) cosines
        return x / np.linalg.norm(x, axis=1, keepdims=True)
    if kind == "triplets":
        return np.stack([x, np.roll(x, 1, axis=0), np.roll(x, 2, axis=0)], axis=1)
    return x


# ---------------------------------------------------------------------------------------------
# Row "NaN reference embeddings" (rows "NaN or inf embeddings" and "... given to a miner":
# the contracts, losses/test_contract.py and miners/test_contract.py).


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_nan_reference_embeddings_give_a_nan_loss(name):
    loss = LOSSES[name][0]()
    ref = X.copy()
    ref[3, 0] = np.nan
    assert np.isnan(float(to_np(loss(Y, X, ref_embeddings=ref, ref_labels=Y))))
    assert np.isfinite(float(to_np(loss(Y, X, ref_embeddings=X[::-1], ref_labels=Y[::-1]))))


# ---------------------------------------------------------------------------------------------
# Row "NaN in a training step (TerminateOnNaN)".


class _Batches(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1


def _model(kind):
    if kind == "triplets":
        return keras.Sequential([keras.Input((3, 8)), keras.layers.Dense(8)])
    layers = [keras.Input((8,)), keras.layers.Dense(8)]
    return keras.Sequential(layers + [ProxyAnchorHead(4)] if kind == "cosines" else layers)


@pytest.mark.parametrize("name", list(LOSSES))
def test_nan_in_a_training_step_stops_a_compiled_fit_with_terminate_on_nan(name):
    make, kind = LOSSES[name]
    x = np.concatenate([X, X]).copy()
    x[2, 1] = np.nan  # in the first batch
    x = x if kind != "triplets" else _inputs(kind, x)
    y = np.concatenate([Y, Y])
    keras.utils.set_random_seed(0)
    model = _model(kind)
    model.compile("sgd", loss=make())  # jit_compile="auto": XLA on JAX and TensorFlow
    batches = _Batches()
    history = model.fit(
        x, y, batch_size=16, epochs=3, verbose=0, shuffle=False, callbacks=[keras.callbacks.TerminateOnNaN(), batches]
    )
    assert batches.seen == 1 and np.isnan(history.history["loss"][-1])


# ---------------------------------------------------------------------------------------------
# Row "distances that overflow".


@pytest.mark.parametrize(
    "loss",
    [
        cl.TripletMarginLoss(1.0, Distance("squared_euclidean", normalize=False)),
        cl.ContrastiveLoss(0.0, 1.0, Distance("squared_euclidean", normalize=False)),
        cl.NTXentLoss(distance="dot"),
        cl.SupConLoss(distance="dot"),
    ],
    ids=["triplet-squared", "contrastive-squared", "ntxent-dot", "supcon-dot"],
)
def test_distances_that_overflow_give_a_nan_loss_not_zero(loss):
    x = X * np.float32(1e20)  # finite embeddings; squared distances and dots overflow
    value = float(to_np(loss(Y, x)))
    assert np.isnan(value)
    assert np.isfinite(float(to_np(loss(Y, X))))  # the same loss on normal values


# ---------------------------------------------------------------------------------------------
# Rows "empty batch" (a miner's: miners/test_contract.py), "reference arguments", "batch larger
# than the memory".


@pytest.mark.parametrize("name", list(LOSSES))
def test_an_empty_batch_is_a_clear_error(name):
    make, kind = LOSSES[name]
    empty = _inputs(kind, np.zeros((0, 8), "float32"))
    with pytest.raises(ValueError, match="at least one"):
        make()(np.zeros(0, "int32"), empty)


def test_reference_arguments_are_checked():
    loss = cl.ContrastiveLoss()
    with pytest.raises(ValueError, match="must be given together; got only `ref_embeddings`"):
        loss(Y, X, ref_embeddings=X)
    with pytest.raises(
        ValueError,
        match=r"`ref_embeddings` must have the dimension of `y_pred` "
        r"\(8\); got 4",
    ):
        loss(Y, X, ref_embeddings=X[:, :4], ref_labels=Y)
    with pytest.raises(ValueError, match="`ref_labels` and `ref_embeddings` must have the same"):
        loss(Y, X, ref_embeddings=X, ref_labels=Y[:3])
    with pytest.raises(ValueError, match="`ref_embeddings` must hold at least one row"):
        loss(Y, X, ref_embeddings=X[:0], ref_labels=Y[:0])


def test_a_batch_larger_than_the_memory_is_a_clear_error():
    memory = cl.CrossBatchMemory(cl.ContrastiveLoss(), 8, memory_size=10)
    with pytest.raises(
        ValueError,
        match=r"The batch \(16\) must not be larger than "
        "memory_size=10",
    ):
        memory(X, Y)
    with pytest.raises(ValueError, match="`loss` must be a clusterloss pair or triplet loss"):
        cl.CrossBatchMemory(cl.ProxyAnchorLoss(), 8)
    with pytest.raises(ValueError, match="not both"):
        cl.CrossBatchMemory(cl.TripletMarginLoss(miner=cl.BatchHardMiner()), 8, miner=cl.BatchHardMiner())


# ---------------------------------------------------------------------------------------------
# Rows "integer ids >= 2**24", "integer ids >= 2**31".


def _remapped(y):
    return np.unique(y, return_inverse=True)[1].astype("int32")


@pytest.mark.parametrize("offset", [2**24, 2**31], ids=["2**24", "2**31"])
def test_integer_ids_keep_their_exact_value_through_the_loss_classes(offset):
    y = Y.astype("int64") * 1 + offset  # ids offset, offset + 1, ...: float32 merges them
    expected = float(to_np(cl.SupConLoss()(_remapped(y), X)))
    if BACKEND == "jax" and offset >= 2**31:
        with pytest.raises(ValueError, match=r"must be < 2\*\*31 on the JAX backend"):
            cl.SupConLoss()(y, X)
        return
    np.testing.assert_allclose(float(to_np(cl.SupConLoss()(y, X))), expected, rtol=1e-6)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Identity()])
    model.compile(loss=cl.SupConLoss())
    np.testing.assert_allclose(model.evaluate(X, y, batch_size=16, verbose=0), expected, rtol=1e-6)
    # Keras's own cast of y_true to float32 merges the ids (the defect this guards against).
    merged = float(to_np(cl.SupConLoss()(y.astype("float32"), X)))
    assert abs(merged - expected) > 0.1


# ---------------------------------------------------------------------------------------------
# Rows "float64 inputs", "float16/bfloat16 inputs" (the latter: losses/test_pair_losses.py).

FLOAT64_CASES = [
    (
        "triplet+semihard",
        lambda: cl.TripletMarginLoss(miner=cl.TripletMarginMiner(0.2, "semihard")),
        lambda: (pl.TripletMarginLoss(), pm.TripletMarginMiner(0.2, "semihard")),
    ),
    ("contrastive", cl.ContrastiveLoss, lambda: (pl.ContrastiveLoss(), None)),
    (
        "ms+miner",
        lambda: cl.MultiSimilarityLoss(miner=cl.MultiSimilarityMiner()),
        lambda: (pl.MultiSimilarityLoss(), pm.MultiSimilarityMiner()),
    ),
    ("ntxent", cl.NTXentLoss, lambda: (pl.NTXentLoss(), None)),
    ("supcon", cl.SupConLoss, lambda: (pl.SupConLoss(), None)),
]


@pytest.mark.parametrize("case", FLOAT64_CASES, ids=[c[0] for c in FLOAT64_CASES])
def test_float64_inputs_are_computed_in_float64(case):
    _, ours, theirs = case
    x = X.astype("float64")
    value = ours()(Y, x)
    (g,) = grad(lambda t: ours()(Y, t), x)
    loss, miner = theirs()
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.tensor(Y, dtype=torch.long)
    expected = loss(xt, yt, miner(xt, yt) if miner else None)
    expected.backward()
    if BACKEND == "jax":  # x64 off: JAX holds float64 arrays as float32
        assert keras.backend.standardize_dtype(value.dtype) == "float32"
        np.testing.assert_allclose(float(to_np(value)), float(expected), rtol=1e-5)
        return
    assert keras.backend.standardize_dtype(value.dtype) == "float64" and g.dtype == np.float64
    np.testing.assert_allclose(float(to_np(value)), float(expected), rtol=1e-9)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-6, atol=1e-10)  # float32: ~1e-8


# ---------------------------------------------------------------------------------------------
# Row "mixed precision".


@pytest.fixture
def policy():
    def set_policy(name):
        keras.mixed_precision.set_global_policy(name)

    yield set_policy
    keras.mixed_precision.set_global_policy("float32")


@pytest.mark.parametrize("name", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_fit_trains_with_float32_loss_math(policy, name):
    policy(name)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(8)])
    assert keras.backend.standardize_dtype(model(X).dtype) == name.split("_")[1]
    model.compile(keras.optimizers.Adam(1e-2), loss=cl.TripletMarginLoss(0.2, miner=cl.TripletMarginMiner(0.2, "all")))
    x, y = np.tile(X, (4, 1)), np.tile(Y, 4)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    losses = history.history["loss"]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert keras.backend.standardize_dtype(cl.TripletMarginLoss()(Y, model(X)).dtype) == "float32"


# ---------------------------------------------------------------------------------------------
# Row "NumPy scalars as arguments".


def test_numpy_scalars_are_accepted_as_arguments():
    loss = cl.TripletMarginLoss(np.float32(0.2), miner=cl.TripletMarginMiner(np.float64(0.1)))
    memory = cl.CrossBatchMemory(cl.SupConLoss(np.float32(0.5)), np.int64(8), np.int32(32))
    assert (memory.embedding_size, memory.memory_size) == (8, 32)
    import json

    json.dumps(keras.saving.serialize_keras_object(loss))
    json.dumps(keras.saving.serialize_keras_object(memory))
    assert np.isfinite(float(to_np(loss(Y, X))))


# ---------------------------------------------------------------------------------------------
# Row "labels and embeddings on the device".


@pytest.mark.skipif(BACKEND != "torch", reason="counts host copies of torch tensors")
def test_losses_and_miners_never_copy_device_tensors_to_the_host(monkeypatch):
    x = torch.tensor(X, requires_grad=True)
    y = torch.tensor(Y, dtype=torch.long)
    calls = [make() for make, kind in LOSSES.values() if kind == "embeddings"]
    memory = cl.CrossBatchMemory(cl.ContrastiveLoss(), 8, 32)
    memory(x, y, training=True)  # builds the layer before host copies are forbidden

    forbid_host_copies(monkeypatch)
    total = sum(loss(y, x) for loss in calls) + ops.mean(memory(x, y, training=True))
    total.backward()
    for make in MINERS:
        make().mine(x, y)
    monkeypatch.undo()
    assert np.isfinite(x.grad.numpy()).all() and np.abs(x.grad.numpy()).max() > 0
