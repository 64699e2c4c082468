"""Circle loss (Sun et al., CVPR 2020), as pytorch-metric-learning's `CircleLoss`."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import Distance
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import (
    get_miner,
    masked_logsumexp,
    mined_pairs,
    pair_batch,
    per_anchor_mean,
)

_COSINE = Distance("cosine")


def _check(m, gamma):
    check_range(m, "m")
    check_range(gamma, "gamma", 0.0, low_open=True)


@validated(_check)
def circle_loss(
    y_true,
    y_pred,
    m: float = 0.4,
    gamma: float = 80.0,
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Circle loss (Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity
    Optimization", CVPR 2020), pair form, one value per anchor. With cosine similarities `s`:

        a_p = [1 + m - s_ap]_+ ,  a_n = [s_an + m]_+      (held constant: no gradient)
        L_i = softplus( logsumexp_{p in P_i} -gamma a_p (s_ap - (1 - m))
                      + logsumexp_{n in N_i}  gamma a_n (s_an - m) )

    Conventions, as PML's `CircleLoss` (whose value and gradient this equals): the weights
    `a_p`, `a_n` are detached (the paper treats them as constants; `keras.losses.Circle` does
    not detach them, so its gradient differs), the embeddings are L2-normalised (cosine), an
    anchor without a positive or a negative gives 0, and the batch value is the mean over the
    anchors with a non-zero loss (`AvgNonZeroReducer`). Defaults `m=0.4`, `gamma=80` (the
    paper's fine-grained retrieval setting, PML's defaults). A pair or triplet miner restricts
    `P_i`, `N_i` to the mined pairs; references (`ref_embeddings`, `ref_labels`) as PML's
    `ref_emb`. NaN/inf embeddings give NaN.
    """
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    s = pairs.matrix(_COSINE)
    pos_w, neg_w = mined_pairs(miner, pairs)
    pos_m, neg_m = pos_w > 0, neg_w > 0
    fixed = ops.stop_gradient(s)
    pos_logits = -gamma * ops.relu(1.0 + m - fixed) * (s - (1.0 - m))
    neg_logits = gamma * ops.relu(fixed + m) * (s - m)
    losses = ops.softplus(masked_logsumexp(pos_logits, pos_m, axis=1) + masked_logsumexp(neg_logits, neg_m, axis=1))
    has_both = ops.logical_and(ops.any(pos_m, axis=1), ops.any(neg_m, axis=1))
    losses = ops.where(has_both, losses, ops.zeros_like(losses))
    return pairs.guard(per_anchor_mean(losses, ops.ones_like(losses), nonzero=True))


@register
class CircleLoss(MetricLoss, fn=circle_loss):
    """Circle loss, equal to PML's `CircleLoss(m, gamma)` in value and gradient; see
    `circle_loss`. Normalises the embeddings itself (no `UnitNormalization` layer needed).

    Example:
        model.compile("adam", loss=CircleLoss(m=0.25, gamma=256))   # face recognition
    """
