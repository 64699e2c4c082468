"""Instance loss."""

from __future__ import annotations

from clusterloss import _native
from clusterloss._registry import register
from clusterloss._validation import check_range
from clusterloss.distances import l2_normalize, matmul_t
from clusterloss.losses.base import MetricLoss, validated
from clusterloss.tuples.pairs import pair_batch


def _check(gamma):
    check_range(gamma, "gamma", 0.0, low_open=True)


@validated(_check)
def instance_loss(y_true, y_pred, gamma: float = 64.0):
    """Instance loss (Zheng, Zheng, Garrett, Yang, Xu & Shen, "Dual-Path Convolutional
    Image-Text Embeddings with Instance Loss", ACM TOMM 2020), as PML's `InstanceLoss`, one
    value per sample: a softmax cross-entropy whose logits are the scaled cosines of the
    sample to every sample of the batch (itself included),

        l_i = -log softmax_j(gamma * s_ij)[r_i]

    where the target `r_i` is the rank of `y_i` among the batch's distinct labels (PML's
    `torch.unique(labels, return_inverse=True)`): a column of the batch, i.e. a sample. In the
    paper's setting every sample is its own class; numbered in batch order (`y_i = i`), the
    target is the sample itself (instance discrimination). With class labels the target is
    the sample at position `r_i` of the batch, whatever its class: every sample of class `c`
    is pulled toward that one sample and pushed from all the others, its classmates
    included. This is PML's definition, kept for equality; for class-level clustering prefer
    `NCALoss` or `SupConLoss`. The batch value is the mean over the samples (PML's
    `MeanReducer`). `gamma` 64 (PML's default). No miner and no reference embeddings (PML
    accepts neither). NaN/inf embeddings give NaN.
    """
    pairs = pair_batch(y_true, y_pred)
    unit = l2_normalize(pairs.embeddings)
    # gamma on the (batch, dim) side of the product: one (batch, batch) pass less each way.
    # No finite check is needed: a NaN/inf embedding makes a NaN column, in every row.
    return _native.cross_entropy_rows(matmul_t(gamma * unit, unit), _native.label_ranks(pairs.labels))


@register
class InstanceLoss(MetricLoss, fn=instance_loss):
    """Instance loss, equal to PML's `InstanceLoss(gamma)`; see `instance_loss` (and its
    note on class labels).

    Example (instance discrimination: each sample its own id, in batch order):
        loss = InstanceLoss(gamma=64.0)
        value = loss(np.arange(batch_size), encoder(x_batch))

    Args:
        gamma: the cosine scale, > 0 (default 64, PML's).
        embedding_regularizer, embedding_reg_weight: see `LpRegularizer`.
    """


__all__ = ["InstanceLoss", "instance_loss"]
