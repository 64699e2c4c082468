"""`clusterloss evaluate RUN_DIR`: recompute every metric, the plots and the report of a run."""

from __future__ import annotations

import argparse
import contextlib
import json

from clusterloss.app.config import verbosity
from clusterloss.app.summaries import summary


def add_run_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a directory from `clusterloss train`")
    parser.add_argument(
        "--verbose",
        default="auto",
        type=verbosity,
        metavar="{auto,0,1,2}",
        help="progress bars: 1 (or auto) a bar, 2 one line per bar, 0 silent",
    )


@contextlib.contextmanager
def locked_run(path: str):
    """`(run_dir, model, data, metrics)` of a run, its directory locked for the block."""
    from clusterloss.app.results import load_run
    from clusterloss.app.rundir import RunDir

    run_dir = RunDir(path)
    with run_dir.lock(create=False):
        yield (run_dir.path, *load_run(run_dir.path))


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
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
    return [parser]


def run(args: argparse.Namespace) -> int:
    from clusterloss.app.evaluate import evaluate_run

    with locked_run(args.run_dir) as (run_dir, model, data, metrics):
        metrics = evaluate_run(run_dir, model, data, metrics, verbose=args.verbose)
    print(json.dumps(summary(metrics, "evaluate"), indent=2))
    print(f"wrote {args.run_dir}/metrics.json, roc.png, neighbors.png, report.html")
    return 0
