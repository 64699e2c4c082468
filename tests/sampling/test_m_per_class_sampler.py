"""MPerClassSampler: batch composition, reproducibility, errors, and `fit` on it."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import to_np

from clusterloss.layers import SphereFace
from clusterloss.models import ClusterModel
from clusterloss.sampling import MPerClassSampler


def dataset(n=300, classes=7, dim=5, seed=0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(classes), rng.integers(0, classes, n - classes)])
    x = rng.normal(size=(n, dim)).astype("float32") + y[:, None]
    return x, y


def all_batches(sampler):
    return [sampler[i] for i in range(len(sampler))]


@pytest.mark.parametrize("m,batch_size", [(4, 16), (2, 14), (5, 35)])
def test_every_batch_holds_m_samples_of_each_class(m, batch_size):
    x, y = dataset()
    sampler = MPerClassSampler(x, y, m=m, batch_size=batch_size, seed=3)
    assert len(sampler) == len(y) // batch_size and sampler.classes_per_batch == batch_size // m
    for _ in range(2):  # this epoch and the next
        for xb, yb in all_batches(sampler):
            assert xb.shape == (batch_size, x.shape[1]) and yb.shape == (batch_size,)
            classes, counts = np.unique(yb, return_counts=True)
            assert len(classes) == batch_size // m and np.all(counts == m)
        rows = sampler.indices.ravel()
        served = np.concatenate([yb for _, yb in all_batches(sampler)])
        np.testing.assert_array_equal(y[rows], served)
        # About one pass: most samples are seen in an epoch.
        assert len(np.unique(rows)) > 0.7 * len(rows)
        sampler.on_epoch_end()


def test_no_duplicates_within_a_class_group_and_structured_inputs():
    x, y = dataset(n=120, classes=4)
    sampler = MPerClassSampler({"a": x, "b": x[:, :2]}, y.reshape(-1, 1), m=3, batch_size=6, seed=0)
    for step in range(len(sampler)):
        rows = sampler.indices[step]
        assert len(np.unique(rows)) == len(rows)
        inputs, labels = sampler[step]
        np.testing.assert_array_equal(inputs["a"], x[rows])
        np.testing.assert_array_equal(inputs["b"], x[rows, :2])
        np.testing.assert_array_equal(labels, y[rows])
    with pytest.raises(IndexError):
        sampler[len(sampler)]


def test_seeds_are_reproducible_and_epochs_differ():
    x, y = dataset()
    a = MPerClassSampler(x, y, m=4, batch_size=16, seed=7)
    b = MPerClassSampler(x, y, m=4, batch_size=16, seed=7)
    c = MPerClassSampler(x, y, m=4, batch_size=16, seed=8)
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, c.indices)
    first = a.indices.copy()
    a.on_epoch_end()
    b.on_epoch_end()
    np.testing.assert_array_equal(a.indices, b.indices)
    assert not np.array_equal(a.indices, first)
    short = MPerClassSampler(x, y, m=4, batch_size=16, steps_per_epoch=5, seed=1)
    assert short.indices.shape == (5, 16) and len(short) == 5
    assert isinstance(MPerClassSampler(x, y, batch_size=16, seed=None).seed, int)


def test_replace_fills_small_classes():
    y = np.array([0] * 10 + [1] * 2 + [2] * 8)
    x = np.arange(len(y), dtype="float32")[:, None]
    with pytest.raises(ValueError, match=r"1 \(2\).*replace=True"):
        MPerClassSampler(x, y, m=3, batch_size=6)
    sampler = MPerClassSampler(x, y, m=3, batch_size=6, replace=True, steps_per_epoch=20, seed=0)
    for _, yb in all_batches(sampler):
        assert sorted(np.unique(yb, return_counts=True)[1]) == [3, 3]


def test_bad_arguments_raise_clear_errors():
    x, y = dataset(n=60, classes=3)
    with pytest.raises(ValueError, match="multiple of `m`"):
        MPerClassSampler(x, y, m=4, batch_size=10)
    with pytest.raises(ValueError, match="at least 2 classes"):
        MPerClassSampler(x, np.zeros(60, "int64"), m=2, batch_size=4)
    with pytest.raises(ValueError, match="at least 2 classes"):
        MPerClassSampler(x, y, m=4, batch_size=4)
    with pytest.raises(ValueError, match="only 3 classes"):
        MPerClassSampler(x, y, m=2, batch_size=8)
    with pytest.raises(ValueError, match="same number of rows"):
        MPerClassSampler(x[:-1], y, m=2, batch_size=4)
    with pytest.raises(ValueError, match=">= 0"):
        MPerClassSampler(x, -y - 1, m=2, batch_size=4)
    with pytest.raises(ValueError, match="positive int"):
        MPerClassSampler(x, y, m=0, batch_size=4)


def test_fit_on_the_sampler():
    # A margin head that counts training steps shows that `fit` ran every batch of every epoch.
    x, y = dataset(n=96, classes=6, dim=8)
    sampler = MPerClassSampler(x, y, m=4, batch_size=16, seed=0)
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model = ClusterModel(backbone, head=SphereFace(6))
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(sampler, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert int(to_np(model.head.iteration)) == 2 * len(sampler)
    model.evaluate(sampler, verbose=0)  # no training step there
    assert int(to_np(model.head.iteration)) == 2 * len(sampler)
