"""The flags made from `TrainConfig`'s fields and the recipes' options, and the parser that
reports a mistake in one line."""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from clusterloss.app.config import CLI_FIELDS, TrainConfig
from clusterloss.app.options import Option
from clusterloss.app.recipes import RECIPES, get_recipe


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: `PROG: error: MESSAGE (see PROG --help)`,
    exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def fail(args: argparse.Namespace, message: str) -> NoReturn:
    """A mistake found after parsing: one line on stderr, exit status 2."""
    print(f"clusterloss {args.command}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def add_config_arguments(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per `TrainConfig` field with command-line metadata (`--data` also answers
    to `--dataset`, its former name)."""
    for f in CLI_FIELDS:
        if f.name in skip:
            continue
        meta = f.metadata
        flag = meta["flag"] or "--" + f.name.replace("_", "-")
        names = [flag, "--dataset"] if f.name == "data" else [flag]
        if isinstance(f.default, bool):
            action = "store_false" if f.default else "store_true"
            parser.add_argument(*names, dest=f.name, action=action, help=meta["help"])
            continue
        help_text = meta["help"] + (f" (default {f.default})" if f.default not in (None, "") else "")
        kwargs: dict[str, Any] = {"dest": f.name, "default": f.default, "help": help_text}
        if meta["parse"]:
            kwargs["type"] = meta["parse"]
        if meta["choices"]:
            kwargs["choices"] = meta["choices"]
            kwargs["metavar"] = meta["metavar"] or "{" + ",".join(map(str, meta["choices"])) + "}"
        elif meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        parser.add_argument(*names, **kwargs)


def _options_by_key() -> dict[str, list[tuple[str, Option]]]:
    found: dict[str, list[tuple[str, Option]]] = {}
    for name, recipe in RECIPES.items():
        for option in recipe.options:
            found.setdefault(option.key, []).append((name, option))
    return found


def add_recipe_arguments(parser: argparse.ArgumentParser) -> None:
    """`--loss` and one flag per recipe option key (typed by the chosen loss's option)."""
    parser.add_argument(
        "--loss",
        default=TrainConfig.loss,
        choices=sorted(RECIPES),
        metavar="LOSS",
        help=f"(default {TrainConfig.loss}) "
        + "; ".join(f"{name}: {RECIPES[name].description}" for name in sorted(RECIPES)),
    )
    group = parser.add_argument_group("loss options", "each applies to the losses named in its help (defaults there)")
    for key, owners in _options_by_key().items():
        first = owners[0][1]
        defaults = ", ".join(f"{name} {o.default}" for name, o in owners)
        choices = f" ({'|'.join(first.choices)})" if first.choices else ""
        group.add_argument(
            first.flag,
            dest=f"option_{key}",
            metavar=first.type.__name__.upper(),
            help=f"{first.help}{choices}; default: {defaults}",
        )


def recipe_values(args: argparse.Namespace) -> dict[str, Any]:
    """The loss options given on the command line, parsed by the chosen loss's options (the
    rest, and the ranges its classes check, are left to `resolve_config` and the build of
    the run); a flag the loss does not take is an error."""
    recipe = get_recipe(args.loss)
    mine = {o.key: o for o in recipe.options}
    given = {
        k: getattr(args, f"option_{k}") for k in _options_by_key() if getattr(args, f"option_{k}", None) is not None
    }
    values = {}
    for key, text in given.items():
        flag = "--" + key.replace("_", "-")
        if key not in mine:
            takes = ", ".join(o.flag for o in recipe.options) or "none"
            fail(args, f"{flag} does not apply to --loss {args.loss} (its options: {takes})")
        try:
            values[key] = mine[key].parse(text)
        except ValueError as error:
            fail(args, f"{flag}: {error}")
    return values


def config_from_args(
    args: argparse.Namespace, loss: str, seed: int, out: str, options: dict[str, Any] | None = None
) -> TrainConfig:
    """The settings the flags give, as given (`resolve_config` checks and completes them)."""
    values = {f.name: getattr(args, f.name) for f in CLI_FIELDS if hasattr(args, f.name)}
    return TrainConfig(**{**values, "loss": loss, "seed": seed, "out": out, "options": options or {}})
