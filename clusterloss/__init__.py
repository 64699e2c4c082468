"""clusterloss: losses that make features cluster by class, for Keras 3 on TensorFlow, JAX and
PyTorch, and the tools to use those features (kNN, retrieval metrics, index, report).

The public API is re-exported here from one subpackage per concept.
"""

from clusterloss.callbacks import CenterLossScheduler, warmup
from clusterloss.layers import *  # noqa: F401,F403
from clusterloss.losses import *  # noqa: F401,F403
from clusterloss.models import ClusterModel
from clusterloss.optimizers import center_optimizer

__version__ = "0.1.0"
