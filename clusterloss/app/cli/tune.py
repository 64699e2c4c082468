"""`clusterloss tune`: search each loss's options on class-disjoint folds (Optuna)."""

from __future__ import annotations

import argparse

from clusterloss.app.cli.args import add_config_arguments, config_from_args, fail
from clusterloss.app.config import positive_float, positive_int
from clusterloss.app.folds import DEFAULT_FOLDS, VALIDATION_METRICS
from clusterloss.app.recipes import RECIPES


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "tune",
        help="tune each loss's options on held-out training classes (Optuna); print the best as a train command",
        description="Search each LOSS's options (the ranges its recipe declares, `python -m "
        "clusterloss.app.recipes`) with Optuna's TPE sampler and median pruning. The training "
        "classes (--known-classes) split into --folds class folds; a trial trains once per "
        "fold with that fold's classes held out and scores retrieval on them (the mean over "
        "folds); the other classes (the test classes) are never used. The study is kept in "
        "DIR/study.db: the same command resumes a stopped tuning. Writes DIR/tune.json (best "
        "settings and their `clusterloss train` command), trials.png, params.png, tune.html; "
        "`clusterloss compare --tuned DIR` then tests each loss at its best settings.",
    )
    parser.add_argument("--loss", nargs="+", required=True, choices=sorted(RECIPES), metavar="LOSS",
                        help="one or several losses to tune")  # fmt: skip
    parser.add_argument(
        "--trials", type=positive_int, default=20, help="finished (complete or pruned) trials per loss (default 20)"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=None,
        metavar="SECONDS",
        help="no new trial of a loss starts once its finished trials took this long (per loss; a resumed tuning counts the earlier ones)",
    )
    parser.add_argument(
        "--metric",
        default=VALIDATION_METRICS[0],
        choices=VALIDATION_METRICS,
        help=f"the validation retrieval metric maximised (default {VALIDATION_METRICS[0]})",
    )
    parser.add_argument(
        "--folds",
        type=positive_int,
        default=DEFAULT_FOLDS,
        help=f"class folds of the training classes (default {DEFAULT_FOLDS}, Musgrave et al. 2020)",
    )
    parser.add_argument(
        "--space",
        action="append",
        default=[],
        metavar="KEY=LOW:HIGH[:log]",
        help="override or add the range of an option (KEY=A|B for a choice), for every loss that has it; repeatable",
    )
    parser.add_argument("--out", default="runs/tune", help="tuning directory (default runs/tune)")
    add_config_arguments(parser, skip=("val_classes", "val_split", "evaluate", "tensorboard"))
    parser.set_defaults(run=run)
    return [parser]


def run(args: argparse.Namespace) -> int:
    try:
        from clusterloss.app.tune import parse_space, tune
    except ImportError as error:
        fail(args, f"tune needs Optuna ({error}); pip install 'clusterloss[tune]'")
    try:
        space = dict(parse_space(text) for text in args.space)
    except ValueError as error:
        fail(args, f"--space: {error}")
    base = config_from_args(args, args.loss[0], args.seed, "")
    try:
        result = tune(base, args.loss, args.out, trials=args.trials, timeout=args.timeout,
                      metric=args.metric, folds=args.folds, space=space)  # fmt: skip
    except ValueError as error:
        fail(args, str(error))
    for loss, entry in result["losses"].items():
        best = entry.get("best_value")
        print(
            f"{loss}: best {args.metric} {best:.4f} (trial {entry['best_trial']})"
            if best is not None
            else f"{loss}: no complete trial"
        )
        if best is not None:
            print("  " + entry["command"])
    print(f"wrote {args.out}/: tune.json, trials.png, params.png, tune.html, study.db, trials/")
    return 0
