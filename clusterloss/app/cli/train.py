"""`clusterloss train`: train one model and write its run directory."""

from __future__ import annotations

import argparse
import dataclasses
import json

from clusterloss.app.cli.args import (
    add_config_arguments,
    add_recipe_arguments,
    config_from_args,
    recipe_values,
)
from clusterloss.app.summaries import summary


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "train",
        help="train a model and write model.keras, metrics.json, plots and report.html",
        description="Train on a data set (built-in, a folder of class sub-folders, or an .npz) "
        "with one loss; write RUN_DIR/model.keras (the best epoch's by validation MAP@R when "
        "there is a validation split), metrics.json, embeddings.npz, features.png and "
        "history.png, then evaluate it (retrieval, verification, open set: metrics.json, "
        "roc.png, neighbors.png, report.html) unless --no-evaluate.",
    )
    parser.add_argument("--out", default="", help="run directory (default runs/DATA-LOSS-sSEED)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace the run in --out (deletes its files, index/ included)"
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue the run stopped in --out (run the same command again)"
    )
    add_recipe_arguments(parser)
    add_config_arguments(parser)
    parser.set_defaults(run=run)
    return [parser]


def run(args: argparse.Namespace) -> int:
    from clusterloss.app.config import resolve_config
    from clusterloss.app.devices import initialize
    from clusterloss.app.runs import train

    if args.overwrite and args.resume:
        from clusterloss.app.cli.args import fail

        fail(args, "--overwrite and --resume exclude each other")
    process = initialize()  # several processes: before anything computes
    config = config_from_args(args, args.loss, args.seed, args.out, recipe_values(args))
    if process:  # every process trains and evaluates the same run; process 0 writes --out
        config = dataclasses.replace(config, out=f"{config.run_dir()}.process-{process}")
    config = resolve_config(config)
    metrics = train(config, overwrite=args.overwrite, resume=args.resume)
    out = config.run_dir()
    print(json.dumps(summary(metrics, "train"), indent=2))
    print(f"wrote {out}/: " + ", ".join(sorted(p.name for p in out.iterdir() if not p.name.startswith("."))))
    return 0
