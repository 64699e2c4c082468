"""Angular loss."""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import Distance, l2_normalize, matmul_t
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import (
    get_miner,
    masked_logsumexp,
    masked_max,
    mined_pairs,
    nan_unless_finite,
    pair_batch,
    per_anchor_mean,
)

_COSINE = Distance("cosine")


def _check_alpha(alpha):
    check_range(alpha, "alpha", 0.0, low_open=True)
    if alpha >= 90.0:  # tan(alpha) blows up
        raise ValueError(f"`alpha` must be in (0, 90) degrees; got {alpha!r}.")


DENSE_MAX_ELEMENTS = 2**18  # (batch, refs, refs) exponents up to this many, else a product
_TINY = {"float32": 1e-30, "float64": 1e-300}  # sums below this have underflowed


def _negative_logsumexp(u, v, neg):
    """`(lse, lost)`, each `(batch, refs)`: `lse[a, p] = log sum_{n: neg[a, n]} exp(u[a, n] +
    v[p, n])` (0 where the anchor has no negative), and where that sum underflowed (the
    product form only; False in the dense form; `lse` is then an upper bound).

    Small inputs: the dense `(batch, refs, refs)` exponents, exact. Larger: one matrix product,
    `sum_n exp(u[a, n] - max_a) exp(v[p, n] - max_p)`, which is exact unless the whole sum
    underflows (the largest term more than ~69 (float32) below `max_a + max_p`)."""
    shape = (u.shape[0], v.shape[0], v.shape[1])
    if all(isinstance(d, int) for d in shape) and math.prod(shape) <= DENSE_MAX_ELEMENTS:
        exponent = u[:, None, :] + v[None, :, :]
        mask = ops.broadcast_to(neg[:, None, :], ops.shape(exponent))
        return masked_logsumexp(exponent, mask, axis=-1), ops.zeros(shape[:2], "bool")
    top_u = ops.stop_gradient(
        ops.where(ops.any(neg, axis=1, keepdims=True), masked_max(u, neg, axis=1, keepdims=True), 0.0)
    )
    top_v = ops.stop_gradient(ops.max(v, axis=1, keepdims=True))
    left = ops.where(neg, ops.exp(ops.where(neg, u - top_u, 0.0)), 0.0)
    total = matmul_t(left, ops.exp(v - top_v))
    tiny = _TINY[keras.backend.standardize_dtype(total.dtype)]
    lost = total <= tiny  # then log(tiny) + the shifts bounds the sum from above
    lse = ops.log(ops.where(lost, tiny, total)) + top_u + ops.transpose(top_v)
    return lse, lost


@validated(_check_alpha)
def angular_loss(
    y_true,
    y_pred,
    alpha: float = 40.0,
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Angular loss (Wang, Zhou, Wen, Liu & Lin, "Deep Metric Learning with Angular Loss",
    ICCV 2017; the N-pair form, Eq. 8), as PML's `AngularLoss`. With `t = tan(alpha)^2`, for
    each positive pair `(a, p)` (anchor and positive L2-normalised) and the negatives `n` of
    the anchor:

        f_apn = 4 t (a + p) . x_n - 2 (1 + t) a . p
        l_ap  = log(1 + sum_n exp(f_apn))

    and the batch value is the mean over the positive pairs. `alpha` is in **degrees** (PML's
    unit; default 40, PML's, in the paper's 36-55 range).

    Conventions, as PML's (whose value and gradient this equals): the negatives `x_n` enter
    **as given**, not normalised (PML normalises only the anchor and the positive; the paper
    assumes unit-norm features everywhere: end the model with `UnitNormalization` for the
    paper's loss); the negatives are every sample with another label, whatever the miner (a
    miner restricts only the positive pairs, and a batch whose miner keeps no negative pair
    gives 0). References as PML's `ref_emb`. A pair whose anchor has no negative gives 0.

    Cost: up to `batch * refs^2 = 2**18` the `(batch, refs, refs)` exponents are formed
    (exact); beyond, the sum over negatives is one matrix product (O(batch refs dim + batch
    refs^2) time, O(batch refs) memory), exact unless a pair's whole sum underflows, which
    needs negatives of large norm (raw, not unit-norm embeddings with `|x_n|` in the tens);
    such a batch gives NaN rather than a wrong value. NaN/inf embeddings, or raw negatives
    whose dot products overflow, give NaN.
    """
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    ap = pairs.matrix(_COSINE)  # a . p, both normalised
    refs = pairs.embeddings if pairs.ref_embeddings is None else pairs.ref_embeddings
    a_n = matmul_t(l2_normalize(pairs.embeddings), refs)  # a . x_n (x_n as given)
    p_n = matmul_t(l2_normalize(refs), refs)  # p . x_n
    t = math.tan(math.radians(alpha)) ** 2
    lse, lost = _negative_logsumexp(4.0 * t * a_n, 4.0 * t * p_n, pairs.neg)
    offset = 2.0 * (1.0 + t) * ap
    has_neg = ops.any(pairs.neg, axis=1, keepdims=True)
    losses = ops.where(has_neg, ops.softplus(lse - offset), 0.0)
    pos_w, neg_w = mined_pairs(miner, pairs)
    values = per_anchor_mean(losses, pos_w, nonzero=False)
    values = ops.where(ops.any(neg_w > 0), values, ops.zeros_like(values))
    # An underflowed sum matters only where its upper bound still gives a loss above e^-30.
    wrong = ops.any(ops.logical_and(ops.logical_and(lost, pos_w > 0), lse - offset > -30.0))
    return pairs.guard(nan_unless_finite(ops.where(wrong, float("nan"), values), a_n, p_n))


@register
class AngularLoss(MetricLoss, fn=angular_loss):
    """Angular loss, equal to PML's `AngularLoss(alpha)`; see `angular_loss` (and its cost).

    Example:
        model.compile("adam", loss=AngularLoss(alpha=40.0))

    Args:
        alpha: the angle bound in degrees, in (0, 90) (default 40, PML's).
        miner: restricts the positive pairs (a pair or triplet miner), or `None`.
        embedding_regularizer, embedding_reg_weight: see `LpRegularizer`.
    """


__all__ = ["AngularLoss", "angular_loss"]
