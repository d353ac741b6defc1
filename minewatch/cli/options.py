"""Option decorators and parsers shared by several subcommands."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

from minewatch.arguments import Arg, split_names
from minewatch.errors import ConfigError

__all__ = [
    "DRY_RUN",
    "click_error",
    "click_options",
    "comma_list",
    "job_inputs",
    "out_opt",
    "overwrite_opt",
    "profile_opt",
    "rows_table",
    "site_opts",
    "site_params",
    "with_profile",
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
            f = click.option(arg.flags, **kw)(f)
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


def site_opts(f: F) -> F:
    """``--threshold --min-area --min-score --smooth``: how sites are cut (infer, stream).

    Each defaults to the model's calibrated operating points (``metadata.json``
    ``operating_points``, chosen per kind on the training world's validation
    split), else to the built-in value shown; a given option applies to every kind.
    """
    options = [
        click.option(
            "--threshold",
            type=click.FloatRange(0, 1),
            default=None,
            help="Least probability of a cell's winning class "
            "[default: the model's operating point, else 0.5].",
        ),
        click.option(
            "--min-area",
            type=click.FloatRange(0),
            default=None,
            help="Drop sites smaller than this (m²), every kind "
            "[default: each kind's operating point, else 0].",
        ),
        click.option(
            "--min-score",
            type=click.FloatRange(0, 1),
            default=None,
            help="Drop sites whose mean probability of their class is lower, every kind "
            "[default: each kind's operating point, else 0].",
        ),
        click.option(
            "--smooth",
            type=click.IntRange(1, 31),
            default=None,
            metavar="CELLS",
            help="Average the probabilities over CELLS x CELLS raster cells before cutting "
            "sites (1: none) [default: the model's operating point, else 1].",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def site_params(params: dict[str, Any]) -> dict[str, Any]:
    """The :func:`site_opts` values as ``InferConfig`` / ``StreamConfig`` fields."""
    return {
        "threshold": params["threshold"],
        "min_area_m2": params["min_area"],
        "min_score": params["min_score"],
        "smooth": params["smooth"],
    }


def job_inputs(tokens: Sequence[str], what: str) -> tuple[list[str], list[str]]:
    """Split a Beam job's leftover tokens into inputs and Beam options, and check the inputs.

    Args:
        tokens: The command's positional tokens plus what click did not parse.
        what: What an INPUT may be, for the message when there is none.

    Returns:
        ``(inputs, beam_args)``.

    Raises:
        click.UsageError: No input.
        click.BadParameter: A local input that matches no file.
    """
    from pipelines.options import list_inputs, split_beam_args

    inputs, beam_args = split_beam_args(list(tokens))
    if not inputs:
        raise click.UsageError(f"give at least one INPUT ({what})")
    for pattern in inputs:
        if "://" not in pattern and not list_inputs(pattern):
            raise click.BadParameter(f"{pattern!r} matches no file", param_hint="INPUT")
    return inputs, beam_args


def rows_table(rows: Sequence[tuple[str, Any]]) -> str:
    """Render ``(name, value)`` rows as two aligned columns."""
    width = max((len(k) for k, _ in rows), default=0)
    return "\n".join(f"{k:<{width}}  {v:>8}" for k, v in rows)


#: What a job command prints when Beam's ``--dry_run`` built the job without running it.
DRY_RUN = "dry run: the job was built and validated, not submitted"


def profile_opt(f: F) -> F:
    """``--profile NAME``: Beam options from a runner profile (``deploy/runners/NAME.yaml``)."""
    return click.option(
        "--profile",
        metavar="NAME",
        default=None,
        help="Runner profile (dataflow, flink, flink-k8s, spark, or a YAML path) whose Beam "
        "options come first; options on the command line override them.",
    )(f)


def with_profile(profile: str | None, job: str, beam_args: Sequence[str]) -> list[str]:
    """Prepend a runner profile's Beam options for ``job`` to ``beam_args``.

    Raises:
        click.BadParameter: Unknown profile, or one that cannot be loaded.
    """
    if not profile:
        return list(beam_args)
    from minewatch.errors import ConfigError
    from minewatch.profiles import load_profile

    try:
        return [*load_profile(profile, job), *beam_args]
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--profile") from exc


def abs_path(path: str) -> str:
    """Make a local path absolute (workers run elsewhere); leave URLs (``gs://``) as they are."""
    return path if "://" in path else os.path.abspath(path)


def check_model_and_areas(params: dict[str, Any]) -> Any:
    """Resolve ``--model`` and check ``--concessions`` / ``--protected`` exist.

    Returns:
        The :class:`minewatch.registry.ModelRef` to serve.

    Raises:
        click.BadParameter: Naming the option that cannot work.
    """
    from minewatch.errors import ConfigError
    from minewatch.registry import resolve_model

    try:
        model = resolve_model(abs_path(params["model"]))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--model") from exc
    for name in ("concessions", "protected"):
        path = params[name]
        if path and "://" not in path and not os.path.isfile(path):
            raise click.BadParameter(f"{path!r} is not a file", param_hint=f"--{name}")
    return model
