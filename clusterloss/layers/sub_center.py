"""Sub-center ArcFace: K weight rows per class, the closest one takes the ArcFace margin."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import check_labels, check_range
from clusterloss.layers.labels import check_num_classes
from clusterloss.layers.margin_heads import ArcFace


class SubCenterOutliers(NamedTuple):
    """What `SubCenterArcFace.get_outliers` returns."""

    outliers: np.ndarray  # int64 indices of the samples far from their dominant sub-center
    dominant_centers: np.ndarray  # (num_classes, dim); NaN rows for classes with no sample


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


@register
class SubCenterArcFace(ArcFace):
    """Sub-center ArcFace: Deng et al., "Sub-center ArcFace: Boosting Face Recognition by
    Large-scale Noisy Web Faces", ECCV 2020.

    Each class has K sub-centers (rows of `kernel`); the cosine to a class is the largest
    over its sub-centers, and the ArcFace margin applies to it as in `ArcFace`:

        cos_j = max_k cos(x, w_{j,k}),
        logit_y = s * cos(theta_y + m)  (or s * (cos_y - m sin m) past pi - m),
        logit_j = s * cos_j             for j != y, and for every class at inference.

    Noisy samples tend to gather at a non-dominant sub-center, so the dominant one stays
    clean; `get_outliers` finds the samples far from their class's dominant sub-center (the
    paper then drops them and keeps one center per class).

    Kernel layout: `kernel` is `(num_classes * sub_centers, dim)`, class-major: rows
    `c * K .. c * K + K - 1` are class c's sub-centers. pytorch-metric-learning's
    `SubCenterArcFaceLoss.W` is `(dim, num_classes * sub_centers)` with the same class-major
    column order, so `kernel = W.T` (and `W = kernel.T`).

    Units: `margin` in **radians** (default 0.5) as `ArcFace`; PML's `margin=28.6` is in
    degrees: `SubCenterArcFace(n, margin=math.radians(pml_margin))`. `scale` default 64 as
    PML's. Partial FC (`sample_rate < 1`) samples whole classes (all K rows of each).

    Args:
        num_classes: number of classes.
        scale: s, default 64.
        margin: m in radians, default 0.5.
        sub_centers: K, an int >= 1 (default 3, PML's and the paper's).
        sample_rate, seed, kernel_initializer, kernel_regularizer: see `ClassHead`
            (`SparseCentersRegularizer(num_classes, sub_centers)` is PML's sub-center
            regularizer).
    """

    def __init__(
        self,
        num_classes: int,
        scale: float = 64.0,
        margin: float = 0.5,
        sub_centers: int = 3,
        **kwargs: Any,
    ):
        super().__init__(num_classes, scale=scale, margin=margin, **kwargs)
        self.sub_centers = check_num_classes(sub_centers, "sub_centers", minimum=1)

    @property
    def rows_per_class(self) -> int:
        return self.sub_centers

    def cosine(self, embeddings, kernel=None, scaled: bool = False):
        """`(cos, norms)` as `CosineHead.cosine`, with `cos[i, j]` the largest cosine between
        embedding i and the sub-centers of class j (scaled: the largest logit)."""
        cos, norms = super().cosine(embeddings, kernel, scaled=scaled)
        k = self.sub_centers
        if k > 1:
            cos = ops.max(ops.reshape(cos, (-1, cos.shape[-1] // k, k)), axis=-1)
        return cos, norms

    def get_outliers(
        self,
        embeddings: Any,
        labels: Any,
        threshold: float = 75.0,
        return_dominant_centers: bool = True,
        batch_size: int = 4096,
    ):
        """Samples far from their class's dominant sub-center (PML's `get_outliers`).

        For each class, the dominant sub-center is the one nearest (largest cosine) to most
        of the class's samples (ties: the lowest index); a sample is an outlier when its
        angle to its class's dominant sub-center exceeds `threshold` **degrees** (PML's
        unit; the paper's 75). Runs on the host in NumPy (float64), `batch_size` samples at
        a time; not part of a training step.

        Returns:
            `SubCenterOutliers(outliers, dominant_centers)`: the outliers' indices into
            `embeddings`, ascending (PML lists them class by class), and the dominant
            sub-center of each class, `(num_classes, dim)`, as stored (not normalised; PML's
            is `(dim, num_classes)`), a NaN row for a class with no sample (PML leaves that
            column uninitialised). With `return_dominant_centers=False`, the indices only.
        """
        check_range(threshold, "threshold", 0.0, 180.0)
        if not self.built:
            raise ValueError("`get_outliers` needs a built head (call it or fit the model first).")
        x = np.asarray(ops.convert_to_numpy(embeddings), "float64")
        if x.ndim != 2 or x.shape[1] != self.kernel.shape[1]:
            raise ValueError(f"`embeddings` must have shape (n, {self.kernel.shape[1]}); got {x.shape}.")
        y = np.asarray(ops.convert_to_numpy(check_labels(labels, self.num_classes))).astype("int64")
        if len(y) != len(x):
            raise ValueError(f"`labels` and `embeddings` must have the same length; got {len(y)} and {len(x)}.")
        k, dim = self.sub_centers, x.shape[1]
        kernel = np.asarray(ops.convert_to_numpy(self.kernel), "float64")
        centers = _unit_rows(kernel).reshape(self.num_classes, k, dim)
        cos = (
            np.concatenate(
                [
                    np.einsum("nd,nkd->nk", _unit_rows(x[i : i + batch_size]), centers[y[i : i + batch_size]])
                    for i in range(0, len(x), batch_size)
                ]
            )
            if len(x)
            else np.zeros((0, k))
        )
        counts = np.zeros((self.num_classes, k), "int64")
        np.add.at(counts, (y, np.argmax(cos, axis=1)), 1)
        dominant = np.argmax(counts, axis=1)
        own = cos[np.arange(len(y)), dominant[y]]
        outliers = np.flatnonzero(own < math.cos(math.radians(threshold))).astype("int64")
        if not return_dominant_centers:
            return outliers
        rows = kernel.reshape(self.num_classes, k, dim)[np.arange(self.num_classes), dominant]
        rows[counts.sum(axis=1) == 0] = np.nan
        return SubCenterOutliers(outliers, rows.astype(keras.backend.standardize_dtype(self.kernel.dtype)))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "sub_centers": self.sub_centers}
