"""Triplet miners: each returns a float32 `(batch, batch, batch)` mask over `[a, p, n]`."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_choice, check_range
from clusterloss.losses._pairs import _BIG, one_hot_index, triplet_mask
from clusterloss.miners.base import Miner

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

    def _mine(self, mat, pos, neg):
        far = self.farness(mat)
        m = far[:, None, :] - far[:, :, None]  # d(a, n) - d(a, p)
        if self.type_of_triplets == "easy":
            keep = m > self.margin
        else:
            keep = m <= self.margin
            if self.type_of_triplets == "hard":
                keep = ops.logical_and(keep, m <= 0)
            elif self.type_of_triplets == "semihard":
                keep = ops.logical_and(keep, m > 0)
        return ops.cast(ops.logical_and(triplet_mask(pos, neg), keep), "float32")

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "margin": self.margin,
            "type_of_triplets": self.type_of_triplets,
        }


@register
class BatchHardMiner(Miner):
    """One triplet per anchor: its farthest positive and its closest negative ("batch hard",
    Hermans et al., "In Defense of the Triplet Loss", 2017; PML's `BatchHardMiner`).

    Anchors with no positive or no negative in the batch give no triplet. Ties go to the first
    index.
    """

    compact = True

    def _mine_compact(self, mat, pos, neg):
        far = self.farness(mat)
        hardest_pos = ops.argmax(ops.where(pos, far, ops.full_like(far, -_BIG)), axis=1)
        hardest_neg = ops.argmin(ops.where(neg, far, ops.full_like(far, _BIG)), axis=1)
        has = ops.logical_and(ops.any(pos, axis=1), ops.any(neg, axis=1))
        weights = ops.logical_and(one_hot_index(hardest_pos, far), has[:, None])
        neg_index = ops.broadcast_to(hardest_neg[:, None], ops.shape(far))
        return ops.cast(neg_index, "int32"), ops.cast(weights, "float32")


@register
class BatchSemiHardMiner(Miner):
    """One triplet per positive pair `(a, p)`, as TensorFlow Addons' `TripletSemiHardLoss`
    (FaceNet's online semi-hard mining): the closest negative farther from the anchor than the
    positive; if there is none, the farthest negative of the anchor.

    With `TripletMarginLoss(margin=1.0, distance=Distance("euclidean", normalize=False),
    average="all")` this gives the value of `tfa.losses.TripletSemiHardLoss()`.
    """

    compact = True

    def _mine_compact(self, mat, pos, neg):
        far = self.farness(mat)
        ap = far[:, :, None]
        an = far[:, None, :]
        outside = ops.logical_and(neg[:, None, :], an > ap)  # (a, p, n)
        closest_outside = ops.argmin(ops.where(outside, an, _BIG), axis=2)  # (a, p)
        farthest = ops.argmax(ops.where(neg, far, ops.full_like(far, -_BIG)), axis=1)  # (a,)
        neg_index = ops.where(ops.any(outside, axis=2), closest_outside, farthest[:, None])
        weights = ops.logical_and(pos, ops.any(neg, axis=1)[:, None])
        return ops.cast(neg_index, "int32"), ops.cast(weights, "float32")


__all__ = ["BatchHardMiner", "BatchSemiHardMiner", "TripletMarginMiner", "TRIPLET_TYPES"]
