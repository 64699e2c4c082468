"""Nearest-neighbour search over labelled embeddings (FAISS, or exact NumPy without it), and
a kNN classifier on top."""

from clusterloss.index.index import Index, faiss_available
from clusterloss.index.knn import KNNClassifier

__all__ = ["Index", "KNNClassifier", "faiss_available"]
