"""The Tile job: scenes and camera frames into georeferenced, labelled tiles.

Graph (every step labelled)::

    inputs ─ Discover ─┬─ (frames CSV join) ─ Plan ─ Shards ─ Cut ─ Write ─ manifest
                       └─ dead letter         │                 │      └─ shards ─┐
                                              └─ per-scene counts ┴─ band stats ─ Finalize
                                                                                (stats.json,
                                                                                 shard rename)

Scale: a scene is split into blocks of tiles (``--block-tiles``); blocks are
dealt into shards by a hash of their scene and position (about 80% of
``--records-per-shard`` planned tiles per shard, so scenes mix within a shard
and a big scene spreads over many), and the shards go to the workers. A worker
reads its shard's blocks one at a time, in a fixed order, cuts the tiles and
writes them to the shard's TFRecord file inside the same fused stage, so tile
pixels never pass through a shuffle and no process holds a scene. Only small
records (block tasks, counts, statistics, file names) are grouped.

Reproducible: a shard's name (``tiles-SSSSS-of-NNNNN.tfrecord``), its tiles and
their order follow from the inputs and the options alone, not from how the
runner cuts bundles or how many workers there are. The manifest and dead-letter
parts are named by a hash of their bytes, rows sorted (which rows share a part
follows the bundles).

Accounting (written to ``stats.json`` and checked by the tests)::

    inputs.total  = inputs.tiled + inputs.dead_lettered
    tiles.planned = tiles.written + sum(tiles.dropped.values())
"""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import math
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from minewatch.bandstats import BandStats
from minewatch.errors import ConfigError, InputError, SceneError
from minewatch.labels import FrameLabel, FrameLabels, VectorLabels, tile_label, weak_label_mask
from minewatch.paths import is_remote
from minewatch.rasters import Block, SceneReader, plan_blocks
from minewatch.scenes import Rejection, SceneRef, group_files
from minewatch.spec import UNKNOWN_CLASS, Tile, encode_tiles
from minewatch.tables import dead_letter_schema, manifest_schema
from minewatch.tfrecord import write_record
from pipelines.combiners import SumCounters
from pipelines.options import list_inputs, run_pipeline
from pipelines.tile.options import TileConfig

__all__ = [
    "COUNTS",
    "DEAD",
    "AccountScenes",
    "CutScenes",
    "GroupBlocksIntoShards",
    "TileBatch",
    "TileScenes",
    "dead_row",
    "output_paths",
    "prepare_out",
    "run",
    "run_tile",
]

log = logging.getLogger(__name__)

_NS = "minewatch.tile"
DEAD = "dead"
COUNTS = "counts"
BAND_STATS = "band_stats"
SHARDS = "shards"
LABEL_HITS = "label_hits"


def dead_row(
    input: str, reason: str, kind: str, scene_id: str = "", tile_id: str = "", stage: str = ""
) -> dict[str, str]:
    """One row of the ``dead_letter`` table (:func:`minewatch.tables.dead_letter_schema`)."""
    return {
        "input": input,
        "reason": reason,
        "kind": kind,
        "scene_id": scene_id,
        "tile_id": tile_id,
        "stage": stage,
    }


# -- discovery ---------------------------------------------------------------------


class DiscoverScenes(beam.DoFn):  # type: ignore[misc]
    """List all inputs at once and group their files into scenes and frames."""

    def __init__(self, frame_pattern: str) -> None:
        self._frame_pattern = frame_pattern
        self._inputs = Metrics.counter(_NS, "inputs")
        self._rejected = Metrics.counter(_NS, "inputs_dead_lettered")

    def process(self, patterns: Sequence[str]) -> Iterator[Any]:
        """Yield SceneRefs; dead-letter rows to ``dead``; input counts to ``counts``."""
        files: list[str] = []
        for pattern in patterns:
            matched = list_inputs(pattern)
            if not matched:
                yield from self._reject(Rejection(pattern, "matched no file"))
            files.extend(matched)
        refs, rejected = group_files(files, self._frame_pattern)
        for rejection in rejected:
            yield from self._reject(rejection)
        for ref in refs:
            self._inputs.inc()
            yield TaggedOutput(COUNTS, ("", collections.Counter(inputs_discovered=1)))
            yield ref

    def _reject(self, rejection: Rejection) -> Iterator[Any]:
        self._inputs.inc()
        self._rejected.inc()
        yield TaggedOutput(COUNTS, ("", collections.Counter(inputs_rejected=1)))
        yield TaggedOutput(
            DEAD, dead_row(rejection.input, rejection.reason, "input", stage="discover")
        )


# -- frame labels ------------------------------------------------------------------


class ParseFrameLabels(beam.DoFn):  # type: ignore[misc]
    """Parse frames-CSV lines into ``(path, FrameLabel)``; bad lines are dead-lettered."""

    def __init__(self, csv_path: str, columns: Sequence[str]) -> None:
        self._csv = csv_path
        self._columns = tuple(columns)
        self._base = posixpath.dirname(csv_path)

    def process(self, line: str) -> Iterator[Any]:
        """Yield ``(path, FrameLabel)`` or a dead-letter row."""
        if not line.strip():
            return
        try:
            row = FrameLabels.parse_line(line, self._columns, self._base)
        except InputError as exc:
            yield TaggedOutput(DEAD, dead_row(self._csv, str(exc), "label", stage="labels"))
            return
        yield row.path, row


def _attach_frame_label(item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    """Join frames with their CSV rows; rows without a frame are dead-lettered."""
    path, groups = item
    refs, rows = groups["ref"], groups["label"]
    for _ in rows[1:]:
        yield TaggedOutput(
            DEAD,
            dead_row(
                path, "duplicate row in frame labels; first one used", "label", stage="labels"
            ),
        )
    if not refs:
        for row in rows[:1]:
            yield TaggedOutput(
                DEAD,
                dead_row(
                    row.path, "frame label for a file that is not an input", "label", stage="labels"
                ),
            )
        return
    label = rows[0] if rows else None
    for ref in refs:
        if label is not None:
            ref = replace(
                ref,
                camera_id=label.camera_id or ref.camera_id,
                acquired=_iso_or(label.timestamp, ref.acquired),
            )
        yield ref, label


def _iso_or(text: str, default: str) -> str:
    if not text:
        return default
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return default


# -- planning ----------------------------------------------------------------------


@dataclass(frozen=True)
class BlockTask:
    """A block of one scene to read and cut; small, so it can be shuffled.

    Attributes:
        ref: The scene.
        label: Its frames-CSV row, if any.
        block: The block of tiles.
        shard: Name (without extension) of the tile shard the block's tiles go
            to; ``""`` outside the Tile job (see :class:`GroupBlocksIntoShards`).
    """

    ref: SceneRef
    label: FrameLabel | None
    block: Block
    shard: str = ""


def _reader(ref: SceneRef, config: TileConfig) -> SceneReader:
    return SceneReader(
        ref,
        bands=None if ref.kind == "frame" else config.bands,
        resolution=config.resolution if ref.kind == "scene" else None,
        resampling=config.resampling,
        nodata=config.nodata,
        cloud=config.cloud if ref.kind == "scene" else None,
        max_pixels=config.max_scene_pixels,
    )


class PlanScene(beam.DoFn):  # type: ignore[misc]
    """Check a scene's headers and split its grid into blocks of tiles."""

    def __init__(self, config: TileConfig) -> None:
        self._config = config
        self._rejected = Metrics.counter(_NS, "inputs_dead_lettered")
        self._planned = Metrics.counter(_NS, "tiles_planned")

    def process(self, item: tuple[SceneRef, FrameLabel | None]) -> Iterator[Any]:
        """Yield BlockTasks; a scene that cannot be read goes to ``dead``."""
        ref, label = item
        c = self._config
        try:
            with _reader(ref, c) as reader:
                assert reader.grid is not None
                height, width = reader.grid.height, reader.grid.width
        except SceneError as exc:
            self._rejected.inc()
            yield TaggedOutput(COUNTS, (ref.scene_id, collections.Counter(failed=1)))
            yield TaggedOutput(
                DEAD, dead_row(ref.source, str(exc), "input", ref.scene_id, stage="open")
            )
            return
        blocks = list(plan_blocks(height, width, c.tile_size, c.step, c.edge, c.block_tiles))
        planned = sum(b.num_tiles for b in blocks)
        self._planned.inc(planned)
        yield TaggedOutput(COUNTS, (ref.scene_id, collections.Counter(planned=planned)))
        for block in blocks:
            yield BlockTask(ref, label, block)


#: Planned tiles per shard, as a share of ``--records-per-shard``. Blocks land in
#: shards by a hash, so shard sizes scatter around the mean; a mean below the cap
#: keeps most shards in one file (a shard that reaches the cap rolls over into a
#: part file, so the cap always holds).
_SHARD_FILL = 0.8


def _stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process and run.

    Python's ``hash`` of a string is salted per process, so it cannot place
    records in files.
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _shard_count(planned: int, records_per_shard: int) -> int:
    """Tile shards of a job that plans ``planned`` tiles (at least 1)."""
    return max(1, math.ceil(planned / (_SHARD_FILL * records_per_shard)))


def _key_by_shard(task: BlockTask, planned: int, records_per_shard: int) -> tuple[int, BlockTask]:
    n = _shard_count(planned, records_per_shard)
    index = _stable_hash(f"{task.ref.scene_id}:{task.block.row}:{task.block.col}") % n
    return index, replace(task, shard=f"tiles-{index:05d}-of-{n:05d}")


def _blocks_in_order(item: tuple[int, Iterable[BlockTask]]) -> Iterator[BlockTask]:
    """A shard's blocks by scene and position: the order its tiles are written in."""
    _, tasks = item
    yield from sorted(tasks, key=lambda t: (t.ref.scene_id, t.block.row, t.block.col))


class GroupBlocksIntoShards(beam.PTransform):  # type: ignore[misc]
    """Deal block tasks into tile shards; emit each shard's blocks together, in order.

    The number of shards follows from the planned tiles of the whole job
    (:func:`_shard_count`), and a block's shard from a hash of its scene id and
    position, so the same inputs and options give the same shards, each with
    the same blocks, whatever the runner's bundles. Only the small block tasks
    are grouped; the blocks of one shard come out of one element, consecutively,
    so the cut and write steps fused after it see them in that order.

    Args:
        records_per_shard: Most tiles per shard file.

    Returns (from ``expand``):
        The block tasks with :attr:`BlockTask.shard` set.
    """

    def __init__(self, records_per_shard: int) -> None:
        super().__init__()
        self._max = records_per_shard

    def expand(self, tasks: beam.PCollection) -> beam.PCollection:
        """Count the planned tiles, key each block by its shard, group, sort."""
        planned = (
            tasks
            | "PlannedTiles" >> beam.Map(lambda t: t.block.num_tiles)
            | "SumPlanned" >> beam.CombineGlobally(sum)
        )
        return (
            tasks
            | "KeyByShard" >> beam.Map(_key_by_shard, beam.pvalue.AsSingleton(planned), self._max)
            | "GroupShards" >> beam.GroupByKey()
            | "BlocksInOrder" >> beam.FlatMap(_blocks_in_order)
        )


# -- reading and cutting ---------------------------------------------------------


@dataclass
class TileBatch:
    """The kept tiles of one block, passed within a fused stage (never shuffled).

    Attributes:
        tiles: The kept tiles, row-major within the block.
        source: The scene's source path.
        dtype: numpy dtype name of the pixels.
        shard: The block's :attr:`BlockTask.shard`.
    """

    tiles: list[Tile]
    source: str
    dtype: str
    shard: str = ""


class CutTiles(beam.DoFn):  # type: ignore[misc]
    """Read a block's windows, cut its tiles, label them, drop the invalid ones.

    Open scenes are cached per worker (a few at a time), so consecutive blocks of
    one scene reuse the open files.
    """

    _MAX_OPEN = 4

    def __init__(self, config: TileConfig) -> None:
        self._config = config
        self._written = Metrics.counter(_NS, "tiles_written")
        self._dropped = Metrics.counter(_NS, "tiles_dropped")
        self._labels: VectorLabels | None = None
        self._scene_labels: dict[str, VectorLabels | None] = {}
        self._readers: collections.OrderedDict[str, SceneReader] = collections.OrderedDict()

    def setup(self) -> None:
        """Cap GDAL's block cache; load the polygon labels (per-scene files on first use)."""
        from rasterio.env import set_gdal_config

        c = self._config
        # GDAL caches decoded blocks up to 5% of RAM by default, per process. Each
        # block is read once here (a block of tiles at a time), so that cache only
        # holds dead blocks: it made RSS grow to 1.7 GB on a 20,000 px scene.
        set_gdal_config("GDAL_CACHEMAX", c.gdal_cache_mb)
        if c.label_source == "vector" and c.labels:
            self._labels = self._load(c.labels)
        self._hits: set[str] = set()

    def start_bundle(self) -> None:
        """Start the bundle's set of label polygons that overlapped a block."""
        self._hits = set()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        """Emit each polygon the bundle's blocks overlapped once, on ``label_hits``."""
        window = GlobalWindow()
        for ref in sorted(self._hits):
            yield TaggedOutput(LABEL_HITS, WindowedValue(ref, window.max_timestamp(), [window]))
        self._hits = set()

    def _load(self, path: str) -> VectorLabels:
        c = self._config
        return VectorLabels.load(path, c.label_field, c.classes, sparse=c.sparse_labels)

    def _labels_for(self, scene_id: str) -> VectorLabels | None:
        if self._labels is not None or not self._config.scene_labels:
            return self._labels
        if scene_id not in self._scene_labels:
            path = dict(self._config.scene_labels).get(scene_id)
            # Keep only a few scenes' polygons in memory at once.
            if len(self._scene_labels) >= self._MAX_OPEN:
                self._scene_labels.pop(next(iter(self._scene_labels)))
            self._scene_labels[scene_id] = self._load(path) if path else None
        return self._scene_labels[scene_id]

    def teardown(self) -> None:
        """Close every cached scene."""
        for reader in self._readers.values():
            reader.close()
        self._readers.clear()

    def _open(self, ref: SceneRef) -> SceneReader:
        reader = self._readers.pop(ref.scene_id, None)
        if reader is None:
            reader = _reader(ref, self._config).open()
            while len(self._readers) >= self._MAX_OPEN:
                self._readers.popitem(last=False)[1].close()
        self._readers[ref.scene_id] = reader
        return reader

    def process(self, task: BlockTask) -> Iterator[Any]:
        """Yield a TileBatch; dropped tiles to ``dead``; counts and band stats."""
        ref, block = task.ref, task.block
        c = self._config
        try:
            reader = self._open(ref)
            data, valid = reader.read(block.row, block.col, block.height, block.width)
        except Exception as exc:  # a bad block never kills the job
            reason = f"read error: {type(exc).__name__}: {exc}"
            yield from self._drop_all(task, reason, "read_error")
            return
        assert reader.grid is not None
        mask = self._pixel_labels(reader, task, data)
        kept: list[Tile] = []
        counts: collections.Counter[str] = collections.Counter()
        stats = BandStats.empty(reader.band_names)
        for r in block.row_starts:
            for col in block.col_starts:
                tile = self._cut(reader, task, data, valid, mask, r, col)
                fraction = tile.valid_fraction
                if fraction < c.min_valid or fraction == 0.0:
                    counts["dropped.below_min_valid"] += 1
                    self._dropped.inc()
                    yield TaggedOutput(
                        DEAD,
                        dead_row(
                            ref.source,
                            f"valid fraction {fraction:.3f} < --min-valid {c.min_valid} "
                            "(nodata, cloud or outside the scene)",
                            "tile",
                            ref.scene_id,
                            tile.tile_id,
                            stage="cut",
                        ),
                    )
                    continue
                kept.append(tile)
                stats.add(tile.image, tile.valid)
        counts["written"] += len(kept)
        self._written.inc(len(kept))
        yield TaggedOutput(COUNTS, (ref.scene_id, counts))
        if kept:
            yield TaggedOutput(BAND_STATS, stats)
            yield TileBatch(kept, ref.source, reader.dtype.name, task.shard)

    def _drop_all(self, task: BlockTask, reason: str, key: str) -> Iterator[Any]:
        ref = task.ref
        self._dropped.inc(task.block.num_tiles)
        yield TaggedOutput(
            COUNTS, (ref.scene_id, collections.Counter({f"dropped.{key}": task.block.num_tiles}))
        )
        for r in task.block.row_starts:
            for col in task.block.col_starts:
                yield TaggedOutput(
                    DEAD,
                    dead_row(
                        ref.source,
                        reason,
                        "tile",
                        ref.scene_id,
                        f"{ref.scene_id}:{r}:{col}",
                        stage="read",
                    ),
                )

    def _pixel_labels(
        self, reader: SceneReader, task: BlockTask, data: np.ndarray
    ) -> np.ndarray | None:
        """Class per pixel of the block, or None when labels have no pixel extent."""
        c = self._config
        grid = reader.grid
        assert grid is not None
        labels = self._labels_for(task.ref.scene_id) if c.label_source == "vector" else None
        if labels is not None and task.ref.kind == "scene":
            transform = grid.window_transform(task.block.row, task.block.col)
            self._hits.update(labels.overlapping(grid.crs, transform, data.shape[1:]))
            return labels.rasterize(grid.crs, transform, data.shape[1:])
        if c.label_source == "weak" and task.ref.kind == "scene":
            return weak_label_mask(data, reader.band_names)
        return None

    def _cut(
        self,
        reader: SceneReader,
        task: BlockTask,
        data: np.ndarray,
        valid: np.ndarray,
        mask: np.ndarray | None,
        row: int,
        col: int,
    ) -> Tile:
        c = self._config
        grid = reader.grid
        assert grid is not None
        ref = task.ref
        size = c.tile_size
        r0, c0 = row - task.block.row, col - task.block.col
        window = (slice(r0, r0 + size), slice(c0, c0 + size))
        tile_valid = valid[window]
        tile = Tile(
            scene_id=ref.scene_id,
            kind=ref.kind,
            row_off=row,
            col_off=col,
            image=np.moveaxis(data[(slice(None), *window)], 0, -1),
            valid=tile_valid,
            bands=reader.band_names,
            acquired=reader.acquired,
            camera_id=ref.camera_id,
        )
        if ref.kind == "scene":
            t = grid.window_transform(row, col)
            tile.crs = grid.crs
            tile.transform = tuple(t)[:6]
            tile.bounds = grid.window_bounds(row, col, size, size)
            tile.bounds_wgs84 = _to_wgs84(grid.crs, tile.bounds)
        else:
            tile.transform = tuple(grid.window_transform(row, col))[:6]
            tile.bounds = grid.window_bounds(row, col, size, size)
        self._label(tile, task, mask, window)
        return tile

    def _label(
        self, tile: Tile, task: BlockTask, mask: np.ndarray | None, window: tuple[slice, slice]
    ) -> None:
        c = self._config
        k = len(c.classes)
        if mask is not None:
            tile_mask = mask[window]
            label, fractions = tile_label(tile_mask, tile.valid, k, c.min_class_fraction)
            tile.label_mask = np.where(tile.valid, tile_mask, UNKNOWN_CLASS).astype(np.uint8)
            tile.class_fractions = fractions
            tile.label_source = c.label_source
        elif c.label_source == "csv" and task.label is not None and task.label.label:
            label = c.classes.index(task.label.label)
            tile.class_fractions = np.eye(k, dtype=np.float32)[label]
            tile.label_source = "csv"
        else:
            tile.class_fractions = np.zeros(k, np.float32)
            return
        tile.label = label
        tile.label_name = c.classes[label] if label >= 0 else ""
        if label < 0:
            tile.label_source = "none"


_WGS84: dict[str, Any] = {}


def _to_wgs84(crs: str, bounds: Sequence[float]) -> tuple[float, ...]:
    from pyproj import Transformer

    if crs not in _WGS84:
        _WGS84[crs] = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    west, south, east, north = _WGS84[crs].transform_bounds(*bounds, densify_pts=21)
    return (west, south, east, north)


class _MergeBandStats(beam.CombineFn):  # type: ignore[misc]
    def create_accumulator(self) -> BandStats:
        return BandStats({})

    def add_input(self, acc: BandStats, stats: BandStats) -> BandStats:
        acc.merge(stats)
        return acc

    def merge_accumulators(self, accs: Iterable[BandStats]) -> BandStats:
        out = BandStats({})
        for acc in accs:
            out.merge(acc)
        return out

    def extract_output(self, acc: BandStats) -> dict[str, dict[str, float]]:
        return acc.summary()


def _scene_outcome(item: tuple[str, dict[str, int]]) -> Iterator[Any]:
    """Decide per scene whether it was tiled; a scene with no tile is dead-lettered."""
    scene_id, counts = item
    if not scene_id:  # job-level counts (discovery rejections, scenes seen)
        yield counts
        return
    out = collections.Counter({k: v for k, v in counts.items() if k != "failed"})
    if counts.get("failed"):
        out["inputs_dead_lettered"] += 1
    elif counts.get("written", 0) > 0:
        out["inputs_tiled"] += 1
    else:
        out["inputs_dead_lettered"] += 1
        dropped = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.")}
        detail = ", ".join(f"{v} {k}" for k, v in sorted(dropped.items())) or "no tile planned"
        yield TaggedOutput(
            DEAD, dead_row(scene_id, f"no tile kept ({detail})", "input", scene_id, stage="account")
        )
    yield out


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
    a file a failed attempt still holds open; :func:`_finalize` moves the files
    of committed bundles into place and deletes the rest. Yields the files'
    paths relative to the temporary folder on ``shards``.

    Args:
        temp_dir: The job's temporary folder.
        records_per_shard: Most tiles per file.
    """

    def __init__(self, temp_dir: str, records_per_shard: int) -> None:
        self._temp_dir = temp_dir
        self._max = records_per_shard
        self._bytes = Metrics.counter(_NS, "bytes_written")

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


def _finalize(
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


class CutScenes(beam.PTransform):  # type: ignore[misc]
    """Discover, check and cut scenes and frames into tile batches (no writing).

    The part of the Tile job that the inference job reuses: it returns the tile
    batches (fused with whatever consumes them) and small side outputs.

    Args:
        config: The job's options.
        label_rejections: ``(feature, reason)`` of label features refused at launch.
        records_per_shard: Group the blocks into tile shards of at most this
            many tiles (:class:`GroupBlocksIntoShards`; the Tile job), so each
            batch names its shard and a shard's batches come consecutively.
            Default None: blocks are spread one by one (the inference job).

    Returns (from ``expand``):
        A dict of PCollections: ``batches`` (:class:`TileBatch`), ``dead``
        (dead-letter rows), ``counts`` (``(scene_id, Counter)``), ``band_stats``
        and ``refs`` (the :class:`SceneRef` of every scene that was planned).
    """

    def __init__(
        self,
        config: TileConfig,
        label_rejections: Sequence[tuple[str, str]] = (),
        records_per_shard: int | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._label_rejections = list(label_rejections)
        self._records_per_shard = records_per_shard

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        """Build discovery, planning and cutting."""
        c = self._config
        dead: list[beam.PCollection] = []
        counts: list[beam.PCollection] = []
        found = (
            pbegin
            | "Inputs" >> beam.Create([tuple(c.inputs)])
            | "Discover"
            >> beam.ParDo(DiscoverScenes(c.frame_pattern)).with_outputs(DEAD, COUNTS, main="refs")
        )
        dead.append(found[DEAD])
        counts.append(found[COUNTS])
        if c.label_source == "csv" and c.labels:
            items = self._join_frame_labels(pbegin, found.refs, dead)
        else:
            items = found.refs | "NoFrameLabels" >> beam.Map(lambda ref: (ref, None))
        if self._label_rejections:
            dead.append(
                pbegin
                | "LabelRejections" >> beam.Create(self._label_rejections)
                | "LabelDeadLetter"
                >> beam.MapTuple(
                    lambda feature, reason: dead_row(feature, reason, "label", stage="labels")
                )
            )
        planned = items | "Plan" >> beam.ParDo(PlanScene(c)).with_outputs(
            DEAD, COUNTS, main="tasks"
        )
        dead.append(planned[DEAD])
        counts.append(planned[COUNTS])
        if self._records_per_shard:
            tasks = planned.tasks | "Shards" >> GroupBlocksIntoShards(self._records_per_shard)
        else:
            # Blocks of one scene spread over all workers; only block tasks are shuffled.
            tasks = planned.tasks | "Spread" >> beam.Reshuffle()
        cut = tasks | "Cut" >> beam.ParDo(CutTiles(c)).with_outputs(
            DEAD, COUNTS, BAND_STATS, LABEL_HITS, main="batches"
        )
        dead.append(cut[DEAD])
        counts.append(cut[COUNTS])
        if c.label_source == "vector":
            dead.append(self._unused_polygons(pbegin, cut[LABEL_HITS]))
        return {
            "batches": cut.batches,
            "dead": dead | "CutDeadLetters" >> beam.Flatten(),
            "counts": counts | "CutCounts" >> beam.Flatten(),
            "band_stats": cut[BAND_STATS],
            "refs": found.refs,
        }

    def _unused_polygons(
        self, pbegin: beam.pvalue.PBegin, hits: beam.PCollection
    ) -> beam.PCollection:
        """Dead-letter rows for label polygons that overlap no block of any scene.

        Each label file is read again in a worker for its polygons' refs, and
        joined with the refs the blocks reported, so no process holds more than
        one file's refs and the blocks' hits meet them in a shuffle.
        """
        c = self._config
        files = [c.labels] if c.labels else [path for _, path in c.scene_labels]
        refs = (
            pbegin
            | "LabelFiles" >> beam.Create(sorted(set(files)))
            | "LabelRefs" >> beam.FlatMap(_label_refs, config=c)
            | "KeyRefs" >> beam.Map(lambda ref: (ref, True))
        )
        seen = hits | "KeyHits" >> beam.Map(lambda ref: (ref, True))
        return (
            {"polygon": refs, "hit": seen}
            | "JoinHits" >> beam.CoGroupByKey()
            | "Unused" >> beam.FlatMap(_unused)
        )

    def _join_frame_labels(
        self, pbegin: beam.pvalue.PBegin, refs: beam.PCollection, dead: list[beam.PCollection]
    ) -> beam.PCollection:
        c = self._config
        assert c.labels is not None
        rows = (
            pbegin
            | "ReadFrameLabels" >> beam.io.ReadFromText(c.labels, skip_header_lines=1)
            | "ParseFrameLabels"
            >> beam.ParDo(ParseFrameLabels(c.labels, c.csv_columns)).with_outputs(DEAD, main="rows")
        )
        dead.append(rows[DEAD])
        frames = (
            refs
            | "FramesOnly" >> beam.Filter(lambda ref: ref.kind == "frame")
            | "KeyFrames" >> beam.Map(lambda ref: (ref.source, ref))
        )
        scenes = (
            refs
            | "ScenesOnly" >> beam.Filter(lambda ref: ref.kind != "frame")
            | "ScenesUnlabelled" >> beam.Map(lambda ref: (ref, None))
        )
        joined = (
            {"ref": frames, "label": rows.rows}
            | "JoinFrameLabels" >> beam.CoGroupByKey()
            | "AttachFrameLabels"
            >> beam.FlatMap(_attach_frame_label).with_outputs(DEAD, main="items")
        )
        dead.append(joined[DEAD])
        return (scenes, joined.items) | "ScenesAndFrames" >> beam.Flatten()


def _label_refs(path: str, config: TileConfig) -> Iterator[str]:
    labels = VectorLabels.load(
        path, config.label_field, config.classes, sparse=config.sparse_labels
    )
    yield from labels.refs


def _unused(item: tuple[str, dict[str, list[bool]]]) -> Iterator[dict[str, str]]:
    ref, groups = item
    if groups["polygon"] and not groups["hit"]:
        yield dead_row(
            ref,
            "polygon outside every scene (it overlaps no block that was read)",
            "label",
            stage="labels",
        )


class TileScenes(beam.PTransform):  # type: ignore[misc]
    """Tile scenes and frames into TFRecords, a manifest, dead letters and stats.

    Example:
        >>> with beam.Pipeline() as p:  # doctest: +SKIP
        ...     p | "Tile" >> TileScenes(TileConfig(inputs=("scenes/",), out="out"))

    Args:
        config: The job's options.
        label_rejections: ``(feature, reason)`` of label features refused at launch.
        header: Extra fields for ``stats.json`` (classes, options, version).
    """

    def __init__(
        self,
        config: TileConfig,
        label_rejections: Sequence[tuple[str, str]] = (),
        header: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._label_rejections = list(label_rejections)
        self._header = header or {}

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        """Build the job; return the manifest rows, dead-letter rows and stats."""
        c = self._config
        temp_dir = posixpath.join(c.out, f".tmp-{uuid.uuid4().hex[:12]}")
        cut = pbegin | "Cut" >> CutScenes(c, self._label_rejections, c.records_per_shard)
        written = cut["batches"] | "WriteTiles" >> beam.ParDo(
            WriteShards(temp_dir, c.records_per_shard)
        ).with_outputs(SHARDS, main="rows")
        manifest_parts = written.rows | "WriteManifest" >> beam.ParDo(
            WriteParquetParts(temp_dir, "manifest", manifest_schema())
        )
        totals, outcome_dead = cut["counts"] | "Account" >> AccountScenes()
        band_stats = cut["band_stats"] | "BandStats" >> beam.CombineGlobally(_MergeBandStats())
        dead_rows = (cut["dead"], outcome_dead) | "AllDeadLetters" >> beam.Flatten()
        dead_parts = dead_rows | "WriteDeadLetter" >> beam.ParDo(
            WriteParquetParts(temp_dir, "dead_letter", dead_letter_schema())
        )
        files = (written[SHARDS], manifest_parts, dead_parts) | "AllFiles" >> beam.Flatten()
        stats = (
            pbegin
            | "FinalizeTrigger" >> beam.Create([None])
            | "Finalize"
            >> beam.Map(
                _finalize,
                files=beam.pvalue.AsList(files),
                counts=beam.pvalue.AsSingleton(totals),
                band_stats=beam.pvalue.AsSingleton(band_stats),
                out=c.out,
                temp_dir=temp_dir,
                header=self._header,
            )
        )
        return {"manifest": written.rows, "dead_letter": dead_rows, "stats": stats}


class AccountScenes(beam.PTransform):  # type: ignore[misc]
    """Per-scene counts to job totals; scenes that kept no tile become dead letters.

    Returns (from ``expand``): ``(totals, dead_rows)``: a one-element PCollection of
    the job's counts, and the dead-letter rows of scenes without a tile.
    """

    def expand(self, counts: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        """Combine per scene, decide each scene's outcome, combine for the job."""
        outcome = (
            counts
            | "CountPerScene" >> beam.CombinePerKey(SumCounters())
            | "SceneOutcome" >> beam.FlatMap(_scene_outcome).with_outputs(DEAD, main="counts")
        )
        totals = outcome.counts | "CountJob" >> beam.CombineGlobally(SumCounters())
        return totals, outcome[DEAD]


def prepare_out(out: str, overwrite: bool) -> None:
    """Make ``out`` ready for a tile job: refuse an earlier run's outputs unless ``overwrite``.

    With ``overwrite``, the earlier outputs and the temporary folders of runs
    killed before they committed are removed.

    Raises:
        ConfigError: ``out`` holds an earlier run's outputs and ``overwrite`` is off.
    """
    import shutil

    paths = output_paths(out)
    existing = [p for p in paths.values() if FileSystems.exists(p)]
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds a tile job's output; add --overwrite to replace it", "--out"
        )
    for p in existing:
        if is_remote(p):
            FileSystems.delete([p])
        elif os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
    if overwrite and not is_remote(out) and os.path.isdir(out):
        for name in os.listdir(out):
            if name.startswith(".tmp-") and os.path.isdir(os.path.join(out, name)):
                shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    if not is_remote(out):
        os.makedirs(out, exist_ok=True)


def run_tile(
    config: TileConfig,
    beam_args: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
    label_rejections: Sequence[tuple[str, str]] = (),
    header: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Build and run the Tile job.

    Args:
        config: The job's options (checked by :func:`~pipelines.tile.options.tile_config`).
        beam_args: Beam pipeline options, passed through unchanged.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.
        label_rejections: Label features refused at launch, for the dead letters.
        header: Extra fields for ``stats.json``.

    Returns:
        The contents of ``stats.json`` plus the job's Beam counters, or None when
        building on ``test_pipeline`` or for a ``--dry_run``.

    Raises:
        ConfigError: ``config.out`` holds an earlier run's outputs and
            ``config.overwrite`` is off.
    """
    prepare_out(config.out, config.overwrite)
    stats, result = run_pipeline(
        "Tile" >> TileScenes(config, label_rejections, header),
        beam_args,
        save_main_session,
        test_pipeline,
        output_paths(config.out)["stats"],
    )
    if stats is None:
        return None
    stats["beam_counters"] = _counters(result)
    return stats


def _counters(result: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for counter in result.metrics().query()["counters"]:
            if counter.key.metric.namespace == _NS:
                value = counter.committed if counter.committed is not None else counter.attempted
                out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value)
    except Exception as exc:  # some runners report no metrics; the stats file stands
        log.warning("could not read Beam counters: %s", exc)
    return out


def run(
    argv: Sequence[str] | None = None,
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any] | None:
    """Run the Tile job from command-line arguments, ours and Beam's (Beam's ``run(argv)``).

    Args:
        argv: Arguments as on the command line after ``minewatch tile``:
            inputs, :data:`~pipelines.tile.options.TILE_ARGS`, Beam options.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.

    Returns:
        See :func:`run_tile`.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
    """
    from minewatch.arguments import parse
    from pipelines.tile.options import TILE_ARGS, tile_config

    params, rest = parse(TILE_ARGS, argv, "minewatch tile")
    config, beam_args, rejections, header = tile_config(params, rest)
    return run_tile(config, beam_args, save_main_session, test_pipeline, rejections, header)
