"""Angular loss."""

from __future__ import annotations

import math
from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import Distance, l2_normalize, matmul_t
from clusterloss.losses._pairs import (
    MetricLoss,
    get_miner,
    masked_logsumexp,
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
    Memory O(B R^2) (one term per anchor, positive and negative, as PML's per pair).
    NaN/inf embeddings, or raw negatives whose dot products overflow, give NaN.
    """
    _check_alpha(alpha)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    ap = pairs.matrix(_COSINE)  # a . p, both normalised
    refs = pairs.embeddings if pairs.ref_embeddings is None else pairs.ref_embeddings
    a_n = matmul_t(l2_normalize(pairs.embeddings), refs)  # a . x_n (x_n as given)
    p_n = matmul_t(l2_normalize(refs), refs)  # p . x_n
    t = math.tan(math.radians(alpha)) ** 2
    exponent = 4.0 * t * (a_n[:, None, :] + p_n[None, :, :]) - 2.0 * (1.0 + t) * ap[:, :, None]
    neg = ops.broadcast_to(pairs.neg[:, None, :], ops.shape(exponent))
    losses = masked_logsumexp(exponent, neg, axis=-1, add_one=True)
    pos_w, neg_w = mined_pairs(miner, pairs)
    values = per_anchor_mean(losses, pos_w, nonzero=False)
    values = ops.where(ops.any(neg_w > 0), values, ops.zeros_like(values))
    return pairs.guard(nan_unless_finite(values, a_n, p_n))


@register
class AngularLoss(MetricLoss):
    """Angular loss, equal to PML's `AngularLoss(alpha)`; see `angular_loss`.

    Example:
        model.compile("adam", loss=AngularLoss(alpha=40.0))

    Args:
        alpha: the angle bound in degrees, in (0, 90) (default 40, PML's).
        miner: restricts the positive pairs (a pair or triplet miner), or `None`.
        embedding_regularizer, embedding_reg_weight: see `LpRegularizer`.
    """

    def __init__(
        self,
        alpha: float = 40.0,
        miner: Any = None,
        embedding_regularizer: Any = None,
        embedding_reg_weight: float = 1.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "angular_loss",
        dtype: str | None = None,
    ):
        _check_alpha(alpha)
        super().__init__(
            angular_loss,
            reduction=reduction,
            name=name,
            dtype=dtype,
            embedding_regularizer=embedding_regularizer,
            embedding_reg_weight=embedding_reg_weight,
            alpha=float(alpha),
            miner=miner,
        )


__all__ = ["AngularLoss", "angular_loss"]
