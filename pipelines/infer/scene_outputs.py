"""Writing what one scene or frame gave: its tables, probability raster and quicklook.

:class:`WriteSceneOutputs` takes all the predictions of one scene or frame (one element
per scene, so no worker holds more than one scene's rasters), writes its
``tile_labels`` rows (per tile at either resolution), its probability COG
(:func:`write_probability_cog`), its ``vessels`` rows and its quicklook, and
passes the sites it found (:mod:`pipelines.infer.sites`) on to linking;
frames go on to :func:`write_frames`, one file per camera and day.

Idempotency: each file is named by what it holds and the model version
(``tile_labels/date=D/<scene>__<version>.parquet``), and written atomically,
so running a scene again with the same model replaces its rows, and another
model version adds rows that the ``model_version`` column tells apart. A
scene whose vessels cannot be looked for goes to the dead letter (kind
``vessels``) with the reason; its other tables are still written.
"""

from __future__ import annotations

import collections
import logging
import os
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import numpy as np
from affine import Affine
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from minewatch.errors import MinewatchError
from minewatch.paths import is_remote
from minewatch.quiet import Progress
from minewatch.scenes import safe_id
from minewatch.tables import (
    frame_labels_schema,
    tile_labels_schema,
    vessels_schema,
    write_geoparquet,
)
from pipelines.infer.options import InferConfig
from pipelines.infer.serving import PROBABILITY_STEPS, ScenePredictions, TileInfo
from pipelines.infer.sites import SceneRaster, SceneSites, SiteFinder, acquired_at, scene_raster
from pipelines.tile.accounting import COUNTS, DEAD, dead_row

__all__ = [
    "RASTER_NODATA",
    "WriteSceneOutputs",
    "boxes_wkb",
    "makedirs",
    "write_frames",
    "write_probability_cog",
]

log = logging.getLogger(__name__)
#: Value of the per-scene rasters where no tile covered a cell (every band).
RASTER_NODATA = 255


class WriteSceneOutputs(beam.DoFn):  # type: ignore[misc]
    """All predictions of one scene or frame: write its tables, raster and quicklook.

    Yields ``SceneSites`` keyed by area (scenes), frame rows keyed by camera and day
    (frames, tag ``frames``), counts (``counts``), dead-letter rows (``dead``) and,
    with ``bigquery``, the rows written (``tile_rows``, ``vessel_rows``).

    Args:
        config: The job's options.
    """

    def __init__(self, config: InferConfig) -> None:
        self._config = config
        self._version = config.model.version
        self._classes = config.model.classes
        self._finder = SiteFinder(config)
        self._progress = Progress("infer")

    def setup(self) -> None:
        """Index the DSMs and read the ports, once per worker (:meth:`SiteFinder.setup`)."""
        self._finder.setup()
        self._progress = Progress("infer")

    def process(
        self,
        item: tuple[str, Iterable[tuple[Sequence[tuple[Any, ...]], Any]]],
        sources: dict[str, str] | None = None,
    ) -> Iterator[Any]:
        """Write the scene's outputs; yield what later steps need.

        ``item`` is ``(scene_id, [(tile infos as tuples, inference), ...])`` with
        ``inference`` as :class:`~pipelines.infer.serving.TileModelHandler`
        returns it. ``sources`` maps scene ids to their paths, from the manifests
        of tile-job inputs (their records do not carry the path).
        """
        scene_id, groups = item
        preds = ScenePredictions.gather(groups)
        self._progress.add(scenes=1, tiles=len(preds.infos))
        first = preds.first
        if sources and first.source in sources:
            # Tiles of one scene share its source: the first tile stands for all.
            first = preds.first = replace(first, source=sources[first.source])
        table = self._tile_table(preds)
        write_geoparquet(
            self._scene_file("tile_labels", scene_id, ".parquet", first.day),
            table,
            "tile_labels",
            tile_labels_schema(),
        )
        if self._config.bigquery:
            for row in table.to_pylist():
                yield TaggedOutput("tile_rows", row)
        yield TaggedOutput(
            COUNTS,
            ("", collections.Counter(tiles_labelled=len(preds), **{f"{first.kind}s_labelled": 1})),
        )
        # Keyed by the input: the input accounting marks it labelled.
        yield TaggedOutput(COUNTS, (scene_id, collections.Counter(labelled=len(preds))))
        if first.kind == "frame":
            yield TaggedOutput("frames", ((first.camera_id, first.day), self._frame_row(preds)))
            return
        yield from self._sites(scene_id, preds)

    def _scene_file(self, table: str, scene_id: str, ext: str, day: str | None = None) -> str:
        """``OUT/table[/date=day]/<scene_id>__<model_version><ext>``."""
        folder = posixpath.join(self._config.out, table, *([f"date={day}"] if day else []))
        return posixpath.join(folder, f"{safe_id(scene_id)}__{safe_id(self._version)}{ext}")

    def _tile_table(self, preds: ScenePredictions) -> Any:
        """The scene's ``tile_labels`` rows as an Arrow table, built column by column."""
        import pyarrow as pa

        probs = preds.probs.astype(np.float32, copy=False)
        label = probs.argmax(axis=1)
        names = np.array([*self._classes, *map(str, range(len(self._classes), probs.shape[1]))])
        bounds = np.array(preds.column("bounds_wgs84"), np.float64).reshape(-1, 4)
        n, first = len(preds), preds.first
        acquired = preds.column("acquired")
        when = {a: acquired_at(a) for a in set(acquired)}
        return pa.table(
            {
                "tile_id": preds.column("tile_id"),
                "scene_id": pa.repeat(first.scene_id, n),
                "kind": pa.repeat(first.kind, n),
                "source": pa.repeat(first.source, n),
                "camera_id": preds.column("camera_id"),
                "acquired": [when[a] for a in acquired],
                "crs": preds.column("crs"),
                "row_off": preds.rows,
                "col_off": preds.cols,
                "label": label.astype(np.int32),
                "label_name": names[label],
                "score": probs[np.arange(n), label],
                "probabilities": pa.FixedSizeListArray.from_arrays(
                    pa.array(probs.ravel()), probs.shape[1]
                ).cast(pa.list_(pa.float32())),
                "geometry": boxes_wkb(bounds),
                "model_version": pa.repeat(self._version, n),
            }
        )

    def _frame_row(self, preds: ScenePredictions) -> dict[str, Any]:
        """The frame's ``frame_labels`` row: its tiles' mean probabilities and their winner."""
        info = preds.first
        mean = preds.probs.mean(axis=0)
        k = int(np.argmax(mean))
        return {
            "frame_id": info.scene_id,
            "source": info.source,
            "camera_id": info.camera_id,
            "acquired": acquired_at(info.acquired),
            "grade": self._classes[k] if k < len(self._classes) else str(k),
            "label": k,
            "score": float(mean[k]),
            "probabilities": [float(p) for p in mean],
            "tiles": len(preds),
            "model_version": self._version,
        }

    def _sites(self, scene_id: str, preds: ScenePredictions) -> Iterator[Any]:
        """Write the scene's raster, vessels and quicklook; yield its sites keyed by area."""
        first = preds.first
        raster = scene_raster(preds, len(self._classes))
        path = self._scene_file("rasters", scene_id, ".tif")
        write_probability_cog(
            path, raster.probs, raster.count, raster.grid.transform, first.crs, self._classes
        )
        found, counts = self._finder.find(scene_id, first, raster)
        if self._finder.ports is not None:
            if raster.per_pixel:
                yield from self._vessels(scene_id, first, raster, found, counts)
            else:
                reason = (
                    "vessels not searched: the model serves no pixel_probabilities; vessels "
                    "need a per-pixel class raster (train with model.pixel_head)"
                )
                yield TaggedOutput(
                    DEAD, dead_row(first.source, reason, "vessels", scene_id, stage="vessels")
                )
        if self._config.pictures:
            self._quicklook(first, found)
        yield TaggedOutput(COUNTS, ("", counts))
        yield (self._finder.area(first, raster), found)

    def _vessels(
        self,
        scene_id: str,
        first: TileInfo,
        raster: SceneRaster,
        found: SceneSites,
        counts: collections.Counter[str],
    ) -> Iterator[Any]:
        """Write the scene's ``vessels`` file; a scene they cannot be looked for to ``dead``."""
        try:
            rows = self._finder.vessels(scene_id, first, raster, found, counts)
        except (MinewatchError, ValueError, OSError) as exc:
            reason = f"vessels not searched: {exc}"
            yield TaggedOutput(
                DEAD, dead_row(first.source, reason, "vessels", scene_id, stage="vessels")
            )
            return
        write_geoparquet(
            self._scene_file("vessels", scene_id, ".parquet", first.day),
            rows,
            "vessels",
            vessels_schema(),
        )
        if self._config.bigquery:
            for row in rows:
                yield TaggedOutput("vessel_rows", row)

    def _quicklook(self, first: TileInfo, found: SceneSites) -> None:
        """Draw the scene with its sites (flagged ones apart); a failure only logs."""
        import shapely

        from minewatch.scenes import group_files
        from minewatch.stac import read_stac, stac_document
        from pipelines.infer.quicklook import scene_quicklook
        from pipelines.options import list_inputs

        try:
            path = first.source.split("#", 1)[0]
            doc = stac_document(path)
            if doc is not None:  # a STAC item's source is ITEMS.json#ITEM_ID
                refs, _ = read_stac(path, dict(self._config.stac_bands) or None, doc)
            else:
                refs, _ = group_files(list_inputs(first.source))
        except Exception as exc:  # the pictures are a courtesy, never a failure
            log.warning("no quicklook for %s: %s", first.scene_id, exc)
            return
        ref = next((r for r in refs if r.scene_id == first.scene_id), refs[0] if refs else None)
        if ref is None or ref.kind != "scene":
            return
        path = self._scene_file("quicklooks", first.scene_id, ".png")
        makedirs(posixpath.dirname(path))
        sites = [(shapely.from_wkb(s["wkb"]), s["flagged"], s["kind"]) for s in found.sites]
        try:
            scene_quicklook(ref, sites, path, model_version=self._version)
        except Exception as exc:
            log.warning("no quicklook for %s: %s", first.scene_id, exc)


#: Little-endian WKB of a polygon of one ring of five points: byte order, type 3,
#: one ring, five points, then the ten coordinates.
_BOX_WKB = np.dtype(
    [("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"), ("xy", "<f8", (10,))]
)


def boxes_wkb(bounds: np.ndarray) -> Any:
    """WKB polygons of ``[n, 4]`` (west, south, east, north) boxes; null where any is NaN.

    Written straight into the bytes (93 per box): a scene's tens of thousands of
    tile footprints cost milliseconds, where shapely's box-then-WKB took a
    tenth of a second per ten thousand.
    """
    import pyarrow as pa

    west, south, east, north = bounds.T
    out = np.zeros(len(bounds), _BOX_WKB)
    out["order"], out["type"], out["rings"], out["points"] = 1, 3, 1, 5
    # Counter-clockwise from the south-west corner, closed (as shapely.box writes it).
    out["xy"] = np.stack([east, south, east, north, west, north, west, south, east, south], 1)
    valid = ~np.isnan(bounds).any(axis=1)
    offsets = np.arange(len(out) + 1, dtype=np.int32) * _BOX_WKB.itemsize
    nulls = None if valid.all() else pa.array(valid).buffers()[1]
    return pa.BinaryArray.from_buffers(
        pa.binary(),
        len(out),
        [nulls, pa.py_buffer(offsets.tobytes()), pa.py_buffer(out.tobytes())],
        null_count=int((~valid).sum()),
    )


def write_probability_cog(
    path: str,
    probs: np.ndarray,
    count: np.ndarray,
    transform: Affine,
    crs: str,
    classes: Sequence[str],
    blocksize: int = 512,
) -> None:
    """Write a scene's class and probability raster as a byte COG (docs/tables.md).

    Bytes, not floats: band 1 the winning class index, then each class's
    probability in steps of ``1 / PROBABILITY_STEPS`` (the bands' scale, which
    GDAL and rasterio apply on request); ``RASTER_NODATA`` in every band where
    no tile covered the pixel. A tenth of the float32 file's size, written
    four times faster. Overviews are by nearest neighbour, so each overview
    pixel is a real pixel and its class still the argmax of its probabilities
    (the COG default, cubic, made up class indices and cost three quarters of
    the write); ZSTD at level 3 is 3 % larger than level 9 with the predictor,
    written in a third of the time. Written under a temporary name, then
    renamed over ``path``.

    Args:
        path: The ``.tif`` to write.
        probs: ``[K, H, W]`` probabilities.
        count: ``[H, W]`` tiles covering each pixel (0: not covered).
        transform: The pixel grid's transform.
        crs: Its CRS ("" for none).
        classes: The ``K`` class names (band descriptions ``p_<class>``).
        blocksize: COG tile side (overviews halve down to one block).
    """
    import rasterio.shutil
    from rasterio.io import MemoryFile

    covered = count > 0
    winner = np.where(covered, probs.argmax(axis=0), RASTER_NODATA).astype(np.uint8)
    scaled = np.where(covered, np.rint(np.clip(probs, 0.0, 1.0) * PROBABILITY_STEPS), RASTER_NODATA)
    data = np.concatenate([winner[None], scaled.astype(np.uint8)])
    profile = {
        "driver": "GTiff",
        "width": data.shape[2],
        "height": data.shape[1],
        "count": data.shape[0],
        "dtype": "uint8",
        "transform": transform,
        "nodata": RASTER_NODATA,
    }
    if crs:
        profile["crs"] = crs
    with MemoryFile() as mem:
        with mem.open(**profile) as tmp:
            tmp.write(data)
            tmp.set_band_description(1, "class")
            for k, name in enumerate(classes, start=2):
                tmp.set_band_description(k, f"p_{name}")
            tmp.scales = (1.0,) + (1.0 / PROBABILITY_STEPS,) * len(classes)
        with mem.open() as src:
            makedirs(posixpath.dirname(path))
            rasterio.shutil.copy(
                src,
                path + ".tmp.tif",
                driver="COG",
                blocksize=blocksize,
                compress="ZSTD",
                level=3,
                overview_resampling="nearest",
                num_threads="ALL_CPUS",
            )
    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([path + ".tmp.tif"], [path])


def makedirs(folder: str) -> None:
    """Create a local folder (and its parents); object stores need none."""
    if not is_remote(folder):
        os.makedirs(folder, exist_ok=True)


def write_frames(
    item: tuple[tuple[str, str], Iterable[dict[str, Any]]], out: str, version: str
) -> int:
    """Write one camera's ``frame_labels`` rows of one day; return how many.

    Args:
        item: ``((camera_id, day), rows)`` as grouped by camera and day.
        out: Tables folder.
        version: Model version (part of the file name).
    """
    (camera, day), rows = item
    rows = sorted(
        rows, key=lambda r: (r["acquired"] or datetime.min.replace(tzinfo=UTC), r["frame_id"])
    )
    name = f"{safe_id(camera or 'camera')}__{safe_id(version)}.parquet"
    write_geoparquet(
        posixpath.join(out, "frame_labels", f"date={day}", name),
        rows,
        "frame_labels",
        frame_labels_schema(),
    )
    return len(rows)
