"""Pair miners: each selects `(pos, neg)` masks of shape `(batch, num_refs)`."""

from __future__ import annotations

from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.miners.base import Miner
from clusterloss.tuples.pairs import masked_max, masked_min


@register
class MultiSimilarityMiner(Miner):
    """The pair mining of the multi-similarity loss (Wang et al., CVPR 2019; PML's
    `MultiSimilarityMiner`). With similarities `s`:

      - a positive pair `(a, p)` is kept if `s(a, p) - epsilon < max_n s(a, n)`;
      - a negative pair `(a, n)` is kept if `s(a, n) + epsilon > min_p s(a, p)`,

    the max and min running over the anchor's negatives and positives (with a distance, the
    same with the inequalities reversed). An anchor without negatives keeps no positive, and
    one without positives keeps no negative.

    Args:
        epsilon: the mining margin, >= 0 (PML's default 0.1).
        distance: default cosine similarity, as PML.
    """

    kind = "pair"
    default_distance = "cosine"

    def __init__(self, epsilon: float = 0.1, distance: Any = None):
        super().__init__(distance)
        check_range(epsilon, "epsilon", 0.0)
        self.epsilon = float(epsilon)

    def _mine(self, mat, pos, neg):
        far = self.farness(mat)  # larger = farther
        closest_neg = masked_min(far, neg, axis=1, keepdims=True)
        farthest_pos = masked_max(far, pos, axis=1, keepdims=True)
        hard_pos = ops.logical_and(pos, far + self.epsilon > closest_neg)
        hard_neg = ops.logical_and(neg, far - self.epsilon < farthest_pos)
        return hard_pos, hard_neg

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "epsilon": self.epsilon}


@register
class PairMarginMiner(Miner):
    """Pairs that violate a margin (PML's `PairMarginMiner`): positive pairs farther than
    `pos_margin` and negative pairs closer than `neg_margin` (with a similarity: positive
    pairs with `s < pos_margin`, negative pairs with `s > neg_margin`).

    Args:
        pos_margin, neg_margin: PML's defaults 0.2 and 0.8 (on L2-normalised Euclidean
            distances, in [0, 2]).
        distance: default L2-normalised Euclidean, as PML.
    """

    kind = "pair"
    needs_positive_pair = False

    def __init__(self, pos_margin: float = 0.2, neg_margin: float = 0.8, distance: Any = None):
        super().__init__(distance)
        check_range(pos_margin, "pos_margin", None if self.distance.larger_is_closer else 0.0)
        check_range(neg_margin, "neg_margin", None if self.distance.larger_is_closer else 0.0)
        self.pos_margin = float(pos_margin)
        self.neg_margin = float(neg_margin)

    def _mine(self, mat, pos, neg):
        if self.distance.larger_is_closer:
            hard_pos, hard_neg = mat < self.pos_margin, mat > self.neg_margin
        else:
            hard_pos, hard_neg = mat > self.pos_margin, mat < self.neg_margin
        return ops.logical_and(pos, hard_pos), ops.logical_and(neg, hard_neg)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "pos_margin": self.pos_margin,
            "neg_margin": self.neg_margin,
        }


__all__ = ["MultiSimilarityMiner", "PairMarginMiner"]
