"""Pairs of a batch: the seam every pair/triplet loss and miner is built on (public:
`clusterloss.tuples`, for an own loss or miner).

Contract for a pair or triplet loss (and for the losses still to come on this seam)
-----------------------------------------------------------------------------------
A loss is a plain function and a `clusterloss.losses.MetricLoss` class wrapping it:

    def my_loss(y_true, y_pred, <hyper-parameters>, distance=..., miner=None,
                ref_embeddings=None, ref_labels=None, ref_mask=None):
        distance, miner = get_distance(distance), get_miner(miner)
        pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
        mat = pairs.matrix(distance)                 # (batch, num_refs), with gradients
        pos_w, neg_w = mined_pairs(miner, pairs)     # or clusterloss.tuples.triplets
        values = <formula on mat, pos_w, neg_w>      # one value per query, shape (batch,)
        return pairs.guard(values)                   # NaN/inf in -> NaN out

- Queries are the batch (`y_pred`, the anchors: the rows of every matrix); candidates are the
  references (the columns). Without references, the batch is its own reference and each
  embedding is never paired with itself (the diagonal). With `ref_embeddings`/`ref_labels`
  (PML's `ref_emb`/`ref_labels`), every (query, reference) pair counts unless `ref_mask`
  (bool, `(batch, num_refs)` or `(num_refs,)`) is False there; `CrossBatchMemory` uses it for
  empty memory slots and each query's own slot.
- `pairs.pos` / `pairs.neg`: bool `(batch, num_refs)`, same label / other label, allowed pairs
  only. `pairs.matrix(distance)` is computed once per distance and shared with the miner,
  which sees the same `Pairs` (`miner.select(pairs)`, under `stop_gradient`).
- `pairs.guard(values)` makes every value NaN if any matrix computed for this batch (the
  loss's or a miner's) holds NaN or inf: NaN/inf embeddings and overflowing distances give a
  NaN loss, so `keras.callbacks.TerminateOnNaN` stops training. A batch with nothing to learn
  from (no positive pair, no triplet) gives 0 with zero, finite gradients.
- Reductions. PML reduces over pairs or triplets (e.g. the mean over the triplets with a
  non-zero loss); Keras averages one value per sample. A loss returns, for each query `i`,

      L_i = B * sum_{terms t of query i} w_t l_t / N,

  where `N` is PML's divisor (the number of non-zero terms, or of all terms): `mean_i L_i` is
  PML's value and gradient, `sample_weight` weights each query's terms, and `tf.distribute`
  divides by the global batch correctly. `N` is a count (no gradient), as in PML.
- dtypes: float64 inputs are computed in float64 (where the backend has it), everything else
  in float32. No host copies, no Python branches on tensor values, fixed shapes only.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from clusterloss import _native
from clusterloss._validation import (
    check_embeddings,
    check_labels,
    check_same_batch,
    compute_dtype,
    label_dtype,
    upcast,
)
from clusterloss.distances import Distance, matmul_t

BIG = 3.0e38
"""Stands in for +-inf inside masked reductions (finite, so no NaN gradients)."""


def prepare(y_true, y_pred, ref_embeddings=None, ref_labels=None, names: tuple[str, str] = ("y_true", "y_pred")):
    """Validated `(labels, embeddings, ref_labels, ref_embeddings)`.

    Labels keep their integer value (`check_labels`); embeddings are float32, or float64 when
    any input is float64. Without references, `ref_labels` and `ref_embeddings` are `None`
    (the batch is its own reference)."""
    check_embeddings(y_pred, names[1], allow_empty=False)
    labels = check_labels(y_true, name=names[0])
    check_same_batch(labels, y_pred, names)
    if (ref_embeddings is None) != (ref_labels is None):
        given = "ref_embeddings" if ref_labels is None else "ref_labels"
        raise ValueError(f"`ref_embeddings` and `ref_labels` must be given together; got only `{given}`.")
    if ref_embeddings is None:
        return labels, upcast(y_pred, compute_dtype(y_pred)), None, None
    check_embeddings(ref_embeddings, "ref_embeddings", allow_empty=False)
    ref_labels = check_labels(ref_labels, name="ref_labels")
    check_same_batch(ref_labels, ref_embeddings, ("ref_labels", "ref_embeddings"))
    dim, ref_dim = y_pred.shape[-1], ref_embeddings.shape[-1]
    if isinstance(dim, int) and isinstance(ref_dim, int) and dim != ref_dim:
        raise ValueError(f"`ref_embeddings` must have the dimension of `{names[1]}` ({dim}); got {ref_dim}.")
    dtype = compute_dtype(y_pred, ref_embeddings)
    if labels.dtype != ref_labels.dtype:  # compare in the widest integer type there is
        labels, ref_labels = ops.cast(labels, label_dtype()), ops.cast(ref_labels, label_dtype())
    return labels, upcast(y_pred, dtype), ref_labels, upcast(ref_embeddings, dtype)


def label_masks(labels, ref_labels=None, ref_mask=None):
    """Boolean `(pos, neg)` masks of shape `(batch, num_refs)`: same label, other label.

    Without `ref_labels` the references are the batch and the diagonal is excluded from both.
    `ref_mask` (bool, broadcastable to `(batch, num_refs)`) removes pairs from both masks."""
    if ref_labels is None:
        n = ops.shape(labels)[0]
        allowed = ops.not_equal(ops.arange(n)[:, None], ops.arange(n)[None, :])
        ref_labels = labels
    else:
        allowed = None
    if ref_mask is not None:
        ref_mask = ops.cast(ref_mask, "bool")
        allowed = ref_mask if allowed is None else ops.logical_and(allowed, ref_mask)
    same = ops.equal(labels[:, None], ref_labels[None, :])
    other = ops.logical_not(same)
    if allowed is None:
        return same, other
    if ref_mask is None:  # only the diagonal is excluded, and it is never a negative
        return ops.logical_and(same, allowed), other
    return ops.logical_and(same, allowed), ops.logical_and(other, allowed)


def nan_unless_finite(values, *tensors):
    """`values` where every entry of every tensor is finite, else NaN everywhere
    (`_native.nan_unless_finite`: native calls on PyTorch)."""
    return _native.nan_unless_finite(values, *tensors)


class Pairs:
    """One batch as the pair losses and miners see it; see the module docstring.

    Attributes: `labels` `(batch,)`, `embeddings` `(batch, dim)`, `ref_labels` `(num_refs,)`
    (the batch's labels without references), `ref_embeddings` (`None` without references),
    `ref_mask` (as given), `pos`, `neg` (bool `(batch, num_refs)`, built on first use: a
    loss that needs no label masks pays nothing for them), `weights` (the same as floats),
    `has_refs`.
    """

    def __init__(self, labels, embeddings, ref_labels=None, ref_embeddings=None, ref_mask=None):
        self.labels, self.embeddings = labels, embeddings
        self.has_refs = ref_embeddings is not None
        self.ref_mask = ref_mask
        self.ref_labels = ref_labels if self.has_refs else labels
        self.ref_embeddings = ref_embeddings
        self._masks = None
        self._weights = None
        self._matrices: dict[tuple, tuple] = {}  # key -> (matrix, finite flag)

    def _label_masks(self):
        if self._masks is None:
            self._masks = label_masks(self.labels, self.ref_labels if self.has_refs else None, self.ref_mask)
        return self._masks

    @property
    def weights(self):
        """`(pos, neg)` as 0/1 floats in the embeddings' dtype (built on first use). Within
        the batch (no references, no `ref_mask`), from one label comparison: `same - I` and
        `1 - same`; on one torch thread a bool operation or cast of a 512 x 512 mask costs
        4 multiplies, and the bool masks take five of them."""
        if self._weights is None:
            dtype = self.embeddings.dtype
            if self.has_refs or self.ref_mask is not None or self._masks is not None:
                self._weights = (ops.cast(self.pos, dtype), ops.cast(self.neg, dtype))
            else:
                same = ops.cast(ops.equal(self.labels[:, None], self.labels[None, :]), dtype)
                self._weights = (same - ops.eye(ops.shape(self.labels)[0], dtype=dtype), 1.0 - same)
        return self._weights

    @property
    def pos(self):
        return self._label_masks()[0]

    @property
    def neg(self):
        return self._label_masks()[1]

    def _get(self, key: tuple, distance: Distance, x, y):
        if key not in self._matrices:
            self._matrices[key] = distance.pairwise_checked(x, y)
        return self._matrices[key][0]

    def matrix(self, distance: Distance):
        """`(batch, num_refs)` distances or similarities between queries and references
        (computed once per distance)."""
        key = ("queries", distance.name, distance.normalize)
        return self._get(key, distance, self.embeddings, self.ref_embeddings)

    def ref_matrix(self, distance: Distance):
        """`(num_refs, num_refs)` matrix between references (the batch's own without them)."""
        if not self.has_refs:
            return self.matrix(distance)
        key = ("refs", distance.name, distance.normalize)
        return self._get(key, distance, self.ref_embeddings, None)

    def guard(self, values):
        """`values`, or NaN everywhere if any matrix of this batch may hold NaN or inf."""
        ok = None
        for _, finite in self._matrices.values():
            ok = finite if ok is None else ops.logical_and(ok, finite)
        if ok is None:
            return values
        return ops.where(ok, values, float("nan"))


def pair_batch(
    y_true, y_pred, ref_embeddings=None, ref_labels=None, ref_mask=None, names: tuple[str, str] = ("y_true", "y_pred")
) -> Pairs:
    """`prepare` + `label_masks` in one `Pairs`."""
    labels, x, ref_labels, ref_x = prepare(y_true, y_pred, ref_embeddings, ref_labels, names)
    return Pairs(labels, x, ref_labels, ref_x, ref_mask)


def farness(mat, distance: Distance):
    """The matrix with larger = farther (`-mat` for a similarity)."""
    return -mat if distance.larger_is_closer else mat


def proxy_labels(y_true, y_pred):
    """`(cos, labels)` for a proxy loss: `y_pred` `(batch, num_classes)`, the cosines to one
    proxy per class, upcast; `labels` `(batch,)`. Shapes and labels checked."""
    check_embeddings(y_pred, "y_pred", allow_empty=False)
    labels = check_labels(y_true, num_classes=y_pred.shape[-1], name="y_true")
    check_same_batch(labels, y_pred, ("y_true", "y_pred"))
    return upcast(y_pred), labels


def proxy_batch(y_true, y_pred):
    """`(cos, pos)` for a proxy loss: `cos` as `proxy_labels` gives it; `pos[i, j]`: sample i
    is of class j."""
    cos, labels = proxy_labels(y_true, y_pred)
    pos = ops.equal(labels[:, None], ops.arange(cos.shape[-1], dtype=labels.dtype)[None, :])
    return cos, pos


def safe_divide(num, den):
    """`num / den` where `den > 0`, else 0, with finite gradients."""
    ok = den > 0
    return ops.where(ok, num / ops.where(ok, den, ops.ones_like(den)), ops.zeros_like(num))


def masked_logsumexp(x, mask, axis: int = -1, add_one: bool = False, weights=None, keepdims: bool = False):
    """`log(sum_{mask} w * exp(x) [+ 1])` along `axis`; 0 where the mask is empty (as PML's
    `lmu.logsumexp`). `weights` (default 1) count repeated terms. Finite values and gradients
    for any finite input: a masked-out entry is excluded from the maximum by `-3e38` and its
    exponent is multiplied by 0 (then its term), so it never reaches `exp` as a large number.
    Masks are applied by arithmetic, not selects: eager PyTorch selects 5-30x slower than it
    multiplies, and its `exp` of a very negative number (or of -0.0) takes a 5-60x slower path."""
    x = upcast(x)
    keep = ops.cast(mask, x.dtype)
    m = ops.stop_gradient(ops.max(x + (keep - 1.0) * BIG, axis=axis, keepdims=True))
    any_ = m > -BIG / 2  # the mask holds an entry (x itself is finite)
    m = ops.where(m > 0, m, 0.0) if add_one else ops.where(any_, m, 0.0)
    # `+ 0.0` turns the masked-out `-0.0` into `0.0`: torch's `exp(-0.0)` takes the slow path.
    e = ops.exp((x - m) * keep + 0.0)
    e = e * (keep if weights is None else keep * ops.cast(weights, x.dtype))
    s = ops.sum(e, axis=axis, keepdims=True)
    if add_one:
        s = s + ops.exp(-m)
    out = ops.where(any_, ops.log(ops.where(any_, s, ops.ones_like(s))) + m, ops.zeros_like(s))
    return out if keepdims else ops.squeeze(out, axis=axis)


def running_sum(x):
    """Cumulative sum along the last axis of a 2-D float tensor, in its dtype: Keras 3.15's
    `ops.cumsum` on torch returns float32 for float64 input (its `result_type("float64")` is
    float32), so this is a product with a triangular matrix (the axis is short here: histogram
    bins, or the references of a row)."""
    n = ops.shape(x)[-1]
    index = ops.arange(n)
    lower = ops.cast(index[None, :] <= index[:, None], x.dtype)  # [j, k] = k <= j
    return matmul_t(x, lower)


def masked_max(x, mask, axis: int = -1, keepdims: bool = False):
    """Max over the masked entries; `-3e38` where the mask is empty."""
    return ops.max(ops.where(mask, x, -BIG), axis=axis, keepdims=keepdims)


def masked_min(x, mask, axis: int = -1, keepdims: bool = False):
    """Min over the masked entries; `3e38` where the mask is empty."""
    return ops.min(ops.where(mask, x, BIG), axis=axis, keepdims=keepdims)


def batch_share(per_query, count):
    """`B * per_query / count` (0 where `count` is 0): the per-query values whose batch mean is
    `sum(per_query) / count`."""
    n = ops.cast(ops.shape(per_query)[0], per_query.dtype)
    return n * safe_divide(per_query, ops.cast(count, per_query.dtype))


def per_anchor_mean(losses, weights, nonzero: bool):
    """Per-anchor values whose batch mean is the weighted mean of `losses` over the terms with
    `weights > 0` (`nonzero`: only over the terms with a positive loss, PML's
    `AvgNonZeroReducer`). `losses`, `weights`: `(batch, ...)`."""
    weights = ops.cast(weights, losses.dtype)
    axes = tuple(range(1, len(losses.shape)))
    weighted = losses * weights
    per_anchor = ops.sum(weighted, axis=axes) if axes else weighted
    counted = weights * ops.cast(losses > 0, losses.dtype) if nonzero else weights
    return batch_share(per_anchor, ops.stop_gradient(ops.sum(counted)))


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
    if not (hasattr(miner, "select") and getattr(miner, "kind", None) in ("pair", "triplet")):
        raise ValueError(f"`miner` must be a clusterloss miner (e.g. TripletMarginMiner()) or None; got {miner!r}.")
    return miner


def mined_pairs(miner, pairs: Pairs):
    """Float `(pos_weights, neg_weights)`, each `(batch, num_refs)`: all pairs without a miner,
    the mined pairs with a pair miner, and with a triplet miner the number of mined triplets
    that hold each pair (PML turns triplets `(a, p, n)` into the pair lists `(a, p)`, `(a, n)`
    keeping one copy per triplet). Never builds a `(B, B, B)` tensor for the built-in miners."""
    dtype = pairs.embeddings.dtype
    if miner is None:
        return pairs.weights
    selected = miner.select(pairs)
    if miner.kind == "pair":
        pos_w, neg_w = selected
        return ops.cast(pos_w, dtype), ops.cast(neg_w, dtype)
    return selected.pair_counts(dtype)  # a TripletMask, TripletChoice or TripletWindow


def miner_sample_weights(miner, pairs: Pairs):
    """`(batch,)` weights of the queries from a miner's selection, PML's `convert_to_weights`:
    how often each sample appears in the mined pairs or triplets (as anchor, positive or
    negative; with references only as anchor), divided by the largest count. All ones without
    a miner, and also when the miner selects nothing (PML's rule). No gradient."""
    dtype = pairs.embeddings.dtype
    ones = ops.ones_like(pairs.embeddings[:, 0])
    if miner is None:
        return ones
    pos_w, neg_w = mined_pairs(miner, pairs)  # counts: no gradient
    counts = ops.sum(pos_w, axis=1)  # as anchor: once per pair, or per triplet
    if miner.kind == "pair":
        counts = counts + ops.sum(neg_w, axis=1)
    if not pairs.has_refs:
        counts = counts + ops.sum(pos_w, axis=0) + ops.sum(neg_w, axis=0)
    peak = ops.max(counts)
    return ops.cast(ops.where(peak > 0, counts / ops.where(peak > 0, peak, 1.0), ones), dtype)
