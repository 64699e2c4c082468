"""Pair and triplet losses: values and gradients against pytorch-metric-learning 2.9.0 (and
TF Addons' semi-hard/hard triplet rules), edge cases, numerics, errors, saving, training."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from helpers import BACKEND, grad, knn_accuracy, to_np
from keras import ops
from pytorch_metric_learning import distances as pd
from pytorch_metric_learning import losses as pl
from pytorch_metric_learning import miners as pm
from pytorch_metric_learning import reducers as pr

from clusterloss.distances import Distance
from clusterloss.layers import ProxyAnchorHead
from clusterloss.losses import (
    CircleLoss,
    ContrastiveLoss,
    ExplicitTripletLoss,
    MultiSimilarityLoss,
    NTXentLoss,
    ProxyAnchorLoss,
    SupConLoss,
    TripletMarginLoss,
    contrastive_loss,
    multi_similarity_loss,
    ntxent_loss,
    supcon_loss,
    triplet_margin_loss,
)
from clusterloss.miners import (
    BatchHardMiner,
    BatchSemiHardMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    TripletMarginMiner,
)
from clusterloss.models import ClusterModel
from clusterloss.tuples.triplets import TripletMask

RAW = Distance("euclidean", normalize=False)


def _batch(batch, classes, seed, dim=8, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(batch, dim)) * scale).astype("float32")
    y = rng.integers(0, classes, size=batch).astype("int32")
    return x, y


def _pml(loss, x, y, miner=None):
    """PML's value and gradient, in float64."""
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y, dtype=torch.long)
    indices = miner(xt, yt) if miner is not None else None
    value = loss(xt, yt, indices)
    value.backward()
    return float(value.detach()), xt.grad.numpy()


def _ours(loss, x, y):
    value = float(to_np(loss(y, x)))
    (g,) = grad(lambda t: loss(y, t), x)
    return value, g


def _assert_same(ours, theirs):
    (v, g), (v_ref, g_ref) = ours, theirs
    np.testing.assert_allclose(v, v_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(g_ref).max()))


# (id, ours, PML loss, PML miner). PML's defaults = ours unless the case says otherwise.
PML_CASES = [
    ("triplet", TripletMarginLoss, pl.TripletMarginLoss, None),
    ("triplet-swap", lambda: TripletMarginLoss(0.3, swap=True), lambda: pl.TripletMarginLoss(0.3, swap=True), None),
    (
        "triplet-smooth",
        lambda: TripletMarginLoss(smooth_loss=True),
        lambda: pl.TripletMarginLoss(smooth_loss=True),
        None,
    ),
    (
        "triplet-sq-raw",
        lambda: TripletMarginLoss(1.0, Distance("squared_euclidean", False)),
        lambda: pl.TripletMarginLoss(1.0, distance=pd.LpDistance(normalize_embeddings=False, power=2)),
        None,
    ),
    (
        "triplet-cosine",
        lambda: TripletMarginLoss(0.1, "cosine"),
        lambda: pl.TripletMarginLoss(0.1, distance=pd.CosineSimilarity()),
        None,
    ),
    (
        "triplet-mean-all",
        lambda: TripletMarginLoss(0.2, average="all"),
        lambda: pl.TripletMarginLoss(0.2, reducer=pr.MeanReducer()),
        None,
    ),
    (
        "triplet+semihard",
        lambda: TripletMarginLoss(miner=TripletMarginMiner(0.2, "semihard")),
        pl.TripletMarginLoss,
        lambda: pm.TripletMarginMiner(0.2, "semihard"),
    ),
    (
        "triplet+hard",
        lambda: TripletMarginLoss(0.1, miner=TripletMarginMiner(0.1, "hard")),
        lambda: pl.TripletMarginLoss(0.1),
        lambda: pm.TripletMarginMiner(0.1, "hard"),
    ),
    (
        "triplet+batchhard",
        lambda: TripletMarginLoss(0.2, miner=BatchHardMiner()),
        lambda: pl.TripletMarginLoss(0.2),
        pm.BatchHardMiner,
    ),
    (
        "triplet+batchhard-swap",
        lambda: TripletMarginLoss(0.3, swap=True, miner=BatchHardMiner()),
        lambda: pl.TripletMarginLoss(0.3, swap=True),
        pm.BatchHardMiner,
    ),
    (
        "triplet+pairmargin",
        lambda: TripletMarginLoss(miner=PairMarginMiner(1.1, 1.3)),
        pl.TripletMarginLoss,
        lambda: pm.PairMarginMiner(1.1, 1.3),
    ),
    ("contrastive", ContrastiveLoss, pl.ContrastiveLoss, None),
    (
        "contrastive-cosine",
        lambda: ContrastiveLoss(0.9, 0.1, "cosine"),
        lambda: pl.ContrastiveLoss(0.9, 0.1, distance=pd.CosineSimilarity()),
        None,
    ),
    (
        "contrastive-mean-all",
        lambda: ContrastiveLoss(0.5, 1.2, average="all"),
        lambda: pl.ContrastiveLoss(0.5, 1.2, reducer=pr.MeanReducer()),
        None,
    ),
    (
        "contrastive+semihard",
        lambda: ContrastiveLoss(miner=TripletMarginMiner(0.3, "semihard")),
        pl.ContrastiveLoss,
        lambda: pm.TripletMarginMiner(0.3, "semihard"),
    ),
    (
        "contrastive+batchhard",
        lambda: ContrastiveLoss(miner=BatchHardMiner("cosine")),
        pl.ContrastiveLoss,
        lambda: pm.BatchHardMiner(distance=pd.CosineSimilarity()),
    ),
    (
        "contrastive+pairmargin",
        lambda: ContrastiveLoss(0.2, 1.4, miner=PairMarginMiner(1.1, 1.3)),
        lambda: pl.ContrastiveLoss(0.2, 1.4),
        lambda: pm.PairMarginMiner(1.1, 1.3),
    ),
    ("ms", MultiSimilarityLoss, pl.MultiSimilarityLoss, None),
    ("ms-params", lambda: MultiSimilarityLoss(1.0, 20.0, 0.3), lambda: pl.MultiSimilarityLoss(1.0, 20.0, 0.3), None),
    (
        "ms-euclidean",
        lambda: MultiSimilarityLoss(2.0, 10.0, 1.0, distance="euclidean"),
        lambda: pl.MultiSimilarityLoss(2.0, 10.0, 1.0, distance=pd.LpDistance()),
        None,
    ),
    (
        "ms+msminer",
        lambda: MultiSimilarityLoss(miner=MultiSimilarityMiner(0.1)),
        pl.MultiSimilarityLoss,
        pm.MultiSimilarityMiner,
    ),
    ("ntxent", NTXentLoss, pl.NTXentLoss, None),
    (
        "ntxent-t0.5-euclidean",
        lambda: NTXentLoss(0.5, distance="euclidean"),
        lambda: pl.NTXentLoss(0.5, distance=pd.LpDistance()),
        None,
    ),
    (
        "ntxent+alltriplets",
        lambda: NTXentLoss(miner=TripletMarginMiner(0.2, "all")),
        pl.NTXentLoss,
        lambda: pm.TripletMarginMiner(0.2, "all"),
    ),
    (
        "ntxent+msminer",
        lambda: NTXentLoss(0.2, miner=MultiSimilarityMiner(0.1)),
        lambda: pl.NTXentLoss(0.2),
        pm.MultiSimilarityMiner,
    ),
    ("supcon", SupConLoss, pl.SupConLoss, None),
    (
        "supcon-t0.5-dot",
        lambda: SupConLoss(0.5, distance="dot"),
        # PML's DotProductSimilarity() normalises by default (= cosine); ours does not.
        lambda: pl.SupConLoss(0.5, distance=pd.DotProductSimilarity(normalize_embeddings=False)),
        None,
    ),
    ("supcon+msminer", lambda: SupConLoss(miner=MultiSimilarityMiner(0.1)), pl.SupConLoss, pm.MultiSimilarityMiner),
    ("circle", CircleLoss, pl.CircleLoss, None),
    (
        "circle-face+semihard",
        lambda: CircleLoss(0.25, 256.0, TripletMarginMiner(0.3, "semihard")),
        lambda: pl.CircleLoss(0.25, 256),
        lambda: pm.TripletMarginMiner(0.3, "semihard"),
    ),
]
# (batch, classes, seed). Mostly one batch shape: eager JAX compiles each op once per shape.
SIZES = [(16, 3, 0), (16, 6, 1)]


@pytest.mark.parametrize("case", PML_CASES, ids=[c[0] for c in PML_CASES])
@pytest.mark.parametrize("batch,classes,seed", SIZES)
def test_value_and_gradient_match_pml(case, batch, classes, seed):
    _, ours, theirs, miner = case
    x, y = _batch(batch, classes, seed)
    expected = _pml(theirs(), x, y, miner() if miner else None)
    assert expected[0] > 0
    _assert_same(_ours(ours(), x, y), expected)


DEFAULTS = [c for c in PML_CASES if c[0] in ("triplet", "contrastive", "ms", "ntxent", "supcon")]


@pytest.mark.parametrize("case", DEFAULTS, ids=[c[0] for c in DEFAULTS])
@pytest.mark.parametrize("batch,classes,seed", [(9, 2, 2), (40, 10, 3)])
def test_other_batch_sizes_match_pml(case, batch, classes, seed):
    _, ours, theirs, _ = case
    x, y = _batch(batch, classes, seed)
    loss = ours()
    if BACKEND == "jax":  # also under jit (and one compilation beats eager ops at a new shape)
        import jax

        value, g = jax.jit(jax.value_and_grad(lambda t: loss(y, t)))(x)
        result = (float(value), np.asarray(g))
    else:
        result = _ours(loss, x, y)
    _assert_same(result, _pml(theirs(), x, y))


@pytest.mark.parametrize("margin,alpha,classes", [(0.1, 32.0, 7), (0.25, 16.0, 7)])
def test_proxy_anchor_matches_pml_for_embeddings_and_proxies(margin, alpha, classes):
    x, y = _batch(16, classes - 2, 3)  # two classes without samples: P+ < P
    theirs = pl.ProxyAnchorLoss(classes, 8, margin=margin, alpha=alpha).double()
    proxies = theirs.proxies.detach().numpy().astype("float32")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    value = theirs(xt, torch.tensor(y, dtype=torch.long))
    value.backward()

    head, loss = ProxyAnchorHead(classes), ProxyAnchorLoss(margin, alpha)
    head.build((None, 8))

    def ours(emb, kernel):
        return loss(
            y, ops.matmul(emb / ops.norm(emb, axis=1, keepdims=True), kernel / ops.norm(kernel, axis=0, keepdims=True))
        )

    head.kernel.assign(proxies)  # (num_classes, dim): one row per class
    np.testing.assert_allclose(float(to_np(loss(y, head(x)))), float(value.detach()), rtol=1e-5)
    g_x, g_k = grad(ours, x, np.ascontiguousarray(proxies.T))
    np.testing.assert_allclose(g_x, xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g_k.T, theirs.proxies.grad.numpy(), rtol=1e-4, atol=1e-6)


def test_explicit_triplets_match_pml_packaged_triplets_and_the_formula():
    x, _ = _batch(3 * 10, 2, 4)
    theirs = pl.TripletMarginLoss(0.1, distance=pd.CosineSimilarity(), reducer=pr.MeanReducer())
    a = torch.arange(0, 30, 3)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    value = theirs(xt, None, (a, a + 1, a + 2))
    value.backward()
    triplets = x.reshape(10, 3, 8)
    loss = ExplicitTripletLoss(margin=0.1)
    got = float(to_np(loss(np.zeros(10), triplets)))
    np.testing.assert_allclose(got, float(value.detach()), rtol=1e-5)
    (g,) = grad(lambda t: loss(np.zeros(10), t), triplets)
    np.testing.assert_allclose(g.reshape(30, 8), xt.grad.numpy(), rtol=1e-4, atol=1e-6)
    n = triplets / np.linalg.norm(triplets, axis=2, keepdims=True)
    cos_right, cos_wrong = (n[:, 0] * n[:, 1]).sum(1), (n[:, 0] * n[:, 2]).sum(1)
    np.testing.assert_allclose(got, np.maximum(0.1 + cos_wrong - cos_right, 0).mean(), rtol=1e-5)


def _tfa_semihard(y, x, margin):
    """TF Addons' `triplet_semihard_loss`, rule by rule, on raw Euclidean distances."""
    d = np.sqrt(((x[:, None].astype("float64") - x[None]) ** 2).sum(-1))
    total, count = 0.0, 0
    for a in range(len(y)):
        neg = [d[a, n] for n in range(len(y)) if y[n] != y[a]]
        for p in range(len(y)):
            if p == a or y[p] != y[a]:
                continue
            outside = [v for v in neg if v > d[a, p]]
            total += max(margin + d[a, p] - (min(outside) if outside else max(neg)), 0.0)
            count += 1
    return total / count


def _tfa_hard(y, x, margin):
    """TF Addons' `triplet_hard_loss` (every anchor has a positive here)."""
    d = np.sqrt(((x[:, None].astype("float64") - x[None]) ** 2).sum(-1))
    same = y[:, None] == y[None]
    hardest_pos = np.where(same & ~np.eye(len(y), dtype=bool), d, 0).max(1)
    hardest_neg = np.where(~same, d, np.inf).min(1)
    return np.maximum(hardest_pos - hardest_neg + margin, 0).mean()


@pytest.mark.parametrize("seed", [0, 1])
def test_tfa_semihard_and_hard_triplet_losses_are_reproduced(seed):
    x, y = _batch(16, 4, seed, scale=0.5)
    y = np.sort(np.tile(np.arange(4), 4)).astype("int32")  # P x K sampling: 4 classes x 4
    semihard = TripletMarginLoss(1.0, RAW, miner=BatchSemiHardMiner(RAW), average="all")
    np.testing.assert_allclose(float(to_np(semihard(y, x))), _tfa_semihard(y, x, 1.0), rtol=1e-5)
    hard = TripletMarginLoss(1.0, RAW, miner=BatchHardMiner(RAW), average="all")
    np.testing.assert_allclose(float(to_np(hard(y, x))), _tfa_hard(y, x, 1.0), rtol=1e-5)


@pytest.mark.parametrize(
    "make",
    [
        lambda **k: TripletMarginLoss(miner=TripletMarginMiner(0.2, "all"), **k),
        lambda **k: TripletMarginLoss(miner=BatchHardMiner(), **k),
        lambda **k: ContrastiveLoss(**k),
        lambda **k: MultiSimilarityLoss(**k),
        lambda **k: NTXentLoss(**k),
        lambda **k: SupConLoss(**k),
    ],
)
def test_one_value_per_anchor_whose_mean_is_the_loss_and_sample_weights(make):
    x, y = _batch(16, 3, 12)
    per_anchor = to_np(make(reduction=None)(y, x))
    assert per_anchor.shape == (16,) and np.any(per_anchor != per_anchor[0])
    np.testing.assert_allclose(per_anchor.mean(), float(to_np(make()(y, x))), rtol=1e-6)
    weights = np.linspace(0.0, 2.0, 16).astype("float32")
    weighted = float(to_np(make()(y, x, sample_weight=weights)))
    np.testing.assert_allclose(weighted, (weights * per_anchor).mean(), rtol=1e-5)


def test_keras_circle_has_pml_circle_value_but_not_its_gradient_as_documented():
    x, y = _batch(16, 3, 8)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    expected, expected_grad = _pml(pl.CircleLoss(), x, y)
    value, g = _ours(keras.losses.Circle(), x, y)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    # Keras's Circle differentiates through the alpha weights that PML (and CircleLoss) detach.
    assert np.abs(g - expected_grad).max() > 0.3 * np.abs(expected_grad).max()
    _assert_same(_ours(CircleLoss(), x, y), (expected, expected_grad))


@pytest.mark.skipif(BACKEND == "jax", reason="JAX computes float64 in float32 (x64 off)")
def test_circle_loss_matches_pml_in_float64():
    x, y = _batch(16, 3, 9)
    value, g = _ours(CircleLoss(), x.astype("float64"), y)
    assert g.dtype == np.float64
    expected, expected_grad = _pml(pl.CircleLoss(), x, y)
    np.testing.assert_allclose(value, expected, rtol=1e-12)
    np.testing.assert_allclose(g, expected_grad, rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Reference embeddings (PML's ref_emb / ref_labels).

REF_CASES = [
    c
    for c in PML_CASES
    if c[0]
    in ("triplet", "triplet+semihard", "triplet+batchhard", "contrastive", "ms+msminer", "ntxent", "supcon", "circle")
]


@pytest.mark.parametrize("case", REF_CASES, ids=[c[0] for c in REF_CASES])
def test_reference_embeddings_match_pml_ref_emb(case):
    _, ours, theirs, miner = case
    x, y = _batch(16, 3, 13)
    ref, ref_y = _batch(16, 3, 14)
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    rt, ryt = torch.tensor(ref, dtype=torch.float64), torch.tensor(ref_y, dtype=torch.long)
    yt = torch.tensor(y, dtype=torch.long)
    indices = miner()(xt, yt, rt, ryt) if miner else None
    expected = theirs()(xt, yt, indices, rt, ryt)
    expected.backward()
    loss = ours()
    value = float(to_np(loss(y, x, ref_embeddings=ref, ref_labels=ref_y)))
    (g,) = grad(lambda t: loss(y, t, ref_embeddings=ref, ref_labels=ref_y), x)
    assert float(expected) > 0
    _assert_same((value, g), (float(expected.detach()), xt.grad.numpy()))


def test_the_batch_as_its_own_reference_with_its_diagonal_masked_is_the_plain_loss():
    x, y = _batch(16, 3, 15)
    for fn in (contrastive_loss, supcon_loss, triplet_margin_loss):
        plain = to_np(fn(y, x))
        as_refs = to_np(fn(y, x, ref_embeddings=x, ref_labels=y, ref_mask=~np.eye(16, dtype=bool)))
        np.testing.assert_allclose(as_refs, plain, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Triplet windows: counted over sorted distances, equal to the dense (B, B, B) version.


class _DenseTripletMarginMiner(TripletMarginMiner):
    """The same selection handed over as a dense (B, B, B) mask (the reference)."""

    def _mine(self, mat, pos, neg):
        return TripletMask(super()._mine(mat, pos, neg).dense(mat.dtype))


def _window_batches():
    x, y = _batch(16, 3, 16)
    ties = np.random.default_rng(17).integers(0, 3, size=(16, 1)).astype("float32")
    return [("random", x, y, "euclidean"), ("ties", ties, np.repeat(np.arange(4), 4).astype("int32"), RAW)]


@pytest.mark.parametrize("kind", ["all", "hard", "semihard", "easy"])
def test_triplet_window_counts_equal_the_dense_mask_and_pml_with_ties(kind):
    for name, x, y, distance in _window_batches():
        pml_distance = pd.LpDistance() if distance == "euclidean" else pd.LpDistance(normalize_embeddings=False)
        for miner_margin, margin, average in [(0.2, 0.05, "nonzero"), (1.0, 1.0, "all")]:

            def make(miner_cls):
                return TripletMarginLoss(margin, distance, miner_cls(miner_margin, kind, distance), average=average)

            fast, dense = _ours(make(TripletMarginMiner), x, y), _ours(make(_DenseTripletMarginMiner), x, y)
            np.testing.assert_allclose(fast[0], dense[0], rtol=1e-6, atol=1e-7, err_msg=name)
            np.testing.assert_allclose(fast[1], dense[1], rtol=1e-5, atol=1e-7, err_msg=name)
            reducer = pr.AvgNonZeroReducer() if average == "nonzero" else pr.MeanReducer()
            expected = _pml(
                pl.TripletMarginLoss(margin, distance=pml_distance, reducer=reducer),
                x,
                y,
                pm.TripletMarginMiner(miner_margin, kind, distance=pml_distance),
            )
            _assert_same(fast, expected)


# ---------------------------------------------------------------------------------------------
# Edge cases and numerics.

EDGE_CASES = [
    c
    for c in PML_CASES
    if c[0] in ("triplet", "triplet+semihard", "triplet+batchhard", "contrastive", "ms+msminer", "ntxent", "supcon")
]


def _edge_batch(kind):
    x, y = _batch(16, 4, 11)
    if kind == "one_class":
        y = np.zeros(16, "int32")
    elif kind == "all_distinct":
        y = np.arange(16, dtype="int32")
    else:  # duplicates: in one class and across classes
        y = np.repeat(np.arange(4), 4).astype("int32")
        x[1] = x[0]
        x[4] = x[0]
        x[5] = x[6] = x[7]
    return x, y


@pytest.mark.parametrize("case", EDGE_CASES, ids=[c[0] for c in EDGE_CASES])
@pytest.mark.parametrize("kind", ["one_class", "all_distinct", "duplicates"])
def test_edge_batches_match_pml_with_finite_gradients(case, kind):
    _, ours, theirs, miner = case
    x, y = _edge_batch(kind)
    value, g = _ours(ours(), x, y)
    ref_value, ref_g = _pml(theirs(), x, y, miner() if miner else None)
    assert np.all(np.isfinite(g))
    # Duplicates are at distance exactly 0 (not ~3e-4 of float32 rounding), so even the
    # non-zero counts and the miners' ties agree with PML.
    np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6)
    if ref_value == 0.0:  # nothing to learn from: exactly zero, not just small
        assert value == 0.0 and np.all(g == 0.0)
    elif np.all(np.isfinite(ref_g)):
        np.testing.assert_allclose(g, ref_g, rtol=1e-4, atol=1e-5 * max(1, np.abs(ref_g).max()))


def test_no_triplet_gives_zero_for_every_triplet_style_loss():
    x, y = _edge_batch("one_class")
    for loss in (TripletMarginLoss(), NTXentLoss(), SupConLoss(), TripletMarginLoss(miner=BatchHardMiner())):
        value, g = _ours(loss, x, y)
        assert value == 0.0 and np.all(g == 0.0), loss


FUNCTIONS = [
    lambda y, x: triplet_margin_loss(y, x, miner=TripletMarginMiner(0.2, "semihard")),
    lambda y, x: triplet_margin_loss(y, x, 1.0, distance=RAW),
    lambda y, x: contrastive_loss(y, x),
    lambda y, x: multi_similarity_loss(y, x, miner=MultiSimilarityMiner()),
    lambda y, x: ntxent_loss(y, x),
    lambda y, x: ntxent_loss(y, x, distance="dot"),
    lambda y, x: supcon_loss(y, x),
]


@pytest.mark.parametrize("fn", FUNCTIONS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_inputs_give_finite_float32_results(fn, dtype):
    x, y = _batch(16, 3, 5, scale=0.5)
    full = float(to_np(ops.mean(fn(y, x))))
    half = fn(y, ops.cast(x, dtype))
    assert keras.backend.standardize_dtype(half.dtype) == "float32"
    np.testing.assert_allclose(float(to_np(ops.mean(half))), full, rtol=5e-2, atol=1e-2)
    (g,) = grad(lambda t: ops.mean(fn(y, ops.cast(t, dtype))), x)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


@pytest.mark.parametrize("fn", FUNCTIONS)
def test_large_values_and_zero_embeddings_give_finite_values_and_gradients(fn):
    x, y = _batch(16, 3, 6)
    x = (np.sign(x) * 1e4).astype("float32")
    x[3] = x[2]  # also a duplicate at a huge scale
    x[5] = 0.0  # and a zero embedding, which normalises to 0
    value = to_np(fn(y, x))
    (g,) = grad(lambda t: ops.mean(fn(y, t)), x)
    assert np.all(np.isfinite(value)) and np.all(np.isfinite(g))


# ---------------------------------------------------------------------------------------------
# Errors.


def test_bad_inputs_name_the_argument():
    x, y = _batch(8, 2, 0)
    loss = TripletMarginLoss()
    with pytest.raises(ValueError, match=r"`y_true` must be integer class ids.*got shape \(8, 2\)"):
        loss(np.eye(2)[y], x)
    with pytest.raises(ValueError, match=r"`y_pred` must have shape \(batch, dim\); got shape \(8, 2, 4\)"):
        loss(y, x.reshape(8, 2, 4))
    with pytest.raises(ValueError, match="same batch size; got 7 and 8"):
        loss(y[:7], x)
    with pytest.raises(ValueError, match="`y_true` must be >= 0"):
        loss(y - 5, x)
    with pytest.raises(ValueError, match=r"`y_pred` must have shape \(batch, 3, dim\)"):
        ExplicitTripletLoss()(y, x)
    with pytest.raises(ValueError, match="must be < num_classes=3"):
        ProxyAnchorLoss()(np.array([0, 3]), np.zeros((2, 3), "float32"))


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: TripletMarginLoss(margin=-0.1), r"`margin` must be in \[0.0, inf\]; got -0.1"),
        (lambda: ContrastiveLoss(neg_margin=-1.0), r"`neg_margin` must be in \[0.0, inf\]"),
        (lambda: MultiSimilarityLoss(alpha=0.0), r"`alpha` must be in \(0.0, inf\]"),
        (lambda: NTXentLoss(temperature=0.0), r"`temperature` must be in \(0.0, inf\]"),
        (lambda: SupConLoss(distance="hamming"), "`distance` must be one of"),
        (lambda: TripletMarginLoss(miner="semihard"), "`miner` must be a clusterloss miner"),
        (lambda: TripletMarginLoss(average="sum"), "`average` must be one of"),
        (lambda: ExplicitTripletLoss(margin=-1.0), "`margin` must be in"),
        (lambda: ProxyAnchorHead(num_classes=1), "`num_classes` must be an int >= 2"),
    ],
)
def test_bad_hyperparameters_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_similarity_margins_may_be_negative():
    assert ContrastiveLoss(0.5, -0.2, "cosine").options["neg_margin"] == -0.2


# ---------------------------------------------------------------------------------------------
# Configs and saving.

ALL_LOSSES = [
    TripletMarginLoss(0.2, "cosine", TripletMarginMiner(0.1, "semihard"), swap=True),
    ContrastiveLoss(0.1, 0.9, RAW, PairMarginMiner(0.3, 0.7, "squared_euclidean"), "all"),
    MultiSimilarityLoss(1.0, 40.0, 0.4, miner=MultiSimilarityMiner(0.2)),
    NTXentLoss(0.2, "dot", BatchHardMiner()),
    SupConLoss(0.3, miner=BatchSemiHardMiner("cosine")),
    ExplicitTripletLoss(0.3, "euclidean"),
    ProxyAnchorLoss(0.2, 16.0),
]


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda loss: type(loss).__name__)
def test_config_round_trip_keeps_distance_and_miner(loss):
    config = keras.saving.serialize_keras_object(loss)
    restored = keras.saving.deserialize_keras_object(config)
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    if loss.miner is not None:
        assert type(restored.miner) is type(loss.miner)
        assert restored.miner.get_config() == loss.miner.get_config()


def test_saved_proxy_anchor_model_keeps_its_proxies(tmp_path):
    x, y = _batch(16, 4, 10)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(6), ProxyAnchorHead(4)])
    model.compile("adam", loss=ProxyAnchorLoss())
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    before = model.evaluate(x, y, batch_size=16, verbose=0)
    model.save(tmp_path / "proxy.keras")
    loaded = keras.saving.load_model(tmp_path / "proxy.keras")
    np.testing.assert_array_equal(to_np(loaded.layers[-1].kernel), to_np(model.layers[-1].kernel))
    np.testing.assert_allclose(loaded.evaluate(x, y, batch_size=16, verbose=0), before, rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# Training on sklearn's digits: each loss improves the 1-NN accuracy of the embeddings.


# 992 = 31 batches of 32. The triplet run trains on 1000, leaving a partial last batch of 8: on
# TensorFlow the train step then has a dynamic batch size, which the losses must handle without
# Python `bool`s (the others avoid a second compilation of the train step on JAX).


def _backbone():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(8)])


TRAINING = [  # (loss, wrapped in a ClusterModel or the plain backbone compiled directly)
    ("triplet+semihard", lambda: TripletMarginLoss(0.2, miner=TripletMarginMiner(0.2, "semihard")), "plain_model"),
    ("contrastive", ContrastiveLoss, "cluster_model"),
    ("multi_similarity", lambda: MultiSimilarityLoss(miner=MultiSimilarityMiner()), "cluster_model"),
    ("ntxent", NTXentLoss, "cluster_model"),
    ("supcon", SupConLoss, "plain_model"),
]


@pytest.mark.parametrize("name,make,wrapper", TRAINING, ids=[t[0] for t in TRAINING])
def test_training_improves_nearest_neighbour_accuracy(name, make, wrapper, digits):
    keras.utils.set_random_seed(0)
    backbone = _backbone()
    before = knn_accuracy(backbone, digits)
    model = ClusterModel(backbone) if wrapper == "cluster_model" else backbone
    model.compile(keras.optimizers.Adam(3e-3), loss=make())
    n = 1000 if name == "triplet+semihard" else 992
    history = model.fit(digits[0][:n], digits[1][:n], batch_size=32, epochs=3, verbose=0)
    after = knn_accuracy(backbone, digits)
    assert np.all(np.isfinite(history.history["loss"]))
    assert after > before + 0.05 and after > 0.85, (before, after)


def test_training_proxy_anchor_head(digits):
    keras.utils.set_random_seed(0)
    backbone = _backbone()
    before = knn_accuracy(backbone, digits)
    model = ClusterModel(backbone, head=ProxyAnchorHead(10, name="proxies"))
    # The paper's 100x learning rate for the proxies (OptimizerMap keys are full-match regexes).
    optimizer = keras.optimizers.MultiOptimizer(
        keras.optimizers.OptimizerMap(keras.optimizers.Adam(3e-3), {".*proxies/kernel": keras.optimizers.Adam(3e-1)})
    )
    model.compile(optimizer, loss=ProxyAnchorLoss(), metrics=["accuracy"])
    history = model.fit(digits[0][:992], digits[1][:992], batch_size=32, epochs=3, verbose=0)
    after = knn_accuracy(backbone, digits)
    assert after > before + 0.05 and after > 0.85, (before, after)
    assert history.history["accuracy"][-1] > 0.5  # the proxies also classify (chance: 0.1)


def test_training_explicit_triplets(digits):
    x, y = digits[0][:992], digits[1][:992]
    rng = np.random.default_rng(0)
    right = np.array([rng.choice(np.flatnonzero(y == c)) for c in y])
    wrong = np.array([rng.choice(np.flatnonzero(y != c)) for c in y])
    keras.utils.set_random_seed(0)
    encoder = _backbone()
    before = knn_accuracy(encoder, digits)
    inputs = [keras.Input((64,)) for _ in range(3)]
    stacked = keras.layers.Lambda(lambda t: ops.stack(t, axis=1))([encoder(i) for i in inputs])
    model = keras.Model(inputs, stacked)
    model.compile(keras.optimizers.Adam(3e-3), loss=ExplicitTripletLoss(margin=0.1))
    model.fit([x, x[right], x[wrong]], np.zeros(len(x)), batch_size=32, epochs=3, verbose=0)
    after = knn_accuracy(encoder, digits)
    assert after > before + 0.05 and after > 0.85, (before, after)
