"""Schemas of the tables the jobs write, each defined once, as Arrow schemas.

``docs/tiles.md`` documents the columns.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["dead_letter_schema", "manifest_schema"]


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
