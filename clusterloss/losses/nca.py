"""Neighbourhood components analysis (NCA) loss, and ProxyNCA (NCA against class proxies)."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss import _native
from clusterloss._registry import register
from clusterloss._validation import check_range, upcast
from clusterloss.distances import get_distance
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import (
    batch_share,
    farness,
    get_miner,
    masked_logsumexp,
    miner_sample_weights,
    nan_unless_finite,
    pair_batch,
    proxy_labels,
)

# The range of each distance between L2-normalised embeddings: `softmax_scale * range` bounds
# the logits' magnitude and how far below a row's largest any other lies.
_NORMALISED_RANGE = {"euclidean": 2.0, "squared_euclidean": 4.0, "cosine": 2.0, "dot": 2.0}
# Logits within +-this have normal-float exponentials (float32: > 1e-35) that cannot overflow.
_SAFE_GAP = 80.0


def nca_terms(logits, pos, neg, gap_bound: float | None = None):
    """`-log sum_{pos} softmax_{pos or neg}(logits)` per row: `logsumexp` over `pos` and `neg`
    minus `logsumexp` over `pos` (0/1 float masks, disjoint; a row without `pos` is the
    caller's to drop). With `gap_bound` under 80 (every logit lies in
    `[-gap_bound, gap_bound]`), one `exp` with no shift: every term is then a normal float
    (>= 1e-35) and no sum can overflow, so `log sum_pos` loses nothing; otherwise two
    shifted log-sum-exps, which keep a row whose positives are ~1e-38 of the whole finite."""
    if gap_bound is None or gap_bound >= _SAFE_GAP:
        return masked_logsumexp(logits, pos + neg, axis=1) - masked_logsumexp(logits, pos, axis=1)
    e = ops.exp(upcast(logits))
    on_pos = ops.sum(e * pos, axis=1)
    total = on_pos + ops.sum(e * neg, axis=1)
    empty = ops.cast(on_pos <= 0, e.dtype)  # no positive: a finite value, for the caller to drop
    return ops.log(total + empty) - ops.log(on_pos + empty)


def _gap_bound(distance, softmax_scale: float) -> float | None:
    """`softmax_scale` times the range of `distance` when its embeddings are normalised."""
    if not distance.normalize:
        return None
    return softmax_scale * _NORMALISED_RANGE[distance.name]


def _check(softmax_scale):
    check_range(softmax_scale, "softmax_scale", 0.0, low_open=True)


@validated(_check)
def nca_loss(
    y_true,
    y_pred,
    softmax_scale: float = 1.0,
    distance: Any = "squared_euclidean",
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Neighbourhood components analysis loss (Goldberger, Roweis, Hinton & Salakhutdinov,
    NIPS 2004), as PML's `NCALoss`, one value per anchor. With `z_ij = -scale * d_ij` (or
    `scale * s_ij` for a similarity) over every other sample `j` of the batch:

        p_i = sum_{j: y_j = y_i} softmax_j(z_ij),      l_i = -log p_i

    computed as `logsumexp_{all j} z_ij - logsumexp_{same label} z_ij` (stable: no `log` of an
    underflowed softmax). The batch value is the mean over the anchors that have a positive
    (PML's `MeanReducer` over the anchors with `p_i != 0`); an anchor without one gives 0.
    A miner weighs the anchors as PML's `convert_to_weights` (how often each sample is mined,
    over the largest count; all ones when nothing is mined). Defaults are PML's:
    `softmax_scale=1` on squared L2-normalised Euclidean distances. References: the softmax
    runs over the references (PML's `ref_emb`). PML drops an anchor whose `p_i` underflows to
    0 in float32 (a softmax gap over ~87, e.g. `softmax_scale > 22` on squared unit-sphere
    distances); here it keeps its large, finite loss. NaN/inf embeddings give NaN.
    """
    distance = get_distance(distance)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    logits = -softmax_scale * farness(pairs.matrix(distance), distance)
    pos, neg = pairs.weights
    has_pos = ops.cast(ops.sum(pos, axis=1) > 0, logits.dtype)
    losses = nca_terms(logits, pos, neg, _gap_bound(distance, softmax_scale)) * has_pos
    if miner is not None:
        losses = losses * miner_sample_weights(miner, pairs)
    return pairs.guard(batch_share(losses, ops.sum(has_pos)))


@register
class NCALoss(MetricLoss, fn=nca_loss):
    """NCA loss, equal to PML's `NCALoss(softmax_scale)`; see `nca_loss`.

    Example:
        model.compile("adam", loss=NCALoss(softmax_scale=10.0))

    Args:
        softmax_scale: > 0 (default 1, PML's).
        distance: default squared L2-normalised Euclidean, as PML's `LpDistance(power=2)`.
        miner: weighs the anchors (see `nca_loss`), or `None`.
        embedding_regularizer, embedding_reg_weight: see `LpRegularizer`.
    """


@validated(_check)
def proxy_nca_loss(y_true, y_pred, softmax_scale: float = 1.0):
    """ProxyNCA loss (Movshovitz-Attias et al., "No Fuss Distance Metric Learning using
    Proxies", ICCV 2017) from labels and the cosine similarities `y_pred` `(batch,
    num_classes)` between the embeddings and one proxy per class (a `ProxyNCAHead`):

        l_i = -log softmax_j(-softmax_scale * d(x_i, p_j))[y_i],   d = 2 - 2 cos,

    the NCA loss (`nca_loss`) with the proxies as the references: PML's `ProxyNCALoss`
    with its default distance, the squared Euclidean distance between the L2-normalised
    embeddings and proxies. The batch value is the mean over the samples; one value per
    sample. PML drops a sample whose softmax underflows to 0 (float32, a scale over ~20);
    here it keeps its large, finite loss. No miner, no other distance. NaN/inf gives NaN.
    """
    cos, labels = proxy_labels(y_true, y_pred)
    # -scale * (2 - 2 cos) up to the constant -2 scale, which the softmax cancels: a
    # cross-entropy over the classes (the one positive per row is the label's proxy).
    return nan_unless_finite(_native.cross_entropy_rows((2.0 * softmax_scale) * cos, labels), cos)


@register
class ProxyNCALoss(MetricLoss, fn=proxy_nca_loss, regularized=False):
    """ProxyNCA loss on the output of a `ProxyNCAHead`, equal to PML's
    `ProxyNCALoss(num_classes, embedding_size, softmax_scale)`; see `proxy_nca_loss`.

    Example:
        model = ClusterModel(backbone, head=ProxyNCAHead(num_classes, name="proxies"))
        model.compile("adam", loss=ProxyNCALoss(softmax_scale=1.0))

    Args:
        softmax_scale: > 0 (default 1, PML's).
    """


__all__ = ["NCALoss", "ProxyNCALoss", "nca_loss", "proxy_nca_loss"]
