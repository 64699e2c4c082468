"""Distances, and the mask/logsumexp helpers shared by the pair losses and miners."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from helpers import grad, to_np
from keras import ops

from clusterloss.distances import Distance, get_distance, l2_normalize, safe_sqrt
from clusterloss.tuples.pairs import Pairs, label_masks, masked_logsumexp, per_anchor_mean

RNG = np.random.default_rng(0)


def _normalize(x):
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _reference(name, normalize, x, y):
    if normalize:
        x, y = _normalize(x), _normalize(y)
    diff = x[:, None, :] - y[None, :, :]
    return {
        "euclidean": np.sqrt((diff**2).sum(-1)),
        "squared_euclidean": (diff**2).sum(-1),
        "cosine": x @ y.T,
        "dot": x @ y.T,
    }[name]


CASES = [
    ("euclidean", True),
    ("euclidean", False),
    ("squared_euclidean", True),
    ("squared_euclidean", False),
    ("cosine", True),
    ("dot", False),
    ("dot", True),
]


@pytest.mark.parametrize("name,normalize", CASES)
def test_pairwise_and_paired_match_numpy(name, normalize):
    x = RNG.normal(size=(16, 8)).astype("float64")
    y = RNG.normal(size=(4, 8)).astype("float64")
    d = get_distance(name, normalize=normalize)
    ref = _reference(name, normalize, x, y)
    np.testing.assert_allclose(to_np(d.pairwise(x.astype("float32"), y.astype("float32"))), ref, rtol=1e-5, atol=1e-5)
    self_ref = _reference(name, normalize, x, x)
    np.testing.assert_allclose(
        to_np(d.pairwise(x.astype("float32"))), self_ref, rtol=1e-5, atol=2e-3 if name == "euclidean" else 1e-5
    )
    np.testing.assert_allclose(
        to_np(d.paired(x[:4].astype("float32"), y.astype("float32"))), np.diag(ref[:4]), rtol=1e-5, atol=1e-5
    )


def test_defaults_flags_and_margin():
    assert get_distance("euclidean").normalize and get_distance("cosine").normalize
    assert not get_distance("dot").normalize
    assert [get_distance(n).larger_is_closer for n in ("euclidean", "squared_euclidean", "cosine", "dot")] == [
        False,
        False,
        True,
        True,
    ]
    assert get_distance("euclidean").margin(3.0, 1.0) == 2.0  # x - y for a distance
    assert get_distance("cosine").margin(3.0, 1.0) == -2.0  # y - x for a similarity


def test_get_distance_accepts_names_configs_and_objects():
    d = Distance("squared_euclidean", normalize=False)
    assert get_distance(d) is d
    assert get_distance(d.get_config()) == d
    assert get_distance("euclidean", normalize=False) == Distance("euclidean", False)
    assert get_distance(d, normalize=True) == Distance("squared_euclidean", True)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(d))
    assert restored == d


@pytest.mark.parametrize("bad", ["manhattan", "L2", 3])
def test_unknown_distance_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="`distance` must be one of"):
        get_distance(bad)


def test_cosine_without_normalisation_is_an_error():
    with pytest.raises(ValueError, match="`normalize` must be True"):
        Distance("cosine", normalize=False)


def test_embeddings_rank_is_checked():
    with pytest.raises(ValueError, match=r"`embeddings` must have shape \(batch, dim\)"):
        get_distance("euclidean").pairwise(np.zeros((2, 3, 4), "float32"))


@pytest.mark.parametrize("name,normalize", CASES)
def test_zero_distance_and_zero_vector_give_finite_gradients(name, normalize):
    x = RNG.normal(size=(16, 8)).astype("float32")
    x[1] = x[0]  # duplicate: zero distance off the diagonal
    x[2] = 0.0  # zero embedding: the normalisation must not divide by 0
    d = get_distance(name, normalize=normalize)
    (g,) = grad(lambda t: ops.sum(d.pairwise(t)) + ops.sum(d.paired(t, ops.flip(t, axis=0))), x)
    assert np.all(np.isfinite(g))
    (g0,) = grad(lambda t: ops.sum(safe_sqrt(ops.sum(ops.square(t), axis=1))), np.zeros((3, 2), "float32"))
    np.testing.assert_array_equal(g0, 0.0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_is_computed_in_float32(dtype):
    x = RNG.normal(size=(16, 8)).astype("float32")
    half = ops.cast(x, dtype)
    out = get_distance("euclidean", normalize=False).pairwise(half)
    assert keras.backend.standardize_dtype(out.dtype) == "float32"
    np.testing.assert_allclose(to_np(out), _reference("euclidean", False, x, x), rtol=2e-2, atol=5e-2)


def test_large_values_stay_finite():
    x = (RNG.choice([-1.0, 1.0], size=(16, 8)) * 1e4).astype("float32")
    for name, normalize in CASES:
        d = get_distance(name, normalize=normalize)
        (g,) = grad(lambda t: ops.sum(d.pairwise(t)), x)
        assert np.all(np.isfinite(to_np(d.pairwise(x)))) and np.all(np.isfinite(g))
    np.testing.assert_allclose(to_np(l2_normalize(x)), _normalize(x), rtol=1e-6)


def test_label_masks_exclude_the_diagonal_or_the_masked_references():
    labels = np.array([0, 1, 0, 2, 1], "int32")
    pos, neg = (to_np(m) for m in label_masks(ops.convert_to_tensor(labels)))
    same = labels[:, None] == labels[None, :]
    np.testing.assert_array_equal(pos, same & ~np.eye(5, dtype=bool))
    np.testing.assert_array_equal(neg, ~same)
    refs = np.array([2, 0, 0, 1], "int32")
    allowed = np.ones((5, 4), bool)
    allowed[0, 1] = allowed[3, 0] = allowed[4, 3] = False
    pos, neg = (to_np(m) for m in label_masks(ops.convert_to_tensor(labels), ops.convert_to_tensor(refs), allowed))
    same = labels[:, None] == refs[None, :]
    np.testing.assert_array_equal(pos, same & allowed)
    np.testing.assert_array_equal(neg, ~same & allowed)


def test_pair_weights_are_the_label_masks_as_floats():
    labels = ops.convert_to_tensor(np.array([0, 1, 0, 2, 1], "int32"))
    x = ops.convert_to_tensor(RNG.normal(size=(5, 3)).astype("float32"))
    refs = ops.convert_to_tensor(np.array([2, 0, 0, 1], "int32"))
    for pairs in (
        Pairs(labels, x),  # within the batch: from one comparison, `same - I` and `1 - same`
        Pairs(labels, x, ref_mask=np.array([True, False, True, True, True])),
        Pairs(labels, x, refs, x[:4]),
    ):
        pos, neg = (to_np(w) for w in pairs.weights)
        assert pos.dtype == neg.dtype == np.float32
        np.testing.assert_array_equal(pos, to_np(pairs.pos).astype("float32"))
        np.testing.assert_array_equal(neg, to_np(pairs.neg).astype("float32"))


@pytest.mark.parametrize("n,dim", [(40, 96), (8, 4)])
def test_euclidean_gradient_is_one_over_twice_the_distance_and_zero_at_zero(n, dim):
    # 40 x 40 x 96 > DIRECT_MAX_ELEMENTS: the matrix-product path; 8 x 8 x 4: direct
    # differences, where a duplicated row is at distance exactly 0 (a zero gradient there)
    x = RNG.normal(size=(n, dim))
    if n == 8:
        x[1] = x[0]
    w = RNG.uniform(size=(n, n))
    wide = "float32" if keras.backend.backend() == "jax" else "float64"
    d = get_distance("euclidean", normalize=False)
    (g,) = grad(lambda t: ops.sum(d.pairwise(t) * ops.convert_to_tensor(w, wide)), x.astype(wide))
    diff = x[:, None, :] - x[None, :, :]
    dist = np.sqrt((diff**2).sum(-1))
    coef = np.where(dist > 0, (w + w.T) / np.where(dist > 0, dist, 1.0), 0.0)
    tol = 1e-4 if wide == "float32" else 1e-7
    np.testing.assert_allclose(g, (coef[:, :, None] * diff).sum(1), rtol=tol, atol=tol)


def test_masked_logsumexp_matches_numpy_and_is_zero_on_empty_rows():
    x = RNG.normal(size=(4, 6)).astype("float32") * 30
    mask = RNG.random((4, 6)) > 0.5
    mask[2] = False
    weights = RNG.integers(1, 4, size=(4, 6)).astype("float32")
    for add_one in (False, True):
        out = to_np(masked_logsumexp(x, mask, axis=1, add_one=add_one, weights=weights))
        for i in range(4):
            terms = list(x[i][mask[i]] + np.log(weights[i][mask[i]]))
            if not terms:
                assert out[i] == 0.0
                continue
            terms += [0.0] if add_one else []
            ref = np.log(np.sum(np.exp(np.array(terms, "float64"))))
            np.testing.assert_allclose(out[i], ref, rtol=1e-6, atol=1e-7)
    (g,) = grad(lambda t: ops.sum(masked_logsumexp(t, mask, axis=1)), x)
    assert np.all(np.isfinite(g)) and np.all(g[~mask] == 0.0)
    np.testing.assert_allclose(g.sum(axis=1), mask.any(axis=1).astype("float32"), rtol=1e-5)


def test_per_anchor_mean_reproduces_the_pair_mean():
    losses = np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 0.0]], "float32")
    weights = np.array([[1, 1, 2], [1, 1, 0], [0, 0, 1]], "float32")
    nonzero = to_np(per_anchor_mean(ops.convert_to_tensor(losses), weights, nonzero=True))
    # Non-zero weighted terms: 2 (w1) + 1 (w2) + 3 (w1) -> sum 7 over 4 copies.
    np.testing.assert_allclose(nonzero.mean(), 7.0 / 4.0, rtol=1e-6)
    every = to_np(per_anchor_mean(ops.convert_to_tensor(losses), weights, nonzero=False))
    np.testing.assert_allclose(every.mean(), 7.0 / 7.0, rtol=1e-6)
    empty = to_np(per_anchor_mean(ops.convert_to_tensor(losses), np.zeros_like(weights), True))
    np.testing.assert_array_equal(empty, 0.0)
