"""``minewatch query``: read-only SQL over the output tables."""

from __future__ import annotations

import click

#: Options that join a vector file as a table, and the table's name.
LAYER_OPTIONS = {
    "concessions": "concessions",
    "protected": "protected_areas",
    "licensed_ports": "licensed_ports",
}


@click.command(short_help="Query the output tables with SQL (read-only, DuckDB, spatial).")
@click.argument("sql")
@click.option(
    "--tables", required=True, metavar="DIR", help="Folder whose sub-folders are tables (Parquet)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "geojson", "geoparquet"]),
    default="table",
    show_default=True,
    help="Output format; geojson and geoparquet (EPSG:4326) need --out.",
)
@click.option("--out", metavar="FILE", help="Write the result to FILE instead of the screen.")
@click.option(
    "--concessions", metavar="FILE", help="Licensed areas, joined as the table concessions."
)
@click.option(
    "--protected", metavar="FILE", help="Protected areas, joined as the table protected_areas."
)
@click.option(
    "--licensed-ports", metavar="FILE", help="Licensed ports, joined as the table licensed_ports."
)
@click.option(
    "--layer",
    "layers",
    multiple=True,
    metavar="NAME=FILE",
    help="Any vector file OGR reads, joined as the table NAME (repeatable).",
)
def query(
    sql: str, tables: str, fmt: str, out: str | None, layers: tuple[str, ...], **files: str | None
) -> None:
    """Run one SELECT over the tables in DIR, each sub-folder a table by name.

    Queries cannot write, read other files or reach the network. DuckDB's
    spatial functions work on the geometry columns (EPSG:4326 lon/lat; for
    metres, ST_Transform(geometry, 'EPSG:4326', 'EPSG:32633', always_xy := true)).

    \b
    Examples:
      minewatch query "select label_name, count(*) from manifest group by 1" \\
          --tables out/demo/tiles
      minewatch query "select * from dead_letter" --tables out/demo/tiles --format json
      minewatch query "select c.licence_id, count(*) n, sum(s.area_m2) m2
          from sites s join concessions c on ST_Intersects(s.geometry, c.geometry)
          group by 1" --tables out/demo/tables --concessions concessions.geojson
      minewatch query "select site_id, class_name, geometry from sites where flagged" \\
          --tables out/demo/tables --format geojson --out flagged.geojson
    """
    from minewatch.errors import ConfigError
    from minewatch.export import write_result
    from minewatch.query import QueryError, format_table, open_tables, run_query

    named = {LAYER_OPTIONS[k]: v for k, v in files.items() if v}
    for item in layers:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise click.BadParameter(f"{item!r} is not NAME=FILE", param_hint="--layer")
        named[name] = path
    if fmt in ("geojson", "geoparquet") and not out:
        raise click.BadParameter(
            f"--format {fmt} writes a file: give --out FILE", param_hint="--out"
        )
    try:
        con, _ = open_tables(tables, layers=named)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--tables") from exc
    try:
        result = run_query(con, sql)
    except QueryError as exc:
        raise click.ClickException(str(exc)) from exc
    if out is None:
        click.echo(format_table(result, fmt))
        return
    try:
        if fmt == "table":
            from minewatch.paths import write_bytes

            write_bytes(out, (format_table(result, fmt) + "\n").encode())
        else:
            write_result(result, fmt, out)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--format") from exc
    click.echo(f"{result.num_rows} rows -> {out}", err=True)
