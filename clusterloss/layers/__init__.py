"""Layers that own state: class centers, margin-softmax heads."""

from clusterloss.layers.centers import CenterLoss
from clusterloss.layers.margin_heads import ArcFace, CosFace, CosineHead, NormFace, SphereFace

__all__ = ["CenterLoss", "ArcFace", "CosFace", "CosineHead", "NormFace", "SphereFace"]
