"""A query's result as files a GIS opens: GeoJSON, GeoParquet, CSV.

A result column is a geometry when DuckDB returns it as ``GEOMETRY`` (Arrow's
``geoarrow.wkb`` extension, which :func:`minewatch.query.open_tables` gives the
tables' geometry columns) or when it is a binary column named ``geometry``. The
first geometry column (``geometry`` if there is one) is the features' geometry;
other geometry columns become WKT text. The tables' geometries are EPSG:4326
(lon/lat), and so are the files: a result whose geometry lies outside lon/lat
bounds (a query that ``ST_Transform``-ed it and did not transform it back) is
refused rather than written with a wrong CRS.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from minewatch.errors import ConfigError
from minewatch.paths import write_bytes

__all__ = ["EXPORT_FORMATS", "geometry_fields", "to_geojson", "write_result"]

#: ``--format`` values that write a file.
EXPORT_FORMATS = ("csv", "json", "geojson", "geoparquet")

_EXTENSION = b"ARROW:extension:name"


def geometry_fields(schema: pa.Schema) -> list[str]:
    """The result's geometry columns, the primary one first."""
    found = [
        f.name
        for f in schema
        if pa.types.is_binary(f.type)
        and ((f.metadata or {}).get(_EXTENSION) == b"geoarrow.wkb" or f.name == "geometry")
    ]
    return sorted(found, key=lambda name: name != "geometry")


def _lonlat(geoms: Sequence[Any]) -> None:
    import shapely

    present = [g for g in geoms if g is not None and not g.is_empty]
    if not present:
        return
    x0, y0, x1, y1 = shapely.total_bounds(present)
    if x0 < -180 or x1 > 180 or y0 < -90 or y1 > 90:
        raise ConfigError(
            f"the result's geometry spans x {x0:.6g}..{x1:.6g}, y {y0:.6g}..{y1:.6g}: not "
            "lon/lat (EPSG:4326); transform it back, e.g. ST_Transform(g, 'EPSG:32633', "
            "'EPSG:4326', always_xy := true)",
            option="--format",
        )


def _decoded(table: pa.Table, name: str) -> list[Any]:
    import shapely

    return [None if b is None else shapely.from_wkb(b) for b in table.column(name).to_pylist()]


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)  # dates, timestamps, decimals


def _properties(table: pa.Table, skip: str | None) -> list[dict[str, Any]]:
    """Rows without the ``skip`` column; other geometry columns as WKT."""
    import shapely

    others = set(geometry_fields(table.schema)) - {skip}
    rows = table.drop_columns([skip]).to_pylist() if skip else table.to_pylist()
    for row in rows:
        for name in others:
            if row.get(name) is not None:
                row[name] = shapely.to_wkt(shapely.from_wkb(row[name]))
        for name, value in row.items():
            row[name] = _plain(value)
    return rows


def to_geojson(table: pa.Table) -> dict[str, Any]:
    """The result as a GeoJSON FeatureCollection (EPSG:4326, RFC 7946).

    Raises:
        ConfigError: No geometry column, or a geometry that is not lon/lat.
    """
    import shapely

    fields = geometry_fields(table.schema)
    if not fields:
        raise ConfigError(
            "GeoJSON needs a geometry column in the result (select geometry, or "
            "ST_... AS geometry)",
            option="--format",
        )
    geoms = _decoded(table, fields[0])
    _lonlat(geoms)
    features = [
        {
            "type": "Feature",
            "geometry": None if g is None else json.loads(shapely.to_geojson(g)),
            "properties": props,
        }
        for g, props in zip(geoms, _properties(table, fields[0]), strict=True)
    ]
    return {"type": "FeatureCollection", "features": features}


def _geoparquet(table: pa.Table) -> pa.Table:
    """The result with GeoParquet 1.1 metadata (EPSG:4326 primary geometry)."""
    import shapely

    fields = geometry_fields(table.schema)
    if not fields:
        raise ConfigError("GeoParquet needs a geometry column in the result", option="--format")
    columns = {}
    for name in fields:
        geoms = _decoded(table, name)
        if name == fields[0]:
            _lonlat(geoms)
        present = [g for g in geoms if g is not None and not g.is_empty]
        types = sorted({g.geom_type for g in present})
        spec: dict[str, Any] = {"encoding": "WKB", "geometry_types": types}
        if present:
            spec["bbox"] = [float(v) for v in shapely.total_bounds(present)]
        if name != fields[0]:
            spec["crs"] = None  # unknown: only the primary column is known to be lon/lat
        columns[name] = spec
    # Plain binary columns (the geoarrow extension marker is DuckDB's, not GeoParquet's).
    plain = pa.schema(
        [pa.field(f.name, f.type, f.nullable) if f.name in fields else f for f in table.schema]
    )
    meta = {
        b"geo": json.dumps(
            {"version": "1.1.0", "primary_column": fields[0], "columns": columns}
        ).encode()
    }
    return table.cast(plain).replace_schema_metadata(meta)


def write_result(table: pa.Table, fmt: str, out: str) -> None:
    """Write a query's result to ``out`` as ``fmt`` (one of :data:`EXPORT_FORMATS`).

    Raises:
        ConfigError: An unknown format, or a result a geometry format cannot
            hold (see :func:`to_geojson`).
    """
    import io

    import pyarrow.parquet as pq

    if fmt == "geojson":
        data = json.dumps(to_geojson(table)).encode()
    elif fmt == "geoparquet":
        buf = io.BytesIO()
        pq.write_table(_geoparquet(table), buf)
        data = buf.getvalue()
    elif fmt == "csv":
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows(
            [[_csv_cell(r[n]) for n in table.column_names] for r in _properties(table, None)]
        )
        data = text.getvalue().encode()
    elif fmt == "json":
        data = json.dumps(_properties(table, None), indent=1).encode()
    else:
        raise ConfigError(f"cannot write {fmt!r}: give one of {', '.join(EXPORT_FORMATS)}")
    write_bytes(out, data)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)
