"""Read-only SQL over the tables minewatch writes, with DuckDB.

Every sub-folder of the tables folder that holds Parquet files (hive-style date
partitions included) is registered as a table named after the folder:
``sites``, ``tile_labels``, ``manifest``, ``dead_letter``, ``training_runs`` and
``retrain_ledger`` (``minewatch retrain``), ... The tables are
registered as lazy Arrow datasets (symbolic links that lead out of the tables
folder are not followed), then DuckDB's access to files and the
network is switched off and the setting locked, so a query can read those
tables and nothing else: no ``read_csv('/etc/passwd')``, no ``COPY ... TO``,
no ``INSTALL``/``ATTACH``, no HTTP. Only one ``SELECT`` statement is accepted.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from typing import Any

import pyarrow as pa

from minewatch.errors import ConfigError, MinewatchError

__all__ = ["QueryError", "format_table", "open_tables", "run_query"]

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class QueryError(MinewatchError, ValueError):
    """A query that is not a single read-only SELECT, or that DuckDB refuses."""


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root + os.sep)


def _parquet_files(folder: str, root: str) -> list[str]:
    """Parquet files under ``folder`` whose real path lies inside ``root``.

    Symbolic links that lead out of the tables folder (a table folder linked to
    ``/home``, a part file linked to another file) are left out, so a query
    reads the tables and nothing else. Hidden files (``.tmp-*`` of a write in
    progress) and ``_``-prefixed ones are skipped, as Arrow does.
    """
    found = []
    for parent, dirs, files in os.walk(folder):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith((".", "_"))
            and _inside(os.path.realpath(os.path.join(parent, d)), root)
        )
        for name in sorted(files):
            path = os.path.join(parent, name)
            if (
                name.endswith(".parquet")
                and not name.startswith((".", "_"))
                and _inside(os.path.realpath(path), root)
            ):
                found.append(path)
    return found


def open_tables(tables_dir: str) -> tuple[Any, list[str]]:
    """Register the tables of ``tables_dir`` in a locked-down DuckDB connection.

    Args:
        tables_dir: A folder whose sub-folders hold Parquet files.

    Returns:
        ``(connection, table names)``.

    Raises:
        ConfigError: The folder does not exist or holds no table.
    """
    import duckdb
    import pyarrow.dataset as ds

    if not os.path.isdir(tables_dir):
        raise ConfigError(f"--tables {tables_dir!r} is not a folder")
    con = duckdb.connect(":memory:")
    names = []
    root = os.path.realpath(tables_dir)
    for entry in sorted(os.listdir(tables_dir)):
        folder = os.path.join(tables_dir, entry)
        if not (os.path.isdir(folder) and _IDENT.match(entry)):
            continue
        if not _inside(os.path.realpath(folder), root):
            continue  # a link out of the tables folder is not a table
        files = _parquet_files(folder, root)
        if not files:
            continue
        dataset = ds.dataset(
            files,
            format="parquet",
            partitioning=ds.partitioning(flavor="hive"),
            partition_base_dir=folder,
            exclude_invalid_files=True,
        )
        con.register(entry, dataset)
        names.append(entry)
    if not names:
        raise ConfigError(f"--tables {tables_dir!r} holds no folder of Parquet files")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con, names


def run_query(con: Any, sql: str) -> pa.Table:
    """Run one SELECT statement and return its result.

    Args:
        con: A connection from :func:`open_tables`.
        sql: The query.

    Returns:
        The result as an Arrow table.

    Raises:
        QueryError: Not exactly one SELECT statement, or DuckDB refused it
            (unknown table or column, file or network access, ...).
    """
    import duckdb

    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryError(f"cannot parse the query: {exc}") from exc
    if len(statements) != 1:
        raise QueryError(f"give exactly one statement, not {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryError(f"only SELECT queries are allowed (this is {kind.name})")
    try:
        result: pa.Table = con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise QueryError(str(exc).splitlines()[0]) from exc
    return result


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return str(value)


def format_table(table: pa.Table, fmt: str = "table", max_width: int = 40) -> str:
    """Render a result as an aligned text table, CSV or JSON (one object per row).

    Args:
        table: The result.
        fmt: ``table``, ``csv`` or ``json``.
        max_width: Longest cell shown in ``table`` format.

    Returns:
        The text.
    """
    rows = table.to_pylist()
    names = table.column_names
    if fmt == "json":
        return json.dumps(rows, default=str, indent=1)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        writer.writerows([[_cell(r[n]) for n in names] for r in rows])
        return buf.getvalue().rstrip("\n")
    cells = [[_cell(r[n])[:max_width] for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    line = "  ".join(n.ljust(w) for n, w in zip(names, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)
