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
