"""The base of every miner: fixed-shape selections of pairs or triplets, no gradient."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from clusterloss._native import is_jax_tracer, uniform
from clusterloss._validation import concrete
from clusterloss.distances import get_distance
from clusterloss.tuples.pairs import Pairs, pair_batch
from clusterloss.tuples.triplets import TripletChoice, TripletMask, TripletWindow


class Miner:
    """Selects pairs or triplets of a batch for a loss, with fixed shapes.

    A miner is given to a loss (`TripletMarginLoss(miner=TripletMarginMiner(0.2, "semihard"))`)
    or called on its own, `miner(embeddings, labels, ref_embeddings=None, ref_labels=None)`,
    which returns masks over (query, reference) indices (the batch is its own reference
    without `ref_embeddings`, the diagonal excluded):

      - for a triplet miner (`kind == "triplet"`): a float `(batch, num_refs, num_refs)` mask,
        `mask[a, p, n] = 1` for each mined triplet (anchor, positive, negative);
      - for a pair miner (`kind == "pair"`): a tuple `(pos, neg)` of float `(batch, num_refs)`
        masks, `pos[a, p] = 1` for each mined positive pair, `neg[a, n] = 1` for each negative.

    Inside a loss the triplet miners hand over a compact form instead (`select`, see
    `clusterloss.tuples.triplets`), so the built-in miners never build a B^3 tensor there.
    Mining uses `stop_gradient` (as PML mines under `torch.no_grad()`) and its own distance,
    which need not be the loss's (PML's convention; the defaults are PML's). NaN or inf in the
    embeddings (or an overflowing distance) gives NaN masks, never a silent "nothing mined".

    Called on its own with NumPy labels, a miner raises a `ValueError` for a batch that cannot
    hold what it mines (fewer than two classes, or no class with two samples); inside a loss
    the same batch gives a loss of 0 with zero gradients instead, on every backend.

    A new miner sets `kind` and implements `_mine(mat, pos, neg)`: `mat` is its distance
    matrix `(batch, num_refs)` (no gradient), `pos`/`neg` the bool label masks; it returns
    `(pos_weights, neg_weights)` (pair miner) or, for a triplet miner, a dense
    `(batch, num_refs, num_refs)` mask, a `TripletChoice` or a `TripletWindow`.
    """

    kind = "triplet"
    default_distance = "euclidean"
    needs_positive_pair = True

    def __init__(self, distance: Any = None):
        self.distance = get_distance(self.default_distance if distance is None else distance)

    def __call__(self, embeddings, labels, ref_embeddings=None, ref_labels=None):
        out = self.mine(embeddings, labels, ref_embeddings, ref_labels)
        values = concrete(labels)
        if values is not None and ref_embeddings is None:
            self._check_batch(values.reshape(-1))
        return out

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

    def mine(self, embeddings, labels, ref_embeddings=None, ref_labels=None, ref_mask=None):
        """The dense masks described in the class docstring, without the batch checks."""
        pairs = pair_batch(labels, embeddings, ref_embeddings, ref_labels, ref_mask, names=("labels", "embeddings"))
        selected = self.select(pairs)
        dtype = pairs.embeddings.dtype
        if self.kind == "pair":
            return tuple(pairs.guard(ops.cast(m, dtype)) for m in selected)
        return pairs.guard(selected.dense(dtype))

    def select(self, pairs: Pairs):
        """What a loss uses: `(pos_weights, neg_weights)` for a pair miner; a `TripletMask`,
        `TripletChoice` or `TripletWindow` for a triplet miner."""
        mat = ops.stop_gradient(pairs.matrix(self.distance))
        out = self._mine(mat, pairs.pos, pairs.neg)
        if self.kind == "triplet" and not isinstance(out, (TripletMask, TripletChoice, TripletWindow)):
            out = TripletMask(out)
        return out

    def _mine(self, mat, pos, neg):
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


def _fingerprint(x):
    """A 24-bit integer that changes with the values of `x` (no gradient, NaN/inf ignored)."""
    x = ops.stop_gradient(x)
    x = ops.where(ops.isfinite(x), x, 0.0)
    index = ops.cast(ops.reshape(ops.arange(ops.size(x)), ops.shape(x)), x.dtype)
    total = ops.sum(x * (1.0 + ops.mod(index * 0.6180339887, 1.0)))
    return ops.cast(ops.mod(ops.abs(total) * 65536.0, 16777216.0), "int32")


class SamplingMiner(Miner):
    """A miner that samples at random, with explicit, repeatable randomness: `seed` (an int,
    or `None` for a random one) starts a `keras.random.SeedGenerator` that the miner owns;
    each mining call draws from it. Two miners made with the same seed make the same draws
    in the same order (on one backend: the generators differ between backends; on PyTorch the
    draws come from `clusterloss._native.uniform`, which reads no seed on the host).

    In a compiled train step on JAX, a generator outside the model's state is read as a
    constant (it is not part of the step's state and cannot advance there); the draw is then
    keyed by the generator's state and a fingerprint of the batch's distances, so that it
    still changes from batch to batch (the same batch gives the same draw). TensorFlow and
    PyTorch advance the generator on every call, compiled or not."""

    def __init__(self, distance: Any = None, seed: int | None = None):
        super().__init__(distance)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
            raise ValueError(f"`seed` must be an int or None; got {seed!r}.")
        self.seed = None if seed is None else int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def uniform(self, shape, data):
        """Uniform `[0, 1)` values of `shape`, in the dtype of `data` (the miner's matrix)."""
        seed = self.seed_generator
        if keras.backend.backend() == "jax":
            key = seed.state.value if is_jax_tracer(data) else seed.next()
            seed = key + ops.cast(_fingerprint(data), key.dtype)
        return uniform(shape, seed, dtype=data.dtype)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "seed": self.seed}
