"""Option decorators and parsers shared by several subcommands."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from minewatch.arguments import Arg, split_names
from minewatch.errors import ConfigError
from pipelines.options import OUT, OVERWRITE

__all__ = [
    "DRY_RUN",
    "click_error",
    "click_options",
    "comma_list",
    "out_opt",
    "overwrite_opt",
    "rows_table",
]

F = TypeVar("F", bound=Callable[..., Any])


def _click_type(arg: Arg) -> Any:
    if arg.kind == "int":
        if arg.low is None and arg.high is None:
            return int
        return click.IntRange(
            None if arg.low is None else int(arg.low), None if arg.high is None else int(arg.high)
        )
    if arg.kind == "float":
        if arg.low is None and arg.high is None:
            return float
        return click.FloatRange(arg.low, arg.high, min_open=arg.low_open)
    if arg.kind == "choice":
        return click.Choice(arg.choices)
    return None


def click_options(args: Sequence[Arg]) -> Callable[[F], F]:
    """Decorate a click command with a job's declared options (:mod:`minewatch.arguments`)."""

    def decorate(f: F) -> F:
        for arg in reversed(args):
            kw: dict[str, Any] = {"help": arg.help, "show_default": arg.show_default}
            if arg.kind == "flag":
                f = click.option(arg.flags, is_flag=True, **kw)(f)
                continue
            if arg.default is not None:  # click >= 8.3 treats an explicit None as a value
                kw["default"] = arg.default
            if arg.kind == "switch":
                # A switch's None means "the job decides" (graph's --whiten); without an
                # explicit default=None click would make it False.
                f = click.option(arg.flags, **{**kw, "default": arg.default})(f)
                continue
            kw["required"] = arg.required
            kw["metavar"] = arg.metavar
            kind = _click_type(arg)
            if kind is not None:
                kw["type"] = kind
            if arg.kind == "names":
                kw["callback"] = comma_list
                kw.pop("default", None)
            # An alias needs the name given, or click would name the option after it.
            names = (arg.flags, *arg.aliases, arg.dest) if arg.aliases else (arg.flags,)
            f = click.option(*names, **kw)(f)
        return f

    return decorate


def click_error(exc: ConfigError) -> click.ClickException:
    """A job's :class:`ConfigError` as click reports bad options (exit status 2)."""
    if exc.option:
        return click.BadParameter(str(exc), param_hint=exc.option)
    return click.UsageError(str(exc))


def comma_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """Click callback: ``"a,b, c"`` -> ``("a", "b", "c")``; empty items are refused."""
    try:
        return split_names(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from None


#: ``--out DIR`` (required) and ``--overwrite``, declared with the jobs' options.
out_opt = click_options((OUT,))
overwrite_opt = click_options((OVERWRITE,))


def rows_table(rows: Sequence[tuple[str, Any]]) -> str:
    """Render ``(name, value)`` rows as two aligned columns."""
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v:>8}" for k, v in rows)


#: What a job command prints when Beam's ``--dry_run`` built the job without running it.
DRY_RUN = "dry run: the job was built and validated, not submitted"
