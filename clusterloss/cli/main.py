"""`clusterloss` / `python -m clusterloss`: pick the Keras backend, then run a subcommand.

Importing the package imports Keras, which fixes the backend; so `--backend X` that differs
from the loaded one re-runs the command in a fresh interpreter with `KERAS_BACKEND=X`.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import keras

from clusterloss._backend import BACKENDS

# Each module in clusterloss.cli named here provides `add_parser(subparsers)` and `run(args)`.
SUBCOMMANDS = ("train", "evaluate", "index", "search", "compare")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterloss",
        description="Train and use feature-clustering models (Keras 3).",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND or keras.json, else the first installed)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"clusterloss.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.backend and args.backend != keras.backend.backend():
        env = {**os.environ, "KERAS_BACKEND": args.backend}
        os.execve(sys.executable, [sys.executable, "-m", "clusterloss", *argv], env)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
