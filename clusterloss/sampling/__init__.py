"""Batch samplers for metric learning: datasets that `fit` takes as `x`."""

from clusterloss.sampling.m_per_class import MPerClassSampler

__all__ = ["MPerClassSampler"]
