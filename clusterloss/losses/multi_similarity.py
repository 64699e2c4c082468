"""Multi-similarity loss."""

from __future__ import annotations

from typing import Any

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import get_distance
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import get_miner, masked_logsumexp, mined_pairs, pair_batch


def _check(alpha, beta, base):
    check_range(alpha, "alpha", 0.0, low_open=True)
    check_range(beta, "beta", 0.0, low_open=True)
    check_range(base, "base")


@validated(_check)
def multi_similarity_loss(
    y_true,
    y_pred,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    distance: Any = "cosine",
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Multi-similarity loss (Wang et al., CVPR 2019), one value per anchor:

        L_i = 1/alpha * log(1 + sum_{p in P_i} exp(-alpha (s_ip - base)))
            + 1/beta  * log(1 + sum_{n in N_i} exp( beta (s_in - base)))

    `P_i`, `N_i`: the anchor's positives and negatives (all of them, or the pairs a `miner`
    keeps; the paper pairs it with `MultiSimilarityMiner`). The batch mean averages over all
    anchors, as PML's `MultiSimilarityLoss` (its `MeanReducer`), whose defaults these are
    (alpha 2, beta 50, base 0.5, cosine similarity). With a distance, `s - base` becomes
    `base - d`. Empty sums contribute 0. References: `P_i`, `N_i` among the references (PML's
    `ref_emb`). NaN/inf embeddings or similarities give NaN.
    """
    distance = get_distance(distance)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    mat = pairs.matrix(distance)
    pos_w, neg_w = mined_pairs(miner, pairs)
    pos_exp = distance.margin(mat, base)
    neg_exp = distance.margin(base, mat)
    pos_loss = masked_logsumexp(alpha * pos_exp, pos_w > 0, axis=1, add_one=True) / alpha
    neg_loss = masked_logsumexp(beta * neg_exp, neg_w > 0, axis=1, add_one=True) / beta
    return pairs.guard(pos_loss + neg_loss)


@register
class MultiSimilarityLoss(MetricLoss, fn=multi_similarity_loss):
    """Multi-similarity loss; see `multi_similarity_loss`.

    Example:
        model.compile("adam", loss=MultiSimilarityLoss(miner=MultiSimilarityMiner(0.1)))
    """
