"""Miners that sample at random (seeded): distance-weighted negatives, uniform histograms."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_positive_int, check_range
from clusterloss.miners.base import SamplingMiner
from clusterloss.tuples.pairs import BIG, Pairs, masked_max, masked_min
from clusterloss.tuples.triplets import TripletChoice, count_sorted


def sample_columns(weights, u):
    """For each row of `weights` `(rows, n)` (>= 0) and each `u` in `[0, 1)` of that row
    (`(rows, k)`), the column drawn with probability `weights / row sum` (inverse CDF: a
    batched search in the running sum, O(rows k log n), no `(rows, k, n)` tensor). Rows
    without weight give column 0."""
    cdf = ops.cumsum(weights, axis=1)  # float32 on torch even for float64: enough to draw
    total = cdf[:, -1:]
    index = count_sorted(cdf, ops.cast(u, cdf.dtype) * total, inclusive=True)
    n = ops.shape(weights)[1]
    columns = ops.arange(n, dtype="int32")[None, :]
    last = ops.max(ops.where(weights > 0, columns, 0), axis=1, keepdims=True)
    return ops.minimum(index, last)  # u * total rounded up to total


@register
class DistanceWeightedMiner(SamplingMiner):
    """Distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl, "Sampling Matters in Deep
    Embedding Learning", ICCV 2017; PML's `DistanceWeightedMiner`): for each positive pair
    `(a, p)`, one negative `n` drawn with probability proportional to the inverse of the
    density of distances between points on the unit sphere in `dim` dimensions,

        w(d) = d^(2 - dim) [1 - d^2 / 4]^(-(dim - 3) / 2),   d = max(d(a, n), cutoff),

    and 0 for negatives at `d(a, n) >= nonzero_loss_cutoff` (they cannot give a margin loss)
    or where `w` is not finite. Anchors whose negatives all weigh 0 give no triplet.

    Conventions: the weights are PML's (its `cutoff=0.5`, `nonzero_loss_cutoff=1.4`, the
    paper's values, on L2-normalised Euclidean distances, the only distance allowed). Each
    positive pair gets one negative, as in the paper's code; PML instead draws as many
    positives per anchor as the anchor's class has samples, at random with replacement.
    The weights are normalised per anchor after subtracting the anchor's largest log-weight
    (PML subtracts the batch's largest, which can underflow a whole row to 0 for large
    `dim`). Randomness: see `SamplingMiner` (`seed`).

    Args:
        cutoff: distances below are raised to it before weighting (default 0.5).
        nonzero_loss_cutoff: negatives at or beyond this distance are never drawn (1.4).
        seed: an int for repeatable draws, or `None`.
    """

    def __init__(
        self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, seed: int | None = None, distance: Any = None
    ):
        super().__init__(distance, seed)
        if self.distance.name != "euclidean" or not self.distance.normalize:
            raise ValueError(
                "`distance` must be the L2-normalised 'euclidean' distance for "
                f"DistanceWeightedMiner (PML's requirement); got {self.distance!r}."
            )
        check_range(cutoff, "cutoff", 0.0)
        check_range(nonzero_loss_cutoff, "nonzero_loss_cutoff", 0.0)
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)

    def select(self, pairs: Pairs):
        mat = ops.stop_gradient(pairs.matrix(self.distance))
        probabilities = self.probabilities(mat, pairs.neg, pairs.embeddings.shape[-1])
        neg_index = sample_columns(probabilities, self.uniform(ops.shape(mat), mat))
        keep = ops.logical_and(pairs.pos, ops.any(probabilities > 0, axis=1, keepdims=True))
        return TripletChoice(ops.cast(neg_index, "int32"), ops.cast(keep, mat.dtype))

    def probabilities(self, mat, neg, dim: int):
        """`(batch, num_refs)`: the probability of drawing each negative for an anchor (rows
        sum to 1, or 0 for an anchor with nothing to draw); PML's normalised weights."""
        d = ops.where(mat > self.cutoff, mat, self.cutoff)
        log_w = (2.0 - dim) * ops.log(d) - ((dim - 3.0) / 2.0) * ops.log(1.0 - 0.25 * ops.square(d))
        valid = ops.logical_and(ops.logical_and(neg, mat < self.nonzero_loss_cutoff), ops.isfinite(log_w))
        peak = masked_max(log_w, valid, axis=1, keepdims=True)
        weights = ops.where(valid, ops.exp(ops.where(valid, log_w - peak, 0.0)), 0.0)
        total = ops.sum(weights, axis=1, keepdims=True)
        return weights / ops.where(total > 0, total, 1.0)

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.pop("distance")
        return {**config, "cutoff": self.cutoff, "nonzero_loss_cutoff": self.nonzero_loss_cutoff}


def _linspace(start, stop, num: int):
    """`num` evenly spaced values from `start` to `stop` (scalars), both ends exact."""
    index = ops.cast(ops.arange(num), start.dtype)
    values = start + (stop - start) / max(num - 1, 1) * index
    return ops.where(index == num - 1, stop, values)


@register
class UniformHistogramMiner(SamplingMiner):
    """Pairs sampled evenly over their distance range (PML's `UniformHistogramMiner`): the
    positive pairs' distances are split into `num_bins` equal bins between their smallest
    and largest value, and `pos_per_bin` pairs are drawn uniformly, with replacement, from
    each non-empty bin; the same for the negative pairs with `neg_per_bin`. A pair drawn `k`
    times has weight `k` (the mask holds counts; PML returns it `k` times in its index
    lists, which the losses count the same way).

    Bins as PML's: `[e_i, e_{i+1})`, the last one closed. The selection within a bin is
    uniform, as PML's, not PML's exact draw. Randomness: see `SamplingMiner` (`seed`).

    Args:
        num_bins: bins per histogram (default 100, PML's).
        pos_per_bin, neg_per_bin: pairs drawn per non-empty bin (default 10 each, PML's).
        distance: default L2-normalised Euclidean, as PML.
        seed: an int for repeatable draws, or `None`.
    """

    kind = "pair"
    needs_positive_pair = False

    def __init__(
        self,
        num_bins: int = 100,
        pos_per_bin: int = 10,
        neg_per_bin: int = 10,
        distance: Any = None,
        seed: int | None = None,
    ):
        super().__init__(distance, seed)
        self.num_bins = check_positive_int(num_bins, "num_bins")
        self.pos_per_bin = check_positive_int(pos_per_bin, "pos_per_bin")
        self.neg_per_bin = check_positive_int(neg_per_bin, "neg_per_bin")

    def _mine(self, mat, pos, neg):
        u = self.uniform((self.num_bins, self.pos_per_bin + self.neg_per_bin), mat)
        return (self._sample(mat, pos, u[:, : self.pos_per_bin]), self._sample(mat, neg, u[:, self.pos_per_bin :]))

    def bins(self, mat, mask):
        """The bin of each pair of `mask` (`num_bins` elsewhere), int32 `(batch, num_refs)`."""
        flat, keep = ops.reshape(mat, (1, -1)), ops.reshape(mask, (1, -1))
        low, high = masked_min(flat, keep), masked_max(flat, keep)
        low = ops.where(low < BIG / 2, low, 0.0)  # no pair: any finite range
        high = ops.where(high > -BIG / 2, high, 0.0)
        inner = _linspace(low, high, self.num_bins + 1)[1:-1]
        index = count_sorted(inner[None, :], flat, inclusive=True)[0]
        index = ops.where(keep[0], index, self.num_bins)
        return ops.reshape(index, ops.shape(mat))

    def _sample(self, mat, mask, u):
        nb = self.num_bins
        index = ops.reshape(self.bins(mat, mask), (-1,))
        n = ops.shape(index)[0]
        counts = ops.segment_sum(ops.ones_like(index), index, num_segments=nb + 1)[:nb]
        start = ops.cumsum(counts) - counts  # int32
        order = ops.cast(ops.argsort(index), "int32")  # pairs grouped by bin
        rank = ops.minimum(
            ops.cast(ops.floor(u * ops.cast(counts, u.dtype)[:, None]), "int32"), ops.maximum(counts - 1, 0)[:, None]
        )
        chosen = ops.take(order, ops.clip(start[:, None] + rank, 0, n - 1))
        drawn = ops.cast(ops.broadcast_to(counts[:, None] > 0, ops.shape(chosen)), mat.dtype)
        weights = ops.segment_sum(ops.reshape(drawn, (-1,)), ops.reshape(chosen, (-1,)), num_segments=n)
        return ops.reshape(weights, ops.shape(mat))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "num_bins": self.num_bins,
            "pos_per_bin": self.pos_per_bin,
            "neg_per_bin": self.neg_per_bin,
        }


__all__ = ["DistanceWeightedMiner", "UniformHistogramMiner", "sample_columns"]
