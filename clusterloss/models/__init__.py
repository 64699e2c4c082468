"""Models that train embeddings with plain `fit(x, y)`."""

from clusterloss.models.backbones import make_backbone
from clusterloss.models.cluster_model import ClusterModel
from clusterloss.models.export import Preprocessing, export_embeddings, serving_model

__all__ = ["ClusterModel", "Preprocessing", "export_embeddings", "make_backbone", "serving_model"]
