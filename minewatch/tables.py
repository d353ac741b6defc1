"""Schemas of the tables the jobs write, each defined once, as Arrow schemas.

``docs/tiles.md`` documents the tile job's tables and ``docs/tables.md`` the
inference tables. Geometry columns are WKB; files carry GeoParquet metadata so
GeoPandas and QGIS read them as layers. :func:`bigquery_schema` maps a schema
onto BigQuery's.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

__all__ = [
    "GEOMETRY_COLUMNS",
    "INFER_TABLES",
    "bigquery_schema",
    "dead_letter_schema",
    "frame_labels_schema",
    "manifest_schema",
    "replace_file",
    "sites_schema",
    "stockpile_series_schema",
    "tile_labels_schema",
    "write_geoparquet",
]

_TS = pa.timestamp("s", tz="UTC")


def manifest_schema() -> pa.Schema:
    """One row per tile written by ``minewatch tile``."""
    f64 = pa.float64()
    return pa.schema(
        [
            ("tile_id", pa.string()),
            ("scene_id", pa.string()),
            ("kind", pa.string()),
            ("source", pa.string()),
            ("camera_id", pa.string()),
            ("acquired", pa.timestamp("s", tz="UTC")),
            ("crs", pa.string()),
            ("transform", pa.list_(f64)),
            ("row_off", pa.int64()),
            ("col_off", pa.int64()),
            ("height", pa.int32()),
            ("width", pa.int32()),
            ("minx", f64),
            ("miny", f64),
            ("maxx", f64),
            ("maxy", f64),
            ("west", f64),
            ("south", f64),
            ("east", f64),
            ("north", f64),
            ("bands", pa.list_(pa.string())),
            ("dtype", pa.string()),
            ("label", pa.int32()),
            ("label_name", pa.string()),
            ("label_source", pa.string()),
            ("weak", pa.bool_()),
            ("labelled", pa.bool_()),
            ("class_fractions", pa.list_(pa.float32())),
            ("valid_fraction", pa.float32()),
            ("shard", pa.string()),
        ]
    )


def dead_letter_schema() -> pa.Schema:
    """One row per rejected input, label feature or tile, with the reason.

    ``kind`` is ``input`` (a file or scene that produced no tile), ``tile`` (a tile
    that was dropped), or ``label`` (a label feature or CSV row that was not used).
    """
    return pa.schema(
        [
            ("input", pa.string()),
            ("reason", pa.string()),
            ("kind", pa.string()),
            ("scene_id", pa.string()),
            ("tile_id", pa.string()),
            ("stage", pa.string()),
        ]
    )


def tile_labels_schema() -> pa.Schema:
    """One row per labelled tile: the model's class and probabilities."""
    return pa.schema(
        [
            ("tile_id", pa.string()),
            ("scene_id", pa.string()),
            ("kind", pa.string()),
            ("source", pa.string()),
            ("camera_id", pa.string()),
            ("acquired", _TS),
            ("crs", pa.string()),
            ("row_off", pa.int64()),
            ("col_off", pa.int64()),
            ("label", pa.int32()),
            ("label_name", pa.string()),
            ("score", pa.float32()),
            ("probabilities", pa.list_(pa.float32())),
            ("geometry", pa.binary()),
            ("model_version", pa.string()),
        ]
    )


def frame_labels_schema() -> pa.Schema:
    """One row per camera frame: ore grade and score (mean over its tiles)."""
    return pa.schema(
        [
            ("frame_id", pa.string()),
            ("source", pa.string()),
            ("camera_id", pa.string()),
            ("acquired", _TS),
            ("grade", pa.string()),
            ("label", pa.int32()),
            ("score", pa.float32()),
            ("probabilities", pa.list_(pa.float32())),
            ("tiles", pa.int32()),
            ("model_version", pa.string()),
        ]
    )


def sites_schema() -> pa.Schema:
    """One row per site: a connected region of one class, linked across acquisitions."""
    return pa.schema(
        [
            ("site_id", pa.string()),
            ("kind", pa.string()),
            ("commodity", pa.string()),
            ("geometry", pa.binary()),
            ("source_crs", pa.string()),
            ("geometry_source", pa.binary()),
            ("area_m2", pa.float64()),
            ("score", pa.float32()),
            ("first_seen", _TS),
            ("last_seen", _TS),
            ("acquisitions", pa.int32()),
            ("flagged", pa.bool_()),
            ("reason", pa.string()),
            ("licence_id", pa.string()),
            ("model_version", pa.string()),
            ("scene_ids", pa.list_(pa.string())),
        ]
    )


def stockpile_series_schema() -> pa.Schema:
    """One row per stockpile site and acquisition."""
    return pa.schema(
        [
            ("site_id", pa.string()),
            ("acquired", _TS),
            ("scene_id", pa.string()),
            ("area_m2", pa.float64()),
            ("change_m2", pa.float64()),
            ("model_version", pa.string()),
        ]
    )


#: Inference tables: name -> schema function.
INFER_TABLES = {
    "tile_labels": tile_labels_schema,
    "frame_labels": frame_labels_schema,
    "sites": sites_schema,
    "stockpile_series": stockpile_series_schema,
}

#: Geometry columns per table, all WKB; the first is the primary one.
GEOMETRY_COLUMNS: dict[str, dict[str, str | None]] = {
    "tile_labels": {"geometry": "OGC:CRS84"},
    "sites": {"geometry": "OGC:CRS84", "geometry_source": None},
}


def _geo_metadata(table: str) -> dict[str, Any]:
    columns = {}
    for name, crs in GEOMETRY_COLUMNS.get(table, {}).items():
        meta: dict[str, Any] = {"encoding": "WKB", "geometry_types": []}
        if crs is None:
            meta["crs"] = None  # per row: see source_crs
        columns[name] = meta
    primary = next(iter(columns))
    return {"version": "1.1.0", "primary_column": primary, "columns": columns}


def write_geoparquet(
    path: str, rows: Sequence[dict[str, Any]], table: str, schema: pa.Schema
) -> None:
    """Write rows as one Parquet file, atomically (temp file, then rename).

    Tables with geometry get GeoParquet 1.1 metadata. Readers see the old file or
    the new one, never half of one; writing the same path again replaces it.

    Args:
        path: Destination file (local or remote).
        rows: Dicts with the schema's columns.
        table: Table name (selects the geometry columns).
        schema: Arrow schema.
    """
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    data = pa.Table.from_pylist(list(rows), schema=schema)
    if table in GEOMETRY_COLUMNS:
        meta = dict(data.schema.metadata or {})
        meta[b"geo"] = json.dumps(_geo_metadata(table)).encode()
        data = data.replace_schema_metadata(meta)
    folder = posixpath.dirname(path)
    if "://" not in path:
        os.makedirs(folder, exist_ok=True)
    temp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}.parquet")
    with FileSystems.create(temp) as f:
        pq.write_table(data, f)
    replace_file(temp, path)


def replace_file(temp: str, path: str) -> None:
    """Move a finished ``temp`` file onto ``path``, replacing what was there.

    Atomic on a local file system (``os.replace``); on object stores, where a
    rename is a copy, the old object is deleted first.
    """
    from apache_beam.io.filesystems import FileSystems

    if "://" not in path:
        os.replace(temp, path)
        return
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temp], [path])


_BQ = {
    pa.types.is_string: "STRING",
    pa.types.is_integer: "INT64",
    pa.types.is_floating: "FLOAT64",
    pa.types.is_boolean: "BOOL",
    pa.types.is_timestamp: "TIMESTAMP",
}


def bigquery_schema(table: str, schema: pa.Schema) -> list[dict[str, str]]:
    """Map an Arrow schema onto BigQuery fields (``name``, ``type``, ``mode``).

    Lists become REPEATED fields, WKB geometry columns GEOGRAPHY (loaded as WKT),
    other binary BYTES; every other field is NULLABLE.

    Args:
        table: Table name (selects the geometry columns).
        schema: Arrow schema.

    Returns:
        BigQuery ``TableSchema`` fields as dicts.

    Raises:
        TypeError: A column type with no BigQuery counterpart.
    """
    geometry = GEOMETRY_COLUMNS.get(table, {})
    fields = []
    for f in schema:
        kind, mode = f.type, "NULLABLE"
        if pa.types.is_list(kind):
            kind, mode = kind.value_type, "REPEATED"
        if f.name in geometry:
            name = "GEOGRAPHY"
        elif pa.types.is_binary(kind):
            name = "BYTES"
        else:
            matches = [bq for test, bq in _BQ.items() if test(kind)]
            if not matches:
                raise TypeError(f"{table}.{f.name}: no BigQuery type for {kind}")
            name = matches[0]
        fields.append({"name": f.name, "type": name, "mode": mode})
    return fields
