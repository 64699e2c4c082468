"""Triplet miners. Called on their own they return a float `(batch, num_refs, num_refs)` mask
over `[a, p, n]`; inside a loss they hand over a compact form (see `clusterloss.losses._triplets`)
that costs O(B^2 log B), not B^3."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_choice, check_range
from clusterloss.miners.base import Miner
from clusterloss.tuples.pairs import BIG
from clusterloss.tuples.triplets import TripletChoice, TripletWindow, choice_from_sorted

TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


@register
class TripletMarginMiner(Miner):
    """Triplets by how far they are from violating a margin (PML's `TripletMarginMiner`).

    With `m(a, p, n) = d(a, n) - d(a, p)` (for a similarity, `s(a, p) - s(a, n)`):

      - `"all"`: every triplet that violates the margin, `m <= margin`;
      - `"hard"`: those whose negative is at least as close as the positive, `m <= 0`;
      - `"semihard"`: those whose negative is farther than the positive but within the margin,
        `0 < m <= margin`, the semi-hard rule of FaceNet (Schroff et al., CVPR 2015);
      - `"easy"`: the rest, `m > margin`.

    The comparisons are evaluated as `d(a, n) <= d(a, p) + margin` (PML: `d(a, n) - d(a, p)
    <= margin`); the two differ only where the margin is within one float rounding of a
    bound. Inside a loss the selection is a window over sorted distances, O(B^2 log B).

    Args:
        margin: the margin, >= 0. PML's default 0.2 (the loss's default margin is 0.05).
        type_of_triplets: one of the four above.
        distance: a name or `Distance`; default L2-normalised Euclidean, as PML.
    """

    def __init__(self, margin: float = 0.2, type_of_triplets: str = "all", distance: Any = None):
        super().__init__(distance)
        check_range(margin, "margin", 0.0)
        check_choice(type_of_triplets, "type_of_triplets", TRIPLET_TYPES)
        self.margin = float(margin)
        self.type_of_triplets = type_of_triplets

    def bounds(self) -> tuple[float | None, float | None]:
        """`(lower, upper)`: the window `lower < m <= upper` of this type (`None`: unbounded)."""
        return {
            "all": (None, self.margin),
            "hard": (None, min(self.margin, 0.0)),
            "semihard": (0.0, self.margin),
            "easy": (self.margin, None),
        }[self.type_of_triplets]

    def _mine(self, mat, pos, neg):
        return TripletWindow(self.farness(mat), pos, neg, *self.bounds(), self.distance)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "margin": self.margin,
            "type_of_triplets": self.type_of_triplets,
        }


def _has_both(pos, neg):
    return ops.logical_and(ops.any(pos, axis=1), ops.any(neg, axis=1))


@register
class BatchHardMiner(Miner):
    """One triplet per anchor: its farthest positive and its closest negative ("batch hard",
    Hermans et al., "In Defense of the Triplet Loss", 2017; PML's `BatchHardMiner`).

    Anchors with no positive or no negative in the batch give no triplet. Ties go to the first
    index.
    """

    def _mine(self, mat, pos, neg):
        far = self.farness(mat)
        hardest_pos = ops.argmax(ops.where(pos, far, -BIG), axis=1)
        hardest_neg = ops.argmin(ops.where(neg, far, BIG), axis=1)
        one_hot = ops.equal(hardest_pos[:, None], ops.arange(ops.shape(far)[1])[None, :])
        weights = ops.logical_and(one_hot, _has_both(pos, neg)[:, None])
        neg_index = ops.broadcast_to(hardest_neg[:, None], ops.shape(far))
        return TripletChoice(ops.cast(neg_index, "int32"), ops.cast(weights, far.dtype))


@register
class BatchSemiHardMiner(Miner):
    """One triplet per positive pair `(a, p)`, as TensorFlow Addons' `TripletSemiHardLoss`
    (FaceNet's online semi-hard mining): the closest negative farther from the anchor than the
    positive (the lowest index among equals); if there is none, the farthest negative of the
    anchor (the lowest index among equals). O(B^2 log B): each anchor's negatives are sorted.

    With `TripletMarginLoss(margin=1.0, distance=Distance("euclidean", normalize=False),
    average="all")` this gives the value of `tfa.losses.TripletSemiHardLoss()`.
    """

    def _mine(self, mat, pos, neg):
        far = self.farness(mat)
        farthest = ops.argmax(ops.where(neg, far, -BIG), axis=1)
        neg_index = choice_from_sorted(far, neg, far, ops.cast(farthest, "int32"))
        weights = ops.logical_and(pos, ops.any(neg, axis=1)[:, None])
        return TripletChoice(ops.cast(neg_index, "int32"), ops.cast(weights, far.dtype))


__all__ = ["BatchHardMiner", "BatchSemiHardMiner", "TripletMarginMiner", "TRIPLET_TYPES"]
