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

from minewatch.paths import is_remote, replace_file

__all__ = [
    "GEOMETRY_COLUMNS",
    "INFER_TABLES",
    "bigquery_schema",
    "dead_letter_schema",
    "frame_labels_schema",
    "frame_summaries_schema",
    "manifest_schema",
    "site_observations_schema",
    "sites_schema",
    "stockpile_series_schema",
    "tile_labels_schema",
    "training_runs_schema",
    "vessels_schema",
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


def frame_summaries_schema() -> pa.Schema:
    """One row per camera, event-time window and model version (``minewatch stream``).

    ``grade_counts`` holds the number of frames per class, in the order of
    ``classes``; ``grade`` is the class with most frames (ties: the higher mean
    probability); ``score`` and ``probabilities`` are means over the window's frames.
    """
    return pa.schema(
        [
            ("camera_id", pa.string()),
            ("window_start", _TS),
            ("window_end", _TS),
            ("frames", pa.int32()),
            ("grade", pa.string()),
            ("classes", pa.list_(pa.string())),
            ("grade_counts", pa.list_(pa.int32())),
            ("score", pa.float32()),
            ("probabilities", pa.list_(pa.float32())),
            ("first_frame", _TS),
            ("last_frame", _TS),
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
            ("status", pa.string()),
        ]
    )


def site_observations_schema() -> pa.Schema:
    """One row per site and acquisition it was seen in: its outline and score that day.

    ``site_id`` is the ``sites`` row the observation belongs to; ``status`` is
    the site's (``confirmed`` or ``candidate``, see ``docs/tables.md``), so a
    query for what to act on is ``where status = 'confirmed'``. Vessel sites
    (flagged berths) have one observation per sighting.
    """
    return pa.schema(
        [
            ("site_id", pa.string()),
            ("kind", pa.string()),
            ("scene_id", pa.string()),
            ("acquired", _TS),
            ("geometry", pa.binary()),
            ("source_crs", pa.string()),
            ("geometry_source", pa.binary()),
            ("area_m2", pa.float64()),
            ("score", pa.float32()),
            ("flagged", pa.bool_()),
            ("reason", pa.string()),
            ("licence_id", pa.string()),
            ("status", pa.string()),
            ("model_version", pa.string()),
        ]
    )


def stockpile_series_schema() -> pa.Schema:
    """One row per stockpile site and acquisition, with its volume when measured.

    ``volume_method`` is ``dsm``, ``shadow`` or ``none`` (see
    :data:`minewatch.volumes.VOLUME_METHODS`); ``volume_reason`` says why a
    volume is missing or why the shadow was used instead of a DSM. Writers that
    do not measure volumes leave the volume columns null.
    """
    return pa.schema(
        [
            ("site_id", pa.string()),
            ("acquired", _TS),
            ("scene_id", pa.string()),
            ("area_m2", pa.float64()),
            ("change_m2", pa.float64()),
            ("model_version", pa.string()),
            ("volume_m3", pa.float64()),
            ("volume_method", pa.string()),
            ("volume_uncertainty_m3", pa.float64()),
            ("volume_reason", pa.string()),
            ("height_m", pa.float64()),
        ]
    )


def training_runs_schema() -> pa.Schema:
    """One row per ``minewatch retrain`` run (``TABLES/training_runs/``).

    ``status`` is ``promoted``, ``not_promoted``, ``noop`` (nothing new to train
    on) or ``failed``; ``reason`` says why in words. Counts add up:
    ``scenes_new = scenes_tiled + scenes_dead_lettered``. Metrics are the
    candidate's on the held-out tiles (``current_*``: the model it was compared
    with, on the same tiles); ``metrics_json`` holds the trainer's full held-out
    report. Columns a run did not reach are null.
    """
    i64, f64, s = pa.int64(), pa.float64(), pa.string()
    return pa.schema(
        [
            ("run_id", s),
            ("status", s),
            ("promoted", pa.bool_()),
            ("reason", s),
            ("started", _TS),
            ("finished", _TS),
            ("window_start", _TS),
            ("window_end", _TS),
            ("scenes_seen", i64),
            ("scenes_new", i64),
            ("scenes_tiled", i64),
            ("scenes_dead_lettered", i64),
            ("dead_letter_rows", i64),
            ("tiles_new", i64),
            ("tiles_total", i64),
            ("batches", i64),
            ("graph_edges", i64),
            ("train_key", s),
            ("data_hash", s),
            ("config_hash", s),
            ("init", s),
            ("resumed_from_step", i64),
            ("global_step", i64),
            ("model_dir", s),
            ("model_version", s),
            ("metric", s),
            ("metric_value", f64),
            ("eval_examples", i64),
            ("accuracy", f64),
            ("balanced_accuracy", f64),
            ("macro_f1", f64),
            ("corrupted_accuracy", f64),
            ("adversarial_accuracy", f64),
            ("current_version", s),
            ("current_accuracy", f64),
            ("current_corrupted_accuracy", f64),
            ("report", s),
            ("metrics_json", s),
        ]
    )


def vessels_schema() -> pa.Schema:
    """One row per vessel seen in a scene (``minewatch infer --licensed-ports``).

    Built by :func:`minewatch.vessels.judge_vessels` from the per-pixel
    ``vessel`` class: centre (``lon``/``lat`` and scene-CRS ``x``/``y``), the
    footprint rectangle as ``geometry`` (EPSG:4326) and ``geometry_source``
    (scene CRS), ``length_m``/``width_m``/``heading_deg`` (0-180 from north,
    clockwise) estimated from the footprint, ``berthed`` (at most
    ``berth_gap_m`` of water between hull and land), the nearest shore point,
    the nearest licensed port, ``licensed`` (null when not berthed or without
    a registry) and ``flagged`` with ``reason``. See ``docs/vessels.md``.
    """
    f64, s = pa.float64(), pa.string()
    return pa.schema(
        [
            ("vessel_id", s),
            ("scene_id", s),
            ("acquired", _TS),
            ("lon", f64),
            ("lat", f64),
            ("x", f64),
            ("y", f64),
            ("source_crs", s),
            ("geometry", pa.binary()),
            ("geometry_source", pa.binary()),
            ("length_m", f64),
            ("width_m", f64),
            ("heading_deg", f64),
            ("area_m2", f64),
            ("pixels", pa.int32()),
            ("score", pa.float32()),
            ("berthed", pa.bool_()),
            ("shore_gap_m", f64),
            ("shore_lon", f64),
            ("shore_lat", f64),
            ("shore_distance_m", f64),
            ("port_id", s),
            ("port_distance_m", f64),
            ("licensed", pa.bool_()),
            ("flagged", pa.bool_()),
            ("reason", s),
            ("model_version", s),
        ]
    )


#: Inference tables: name -> schema function.
INFER_TABLES = {
    "tile_labels": tile_labels_schema,
    "frame_labels": frame_labels_schema,
    "sites": sites_schema,
    "site_observations": site_observations_schema,
    "stockpile_series": stockpile_series_schema,
    "vessels": vessels_schema,
}

#: Geometry columns per table, all WKB; the first is the primary one.
GEOMETRY_COLUMNS: dict[str, dict[str, str | None]] = {
    "tile_labels": {"geometry": "OGC:CRS84"},
    "sites": {"geometry": "OGC:CRS84", "geometry_source": None},
    "site_observations": {"geometry": "OGC:CRS84", "geometry_source": None},
    "vessels": {"geometry": "OGC:CRS84", "geometry_source": None},
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
    path: str, rows: Sequence[dict[str, Any]] | pa.Table, table: str, schema: pa.Schema
) -> None:
    """Write rows as one Parquet file, atomically (temp file, then rename).

    Tables with geometry get GeoParquet 1.1 metadata. Readers see the old file or
    the new one, never half of one; writing the same path again replaces it.

    Args:
        path: Destination file (local or remote).
        rows: Dicts with the schema's columns, or an Arrow table of them
            (cast to ``schema``).
        table: Table name (selects the geometry columns).
        schema: Arrow schema.
    """
    import pyarrow.parquet as pq
    from apache_beam.io.filesystems import FileSystems

    if isinstance(rows, pa.Table):
        data = rows.select(schema.names).cast(schema)
    else:
        data = pa.Table.from_pylist(list(rows), schema=schema)
    if table in GEOMETRY_COLUMNS:
        meta = dict(data.schema.metadata or {})
        meta[b"geo"] = json.dumps(_geo_metadata(table)).encode()
        data = data.replace_schema_metadata(meta)
    folder = posixpath.dirname(path)
    if not is_remote(path):
        os.makedirs(folder, exist_ok=True)
    temp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}.parquet")
    with FileSystems.create(temp) as f:
        pq.write_table(data, f)
    replace_file(temp, path)


_BQ = {
    pa.types.is_string: "STRING",
    pa.types.is_integer: "INT64",
    pa.types.is_floating: "FLOAT64",
    pa.types.is_boolean: "BOOL",
    pa.types.is_timestamp: "TIMESTAMP",
}


def bigquery_schema(table: str, schema: pa.Schema) -> list[dict[str, str]]:
    """Map an Arrow schema onto BigQuery fields (``name``, ``type``, ``mode``).

    Lists become REPEATED fields, WKB geometry columns in lon/lat (a fixed
    ``OGC:CRS84`` in :data:`GEOMETRY_COLUMNS`) GEOGRAPHY, geometry columns with
    no fixed CRS (``geometry_source``: the scene's projected CRS, named per row
    in ``source_crs``) STRING, both loaded as WKT (GEOGRAPHY holds only WGS84
    longitudes and latitudes); other binary BYTES; every other field is
    NULLABLE.

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
            name = "GEOGRAPHY" if geometry[f.name] else "STRING"
        elif pa.types.is_binary(kind):
            name = "BYTES"
        else:
            matches = [bq for test, bq in _BQ.items() if test(kind)]
            if not matches:
                raise TypeError(f"{table}.{f.name}: no BigQuery type for {kind}")
            name = matches[0]
        fields.append({"name": f.name, "type": name, "mode": mode})
    return fields
