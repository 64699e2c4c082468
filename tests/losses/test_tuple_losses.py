"""The catalogue losses (lifted structure, margin, NCA, tuplet margin, angular, instance, FastAP)
and `LpRegularizer`: values and gradients against pytorch-metric-learning 2.9.0 computed here
(float64 on TensorFlow and PyTorch, float32 on JAX), on random batches, on PML's own test
inputs and edge cases, with miners and reference embeddings; NaN, half precision, saving,
and a short training run on scikit-learn's digits."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from helpers import BACKEND, forbid_host_copies, grad, knn_accuracy, to_np
from keras import ops
from pytorch_metric_learning import distances as pd
from pytorch_metric_learning import losses as pl
from pytorch_metric_learning import miners as pm
from pytorch_metric_learning import regularizers as pr

import clusterloss as cl
from clusterloss.distances import Distance

WIDE = "float32" if BACKEND == "jax" else "float64"  # JAX: x64 off


def _mean(values):
    """The mean in the values' dtype (`ops.mean` on torch computes float64 in float32)."""
    return ops.sum(values) / values.shape[0]


def _batch(batch, classes, seed, dim=8):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, dim)).astype("float32"), rng.integers(0, classes, size=batch).astype("int32"))


def _coords(angles, ellipse=True):
    """PML's test points: `angle_to_coord` (an ellipse, 2 x 0.5), or the unit circle."""
    a = np.radians(np.asarray(angles, "float64"))
    sx, sy = (2.0, 0.5) if ellipse else (1.0, 1.0)
    return np.stack([sx * np.cos(a), sy * np.sin(a)], axis=1).astype("float32")


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype("float32")


def _pml(loss, x, y, miner=None, ref=None, ref_y=None):
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    yt = torch.tensor(y, dtype=torch.long)
    rt = None if ref is None else torch.tensor(ref, dtype=torch.float64)
    ryt = None if ref_y is None else torch.tensor(ref_y, dtype=torch.long)
    indices = miner(xt, yt, rt, ryt) if miner is not None else None
    value = loss(xt, yt, indices, rt, ryt)
    value.backward()
    g = xt.grad.numpy() if xt.grad is not None else np.zeros_like(x, "float64")
    return float(value.detach()), g


_COMPILED = {}


def _value_and_grad(fn, wrt, *args):
    """`fn(*args)` (a scalar) and its gradients for the first `wrt` args. JAX: one compiled
    function, the other args traced too (one compilation per loss and shape beats eager JAX's
    one per operation)."""
    if BACKEND == "jax":
        import jax

        key = (fn, wrt)
        if key not in _COMPILED:
            _COMPILED[key] = jax.jit(jax.value_and_grad(fn, argnums=tuple(range(wrt))))
        value, grads = _COMPILED[key](*args)
        return np.asarray(value), [np.asarray(g) for g in grads]
    rest = args[wrt:]
    return to_np(fn(*args)), grad(lambda *diff: fn(*diff, *rest), *args[:wrt])


_LOSS_FUNCTIONS = {}  # loss -> one function, so that JAX compiles it once per shape


def _ours(loss, x, y, **inputs):
    """Our value and gradient, with `x` in float64 where the backend has it."""
    fn = _LOSS_FUNCTIONS.setdefault(loss, lambda t, labels, refs: loss(labels, t, **refs))
    value, (g,) = _value_and_grad(fn, 1, x.astype(WIDE), y, inputs)
    assert keras.backend.standardize_dtype(value.dtype) == WIDE
    assert g.dtype == WIDE and np.all(np.isfinite(g))
    return float(value), g


def _assert_same(ours, theirs):
    (v, g), (v_ref, g_ref) = ours, theirs
    rtol = 1e-5 if WIDE == "float32" else 1e-9
    np.testing.assert_allclose(v, v_ref, rtol=rtol, atol=rtol)
    scale = max(1.0, np.abs(g_ref).max())
    np.testing.assert_allclose(g, g_ref, rtol=100 * rtol, atol=rtol * scale)


RAW = Distance("euclidean", normalize=False)


def _pml_margin(margin=0.2, nu=0.0, beta=1.2, **kwargs):
    """PML's MarginLoss with its beta in float64 (PML stores it as float32, 1.2000000477)."""
    loss = pl.MarginLoss(margin, nu, beta, **kwargs)
    loss.beta = torch.full(loss.beta.shape, beta, dtype=torch.float64)
    return loss


# (id, ours, PML loss, PML miner). Miners: ours inside the loss, PML's called as PML does.
CASES = [
    ("lifted", cl.LiftedStructureLoss, pl.LiftedStructureLoss, None),
    (
        "lifted-cosine",
        lambda: cl.LiftedStructureLoss(0.3, 0.9, "cosine"),
        lambda: pl.LiftedStructureLoss(0.3, 0.9, distance=pd.CosineSimilarity()),
        None,
    ),
    (
        "lifted+semihard",
        lambda: cl.LiftedStructureLoss(miner=cl.TripletMarginMiner(0.2, "semihard")),
        pl.LiftedStructureLoss,
        lambda: pm.TripletMarginMiner(0.2, "semihard"),
    ),
    ("glifted", cl.GeneralizedLiftedStructureLoss, pl.GeneralizedLiftedStructureLoss, None),
    (
        "glifted+pairmargin",
        lambda: cl.GeneralizedLiftedStructureLoss(0.7, 0.1, miner=cl.PairMarginMiner(0.3, 1.0)),
        lambda: pl.GeneralizedLiftedStructureLoss(0.7, 0.1),
        lambda: pm.PairMarginMiner(0.3, 1.0),
    ),
    ("margin", cl.MarginLoss, _pml_margin, None),
    (
        "margin-cosine",
        lambda: cl.MarginLoss(0.1, beta=0.5, distance="cosine"),
        lambda: _pml_margin(0.1, beta=0.5, distance=pd.CosineSimilarity()),
        None,
    ),
    (
        "margin+batchhard",
        lambda: cl.MarginLoss(0.1, beta=0.9, miner=cl.BatchHardMiner()),
        lambda: _pml_margin(0.1, beta=0.9),
        pm.BatchHardMiner,
    ),
    ("nca", cl.NCALoss, pl.NCALoss, None),
    (
        "nca-scale10-raw",
        lambda: cl.NCALoss(10.0, Distance("squared_euclidean", False)),
        lambda: pl.NCALoss(10, distance=pd.LpDistance(normalize_embeddings=False, power=2)),
        None,
    ),
    (
        "nca+semihard",
        lambda: cl.NCALoss(miner=cl.TripletMarginMiner(0.2, "semihard")),
        pl.NCALoss,
        lambda: pm.TripletMarginMiner(0.2, "semihard"),
    ),
    (
        "nca+pairmargin",
        lambda: cl.NCALoss(miner=cl.PairMarginMiner(0.3, 1.0)),
        pl.NCALoss,
        lambda: pm.PairMarginMiner(0.3, 1.0),
    ),
    ("tuplet", cl.TupletMarginLoss, pl.TupletMarginLoss, None),
    (
        "tuplet-5-32+all",
        lambda: cl.TupletMarginLoss(5.0, 32.0, cl.TripletMarginMiner(0.3)),
        lambda: pl.TupletMarginLoss(5.0, 32),
        lambda: pm.TripletMarginMiner(0.3),
    ),
    ("angular", cl.AngularLoss, pl.AngularLoss, None),
    ("angular+batchhard", lambda: cl.AngularLoss(miner=cl.BatchHardMiner()), pl.AngularLoss, pm.BatchHardMiner),
    ("instance", cl.InstanceLoss, pl.InstanceLoss, None),
    ("fastap", cl.FastAPLoss, pl.FastAPLoss, None),
    (
        "fastap-5-euclidean",
        lambda: cl.FastAPLoss(5, "euclidean"),
        lambda: pl.FastAPLoss(5, distance=pd.LpDistance()),
        None,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_value_and_gradient_match_pml(case):
    _, ours, theirs, miner = case
    x, y = _batch(16, 4, 0)
    expected = _pml(theirs(), x, y, miner() if miner else None)
    assert expected[0] > 0
    _assert_same(_ours(ours(), x, y), expected)


REF_CASES = [c for c in CASES if c[0] in ("glifted", "margin", "nca", "tuplet", "angular")]


@pytest.mark.parametrize("case", REF_CASES, ids=[c[0] for c in REF_CASES])
def test_reference_embeddings_match_pml_ref_emb(case):
    _, ours, theirs, miner = case
    x, y = _batch(16, 4, 1)
    ref, ref_y = _batch(12, 4, 2)
    expected = _pml(theirs(), x, y, miner() if miner else None, ref, ref_y)
    assert expected[0] > 0
    _assert_same(_ours(ours(), x, y, ref_embeddings=ref.astype(WIDE), ref_labels=ref_y), expected)


def test_angular_loss_product_form_matches_pml_and_refuses_an_underflowed_sum():
    x, y = _batch(96, 12, 15, dim=16)  # 96^3 > 2**18: one matrix product, not the cube
    _assert_same(_ours(cl.AngularLoss(), x, y), _pml(pl.AngularLoss(), x, y))
    huge = x * np.float32(100.0)  # raw negatives of norm ~400: a whole sum underflows
    assert np.isnan(float(to_np(cl.AngularLoss()(y, huge))))
    small = slice(0, 32)  # the dense form (small batches) stays exact there
    assert np.isfinite(float(to_np(cl.AngularLoss()(y[small], huge[small]))))


def _lifted_loop(x, y, ref, ref_y, neg_margin=1.0):
    """The lifted structure loss with references, pair by pair: the negatives of anchor a among
    the references, and those of reference p among the references."""
    u = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    q, r = u(x.astype("float64")), u(ref.astype("float64"))
    d = lambda a, b: np.linalg.norm(a - b)  # noqa: E731
    losses = []
    for a in range(len(q)):
        for p in range(len(r)):
            if ref_y[p] != y[a]:
                continue
            terms = [np.exp(neg_margin - d(q[a], r[n])) for n in range(len(r)) if ref_y[n] != y[a]]
            terms += [np.exp(neg_margin - d(r[p], r[n])) for n in range(len(r)) if ref_y[n] != ref_y[p]]
            losses.append(max(np.log(sum(terms)) + d(q[a], r[p]), 0.0) ** 2 / 2)
    return np.mean(losses)


def test_lifted_structure_with_references_pairs_each_reference_with_its_own_negatives():
    x, y = _batch(8, 3, 3)
    ref, ref_y = _batch(10, 3, 4)
    loss = cl.LiftedStructureLoss()
    value, _ = _ours(loss, x, y, ref_embeddings=ref.astype(WIDE), ref_labels=ref_y)
    np.testing.assert_allclose(value, _lifted_loop(x, y, ref, ref_y), rtol=1e-5)
    # The batch as its own (constant) reference, its diagonal masked: PML's plain value.
    as_refs, _ = _ours(loss, x, y, ref_embeddings=x.astype(WIDE), ref_labels=y, ref_mask=~np.eye(8, dtype=bool))
    np.testing.assert_allclose(as_refs, _pml(pl.LiftedStructureLoss(), x, y)[0], rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# PML's own test inputs (tests/losses/test_*.py) and edge cases.

FIVE = np.array([0, 0, 1, 1, 2])
RNG = np.random.default_rng(5)
RAND5 = _unit(RNG.normal(size=(5, 32)))
# PML's get_triplet_embeddings_with_ref: 4 queries, 3 references
REF_Q, REF_R = _unit(RNG.normal(size=(4, 32))), _unit(RNG.normal(size=(3, 32)))
CIRCLE180, LABELS180 = _coords(np.arange(180)), RNG.integers(0, 10, 180)

PML_TESTS = [  # (id, ours, theirs, x, y, ref, ref_y)
    (
        "lifted",
        lambda: cl.LiftedStructureLoss(0.5),
        lambda: pl.LiftedStructureLoss(0.5),
        _coords([0, 20, 40, 60, 80]),
        FIVE,
        None,
        None,
    ),
    (
        "glifted",
        lambda: cl.GeneralizedLiftedStructureLoss(0.5),
        lambda: pl.GeneralizedLiftedStructureLoss(0.5),
        _coords([0, 20, 40, 60, 80]),
        FIVE,
        None,
        None,
    ),
    ("nca", lambda: cl.NCALoss(10.0), lambda: pl.NCALoss(10), _coords([0, 20, 40, 60, 80]), FIVE, None, None),
    (
        "tuplet",
        lambda: cl.TupletMarginLoss(5.0, 64.0),
        lambda: pl.TupletMarginLoss(5, 64),
        _coords([0, 20, 40, 60, 80], ellipse=False),
        FIVE,
        None,
        None,
    ),
    ("margin", lambda: cl.MarginLoss(0.1, 0.1, 1.0), lambda: pl.MarginLoss(0.1, 0.1, 1), RAND5, FIVE, None, None),
    (
        "margin-ref",
        lambda: cl.MarginLoss(0.1, 0.1, 1.0),
        lambda: pl.MarginLoss(0.1, 0.1, 1),
        REF_Q,
        np.array([0, 0, 1, 1]),
        REF_R,
        np.array([0, 1, 2]),
    ),
    ("angular", lambda: cl.AngularLoss(40.0), lambda: pl.AngularLoss(40), RAND5, FIVE, None, None),
    (
        "angular-ref",
        lambda: cl.AngularLoss(40.0),
        lambda: pl.AngularLoss(40),
        REF_Q,
        np.array([0, 0, 1, 1]),
        REF_R,
        np.array([0, 1, 2]),
    ),
    ("fastap", lambda: cl.FastAPLoss(5), lambda: pl.FastAPLoss(5), CIRCLE180, LABELS180, None, None),
    ("instance", lambda: cl.InstanceLoss(33.0), lambda: pl.InstanceLoss(33), CIRCLE180, LABELS180, None, None),
]


@pytest.mark.parametrize("case", PML_TESTS, ids=[c[0] for c in PML_TESTS])
def test_pml_own_test_cases(case):
    _, ours, theirs, x, y, ref, ref_y = case
    inputs = {} if ref is None else dict(ref_embeddings=ref.astype(WIDE), ref_labels=ref_y)
    expected = _pml(theirs(), x, y, None, ref, ref_y)
    assert expected[0] > 0
    _assert_same(_ours(ours(), x, y, **inputs), expected)


ZERO_CASES = [  # PML's "no valid pairs/triplets" and "zero loss" tests: exactly 0
    (cl.LiftedStructureLoss(0.5), _coords([0]), [0]),
    (cl.TupletMarginLoss(0.1, 64.0), _coords([0]), [0]),
    (cl.MarginLoss(0.1, 0.0, 1.0), _coords([0, 20, 40, 60, 80]), [0, 1, 2, 3, 4]),
    (cl.AngularLoss(40.0), _coords([0, 20, 40, 60, 80]), [0, 1, 2, 3, 4]),
    (cl.NCALoss(10.0), _coords([0, 20]), [0, 0]),
]


@pytest.mark.parametrize("loss,x,y", ZERO_CASES, ids=[type(c[0]).__name__ for c in ZERO_CASES])
def test_pml_zero_loss_cases_give_exactly_zero_with_zero_gradients(loss, x, y):
    y = np.asarray(y, "int32")
    value, g = _ours(loss, x, y)
    assert value == 0.0 and np.all(g == 0.0)


DEFAULTS = [
    c for c in CASES if c[0] in ("lifted", "glifted", "margin", "nca", "tuplet", "angular", "instance", "fastap")
]


def _edge_batch(kind):
    x, _ = _batch(16, 4, 11)
    y = np.repeat(np.arange(4), 4).astype("int32")
    if kind == "one_class":
        y = np.zeros(16, "int32")
    elif kind == "all_distinct":
        y = np.arange(16, dtype="int32")
    else:  # duplicates, within a class and across classes
        x[1] = x[0]
        x[4] = x[0]
        x[5] = x[6] = x[7]
    return x, y


@pytest.mark.parametrize("case", DEFAULTS, ids=[c[0] for c in DEFAULTS])
def test_edge_batches_match_pml_with_finite_gradients(case):
    _, ours, theirs, _ = case
    loss = ours()
    for kind in ("one_class", "all_distinct", "duplicates"):
        x, y = _edge_batch(kind)
        value, g = _ours(loss, x, y)
        ref_value, ref_g = _pml(theirs(), x, y)
        if np.isnan(ref_value):  # PML's mean over no anchor; the seam's rule: 0
            assert value == 0.0 and np.all(g == 0.0), kind
            continue
        np.testing.assert_allclose(value, ref_value, rtol=1e-5, atol=1e-6, err_msg=kind)
        if ref_value == 0.0:
            assert value == 0.0 and np.all(g == 0.0), kind
        elif np.all(np.isfinite(ref_g)) and not (BACKEND == "jax" and kind == "duplicates"):
            # (Under XLA, duplicate rows can normalise an ulp apart: their distance's gradient
            # is then a unit vector of rounding noise, a subgradient as valid as PML's 0.)
            np.testing.assert_allclose(g, ref_g, rtol=1e-4, atol=1e-5 * max(1, np.abs(ref_g).max()), err_msg=kind)


# ---------------------------------------------------------------------------------------------
# Learned beta (MarginLossLayer) and LpRegularizer.


@pytest.mark.parametrize(
    "num_classes,refs", [(None, False), (4, False), (4, True)], ids=["global", "per-class", "per-class-ref"]
)
def test_learned_beta_matches_pml_learn_beta_for_embeddings_and_beta(num_classes, refs):
    x, y = _batch(16, 4, 6)
    ref, ref_y = _batch(12, 4, 7) if refs else (None, None)
    theirs = pl.MarginLoss(0.1, nu=0.3, learn_beta=True, num_classes=num_classes).double()
    beta = np.random.default_rng(8).uniform(0.5, 1.5, size=num_classes or 1)
    with torch.no_grad():
        theirs.beta.copy_(torch.tensor(beta))
    expected = _pml(theirs, x, y, None, ref, ref_y)
    inputs = {} if ref is None else dict(ref_embeddings=ref.astype(WIDE), ref_labels=ref_y)

    def ours(emb, b, labels, refs):
        return _mean(cl.margin_loss(labels, emb, 0.1, nu=0.3, beta=b, learn_beta=True, **refs))

    value, (g_x, g_beta) = _value_and_grad(ours, 2, x.astype(WIDE), beta.astype(WIDE), y, inputs)
    _assert_same((float(value), g_x), expected)
    np.testing.assert_allclose(g_beta, theirs.beta.grad.numpy(), rtol=1e-5, atol=1e-7)
    layer = cl.MarginLossLayer(0.1, nu=0.3, num_classes=num_classes)
    layer.beta.assign(beta)
    if ref is None:  # the layer computes the same per-sample values
        np.testing.assert_allclose(float(to_np(_mean(layer(x, y)))), expected[0], rtol=1e-5)
        assert [w.name for w in layer.trainable_weights] == ["beta"]


def test_labels_beyond_the_betas_are_an_error_on_the_host_and_nan_in_the_graph():
    x, y = _batch(8, 4, 9)
    with pytest.raises(ValueError, match="`y_true` must be < num_classes=3"):
        cl.margin_loss(np.maximum(y, 3), x, beta=np.ones(3))
    layer = cl.MarginLossLayer(num_classes=3)  # Keras hands the layer tensors: NaN, no clip
    assert np.all(np.isnan(to_np(layer(x, np.maximum(y, 3)))))
    assert np.all(np.isfinite(to_np(layer(x, np.minimum(y, 2)))))


@pytest.mark.parametrize("p,power,weight", [(2, 1, 1.0), (3, 2, 0.3)])
def test_lp_regularizer_adds_pml_embedding_regularizer(p, power, weight):
    x, y = _batch(16, 4, 10)
    regularizer = dict(embedding_regularizer=cl.LpRegularizer(p, power), embedding_reg_weight=weight)
    theirs = pl.ContrastiveLoss(embedding_regularizer=pr.LpRegularizer(p=p, power=power), embedding_reg_weight=weight)
    expected = _pml(theirs, x, y)
    _assert_same(_ours(cl.ContrastiveLoss(**regularizer), x, y), expected)
    norms = np.linalg.norm(x.astype("float64"), ord=p, axis=1) ** power
    np.testing.assert_allclose(float(to_np(cl.LpRegularizer(p, power)(x))), norms.mean(), rtol=1e-6)
    if p == 2:  # kept by CrossBatchMemory, which calls the loss with references
        memory = cl.CrossBatchMemory(cl.NCALoss(**regularizer), 8, memory_size=32)
        plain = cl.CrossBatchMemory(cl.NCALoss(), 8, memory_size=32)
        np.testing.assert_allclose(to_np(memory(x, y)) - to_np(plain(x, y)), weight * norms, rtol=1e-5, atol=1e-6)
    x[3] = 0.0  # a zero embedding: value 0 and a zero, finite gradient (as torch.norm's)
    (g,) = grad(lambda t: ops.sum(cl.LpRegularizer(p, power).per_sample(t)), x)
    assert np.all(np.isfinite(g)) and np.all(g[3] == 0.0)


def test_losses_refuse_reference_embeddings_they_do_not_take():
    x, y = _batch(8, 2, 0)
    for loss in (cl.InstanceLoss(), cl.FastAPLoss()):
        with pytest.raises(ValueError, match="does not take `ref_embeddings`, `ref_labels`"):
            loss(y, x, ref_embeddings=x, ref_labels=y)
        with pytest.raises(ValueError, match="must be a clusterloss pair or triplet loss"):
            cl.CrossBatchMemory(loss, 8)


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda: cl.MarginLoss(learn_beta=True), "use `MarginLossLayer"),
        (lambda: cl.MarginLoss(triplets_per_anchor=5), "`triplets_per_anchor` must be 'all'"),
        (lambda: cl.MarginLoss(margin=-0.1), r"`margin` must be in \[0.0, inf\]"),
        (lambda: cl.NCALoss(softmax_scale=0.0), r"`softmax_scale` must be in \(0.0, inf\]"),
        (lambda: cl.TupletMarginLoss(scale=-1.0), r"`scale` must be in \(0.0, inf\]"),
        (lambda: cl.AngularLoss(alpha=90.0), r"`alpha` must be in \(0, 90\) degrees"),
        (lambda: cl.FastAPLoss(num_bins=0), "`num_bins` must be an integer >= 1"),
        (lambda: cl.FastAPLoss(distance="cosine"), "`distance` must be an L2-normalised"),
        (lambda: cl.InstanceLoss(gamma=0.0), r"`gamma` must be in \(0.0, inf\]"),
        (lambda: cl.LpRegularizer(p=0.5), r"`p` must be in \[1.0, inf\]"),
        (lambda: cl.NCALoss(embedding_regularizer="l2"), "`embedding_regularizer` must be"),
        (lambda: cl.MarginLossLayer(num_classes=0), "`num_classes` must be an integer >= 1"),
    ],
)
def test_bad_hyperparameters_name_the_argument(make, message):
    with pytest.raises(ValueError, match=message):
        make()


# ---------------------------------------------------------------------------------------------
# Saving (NaN, half precision and a saved model of every loss: test_contract.py).

ALL_LOSSES = [c[1] for c in DEFAULTS]

SAVED = [
    cl.LiftedStructureLoss(0.8, 0.1, "cosine", cl.BatchEasyHardMiner("hard", "hard")),
    cl.GeneralizedLiftedStructureLoss(miner=cl.HDCMiner(0.3), embedding_regularizer=cl.LpRegularizer(1.0, 2.0)),
    cl.MarginLoss(0.1, 0.2, 1.1, num_classes=5, miner=cl.DistanceWeightedMiner(seed=3)),
    cl.NCALoss(4.0, "euclidean", cl.UniformHistogramMiner(20, 3, 4, seed=1)),
    cl.TupletMarginLoss(4.0, 32.0, cl.AngularMiner(25.0)),
    cl.AngularLoss(35.0, embedding_regularizer=cl.LpRegularizer(), embedding_reg_weight=0.5),
    cl.InstanceLoss(16.0),
    cl.FastAPLoss(12, "euclidean", cl.TripletMarginMiner(0.1)),
]


@pytest.mark.parametrize("loss", SAVED, ids=lambda loss: type(loss).__name__)
def test_config_round_trip_keeps_every_option(loss):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    for attribute in ("miner", "embedding_regularizer"):
        original = getattr(loss, attribute)
        if original is not None:
            assert type(getattr(restored, attribute)) is type(original)


def test_saved_model_and_margin_loss_layer_load_with_no_custom_objects(tmp_path):
    x, y = _batch(16, 4, 13)
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    model.compile("adam", loss=cl.NCALoss(2.0, embedding_regularizer=cl.LpRegularizer()))
    before = model.evaluate(x, y, batch_size=16, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras")
    assert loaded.loss.get_config() == model.loss.get_config() and before > 0
    np.testing.assert_allclose(loaded.evaluate(x, y, batch_size=16, verbose=0), before, rtol=1e-6)
    layer = cl.MarginLossLayer(0.1, 0.2, num_classes=4, miner=cl.BatchHardMiner(), name="margin")
    layer.beta.assign(np.array([0.9, 1.0, 1.1, 1.2]))
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config)
    restored.set_weights(layer.get_weights())
    np.testing.assert_array_equal(to_np(restored(x, y)), to_np(layer(x, y)))


# ---------------------------------------------------------------------------------------------
# Training on sklearn's digits: each loss moves the 1-NN accuracy of the embeddings well above
# chance (0.1), in 20 steps of M-per-class batches (8 classes x 4).


class _WithLossLayer(keras.Model):
    """A backbone trained by a per-sample loss layer alone (what ClusterModel's loss layers do)."""

    def __init__(self, backbone, loss_layer):
        super().__init__(name="with_loss_layer")
        self.backbone, self.loss_layer = backbone, loss_layer

    def call(self, x):
        return self.backbone(x)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return ops.mean(self.loss_layer(y_pred, y, training=training))


TRAINING = [
    ("lifted", cl.LiftedStructureLoss),
    ("glifted", cl.GeneralizedLiftedStructureLoss),
    ("margin+distance_weighted", lambda: cl.MarginLoss(miner=cl.DistanceWeightedMiner(seed=0))),
    ("margin_layer", lambda: cl.MarginLossLayer(num_classes=10)),
    ("nca", cl.NCALoss),
    ("tuplet", cl.TupletMarginLoss),
    ("angular", cl.AngularLoss),
    ("instance", cl.InstanceLoss),
    ("fastap", cl.FastAPLoss),
]


@pytest.mark.parametrize("name,make", TRAINING, ids=[t[0] for t in TRAINING])
def test_training_moves_nearest_neighbour_accuracy_well_above_chance(name, make, digits):
    keras.utils.set_random_seed(0)
    backbone = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(32, activation="relu"),
            keras.layers.Dense(8),
            keras.layers.UnitNormalization(),
        ]
    )
    before = knn_accuracy(backbone, digits)
    loss = make()
    if name == "margin_layer":
        model = _WithLossLayer(backbone, loss)
        model.compile(keras.optimizers.Adam(1e-2))
    else:
        model = backbone
        model.compile(keras.optimizers.Adam(1e-2), loss=loss)
    batches = cl.MPerClassSampler(digits[0], digits[1], m=4, batch_size=32, seed=0, steps_per_epoch=20)
    history = model.fit(batches, epochs=1, verbose=0)
    after = knn_accuracy(backbone, digits)
    assert np.all(np.isfinite(history.history["loss"]))
    if name == "instance":  # PML's target column r(y_i) is not a classmate: no class clusters
        assert after > 0.3, (before, after)
        return
    assert after > before + 0.1 and after > 0.8, (before, after)
    if name == "margin_layer":  # beta was trained, per class, on every backend
        assert np.abs(to_np(loss.beta) - 1.2).max() > 1e-3


@pytest.mark.skipif(BACKEND != "torch", reason="counts host copies of torch tensors")
def test_losses_and_deterministic_miners_never_copy_device_tensors_to_the_host(monkeypatch):
    x, y = _batch(16, 4, 14)
    xt, yt = torch.tensor(x, requires_grad=True), torch.tensor(y, dtype=torch.long)
    losses = [make() for make in ALL_LOSSES] + [
        cl.MarginLoss(miner=cl.BatchEasyHardMiner()),
        cl.NCALoss(miner=cl.HDCMiner()),
        cl.TupletMarginLoss(miner=cl.AngularMiner()),
        cl.ContrastiveLoss(embedding_regularizer=cl.LpRegularizer()),
    ]
    layer = cl.MarginLossLayer(num_classes=4)

    forbid_host_copies(monkeypatch)
    total = sum(loss(yt, xt) for loss in losses) + ops.mean(layer(xt, yt))
    total.backward()
    monkeypatch.undo()
    assert np.isfinite(xt.grad.numpy()).all() and np.abs(xt.grad.numpy()).max() > 0
