"""The Tile job's outputs: TFRecord shards, manifest and dead-letter Parquet, the commit.

Shards are written under a temporary name and renamed when the job finishes
(:func:`finalize`), with ``stats.json`` last: a reader that sees ``stats.json``
sees every shard it names.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import posixpath
import uuid
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from minewatch.paths import is_remote
from minewatch.spec import Tile, encode_tiles
from minewatch.tables import dead_letter_schema, manifest_schema
from minewatch.tfrecord import write_record
from pipelines.tile.accounting import NS, SHARDS
from pipelines.tile.cut import TileBatch

__all__ = [
    "WriteParquetParts",
    "WriteShards",
    "finalize",
    "output_paths",
]

# -- writing -----------------------------------------------------------------------


class WriteShards(beam.DoFn):  # type: ignore[misc]
    """Write each shard's tiles to its TFRecord file inside the fused stage; yield manifest rows.

    The batches come from :class:`GroupBlocksIntoShards` through the cut step:
    a shard's batches arrive consecutively, in a fixed order, so the file is
    ``<batch.shard>.tfrecord`` and its records are the same in every run. A
    shard that reaches ``records_per_shard`` tiles rolls over into
    ``<batch.shard>-1.tfrecord``, ``-2``, ...

    Each bundle attempt writes under its own folder ``.tmp-<job>/tiles/<attempt>/``,
    so a retried bundle, which writes files of the same names, never writes into
    a file a failed attempt still holds open; :func:`finalize` moves the files
    of committed bundles into place and deletes the rest. Yields the files'
    paths relative to the temporary folder on ``shards``.

    Args:
        temp_dir: The job's temporary folder.
        records_per_shard: Most tiles per file.
    """

    def __init__(self, temp_dir: str, records_per_shard: int) -> None:
        self._temp_dir = temp_dir
        self._max = records_per_shard
        self._bytes = Metrics.counter(NS, "bytes_written")

    def start_bundle(self) -> None:
        """Start the bundle attempt's folder and forget the last file."""
        self._attempt = uuid.uuid4().hex[:12]
        self._file: Any = None
        self._shard: str | None = None
        self._name = ""
        self._part = 0
        self._count = 0
        self._closed: set[str] = set()

    def _open(self, name: str) -> None:
        folder = posixpath.join(self._temp_dir, "tiles", self._attempt)
        if not is_remote(folder):
            os.makedirs(folder, exist_ok=True)
        self._file = FileSystems.create(posixpath.join(folder, name))
        self._name = name
        self._count = 0

    def _close(self) -> str | None:
        if self._file is None:
            return None
        self._file.close()
        self._file = None
        return f"tiles/{self._attempt}/{self._name}"

    def process(self, batch: TileBatch) -> Iterator[Any]:
        """Append a batch's tiles to its shard; yield one manifest row per tile."""
        if not batch.shard:
            raise ValueError("WriteShards needs batches of GroupBlocksIntoShards (a shard name)")
        if batch.shard != self._shard:
            if batch.shard in self._closed:
                # Writing on would replace the shard's first file: tiles would be lost.
                raise RuntimeError(
                    f"the blocks of tile shard {batch.shard} did not arrive together; "
                    "the cut and write steps must run fused after GroupBlocksIntoShards"
                )
            done = self._close()
            if done:
                yield TaggedOutput(SHARDS, done)
            if self._shard is not None:
                self._closed.add(self._shard)
            self._shard, self._part = batch.shard, 0
            self._open(f"{batch.shard}.tfrecord")
        for tile, record in zip(batch.tiles, encode_tiles(batch.tiles), strict=True):
            if self._count >= self._max:
                done = self._close()
                if done:
                    yield TaggedOutput(SHARDS, done)
                self._part += 1
                self._open(f"{self._shard}-{self._part}.tfrecord")
            self._bytes.inc(write_record(self._file, record))
            self._count += 1
            yield _manifest_row(tile, batch, self._name)

    def finish_bundle(self) -> Iterator[TaggedOutput]:
        """Close the last file; yield its path on ``shards``."""
        done = self._close()
        if done:
            window = GlobalWindow()
            yield TaggedOutput(SHARDS, WindowedValue(done, window.max_timestamp(), [window]))


class WriteParquetParts(beam.DoFn):  # type: ignore[misc]
    """Write rows to Parquet part files per bundle, committed like the tile shards.

    One step instead of Beam's file sink (a dozen), which matters for the job's
    fixed cost; rows are buffered per bundle up to ``max_rows``, sorted (by the
    schema's string columns, in order) and written as ``part-<hash>.parquet``,
    the hash being of the file's bytes: the same rows give the same file and
    name. Each bundle attempt writes under ``.tmp-<job>/<table>/<attempt>/``.

    Args:
        temp_dir: The job's temporary folder.
        table: Table name: the folder the parts go to.
        schema: Arrow schema of the rows.
        max_rows: Rows per part file.
    """

    def __init__(self, temp_dir: str, table: str, schema: Any, max_rows: int = 50_000) -> None:
        self._temp_dir = temp_dir
        self._table = table
        self._schema = schema
        self._max = max_rows
        self._sort_by = [f.name for f in schema if str(f.type) == "string"]

    def start_bundle(self) -> None:
        """Start the bundle attempt's folder and row buffer."""
        self._attempt = uuid.uuid4().hex[:12]
        self._rows: list[dict[str, Any]] = []

    def _flush(self) -> str | None:
        if not self._rows:
            return None
        import pyarrow as pa
        import pyarrow.parquet as pq

        keys = self._sort_by
        rows = sorted(self._rows, key=lambda row: [row[k] or "" for k in keys])
        self._rows = []
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pylist(rows, schema=self._schema), sink)
        data = sink.getvalue().to_pybytes()
        name = f"part-{hashlib.blake2b(data, digest_size=8).hexdigest()}.parquet"
        folder = posixpath.join(self._temp_dir, self._table, self._attempt)
        if not is_remote(folder):
            os.makedirs(folder, exist_ok=True)
        with FileSystems.create(posixpath.join(folder, name)) as f:
            f.write(data)
        return f"{self._table}/{self._attempt}/{name}"

    def process(self, row: dict[str, Any]) -> Iterator[str]:
        """Buffer a row; yield a part's relative path when one is written."""
        self._rows.append(row)
        if len(self._rows) >= self._max:
            done = self._flush()
            if done:
                yield done

    def finish_bundle(self) -> Iterator[WindowedValue]:
        """Write the buffered rows; yield the part's relative path."""
        done = self._flush()
        if done:
            window = GlobalWindow()
            yield WindowedValue(done, window.max_timestamp(), [window])


def _manifest_row(tile: Tile, batch: TileBatch, shard: str) -> dict[str, Any]:
    west, south, east, north = tile.bounds_wgs84
    nan = math.isnan
    return {
        "tile_id": tile.tile_id,
        "scene_id": tile.scene_id,
        "kind": tile.kind,
        "source": batch.source,
        "camera_id": tile.camera_id,
        "acquired": tile.acquired,
        "crs": tile.crs,
        "transform": list(tile.transform),
        "row_off": tile.row_off,
        "col_off": tile.col_off,
        "height": tile.image.shape[0],
        "width": tile.image.shape[1],
        "minx": tile.bounds[0],
        "miny": tile.bounds[1],
        "maxx": tile.bounds[2],
        "maxy": tile.bounds[3],
        "west": None if nan(west) else west,
        "south": None if nan(south) else south,
        "east": None if nan(east) else east,
        "north": None if nan(north) else north,
        "bands": list(tile.bands),
        "dtype": batch.dtype,
        "label": tile.label,
        "label_name": tile.label_name,
        "label_source": tile.label_source,
        "weak": tile.weak,
        "labelled": tile.label >= 0,
        "class_fractions": [float(x) for x in tile.class_fractions],
        "valid_fraction": tile.valid_fraction,
        "shard": shard,
    }


def finalize(
    _: Any,
    files: list[str],
    counts: dict[str, int],
    band_stats: dict[str, dict[str, float]],
    out: str,
    temp_dir: str,
    header: dict[str, Any],
) -> dict[str, Any]:
    """Move committed files into place, delete leftovers, write ``stats.json``.

    ``files`` are paths relative to ``temp_dir``, ``<table>/<attempt>/<name>``
    (``tiles``, ``manifest``, ``dead_letter``), of bundles that committed; each
    goes to ``<out>/<table>/<name>``. A table without any part gets an empty
    Parquet file, so readers always find its schema.

    Raises:
        RuntimeError: Two committed bundles wrote the same tile shard (its
            blocks were split between bundles: tiles would be lost).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    committed = _final_names(sorted(set(files)))
    for rel, final in committed.items():
        src, dst = posixpath.join(temp_dir, rel), posixpath.join(out, final)
        if not is_remote(dst):
            os.makedirs(posixpath.dirname(dst), exist_ok=True)
        if FileSystems.exists(src):
            FileSystems.rename([src], [dst])
        elif not FileSystems.exists(dst):  # a retried finalize already moved it
            raise OSError(f"{src} of a committed bundle is missing")
    finals = sorted(committed.values())
    for table, schema in (("manifest", manifest_schema()), ("dead_letter", dead_letter_schema())):
        if not any(rel.startswith(f"{table}/") for rel in finals):
            folder = posixpath.join(out, table)
            if not is_remote(folder):
                os.makedirs(folder, exist_ok=True)
            with FileSystems.create(posixpath.join(folder, "part-empty.parquet")) as f:
                pq.write_table(pa.Table.from_pylist([], schema=schema), f)
    if FileSystems.exists(temp_dir):
        FileSystems.delete([temp_dir])
    if not is_remote(out):
        os.makedirs(posixpath.join(out, "tiles"), exist_ok=True)  # even when no tile is kept
    dropped = {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("dropped.")}
    stats = {
        **header,
        "inputs": {
            "total": counts.get("inputs_discovered", 0) + counts.get("inputs_rejected", 0),
            "tiled": counts.get("inputs_tiled", 0),
            "dead_lettered": counts.get("inputs_dead_lettered", 0)
            + counts.get("inputs_rejected", 0),
        },
        "tiles": {
            "planned": counts.get("planned", 0),
            "written": counts.get("written", 0),
            "dropped": dropped,
        },
        "shards": [rel.split("/", 1)[1] for rel in finals if rel.startswith("tiles/")],
        "bands": band_stats,
    }
    with FileSystems.create(posixpath.join(out, "stats.json")) as f:
        f.write(json.dumps(stats, indent=2, default=str).encode())
    return stats


def _final_names(committed: list[str]) -> dict[str, str]:
    """``{<table>/<attempt>/<name>: <table>/<name>}`` of the committed files.

    Two committed Parquet parts can share a name only by holding the same rows
    (the name is a hash of the bytes): the second becomes ``part-<hash>-1``, so
    neither copy's rows are lost. Two tile shards must never share one.
    """
    out: dict[str, str] = {}
    taken: set[str] = set()
    for rel in committed:
        table, _, name = rel.split("/")
        final = f"{table}/{name}"
        if final in taken and table == "tiles":
            raise RuntimeError(
                f"two committed bundles wrote tile shard {name}: its blocks were split "
                "between bundles; the cut and write steps must run fused after "
                "GroupBlocksIntoShards"
            )
        stem, ext = posixpath.splitext(name)
        i = 0
        while final in taken:
            i += 1
            final = f"{table}/{stem}-{i}{ext}"
        taken.add(final)
        out[rel] = final
    return out


# -- the job -----------------------------------------------------------------------


def output_paths(out: str) -> dict[str, str]:
    """Where ``minewatch tile`` writes, under ``out``."""
    return {
        "tiles": posixpath.join(out, "tiles"),
        "manifest": posixpath.join(out, "manifest"),
        "dead_letter": posixpath.join(out, "dead_letter"),
        "stats": posixpath.join(out, "stats.json"),
    }
