"""BatchEasyHardMiner: per anchor, one positive and one negative chosen by strategy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_choice, check_range
from clusterloss.miners.base import Miner
from clusterloss.tuples.pairs import BIG

STRATEGIES = ("hard", "semihard", "easy", "all")


def _check_range_arg(value, name: str):
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"`{name}` must be None or a pair [low, high]; got {value!r}.")
    low, high = (float(check_range(v, name)) for v in value)
    return [low, high]


def _pick(far, mask, farthest: bool):
    """`(one_hot, index, found)`: per row, the farthest (or closest) entry of `mask`, the first
    index among ties."""
    masked = ops.where(mask, far, -BIG) if farthest else ops.where(mask, far, BIG)
    index = ops.argmax(masked, axis=1) if farthest else ops.argmin(masked, axis=1)
    one_hot = ops.equal(ops.arange(ops.shape(far)[1])[None, :], index[:, None])
    found = ops.any(mask, axis=1)
    return ops.logical_and(one_hot, found[:, None]), ops.take_along_axis(far, index[:, None], axis=1), found


@register
class BatchEasyHardMiner(Miner):
    """Per anchor, one positive and one negative chosen by difficulty (Xuan, Stylianou, Liu &
    Pless, "Improved Embeddings with Easy Positive Triplet Mining", WACV 2020; PML's
    `BatchEasyHardMiner`). A pair miner: `(pos, neg)` masks with one entry per row.

    Strategies, in "how far" terms (for a similarity, far = low similarity):
      - positives: `"easy"` the closest positive, `"hard"` the farthest, `"semihard"` the
        farthest positive that is still closer than the anchor's chosen negative;
      - negatives: `"hard"` the closest negative, `"easy"` the farthest, `"semihard"` the
        closest negative that is farther than the anchor's chosen positive;
      - `"all"`: every positive (or negative) pair, the ranges ignored (PML).
    Without `"all"`, an anchor keeps its pair only if both a positive and a negative were
    found (PML). `"semihard"` for both, or with `"all"`, is refused (as PML).

    `allowed_pos_range`, `allowed_neg_range`: `[low, high]` on the miner's distance (or
    similarity) values; pairs outside are never chosen. Ties go to the first index (as
    PML's `torch.max`/`torch.min`). Defaults are PML's: easy positives, semihard negatives,
    L2-normalised Euclidean distance.
    """

    kind = "pair"

    def __init__(
        self,
        pos_strategy: str = "easy",
        neg_strategy: str = "semihard",
        allowed_pos_range: Sequence[float] | None = None,
        allowed_neg_range: Sequence[float] | None = None,
        distance: Any = None,
    ):
        super().__init__(distance)
        check_choice(pos_strategy, "pos_strategy", STRATEGIES)
        check_choice(neg_strategy, "neg_strategy", STRATEGIES)
        if pos_strategy == neg_strategy == "semihard":
            raise ValueError("`pos_strategy` and `neg_strategy` cannot both be 'semihard'.")
        if "semihard" in (pos_strategy, neg_strategy) and "all" in (pos_strategy, neg_strategy):
            raise ValueError(
                "'semihard' cannot be combined with 'all' "
                f"(got pos_strategy={pos_strategy!r}, neg_strategy={neg_strategy!r})."
            )
        self.pos_strategy, self.neg_strategy = pos_strategy, neg_strategy
        self.allowed_pos_range = _check_range_arg(allowed_pos_range, "allowed_pos_range")
        self.allowed_neg_range = _check_range_arg(allowed_neg_range, "allowed_neg_range")

    @staticmethod
    def _in_range(mat, mask, bounds):
        if bounds is None:
            return mask
        return ops.logical_and(mask, ops.logical_and(mat >= bounds[0], mat <= bounds[1]))

    def _mine(self, mat, pos, neg):
        if self.pos_strategy == self.neg_strategy == "all":
            return pos, neg
        far = self.farness(mat)
        pos_ok = self._in_range(mat, pos, self.allowed_pos_range)
        neg_ok = self._in_range(mat, neg, self.allowed_neg_range)
        pos_far = self.pos_strategy != "easy"  # hard and semihard: the farthest (allowed)
        neg_far = self.neg_strategy == "easy"
        if self.pos_strategy == "semihard":
            neg_sel, neg_value, neg_found = _pick(far, neg_ok, neg_far)
            pos_sel, _, pos_found = _pick(far, ops.logical_and(pos_ok, far < neg_value), pos_far)
        else:
            if self.pos_strategy != "all":
                pos_sel, pos_value, pos_found = _pick(far, pos_ok, pos_far)
            if self.neg_strategy == "semihard":
                neg_ok = ops.logical_and(neg_ok, far > pos_value)
            if self.neg_strategy != "all":
                neg_sel, _, neg_found = _pick(far, neg_ok, neg_far)
        if self.pos_strategy == "all":
            return pos, neg_sel
        if self.neg_strategy == "all":
            return pos_sel, neg
        both = ops.logical_and(pos_found, neg_found)[:, None]
        return ops.logical_and(pos_sel, both), ops.logical_and(neg_sel, both)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "pos_strategy": self.pos_strategy,
            "neg_strategy": self.neg_strategy,
            "allowed_pos_range": self.allowed_pos_range,
            "allowed_neg_range": self.allowed_neg_range,
        }


__all__ = ["BatchEasyHardMiner", "STRATEGIES"]
