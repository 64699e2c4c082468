"""Evaluation of embeddings (NumPy arrays): retrieval metrics with PML's definitions,
verification (ROC, EER, TAR@FAR), open-set recognition, cluster statistics, and the
`RetrievalEvaluation` callback that logs them during training. One key vocabulary for all
(`clusterloss.evaluation.keys`)."""

from clusterloss.evaluation.callback import RetrievalEvaluation
from clusterloss.evaluation.embed import embed
from clusterloss.evaluation.embedding_stats import intra_inter_ratio, knn_accuracy
from clusterloss.evaluation.keys import PML_NAMES, far_key
from clusterloss.evaluation.open_set import class_centers, open_set_metrics, open_set_scores
from clusterloss.evaluation.retrieval import METRIC_NAMES, Ranking, cluster_labels, register_metric, retrieval_metrics
from clusterloss.evaluation.verification import (
    impostor_threshold,
    make_pairs,
    pair_scores,
    roc_curve,
    roc_metrics,
    save_roc_plot,
    threshold_at_far,
    verification_metrics,
    verification_scores,
)

__all__ = [
    "METRIC_NAMES",
    "PML_NAMES",
    "Ranking",
    "RetrievalEvaluation",
    "class_centers",
    "cluster_labels",
    "embed",
    "far_key",
    "impostor_threshold",
    "intra_inter_ratio",
    "knn_accuracy",
    "make_pairs",
    "open_set_metrics",
    "open_set_scores",
    "pair_scores",
    "register_metric",
    "retrieval_metrics",
    "roc_curve",
    "roc_metrics",
    "save_roc_plot",
    "threshold_at_far",
    "verification_metrics",
    "verification_scores",
]
