"""Layers that own state: class centers, margin-softmax heads."""

from clusterloss.layers.centers import CenterLoss

__all__ = ["CenterLoss"]
