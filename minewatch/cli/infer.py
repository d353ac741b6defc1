"""``minewatch infer``: label scenes, frames or tiles; find sites; write tables."""

from __future__ import annotations

from typing import Any

import click

from minewatch.cli.options import DRY_RUN, click_error, click_options
from minewatch.errors import ConfigError
from pipelines.infer.options import INFER_ARGS


@click.command(
    short_help="Label tiles and frames, find sites, write tables (Beam job).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("inputs", nargs=-1, type=click.UNPROCESSED, metavar="INPUT... [BEAM OPTIONS]")
@click_options(INFER_ARGS)
@click.pass_context
def infer(ctx: click.Context, /, **params: Any) -> None:
    """Label INPUT with the model and write the tables under TABLES_DIR.

    Tables: tile_labels, frame_labels, sites, stockpile_series (with volumes),
    vessels (with --licensed-ports) and dead_letter (GeoParquet, partitioned by
    date), plus probability rasters, quicklooks and stockpile area and volume
    plots; with --bigquery, the tables also go to BigQuery.

    INPUT is scenes or frames (files, globs, folders; tiled with the model's
    bands and tile size) or output folders of 'minewatch tile'.

    \b
    Examples:
      minewatch infer out/gt/scenes --model registry/ --out tables/ \\
          --concessions out/gt/concessions.geojson --protected out/gt/protected_areas.geojson \\
          --dsm 'out/gt/dsm/*.tif' --licensed-ports out/gt/licensed_ports.geojson
      minewatch query "select site_id, area_m2, reason from sites where flagged" \\
          --tables tables/
      minewatch infer gs://b/scenes --model gs://b/registry --out gs://b/tables \\
          --bigquery bq://my-project.mining.nightly --runner DataflowRunner ...
    """
    from pipelines.infer import infer_config, run_infer

    try:
        config, beam_args = infer_config(params, ctx.args)
        stats = run_infer(config, beam_args)
    except ConfigError as exc:
        raise click_error(exc) from exc
    click.echo(summary(stats) if stats is not None else DRY_RUN)


def summary(stats: dict[str, Any]) -> str:
    """The run's counts as a small table."""
    counts = stats["counts"]
    width = max([len(k) for k in counts] + [10])
    lines = [f"model {stats['model_version']}"]
    inputs = stats.get("inputs")
    if isinstance(inputs, dict):
        lines.append(
            f"inputs {inputs['total']}: {inputs['labelled']} labelled, "
            f"{inputs['dead_lettered']} dead-lettered"
        )
    lines += [f"  {k:<{width}}  {v:>8}" for k, v in counts.items()]
    if stats.get("plot"):
        lines.append(f"stockpile plot: {stats['plot']}")
    if stats.get("volume_plot"):
        lines.append(f"stockpile volume plot: {stats['volume_plot']}")
    return "\n".join(lines)
