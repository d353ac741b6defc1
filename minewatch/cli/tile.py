"""``minewatch tile``: scenes and camera frames into georeferenced tiles."""

from __future__ import annotations

import sys
from typing import Any

import click

from minewatch.cli.options import DRY_RUN, click_error, click_options, rows_table
from minewatch.errors import ConfigError
from pipelines.tile.options import TILE_ARGS


@click.command(
    short_help="Tile scenes and camera frames into TFRecords (Beam job).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("inputs", nargs=-1, type=click.UNPROCESSED, metavar="INPUT... [BEAM OPTIONS]")
@click_options(TILE_ARGS)
@click.pass_context
def tile(ctx: click.Context, /, **params: Any) -> None:
    """Tile scenes and camera frames into georeferenced TFRecord tiles.

    INPUT is files, globs or folders. A folder of single-band files named
    PREFIX_BAND.ext is one scene; PNG/JPEG files are camera frames. Options that
    minewatch does not know pass to Beam unchanged.

    Writes DIR/tiles/ (TFRecords), DIR/manifest/ (Parquet), DIR/dead_letter/
    (Parquet: input, reason, ...) and DIR/stats.json.

    \b
    Examples:
      minewatch tile scenes/s2/ --out out/tiles --bands B02,B03,B04,B08
      minewatch tile 'scenes/*.tif' --out out --labels truth.geojson \\
          --tile-size 64 --stride 32 --direct_num_workers=2 \\
          --direct_running_mode=multi_processing
      minewatch tile frames/ --out out/frames --labels frames/labels.csv
    """
    from pipelines.tile import run_tile, tile_config

    try:
        config, beam_args, rejections, header = tile_config(params, ctx.args)
        stats = run_tile(config, beam_args, label_rejections=rejections, header=header)
    except ConfigError as exc:
        raise click_error(exc) from exc
    click.echo(summary(stats) if stats is not None else DRY_RUN)


def summary(stats: dict[str, Any]) -> str:
    """Render the job's accounting as a small table."""
    inputs, tiles = stats["inputs"], stats["tiles"]
    rows = [
        ("inputs", inputs["total"]),
        ("  tiled", inputs["tiled"]),
        ("  dead-lettered", inputs["dead_lettered"]),
        ("tiles planned", tiles["planned"]),
        ("  written", tiles["written"]),
        *((f"  dropped: {k}", v) for k, v in tiles["dropped"].items()),
        ("shards", len(stats["shards"])),
    ]
    width = max(len(k) for k, _ in rows)
    lines = rows_table(rows).splitlines()
    counters = stats.get("beam_counters") or {}
    if counters:
        lines.append("")
        lines.append("Beam counters (minewatch.tile):")
        lines.extend(f"  {k:<{width}}{v:>8}" for k, v in sorted(counters.items()))
    if stats.get("classes"):
        lines.append("")
        lines.append(f"labels: {stats['label_source']}  classes: {', '.join(stats['classes'])}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(tile())
