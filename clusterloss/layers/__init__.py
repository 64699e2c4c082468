"""Layers that own state: class centers, classification and margin-softmax heads, proxies;
and the regularizers of their class weights."""

from clusterloss.layers.centers import CenterLoss
from clusterloss.layers.class_head import ClassHead, SoftmaxHead
from clusterloss.layers.margin_heads import (
    ArcFace,
    CosFace,
    CosineHead,
    LargeMarginSoftmax,
    NormFace,
    ProxyAnchorHead,
    ProxyHead,
    ProxyNCAHead,
    SphereFace,
)
from clusterloss.layers.sub_center import SubCenterArcFace, SubCenterOutliers
from clusterloss.layers.training_only import TrainingOnly
from clusterloss.layers.weight_regularizers import (
    CenterInvariantRegularizer,
    RegularFaceRegularizer,
    SparseCentersRegularizer,
    WeightRegularizer,
)

__all__ = [
    "ArcFace",
    "CenterInvariantRegularizer",
    "CenterLoss",
    "ClassHead",
    "CosFace",
    "CosineHead",
    "LargeMarginSoftmax",
    "NormFace",
    "ProxyAnchorHead",
    "ProxyHead",
    "ProxyNCAHead",
    "RegularFaceRegularizer",
    "SoftmaxHead",
    "SparseCentersRegularizer",
    "SphereFace",
    "SubCenterArcFace",
    "SubCenterOutliers",
    "TrainingOnly",
    "WeightRegularizer",
]
