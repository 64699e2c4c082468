"""Models that train embeddings with plain `fit(x, y)`."""

from clusterloss.models.cluster_model import ClusterModel

__all__ = ["ClusterModel"]
from clusterloss.models.backbones import make_backbone

__all__ += ["make_backbone"]
from clusterloss.models.export import Preprocessing, export_embeddings, serving_model

__all__ += ["Preprocessing", "export_embeddings", "serving_model"]
