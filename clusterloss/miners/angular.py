"""AngularMiner: triplets whose angle at the negative exceeds a bound (the angular loss's)."""

from __future__ import annotations

import math
from typing import Any

from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import Distance, matmul_t
from clusterloss.miners.base import Miner
from clusterloss.tuples.pairs import Pairs
from clusterloss.tuples.triplets import TripletMask

_RAW = Distance("euclidean", normalize=False)
DIRECT_MAX_ELEMENTS = 2**20  # (batch, refs, refs, dim) differences up to this many elements


def negative_to_center_sq(x, refs):
    """`||r_n - (x_a + r_p) / 2||^2` for every `(a, p, n)`, shape `(batch, refs, refs)`: direct
    differences for small inputs, else from dot products (error ~1e-7 of the squared norms)."""
    shapes = (x.shape[0], refs.shape[0], refs.shape[0], x.shape[-1])
    if all(isinstance(v, int) for v in shapes) and math.prod(shapes) <= DIRECT_MAX_ELEMENTS:
        center = (x[:, None, :] + refs[None, :, :]) / 2.0
        return ops.sum(ops.square(refs[None, None, :, :] - center[:, :, None, :]), axis=-1)
    xx = ops.sum(ops.square(x), axis=-1)
    rr = ops.sum(ops.square(refs), axis=-1)
    xr, r2 = matmul_t(x, refs), matmul_t(refs, refs)
    center_sq = (xx[:, None] + 2.0 * xr + rr[None, :]) / 4.0  # (batch, refs): ||c_ap||^2
    value = rr[None, None, :] - xr[:, None, :] - r2[None, :, :] + center_sq[:, :, None]
    return ops.where(value > 0, value, 0.0)


@register
class AngularMiner(Miner):
    """Triplets `(a, p, n)` whose angle at the negative is larger than `angle` (PML's
    `AngularMiner`, after the angular loss of Wang et al., ICCV 2017): with the centre
    `c = (a + p) / 2`,

        atan( ||a - p|| / (2 ||n - c||) ) > angle

    (evaluated as `||a - p|| > 2 tan(angle) ||n - c||`). `angle` in **degrees** (PML's unit,
    default 20). As PML's, the distances are taken on the embeddings as given, not
    normalised (PML's `pairwise_distance` skips the normalisation of its distance); normalise
    the model's output (`UnitNormalization`) for the paper's angles. A dense triplet mask:
    O(B R^2) memory, as the angle of each triplet depends on all three points.
    """

    def __init__(self, angle: float = 20.0):
        super().__init__(None)
        check_range(angle, "angle", 0.0)
        if angle >= 90.0:
            raise ValueError(f"`angle` must be in [0, 90) degrees; got {angle!r}.")
        self.angle = float(angle)

    def select(self, pairs: Pairs):
        refs = pairs.embeddings if pairs.ref_embeddings is None else pairs.ref_embeddings
        ap = ops.stop_gradient(pairs.matrix(_RAW))  # ||a - p||, registered with the guard
        x, refs = ops.stop_gradient(pairs.embeddings), ops.stop_gradient(refs)
        nc_sq = negative_to_center_sq(x, refs)
        bound = 4.0 * math.tan(math.radians(self.angle)) ** 2
        wide = ops.square(ap)[:, :, None] > bound * nc_sq
        keep = ops.logical_and(ops.logical_and(pairs.pos[:, :, None], pairs.neg[:, None, :]), wide)
        return TripletMask(ops.cast(keep, ap.dtype))

    def get_config(self) -> dict[str, Any]:
        return {"angle": self.angle}


__all__ = ["AngularMiner"]
