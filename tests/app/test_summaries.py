"""The one table of which metric keys each summary shows (train, evaluate, compare, report)."""

from __future__ import annotations

from clusterloss.app.report.html import GROUPS
from clusterloss.app.summaries import shown, summary


def test_every_shown_key_is_a_metric_the_report_groups():
    patterns = [key for _, _, keys in GROUPS for key in keys]

    def grouped(key: str) -> bool:
        return any(key == p or (p.endswith("*") and key.startswith(p[:-1])) for p in patterns)

    for view in ("train", "evaluate", "compare", "headline"):
        keys = shown(view)
        assert keys and all(grouped(k) for k in keys), view


def test_summary_keeps_the_views_order_and_leaves_out_missing_keys():
    metrics = {"eer": 0.1, "map_at_r": 0.5, "loss": "center", "test_accuracy": 0.9}
    assert list(summary(metrics, "headline")) == ["test_accuracy", "map_at_r", "eer"]
    assert summary(metrics, "evaluate") == {"map_at_r": 0.5, "eer": 0.1}


def test_features_plot_leaves_out_the_center_of_a_class_without_training_rows(tmp_path):
    """`--train-limit` can leave a class without training rows: its mean is NaN, and the
    plot draws the other centers (it raised in the projection before)."""
    import numpy as np

    from clusterloss.app.report.plots import plot_features

    rng = np.random.default_rng(0)
    centers = np.array([[0, 0, 0], [5, 5, 5], [np.nan] * 3], "float32")
    labels = np.repeat([0, 1, 2], 10)
    points = centers[[0, 1, 0]][labels] + rng.normal(size=(30, 3)).astype("float32")
    plot_features(points, labels, tmp_path / "features.png", centers)
    assert (tmp_path / "features.png").stat().st_size > 1000
