"""`clusterloss` / `python -m clusterloss`: pick the Keras backend, then run a subcommand.

Importing the package imports Keras, which fixes the backend; so `--backend X` (before or
after the subcommand) that differs from the loaded one re-runs the command in a fresh
interpreter with `KERAS_BACKEND=X`. A mistake (a bad value, a run directory in use, bad
data) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

import keras

from clusterloss._backend import BACKENDS, installed_backends
from clusterloss.app.cli.args import Parser, fail
from clusterloss.app.errors import RunError
from clusterloss.data import DataError

# Each module in clusterloss.app.cli named here provides `add_parser(subparsers)` (returns the
# parsers that take options) and `run(args)`.
SUBCOMMANDS = ("train", "evaluate", "index", "calibrate", "search", "serve", "export", "compare", "tune")
BACKEND_HELP = "Keras backend (default: $KERAS_BACKEND or keras.json, else the first installed)"


def add_backend(parser: argparse.ArgumentParser, top: bool = False) -> None:
    parser.add_argument("--backend", choices=BACKENDS, help=BACKEND_HELP, default=None if top else argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="clusterloss", description="Train and use feature-clustering models (Keras 3).")
    add_backend(parser, top=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        for sub in importlib.import_module(f"clusterloss.app.cli.{name}").add_parser(subparsers):
            add_backend(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if args.backend and args.backend != keras.backend.backend():
        if args.backend not in installed_backends():
            fail(
                args,
                f"--backend {args.backend}: {args.backend} is not installed (installed: "
                f"{', '.join(installed_backends())}); pip install {args.backend}",
            )
        env = {**os.environ, "KERAS_BACKEND": args.backend}
        os.execve(sys.executable, [sys.executable, "-m", "clusterloss", *argv], env)
    try:
        return int(args.run(args) or 0)
    except (RunError, DataError) as error:
        fail(args, str(error))
    except KeyboardInterrupt:
        resume = " (continue with the same command and --resume)" if args.command == "train" else ""
        print(f"clusterloss {args.command}: interrupted{resume}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
