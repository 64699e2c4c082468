"""Typed options: one `Option` per hyperparameter of a loss recipe, from which the command
line's flags, `compare` settings (`LOSS:key=value,...`), `metrics.json`'s
`config.options`, `tune`'s search space and the docs table (`python -m clusterloss.app.recipes`)
are all made.

An option's default is read from the constructor of the class it configures (`source`), so
it is defined once and equals the class default; where a recipe deliberately differs, the
option carries its own default and the `reason`, which the docs table shows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

_FROM_SOURCE = object()


@dataclass(frozen=True)
class Option:
    """One typed hyperparameter of a recipe.

    Attributes:
        key: its name in settings and metrics.json (`center_weight`); the flag is
            `--center-weight`.
        type: `int`, `float` or `str`.
        default: the recipe's default.
        help: one line.
        source: `(callable, parameter)` whose default this option mirrors (or overrides,
            with `reason`).
        reason: why `default` differs from the source's default ("" when equal).
        choices: the allowed values of a `str` option.
        low: the smallest allowed value of a number (other ranges: the class checks).
        space: what `clusterloss tune` searches: `(low, high)` or `(low, high, "log")` for a
            number, a tuple of values for a `str`; `()`: the option is not tuned.
    """

    key: str
    type: type
    default: Any
    help: str
    source: tuple[Callable, str] | None = None
    reason: str = ""
    choices: tuple[str, ...] = ()
    low: float | None = None
    space: tuple = ()

    def __post_init__(self):
        if not self.space:
            return
        if self.type is str:
            for value in self.space:
                self.check(value)
            return
        low, high, *scale = self.space
        if scale not in ([], ["log"]) or not low < high or (scale and low <= 0):
            raise ValueError(
                f"option {self.key}: space must be (low, high) or (low, high, 'log') "
                f"with low < high (and low > 0 for 'log'); got {self.space!r}"
            )
        self.check(low), self.check(high)

    @property
    def log(self) -> bool:
        """Whether `tune` samples this number on a log scale."""
        return self.space[2:] == ("log",)

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")

    @property
    def source_default(self) -> Any:
        """The default of the source parameter (`inspect.signature`)."""
        if self.source is None:
            return self.default
        owner, parameter = self.source
        return inspect.signature(owner).parameters[parameter].default

    @property
    def source_name(self) -> str:
        if self.source is None:
            return ""
        owner, parameter = self.source
        return f"{getattr(owner, '__name__', owner)}({parameter})"

    def check(self, value: Any) -> Any:
        """`value` converted to the option's type; ValueError naming the key otherwise."""
        if isinstance(value, bool) or (self.type is str and not isinstance(value, str)):
            raise ValueError(f"{self.key} must be a {self.type.__name__}; got {value!r}")
        try:
            converted = self.type(value)
        except (TypeError, ValueError):
            raise ValueError(f"{self.key} must be a {self.type.__name__}; got {value!r}") from None
        if self.type is int and converted != value:
            raise ValueError(f"{self.key} must be an int; got {value!r}")
        if self.choices and converted not in self.choices:
            raise ValueError(f"{self.key} must be one of {', '.join(self.choices)}; got {value!r}")
        if self.low is not None and converted < self.low:
            raise ValueError(f"{self.key} must be >= {self.low:g}; got {value!r}")
        return converted

    def parse(self, text: str) -> Any:
        """The value written in `text` (a command-line or settings string)."""
        if self.type is str:
            return self.check(text)
        try:
            number = float(text)
        except ValueError:
            raise ValueError(f"{self.key} must be a {self.type.__name__}; got {text!r}") from None
        return self.check(int(number) if self.type is int and number.is_integer() else number)


def option(source: Callable, parameter: str, key: str | None = None, help: str = "", *,
           default: Any = _FROM_SOURCE, reason: str = "", type: type | None = None,
           choices: tuple[str, ...] = (), low: float | None = None,
           space: tuple = ()) -> Option:  # fmt: skip
    """An `Option` mirroring `source`'s `parameter`: its default (unless `default` is given,
    which needs a `reason`) and its type (that of the default, unless `type`)."""
    declared = inspect.signature(source).parameters[parameter].default
    if declared is inspect.Parameter.empty:
        raise TypeError(f"{source.__name__}({parameter}) has no default to mirror.")
    if default is _FROM_SOURCE:
        default = declared
    elif default != declared and not reason:
        raise ValueError(
            f"option {key or parameter}: a default that differs from "
            f"{source.__name__}({parameter}={declared!r}) needs a reason."
        )
    return Option(
        key=key or parameter, type=type or builtins_type(declared), default=default,
        help=help, source=(source, parameter), reason=reason, choices=choices, low=low,
        space=space,
    )  # fmt: skip


def builtins_type(value: Any) -> type:
    for kind in (bool, int, float, str):
        if isinstance(value, kind):
            if kind is bool:
                raise TypeError("boolean options are not supported; use a str with choices.")
            return kind
    raise TypeError(f"cannot derive an option type from the default {value!r}.")


def resolve(options: tuple[Option, ...], given: Mapping[str, Any], owner: str) -> dict[str, Any]:
    """Every option's value: the `given` ones checked, the others at their defaults.
    An unknown key is a ValueError that lists the known ones."""
    known = {o.key: o for o in options}
    unknown = [k for k in given if k not in known]
    if unknown:
        listed = ", ".join(known) or "none"
        raise ValueError(f"unknown option {unknown[0]!r} for {owner} (its options: {listed})")
    return {k: (o.check(given[k]) if k in given else o.default) for k, o in known.items()}
