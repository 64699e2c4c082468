"""Lifted structure losses: Oh Song et al.'s pair form and the generalized per-anchor form."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import get_distance
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import (
    Pairs,
    get_miner,
    masked_logsumexp,
    mined_pairs,
    pair_batch,
    per_anchor_mean,
)


def _check_margins(pos_margin, neg_margin):
    check_range(pos_margin, "pos_margin")
    check_range(neg_margin, "neg_margin")


def _reference_negatives(pairs: Pairs):
    """Bool `(num_refs, num_refs)`: pairs of references with different labels, both allowed
    (a reference is allowed if `ref_mask` allows it for some query)."""
    valid = ops.ones_like(pairs.ref_labels, dtype="bool")
    if pairs.ref_mask is not None:
        mask = ops.cast(pairs.ref_mask, "bool")
        valid = ops.any(mask, axis=0) if len(mask.shape) == 2 else mask
    other = ops.not_equal(pairs.ref_labels[:, None], pairs.ref_labels[None, :])
    return ops.logical_and(other, ops.logical_and(valid[:, None], valid[None, :]))


@validated(_check_margins)
def lifted_structure_loss(
    y_true,
    y_pred,
    neg_margin: float = 1.0,
    pos_margin: float = 0.0,
    distance: Any = "euclidean",
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Lifted structure loss (Oh Song et al., "Deep Metric Learning via Lifted Structured
    Feature Embedding", CVPR 2016), as PML's `LiftedStructureLoss`. For each positive pair
    `(a, p)`:

        J_ap = 1/2 [ log( sum_{n in N_a} exp(neg_margin - d_an)
                        + sum_{n in N_p} exp(neg_margin - d_pn) ) + d_ap - pos_margin ]_+^2

    (with a similarity, `s - neg_margin` and `pos_margin - s`), the batch value the mean of
    `J_ap` over the positive pairs (each pair is counted in both orders, hence PML's 1/2).
    `N_a`, `N_p`: the negatives of the anchor and of the positive. The paper's hinge on
    `J` before squaring and its `neg_margin` (alpha) are PML's; defaults `neg_margin=1`,
    `pos_margin=0` on L2-normalised Euclidean distances, as PML.

    Conventions: a miner restricts the positive pairs and the negative pairs (a triplet
    miner's pairs are counted once per triplet, as PML); a pair with no negative at all gives
    `[d_ap - pos_margin]_+^2 / 2`, and a batch without any negative pair gives 0 (PML).
    With references (`ref_embeddings`, `ref_labels`), `N_a` are the anchor's negatives among
    the references and `N_p` the negatives of reference `p` among the references (all of
    them, not mined). PML indexes `N_p` by the reference's position in the *query* batch,
    which is the same thing only when the references are the batch; the two agree there.
    NaN/inf embeddings give NaN.
    """
    distance = get_distance(distance)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    mat = pairs.matrix(distance)
    pos_w, neg_w = mined_pairs(miner, pairs)
    has_neg = neg_w > 0
    anchor_lse = masked_logsumexp(distance.margin(neg_margin, mat), has_neg, axis=1, weights=neg_w)
    anchor_has = ops.any(has_neg, axis=1)
    if pairs.has_refs:
        ref_neg = _reference_negatives(pairs)
        other_lse = masked_logsumexp(distance.margin(neg_margin, pairs.ref_matrix(distance)), ref_neg, axis=1)
        other_has = ops.any(ref_neg, axis=1)
    else:
        other_lse, other_has = anchor_lse, anchor_has
    shape = ops.shape(mat)
    both = ops.stack(
        [ops.broadcast_to(anchor_lse[:, None], shape), ops.broadcast_to(other_lse[None, :], shape)], axis=-1
    )
    present = ops.stack(
        [ops.broadcast_to(anchor_has[:, None], shape), ops.broadcast_to(other_has[None, :], shape)], axis=-1
    )
    neg_term = masked_logsumexp(both, present, axis=-1)
    losses = ops.square(ops.relu(neg_term + distance.margin(mat, pos_margin))) / 2.0
    values = per_anchor_mean(losses, pos_w, nonzero=False)
    return pairs.guard(ops.where(ops.any(has_neg), values, ops.zeros_like(values)))


@validated(_check_margins)
def generalized_lifted_structure_loss(
    y_true,
    y_pred,
    neg_margin: float = 1.0,
    pos_margin: float = 0.0,
    distance: Any = "euclidean",
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Generalized lifted structure loss (Hermans, Beyer & Leibe, "In Defense of the Triplet
    Loss for Person Re-Identification", 2017, p. 4), as PML's `GeneralizedLiftedStructureLoss`,
    one value per anchor:

        L_a = [ log sum_{p in P_a} exp(d_ap - pos_margin)
              + log sum_{n in N_a} exp(neg_margin - d_an) ]_+

    (with a similarity, `pos_margin - s` and `s - neg_margin`); an empty sum contributes 0 (PML's
    `logsumexp`). The batch value is the mean over all anchors (PML's `MeanReducer`). A miner
    restricts `P_a` and `N_a` (each mined pair once, however often it was mined);
    references as PML's `ref_emb`. Defaults `neg_margin=1`, `pos_margin=0` on L2-normalised
    Euclidean distances. NaN/inf embeddings give NaN.
    """
    distance = get_distance(distance)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    mat = pairs.matrix(distance)
    pos_w, neg_w = mined_pairs(miner, pairs)
    pos_lse = masked_logsumexp(distance.margin(mat, pos_margin), pos_w > 0, axis=1)
    neg_lse = masked_logsumexp(distance.margin(neg_margin, mat), neg_w > 0, axis=1)
    return pairs.guard(ops.relu(pos_lse + neg_lse))


@register
class LiftedStructureLoss(MetricLoss, fn=lifted_structure_loss):
    """Lifted structure loss, equal to PML's `LiftedStructureLoss(neg_margin, pos_margin)`;
    see `lifted_structure_loss`.

    Example:
        model.compile("adam", loss=LiftedStructureLoss(neg_margin=1.0))

    Args:
        neg_margin: the paper's alpha (default 1, PML's).
        pos_margin: subtracted from each positive distance (default 0, PML's).
        distance: default L2-normalised Euclidean, as PML.
        miner: a pair or triplet miner, or `None` for all pairs.
        embedding_regularizer, embedding_reg_weight: see `LpRegularizer`.
    """


@register
class GeneralizedLiftedStructureLoss(MetricLoss, fn=generalized_lifted_structure_loss):
    """Generalized lifted structure loss, equal to PML's `GeneralizedLiftedStructureLoss(
    neg_margin, pos_margin)`; see `generalized_lifted_structure_loss`.

    Example:
        model.compile("adam", loss=GeneralizedLiftedStructureLoss(neg_margin=1.0))
    """
