"""The catalogue miners (BatchEasyHardMiner, HDCMiner, AngularMiner, DistanceWeightedMiner,
UniformHistogramMiner) against pytorch-metric-learning 2.9.0: the same selections where PML is
deterministic (random batches and PML's own test cases), the same weights and bins where it
samples, the distribution and the seeds of our draws, and losses with these miners."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from helpers import BACKEND, grad, to_np
from pytorch_metric_learning import distances as pd
from pytorch_metric_learning import losses as pl
from pytorch_metric_learning import miners as pm
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

import clusterloss as cl
from clusterloss.distances import Distance
from clusterloss.miners.sampled import sample_columns
from clusterloss.tuples.pairs import pair_batch

RAW = Distance("euclidean", normalize=False)


def _batch(batch, classes, seed, dim=8):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, dim)).astype("float32"), rng.integers(0, classes, size=batch).astype("int32"))


def _circle(angles):
    a = np.radians(np.asarray(angles, "float64"))
    return np.stack([np.cos(a), np.sin(a)], axis=1).astype("float32")


def _entries(mask):
    """The nonzero entries of a mask as a sorted list of index tuples, repeated by count."""
    mask = to_np(mask)
    return sorted(i for i in zip(*np.nonzero(mask)) for _ in range(int(round(mask[i]))))


def _mined(miner, x, y):
    """`miner.mine(x, y)`; on JAX compiled once (cheaper than eager JAX at a new shape)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(miner.mine)(x, y)
    return miner.mine(x, y)


def _pml_pairs(indices):
    a1, p, a2, n = (t.tolist() for t in indices)
    return sorted(zip(a1, p)), sorted(zip(a2, n))


# ---------------------------------------------------------------------------------------------
# BatchEasyHardMiner.

STRATEGIES = ("easy", "hard", "semihard", "all")
COMBOS = [
    (p, n)
    for p in STRATEGIES
    for n in STRATEGIES
    if not (p == n == "semihard" or ("semihard" in (p, n) and "all" in (p, n)))
]


def test_batch_easy_hard_miner_on_pml_test_points_equals_pml_and_its_expected_pairs():
    # PML's tests/miners/test_batch_easy_hard_miner.py: 9 points on a line, ties everywhere.
    labels = np.array([0, 0, 1, 1, 0, 2, 1, 1, 1])
    x = np.arange(9, dtype="float32")[:, None]
    for pos_strategy, neg_strategy in COMBOS:
        for allowed in (None, [1, 7]):
            ours = cl.BatchEasyHardMiner(pos_strategy, neg_strategy, allowed, allowed, RAW)
            theirs = pm.BatchEasyHardMiner(
                pos_strategy, neg_strategy, allowed, allowed, distance=pd.LpDistance(normalize_embeddings=False)
            )
            pos, neg = ours(x, labels)
            expected = _pml_pairs(theirs(torch.tensor(x), torch.tensor(labels)))
            assert (_entries(pos), _entries(neg)) == expected, (pos_strategy, neg_strategy)
    # Two of PML's expected tables, as written there (first of the accepted answers).
    pos, neg = cl.BatchEasyHardMiner("hard", "hard", distance=RAW)(x, labels)
    assert _entries(pos) == list(zip([0, 1, 2, 3, 4, 6, 7, 8], [4, 4, 8, 8, 0, 2, 2, 2]))
    assert _entries(neg) == list(zip([0, 1, 2, 3, 4, 6, 7, 8], [2, 2, 1, 4, 3, 5, 5, 5]))
    pos, neg = cl.BatchEasyHardMiner("easy", "easy", [1, 7], [1, 7], RAW)(x, labels)
    assert [n for _, n in _entries(neg)] == [7, 8, 5, 0, 8, 0, 0, 1]


@pytest.mark.parametrize("distance,pml_distance", [("euclidean", pd.LpDistance()), ("cosine", pd.CosineSimilarity())])
def test_batch_easy_hard_miner_equals_pml_on_random_batches_and_references(distance, pml_distance):
    x, y = _batch(16, 4, 0)
    ref, ref_y = _batch(12, 4, 1)
    xt, yt = torch.tensor(x, dtype=torch.float64), torch.tensor(y)
    rt, ryt = torch.tensor(ref, dtype=torch.float64), torch.tensor(ref_y)
    ranges = [0.5, 1.2] if distance == "euclidean" else [-0.3, 0.6]
    for pos_strategy, neg_strategy in COMBOS:  # ranges with three of the strategies
        ranged = (pos_strategy, neg_strategy) in (("easy", "semihard"), ("hard", "hard"), ("semihard", "easy"))
        for allowed in (None, ranges) if ranged else (None,):
            ours = cl.BatchEasyHardMiner(pos_strategy, neg_strategy, allowed, allowed, distance)
            theirs = pm.BatchEasyHardMiner(pos_strategy, neg_strategy, allowed, allowed, distance=pml_distance)
            pos, neg = ours(x, y)
            assert (_entries(pos), _entries(neg)) == _pml_pairs(theirs(xt, yt))
            pos, neg = ours(x, y, ref, ref_y)
            assert (_entries(pos), _entries(neg)) == _pml_pairs(theirs(xt, yt, rt, ryt))


# ---------------------------------------------------------------------------------------------
# HDCMiner: PML's test (unit circle, 30 %) and random batches (the same distances: PML's topk
# leaves ties at the cut, e.g. the two orders of a pair, unspecified).

HDC_DISTANCES = [
    (RAW, pd.LpDistance(normalize_embeddings=False)),
    ("euclidean", pd.LpDistance()),
    ("squared_euclidean", pd.LpDistance(power=2)),
    ("cosine", pd.CosineSimilarity()),
]


def test_hdc_miner_pml_test_cases_and_random_batches():
    labels = np.array([0, 0, 1, 1, 1, 0])
    for distance, _ in HDC_DISTANCES:
        x = np.arange(6, dtype="float32")[:, None] if distance is RAW else _circle(range(0, 120, 20))
        pos, neg = (np.array(_entries(m)) for m in cl.HDCMiner(0.3, distance)(x, labels))
        assert sorted(abs(pos[:, 0] - pos[:, 1])) == [4, 4, 5, 5]
        assert sorted(abs(neg[:, 0] - neg[:, 1])) == [1, 1, 1, 1, 2, 2]
    empty = cl.HDCMiner(0.3).mine(_batch(32, 2, 2, 64)[0], np.arange(32))
    assert to_np(empty[0]).sum() == 0  # PML's test_empty_output: labels all distinct
    for seed, fraction in [(3, 0.3), (4, 0.77), (5, 1.0)]:
        x, y = _batch(16, 4, seed)
        mat = to_np(Distance("euclidean").pairwise(x))
        pos, neg = cl.HDCMiner(fraction)(x, y)
        a1, p, a2, n = pm.HDCMiner(fraction)(torch.tensor(x, dtype=torch.float64), torch.tensor(y))
        for ours, (rows, cols) in [(pos, (a1, p)), (neg, (a2, n))]:
            ours = np.array(_entries(ours))
            np.testing.assert_allclose(
                np.sort(mat[ours[:, 0], ours[:, 1]]), np.sort(mat[rows.numpy(), cols.numpy()]), rtol=1e-6
            )


# ---------------------------------------------------------------------------------------------
# AngularMiner: PML's test (16 points 1 degree apart, random labels, angles 0..60) and random
# batches with and without references, both paths (direct differences, dot products).


def test_angular_miner_equals_pml_on_its_test_and_random_batches():
    rng = np.random.default_rng(6)
    x = _circle(range(16))
    for angle in range(0, 70, 10):
        y = rng.integers(0, 2, 16)
        mined = cl.AngularMiner(angle)(x, y)
        expected = pm.AngularMiner(angle)(torch.tensor(x, dtype=torch.float64), torch.tensor(y))
        assert _entries(mined) == sorted(zip(*(t.tolist() for t in expected))), angle
    for batch, dim, refs in [(16, 8, False), (32, 64, False), (16, 8, True)]:  # 32 x 64: dots
        x, y = _batch(batch, 4, batch + dim, dim)
        ref, ref_y = _batch(12, 4, 7) if refs else (None, None)
        mined = cl.AngularMiner(20.0)(x, y, ref, ref_y)
        args = (torch.tensor(x, dtype=torch.float64), torch.tensor(y))
        if refs:
            args += (torch.tensor(ref, dtype=torch.float64), torch.tensor(ref_y))
        expected = pm.AngularMiner(20)(*args)
        assert len(expected[0]) > 0
        assert _entries(mined) == sorted(zip(*(t.tolist() for t in expected)))


# ---------------------------------------------------------------------------------------------
# DistanceWeightedMiner: PML's weights exactly, our draws by distribution and contract.


def _pml_weights(x, y, ref=None, ref_y=None, **kwargs):
    """The per-anchor negative weights PML's miner hands to its sampler, normalised."""
    captured = {}

    def capture(labels, ref_labels=None, t_per_anchor=None, weights=None):
        captured["weights"] = weights.numpy()
        return tuple(torch.tensor([], dtype=torch.long) for _ in range(3))

    original = lmu.get_random_triplet_indices
    lmu.get_random_triplet_indices = capture
    try:
        args = [torch.tensor(x, dtype=torch.float64), torch.tensor(y)]
        if ref is not None:
            args += [torch.tensor(ref, dtype=torch.float64), torch.tensor(ref_y)]
        pm.DistanceWeightedMiner(**kwargs)(*args)
    finally:
        lmu.get_random_triplet_indices = original
    return np.nan_to_num(captured["weights"])  # rows with nothing to draw: 0/0 in PML


@pytest.mark.parametrize("refs", [False, True], ids=["batch", "references"])
def test_distance_weighted_probabilities_equal_pml_weights(refs):
    x, y = _batch(16, 4, 8)
    ref, ref_y = _batch(12, 4, 9) if refs else (None, None)
    miner = cl.DistanceWeightedMiner(0.6, 1.3)
    pairs = pair_batch(y, x.astype("float64"), ref, ref_y)
    mat = pairs.matrix(miner.distance)
    got = to_np(miner.probabilities(mat, pairs.neg, 8))
    expected = _pml_weights(x, y, ref, ref_y, cutoff=0.6, nonzero_loss_cutoff=1.3)
    assert expected.sum() > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_sampled_columns_follow_the_weights():
    weights = np.array([[0.0, 1.0, 0.0, 3.0, 6.0], [2.0, 0.0, 0.0, 0.0, 2.0]], "float32")
    draws = 4000
    u = np.random.default_rng(10).uniform(size=(2, draws)).astype("float32")
    picked = to_np(sample_columns(weights, u))
    for row in range(2):
        freq = np.bincount(picked[row], minlength=5) / draws
        p = weights[row] / weights[row].sum()
        assert np.all(freq[p == 0] == 0)
        np.testing.assert_allclose(freq, p, atol=4 * np.sqrt(0.25 / draws))  # 4 sigma
    assert np.all(to_np(sample_columns(np.zeros((1, 5), "float32"), u[:1, :3])) == 0)


def test_distance_weighted_miner_contract_and_pml_cutoff_test():
    # PML's test (with 128 of its 256 points): unit vectors 1 degree apart, two random classes;
    # every drawn negative is closer than nonzero_loss_cutoff, and some come near it.
    rng = np.random.default_rng(11)
    x, y = _circle(range(128)), rng.integers(0, 2, 128)
    for cutoff in (0.49, 1.39):
        mined = to_np(_mined(cl.DistanceWeightedMiner(0.0, cutoff, seed=1), x, y))
        a, p, n = np.nonzero(mined)
        d = np.linalg.norm(x[a] - x[n], axis=1)
        assert d.max() <= cutoff and d.max() > 0.8 * cutoff
        assert np.all(y[a] == y[p]) and np.all(y[a] != y[n]) and np.all(a != p)
        # Each positive pair of an anchor with a drawable negative gets exactly one negative.
        counts = mined.sum(axis=2)
        assert set(np.unique(counts)) <= {0.0, 1.0}
    empty = cl.DistanceWeightedMiner(0.1, 0.5).mine(_batch(32, 2, 12, 64)[0], np.arange(32))
    assert to_np(empty).sum() == 0  # PML's test_empty_output: all labels distinct


# ---------------------------------------------------------------------------------------------
# UniformHistogramMiner.


def test_uniform_histogram_bins_counts_and_uniform_draws():
    x, y = _batch(16, 4, 13)
    miner = cl.UniformHistogramMiner(num_bins=10, pos_per_bin=25, neg_per_bin=7, seed=3)
    pairs = pair_batch(y, x)
    mat = to_np(pairs.matrix(miner.distance))
    pos, neg = (to_np(m) for m in _mined(miner, x, y))
    for mask, drawn, per_bin in [(to_np(pairs.pos), pos, 25), (to_np(pairs.neg), neg, 7)]:
        values = torch.tensor(mat[mask])
        edges = torch.linspace(values.min(), values.max(), 11).numpy()  # PML's bins
        expected_bins = np.clip(np.searchsorted(edges[1:-1], mat, side="right"), 0, 9)
        got_bins = to_np(miner.bins(mat, mask))
        np.testing.assert_array_equal(got_bins[mask], expected_bins[mask])
        assert np.all(got_bins[~mask] == 10) and np.all(drawn[~mask] == 0)
        per = np.bincount(expected_bins[drawn > 0], weights=drawn[drawn > 0], minlength=10)
        occupied = np.bincount(expected_bins[mask], minlength=10) > 0
        np.testing.assert_array_equal(per, np.where(occupied, per_bin, 0))
    # Within a bin, uniform: one bin of 112 positive pairs, 5600 draws (50 each).
    one = cl.UniformHistogramMiner(num_bins=1, pos_per_bin=5600, neg_per_bin=1, seed=4)
    y = np.repeat([0, 1], 8)
    pos, _ = (to_np(m) for m in _mined(one, x, y))
    counts = pos[pos > 0]
    assert len(counts) == 112 and counts.sum() == 5600
    assert np.abs(counts - 50).max() < 4.5 * np.sqrt(50)
    pos, _ = cl.UniformHistogramMiner(seed=0)(x, np.arange(16))  # PML's test_no_positives
    assert to_np(pos).sum() == 0


# ---------------------------------------------------------------------------------------------
# Seeds: repeatable, advancing, and changing with the batch under JAX compilation.


def test_seeded_draws_repeat_advance_and_follow_the_batch_under_compilation():
    x, y = _batch(16, 4, 15)
    draws = [to_np(cl.DistanceWeightedMiner(seed=5)(x, y)) for _ in range(2)]
    np.testing.assert_array_equal(*draws)  # same seed, same first draw
    miner = cl.DistanceWeightedMiner(seed=5)
    first, second = to_np(miner(x, y)), to_np(miner(x, y))
    np.testing.assert_array_equal(first, draws[0])
    assert np.any(first != second)  # the generator advances
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(miner))
    np.testing.assert_array_equal(to_np(restored(x, y)), first)  # the seed is saved
    if BACKEND == "jax":  # the generator cannot advance in a compiled step: keyed by the batch
        import jax

        mine = jax.jit(cl.UniformHistogramMiner(10, 3, 3, seed=6).mine)
        a, b, c = mine(x, y), mine(x, y), mine(x + 0.01 * x[::-1], y)
        np.testing.assert_array_equal(to_np(a[1]), to_np(b[1]))
        assert np.any(to_np(a[1]) != to_np(c[1]))


# ---------------------------------------------------------------------------------------------
# Losses with the new miners (value and gradient as PML's), jit, NaN, configs, errors.

LOSS_CASES = [
    (
        lambda: cl.TripletMarginLoss(0.2, miner=cl.BatchEasyHardMiner("hard", "semihard")),
        lambda: pl.TripletMarginLoss(0.2),
        lambda: pm.BatchEasyHardMiner("hard", "semihard"),
    ),
    (lambda: cl.ContrastiveLoss(miner=cl.HDCMiner(0.4)), pl.ContrastiveLoss, lambda: pm.HDCMiner(0.4)),
    (
        lambda: cl.TripletMarginLoss(0.2, miner=cl.AngularMiner(20.0)),
        lambda: pl.TripletMarginLoss(0.2),
        lambda: pm.AngularMiner(20),
    ),
]


@pytest.mark.parametrize("case", LOSS_CASES, ids=["triplet+easyhard", "contrastive+hdc", "triplet+angular"])
def test_losses_with_new_miners_match_pml(case):
    ours, theirs, miner = case
    x, y = _batch(16, 4, 16)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y)
    expected = theirs()(xt, yt, miner()(xt, yt))
    expected.backward()
    loss = ours()
    value = float(to_np(loss(y, x)))
    (g,) = grad(lambda t: loss(y, t), x)
    assert float(expected) > 0
    np.testing.assert_allclose(value, float(expected.detach()), rtol=1e-5)
    np.testing.assert_allclose(g, xt.grad.numpy(), rtol=1e-4, atol=1e-5 * np.abs(xt.grad.numpy()).max())


NEW_MINERS = [
    lambda: cl.BatchEasyHardMiner(),
    lambda: cl.HDCMiner(),
    lambda: cl.AngularMiner(),
    lambda: cl.DistanceWeightedMiner(seed=0),
    lambda: cl.UniformHistogramMiner(seed=0),
]
NAMES = ["easyhard", "hdc", "angular", "distance_weighted", "uniform_histogram"]


@pytest.mark.parametrize("make", NEW_MINERS, ids=NAMES)
def test_mining_is_jit_compatible_and_nan_gives_nan_masks(make):
    x, y = _batch(16, 3, 17)
    miner = make()
    if BACKEND == "jax":
        import jax

        mined = jax.jit(miner.mine)(x, y)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        mined = tf.function(miner.mine, jit_compile=True)(x, y)
    else:
        mined = miner.mine(torch.tensor(x), torch.tensor(y))
    for mask in mined if isinstance(mined, tuple) else (mined,):
        assert np.all(np.isfinite(to_np(mask))) and to_np(mask).sum() > 0
    x[0, 0] = np.nan
    broken = miner(x, y)
    for mask in broken if isinstance(broken, tuple) else (broken,):
        assert np.all(np.isnan(to_np(mask)))


@pytest.mark.parametrize(
    "miner",
    [
        cl.BatchEasyHardMiner("semihard", "easy", [0.1, 1.5], None, "cosine"),
        cl.HDCMiner(0.3, "squared_euclidean"),
        cl.AngularMiner(35.0),
        cl.DistanceWeightedMiner(0.4, 1.2, seed=7),
        cl.UniformHistogramMiner(50, 3, 4, RAW, seed=8),
    ],
    ids=NAMES,
)
def test_config_round_trip(miner):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(miner))
    assert type(restored) is type(miner) and restored.get_config() == miner.get_config()


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: cl.BatchEasyHardMiner("medium"), "`pos_strategy` must be one of"),
        (lambda: cl.BatchEasyHardMiner("semihard", "semihard"), "cannot both be 'semihard'"),
        (lambda: cl.BatchEasyHardMiner("all", "semihard"), "'semihard' cannot be combined"),
        (lambda: cl.BatchEasyHardMiner(allowed_pos_range=[1.0]), "`allowed_pos_range` must be"),
        (lambda: cl.HDCMiner(1.5), r"`filter_percentage` must be in \[0.0, 1.0\]"),
        (lambda: cl.AngularMiner(90.0), r"`angle` must be in \[0, 90\) degrees"),
        (lambda: cl.DistanceWeightedMiner(distance="cosine"), "L2-normalised 'euclidean'"),
        (lambda: cl.DistanceWeightedMiner(seed=1.5), "`seed` must be an int or None"),
        (lambda: cl.UniformHistogramMiner(num_bins=0), "`num_bins` must be an integer >= 1"),
    ],
)
def test_bad_arguments_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()
