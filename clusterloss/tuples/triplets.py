"""Triplet selections: what a triplet miner hands to a loss, in three fixed-shape forms, and the
sorted counting that keeps the built-in ones at O(B^2 log B) memory and time.

- `TripletMask`: a dense float `(batch, num_refs, num_refs)` mask `[a, p, n]` (any miner; the
  form `miner(embeddings, labels)` returns, and the only one that costs B^3).
- `TripletChoice`: one negative per positive pair, `(neg_index, weights)`, each
  `(batch, num_refs)` (BatchHardMiner, BatchSemiHardMiner).
- `TripletWindow`: every triplet whose margin `m = far[a, n] - far[a, p]` lies in a window
  `lower < m <= upper` (TripletMarginMiner, and all triplets without a miner). The comparisons
  are evaluated as `far[a, n] > far[a, p] + lower` and `far[a, n] <= far[a, p] + upper`
  (the same float expressions in every path, so the dense mask, the counts and the loss agree
  exactly).

A window is never expanded: for each anchor the negatives (and the positives) are sorted, and a
batched search (`count_sorted`) counts, for each positive pair, the negatives inside its window,
and for each negative pair, the positives whose window holds it. A hinge loss `[far_ap - far_an + margin]_+`
restricted to a window is then `sum_ap count_ap (far_ap + margin) - sum_an count_an far_an`,
with exact integer counts: the value and gradient of the sum over the B^3 triplets without
building them.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from keras import ops

from clusterloss._native import native_row_searchsorted
from clusterloss._validation import label_dtype
from clusterloss.distances import Distance
from clusterloss.tuples.pairs import BIG, Pairs, batch_share, farness


class TripletMask(NamedTuple):
    """Dense float `(batch, num_refs, num_refs)` weights over triplets `[a, p, n]`."""

    mask: Any

    def dense(self, dtype):
        return ops.cast(self.mask, dtype)

    def pair_counts(self, dtype):
        mask = ops.cast(self.mask, dtype)
        return ops.sum(mask, axis=2), ops.sum(mask, axis=1)


class TripletChoice(NamedTuple):
    """The triplet `(a, p, neg_index[a, p])` for each `(a, p)` with `weights[a, p] > 0`."""

    neg_index: Any  # int32 (batch, num_refs)
    weights: Any  # float (batch, num_refs)

    def dense(self, dtype):
        n = ops.shape(self.weights)[1]
        chosen = ops.equal(self.neg_index[:, :, None], ops.arange(n)[None, None, :])
        return ops.cast(chosen, dtype) * ops.cast(self.weights, dtype)[:, :, None]

    def pair_counts(self, dtype):
        """`(weights, how often each (a, n) is chosen)`, by a segment sum (no B^3 one-hot)."""
        weights = ops.cast(self.weights, dtype)
        rows, cols = ops.shape(weights)[0], ops.shape(weights)[1]
        flat = ops.arange(rows)[:, None] * cols + ops.cast(self.neg_index, "int32")
        counts = ops.segment_sum(ops.reshape(weights, (-1,)), ops.reshape(flat, (-1,)), num_segments=rows * cols)
        return weights, ops.reshape(counts, ops.shape(weights))


class TripletWindow(NamedTuple):
    """Triplets `(a, p, n)` with `pos[a, p]`, `neg[a, n]` and
    `far[a, p] + lower < far[a, n] <= far[a, p] + upper` (`None`: no bound).

    `far` (larger = farther, no gradient) is the matrix of `distance`."""

    far: Any
    pos: Any
    neg: Any
    lower: float | None
    upper: float | None
    distance: Distance

    def dense(self, dtype):
        keep = ops.logical_and(self.pos[:, :, None], self.neg[:, None, :])
        f_an = self.far[:, None, :]
        if self.lower is not None:
            keep = ops.logical_and(keep, f_an > (self.far + self.lower)[:, :, None])
        if self.upper is not None:
            keep = ops.logical_and(keep, f_an <= (self.far + self.upper)[:, :, None])
        return ops.cast(keep, dtype)

    def pair_counts(self, dtype):
        return window_counts(self, dtype=dtype)


def count_sorted(sorted_rows, queries, inclusive: bool):
    """For each query, how many entries of its row of `sorted_rows` (ascending) are `< query`
    (or `<= query` with `inclusive`), as int32. `sorted_rows` `(..., n)`, `queries` `(..., q)`, same
    leading shape. A batched binary search by fixed steps 2**(k-1), ..., 1 over the rows padded
    with +inf to 2**k > n entries: `k = ceil(log2(n + 1))` rounds of one gather and one compare,
    fixed shapes (a bounded while loop if `n` is unknown at trace time). On PyTorch, its native
    batched `searchsorted` instead (the same counts)."""
    native = native_row_searchsorted(sorted_rows, queries, right=inclusive)
    if native is not None:
        return ops.cast(native, "int32")
    n = ops.shape(sorted_rows)[-1]
    index_dtype = label_dtype()  # int64 where the backend has it
    if not isinstance(n, int):
        return ops.cast(_count_sorted_dynamic(sorted_rows, queries, inclusive, index_dtype), "int32")
    steps = max(n, 1).bit_length()
    pad_shape = (*ops.shape(sorted_rows)[:-1], 2**steps - n)
    padded = ops.concatenate([sorted_rows, ops.full(pad_shape, float("inf"), sorted_rows.dtype)], axis=-1)
    pos = ops.zeros(ops.shape(queries), index_dtype)
    for k in reversed(range(steps)):
        value = ops.take_along_axis(padded, pos + (2**k - 1), axis=-1)
        hit = value <= queries if inclusive else value < queries
        pos = ops.where(hit, pos + 2**k, pos)
    return ops.cast(pos, "int32")


def _count_sorted_dynamic(sorted_rows, queries, inclusive: bool, index_dtype: str):
    """`count_sorted` for a row length known only at run time (TensorFlow graphs): bisection in
    a while loop, at most 33 rounds."""
    n = ops.cast(ops.shape(sorted_rows)[-1], index_dtype)
    lo = ops.zeros(ops.shape(queries), index_dtype)
    hi = lo + n

    def body(i, lo, hi):
        mid = (lo + hi) // 2
        value = ops.take_along_axis(sorted_rows, ops.minimum(mid, n - 1), axis=-1)
        hit = value <= queries if inclusive else value < queries
        active = lo < hi
        return (
            i + 1,
            ops.where(ops.logical_and(active, hit), mid + 1, lo),
            ops.where(ops.logical_and(active, ops.logical_not(hit)), mid, hi),
        )

    def cond(i, lo, hi):
        return ops.logical_and(i < 33, ops.any(lo < hi))

    return ops.while_loop(cond, body, (0, lo, hi))[1]


def window_counts(window: TripletWindow, hinge: float | None = None, per_neg: bool = True, dtype=None):
    """Exact counts of the triplets of `window` (also with `far[a, n] < far[a, p] + hinge`, the
    active set of a hinge with that margin): `(per_pos, per_neg)`, each `(batch, num_refs)`:
    for each `(a, p)` the number of its negatives `n`, for each `(a, n)` the number of its
    positives `p` (`None` unless `per_neg`). O(B R log R); no gradient."""
    far = ops.stop_gradient(window.far)
    dtype = dtype or far.dtype
    lower, upper = window.lower, window.upper
    n_neg = ops.sum(ops.cast(window.neg, "int32"), axis=1, keepdims=True)
    if lower is None and upper is None and hinge is None:  # every triplet: no search
        n_pos = ops.sum(ops.cast(window.pos, "int32"), axis=1, keepdims=True)
        zero = ops.zeros_like(n_neg)
        per_pos = ops.cast(ops.where(window.pos, n_neg, zero), dtype)
        return per_pos, (ops.cast(ops.where(window.neg, n_pos, zero), dtype) if per_neg else None)
    neg_sorted = ops.sort(ops.where(window.neg, far, BIG), axis=1)
    # Each search: (sorted rows, queries, inclusive). Forward: count negatives per (a, p).
    searches = {}
    if upper is not None:
        searches["up"] = (neg_sorted, far + upper, True)  # #{n: f_an <= f_ap + upper}
    if hinge is not None:
        searches["hinge"] = (neg_sorted, far + hinge, False)  # #{n: f_an < f_ap + hinge}
    if lower is not None:
        searches["low"] = (neg_sorted, far + lower, True)  # #{n: f_an <= f_ap + lower}
    if per_neg:  # Backward: count positives per (a, n), on the sorted thresholds f_ap + c.
        n_pos = ops.sum(ops.cast(window.pos, "int32"), axis=1, keepdims=True)
        pos_sorted = ops.sort(ops.where(window.pos, far, BIG), axis=1)
        if lower is not None:
            searches["b_low"] = (pos_sorted + lower, far, False)  # #{p: f_ap + lower < f_an}
        if upper is not None:
            searches["b_up"] = (pos_sorted + upper, far, False)  # #{p: f_ap + upper < f_an}
        if hinge is not None:
            searches["b_hinge"] = (pos_sorted + hinge, far, True)  # #{p: f_ap + hinge <= f_an}
    counts = {}
    for inclusive in (True, False):
        names = [k for k, search in searches.items() if search[2] is inclusive]
        if names:
            found = count_sorted(
                ops.stack([searches[k][0] for k in names]), ops.stack([searches[k][1] for k in names]), inclusive
            )
            counts.update({k: found[i] for i, k in enumerate(names)})

    # The sets are prefixes (or suffixes) of one sorted order, so intersections are minima.
    up = n_neg
    for key in ("up", "hinge"):
        if key in counts:
            up = ops.minimum(up, counts[key])
    low = ops.minimum(counts["low"], up) if "low" in counts else 0
    zero = ops.zeros_like(up)
    per_pos = ops.cast(ops.where(window.pos, up - low, zero), dtype)
    if not per_neg:
        return per_pos, None
    first = ops.minimum(counts["b_low"], n_pos) if "b_low" in counts else n_pos
    out = zero
    for key in ("b_up", "b_hinge"):
        if key in counts:
            out = ops.maximum(out, counts[key])
    per_neg_ = ops.cast(ops.where(window.neg, first - ops.minimum(first, out), zero), dtype)
    return per_pos, per_neg_


def hinge_sum(window: TripletWindow, far, margin: float, average: str):
    """Per-anchor values whose batch mean is PML's reduction of `[far_ap - far_an + margin]_+`
    over the triplets of `window` (`far`: the loss's matrix, with gradient, same distance as
    the window's): `average="nonzero"` divides by the number of triplets with a positive loss,
    `"all"` by the number of triplets in the window."""
    per_pos, per_neg = window_counts(window, hinge=margin, dtype=far.dtype)
    per_anchor = ops.sum(per_pos * (far + margin), axis=1) - ops.sum(per_neg * far, axis=1)
    if average == "nonzero":
        count = ops.sum(per_pos)
    else:
        count = ops.sum(window_counts(window, per_neg=False, dtype=far.dtype)[0])
    return batch_share(per_anchor, count)


def select_triplets(miner, pairs: Pairs, distance: Distance):
    """The triplets a triplet loss uses: all valid ones without a miner (a `TripletWindow`
    with no bounds on `distance`'s matrix), a triplet miner's selection, or the triplets
    `(a, p, n)` whose pairs `(a, p)` and `(a, n)` a pair miner selected (PML's conversion)."""
    far = ops.stop_gradient(farness(pairs.matrix(distance), distance))
    if miner is None:
        return TripletWindow(far, pairs.pos, pairs.neg, None, None, distance)
    if miner.kind == "pair":
        pos_w, neg_w = miner.select(pairs)
        pos = ops.logical_and(pairs.pos, ops.cast(pos_w, far.dtype) > 0)
        neg = ops.logical_and(pairs.neg, ops.cast(neg_w, far.dtype) > 0)
        return TripletWindow(far, pos, neg, None, None, distance)
    return miner.select(pairs)


def choice_from_sorted(far, neg, thresholds, fallback):
    """`TripletChoice` index: for each `(a, p)` the first negative (in ascending `far[a, n]`,
    lower index first among ties) with `far[a, n] > thresholds[a, p]`, else `fallback[a]`."""
    masked = ops.where(neg, far, BIG)
    order = ops.argsort(masked, axis=1)
    neg_sorted = ops.take_along_axis(masked, order, axis=1)
    n_neg = ops.sum(ops.cast(neg, "int32"), axis=1, keepdims=True)
    k = count_sorted(neg_sorted, thresholds, True)
    found = k < n_neg
    picked = ops.take_along_axis(order, ops.minimum(k, ops.shape(far)[1] - 1), axis=1)
    return ops.where(found, picked, fallback[:, None])


__all__ = [
    "TripletChoice",
    "TripletMask",
    "TripletWindow",
    "choice_from_sorted",
    "count_sorted",
    "hinge_sum",
    "select_triplets",
    "window_counts",
]
