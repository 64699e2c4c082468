"""`clusterloss evaluate RUN_DIR`: recompute every metric, the plots and the report of a run."""

from __future__ import annotations

import argparse
import json


def verbosity(text: str):
    """--verbose: "auto" stays, digits become Keras' 0/1/2."""
    return text if text == "auto" else int(text)


def add_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a directory from `clusterloss train`")
    parser.add_argument(
        "--verbose", default="auto", choices=("auto", "0", "1", "2"),
        help="progress bars: 1 (or auto) a bar, 2 one line per bar, 0 silent",
    )  # fmt: skip


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="recompute a run's metrics, plots and report.html from its model",
        description="Embed the run's data set with RUN_DIR/model.keras and compute retrieval "
        "(test vs train, and among unseen classes), verification (ROC AUC, EER, TAR@FAR) and "
        "open-set metrics with cosine similarity; merge them into RUN_DIR/metrics.json and "
        "rewrite embeddings.npz, features.png, history.png, roc.png, neighbors*.png and "
        "report.html.",
    )
    add_run_dir(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from clusterloss.evaluation.run_eval import evaluate_run

    if not (Path(args.run_dir) / "model.keras").is_file():
        raise SystemExit(
            f"clusterloss evaluate: error: {args.run_dir} holds no model.keras "
            "(make one with `clusterloss train --out RUN_DIR`)"
        )
    metrics = evaluate_run(args.run_dir, verbose=verbosity(args.verbose))
    shown = (
        "knn_accuracy", "precision_at_1", "r_precision", "map_at_r", "nmi",
        "unseen_precision_at_1", "unseen_map_at_r", "verification_set", "roc_auc", "eer",
        "tar_at_far_1e-2", "open_set_auroc", "evaluate_seconds",
    )  # fmt: skip
    print(json.dumps({k: metrics[k] for k in shown if k in metrics}, indent=2))
    print(f"wrote {args.run_dir}/metrics.json, roc.png, neighbors.png, report.html")
    return 0
