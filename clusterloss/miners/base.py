"""The base of every miner: in-batch, fixed-shape masks, no gradient."""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from clusterloss._validation import concrete
from clusterloss.distances import get_distance
from clusterloss.losses._pairs import label_masks, prepare


class Miner:
    """Selects pairs or triplets of a batch for a loss, as masks of fixed shape.

    A miner is given to a loss (`TripletMarginLoss(miner=TripletMarginMiner(0.2, "semihard"))`)
    or called on its own, `miner(embeddings, labels)`, which returns

      - for a triplet miner (`kind == "triplet"`): a float32 `(batch, batch, batch)` mask,
        `mask[a, p, n] = 1` for each mined triplet (anchor, positive, negative);
      - for a pair miner (`kind == "pair"`): a tuple `(pos, neg)` of float32 `(batch, batch)`
        masks, `pos[a, p] = 1` for each mined positive pair, `neg[a, n] = 1` for each negative.

    Masks, not index lists, so mining has fixed shapes and runs under `jit_compile` on every
    backend. The positive mask never holds the diagonal. Mining uses
    `stop_gradient(embeddings)` (as PML mines under `torch.no_grad()`), and its own distance,
    which need not be the loss's (PML's convention; the defaults are PML's).

    Called on its own with concrete labels, a miner raises a `ValueError` for a batch that
    cannot hold what it mines (fewer than two classes, or no class with two samples); inside a
    loss the same batch gives a loss of 0 with zero gradients instead, on every backend.
    """

    kind = "triplet"
    default_distance = "euclidean"
    needs_positive_pair = True
    # True for triplet miners that pick at most one negative per positive pair: they also
    # offer `mine_compact`, which a triplet loss uses to stay O(batch^2).
    compact = False

    def __init__(self, distance: Any = None):
        self.distance = get_distance(self.default_distance if distance is None else distance)

    def __call__(self, embeddings, labels):
        labels, embeddings = prepare(labels, embeddings, ("labels", "embeddings"))
        values = concrete(labels)
        if values is not None:
            self._check_batch(values)
        return self.mine(embeddings, labels)

    def _check_batch(self, values: np.ndarray) -> None:
        classes, counts = np.unique(values, return_counts=True)
        name = type(self).__name__
        if len(classes) < 2:
            raise ValueError(
                f"`labels` must hold at least 2 classes for {name} to find negatives; "
                f"got {len(classes)} class(es) in a batch of {len(values)}."
            )
        if self.needs_positive_pair and counts.max() < 2:
            raise ValueError(
                f"`labels` must hold a class with at least 2 samples for {name} to find "
                f"positive pairs; got {len(classes)} classes with one sample each."
            )

    def mine(self, embeddings, labels, pos=None, neg=None):
        """The masks, with no input checks (what a loss calls). `pos`, `neg`: the label masks
        if already built."""
        if pos is None:
            pos, neg = label_masks(labels)
        x = ops.stop_gradient(embeddings)
        mat = ops.stop_gradient(self.distance.pairwise(x))
        return self._mine(mat, pos, neg)

    def mine_compact(self, embeddings, labels, pos=None, neg=None):
        """For a `compact` miner: `(neg_index, weights)`, each `(batch, batch)`: the triplet
        `(a, p, neg_index[a, p])` is mined where `weights[a, p] = 1`. Same triplets as `mine`,
        without the `(batch, batch, batch)` mask."""
        if pos is None:
            pos, neg = label_masks(labels)
        mat = ops.stop_gradient(self.distance.pairwise(ops.stop_gradient(embeddings)))
        return self._mine_compact(mat, pos, neg)

    def _mine(self, mat, pos, neg):
        if self.compact:  # the dense mask from the compact form
            neg_index, weights = self._mine_compact(mat, pos, neg)
            chosen = ops.equal(neg_index[:, :, None], ops.arange(ops.shape(mat)[1]))
            return ops.cast(chosen, "float32") * weights[:, :, None]
        raise NotImplementedError

    def _mine_compact(self, mat, pos, neg):
        raise NotImplementedError

    def farness(self, mat):
        """The matrix with larger = farther, whatever the distance."""
        return -mat if self.distance.larger_is_closer else mat

    def get_config(self) -> dict[str, Any]:
        return {"distance": self.distance.get_config()}

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        return cls(**config)

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({options})"
