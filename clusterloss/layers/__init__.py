"""Layers that own state: class centers, margin-softmax heads, proxies."""

from clusterloss.layers.centers import CenterLoss
from clusterloss.layers.margin_heads import (
    ArcFace,
    CosFace,
    CosineHead,
    NormFace,
    ProxyAnchorHead,
    SphereFace,
)

__all__ = ["ArcFace", "CenterLoss", "CosFace", "CosineHead", "NormFace", "ProxyAnchorHead", "SphereFace"]
