"""The contract of every registered loss, driven by the library: each `keras.losses.Loss`
subclass registered under `clusterloss>` (`keras.saving.get_custom_objects()`) gets the same
checks, and one that has no entry in `TABLE` fails `test_every_registered_loss_has_an_entry`
(so a new loss cannot skip the contract). The checks: value and gradient equal to
pytorch-metric-learning 2.9.0's (where PML has a counterpart taking the same inputs; else the
entry names the test that holds its reference), NaN or inf in gives NaN out, float16/bfloat16
inputs give a finite float32 loss close to the float32 one (at the defaults), and five
compiled training steps on one batch lower the loss and the saved `.keras` model loads with no
`custom_objects` and the same loss. The losses' own options, miners and edge cases are in the
other files of this folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import keras
import numpy as np
import pytest
from helpers import to_np, value_and_grad
from keras import ops
from pytorch_metric_learning import distances as pd
from pytorch_metric_learning import losses as pl
from pytorch_metric_learning import miners as pm
from pytorch_metric_learning import regularizers as pr

import clusterloss as cl

CLASSES = 4


@dataclass(frozen=True)
class Entry:
    """What the checks need of one loss class."""

    example: Callable[[], keras.losses.Loss]  # the class with options other than its defaults
    inputs: str = "embeddings"  # embeddings, triplets, proxy_anchor / proxy_nca (a head's cosines), logits
    pml: Callable | None = None  # PML's loss with the example's options
    pml_miner: Callable | None = None  # PML's miner matching the example's miner
    no_pml: str = ""  # where the reference is when PML has no counterpart on these inputs


TABLE = {
    "AngularLoss": Entry(lambda: cl.AngularLoss(35.0), pml=lambda: pl.AngularLoss(35)),
    "CircleLoss": Entry(lambda: cl.CircleLoss(0.3, 64.0), pml=lambda: pl.CircleLoss(0.3, 64)),
    "ContrastiveLoss": Entry(
        lambda: cl.ContrastiveLoss(0.1, 0.9, "cosine"),
        pml=lambda: pl.ContrastiveLoss(0.1, 0.9, distance=pd.CosineSimilarity()),
    ),
    "ExplicitTripletLoss": Entry(
        lambda: cl.ExplicitTripletLoss(0.3, "euclidean"),
        inputs="triplets",
        no_pml="PML takes labels, not (anchor, positive, negative) stacks: test_pair_losses.py"
        "::test_explicit_triplets_match_pml_packaged_triplets_and_the_formula",
    ),
    "FastAPLoss": Entry(
        lambda: cl.FastAPLoss(12, "euclidean"), pml=lambda: pl.FastAPLoss(12, distance=pd.LpDistance())
    ),
    "GeneralizedLiftedStructureLoss": Entry(
        lambda: cl.GeneralizedLiftedStructureLoss(0.7, 0.1), pml=lambda: pl.GeneralizedLiftedStructureLoss(0.7, 0.1)
    ),
    "InstanceLoss": Entry(lambda: cl.InstanceLoss(16.0), pml=lambda: pl.InstanceLoss(16)),
    "LiftedStructureLoss": Entry(
        lambda: cl.LiftedStructureLoss(0.8, 0.1), pml=lambda: pl.LiftedStructureLoss(0.8, 0.1)
    ),
    "MarginLoss": Entry(lambda: cl.MarginLoss(0.1, 0.2, 1.0), pml=lambda: pl.MarginLoss(0.1, 0.2, 1)),
    "MultiSimilarityLoss": Entry(
        lambda: cl.MultiSimilarityLoss(1.0, 20.0, 0.3, miner=cl.MultiSimilarityMiner(0.1)),
        pml=lambda: pl.MultiSimilarityLoss(1.0, 20.0, 0.3),
        pml_miner=pm.MultiSimilarityMiner,
    ),
    "NCALoss": Entry(
        lambda: cl.NCALoss(4.0, embedding_regularizer=cl.LpRegularizer(2, 1)),
        pml=lambda: pl.NCALoss(4, embedding_regularizer=pr.LpRegularizer(p=2, power=1)),
    ),
    "NTXentLoss": Entry(lambda: cl.NTXentLoss(0.5), pml=lambda: pl.NTXentLoss(0.5)),
    "ProxyAnchorLoss": Entry(
        lambda: cl.ProxyAnchorLoss(0.2, 16.0),
        inputs="proxy_anchor",
        no_pml="PML's loss owns its proxies, ours takes a head's cosines: test_pair_losses.py"
        "::test_proxy_anchor_matches_pml_for_embeddings_and_proxies",
    ),
    "ProxyNCALoss": Entry(
        lambda: cl.ProxyNCALoss(4.0),
        inputs="proxy_nca",
        no_pml="PML's loss owns its proxies, ours takes a head's cosines: "
        "layers/test_heads_and_weight_regularizers.py (its ProxyNCA rows)",
    ),
    "SparseCategoricalFocalCrossentropy": Entry(
        lambda: cl.SparseCategoricalFocalCrossentropy(1.0, 0.5, from_logits=True),
        inputs="logits",
        no_pml="a classification loss: Keras's one-hot loss and NumPy in test_classification_losses.py",
    ),
    "SparseLabelSmoothingCrossentropy": Entry(
        lambda: cl.SparseLabelSmoothingCrossentropy(0.2, from_logits=True),
        inputs="logits",
        no_pml="a classification loss: Keras's one-hot loss and NumPy in test_classification_losses.py",
    ),
    "SupConLoss": Entry(
        lambda: cl.SupConLoss(0.5, distance="dot"),
        # PML's DotProductSimilarity() normalises by default (= cosine); ours does not.
        pml=lambda: pl.SupConLoss(0.5, distance=pd.DotProductSimilarity(normalize_embeddings=False)),
    ),
    "TripletMarginLoss": Entry(
        lambda: cl.TripletMarginLoss(0.3, miner=cl.TripletMarginMiner(0.2, "semihard")),
        pml=lambda: pl.TripletMarginLoss(0.3),
        pml_miner=lambda: pm.TripletMarginMiner(0.2, "semihard"),
    ),
    "TupletMarginLoss": Entry(lambda: cl.TupletMarginLoss(4.0, 32.0), pml=lambda: pl.TupletMarginLoss(4.0, 32)),
}

REGISTERED = {
    cls.__name__: cls
    for key, cls in keras.saving.get_custom_objects().items()
    if key.startswith("clusterloss>") and isinstance(cls, type) and issubclass(cls, keras.losses.Loss)
}
NAMES = sorted(REGISTERED)
WITH_PML = [name for name in NAMES if name in TABLE and TABLE[name].pml is not None]


def test_every_registered_loss_has_an_entry():
    assert {"TripletMarginLoss", "SparseLabelSmoothingCrossentropy"} <= set(REGISTERED)  # the lookup sees them
    assert set(REGISTERED) - set(TABLE) == set(), "add the loss to TABLE"
    assert set(TABLE) - set(REGISTERED) == set(), "an entry for a loss that is not registered"
    for name, entry in TABLE.items():
        loss = entry.example()
        assert type(loss) is REGISTERED[name], name
        assert loss.get_config() != REGISTERED[name]().get_config(), f"{name}: the example keeps every default"
        assert (entry.pml is None) != (entry.no_pml == ""), f"{name}: a PML counterpart or where the reference is"


def _batch(seed: int, kind: str, loss: keras.losses.Loss | None = None) -> tuple[np.ndarray, np.ndarray]:
    """16 labels of 4 classes (each class present) and the inputs of the loss's kind."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(CLASSES), 4)).astype("int32")
    x = rng.normal(size=(16, 8)).astype("float32")
    if kind == "triplets":
        return np.stack([x, np.roll(x, 1, axis=0), np.roll(x, 2, axis=0)], axis=1), y
    if kind in ("proxy_anchor", "proxy_nca"):  # what a proxy head outputs: cosines (batch, classes)
        return np.tanh(x[:, :CLASSES]).astype("float32"), y
    if kind == "logits":
        logits = 2 * x[:, :CLASSES]
        if loss is not None and not loss.get_config()["from_logits"]:
            return to_np(ops.softmax(logits)).astype("float32"), y
        return logits, y
    return x, y


def _variants() -> list:
    return [pytest.param(name, variant, id=f"{name}-{variant}") for name in NAMES for variant in ("default", "example")]


def _make(name: str, variant: str) -> keras.losses.Loss:
    return REGISTERED[name]() if variant == "default" else TABLE[name].example()


@pytest.mark.parametrize("name", WITH_PML)
def test_value_and_gradient_match_pml(name):
    import torch

    entry = TABLE[name]
    x, y = _batch(0, entry.inputs)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y, dtype=torch.long)
    theirs = entry.pml()(xt, yt, entry.pml_miner()(xt, yt) if entry.pml_miner else None)
    theirs.backward()
    ref_value, ref_g = float(theirs.detach()), xt.grad.numpy()
    loss = entry.example()
    value, g = value_and_grad(lambda t: loss(y, t), x)
    assert ref_value > 0
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, ref_g, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(ref_g).max()))


@pytest.mark.parametrize("name,variant", _variants())
def test_nan_or_inf_in_gives_nan_out_and_half_precision_is_computed_in_float32(name, variant):
    loss = _make(name, variant)
    kind = TABLE[name].inputs
    x, y = _batch(1, kind, loss)
    # Inputs clipped to their range take no inf: probabilities, and ProxyNCA's cosines.
    clipped = kind == "proxy_nca" or (kind == "logits" and not loss.get_config()["from_logits"])
    for bad in (np.nan,) if clipped else (np.nan, np.inf):
        broken = x.copy()
        broken[5, ..., 2] = bad
        per_sample = to_np(loss.call(y, broken))
        if kind == "logits":  # one row's value: the others stay finite
            assert np.isnan(per_sample[5]) and np.all(np.isfinite(np.delete(per_sample, 5))), (bad, per_sample)
        else:  # every value depends on the whole batch
            assert np.all(np.isnan(per_sample)), (bad, per_sample)
        assert np.isnan(float(to_np(loss(y, broken)))), bad
    if variant == "example":
        return  # half precision: at the defaults (the same computation; it saves a third of the time)
    full = float(to_np(loss(y, x)))
    for dtype in ("float16", "bfloat16"):
        half = loss(y, ops.cast(x, dtype))
        assert keras.backend.standardize_dtype(half.dtype) == "float32"
        np.testing.assert_allclose(float(to_np(half)), full, rtol=5e-2, atol=2e-2, err_msg=dtype)


def _model(kind: str) -> keras.Model:
    if kind == "triplets":
        return keras.Sequential([keras.Input((3, 8)), keras.layers.Dense(8)])
    layers = [keras.Input((8,)), keras.layers.Dense(8)]
    if kind == "proxy_anchor":
        layers.append(cl.ProxyAnchorHead(CLASSES))
    elif kind == "proxy_nca":
        layers.append(cl.ProxyNCAHead(CLASSES))
    elif kind == "logits":
        layers.append(keras.layers.Dense(CLASSES))
    return keras.Sequential(layers)


@pytest.mark.parametrize("name", NAMES)
def test_training_lowers_the_loss_and_the_saved_model_loads_with_no_custom_objects(name, tmp_path):
    entry = TABLE[name]
    rng = np.random.default_rng(2)
    x = rng.normal(size=(16, 3, 8) if entry.inputs == "triplets" else (16, 8)).astype("float32")
    y = np.repeat(np.arange(CLASSES), 4).astype("int32")
    keras.utils.set_random_seed(0)
    model = _model(entry.inputs)
    model.compile(keras.optimizers.Adam(1e-2), loss=entry.example())
    # Compiled steps on the one batch (a miner's selection may change at a step: a few steps).
    history = model.fit(x, y, batch_size=16, epochs=5, shuffle=False, verbose=0).history
    before, after = history["loss"][0], float(to_np(model.loss(y, model(x))))  # [0]: the first weights
    assert 0 < after < before, (before, after)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert type(loaded.loss) is REGISTERED[name] and loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_allclose(float(to_np(loaded.loss(y, loaded(x)))), after, rtol=1e-6)
