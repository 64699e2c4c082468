"""Which metric keys each summary of a run shows, and in what order: one table for the
numbers `train` and `evaluate` print, the columns of `compare`'s table and the headline of
`report.html`. The keys are those of `metrics.json` (`clusterloss.evaluation.keys`)."""

from __future__ import annotations

from typing import Literal

View = Literal["train", "evaluate", "compare", "headline"]

# key -> the views that show it; the order of this table is the order of every view.
_SHOWN: dict[str, tuple[View, ...]] = {
    "test_accuracy": ("train", "compare", "headline"),
    "knn_accuracy": ("train", "evaluate", "compare"),
    "intra_inter_ratio": ("train", "compare"),
    "precision_at_1": ("train", "evaluate", "compare", "headline"),
    "r_precision": ("evaluate", "compare"),
    "map_at_r": ("train", "evaluate", "compare", "headline"),
    "nmi": ("evaluate", "compare"),
    "best_epoch": ("train",),
    "best_val_map_at_r": ("train",),
    "stopped_epoch": ("train",),
    "unseen_precision_at_1": ("evaluate", "compare"),
    "unseen_r_precision": ("compare",),
    "unseen_map_at_r": ("train", "evaluate", "compare", "headline"),
    "verification_set": ("train", "evaluate"),
    "roc_auc": ("train", "evaluate", "compare", "headline"),
    "eer": ("train", "evaluate", "compare", "headline"),
    "tar_at_far_1e-2": ("evaluate", "compare"),
    "open_set_auroc": ("train", "evaluate", "compare", "headline"),
    "train_seconds": ("train", "compare"),
    "evaluate_seconds": ("train", "evaluate"),
}


def shown(view: View) -> tuple[str, ...]:
    """The keys `view` shows, in order."""
    return tuple(key for key, views in _SHOWN.items() if view in views)


def summary(metrics: dict, view: View) -> dict:
    """The entries of `metrics` that `view` shows, in order (missing ones left out)."""
    return {key: metrics[key] for key in shown(view) if key in metrics}
