"""Models that train embeddings with plain `fit(x, y)`."""

from clusterloss.models.cluster_model import ClusterModel

__all__ = ["ClusterModel"]
from clusterloss.models.backbones import make_backbone

__all__ += ["make_backbone"]
