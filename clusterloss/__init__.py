"""clusterloss: losses that make features cluster by class, for Keras 3 on TensorFlow, JAX and
PyTorch, and the tools to use those features (kNN, retrieval metrics, index, report).

The public API is re-exported here from one subpackage per concept.
"""

from clusterloss._backend import choose_default_backend

choose_default_backend()

from clusterloss import evaluation, index, layers, losses, miners, tuples  # noqa: E402,F401
from clusterloss.callbacks import CenterLossScheduler, warmup  # noqa: E402,F401
from clusterloss.data import load_dataset  # noqa: E402,F401
from clusterloss.distances import Distance, get_distance  # noqa: E402,F401
from clusterloss.evaluation import (  # noqa: E402,F401
    open_set_metrics,
    retrieval_metrics,
    verification_metrics,
)
from clusterloss.index import Index, KNNClassifier  # noqa: E402,F401
from clusterloss.layers import *  # noqa: E402,F401,F403
from clusterloss.losses import *  # noqa: E402,F401,F403
from clusterloss.miners import *  # noqa: E402,F401,F403
from clusterloss.models import ClusterModel, export_embeddings, make_backbone, serving_model  # noqa: E402,F401
from clusterloss.optimizers import RowSparse, WarmupSchedule, center_optimizer, mark_sparse_rows  # noqa: E402,F401
from clusterloss.sampling import MPerClassSampler  # noqa: E402,F401

__version__ = "0.1.0"

# Own data, backbones and watching retrieval during training.
from clusterloss.data import Batches, DataError, ImageFiles  # noqa: E402,F401
from clusterloss.evaluation import RetrievalEvaluation, embed  # noqa: E402,F401

# Recognition: enrolment, calibrated open-set search.
from clusterloss.gallery import Calibration, CalibrationError, Gallery  # noqa: E402,F401

# The public API: what `from clusterloss import *` gives, pinned by tests/test_public_api.py.
__all__ = sorted(
    {
        *layers.__all__,
        *losses.__all__,
        *miners.__all__,
        *("evaluation", "index", "miners", "tuples"),
        *("CenterLossScheduler", "warmup", "load_dataset", "Distance", "get_distance"),
        *("open_set_metrics", "retrieval_metrics", "verification_metrics", "Index", "KNNClassifier"),
        *("ClusterModel", "export_embeddings", "make_backbone", "serving_model"),
        *("RowSparse", "WarmupSchedule", "center_optimizer", "mark_sparse_rows", "MPerClassSampler"),
        *("Batches", "DataError", "ImageFiles", "RetrievalEvaluation", "embed"),
        *("Calibration", "CalibrationError", "Gallery"),
    }
)
