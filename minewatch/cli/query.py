"""``minewatch query``: read-only SQL over the output tables."""

from __future__ import annotations

import click


@click.command(short_help="Query the output tables with SQL (read-only, DuckDB).")
@click.argument("sql")
@click.option(
    "--tables", required=True, metavar="DIR", help="Folder whose sub-folders are tables (Parquet)."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
def query(sql: str, tables: str, fmt: str) -> None:
    """Run one SELECT over the tables in DIR, each sub-folder a table by name.

    Queries cannot write, read other files or reach the network.

    \b
    Examples:
      minewatch query "select label_name, count(*) from manifest group by 1" \\
          --tables out/demo/tiles
      minewatch query "select * from dead_letter" --tables out/demo/tiles --format json
    """
    from minewatch.errors import ConfigError
    from minewatch.query import QueryError, format_table, open_tables, run_query

    try:
        con, _ = open_tables(tables)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--tables") from exc
    try:
        result = run_query(con, sql)
    except QueryError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(format_table(result, fmt))
