"""A job's options, declared once: argparse reads them for ``run(argv)``, click for the CLI.

Each Beam job declares its options as a tuple of :class:`Arg` next to the job
(``pipelines.tile.options.TILE_ARGS``, ...). The job's ``run(argv)`` parses
them with :func:`parse` (Beam's convention: ``parse_known_args``, the rest goes
to ``PipelineOptions``); ``minewatch.cli.options.click_options`` turns the same
tuple into click options, so ``minewatch tile --help`` and ``run(["--help"])``
describe one set of options, and both hand the job the same ``params`` dict.

Values are checked where they are parsed (type, range, choice); checks that
need several options belong to the job's config builder, which raises
:class:`~minewatch.errors.ConfigError` naming the option.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from minewatch.errors import ConfigError

__all__ = [
    "Arg",
    "Choice",
    "Flag",
    "Float",
    "Int",
    "Names",
    "Switch",
    "Text",
    "last_value",
    "parse",
    "parser",
    "split_names",
]


@dataclass(frozen=True)
class Arg:
    """One command-line option of a job.

    Attributes:
        flags: ``--name``, or ``--name/--no-name`` for a switch.
        kind: ``text``, ``int``, ``float``, ``choice``, ``flag`` (present or
            not), ``switch`` (on/off pair) or ``names`` (comma-separated list).
        default: Value when the option is absent (``()`` for ``names``).
        help: One or two sentences for ``--help``.
        metavar: Placeholder for the value in ``--help``.
        choices: The allowed values of a ``choice``.
        low: Least allowed number (inclusive unless ``low_open``).
        high: Greatest allowed number (inclusive).
        low_open: ``low`` itself is refused.
        required: The option must be given.
        show_default: ``--help`` shows the default.
        aliases: Other flags of the same option (a name it had before), for
            values only, not flags or switches.
    """

    flags: str
    kind: str = "text"
    default: Any = None
    help: str = ""
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    required: bool = False
    show_default: bool = False
    aliases: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.aliases and self.kind in ("flag", "switch"):
            raise ValueError(f"{self.flags}: a flag or switch takes no aliases")

    @property
    def on(self) -> str:
        """The option's (first) flag, e.g. ``--whiten``."""
        return self.flags.split("/")[0]

    @property
    def dest(self) -> str:
        """Its key in ``params``: ``--tile-size`` -> ``tile_size``."""
        return self.on.lstrip("-").replace("-", "_")


def Text(flags: str, **kw: Any) -> Arg:
    """A string option."""
    return Arg(flags, "text", **kw)


def Int(flags: str, **kw: Any) -> Arg:
    """An integer option, optionally bounded by ``low`` / ``high``."""
    return Arg(flags, "int", **kw)


def Float(flags: str, **kw: Any) -> Arg:
    """A number option, optionally bounded by ``low`` (``low_open``) / ``high``."""
    return Arg(flags, "float", **kw)


def Choice(flags: str, choices: Sequence[str], **kw: Any) -> Arg:
    """One of ``choices``."""
    return Arg(flags, "choice", choices=tuple(choices), **kw)


def Flag(flags: str, **kw: Any) -> Arg:
    """A flag: True when given."""
    return Arg(flags, "flag", default=False, **kw)


def Switch(flags: str, default: bool, **kw: Any) -> Arg:
    """An on/off pair, ``--name/--no-name``."""
    if "/" not in flags:
        raise ValueError(f"a switch is written --name/--no-name, not {flags!r}")
    return Arg(flags, "switch", default=default, **kw)


def Names(flags: str, **kw: Any) -> Arg:
    """A comma-separated list of names, parsed to a tuple (``()`` when absent)."""
    return Arg(flags, "names", default=(), **kw)


def last_value(tokens: Sequence[str], name: str) -> str | None:
    """The value the last ``name VALUE`` or ``name=VALUE`` in ``tokens`` gives; None if absent."""
    value = None
    for i, token in enumerate(tokens):
        if token == name and i + 1 < len(tokens):
            value = tokens[i + 1]
        elif token.startswith(name + "="):
            value = token.split("=", 1)[1]
    return value


def split_names(value: str | None) -> tuple[str, ...]:
    """``"a,b, c"`` -> ``("a", "b", "c")``; None -> ``()``.

    Raises:
        ValueError: An empty item.
    """
    if value is None:
        return ()
    items = tuple(v.strip() for v in value.split(","))
    if not all(items):
        raise ValueError(f"empty item in {value!r}")
    return items


def _range_text(arg: Arg) -> str:
    low = "" if arg.low is None else f"{arg.low:g}{'<' if arg.low_open else '<='}"
    high = "" if arg.high is None else f"<={arg.high:g}"
    return f"{low}x{high}"


def _number(arg: Arg) -> Callable[[str], Any]:
    cast: Callable[[str], Any] = int if arg.kind == "int" else float

    def convert(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {arg.kind}") from None
        below = arg.low is not None and (value <= arg.low if arg.low_open else value < arg.low)
        above = arg.high is not None and value > arg.high
        if below or above:
            raise argparse.ArgumentTypeError(f"{text} is not in the range {_range_text(arg)}")
        return value

    return convert


def _names(text: str) -> tuple[str, ...]:
    try:
        return split_names(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


class _Parser(argparse.ArgumentParser):
    """argparse that raises :class:`ConfigError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(f"{self.prog}: {message}")


def parser(args: Sequence[Arg], prog: str, description: str = "") -> argparse.ArgumentParser:
    """An argparse parser for ``args`` (no abbreviations: Beam's options pass through)."""
    p = _Parser(prog=prog, description=description, allow_abbrev=False)
    for arg in args:
        kw: dict[str, Any] = {
            "dest": arg.dest,
            "default": arg.default,
            "help": arg.help.replace("%", "%%"),
        }
        if arg.kind == "flag":
            p.add_argument(arg.on, action="store_true", **kw)
            continue
        if arg.kind == "switch":
            p.add_argument(arg.on, action=argparse.BooleanOptionalAction, **kw)
            continue
        kw["required"] = arg.required
        if arg.metavar:
            kw["metavar"] = arg.metavar
        if arg.kind in ("int", "float"):
            kw["type"] = _number(arg)
        elif arg.kind == "choice":
            kw["choices"] = arg.choices
        elif arg.kind == "names":
            kw["type"] = _names
        p.add_argument(arg.on, *arg.aliases, **kw)
    return p


def parse(
    args: Sequence[Arg], argv: Sequence[str] | None, prog: str
) -> tuple[dict[str, Any], list[str]]:
    """Parse a job's own options out of ``argv``.

    Args:
        args: The job's declared options.
        argv: The command line after the command's name; None is ``[]``.
        prog: The command's name, for messages and ``--help``.

    Returns:
        ``(params, rest)``: the options by :attr:`Arg.dest`, and what is left
        (inputs and Beam's options, in order).

    Raises:
        ConfigError: A value of the wrong type or out of range, or a missing
            required option.
    """
    known, rest = parser(args, prog).parse_known_args(list(argv or []))
    return vars(known), rest
