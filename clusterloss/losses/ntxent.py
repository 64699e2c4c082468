"""Temperature-scaled softmax losses over pairs: NT-Xent (InfoNCE) and supervised contrastive
(SupCon)."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import get_distance
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import (
    get_miner,
    masked_logsumexp,
    mined_pairs,
    pair_batch,
    per_anchor_mean,
    safe_divide,
)


def _logits(mat, distance, temperature):
    # A distance enters as its negative, as PML does.
    return (mat if distance.larger_is_closer else -mat) / temperature


def _check(temperature):
    check_range(temperature, "temperature", 0.0, low_open=True)


@validated(_check)
def ntxent_loss(
    y_true,
    y_pred,
    temperature: float = 0.07,
    distance: Any = "cosine",
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """NT-Xent / InfoNCE loss (Chen et al., "SimCLR", ICML 2020; van den Oord et al., 2018),
    one value per anchor. For each positive pair `(a, p)`:

        l_ap = -log( exp(s_ap / t) / (exp(s_ap / t) + sum_{n in N_a} exp(s_an / t)) )

    and the batch value is the mean over positive pairs (PML's `NTXentLoss`, `MeanReducer`),
    returned as each anchor's share times the batch size. For SimCLR, give the two views of an
    image the same label (`labels = concat([arange(n), arange(n)])`). Defaults are PML's:
    temperature 0.07, cosine similarity. A pair miner restricts both the positive pairs and
    the negatives; a triplet miner gives PML's per-triplet pair lists. An anchor with no
    negative gives 0. References (PML's `ref_emb`): positives and negatives among them.
    NaN/inf embeddings or similarities give NaN.
    """
    distance = get_distance(distance)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    logits = _logits(pairs.matrix(distance), distance, temperature)
    pos_w, neg_w = mined_pairs(miner, pairs)
    has_neg = neg_w > 0
    neg_lse = masked_logsumexp(logits, has_neg, axis=1, weights=neg_w, keepdims=True)
    any_neg = ops.any(has_neg, axis=1, keepdims=True)
    losses = ops.where(any_neg, ops.softplus(neg_lse - logits), 0.0)
    return pairs.guard(per_anchor_mean(losses, pos_w, nonzero=False))


@validated(_check)
def supcon_loss(
    y_true,
    y_pred,
    temperature: float = 0.1,
    distance: Any = "cosine",
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Supervised contrastive loss (Khosla et al., NeurIPS 2020; the `L_out` form), one value
    per anchor:

        l_i = -1/|P_i| sum_{p in P_i} log( exp(s_ip / t) / sum_{k in P_i + N_i} exp(s_ik / t) )

    The batch value is the mean over anchors with a positive loss (PML's `SupConLoss`,
    `AvgNonZeroReducer`), returned as each anchor's share times the batch size. A batch with no
    positive pair or no negative pair gives 0 (as PML). Defaults are PML's: temperature 0.1,
    cosine similarity. With a miner, `P_i` and `N_i` are the mined pairs; with references
    (PML's `ref_emb`), pairs with the references. NaN/inf embeddings give NaN.
    """
    distance = get_distance(distance)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    logits = _logits(pairs.matrix(distance), distance, temperature)
    pos_w, neg_w = mined_pairs(miner, pairs)
    pos_m, neg_m = pos_w > 0, neg_w > 0
    log_norm = masked_logsumexp(logits, ops.logical_or(pos_m, neg_m), axis=1, keepdims=True)
    log_prob = ops.where(pos_m, logits - log_norm, 0.0)
    n_pos = ops.sum(ops.cast(pos_m, logits.dtype), axis=1)
    losses = -safe_divide(ops.sum(log_prob, axis=1), n_pos)
    active = ops.logical_and(ops.any(pos_m), ops.any(neg_m))
    losses = ops.where(active, losses, ops.zeros_like(losses))
    return pairs.guard(per_anchor_mean(losses, ops.ones_like(losses), nonzero=True))


@register
class NTXentLoss(MetricLoss, fn=ntxent_loss):
    """NT-Xent (InfoNCE) loss; see `ntxent_loss`.

    Example (SimCLR: two augmented views per image, same label):
        loss = NTXentLoss(temperature=0.07)
        loss(concat([ids, ids]), concat([embed(view1), embed(view2)]))
    """


@register
class SupConLoss(MetricLoss, fn=supcon_loss):
    """Supervised contrastive loss; see `supcon_loss`.

    Example:
        model.compile("adam", loss=SupConLoss(temperature=0.1))
    """
