"""The ``minewatch`` command group.

Subcommands are registered as entry points in the ``minewatch.commands`` group
(``pyproject.toml``), one module each under :mod:`minewatch.cli`, and import
their heavy dependencies (Beam, TensorFlow) only when they run, so that
``minewatch --help`` answers at once.
"""

from __future__ import annotations

import logging
from importlib import import_module
from importlib.metadata import entry_points

import click

from minewatch import __version__


@click.group(help="Satellite scenes and camera frames into labelled tables.")
@click.version_option(__version__, prog_name="minewatch")
@click.option("-v", "--verbose", count=True, help="More log output (repeat for debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """Minewatch: tile, graph, train, infer, query."""
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose


#: Commands of this package registered here too, so that they work in an install
#: made before their entry point was added to ``pyproject.toml``.
_BUILTIN = {"encoder": "minewatch.cli.encoder:encoder"}


def _register() -> None:
    for ep in sorted(entry_points(group="minewatch.commands"), key=lambda e: e.name):
        cli.add_command(ep.load(), ep.name)
    for name, target in _BUILTIN.items():
        if name not in cli.commands:
            module, attr = target.split(":")
            cli.add_command(getattr(import_module(module), attr), name)


_register()


def verbose_given(args: list[str]) -> bool:
    """Whether the group's own options (those before the command) include ``-v``."""
    for arg in args:
        if not arg.startswith("-"):
            return False
        if arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            return True
    return False


def main(argv: list[str] | None = None) -> None:
    """The ``minewatch`` console script: quiet third-party noise unless ``-v``, then run.

    Harmless start-up notices of TensorFlow and Beam are dropped from stderr
    (:func:`minewatch.quiet.filter_stderr`) and the jobs' progress lines are shown
    (:func:`minewatch.quiet.show_progress`). ``-v`` shows everything.
    """
    import sys

    from minewatch.quiet import filter_stderr, show_progress

    args = sys.argv[1:] if argv is None else argv
    if not verbose_given(args):
        filter_stderr()
    show_progress()
    cli(args=args)


if __name__ == "__main__":  # python -m minewatch.cli.main
    main()
