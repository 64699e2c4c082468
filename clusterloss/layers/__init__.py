"""Layers that own state: class centers, classification and margin-softmax heads, proxies."""

from clusterloss.layers.centers import CenterLoss
from clusterloss.layers.class_head import ClassHead, SoftmaxHead
from clusterloss.layers.margin_heads import (
    ArcFace,
    CosFace,
    CosineHead,
    NormFace,
    ProxyAnchorHead,
    SphereFace,
)

__all__ = [
    "ArcFace",
    "CenterLoss",
    "ClassHead",
    "CosFace",
    "CosineHead",
    "NormFace",
    "ProxyAnchorHead",
    "SoftmaxHead",
    "SphereFace",
]
