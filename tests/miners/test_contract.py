"""The contract of every registered miner, driven by the library: each `Miner` subclass
registered under `clusterloss>` gets the same checks, and one that has no entry in `EXAMPLES`
fails `test_every_registered_miner_has_an_example`. The checks: NaN embeddings give NaN masks
(not an empty selection), an empty batch is a clear error, and the config rebuilds the miner
with every option. Each miner's selections against PML are in the other files here."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import to_np

import clusterloss as cl
from clusterloss.miners import Miner

# The class with options other than its defaults (its seed where it samples).
EXAMPLES = {
    "AngularMiner": lambda: cl.AngularMiner(25.0),
    "BatchEasyHardMiner": lambda: cl.BatchEasyHardMiner("hard", "hard"),
    "BatchHardMiner": lambda: cl.BatchHardMiner("cosine"),
    "BatchSemiHardMiner": lambda: cl.BatchSemiHardMiner("cosine"),
    "DistanceWeightedMiner": lambda: cl.DistanceWeightedMiner(0.4, seed=3),
    "HDCMiner": lambda: cl.HDCMiner(0.3),
    "MultiSimilarityMiner": lambda: cl.MultiSimilarityMiner(0.2),
    "PairMarginMiner": lambda: cl.PairMarginMiner(0.3, 0.7, "squared_euclidean"),
    "TripletMarginMiner": lambda: cl.TripletMarginMiner(0.2, "semihard"),
    "UniformHistogramMiner": lambda: cl.UniformHistogramMiner(20, 3, 4, seed=1),
}
REGISTERED = {
    cls.__name__: cls
    for key, cls in keras.saving.get_custom_objects().items()
    if key.startswith("clusterloss>") and isinstance(cls, type) and issubclass(cls, Miner)
}
NAMES = sorted(REGISTERED)
VARIANTS = [pytest.param(name, variant, id=f"{name}-{variant}") for name in NAMES for variant in ("default", "example")]

RNG = np.random.default_rng(0)
X = RNG.normal(size=(16, 8)).astype("float32")
Y = np.repeat(np.arange(4), 4).astype("int32")


def _make(name: str, variant: str) -> Miner:
    return REGISTERED[name]() if variant == "default" else EXAMPLES[name]()


def test_every_registered_miner_has_an_example():
    assert {"TripletMarginMiner", "UniformHistogramMiner"} <= set(REGISTERED)  # the lookup sees them
    assert set(REGISTERED) - set(EXAMPLES) == set(), "add the miner to EXAMPLES"
    assert set(EXAMPLES) - set(REGISTERED) == set(), "an example of a miner that is not registered"
    for name, make in EXAMPLES.items():
        miner = make()
        assert type(miner) is REGISTERED[name] and miner.get_config() != REGISTERED[name]().get_config(), name


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_nan_embeddings_give_nan_masks_not_an_empty_selection(name, variant):
    x = X.copy()
    x[0, 0] = np.nan
    mined = _make(name, variant)(x, Y)
    for mask in mined if isinstance(mined, tuple) else (mined,):
        assert np.all(np.isnan(to_np(mask)))


@pytest.mark.parametrize("name,variant", VARIANTS)
def test_an_empty_batch_is_a_clear_error(name, variant):
    with pytest.raises(ValueError, match="`embeddings` must hold at least one row"):
        _make(name, variant)(np.zeros((0, 8), "float32"), np.zeros(0, "int32"))


@pytest.mark.parametrize("name", NAMES)
def test_the_config_rebuilds_the_miner(name):
    miner = EXAMPLES[name]()
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(miner))
    assert type(restored) is type(miner) and restored.get_config() == miner.get_config()
