"""Data sets and batch samplers for training and evaluation."""

from clusterloss.data.datasets import DATASETS, Dataset, load_dataset

__all__ = ["DATASETS", "Dataset", "load_dataset"]
