"""Margin loss (Wu et al. 2017) with a fixed beta (a loss) or a learned one (a layer)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from clusterloss._registry import register
from clusterloss._validation import (
    check_embeddings,
    check_labels,
    check_positive_int,
    check_range,
    check_same_batch,
)
from clusterloss.distances import get_distance
from clusterloss.losses.base import MetricLoss
from clusterloss.tuples.pairs import batch_share, get_miner, pair_batch
from clusterloss.tuples.triplets import select_triplets


def _check_options(margin, nu, beta):
    check_range(margin, "margin", 0.0)
    check_range(nu, "nu", 0.0)
    check_range(beta, "beta")


def margin_loss(
    y_true,
    y_pred,
    margin: float = 0.2,
    nu: float = 0.0,
    beta: Any = 1.2,
    learn_beta: bool = False,
    distance: Any = "euclidean",
    miner: Any = None,
    ref_embeddings=None,
    ref_labels=None,
    ref_mask=None,
):
    """Margin loss (Wu, Manmatha, Smola & Krähenbühl, "Sampling Matters in Deep Embedding
    Learning", ICCV 2017), as PML's `MarginLoss`. For each triplet `(a, p, n)`:

        l_apn = [d_ap - beta_a + margin]_+ + [beta_a - d_an + margin]_+

    (with a similarity, `[beta_a - s_ap + margin]_+ + [s_an - beta_a + margin]_+`). The batch
    value is the sum over the triplets divided by the number of non-zero terms (both halves
    counted apart; PML's `DivisorReducer`), and with `learn_beta` PML's beta regularization
    `nu * beta` is added: `nu * beta` for one global beta, `nu * sum_t beta_{a_t} / divisor`
    for one beta per class. `beta` is a number, or a tensor of shape `(1,)` or
    `(num_classes,)` (one beta per class, indexed by the anchor's label; labels must then be
    `< num_classes`, else the loss is NaN); `MarginLossLayer` holds a trainable one.

    Triplets: all valid triplets, or those a `miner` selects (a pair miner's pairs joined by
    their anchor, as PML); the loss is a sum of pair terms, so it is computed from how many
    triplets hold each pair, in O(B^2) memory. PML's `triplets_per_anchor=<int>` (random
    sampling) is not offered: use a miner (e.g. `DistanceWeightedMiner`, the paper's). No
    triplet, or no non-zero term: 0 with zero gradients (plus `nu * beta` for a global learned
    beta when there are triplets, as PML). References as PML's `ref_emb`. Defaults are PML's:
    `margin=0.2`, `beta=1.2`, `nu=0` on L2-normalised Euclidean distances. NaN/inf
    embeddings give NaN.
    """
    check_range(margin, "margin", 0.0)
    check_range(nu, "nu", 0.0)
    distance = get_distance(distance)
    miner = get_miner(miner)
    if isinstance(beta, (int, float, list, tuple, np.ndarray, np.number)):
        beta = np.reshape(np.asarray(beta, "float64"), (-1,))  # exact in float64 later
    else:  # a tensor or a layer's variable
        beta = ops.reshape(beta, (-1,))
    classes = beta.shape[0]
    per_class = classes is None or classes > 1
    if per_class and isinstance(classes, int):  # host labels: a clear error
        check_labels(y_true, num_classes=classes, name="y_true")
    pairs = pair_batch(y_true, y_pred, ref_embeddings, ref_labels, ref_mask)
    mat = pairs.matrix(distance)
    dtype = mat.dtype
    beta = ops.cast(beta, dtype)
    if per_class:
        labels = pairs.labels
        in_range = ops.all(ops.logical_and(labels >= 0, labels < ops.shape(beta)[0]))
        index = ops.clip(labels, 0, ops.shape(beta)[0] - 1)
        beta_a = ops.take(beta, index)  # the anchor's beta
    else:
        beta_a = ops.broadcast_to(beta, ops.shape(mat)[:1])
    selected = select_triplets(miner, pairs, distance)
    pos_count, neg_count = selected.pair_counts(dtype)  # triplets holding each pair
    pos_loss = ops.relu(distance.margin(mat, beta_a[:, None]) + margin)
    neg_loss = ops.relu(distance.margin(beta_a[:, None], mat) + margin)
    divisor = ops.stop_gradient(
        ops.sum(ops.where(pos_loss > 0, pos_count, 0.0)) + ops.sum(ops.where(neg_loss > 0, neg_count, 0.0))
    )
    per_anchor = ops.sum(pos_count * pos_loss, axis=1) + ops.sum(neg_count * neg_loss, axis=1)
    if learn_beta and per_class:  # PML: sum over triplets of nu * beta_anchor / divisor
        per_anchor = per_anchor + nu * beta_a * ops.sum(pos_count, axis=1)
    values = batch_share(per_anchor, divisor)
    if learn_beta and not per_class:  # PML: nu * beta, already reduced, if any triplet
        any_triplet = ops.cast(ops.sum(pos_count) > 0, dtype)
        values = values + nu * beta[0] * any_triplet
    if per_class:
        values = ops.where(in_range, values, float("nan"))
    return pairs.guard(values)


@register
class MarginLoss(MetricLoss):
    """Margin loss with a fixed beta, equal to PML's `MarginLoss(margin, nu, beta)`; see
    `margin_loss`. For a learned beta (PML's `learn_beta=True`) use the layer
    `MarginLossLayer`: a Keras loss cannot hold trainable state on every backend.

    Example:
        model.compile("adam", loss=MarginLoss(margin=0.2, beta=1.2,
                                              miner=DistanceWeightedMiner(seed=0)))

    Args:
        margin: the margin around beta, >= 0 (default 0.2, PML's).
        nu: the beta regularization weight, >= 0; used only with a learned beta (PML).
        beta: the boundary between positive and negative distances (default 1.2, PML's).
        triplets_per_anchor: only `"all"` (PML's default); use a miner to sample.
        learn_beta: must be False here (see `MarginLossLayer`).
        num_classes: accepted for PML's signature; with a fixed beta, one beta per class
            equals one global beta.
        distance: default L2-normalised Euclidean, as PML.
        miner: a pair or triplet miner, or `None` for all triplets.
        embedding_regularizer, embedding_reg_weight: see `LpRegularizer`.
    """

    def __init__(
        self,
        margin: float = 0.2,
        nu: float = 0.0,
        beta: float = 1.2,
        triplets_per_anchor: str = "all",
        learn_beta: bool = False,
        num_classes: int | None = None,
        distance: Any = "euclidean",
        miner: Any = None,
        embedding_regularizer: Any = None,
        embedding_reg_weight: float = 1.0,
        reduction: str | None = "sum_over_batch_size",
        name: str = "margin_loss",
        dtype: str | None = None,
    ):
        _check_options(margin, nu, beta)
        if triplets_per_anchor != "all":
            raise ValueError(
                "`triplets_per_anchor` must be 'all' (random triplet sampling needs dynamic "
                f"shapes; use a miner such as DistanceWeightedMiner); got {triplets_per_anchor!r}."
            )
        if learn_beta:
            raise ValueError(
                "`learn_beta=True` needs trainable state, which a Keras loss cannot hold on "
                "every backend: use `MarginLossLayer(learn_beta=True, ...)` as a loss layer "
                "(e.g. `ClusterModel(backbone, loss_layers=[MarginLossLayer()])`)."
            )
        self.num_classes = None if num_classes is None else check_positive_int(num_classes, "num_classes")
        super().__init__(
            margin_loss,
            reduction=reduction,
            name=name,
            dtype=dtype,
            embedding_regularizer=embedding_regularizer,
            embedding_reg_weight=embedding_reg_weight,
            margin=float(margin),
            nu=float(nu),
            beta=float(beta),
            distance=distance,
            miner=miner,
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "num_classes": self.num_classes}


@register
class MarginLossLayer(keras.layers.Layer):
    """The margin loss with a learned beta (PML's `MarginLoss(learn_beta=True)`): the beta
    (one, or one per class with `num_classes`) is a trainable weight of this layer, trained
    by the model's optimizer with the rest of the model; the loss is `margin_loss`, with PML's
    `nu * beta` regularization added.

    `call(embeddings, labels, training=False)` returns one value per sample, shape `(batch,)`,
    whose mean is PML's loss (value and gradient, for the embeddings and for beta). This is
    the per-sample loss-layer protocol of `CenterLoss` and `CrossBatchMemory`: give it to a
    model that adds such layers to its loss (`ClusterModel(backbone,
    loss_layers=[MarginLossLayer(...)])`, compiled with no `loss`), or call it in your own
    `compute_loss`. The split: the loss's arithmetic is the plain function `margin_loss`;
    only beta, the state, lives here (a Keras loss cannot hold trainable state on JAX).

    The paper (Wu et al. 2017) learns beta with a 10x larger learning rate than the network;
    `keras.optimizers.MultiOptimizer` with an `OptimizerMap` on `".*beta"` does that.

    Args:
        margin, nu, beta: as `MarginLoss` (`beta` is the initial value).
        learn_beta: False freezes beta (then this is `MarginLoss` as a layer).
        num_classes: one beta per class (labels must be `< num_classes`), or `None` for one
            global beta (PML's default). This layer does not take `num_classes` from the model.
        distance, miner: as `MarginLoss`.
    """

    def __init__(
        self,
        margin: float = 0.2,
        nu: float = 0.0,
        beta: float = 1.2,
        learn_beta: bool = True,
        num_classes: int | None = None,
        distance: Any = "euclidean",
        miner: Any = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        _check_options(margin, nu, beta)
        self.margin, self.nu, self.initial_beta = float(margin), float(nu), float(beta)
        self.learn_beta = bool(learn_beta)
        # Not named `num_classes`: ClusterModel would fill it in and turn a global beta into
        # one per class.
        self.beta_classes = None if num_classes is None else check_positive_int(num_classes, "num_classes")
        self.distance = get_distance(distance)
        self.miner = get_miner(miner)
        self.beta = self.add_weight(
            shape=(self.beta_classes or 1,),
            name="beta",
            initializer=keras.initializers.Constant(self.initial_beta),
            trainable=self.learn_beta,
            autocast=False,
        )  # float32 beta under mixed precision

    def build(self, embeddings_shape=None, labels_shape=None):
        self.built = True

    def call(self, embeddings, labels, training: bool = False):
        check_embeddings(embeddings, allow_empty=False)
        check_same_batch(labels, embeddings)
        labels = check_labels(labels, num_classes=self.beta_classes)
        return margin_loss(
            labels,
            embeddings,
            margin=self.margin,
            nu=self.nu,
            beta=self.beta,
            learn_beta=self.learn_beta,
            distance=self.distance,
            miner=self.miner,
        )

    def compute_output_shape(self, embeddings_shape, labels_shape=None):
        return (embeddings_shape[0],)

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "margin": self.margin,
            "nu": self.nu,
            "beta": self.initial_beta,
            "learn_beta": self.learn_beta,
            "num_classes": self.beta_classes,
            "distance": self.distance.get_config(),
            "miner": None if self.miner is None else keras.saving.serialize_keras_object(self.miner),
        }


__all__ = ["MarginLoss", "MarginLossLayer", "margin_loss"]
