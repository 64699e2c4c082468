"""Nearest-neighbour search over labelled embeddings (FAISS, or exact NumPy without it), and
a kNN classifier on top."""

from clusterloss.index.index import Index, drop_self_matches, faiss_available
from clusterloss.index.knn import KNNClassifier

__all__ = ["Index", "KNNClassifier", "drop_self_matches", "faiss_available"]
