"""FastAP: a differentiable approximation of average precision over distance histograms."""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_positive_int
from clusterloss.distances import get_distance
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import (
    batch_share,
    get_miner,
    miner_sample_weights,
    pair_batch,
    running_sum,
    safe_divide,
)


def _check_distance(distance):
    if distance.name not in ("euclidean", "squared_euclidean") or not distance.normalize:
        raise ValueError(
            "`distance` must be an L2-normalised 'euclidean' or 'squared_euclidean' distance "
            "for FastAPLoss (its histogram spans the distances between unit vectors, [0, 2] or "
            f"[0, 4]); got {distance!r}."
        )


def _check(num_bins, distance):
    _check_distance(get_distance(distance))
    return {"num_bins": check_positive_int(num_bins, "num_bins")}


@validated(_check)
def fast_ap_loss(
    y_true,
    y_pred,
    num_bins: int = 10,
    distance: Any = "squared_euclidean",
    miner: Any = None,
):
    """FastAP (Cakir, He, Xia, Kulis & Sclaroff, "Deep Metric Learning to Rank", CVPR 2019), as
    PML's `FastAPLoss`, one value per anchor. The distances from anchor `i` to the other
    samples are spread over `num_bins + 1` evenly spaced bin centres `z_l` on `[0, D]` (`D`
    = 4 for squared distances between unit vectors, 2 for distances) by the triangular
    kernel `[1 - |d - z_l| / delta]_+`, `delta = D / num_bins`, giving soft histograms `h+_l`
    (positives) and `h-_l` (negatives) with cumulative sums `H+_l`, `H_l = H+_l + H-_l`:

        FastAP_i = 1/N+_i sum_l h+_l H+_l / H_l ,      l_i = 1 - FastAP_i

    (terms with `h+_l H+_l = 0` or `H_l = 0` are 0). The batch value is the mean over the
    anchors with a positive (PML's `MeanReducer`); a batch with none, or with no non-zero
    term, gives 0. `num_bins` 10 (PML's default; the paper uses 10-20): fewer bins blur the
    ranking (samples within one bin width tie), more bins make the histogram noisy in small
    batches. The positives and negatives are all pairs of the batch; a miner only weighs the
    anchors as PML's `convert_to_weights`. No reference embeddings (PML accepts none). Memory
    O(num_bins B^2). NaN/inf embeddings give NaN.
    """
    distance = get_distance(distance)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred)
    d = pairs.matrix(distance)
    dtype = d.dtype
    top = 4.0 if distance.name == "squared_euclidean" else 2.0
    centres = ops.cast(np.linspace(0.0, top, num_bins + 1), dtype)
    pulse = ops.relu(1.0 - ops.abs(d[None, :, :] - centres[:, None, None]) / (top / num_bins))
    pos, neg = ops.cast(pairs.pos, dtype), ops.cast(pairs.neg, dtype)
    pos_hist = ops.transpose(ops.sum(pulse * pos[None], axis=2))  # (batch, bins)
    neg_hist = ops.transpose(ops.sum(pulse * neg[None], axis=2))
    pos_product = pos_hist * running_sum(pos_hist)
    total = running_sum(pos_hist + neg_hist)
    counted = ops.logical_and(pos_product > 0, total > 0)
    fast_ap = ops.sum(ops.where(counted, safe_divide(pos_product, total), 0.0), axis=1)
    n_pos = ops.sum(pos, axis=1)
    has_pos = n_pos > 0
    losses = (1.0 - safe_divide(fast_ap, n_pos)) * miner_sample_weights(miner, pairs)
    losses = ops.where(ops.logical_and(has_pos, ops.any(counted)), losses, 0.0)
    return pairs.guard(batch_share(losses, ops.sum(ops.cast(has_pos, dtype))))


@register
class FastAPLoss(MetricLoss, fn=fast_ap_loss):
    """FastAP loss, equal to PML's `FastAPLoss(num_bins)`; see `fast_ap_loss`.

    Example:
        model.compile("adam", loss=FastAPLoss(num_bins=10))

    Args:
        num_bins: histogram bins, an int >= 1 (default 10, PML's).
        distance: `"squared_euclidean"` (default, PML's `LpDistance(power=2)`) or
            `"euclidean"`, both L2-normalised.
        miner: weighs the anchors (see `fast_ap_loss`), or `None`.
        embedding_regularizer, embedding_reg_weight: see `LpRegularizer`.
    """


__all__ = ["FastAPLoss", "fast_ap_loss"]
