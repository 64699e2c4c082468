"""`RUN_DIR/report.html`: one self-contained page about a run (images embedded as base64
data URIs, inline CSS, no script and no external URL), made from the files of the run
directory: metrics.json and the PNG plots."""

from __future__ import annotations

import base64
import datetime
import html
import json
import math
from pathlib import Path
from typing import Any

from clusterloss.app.rundir import write_text
from clusterloss.app.summaries import run_title, shown

# (title, note, keys) of the metric tables; keys ending in "*" match by prefix.
GROUPS = (
    ("Classification (known classes, test set)",
     "Softmax-head accuracy (if the model has a head), 1-NN accuracy (Euclidean) against the "
     "training embeddings, and the intra/inter-class distance ratio (smaller is tighter).",
     ("test_accuracy", "knn_accuracy", "intra_inter_ratio")),
    ("Retrieval (test queries, training images as gallery)",
     "Cosine similarity. R-precision and MAP@R use each query's R same-class gallery images; "
     "NMI/AMI compare a k-means clustering of the test embeddings with the labels.",
     ("precision_at_1", "r_precision", "map_at_r", "mean_average_precision",
      "mean_reciprocal_rank", "recall_at_*", "nmi", "ami")),
    ("Retrieval among classes never seen in training",
     "Each unseen-class image queries all the other unseen-class images (leave-one-out): "
     "the class-disjoint numbers.",
     ("unseen_*",)),
    ("Verification (pairs: same class or not?)",
     "Every pair of images of the set named by verification_set (unseen classes where the "
     "data set has them); known_* is the same on the test set of the known classes. "
     "TAR at a FAR needs at least 1/FAR impostor pairs (else n/a).",
     ("verification_set", "roc_auc", "eer", "eer_threshold", "tar_at_far_*",
      "threshold_at_far_*", "num_genuine_pairs", "num_impostor_pairs", "known_*")),
    ("Open set (known test queries vs unseen-class queries)",
     "Score: cosine similarity of a query to its nearest training image. AUROC of rejecting "
     "the unseen queries; the rates use the threshold that accepts 95% of the known queries.",
     ("open_set_*", "closed_set_accuracy", "num_known")),
    ("Validation during training",
     "Retrieval among the validation images (leave-one-out), logged by RetrievalEvaluation; "
     "the model kept is the one of best_epoch.",
     ("best_epoch", "best_val_*", "stopped_epoch", "num_val")),
    ("Run",
     "",
     ("dataset", "loss", "embedding_dim", "epochs", "seed", "metric", "backend", "num_classes", "num_train", "num_test", "num_unknown",
      "num_unknown_classes", "train_seconds", "evaluate_seconds")),
)  # fmt: skip

# (file, caption) of the figures, in page order; features and ROC side by side.
FIGURES = (
    ("history.png", "Training curves: loss parts (left) and metrics (right) per epoch."),
    ("features.png", "Test-set embeddings (PCA above 2-D); crosses: class centers."),
    ("roc.png", "Verification ROC (TAR against FAR, log scale); dotted lines at FAR 1e-1, 1e-2, 1e-3."),
    (
        "neighbors.png",
        "Test queries (blue frame) and their nearest training images: green "
        "frame = same class, red = another class; the number is the cosine "
        "similarity.",
    ),
    (
        "neighbors_unseen.png",
        "Unseen-class queries and their nearest other unseen-class images (green = same person/class).",
    ),
)

_SKIP = {"config", "history"}

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0;
       color: #1d1d1f; background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 1.6em; margin: 0 0 4px; }
h2 { font-size: 1.2em; margin: 32px 0 8px; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
h3 { font-size: 1em; margin: 20px 0 4px; }
p.note, p.sub { color: #555; font-size: 0.9em; margin: 2px 0 8px; }
table { border-collapse: collapse; font-size: 0.9em; margin: 4px 0 12px; }
th, td { border: 1px solid #ddd; padding: 3px 10px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; font-family: ui-monospace,
         SFMono-Regular, Menlo, monospace; }
th { background: #f0f2f5; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(330px, 1fr));
        gap: 4px 24px; }
figure { margin: 12px 0 24px; }
.pair { display: flex; flex-wrap: wrap; gap: 0 24px; align-items: flex-start; }
.pair figure { flex: 1 1 420px; }
figure img { max-width: 100%; border: 1px solid #e3e3e3; }
figcaption { color: #555; font-size: 0.9em; margin-top: 4px; }
.missing { color: #a33; }
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if not math.isfinite(value):
            return "n/a"
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.4g}"
        return f"{value:.4f}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def _matches(key: str, pattern: str) -> bool:
    return key.startswith(pattern[:-1]) if pattern.endswith("*") else key == pattern


def _table(rows: list[tuple[str, Any]]) -> str:
    cells = []
    for key, value in rows:
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        css = ' class="num"' if numeric else ""
        cells.append(f"<tr><th>{html.escape(key)}</th><td{css}>{html.escape(_fmt(value))}</td></tr>")
    return "<table>" + "".join(cells) + "</table>"


def _metric_sections(metrics: dict[str, Any]) -> str:
    scalars = {k: v for k, v in metrics.items() if k not in _SKIP and not isinstance(v, dict)}
    used: set[str] = set()
    parts = []
    for title, note, patterns in GROUPS:
        rows = []
        for pattern in patterns:
            for key in scalars:
                if key not in used and _matches(key, pattern):
                    rows.append((key, scalars[key]))
                    used.add(key)
        if rows:
            note_html = f'<p class="note">{html.escape(note)}</p>' if note else ""
            parts.append(f"<div><h3>{html.escape(title)}</h3>{note_html}{_table(rows)}</div>")
    rest = [(k, v) for k, v in scalars.items() if k not in used]
    if rest:
        parts.append(f"<div><h3>Other</h3>{_table(rest)}</div>")
    return '<div class="grid">' + "".join(parts) + "</div>"


def _settings(metrics: dict[str, Any]) -> str:
    """The run's config; a value it left to a default shows what the run used
    (metrics.json "resolved"), marked "(default)"."""
    config = dict(metrics.get("config") or {})
    resolved = metrics.get("resolved") or {}
    options = config.pop("options", None) or {}
    rows = []
    for key, value in config.items():
        used = resolved.get(key)
        if used is not None and (value is None or (key == "backbone" and value != used)):
            value = f"{_fmt(used)} ({'auto' if key == 'backbone' else 'default'})"
        rows.append((key, value))
    rows += [(f"options.{k}", v) for k, v in options.items()]
    if not rows:
        return '<p class="missing">No settings in metrics.json.</p>'
    return _table(rows)


def _figure(run_dir: Path, name: str, caption: str) -> str:
    path = run_dir / name
    if not path.is_file():
        return ""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure id="{html.escape(Path(name).stem)}"><img alt="{html.escape(name)}" '
        f'src="data:image/png;base64,{data}"><figcaption>{html.escape(name)}: '
        f"{html.escape(caption)}</figcaption></figure>"
    )


def render_report(run_dir: str | Path, metrics: dict[str, Any] | None = None) -> str:
    """The HTML text of a run's report (see `write_report`)."""
    run_dir = Path(run_dir)
    if metrics is None:
        metrics = json.loads((run_dir / "metrics.json").read_text())
    title = run_title(metrics)
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    figures = {name: _figure(run_dir, name, caption) for name, caption in FIGURES}
    pair = figures.pop("features.png") + figures.pop("roc.png")
    figures_html = figures.pop("history.png") + (f'<div class="pair">{pair}</div>' if pair else "")
    figures_html += "".join(figures.values())
    if not figures_html:
        figures_html = '<p class="missing">No plots in the run directory.</p>'
    headline = []
    for key in shown("headline"):
        if metrics.get(key) is not None:
            headline.append(f"{key} <b>{html.escape(_fmt(metrics[key]))}</b>")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>clusterloss run: {html.escape(title)}</title>
<style>{CSS}</style>
</head>
<body>
<main>
<h1>clusterloss run: {html.escape(title)}</h1>
<p class="sub">{html.escape(str(run_dir))} &middot;
backend {html.escape(str(metrics.get("backend", "?")))}
&middot; report written {now}</p>
<p>{" &middot; ".join(headline)}</p>
<h2>Metrics</h2>
{_metric_sections(metrics)}
<h2>Figures</h2>
{figures_html}
<h2>Settings</h2>
<p class="note">The run's TrainConfig (metrics.json "config"): <code>clusterloss train</code>
with these values reproduces it.</p>
{_settings(metrics)}
</main>
</body>
</html>
"""


def write_report(run_dir: str | Path, metrics: dict[str, Any] | None = None) -> Path:
    """Write `RUN_DIR/report.html`: the settings, the metrics (grouped, with what each group
    measures), and the run's plots embedded as PNG data URIs (history.png, features.png,
    roc.png, neighbors.png, neighbors_unseen.png: those present). `metrics`: the contents
    of metrics.json (read from it when None). Returns the path."""
    return write_text(Path(run_dir) / "report.html", render_report(run_dir, metrics))
