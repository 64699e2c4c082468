"""`clusterloss compare`: train several settings with one budget and seeds, tabulate."""

from __future__ import annotations

import argparse
from pathlib import Path

from clusterloss.app.cli.args import add_config_arguments, config_from_args, fail
from clusterloss.app.config import class_ids


def add_parser(subparsers) -> list[argparse.ArgumentParser]:
    parser = subparsers.add_parser(
        "compare",
        help="train several losses with the same backbone, budget and seeds; write a table",
        description="Train every SETTING (LOSS or LOSS:name=value,...; the names are the loss's "
        "options, as in `clusterloss train --help`) for every seed with the same backbone, "
        "optimizer and budget; write DIR/results.md, results.csv, comparison.png, features.png "
        "and one run directory per (setting, seed) in DIR/runs/.",
    )
    parser.add_argument(
        "settings", nargs="*", metavar="SETTING", help="e.g. softmax center:center_weight=0.1 triplet:margin=0.1"
    )
    parser.add_argument(
        "--tuned",
        metavar="DIR",
        help="also each loss of the tuning in DIR (`clusterloss tune --out DIR`) at its best settings",
    )
    parser.add_argument("--seeds", type=class_ids, default=[0], help="e.g. 0-2 or 0,1,2")
    parser.add_argument("--out", default="runs/compare", help="output directory")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read runs whose metrics.json exists instead of training them again",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace existing runs in DIR/runs/")
    add_config_arguments(parser, skip=("seed",))
    parser.set_defaults(run=run)
    return [parser]


def run(args: argparse.Namespace) -> int:
    from clusterloss.app.compare import parse_setting, run_comparison, tuned_settings

    try:
        settings = [parse_setting(spec) for spec in args.settings]
    except ValueError as error:
        fail(args, str(error))
    if args.tuned:
        settings += tuned_settings(args.tuned, args.data, args.known_classes)
    if not settings:
        fail(args, "name a SETTING or --tuned DIR")
    base = config_from_args(args, settings[0].loss, args.seeds[0], "")
    run_comparison(settings, args.seeds, base, args.out, reuse=args.reuse, overwrite=args.overwrite)
    print(Path(args.out, "results.md").read_text())
    print(f"wrote {args.out}/: results.md, results.csv, comparison.png, features.png, runs/")
    return 0
