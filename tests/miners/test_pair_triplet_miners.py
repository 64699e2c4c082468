"""Miners against slow NumPy loops over every triplet/pair, and against PML's miners."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from helpers import BACKEND, to_np
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import miners as pml_miners

from clusterloss.distances import Distance
from clusterloss.miners import (
    BatchHardMiner,
    BatchSemiHardMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    TripletMarginMiner,
)


def _batch(batch, classes, seed, dim=8):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch, dim)).astype("float32")
    y = rng.integers(0, classes, size=batch).astype("int32")
    return x, y


def _dist(x, name):
    x = x.astype("float64")
    n = x / np.linalg.norm(x, axis=1, keepdims=True)
    if name == "cosine":
        return n @ n.T
    return np.sqrt(np.maximum(((n[:, None] - n[None]) ** 2).sum(-1), 0))


def _triplets(y):
    b = len(y)
    for a in range(b):
        for p in range(b):
            if p == a or y[p] != y[a]:
                continue
            for n in range(b):
                if y[n] != y[a]:
                    yield a, p, n


def _as_mask(shape, index_lists):
    mask = np.zeros(shape, "float32")
    for idx in zip(*index_lists):
        mask[idx] += 1
    return mask


# (batch, classes, seed); the last: few positives. Few distinct shapes: JAX compiles each op
# once per shape in eager mode.
SIZES = [(16, 3, 0), (16, 5, 1), (16, 14, 2)]


@pytest.mark.parametrize("batch,classes,seed", SIZES)
@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_triplet_margin_miner_matches_a_loop(batch, classes, seed, kind, distance):
    x, y = _batch(batch, classes, seed)
    margin = 0.3
    mat = _dist(x, distance)
    expected = np.zeros((batch,) * 3, "float32")
    for a, p, n in _triplets(y):
        m = mat[a, n] - mat[a, p] if distance == "euclidean" else mat[a, p] - mat[a, n]
        keep = {
            "all": m <= margin,
            "hard": m <= 0,
            "semihard": 0 < m <= margin,
            "easy": m > margin,
        }[kind]
        expected[a, p, n] = keep
    got = to_np(TripletMarginMiner(margin, kind, distance=distance)(x, y))
    np.testing.assert_array_equal(got, expected)
    assert expected.sum() > 0 or kind == "hard"


@pytest.mark.parametrize("batch,classes,seed", SIZES)
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_batch_hard_miner_matches_a_loop(batch, classes, seed, distance):
    x, y = _batch(batch, classes, seed)
    far = _dist(x, distance) * (1 if distance == "euclidean" else -1)
    expected = np.zeros((batch,) * 3, "float32")
    for a in range(batch):
        pos = [p for p in range(batch) if p != a and y[p] == y[a]]
        neg = [n for n in range(batch) if y[n] != y[a]]
        if pos and neg:
            expected[a, max(pos, key=lambda p: far[a, p]), min(neg, key=lambda n: far[a, n])] = 1
    got = to_np(BatchHardMiner(distance=distance)(x, y))
    np.testing.assert_array_equal(got, expected)
    assert got.sum() == sum(1 for a in range(batch) if (y == y[a]).sum() > 1)


@pytest.mark.parametrize("batch,classes,seed", SIZES + [(16, 3, "ties")])
def test_batch_semihard_miner_matches_a_loop(batch, classes, seed):
    if seed == "ties":  # equal distances everywhere: ties go to the lowest index
        x = np.random.default_rng(3).integers(0, 3, size=(batch, 1)).astype("float32") + 1.0
        y = np.tile(np.arange(classes), batch)[:batch].astype("int32")
    else:
        x, y = _batch(batch, classes, seed)
    d = _dist(x, "euclidean")
    expected = np.zeros((batch,) * 3, "float32")
    for a in range(batch):
        neg = [n for n in range(batch) if y[n] != y[a]]
        for p in range(batch):
            if p == a or y[p] != y[a] or not neg:
                continue
            outside = [n for n in neg if d[a, n] > d[a, p]]
            n = min(outside, key=lambda n: d[a, n]) if outside else max(neg, key=lambda n: d[a, n])
            expected[a, p, n] = 1
    got = to_np(BatchSemiHardMiner()(x, y))
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("batch,classes,seed", SIZES)
@pytest.mark.parametrize("distance", ["cosine", "euclidean"])
def test_multi_similarity_miner_matches_a_loop(batch, classes, seed, distance):
    x, y = _batch(batch, classes, seed)
    eps = 0.1
    s = _dist(x, distance) * (1 if distance == "cosine" else -1)  # larger = closer
    pos_exp = np.zeros((batch, batch), "float32")
    neg_exp = np.zeros((batch, batch), "float32")
    for a in range(batch):
        pos = [p for p in range(batch) if p != a and y[p] == y[a]]
        neg = [n for n in range(batch) if y[n] != y[a]]
        for p in pos:
            pos_exp[a, p] = bool(neg) and s[a, p] - eps < max(s[a, n] for n in neg)
        for n in neg:
            neg_exp[a, n] = bool(pos) and s[a, n] + eps > min(s[a, p] for p in pos)
    got_pos, got_neg = (to_np(m) for m in MultiSimilarityMiner(eps, distance=distance)(x, y))
    np.testing.assert_array_equal(got_pos, pos_exp)
    np.testing.assert_array_equal(got_neg, neg_exp)
    assert 0 < got_neg.sum() < (y[:, None] != y[None]).sum()  # it really selects


@pytest.mark.parametrize("batch,classes,seed", SIZES)
@pytest.mark.parametrize("distance,margins", [("euclidean", (1.1, 1.3)), ("cosine", (0.2, 0.1))])
def test_pair_margin_miner_matches_a_loop(batch, classes, seed, distance, margins):
    x, y = _batch(batch, classes, seed)
    mat = _dist(x, distance)
    pos_exp = np.zeros((batch, batch), "float32")
    neg_exp = np.zeros((batch, batch), "float32")
    for a in range(batch):
        for b in range(batch):
            if a != b and y[a] == y[b]:
                pos_exp[a, b] = mat[a, b] > margins[0] if distance == "euclidean" else mat[a, b] < margins[0]
            elif y[a] != y[b]:
                neg_exp[a, b] = mat[a, b] < margins[1] if distance == "euclidean" else mat[a, b] > margins[1]
    got_pos, got_neg = (to_np(m) for m in PairMarginMiner(*margins, distance=distance)(x, y))
    np.testing.assert_array_equal(got_pos, pos_exp)
    np.testing.assert_array_equal(got_neg, neg_exp)


PML_CASES = [
    (lambda: TripletMarginMiner(0.2, "semihard"), lambda: pml_miners.TripletMarginMiner(0.2, "semihard")),
    (lambda: TripletMarginMiner(0.1, "hard"), lambda: pml_miners.TripletMarginMiner(0.1, "hard")),
    (BatchHardMiner, pml_miners.BatchHardMiner),
    (
        lambda: BatchHardMiner(distance="cosine"),
        lambda: pml_miners.BatchHardMiner(distance=pml_distances.CosineSimilarity()),
    ),
    (MultiSimilarityMiner, pml_miners.MultiSimilarityMiner),
    (lambda: PairMarginMiner(1.1, 1.3), lambda: pml_miners.PairMarginMiner(1.1, 1.3)),
]


@pytest.mark.parametrize("ours,theirs", PML_CASES)
def test_miners_select_what_pml_selects(ours, theirs):
    x, y = _batch(16, 4, 7)
    mined = ours()(x, y)
    indices = theirs()(torch.tensor(x), torch.tensor(y, dtype=torch.long))
    if len(indices) == 3:
        np.testing.assert_array_equal(to_np(mined), _as_mask((16,) * 3, indices))
    else:
        np.testing.assert_array_equal(to_np(mined[0]), _as_mask((16, 16), indices[:2]))
        np.testing.assert_array_equal(to_np(mined[1]), _as_mask((16, 16), indices[2:]))


def test_duplicate_embeddings_do_not_double_pick():
    x, y = _batch(16, 2, 3)
    x[1] = x[0]
    x[2] = x[0]
    mined = to_np(BatchHardMiner()(x, y))
    assert np.all(mined.sum(axis=(1, 2)) <= 1)


@pytest.mark.parametrize(
    "miner", [TripletMarginMiner(), BatchHardMiner(), BatchSemiHardMiner(), MultiSimilarityMiner()]
)
def test_a_batch_that_cannot_hold_triplets_is_a_clear_error(miner):
    x = np.random.default_rng(0).normal(size=(4, 8)).astype("float32")
    with pytest.raises(ValueError, match="at least 2 classes.*got 1 class"):
        miner(x, np.zeros(4, "int32"))
    with pytest.raises(ValueError, match="class with at least 2 samples"):
        miner(x, np.arange(4, dtype="int32"))
    # A pair miner that needs no positive accepts distinct labels.
    pos, neg = PairMarginMiner(0.2, 2.1)(x, np.arange(4, dtype="int32"))
    assert to_np(pos).sum() == 0 and to_np(neg).sum() == 12


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="`margin` must be in"):
        TripletMarginMiner(margin=-0.1)
    with pytest.raises(ValueError, match="`type_of_triplets` must be one of"):
        TripletMarginMiner(type_of_triplets="medium")
    with pytest.raises(ValueError, match="`epsilon` must be in"):
        MultiSimilarityMiner(epsilon=-1)
    with pytest.raises(ValueError, match="`pos_margin` must be in"):
        PairMarginMiner(pos_margin=-0.2)
    with pytest.raises(ValueError, match="`distance` must be one of"):
        BatchHardMiner(distance="hamming")
    x = np.zeros((4, 3), "float32")
    with pytest.raises(ValueError, match="same batch size; got 3 and 4"):
        BatchHardMiner()(x, np.array([0, 1, 0], "int32"))
    with pytest.raises(ValueError, match=r"`labels` must be integer class ids.*got shape \(4, 2\)"):
        BatchHardMiner()(x, np.zeros((4, 2), "int32"))
    with pytest.raises(ValueError, match=r"`embeddings` must have shape \(batch, dim\)"):
        BatchHardMiner()(np.zeros((4, 3, 1), "float32"), np.zeros(4, "int32"))


@pytest.mark.parametrize(
    "miner",
    [
        TripletMarginMiner(0.3, "semihard", distance=Distance("squared_euclidean", False)),
        BatchSemiHardMiner(distance="cosine"),
        MultiSimilarityMiner(0.2),
        PairMarginMiner(0.3, 0.9),
    ],
)
def test_config_round_trip(miner):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(miner))
    assert type(restored) is type(miner) and restored.get_config() == miner.get_config()


def test_mining_is_jit_compatible():
    x, y = _batch(16, 3, 5)
    miner = TripletMarginMiner(0.2, "semihard")
    expected = to_np(miner(x, y))
    if BACKEND == "jax":
        import jax

        got = jax.jit(miner.mine)(x, y)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        got = tf.function(miner.mine, jit_compile=True)(x, y)
    else:  # torch.compile takes ~70 s on this machine: check the fixed shapes instead
        got = miner.mine(torch.tensor(x), torch.tensor(y))
    np.testing.assert_array_equal(to_np(got), expected)
    assert to_np(got).shape == (16, 16, 16)


# ---------------------------------------------------------------------------------------------
# PML's own miner test (tests/miners/test_triplet_margin_miner.py in pytorch-metric-learning):
# 16 unit vectors 0..15 degrees apart, random two-class labels, margins 0, 0.05, ..., 0.5 and
# the four types: 44 (margin, type) sets per labelling.


def _angle_points():
    angles = np.radians(np.arange(16))
    return np.stack([np.cos(angles), np.sin(angles)], axis=1).astype("float32")


def _pml_sets(x, y, distance, dtype):
    pml_distance = pml_distances.LpDistance() if distance == "euclidean" else pml_distances.CosineSimilarity()
    out = {}
    for margin in np.arange(11) * 0.05:
        for kind in ("all", "hard", "semihard", "easy"):
            miner = pml_miners.TripletMarginMiner(float(margin), kind, distance=pml_distance)
            a, p, n = miner(torch.tensor(x, dtype=dtype), torch.tensor(y, dtype=torch.long))
            out[margin, kind] = set(zip(a.tolist(), p.tolist(), n.tolist()))
    return out


def _our_sets(x, y, distance):
    out = {}
    for margin in np.arange(11) * 0.05:
        for kind in ("all", "hard", "semihard", "easy"):
            mask = to_np(TripletMarginMiner(float(margin), kind, distance=distance)(x, y))
            out[margin, kind] = set(map(tuple, np.argwhere(mask > 0).tolist()))
    return out


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_triplet_margin_miner_passes_pml_own_test_in_float32(distance):
    """Every (margin, type) set equals PML's computed in float64 on the same float32 points,
    except triplets whose exact margin is within 1e-6 of a bound: the test's geometry has exact
    ties (a positive and a negative at the same angle from the anchor) that float32 cannot
    order; PML's float32 and float64 results differ on them too (115 of 240 sets)."""
    x = _angle_points()
    far = _dist(x, distance) * (1 if distance == "euclidean" else -1)
    for seed in range(3):
        y = np.random.default_rng(seed).integers(0, 2, 16).astype("int32")
        expected, ours = _pml_sets(x, y, distance, torch.float64), _our_sets(x, y, distance)
        decided = 0
        for (margin, kind), reference in expected.items():
            for a, p, n in reference ^ ours[margin, kind]:
                m = far[a, n] - far[a, p]
                assert min(abs(m), abs(m - margin)) < 1e-6, (margin, kind, (a, p, n), m)
            decided += len(reference & ours[margin, kind])
        assert decided > 5000


@pytest.mark.skipif(BACKEND == "jax", reason="JAX computes float64 in float32 (x64 off)")
@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_triplet_margin_miner_equals_pml_own_test_in_float64(distance):
    x = _angle_points().astype("float64")
    y = np.random.default_rng(0).integers(0, 2, 16).astype("int32")
    assert _our_sets(x, y, distance) == _pml_sets(x, y, distance, torch.float64)


# ---------------------------------------------------------------------------------------------
# References: queries from the batch, candidates from `ref_embeddings` (PML's ref_emb).

REF_CASES = [
    (lambda: TripletMarginMiner(0.2, "semihard"), lambda: pml_miners.TripletMarginMiner(0.2, "semihard")),
    (BatchHardMiner, pml_miners.BatchHardMiner),
    (MultiSimilarityMiner, pml_miners.MultiSimilarityMiner),
    (lambda: PairMarginMiner(1.1, 1.3), lambda: pml_miners.PairMarginMiner(1.1, 1.3)),
]


@pytest.mark.parametrize("ours,theirs", REF_CASES)
def test_miners_with_reference_embeddings_select_what_pml_selects(ours, theirs):
    x, y = _batch(16, 4, 8)
    ref, ref_y = _batch(16, 4, 9)
    mined = ours()(x, y, ref, ref_y)
    indices = theirs()(
        torch.tensor(x), torch.tensor(y, dtype=torch.long), torch.tensor(ref), torch.tensor(ref_y, dtype=torch.long)
    )
    if len(indices) == 3:
        np.testing.assert_array_equal(to_np(mined), _as_mask((16,) * 3, indices))
        assert to_np(mined).sum() > 0
    else:
        np.testing.assert_array_equal(to_np(mined[0]), _as_mask((16, 16), indices[:2]))
        np.testing.assert_array_equal(to_np(mined[1]), _as_mask((16, 16), indices[2:]))
