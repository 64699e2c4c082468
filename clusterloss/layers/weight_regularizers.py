"""Regularizers on a head's class weights (PML's `weight_regularizer`s), as Keras regularizers.

Give one to a head as its `kernel_regularizer`: `ArcFace(n, kernel_regularizer=
RegularFaceRegularizer(weight=1.0))`. Keras then adds `weight * R(kernel)` to the model's
loss in every training step (`model.losses`, which `ClusterModel.compute_loss` includes),
and saves it with the head. `R` is PML's regularizer on the same class weights: the head's
`kernel` `(num_classes, dim)` is what PML's weight-based losses pass to their regularizer
(`W.t()` for `(dim, num_classes)` weights, the proxies as they are), so values agree
without a transpose; `weight` is PML's `weight_reg_weight`. Each one touches every class in
every step, so a head refuses them with Partial FC (`sample_rate < 1`).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_range, upcast
from clusterloss.distances import l2_normalize, safe_sqrt
from clusterloss.layers.labels import check_num_classes


def _mean(values):
    """The mean of a 1-D tensor in its dtype (`ops.mean` on torch computes float64 in float32)."""
    return ops.sum(values) / values.shape[0]


class WeightRegularizer(keras.regularizers.Regularizer):
    """Base class: `weight * penalty(kernel)`, the penalty computed in float32 (float64 for a
    float64 kernel) on a `(rows, dim)` kernel with at least `min_rows` rows."""

    min_rows = 1

    def __init__(self, weight: float = 1.0):
        check_range(weight, "weight", 0.0)
        self.weight = float(weight)

    def penalty(self, w):
        raise NotImplementedError

    def __call__(self, kernel):
        rows = kernel.shape[0]
        if len(kernel.shape) != 2 or (isinstance(rows, int) and rows < self.min_rows):
            raise ValueError(
                f"{type(self).__name__} needs a (rows, dim) class-weight matrix with at least "
                f"{self.min_rows} rows; got shape {tuple(kernel.shape)}."
            )
        return self.weight * self.penalty(upcast(kernel))

    def get_config(self) -> dict[str, Any]:
        return {"weight": self.weight}

    def __repr__(self) -> str:
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{type(self).__name__}({args})"


@register
class RegularFaceRegularizer(WeightRegularizer):
    """RegularFace's exclusive regularization: Zhao et al., "RegularFace: Deep Face
    Recognition via Exclusive Regularization", CVPR 2019 (PML's `RegularFaceRegularizer`):

        R = mean_i max_{j != i} cos(w_i, w_j)

    pushes each class weight away from its nearest other class. The gradient flows through
    the nearest pair only (PML picks it under `no_grad`). Costs a `(rows, rows)` cosine
    matrix per step: fine for thousands of classes, not for a million.

    Args:
        weight: factor on R (PML's `weight_reg_weight`), default 1.
    """

    min_rows = 2

    def penalty(self, w):
        unit = l2_normalize(w, axis=-1)
        cos = ops.einsum("id,jd->ij", unit, unit)
        others = np.logical_not(np.eye(w.shape[0], dtype=bool))
        return _mean(ops.max(ops.where(others, cos, -3.0), axis=1))


@register
class CenterInvariantRegularizer(WeightRegularizer):
    """Center-invariant regularization: Wu et al., "Deep Face Recognition with Center
    Invariant Loss", ACM MM Workshops 2017 (PML's `CenterInvariantRegularizer`):

        R = mean_i (||w_i||^2 - mean_j ||w_j||^2)^2 / 4

    keeps the class weights at equal norms, so that a frequent class does not get a larger
    weight norm than a rare one.

    Args:
        weight: factor on R (PML's `weight_reg_weight`), default 1.
    """

    def penalty(self, w):
        squares = ops.sum(ops.square(w), axis=-1)
        return _mean(ops.square(squares - _mean(squares))) / 4.0


@register
class SparseCentersRegularizer(WeightRegularizer):
    """Pulls together the sub-centers of each class (PML's `SparseCentersRegularizer`, from
    SoftTriple: Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet
    Sampling", ICCV 2019):

        R = sum_c sum_{k < l} sqrt(2 - 2 cos(w_{c,k}, w_{c,l})) / (2 * num_pairs)

    `num_pairs = num_classes * K (K - 1) / 2`. For a `SubCenterArcFace(num_classes,
    sub_centers=K)` kernel (class-major rows, as PML's columns): `kernel_regularizer=
    SparseCentersRegularizer(num_classes, K)`. Only the `K x K` blocks of each class are
    computed (PML builds the full `(C K)^2` matrix and masks it). The square root has a zero
    gradient where two sub-centers coincide (PML's is infinite there).

    Args:
        num_classes: number of classes, an int >= 1.
        centers_per_class: K, an int >= 2 (PML asserts > 1).
        weight: factor on R (PML's `weight_reg_weight`), default 1.
    """

    def __init__(self, num_classes: int, centers_per_class: int, weight: float = 1.0):
        super().__init__(weight)
        self.num_classes = check_num_classes(num_classes, "num_classes", minimum=1)
        self.centers_per_class = check_num_classes(centers_per_class, "centers_per_class")

    def penalty(self, w):
        c, k = self.num_classes, self.centers_per_class
        if w.shape[0] != c * k:
            raise ValueError(
                f"SparseCentersRegularizer(num_classes={c}, centers_per_class={k}) needs a "
                f"kernel of {c * k} rows; got shape {tuple(w.shape)}."
            )
        unit = ops.reshape(l2_normalize(w, axis=-1), (c, k, -1))
        cos = ops.einsum("ckd,cld->ckl", unit, unit)
        upper = np.triu(np.ones((k, k), dtype=bool), 1)
        dist = safe_sqrt(2.0 - 2.0 * ops.where(cos > 1.0, 1.0, cos))  # PML's clamp(2 cos, max=2)
        pairs = c * k * (k - 1) // 2
        return ops.sum(ops.where(upper, dist, 0.0)) / (2.0 * pairs)

    def get_config(self) -> dict[str, Any]:
        return {
            "num_classes": self.num_classes,
            "centers_per_class": self.centers_per_class,
            **super().get_config(),
        }
