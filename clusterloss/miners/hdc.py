"""HDCMiner: the hardest fraction of the batch's positive and negative pairs."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.miners.base import Miner
from clusterloss.tuples.pairs import BIG


def hardest_fraction(hardness, mask, fraction: float):
    """Bool mask of the `ceil(fraction * count)` entries of `mask` with the largest
    `hardness` (over the whole matrix; among equals, the first in row-major order)."""
    flat = ops.reshape(ops.where(mask, hardness, -BIG), (-1,))
    count = ops.sum(ops.cast(mask, flat.dtype))
    k = ops.ceil(fraction * count)
    order = ops.argsort(-flat)
    rank = ops.cast(ops.argsort(order), flat.dtype)  # position of each entry in that order
    return ops.logical_and(mask, ops.reshape(rank < k, ops.shape(mask)))


@register
class HDCMiner(Miner):
    """The hard-aware mining of Hard-Aware Deeply Cascaded embeddings (Yuan, Yang & Zhang,
    ICCV 2017; PML's `HDCMiner`): the `filter_percentage` farthest positive pairs and the
    `filter_percentage` closest negative pairs of the whole batch, `ceil(fraction * count)`
    of each (PML's rounding). A pair miner.

    Ties at the cut are broken by position (PML's `topk` leaves them unspecified). PML's
    `set_idx_externally` (cascading on another miner's output) is not offered.

    Args:
        filter_percentage: the fraction kept, in [0, 1] (default 0.5, PML's).
        distance: default L2-normalised Euclidean, as PML.
    """

    kind = "pair"
    needs_positive_pair = False

    def __init__(self, filter_percentage: float = 0.5, distance: Any = None):
        super().__init__(distance)
        check_range(filter_percentage, "filter_percentage", 0.0, 1.0)
        self.filter_percentage = float(filter_percentage)

    def _mine(self, mat, pos, neg):
        far = self.farness(mat)
        return (hardest_fraction(far, pos, self.filter_percentage), hardest_fraction(-far, neg, self.filter_percentage))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filter_percentage": self.filter_percentage}


__all__ = ["HDCMiner"]
