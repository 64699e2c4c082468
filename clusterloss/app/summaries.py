"""How a run is summed up: its title (plots and report), and which metric keys each summary
shows, in what order: one table for the numbers `train` and `evaluate` print, the columns of
`compare`'s table and the headline of `report.html`. The keys are those of `metrics.json`
(`clusterloss.evaluation.keys`)."""

from __future__ import annotations

from typing import Any, Literal

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


def run_title(metrics: dict[str, Any]) -> str:
    """`'photos / arcface / 128-D / mobilenetv3small, imagenet weights / 224x224 / seed 0'`
    (`'digits / center / 2-D / mlp, random init / 8x8 / seed 0'`),
    the title of a run's plots and report (trunk and image size from `metrics["resolved"]`,
    where the run recorded them)."""
    resolved = metrics.get("resolved") or {}
    parts = [str(metrics.get("dataset")), str(metrics.get("loss")), f"{metrics.get('embedding_dim')}-D"]
    if resolved.get("backbone"):
        weights = resolved.get("weights", "none")
        parts.append(f"{resolved['backbone']}, " + ("random init" if weights == "none" else f"{weights} weights"))
    if resolved.get("image_size"):
        parts.append(str(resolved["image_size"]))
    return " / ".join([*parts, f"seed {metrics.get('seed')}"])
