"""`clusterloss` / `python -m clusterloss`: pick the Keras backend, then run a subcommand.

Subcommand modules import Keras only inside `run`, so `--backend` can still choose it.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys

# Each module in clusterloss.cli named here provides `add_parser(subparsers)` and `run(args)`.
SUBCOMMANDS = ("train",)
BACKENDS = ("jax", "tensorflow", "torch")


def select_backend(requested: str | None) -> str:
    """Set KERAS_BACKEND: the flag, else the environment, else the first installed backend."""
    if requested:
        os.environ["KERAS_BACKEND"] = requested
    elif not os.environ.get("KERAS_BACKEND"):
        installed = [b for b in BACKENDS if importlib.util.find_spec(b) is not None]
        if not installed:
            raise SystemExit(
                "clusterloss: no Keras backend is installed; "
                "pip install 'clusterloss[jax]' (or [tensorflow], [torch])."
            )
        os.environ["KERAS_BACKEND"] = installed[0]
    return os.environ["KERAS_BACKEND"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clusterloss",
        description="Train and use feature-clustering models (Keras 3).",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="Keras backend (default: $KERAS_BACKEND, else the first installed of "
        + ", ".join(BACKENDS)
        + ")",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"clusterloss.cli.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    select_backend(args.backend)
    return int(args.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
