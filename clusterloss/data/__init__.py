"""Labelled data for training and evaluation: the built-in data sets, folders of images
read on demand, `.npz` arrays, and seeded batches."""

from clusterloss.data.batches import Batches
from clusterloss.data.datasets import DATASETS, Dataset, load_dataset
from clusterloss.data.errors import DataError
from clusterloss.data.images import IMAGE_EXTENSIONS, ImageFiles, load_images

__all__ = [
    "DATASETS",
    "IMAGE_EXTENSIONS",
    "Batches",
    "DataError",
    "Dataset",
    "ImageFiles",
    "load_dataset",
    "load_images",
]
