"""``minewatch retrain``: the nightly tile -> graph -> train -> evaluate -> promote cycle."""

from __future__ import annotations

import sys

import click


@click.command(short_help="Nightly cycle: tile new scenes, rebuild the graph, train, promote.")
@click.option(
    "--config",
    "config_path",
    required=True,
    metavar="FILE",
    help="Retrain config (YAML, see docs/deploy.md).",
)
def retrain(config_path: str) -> None:
    """Tile the scenes that arrived since the last run, retrain and promote if better.

    Finds new scene files (ledger keyed by path, size and mtime), tiles only
    those, rebuilds the similarity graph over all tiles so far, trains (resuming
    a crashed run's checkpoint, or from the registry's current weights with
    training.init: current), evaluates clean and robust accuracy against the
    current model on the same held-out tiles, promotes only a better model, and
    appends a row to the training_runs table.

    Safe to run twice: an overlapping run is refused (exit code 75); a later run
    with nothing new records a 'noop' row. Exit code 0 when the run finished
    (promoted or not), 1 on an error (recorded as 'failed').

    \b
    Examples:
      minewatch retrain --config deploy/retrain.example.yaml
      minewatch query "select run_id, status, reason from training_runs" \\
          --tables /var/lib/minewatch/work/tables
    """
    from minewatch.errors import ConfigError, InputError
    from minewatch.workflows.retrain import RetrainLocked, load_retrain_config
    from minewatch.workflows.retrain import retrain as run_cycle

    try:
        config = load_retrain_config(config_path)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--config") from None
    try:
        record = run_cycle(config, log=click.echo)
    except RetrainLocked as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(75)  # EX_TEMPFAIL: try again later
    except (ConfigError, InputError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"run {record['run_id']}: {record['status']}")
