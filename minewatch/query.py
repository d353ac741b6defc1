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

DuckDB's spatial extension is loaded from an installed package
(``duckdb-extension-spatial``, built for one DuckDB version, which
``pyproject.toml`` pins), never downloaded: ``ST_Area``, ``ST_Intersects``,
``ST_Transform``, ``ST_AsGeoJSON``, ... work on the tables' geometry columns,
which are exposed as ``GEOMETRY`` (the Parquet files keep WKB; each table with
GeoParquet metadata is a view that decodes its geometry columns). Vector files
(concessions, protected areas, licensed ports: anything OGR reads) join as
tables too (``layers``), read in Python before the connection is locked, their
geometry reprojected to EPSG:4326 like the tables'.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from minewatch.errors import ConfigError, MinewatchError

__all__ = [
    "QueryError",
    "format_table",
    "geometry_columns",
    "load_spatial",
    "open_tables",
    "read_layer",
    "run_query",
    "spatial_extension_path",
]

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


def spatial_extension_path() -> str:
    """The spatial extension file of the installed ``duckdb-extension-spatial`` for this DuckDB.

    Raises:
        ConfigError: The package is missing, or built for another DuckDB version
            (names both versions; the fix is to install the matching pair).
    """
    import duckdb

    try:
        import duckdb_extension_spatial
    except ImportError as exc:
        raise ConfigError(
            "spatial SQL needs the package duckdb-extension-spatial (pip install "
            f"duckdb-extension-spatial=={duckdb.__version__})"
        ) from exc
    folder = os.path.join(os.path.dirname(duckdb_extension_spatial.__file__), "extensions")
    path = os.path.join(folder, f"v{duckdb.__version__}", "spatial.duckdb_extension")
    if not os.path.isfile(path):
        built = sorted(os.listdir(folder)) if os.path.isdir(folder) else []
        raise ConfigError(
            f"duckdb-extension-spatial is built for DuckDB {', '.join(built) or '?'}, not "
            f"{duckdb.__version__}: install the DuckDB version it matches (see pyproject.toml)"
        )
    return path


def load_spatial(con: Any) -> None:
    """Load the spatial extension from its package into ``con``; never download anything."""
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    path = spatial_extension_path().replace("'", "''")
    con.execute(f"LOAD '{path}'")


def geometry_columns(schema: pa.Schema) -> list[str]:
    """The WKB geometry columns a GeoParquet schema declares (its ``geo`` metadata)."""
    meta = (schema.metadata or {}).get(b"geo")
    if not meta:
        return []
    try:
        columns = json.loads(meta).get("columns", {})
    except ValueError:
        return []
    return [
        name
        for name, spec in columns.items()
        if name in schema.names
        and pa.types.is_binary(schema.field(name).type)
        and spec.get("encoding", "WKB") == "WKB"
    ]


def read_layer(path: str) -> pa.Table:
    """A vector file (GeoJSON, GeoPackage, Shapefile, ...) as a table in EPSG:4326.

    Attribute fields become columns; the geometry is WKB in ``geometry``,
    reprojected from the file's CRS (a file without one is taken as EPSG:4326).

    Raises:
        ConfigError: The file cannot be read.
    """
    import pyogrio
    import shapely

    from minewatch.geo import reproject

    try:
        meta, _, wkb, fields = pyogrio.raw.read(path)
    except Exception as exc:  # pyogrio raises its own DataSourceError, OSError, ...
        raise ConfigError(f"cannot read {path!r} as a vector layer: {exc}") from exc
    crs = str(meta["crs"] or "EPSG:4326")
    geoms = [
        None if g is None else shapely.to_wkb(reproject(shapely.from_wkb(g), crs, "EPSG:4326"))
        for g in wkb
    ]
    columns = {
        str(name): pa.array(values) for name, values in zip(meta["fields"], fields, strict=True)
    }
    columns["geometry"] = pa.array(geoms, pa.binary())
    return pa.table(columns)


def _view(con: Any, name: str, source: str, geometry: Sequence[str]) -> None:
    """``name`` as a view of ``source`` with its WKB ``geometry`` columns decoded."""
    replace = ", ".join(f'ST_GeomFromWKB("{c}") AS "{c}"' for c in geometry)
    con.execute(f'CREATE VIEW "{name}" AS SELECT * REPLACE ({replace}) FROM "{source}"')


def open_tables(
    tables_dir: str, layers: Mapping[str, str] | None = None, spatial: bool = True
) -> tuple[Any, list[str]]:
    """Register the tables of ``tables_dir`` in a locked-down DuckDB connection.

    Args:
        tables_dir: A folder whose sub-folders hold Parquet files.
        layers: More tables, by name: vector files read with :func:`read_layer`
            (e.g. ``{"concessions": "concessions.geojson"}``).
        spatial: Load the spatial extension and expose geometry columns as
            ``GEOMETRY`` (default); without it they stay WKB blobs.

    Returns:
        ``(connection, table names)``.

    Raises:
        ConfigError: The folder does not exist or holds no table; a layer name
            that is not an identifier or is already a table; a layer file that
            cannot be read; no spatial extension for this DuckDB.
    """
    import duckdb
    import pyarrow.dataset as ds

    if not os.path.isdir(tables_dir):
        raise ConfigError(f"--tables {tables_dir!r} is not a folder")
    con = duckdb.connect(":memory:")
    if spatial:
        load_spatial(con)
    names = []
    root = os.path.realpath(tables_dir)
    sources: dict[str, tuple[Any, list[str]]] = {}
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
        sources[entry] = (dataset, geometry_columns(pq.read_schema(files[0])))
    if not sources:
        raise ConfigError(f"--tables {tables_dir!r} holds no folder of Parquet files")
    for name, path in (layers or {}).items():
        if not _IDENT.match(name) or name in sources:
            raise ConfigError(
                f"layer name {name!r} must be an identifier and not one of the tables "
                f"({', '.join(sorted(sources))})"
            )
        sources[name] = (read_layer(path), ["geometry"])
    for name, (data, geometry) in sources.items():
        if spatial and geometry:
            con.register(f"_{name}_wkb", data)
            _view(con, name, f"_{name}_wkb", geometry)
        else:
            con.register(name, data)
        names.append(name)
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

    Geometry columns (see :func:`minewatch.export.geometry_fields`) show as WKT.

    Args:
        table: The result.
        fmt: ``table``, ``csv`` or ``json``.
        max_width: Longest cell shown in ``table`` format.

    Returns:
        The text.
    """
    import shapely

    from minewatch.export import geometry_fields

    rows = table.to_pylist()
    for name in geometry_fields(table.schema):  # geometry as WKT, not a blob
        for row in rows:
            if row[name] is not None:
                row[name] = shapely.to_wkt(shapely.from_wkb(row[name]), rounding_precision=7)
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
