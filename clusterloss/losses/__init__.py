"""Losses: each a plain function and a `keras.losses.Loss` class, registered for saving."""

from clusterloss.losses.classification import (
    SparseCategoricalFocalCrossentropy,
    SparseLabelSmoothingCrossentropy,
    sparse_categorical_focal_crossentropy,
    sparse_label_smoothing_crossentropy,
)

__all__ = [
    "SparseCategoricalFocalCrossentropy",
    "SparseLabelSmoothingCrossentropy",
    "sparse_categorical_focal_crossentropy",
    "sparse_label_smoothing_crossentropy",
]

from clusterloss.losses.circle import CircleLoss, circle_loss
from clusterloss.losses.contrastive import ContrastiveLoss, contrastive_loss
from clusterloss.losses.cross_batch_memory import CrossBatchMemory
from clusterloss.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loss
from clusterloss.losses.ntxent import NTXentLoss, SupConLoss, ntxent_loss, supcon_loss
from clusterloss.losses.proxy_anchor import ProxyAnchorLoss, proxy_anchor_loss
from clusterloss.losses.triplet import (
    ExplicitTripletLoss,
    TripletMarginLoss,
    explicit_triplet_loss,
    triplet_margin_loss,
)

__all__ += [
    "CircleLoss",
    "ContrastiveLoss",
    "CrossBatchMemory",
    "ExplicitTripletLoss",
    "MultiSimilarityLoss",
    "NTXentLoss",
    "ProxyAnchorLoss",
    "SupConLoss",
    "TripletMarginLoss",
    "circle_loss",
    "contrastive_loss",
    "explicit_triplet_loss",
    "multi_similarity_loss",
    "ntxent_loss",
    "proxy_anchor_loss",
    "supcon_loss",
    "triplet_margin_loss",
]
