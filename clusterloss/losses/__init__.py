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

from clusterloss.losses.angular import AngularLoss, angular_loss
from clusterloss.losses.base import LossFunctionWrapper, MetricLoss
from clusterloss.losses.circle import CircleLoss, circle_loss
from clusterloss.losses.contrastive import ContrastiveLoss, contrastive_loss
from clusterloss.losses.cross_batch_memory import CrossBatchMemory
from clusterloss.losses.fast_ap import FastAPLoss, fast_ap_loss
from clusterloss.losses.instance import InstanceLoss, instance_loss
from clusterloss.losses.lifted_structure import (
    GeneralizedLiftedStructureLoss,
    LiftedStructureLoss,
    generalized_lifted_structure_loss,
    lifted_structure_loss,
)
from clusterloss.losses.margin import MarginLoss, MarginLossLayer, margin_loss
from clusterloss.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loss
from clusterloss.losses.nca import NCALoss, ProxyNCALoss, nca_loss, proxy_nca_loss
from clusterloss.losses.ntxent import NTXentLoss, SupConLoss, ntxent_loss, supcon_loss
from clusterloss.losses.proxy_anchor import ProxyAnchorLoss, proxy_anchor_loss
from clusterloss.losses.regularizers import LpRegularizer
from clusterloss.losses.triplet import (
    ExplicitTripletLoss,
    TripletMarginLoss,
    explicit_triplet_loss,
    triplet_margin_loss,
)
from clusterloss.losses.tuplet_margin import TupletMarginLoss, tuplet_margin_loss

__all__ += [
    "AngularLoss",
    "CircleLoss",
    "ContrastiveLoss",
    "CrossBatchMemory",
    "ExplicitTripletLoss",
    "FastAPLoss",
    "GeneralizedLiftedStructureLoss",
    "InstanceLoss",
    "LiftedStructureLoss",
    "LossFunctionWrapper",
    "LpRegularizer",
    "MarginLoss",
    "MarginLossLayer",
    "MetricLoss",
    "MultiSimilarityLoss",
    "NCALoss",
    "NTXentLoss",
    "ProxyAnchorLoss",
    "ProxyNCALoss",
    "SupConLoss",
    "TripletMarginLoss",
    "TupletMarginLoss",
    "angular_loss",
    "circle_loss",
    "contrastive_loss",
    "explicit_triplet_loss",
    "fast_ap_loss",
    "generalized_lifted_structure_loss",
    "instance_loss",
    "lifted_structure_loss",
    "margin_loss",
    "multi_similarity_loss",
    "nca_loss",
    "ntxent_loss",
    "proxy_anchor_loss",
    "proxy_nca_loss",
    "supcon_loss",
    "triplet_margin_loss",
    "tuplet_margin_loss",
]
