"""The Tile job's cutting: a block's window read once, its tiles cut, labelled and checked.

Tiles that cannot be used (nodata, too few valid pixels, unlabelled where labels
are required) are dropped with a counted reason.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from minewatch.bandstats import BandStats
from minewatch.labels import VectorLabels, tile_label, weak_label_mask
from minewatch.quiet import Progress
from minewatch.rasters import SceneReader
from minewatch.scenes import SceneRef
from minewatch.spec import UNKNOWN_CLASS, Tile
from pipelines.tile.accounting import BAND_STATS, COUNTS, DEAD, LABEL_HITS, NS, dead_row
from pipelines.tile.options import TileConfig
from pipelines.tile.plan import BlockTask, scene_reader

__all__ = [
    "CutTiles",
    "TileBatch",
]

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
        self._written = Metrics.counter(NS, "tiles_written")
        self._dropped = Metrics.counter(NS, "tiles_dropped")
        self._progress = Progress("cut")
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
        self._progress = Progress("cut")
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
            reader = scene_reader(ref, self._config).open()
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
        self._progress.add(tiles=len(kept), blocks=1)
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
