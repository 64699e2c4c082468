"""Contrastive (pair) loss with positive and negative margins."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import get_distance
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import (
    check_average,
    get_miner,
    mined_pairs,
    pair_batch,
    per_anchor_mean,
)


def _check_margins(pos_margin, neg_margin, distance):
    low = None if distance.larger_is_closer else 0.0
    check_range(pos_margin, "pos_margin", low)
    check_range(neg_margin, "neg_margin", low)


def _check(pos_margin, neg_margin, distance, average):
    check_average(average)
    _check_margins(pos_margin, neg_margin, get_distance(distance))


@validated(_check)
def contrastive_loss(
    y_true,
    y_pred,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    distance: Any = "euclidean",
    miner: Any = None,
    average: str = "nonzero",
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Contrastive loss (Hadsell, Chopra & LeCun, CVPR 2006), one value per anchor.

        positive pairs: l_ap = [d(a, p) - pos_margin]_+
        negative pairs: l_an = [neg_margin - d(a, n)]_+
        L = mean_{pos pairs} l_ap + mean_{neg pairs} l_an

    (with a similarity: `[pos_margin - s]_+` and `[s - neg_margin]_+`.) Pairs: all pairs of the
    batch (the diagonal excluded), or those a `miner` selects (a triplet miner's `(a, p)` and
    `(a, n)`, one per triplet, as PML). `average="nonzero"` (default, PML's
    `AvgNonZeroReducer` on each part) takes each mean over the pairs with a positive loss;
    `"all"` over every pair. Anchor `i` returns its share of both means scaled by the batch
    size, so the batch mean is the value above. Defaults are PML's `ContrastiveLoss()`:
    margins 0 and 1 on L2-normalised Euclidean distances. (TFA's `ContrastiveLoss` is a
    different, squared form on given distances; see docs/migration.md.) References
    (`ref_embeddings`, `ref_labels`): pairs (query from the batch, reference), as PML's
    `ref_emb`. NaN/inf embeddings or distances give NaN.
    """
    distance = get_distance(distance)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    mat = pairs.matrix(distance)
    pos_w, neg_w = mined_pairs(miner, pairs)
    pos_loss = ops.relu(distance.margin(mat, pos_margin))
    neg_loss = ops.relu(distance.margin(neg_margin, mat))
    nonzero = average == "nonzero"
    return pairs.guard(per_anchor_mean(pos_loss, pos_w, nonzero) + per_anchor_mean(neg_loss, neg_w, nonzero))


@register
class ContrastiveLoss(MetricLoss, fn=contrastive_loss):
    """Contrastive loss with margins; see `contrastive_loss`.

    Example:
        model.compile("adam", loss=ContrastiveLoss(pos_margin=0.0, neg_margin=1.0,
                                                   miner=PairMarginMiner(0.2, 0.8)))

    Args:
        pos_margin: positive pairs closer than this cost nothing (default 0, PML).
        neg_margin: negative pairs farther than this cost nothing (default 1, PML).
            Both >= 0 for a distance; any value for a similarity.
        distance: default L2-normalised Euclidean, as PML.
        miner: a pair or triplet miner, or `None` for all pairs.
        average: `"nonzero"` (PML) or `"all"`.
    """
