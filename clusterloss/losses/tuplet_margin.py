"""Tuplet margin loss."""

from __future__ import annotations

import math
from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import Distance, safe_sqrt
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import (
    get_miner,
    masked_logsumexp,
    mined_pairs,
    pair_batch,
    per_anchor_mean,
)

_COSINE = Distance("cosine")


def cos_minus(cosine, angle: float):
    """`cos(acos(c) - angle)` as `c cos(angle) + sqrt(1 - c^2) sin(angle)`: equal for `c` in
    [-1, 1], finite (value and gradient) at `c = +-1` and for cosines that rounding put just
    outside (where `acos` gives NaN)."""
    return cosine * math.cos(angle) + safe_sqrt(1.0 - ops.square(cosine)) * math.sin(angle)


def _check(margin, scale):
    check_range(margin, "margin")
    check_range(scale, "scale", 0.0, low_open=True)


@validated(_check)
def tuplet_margin_loss(
    y_true,
    y_pred,
    margin: float = 5.73,
    scale: float = 64.0,
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Tuplet margin loss (Yu & Tao, "Deep Metric Learning with Tuplet Margin Loss", ICCV
    2019), as PML's `TupletMarginLoss`. With cosines `s` and, for each positive pair `(a, p)`,
    its angle made larger by the margin, `c_ap = cos(acos(s_ap) - margin)`:

        l_ap = log(1 + sum_{n in N_a} exp(scale * (s_an - c_ap)))

    and the batch value is the mean over the positive pairs. `margin` is in **degrees** (PML's
    unit; 5.73 degrees = 0.1 rad, the paper's value), `scale` 64 (PML's default). An anchor
    without a negative contributes 0. A miner restricts the positive and negative pairs
    (counted once per mined triplet, as PML). References as PML's `ref_emb`. PML takes
    `acos(s_ap)`, which is NaN when rounding puts a cosine of duplicates above 1; here the
    equivalent `s cos(m) + sqrt(1 - s^2) sin(m)` stays finite. NaN/inf embeddings give NaN.
    O(B^2) memory: `log(1 + sum_n ...)` is a softplus of the anchor's one logsumexp.
    """
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    s = pairs.matrix(_COSINE)
    pos_w, neg_w = mined_pairs(miner, pairs)
    has_neg = neg_w > 0
    neg_lse = masked_logsumexp(scale * s, has_neg, axis=1, weights=neg_w, keepdims=True)
    losses = ops.softplus(neg_lse - scale * cos_minus(s, math.radians(margin)))
    losses = ops.where(ops.any(has_neg, axis=1, keepdims=True), losses, 0.0)
    return pairs.guard(per_anchor_mean(losses, pos_w, nonzero=False))


@register
class TupletMarginLoss(MetricLoss, fn=tuplet_margin_loss):
    """Tuplet margin loss, equal to PML's `TupletMarginLoss(margin, scale)`; see
    `tuplet_margin_loss`. Cosine similarity only (PML's requirement); it normalises the
    embeddings itself.

    Example:
        model.compile("adam", loss=TupletMarginLoss(margin=5.73, scale=64.0))

    Args:
        margin: in degrees, >= 0 (default 5.73, PML's).
        scale: > 0 (default 64, PML's).
        miner: a pair or triplet miner, or `None` for all pairs.
        embedding_regularizer, embedding_reg_weight: see `LpRegularizer`.
    """


__all__ = ["TupletMarginLoss", "tuplet_margin_loss"]
