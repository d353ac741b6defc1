"""Option decorators and parsers shared by several subcommands."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

__all__ = ["comma_list", "out_opt", "overwrite_opt"]

F = TypeVar("F", bound=Callable[..., Any])


def comma_list(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[str, ...]:
    """Click callback: ``"a,b, c"`` -> ``("a", "b", "c")``; empty items are refused."""
    if value is None:
        return ()
    items = tuple(v.strip() for v in value.split(","))
    if not all(items):
        raise click.BadParameter(f"empty item in {value!r}", ctx=ctx, param=param)
    return items


def out_opt(f: F) -> F:
    """``--out DIR``, required."""
    return click.option(
        "--out", required=True, metavar="DIR", help="Output folder (local or gs://)."
    )(f)


def overwrite_opt(f: F) -> F:
    """``--overwrite``: replace an earlier job's outputs in ``--out``."""
    return click.option(
        "--overwrite", is_flag=True, help="Replace outputs of an earlier run in --out."
    )(f)
