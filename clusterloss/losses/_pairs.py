"""Helpers shared by the pair and triplet losses and by the miners.

Everything here works on fixed-shape masks built from the labels (no dynamic index lists), so
the losses run under `jit_compile` on JAX and TensorFlow and in a compiled `fit` on all three
backends, and a batch with no pair or triplet gives 0 with zero (finite) gradients.

Reductions. PML reduces a loss over its *pairs* or *triplets* (e.g. the mean over the triplets
whose loss is non-zero). Keras averages one value per sample. The losses here return, for each
anchor `i`, its share of the PML value scaled by the batch size `B`:

    L_i = B * sum_{terms t of anchor i} w_t l_t / N,

where `N` is PML's divisor (the number of non-zero terms, or of all terms); `mean_i L_i` is then
exactly PML's value and its gradient, `sample_weight` weights each anchor's terms, and
`tf.distribute` divides by the global batch correctly. `N` is a count (no gradient), as in PML.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from clusterloss._validation import check_embeddings, check_labels, check_same_batch, upcast
from clusterloss.distances import get_distance
from clusterloss.losses.base import LossFunctionWrapper

_BIG = 3.0e38  # stands in for +-inf inside masked reductions (finite, so no NaN gradients)


def prepare(y_true, y_pred, names: tuple[str, str] = ("y_true", "y_pred")):
    """Validated `(labels int32 (batch,), embeddings float32 (batch, dim))`."""
    check_embeddings(y_pred, names[1])
    labels = check_labels(y_true, name=names[0])
    check_same_batch(labels, y_pred, names)
    return labels, upcast(y_pred)


def label_masks(labels, ref_labels=None):
    """Boolean `(pos, neg)` masks of shape `(batch, batch)`: same label without the diagonal,
    and different label."""
    ref = labels if ref_labels is None else ref_labels
    same = ops.equal(labels[:, None], ref[None, :])
    pos = same
    if ref_labels is None:
        n = ops.shape(labels)[0]
        eye = ops.equal(ops.arange(n)[:, None], ops.arange(n)[None, :])
        pos = ops.logical_and(same, ops.logical_not(eye))
    return pos, ops.logical_not(same)


def triplet_mask(pos, neg):
    """`(batch, batch, batch)` boolean mask of valid triplets `[a, p, n]`."""
    return ops.logical_and(pos[:, :, None], neg[:, None, :])


def safe_divide(num, den):
    """`num / den` where `den > 0`, else 0, with finite gradients."""
    ok = den > 0
    return ops.where(ok, num / ops.where(ok, den, ops.ones_like(den)), ops.zeros_like(num))


def masked_logsumexp(x, mask, axis: int = -1, add_one: bool = False, weights=None,
                     keepdims: bool = False):
    """`log(sum_{mask} w * exp(x) [+ 1])` along `axis`; 0 where the mask is empty (as PML's
    `lmu.logsumexp`). `weights` (default 1) count repeated terms. Finite values and gradients
    for any input: masked-out entries never reach `exp`."""
    mask = ops.cast(mask, "bool")
    x = upcast(x)
    low = ops.where(mask, x, ops.full_like(x, -_BIG))
    m = ops.max(low, axis=axis, keepdims=True)
    if add_one:
        m = ops.maximum(m, 0.0)
    m = ops.stop_gradient(ops.where(m > -_BIG / 2, m, ops.zeros_like(m)))
    e = ops.exp(ops.where(mask, x - m, ops.zeros_like(x)))
    if weights is not None:
        e = e * ops.cast(weights, e.dtype)
    s = ops.sum(ops.where(mask, e, ops.zeros_like(e)), axis=axis, keepdims=True)
    if add_one:
        s = s + ops.exp(-m)
    any_ = ops.any(mask, axis=axis, keepdims=True)
    out = ops.where(any_, ops.log(ops.where(any_, s, ops.ones_like(s))) + m, ops.zeros_like(s))
    return out if keepdims else ops.squeeze(out, axis=axis)


def masked_max(x, mask, axis: int = -1, keepdims: bool = False):
    """Max over the masked entries; `-3e38` where the mask is empty."""
    return ops.max(ops.where(mask, x, ops.full_like(x, -_BIG)), axis=axis, keepdims=keepdims)


def masked_min(x, mask, axis: int = -1, keepdims: bool = False):
    """Min over the masked entries; `3e38` where the mask is empty."""
    return ops.min(ops.where(mask, x, ops.full_like(x, _BIG)), axis=axis, keepdims=keepdims)


def one_hot_index(index, size_like):
    """Boolean one-hot of `index` `(...,)` over the last axis of `size_like` (dynamic size)."""
    n = ops.shape(size_like)[-1]
    return ops.equal(index[..., None], ops.arange(n))


def batch_size(x):
    return ops.cast(ops.shape(x)[0], "float32")


def per_anchor_mean(losses, weights, nonzero: bool):
    """Per-anchor values whose batch mean is the weighted mean of `losses` over the terms with
    `weights > 0` (`nonzero`: only over the terms with a positive loss, PML's
    `AvgNonZeroReducer`). `losses`, `weights`: `(batch, ...)`."""
    weights = ops.cast(weights, losses.dtype)
    axes = tuple(range(1, len(losses.shape)))
    weighted = losses * weights  # the losses are finite everywhere, so 0 * l = 0
    per_anchor = ops.sum(weighted, axis=axes) if axes else weighted
    counted = ops.where(losses > 0, weights, ops.zeros_like(weights)) if nonzero else weights
    count = ops.stop_gradient(ops.sum(counted))
    return batch_size(losses) * safe_divide(per_anchor, count)


def check_average(average: str) -> str:
    if average not in ("nonzero", "all"):
        raise ValueError(f"`average` must be one of ['all', 'nonzero']; got {average!r}.")
    return average


# ---------------------------------------------------------------------------------------------
# Miners, as the losses see them.


def get_miner(miner: Any):
    """`None`, a miner object, or a serialized miner (a loss's config) -> miner or `None`."""
    if miner is None:
        return None
    if isinstance(miner, dict):
        miner = keras.saving.deserialize_keras_object(miner)
    if not (hasattr(miner, "mine") and getattr(miner, "kind", None) in ("pair", "triplet")):
        raise ValueError(
            "`miner` must be a clusterloss miner (e.g. TripletMarginMiner()) or None; "
            f"got {miner!r}."
        )
    return miner


def mined_triplets(miner, embeddings, labels, pos, neg):
    """Float `(batch, batch, batch)` triplet weights: every valid triplet without a miner, the
    mined ones with a triplet miner, and `pos[a, p] * neg[a, n]` with a pair miner (PML's
    conversion of `(a1, p, a2, n)` to triplets sharing the anchor)."""
    if miner is None:
        return ops.cast(triplet_mask(pos, neg), "float32")
    mined = miner.mine(embeddings, labels, pos, neg)
    if miner.kind == "triplet":
        return mined
    pos_w, neg_w = mined
    return pos_w[:, :, None] * neg_w[:, None, :]


def compact_triplets(miner, embeddings, labels, pos, neg):
    """`(neg_index, weights)` from a `compact` triplet miner, or `None` for any other miner."""
    if miner is None or not getattr(miner, "compact", False):
        return None
    return miner.mine_compact(embeddings, labels, pos, neg)


def mined_pairs(miner, embeddings, labels, pos, neg):
    """Float `(pos_weights, neg_weights)`, each `(batch, batch)`: all pairs without a miner,
    the mined pairs with a pair miner, and with a triplet miner the number of mined triplets
    that hold each pair (PML turns triplets `(a, p, n)` into the pair lists `(a, p)`, `(a, n)`
    keeping one copy per triplet)."""
    if miner is None:
        return ops.cast(pos, "float32"), ops.cast(neg, "float32")
    compact = compact_triplets(miner, embeddings, labels, pos, neg)
    if compact is not None:
        neg_index, weights = compact
        chosen = ops.equal(neg_index[:, :, None], ops.arange(ops.shape(weights)[1]))
        return weights, ops.sum(ops.cast(chosen, "float32") * weights[:, :, None], axis=1)
    mined = miner.mine(embeddings, labels, pos, neg)
    if miner.kind == "pair":
        return mined
    return ops.sum(mined, axis=2), ops.sum(mined, axis=1)


class MetricLoss(LossFunctionWrapper):
    """A `LossFunctionWrapper` whose options may hold a `Distance` and a miner; both are
    written to the config as plain dicts and read back by `__init__`, so a model compiled with
    the loss saves and loads with no `custom_objects`."""

    def __init__(self, fn, reduction="sum_over_batch_size", name=None, dtype=None, **options):
        if "distance" in options:
            options["distance"] = get_distance(options["distance"])
        if "miner" in options:
            options["miner"] = get_miner(options["miner"])
        super().__init__(fn, reduction=reduction, name=name, dtype=dtype, **options)

    @property
    def distance(self):
        return self.options.get("distance")

    @property
    def miner(self):
        return self.options.get("miner")

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        if "distance" in config:
            config["distance"] = config["distance"].get_config()
        if config.get("miner") is not None:
            config["miner"] = keras.saving.serialize_keras_object(config["miner"])
        return config
