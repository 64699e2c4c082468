"""Triplet losses: in-batch triplets from labels (with an optional miner), and explicit
triplets of three encodings (the question/answer form)."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range, upcast
from clusterloss.distances import get_distance
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import (
    check_average,
    farness,
    get_miner,
    nan_unless_finite,
    pair_batch,
    per_anchor_mean,
)
from clusterloss.tuples.triplets import TripletChoice, TripletWindow, hinge_sum, select_triplets


def _check_margin(margin):
    check_range(margin, "margin", 0.0)


def _check_triplet(margin, average):
    _check_margin(margin)
    check_average(average)


@validated(_check_triplet)
def triplet_margin_loss(
    y_true,
    y_pred,
    margin: float = 0.05,
    distance: Any = "euclidean",
    miner: Any = None,
    swap: bool = False,
    smooth_loss: bool = False,
    average: str = "nonzero",
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Triplet margin loss over the triplets of a batch, one value per anchor.

    For each triplet `(a, p, n)` (same label for a and p, another for n):

        l_apn = [d(a, p) - d(a, n) + margin]_+

    (with a similarity, `[s(a, n) - s(a, p) + margin]_+`; `smooth_loss` uses
    `softplus` instead of `[.]_+`; `swap` replaces `d(a, n)` by `min(d(a, n), d(p, n))`).
    Weinberger & Saul (JMLR 2009), Schroff et al., "FaceNet" (CVPR 2015).

    Triplets: all valid triplets of the batch, or those a `miner` selects (a pair miner's pairs
    are joined by their anchor, as PML does). With `ref_embeddings`/`ref_labels` (PML's
    `ref_emb`), anchors come from the batch and positives/negatives from the references.

    Reduction (`average`): `"nonzero"` (default, PML's `AvgNonZeroReducer`) is the mean over
    the triplets with a positive loss; `"all"` the mean over every (mined) triplet (TFA). The
    value returned for anchor `i` is `B * sum_{p,n} l_ipn / N`, so Keras's batch mean equals
    that mean (see `clusterloss.losses._pairs`). No triplet (one class, or a miner that finds
    none): 0 with zero gradients. NaN/inf embeddings or distances: NaN.

    Cost: O(B^2 log B) time and O(B^2) memory without a miner and with `TripletMarginMiner`
    (its window is counted over sorted distances, never expanded), O(B^2) with
    `BatchHardMiner`/`BatchSemiHardMiner` and pair miners. A `(B, B, B)` tensor is built only
    when asked for: `swap=True`, `smooth_loss=True` (each triplet has its own non-linear
    term), or a `TripletMarginMiner` whose distance differs from the loss's.

    Defaults are PML's `TripletMarginLoss()`: `margin=0.05` on L2-normalised Euclidean
    distances (PML's `TripletMarginMiner` defaults to 0.2). PML's random `triplets_per_anchor`
    sampling is not offered (it needs dynamic shapes); use a miner instead.
    """
    distance = get_distance(distance)
    miner = get_miner(miner)
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    far = farness(pairs.matrix(distance), distance)
    selected = select_triplets(miner, pairs, distance)
    nonzero = average == "nonzero"
    if isinstance(selected, TripletWindow) and not (swap or smooth_loss) and (selected.distance == distance):
        return pairs.guard(hinge_sum(selected, far, margin, average))
    if isinstance(selected, TripletChoice):  # one negative per (a, p): (batch, num_refs) terms
        weights, neg_index = selected.weights, selected.neg_index
        ap = far
        an = ops.take_along_axis(far, neg_index, axis=1)  # f(a, n_ap)
        if swap:  # f(p, n_ap): row p of the references' matrix at column neg_index[a, p]
            ref_far = farness(pairs.ref_matrix(distance), distance)
            pn = ops.transpose(ops.take_along_axis(ref_far, ops.transpose(neg_index), axis=1))
    else:  # (batch, num_refs, num_refs) terms
        weights = selected.dense(far.dtype)
        ap = far[:, :, None]
        an = far[:, None, :]
        if swap:
            pn = farness(pairs.ref_matrix(distance), distance)[None, :, :]
    if swap:
        an = ops.minimum(an, pn)
    violation = ap - an + margin
    losses = ops.softplus(violation) if smooth_loss else ops.relu(violation)
    return pairs.guard(per_anchor_mean(losses, weights, nonzero=nonzero))


@validated(_check_margin)
def explicit_triplet_loss(y_true, y_pred, margin: float = 0.1, distance: Any = "cosine"):
    """Triplet loss on explicit triplets of encodings, one value per triplet; `y_true` ignored.

        L_i = [margin + cos(q_i, a_wrong_i) - cos(q_i, a_right_i)]_+

    `y_pred` has shape `(batch, 3, dim)`: for each row, the query (anchor), the right answer
    (positive) and the wrong answer (negative), e.g. `ops.stack([q, right, wrong], axis=1)`
    from a shared encoder. This is the question/answer triplet loss of Su Jianlin's "Custom
    complex losses in Keras" (kexue.fm/archives/4493, 2017; margin 0.1, cosine), which needed
    the model to output the loss; here it is an ordinary loss. With a distance instead of
    cosine: `[margin + d(q, right) - d(q, wrong)]_+`. The batch mean averages every triplet
    (PML's `EmbeddingsAlreadyPackagedAsTriplets` + `TripletMarginLoss` with `MeanReducer`).
    NaN/inf anywhere gives NaN for every triplet.
    """
    distance = get_distance(distance)
    shape = tuple(y_pred.shape)
    if len(shape) != 3 or shape[1] != 3:
        raise ValueError(
            f"`y_pred` must have shape (batch, 3, dim) (query, right answer, wrong answer); got shape {shape}."
        )
    if shape[0] == 0:
        raise ValueError(f"`y_pred` must hold at least one triplet; got shape {shape}.")
    y_pred = upcast(y_pred)
    query, right, wrong = y_pred[:, 0], y_pred[:, 1], y_pred[:, 2]
    d_right = distance.paired(query, right)
    d_wrong = distance.paired(query, wrong)
    return nan_unless_finite(ops.relu(distance.margin(d_right, d_wrong) + margin), d_right, d_wrong)


@register
class TripletMarginLoss(MetricLoss, fn=triplet_margin_loss):
    """Triplet margin loss over in-batch triplets; see `triplet_margin_loss`.

    Example:
        model.compile("adam", loss=TripletMarginLoss(
            margin=0.2, miner=TripletMarginMiner(0.2, "semihard")))
        model.fit(x, y)   # y: integer labels; the model outputs (batch, dim) embeddings

    Args:
        margin: >= 0; default 0.05 as PML (on L2-normalised Euclidean distances in [0, 2]).
        distance: a name (`"euclidean"`, `"squared_euclidean"`, `"cosine"`, `"dot"`), a
            `Distance`, or its config; default L2-normalised Euclidean, as PML.
        miner: a triplet or pair miner, or `None` for all triplets.
        swap: use the positive-negative distance when it violates the margin more.
        smooth_loss: `softplus` instead of the hinge.
        average: `"nonzero"` (PML) or `"all"` (TFA).
    """


@register
class ExplicitTripletLoss(MetricLoss, fn=explicit_triplet_loss, regularized=False):
    """Triplet loss on `(batch, 3, dim)` encodings (query, right, wrong); `y_true` is ignored.
    See `explicit_triplet_loss`.

    Example (question/answer retrieval, one shared encoder):
        q, right, wrong = keras.Input(...), keras.Input(...), keras.Input(...)
        out = keras.ops.stack([encoder(q), encoder(right), encoder(wrong)], axis=1)
        model = keras.Model([q, right, wrong], out)
        model.compile("adam", loss=ExplicitTripletLoss(margin=0.1))
        model.fit([qs, rights, wrongs], np.zeros(len(qs)))   # any y; it is not used
    """
