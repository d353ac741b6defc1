"""The Infer job: label tiles and frames with a SavedModel, find sites, write tables.

Graph::

    scenes, frames ─ CutScenes ─┐                         ┌─ tile_labels (per scene)
    tile TFRecords ─ ReadShards ┴─ RunInference ─ PerScene ─┼─ frame_labels (camera, day)
                                        │                    ├─ probability COG, quicklook
                                        │                    ├─ vessels (--licensed-ports)
                                        │                    └─ LinkSites (per area): sites,
                                        │                       stockpile_series, plots
           dead letters, per-input counts ─ WriteDeadLetter (per input: outcome, file)
                                   every table, with --bigquery ─► WriteTablesToBigQuery

The model runs through Beam's ``RunInference`` with :class:`TileModelHandler`,
which loads the SavedModel once per worker and calls its ``serving_default``
signature (:class:`ServedModel`: all the model batches of a call in one graph
call); no training code is imported. Tile records are decoded on a thread of
their own while the model runs (:class:`ReadShards`). Failed batches go to the
dead letter with the error. Every row carries the model version.

Two resolutions, chosen by what the model serves: a model with the per-pixel
head (``pixel_probabilities`` [N, H, W, K]) has its tiles mosaicked per scene
onto the scene grid at pixel resolution (averaged where tiles overlap), and
sites are polygonized from that; a tile-only model (``probabilities`` [N, K])
has its tile probabilities painted onto cells of ``gcd(tile, stride)`` pixels.
``tile_labels`` rows are per tile either way. One scene is one element of the
per-scene step, so no worker holds more than one scene's rasters.

Per scene, besides the sites: each stockpile site gets a volume
(:func:`minewatch.volumes.measure_volume`: DSMs from ``--dsm``, else the
shadow with the sun from ``--sun-azimuth/--sun-elevation`` or the scene's tags,
else ``method = none`` with the reason), carried into ``stockpile_series``; with
``--licensed-ports``, vessels are found in the per-pixel class raster
(:func:`minewatch.vessels.find_vessels`, water from NDWI of the scene's B03/B08
or the model's ``water`` class), written to ``vessels`` and, when berthed at an
unlicensed shore point, added to ``sites`` as flagged ``vessel`` sites (linked
across acquisitions like other sites: repeated use of one berth is one site).
A scene whose vessels cannot be looked for goes to the dead letter (kind
``vessels``) with the reason; its other tables are still written.

Accounting (``infer_stats.json``, written atomically)::

    inputs.total = inputs.labelled + inputs.dead_lettered
    tiles_in     = tiles_labelled + tiles_dead_lettered

An input (scene or frame) is labelled when one of its tiles is; any other has
one dead-letter row of kind ``input`` (refused, or ``no tile kept (...)``). A
truncated or corrupt tile shard is dead-lettered (kind ``shard``) from where it
breaks; the job goes on.

Idempotency: each output file is named by what it holds and the model version
(``tile_labels/date=D/<scene>__<version>.parquet``,
``dead_letter/<scene>__<version>.parquet``), and written atomically, so
running a scene again with the same model replaces its rows, and another model
version adds rows that the ``model_version`` column tells apart. Rewriting an
area's sites deletes its files under days that no longer hold a row.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import itertools
import json
import logging
import math
import posixpath
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import numpy as np
from affine import Affine
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    KeyedModelHandler,
    ModelHandler,
    PredictionResult,
    RunInference,
)
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from minewatch.geo import reproject
from minewatch.registry import ModelRef
from minewatch.sites import SiteRules
from minewatch.spec import Tile, decode_tiles
from minewatch.tables import (
    INFER_TABLES,
    dead_letter_schema,
    frame_labels_schema,
    replace_file,
    site_observations_schema,
    sites_schema,
    stockpile_series_schema,
    tile_labels_schema,
    vessels_schema,
    write_geoparquet,
)
from minewatch.tfrecord import read_records
from pipelines.options import run_pipeline
from pipelines.tile.job import COUNTS, DEAD, CutScenes, SumCounters, TileBatch, dead_row
from pipelines.tile.options import TileConfig

__all__ = [
    "InferConfig",
    "InferScenes",
    "ServedModel",
    "TileInfo",
    "TileModelHandler",
    "run_infer",
    "write_probability_cog",
]

log = logging.getLogger(__name__)
_NS = "minewatch.infer"
#: Probability bands of the per-scene rasters count in steps of 1 / PROBABILITY_STEPS.
PROBABILITY_STEPS = 250
#: Value of the per-scene rasters where no tile covered a cell (every band).
RASTER_NODATA = 255


@dataclass(frozen=True)
class InferConfig:
    """Options of ``minewatch infer`` besides Beam's.

    Attributes:
        inputs: Scenes, frames (files, globs, folders) or tile-job output folders.
        out: Tables folder.
        model: The model to serve.
        concessions: Polygons of licensed areas (property ``licence_id``), or None.
        protected: Polygons of protected areas (property ``name``), or None.
        stride: Tiling step for scene inputs; half the model's tile size when None.
        batch_size: Most tiles per model call. Default 64.
        site_classes: Classes that make sites; all but background/other when empty.
        mining_classes: Site classes judged for legality. Default ``mining_scar``.
        threshold: Least probability of a cell's winning class; None (default):
            the model's operating point, else 0.5.
        min_area_m2: Smaller sites are dropped, every kind; None (default):
            each kind's operating point from the model, else 0.
        min_score: Sites whose mean probability of their class is lower are
            dropped, every kind; None (default): the model's per-kind value, else 0.
        smooth: Box filter side, in raster cells, applied to the probabilities
            before sites are cut (:func:`minewatch.sites.smooth_probabilities`);
            None (default): the model's operating point, else 1 (none).
        volumes: Measure each stockpile sighting's volume (DSM, else shadow).
            Default True.
        area_cell_m: Side of the square cells sites are grouped by for linking
            across acquisitions. Default 20 km.
        pictures: Draw a quicklook PNG per scene and the stockpile plots. Default True.
        dsm: Glob of DSM GeoTIFFs for stockpile volumes (matched to scenes by
            date, else by name); default none (shadow or no volume).
        sun: ``(azimuth, elevation)`` in degrees for the shadow method,
            overriding the scenes' tags; default None (the tags).
        licensed_ports: Licensed ports/jetties file; when set, vessels are
            found and judged (``vessels`` table). Default None.
        bigquery: ``bq://PROJECT.DATASET[.PREFIX]``: also write every table to
            BigQuery; default ``""`` (Parquet only).
    """

    inputs: tuple[str, ...]
    out: str
    model: ModelRef
    concessions: str | None = None
    protected: str | None = None
    stride: int | None = None
    batch_size: int = 64
    site_classes: tuple[str, ...] = ()
    mining_classes: tuple[str, ...] = ("mining_scar",)
    threshold: float | None = None
    min_area_m2: float | None = None
    min_score: float | None = None
    smooth: int | None = None
    volumes: bool = True
    area_cell_m: float = 20_000.0
    pictures: bool = True
    dsm: str | None = None
    sun: tuple[float, float] | None = None
    licensed_ports: str | None = None
    bigquery: str = ""

    @property
    def rules(self) -> SiteRules:
        """How sites are cut and confirmed: the model's operating points, options on top."""
        return SiteRules.from_operating_points(
            self.model.metadata.get("operating_points"),
            threshold=self.threshold,
            smooth=self.smooth,
            min_score=self.min_score,
            min_area_m2=self.min_area_m2,
            classes=self.model.classes,
        )

    @property
    def positive(self) -> tuple[str, ...]:
        """The classes that make sites (vessels are found apart: see ``licensed_ports``)."""
        if self.site_classes:
            return self.site_classes
        skip = ("background", "other", "vessel")
        return tuple(c for c in self.model.classes if c not in skip)


@dataclass(frozen=True)
class TileInfo:
    """What a prediction must carry besides the pixels (the RunInference key)."""

    tile_id: str
    scene_id: str
    kind: str
    source: str
    camera_id: str
    acquired: str
    crs: str
    transform: tuple[float, ...]
    row_off: int
    col_off: int
    size: int
    bounds_wgs84: tuple[float, ...]

    @property
    def day(self) -> str:
        """Partition value: the acquisition date, or ``unknown``."""
        return self.acquired[:10] if self.acquired else "unknown"


def _info(tile: Tile, source: str) -> tuple[Any, ...]:
    """A tile's :class:`TileInfo` fields as a plain tuple, in field order.

    Plain tuples, not dataclasses, travel between the steps: Beam's coder
    encodes them natively, where a dataclass goes through pickle.
    """
    return (
        tile.tile_id,
        tile.scene_id,
        tile.kind,
        source,
        tile.camera_id,
        tile.acquired.isoformat() if tile.acquired else "",
        tile.crs,
        tuple(tile.transform),
        tile.row_off,
        tile.col_off,
        tile.image.shape[0],
        tuple(tile.bounds_wgs84),
    )


# -- model ------------------------------------------------------------------------


class ServedModel:
    """A SavedModel's serving signature, run over many model batches in one graph call.

    Calling it with an ``[n, H, W, C]`` float32 stack returns ``(probabilities
    [n, K] float32, pixels)``: ``pixels`` is None for a tile-only model, else
    the ``[n, H, W, K]`` per-pixel probabilities as uint8 steps of ``1 /
    PROBABILITY_STEPS``, 0 where the input pixel is invalid (all bands 0).

    The model sees ``batch_size`` tiles at a time (the stack is zero-padded to
    a whole number of batches, and the padding cut off again), but all the
    batches of a call run in one TensorFlow graph (a ``map_fn`` loop, one
    batch in flight), as Keras' ``steps_per_execution`` does: Python enters
    TensorFlow once per stack rather than once per batch. That matters more
    than the per-call overhead it saves: every entry takes the interpreter
    lock back, and with another Python thread busy (the job's record decoder)
    each wait for it stalls the model; one long call lets the two run side by
    side on two cores. The rounding, the masking and the finiteness checks run
    in the same graph, so float pixels never come back to numpy.

    Args:
        loaded: The loaded SavedModel (``tf.saved_model.load``); it is kept, as
            its signature's variables die with it.
        batch_size: Tiles per model step (a signature with a fixed batch
            dimension takes that instead).

    Raises (when called):
        ValueError: The model returned non-finite probabilities.
    """

    def __init__(self, loaded: Any, batch_size: int = 64) -> None:
        import tensorflow as tf

        self.loaded = loaded
        signature = loaded.signatures["serving_default"]
        outputs = signature.structured_outputs
        self.with_pixels = "pixel_probabilities" in outputs
        spec = signature.structured_input_signature[1]["image"]
        step = int(spec.shape[0] or batch_size)
        classes = outputs["probabilities"].shape[-1]

        def one(batch: Any) -> Any:
            out = signature(image=batch)
            probabilities = out["probabilities"]
            finite = tf.reduce_all(tf.math.is_finite(probabilities))
            if not self.with_pixels:
                return probabilities, finite, finite, tf.zeros([0], tf.uint8)
            pixels = out["pixel_probabilities"]
            pixels_finite = tf.reduce_all(tf.math.is_finite(pixels))
            valid = tf.cast(tf.reduce_any(tf.not_equal(batch, 0.0), axis=-1), tf.float32)
            steps = tf.round(tf.clip_by_value(pixels, 0.0, 1.0) * float(PROBABILITY_STEPS))
            return probabilities, finite, pixels_finite, tf.cast(steps * valid[..., None], tf.uint8)

        pixel_shape = [step, *spec.shape[1:3], classes] if self.with_pixels else [0]
        produced = (
            tf.TensorSpec([step, classes], tf.float32),
            tf.TensorSpec([], tf.bool),
            tf.TensorSpec([], tf.bool),
            tf.TensorSpec(pixel_shape, tf.uint8),
        )

        @tf.function(input_signature=[tf.TensorSpec([None, *spec.shape[1:]], tf.float32)])  # type: ignore[untyped-decorator]
        def serve(images: Any) -> Any:
            n = tf.shape(images)[0]
            batches = (n + step - 1) // step
            padded = tf.pad(images, [[0, batches * step - n], [0, 0], [0, 0], [0, 0]])
            stacked = tf.reshape(padded, tf.concat([[batches, step], tf.shape(images)[1:]], 0))
            probabilities, finite, pixels_finite, pixels = tf.map_fn(
                one, stacked, fn_output_signature=produced, parallel_iterations=1
            )
            probabilities = tf.reshape(probabilities, [-1, classes])[:n]
            if self.with_pixels:
                pixels = tf.reshape(pixels, [-1, *pixel_shape[1:]])[:n]
            return probabilities, tf.reduce_all(finite), tf.reduce_all(pixels_finite), pixels

        self._serve = serve

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities, pixels or None)`` of an ``[n, H, W, C]`` float32 stack."""
        probabilities, finite, pixels_finite, pixels = self._serve(images)
        if not bool(finite):
            raise ValueError("the model returned non-finite probabilities")
        if not bool(pixels_finite):
            raise ValueError("the model returned non-finite pixel probabilities")
        return probabilities.numpy(), pixels.numpy() if self.with_pixels else None


class TileModelHandler(ModelHandler[np.ndarray, Any, Any]):  # type: ignore[misc]
    """Serve a minewatch SavedModel: ``image`` [N, H, W, C] -> ``probabilities`` [N, K].

    Each element is a stack of tiles (a block of a scene, or a batch of decoded
    records), so Beam's per-element costs are paid per stack, not per tile; the
    stacks of a call are concatenated and fed to the model ``batch_size`` tiles at
    a time.

    A result's ``inference`` is the ``[n, K]`` float32 array for a tile-only
    model, and the pair ``([n, K] float32, [n, H, W, K] uint8)`` for a model
    that also serves ``pixel_probabilities``: per-pixel probabilities in steps
    of ``1 / PROBABILITY_STEPS`` (a quarter of float32's bytes travel to the
    per-scene step; 0.004 is far finer than any threshold, and the scene
    rasters keep the same steps), 0 for invalid input pixels (all bands 0) so
    the mosaic leaves them out.

    Args:
        saved_model: The SavedModel folder.
        batch_size: Most tiles per model call.
    """

    def __init__(self, saved_model: str, batch_size: int = 64) -> None:
        super().__init__()
        self._saved_model = saved_model
        self._batch_size = batch_size

    def load_model(self) -> Any:
        """Load the SavedModel once per worker; return it as a :class:`ServedModel`."""
        from minewatch.compat import use_legacy_keras

        use_legacy_keras()
        import tensorflow as tf

        return ServedModel(tf.saved_model.load(self._saved_model), self._batch_size)

    def run_inference(
        self,
        batch: Sequence[np.ndarray],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Predict every tile of the stacks; return one result (``[n, K]``) per stack."""
        images = np.concatenate(batch).astype(np.float32, copy=False)
        probabilities, pixels = model(images)
        splits = np.cumsum([len(x) for x in batch])[:-1]
        if not model.with_pixels:
            return [
                PredictionResult(x, p)
                for x, p in zip(batch, np.split(probabilities, splits), strict=True)
            ]
        assert pixels is not None
        return [
            PredictionResult(x, (p, q))
            for x, p, q in zip(
                batch, np.split(probabilities, splits), np.split(pixels, splits), strict=True
            )
        ]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        """Bytes of the stacks, for Beam's metrics (the default pickles the whole batch)."""
        return int(sum(x.nbytes for x in batch))

    def batch_elements_kwargs(self) -> dict[str, Any]:
        """A fixed few stacks per call (stacks hold up to 256 tiles).

        Fixed: the stacks already make the batches big, and with a range Beam's
        batch-size estimator fits time against sizes that barely vary, printing
        numpy's "Polyfit may be poorly conditioned" for every fit.
        """
        stacks = max(1, self._batch_size // 16)
        return {"min_batch_size": stacks, "max_batch_size": stacks}


class KeyedTileModelHandler(KeyedModelHandler):  # type: ignore[misc]
    """Beam's ``KeyedModelHandler`` whose metrics do not pickle every key.

    The keys are the stacks' tile infos; Beam's ``get_num_bytes`` pickles them,
    and the images, once per model call only to count bytes for a metric: about
    a second of a 30 s run over 64,516 tiles. Here each stack's images are counted, and its keys
    by number (``KEY_BYTES`` each, about a pickled info's size).
    """

    KEY_BYTES = 400

    def get_num_bytes(self, batch: Sequence[tuple[Any, np.ndarray]]) -> int:
        """Bytes of the images, plus ``KEY_BYTES`` per tile info."""
        return int(sum(x.nbytes + self.KEY_BYTES * len(k) for k, x in batch))


class ExampleMaker:
    """What a model can take of a TileBatch: ``(infos, float32 stack)``, and the refusals.

    Tiles of the wrong kind (a scene tile for a frame model, or the reverse),
    lacking one of the model's bands, or of another size are refused with the
    reason; the model's bands are picked in the model's order.

    Args:
        model: The model the examples are for.
    """

    def __init__(self, model: ModelRef) -> None:
        self._bands = model.bands
        self._size = model.tile_size
        self._task = model.metadata.get("task", "tile")

    def __call__(self, batch: TileBatch) -> tuple[Any, list[dict[str, str]]]:
        """``((infos, images [n, H, W, C]) or None, dead-letter rows)`` of one batch."""
        wanted_kind = "frame" if self._task == "frame" else "scene"
        infos: list[tuple[Any, ...]] = []
        images: list[np.ndarray] = []
        refused = []
        for tile in batch.tiles:
            reason = None
            image = tile.image
            if tile.kind != wanted_kind:
                reason = f"a {self._task} model cannot label a {tile.kind}"
            elif self._bands and tuple(tile.bands) != self._bands and tile.kind == "scene":
                missing = [b for b in self._bands if b not in tile.bands]
                if missing:
                    reason = f"tile lacks the model's band(s) {missing}"
                else:
                    image = image[..., [tile.bands.index(b) for b in self._bands]]
            if reason is None and image.shape[0] != self._size:
                reason = f"tile is {image.shape[0]} px, the model takes {self._size} px"
            if reason:
                refused.append(
                    dead_row(
                        batch.source, reason, "tile", tile.scene_id, tile.tile_id, stage="infer"
                    )
                )
                continue
            infos.append(_info(tile, batch.source))
            images.append(image)
        example = (tuple(infos), np.stack(images).astype(np.float32)) if infos else None
        return example, refused


class ToExamples(beam.DoFn):  # type: ignore[misc]
    """Tile batches -> ``(infos, float32 stack)`` (:class:`ExampleMaker`); refusals to ``dead``."""

    def __init__(self, model: ModelRef) -> None:
        self._make = ExampleMaker(model)
        self._tiles = Metrics.counter(_NS, "tiles_in")
        self._refused = Metrics.counter(_NS, "tiles_dead_lettered")

    def start_bundle(self) -> None:
        self._counts: collections.Counter[str] = collections.Counter()

    def process(self, batch: TileBatch) -> Iterator[Any]:
        """Yield ``(infos, images [n, H, W, C])`` per batch; refused tiles go to ``dead``."""
        example, refused = self._make(batch)
        self._tiles.inc(len(batch.tiles))
        self._refused.inc(len(refused))
        self._counts.update(tiles_in=len(batch.tiles), tiles_dead_lettered=len(refused))
        for row in refused:
            yield TaggedOutput(DEAD, row)
        if example is not None:
            yield example

    def finish_bundle(self) -> Iterator[TaggedOutput]:
        # Counts leave once per bundle, not once per tile.
        if self._counts:
            yield TaggedOutput(COUNTS, _global(("", +self._counts)))


def _global(value: Any) -> WindowedValue:
    window = GlobalWindow()
    return WindowedValue(value, window.max_timestamp(), [window])


def _decode_chunk(
    path: str, records: Sequence[bytes], make: ExampleMaker
) -> tuple[list[Any], collections.Counter[str]]:
    """Decode a chunk of tile records; return what to emit, and the tile counts.

    tfx-bsl decodes the chunk in one call (per-record calls cost more than the
    model here); a chunk that fails is decoded record by record so that only
    its bad records are dead-lettered. Emits, per scene in the chunk, the
    example ``make`` makes of its tiles and their refusals (as
    :class:`ToExamples` would). Pure: it runs on :class:`ReadShards`' decoding
    thread, which must not touch Beam's state.
    """
    out: list[Any] = []
    counts: collections.Counter[str] = collections.Counter()
    try:
        tiles = decode_tiles(records)
    except Exception:
        tiles = []
        for record in records:
            try:
                tiles.extend(decode_tiles([record]))
            except Exception as exc:
                counts.update(tiles_in=1, tiles_dead_lettered=1)
                reason = f"unreadable tile record: {exc}"
                out.append(TaggedOutput(DEAD, dead_row(path, reason, "tile", stage="read")))
    by_scene: dict[str, list[Tile]] = collections.defaultdict(list)
    for tile in tiles:
        by_scene[tile.scene_id].append(tile)
    for scene_id, scene_tiles in by_scene.items():
        # The record does not carry its scene's path: PerScene looks it up by id.
        example, refused = make(TileBatch(scene_tiles, scene_id, scene_tiles[0].image.dtype.name))
        counts.update(tiles_in=len(scene_tiles), tiles_dead_lettered=len(refused))
        out.extend(TaggedOutput(DEAD, row) for row in refused)
        if example is not None:
            out.append(example)
    return out, counts


class ReadShards(beam.DoFn):  # type: ignore[misc]
    """Read and decode one tile TFRecord shard; where it breaks, dead-letter the rest of it.

    Yields, per scene per chunk of records, the model's ``(infos, stack)``
    example (refused tiles to ``dead``, tile counts to ``counts``). Bad
    records are dead-lettered one by one (:func:`_decode_chunk`). A truncated
    shard or a bad checksum ends the shard, not the job: the records before
    the break are labelled, and one dead-letter row (kind ``shard``) names the
    shard, how many records were read and why the rest was not.

    Chunks are decoded (and made into examples) on a thread of their own, up
    to ``ahead`` chunks ahead of what the stage downstream (the model, fused
    into this stage) has taken: decoding is Python and holds the interpreter,
    the model runs in TensorFlow's threads without it, so the two overlap
    instead of taking turns. The thread only computes; everything is emitted,
    and counted, from the bundle's own thread, in shard order.

    Args:
        make: Turns decoded batches into the model's examples.
        chunk: Records per decoded chunk.
        ahead: Most chunks decoded ahead of the one being emitted (0: decode
            in the bundle's thread, one chunk at a time).
    """

    def __init__(self, make: ExampleMaker, chunk: int = 256, ahead: int = 2) -> None:
        self._make = make
        self._chunk = chunk
        self._ahead = ahead
        self._corrupt = Metrics.counter(_NS, "shards_dead_lettered")
        self._tiles = Metrics.counter(_NS, "tiles_in")
        self._refused = Metrics.counter(_NS, "tiles_dead_lettered")

    def setup(self) -> None:
        """Start the decoding thread (one per DoFn instance)."""
        self._decoder = (
            concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="minewatch-decode")
            if self._ahead
            else None
        )

    def teardown(self) -> None:
        """Stop the decoding thread."""
        decoder = getattr(self, "_decoder", None)
        if decoder is not None:
            decoder.shutdown(wait=True, cancel_futures=True)

    def _emit(self, decoded: tuple[list[Any], collections.Counter[str]]) -> Iterator[Any]:
        out, counts = decoded
        self._tiles.inc(counts["tiles_in"])
        self._refused.inc(counts["tiles_dead_lettered"])
        yield from out
        if counts:
            yield TaggedOutput(COUNTS, ("", +counts))

    def process(self, readable: Any) -> Iterator[Any]:
        """Yield the shard's examples; the rest of a broken shard goes to ``dead``."""
        path = readable.metadata.path
        pending: collections.deque[Any] = collections.deque()

        def decode(chunk: list[bytes]) -> Iterator[Any]:
            # Queue the chunk; emit the oldest ones while more than `ahead` wait.
            if self._decoder is None:
                yield from self._emit(_decode_chunk(path, chunk, self._make))
                return
            pending.append(self._decoder.submit(_decode_chunk, path, chunk, self._make))
            while len(pending) > self._ahead:
                yield from self._emit(pending.popleft().result())

        read = 0
        chunk: list[bytes] = []
        try:
            with readable.open(compression_type="uncompressed") as f:
                for record in read_records(f):
                    read += 1
                    chunk.append(record)
                    if len(chunk) == self._chunk:
                        yield from decode(chunk)
                        chunk = []
        except (ValueError, OSError) as exc:
            self._corrupt.inc()
            reason = f"unreadable TFRecord shard after {read} record(s), the rest not read: {exc}"
            yield TaggedOutput(DEAD, dead_row(path, reason, "shard", stage="read"))
            yield TaggedOutput(COUNTS, ("", collections.Counter(shards_dead_lettered=1)))
        if chunk:
            yield from decode(chunk)
        while pending:
            yield from self._emit(pending.popleft().result())


def _failed_batch(
    item: tuple[Sequence[tuple[Sequence[tuple[Any, ...]], Any]], Exception],
) -> Iterator[Any]:
    batch, exc = item
    for info in (TileInfo(*info) for infos, _ in batch for info in infos):
        yield dead_row(
            info.source,
            f"inference failed: {type(exc).__name__}: {exc}",
            "tile",
            info.scene_id,
            info.tile_id,
            stage="infer",
        )


#: Where a :class:`TileInfo` tuple holds each field.
_FIELD = {f.name: i for i, f in enumerate(fields(TileInfo))}


def _by_scene(item: tuple[Sequence[tuple[Any, ...]], PredictionResult]) -> Iterator[Any]:
    """``(infos, inference)`` -> ``(scene_id, (infos, inference))`` per scene.

    ``infos`` are :class:`TileInfo` tuples (:func:`_info`); ``inference`` is what
    :class:`TileModelHandler` returns: ``[n, K]``, or the pair ``([n, K], [n, H,
    W, K])``; each scene gets its rows of it.
    """
    infos, result = item
    rows: dict[str, list[int]] = collections.defaultdict(list)
    for i, info in enumerate(infos):
        rows[info[_FIELD["scene_id"]]].append(i)
    out = result.inference
    if len(rows) == 1:  # the common case: a stack of one scene goes on whole
        yield next(iter(rows)), (list(infos), out)
        return
    for scene_id, index in rows.items():
        part = (out[0][index], out[1][index]) if isinstance(out, tuple) else out[index]
        yield scene_id, ([infos[i] for i in index], part)


@dataclass
class ScenePredictions:
    """Everything the model said about one scene's tiles, column by column.

    Attributes:
        infos: :class:`TileInfo` tuples, in (row, column) order.
        probs: ``[n, K]`` tile probabilities.
        pixels: ``[n, H, W, K]`` per-pixel probabilities (bytes, steps of
            ``1 / PROBABILITY_STEPS``), or None for a tile-only model.
        rows: ``[n]`` tile row offsets.
        cols: ``[n]`` tile column offsets.
        first: The first tile's :class:`TileInfo` (what the scene's tiles share).
    """

    infos: list[tuple[Any, ...]]
    probs: np.ndarray
    pixels: np.ndarray | None
    rows: np.ndarray
    cols: np.ndarray
    first: TileInfo

    @classmethod
    def gather(cls, groups: Iterable[tuple[Sequence[tuple[Any, ...]], Any]]) -> ScenePredictions:
        """Join the scene's ``(infos, inference)`` groups and sort them by tile position."""
        infos: list[tuple[Any, ...]] = []
        probs, pixels = [], []
        for group_infos, inference in groups:
            p, q = inference if isinstance(inference, tuple) else (inference, None)
            infos.extend(group_infos)
            probs.append(p)
            pixels.append(q)
        rows = np.fromiter((i[_FIELD["row_off"]] for i in infos), np.int64, len(infos))
        cols = np.fromiter((i[_FIELD["col_off"]] for i in infos), np.int64, len(infos))
        order = np.lexsort((cols, rows))
        with_pixels = all(q is not None for q in pixels)
        return cls(
            infos=[infos[i] for i in order],
            probs=np.concatenate(probs)[order],
            pixels=np.concatenate(pixels)[order] if with_pixels else None,
            rows=rows[order],
            cols=cols[order],
            first=TileInfo(*infos[order[0]]),
        )

    def column(self, name: str) -> list[Any]:
        """One :class:`TileInfo` field of every tile."""
        k = _FIELD[name]
        return [info[k] for info in self.infos]

    def __len__(self) -> int:
        return len(self.infos)


# -- per scene: tables, probability raster, sites ------------------------------------


#: Little-endian WKB of a polygon of one ring of five points: byte order, type 3,
#: one ring, five points, then the ten coordinates.
_BOX_WKB = np.dtype(
    [("order", "u1"), ("type", "<u4"), ("rings", "<u4"), ("points", "<u4"), ("xy", "<f8", (10,))]
)


def _boxes_wkb(bounds: np.ndarray) -> Any:
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


def _ts(iso: str) -> datetime | None:
    return datetime.fromisoformat(iso) if iso else None


@dataclass
class SceneSites:
    """The sites found in one scene, on their way to linking across acquisitions."""

    scene_id: str
    acquired: str
    crs: str
    sites: list[dict[str, Any]] = field(default_factory=list)


class _Polygons:
    """Concession or protected-area polygons, reprojected once per CRS."""

    def __init__(self, path: str | None, id_fields: Sequence[str]) -> None:
        self._path = path
        self._id_fields = id_fields
        self._raw: list[tuple[str, Any]] | None = None
        self._crs = ""
        self._by_crs: dict[str, list[tuple[str, Any]]] = {}

    def _load(self) -> None:
        import pyogrio
        import shapely

        meta, _, geometry, fields = pyogrio.raw.read(self._path)
        names = list(meta["fields"])
        key = next((f for f in self._id_fields if f in names), None)
        ids = fields[names.index(key)] if key else range(len(geometry))
        self._raw = [
            (str(i), shapely.make_valid(shapely.from_wkb(g)))
            for i, g in zip(ids, geometry, strict=True)
            if g is not None
        ]
        self._crs = str(meta["crs"] or "EPSG:4326")

    def in_crs(self, crs: str) -> list[tuple[str, Any]]:
        if self._path is None:
            return []
        if self._raw is None:
            self._load()
        assert self._raw is not None
        if crs not in self._by_crs:
            # A scene without a CRS gets the polygons as they are.
            self._by_crs[crs] = [
                (i, reproject(g, self._crs, crs) if crs else g) for i, g in self._raw
            ]
        return self._by_crs[crs]


def _cell_size(size: int, offsets: Iterable[int]) -> int:
    """Raster cell: gcd of the tile size and the regular tiling step."""
    distinct = sorted(set(offsets))
    steps = collections.Counter(b - a for a, b in itertools.pairwise(distinct))
    step = steps.most_common(1)[0][0] if steps else size
    return math.gcd(size, step)


class PerScene(beam.DoFn):  # type: ignore[misc]
    """All predictions of one scene or frame: write its tables, raster and quicklook.

    Yields ``SceneSites`` keyed by area (scenes), frame rows keyed by camera and day
    (frames), and counts.
    """

    def __init__(self, config: InferConfig) -> None:
        self._c = config
        self._version = config.model.version
        self._classes = config.model.classes
        self._rules = config.rules

    def setup(self) -> None:
        """Load the area polygons lazily; index the DSMs and read the ports, once per worker."""
        self._concessions = _Polygons(self._c.concessions, ("licence_id", "id", "name"))
        self._protected = _Polygons(self._c.protected, ("name", "id"))
        self._dsm: Any = None
        self._ports: Any = None
        if self._c.dsm:
            from minewatch.volumes import DsmIndex

            self._dsm = DsmIndex.from_glob(self._c.dsm)
        if self._c.licensed_ports:
            from minewatch.vessels import PortRegistry

            self._ports = PortRegistry.from_file(self._c.licensed_ports)

    def process(
        self,
        item: tuple[str, Iterable[tuple[Sequence[tuple[Any, ...]], Any]]],
        sources: dict[str, str] | None = None,
    ) -> Iterator[Any]:
        """Write the scene's outputs; yield what later steps need.

        ``item`` is ``(scene_id, [(tile infos as tuples, inference), ...])`` with
        ``inference`` as :class:`TileModelHandler` returns it. ``sources`` maps
        scene ids to their paths, from the manifests of tile-job inputs (their
        records do not carry the path).
        """
        scene_id, groups = item
        preds = ScenePredictions.gather(groups)
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
        if self._c.bigquery:
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
        folder = posixpath.join(self._c.out, table, *([f"date={day}"] if day else []))
        return posixpath.join(folder, f"{_safe(scene_id)}__{_safe(self._version)}{ext}")

    def _tile_table(self, preds: ScenePredictions) -> Any:
        """The scene's ``tile_labels`` rows as an Arrow table, built column by column."""
        import pyarrow as pa

        probs = preds.probs.astype(np.float32, copy=False)
        label = probs.argmax(axis=1)
        names = np.array([*self._classes, *map(str, range(len(self._classes), probs.shape[1]))])
        bounds = np.array(preds.column("bounds_wgs84"), np.float64).reshape(-1, 4)
        n, first = len(preds), preds.first
        acquired = preds.column("acquired")
        when = {a: _ts(a) for a in set(acquired)}
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
                "geometry": _boxes_wkb(bounds),
                "model_version": pa.repeat(self._version, n),
            }
        )

    def _frame_row(self, preds: ScenePredictions) -> dict[str, Any]:
        info = preds.first
        mean = preds.probs.mean(axis=0)
        k = int(np.argmax(mean))
        return {
            "frame_id": info.scene_id,
            "source": info.source,
            "camera_id": info.camera_id,
            "acquired": _ts(info.acquired),
            "grade": self._classes[k] if k < len(self._classes) else str(k),
            "label": k,
            "score": float(mean[k]),
            "probabilities": [float(p) for p in mean],
            "tiles": len(preds),
            "model_version": self._version,
        }

    def _sites(self, scene_id: str, preds: ScenePredictions) -> Iterator[Any]:
        import shapely

        from minewatch.sites import pixel_mosaic, polygonize, probability_raster

        first = preds.first
        size = first.size
        transform = Affine(*first.transform[:6]) @ Affine.translation(
            -first.col_off, -first.row_off
        )
        height = int(preds.rows.max()) + size
        width = int(preds.cols.max()) + size
        per_pixel = preds.pixels is not None
        if preds.pixels is not None:
            probs, count, grid = pixel_mosaic(
                preds.rows,
                preds.cols,
                preds.pixels,
                height,
                width,
                transform,
                len(self._classes),
                scale=1.0 / PROBABILITY_STEPS,
            )
        else:
            cell = _cell_size(size, [*preds.rows.tolist(), *preds.cols.tolist()])
            probs, count, grid = probability_raster(
                zip(preds.rows.tolist(), preds.cols.tolist(), preds.probs, strict=True),
                height,
                width,
                transform,
                size,
                cell,
                len(self._classes),
            )
        self._write_raster(scene_id, probs, count, grid, first.crs)
        rules = self._rules
        shapes = polygonize(
            probs,
            count,
            grid,
            first.crs,
            self._classes,
            self._c.positive,
            rules.threshold,
            {k: rules.rule(k).min_area_m2 for k in self._c.positive},
            {k: rules.rule(k).min_score for k in self._c.positive},
            rules.smooth,
            rules.class_weights,
        )
        concessions = self._concessions.in_crs(first.crs)
        protected = self._protected.in_crs(first.crs)
        found = SceneSites(scene_id, first.acquired, first.crs)
        counts: collections.Counter[str] = collections.Counter(sites_found=len(shapes))
        with contextlib.ExitStack() as stack:
            # The scene is opened once for all its stockpiles' volumes, and its
            # sun angles read once, not once per pile.
            scene: Any = first.source
            sun = self._c.sun
            if self._c.volumes and any(s.kind == "stockpile" for s in shapes):
                scene = _open_scene(first.source, stack)
                if sun is None:
                    sun = _scene_sun(scene)
            self._judge(shapes, first, scene, sun, found, counts, concessions, protected)
        if self._ports is not None:
            if per_pixel:
                yield from self._vessels(scene_id, first, probs, count, grid, found, counts)
            else:
                reason = (
                    "vessels not searched: the model serves no pixel_probabilities; vessels "
                    "need a per-pixel class raster (train with model.pixel_head)"
                )
                yield TaggedOutput(
                    DEAD, dead_row(first.source, reason, "vessels", scene_id, stage="vessels")
                )
        if self._c.pictures:
            self._quicklook(first, found)
        yield TaggedOutput(COUNTS, ("", counts))
        centre = shapely.box(*grid.transform @ (0, 0), *grid.transform @ (grid.width, grid.height))
        yield (_area_key(first.crs, centre.centroid, self._c.area_cell_m), found)

    def _judge(
        self,
        shapes: Sequence[Any],
        first: TileInfo,
        scene: Any,
        sun: tuple[float, float] | None,
        found: SceneSites,
        counts: collections.Counter[str],
        concessions: list[tuple[str, Any]],
        protected: list[tuple[str, Any]],
    ) -> None:
        """Flag each site, measure each stockpile's volume; append them to ``found``."""
        import shapely

        from minewatch.sites import assess_legality

        judged = bool(self._c.concessions or self._c.protected)
        for s in shapes:
            flagged, reason, licence = False, None, None
            if judged and s.kind in self._c.mining_classes:
                flagged, reason, licence = assess_legality(s.geometry, concessions, protected)
            volume = None
            if s.kind == "stockpile" and self._c.volumes:
                volume = self._volume(s.geometry, first, scene, sun)
                counts[f"volumes_{volume['volume_method']}"] += 1
            found.sites.append(
                {
                    "kind": s.kind,
                    "wkb": bytes(shapely.to_wkb(s.geometry)),
                    "area_m2": s.area_m2,
                    "score": s.score,
                    "flagged": flagged,
                    "reason": reason,
                    "licence_id": licence,
                    "volume": volume,
                }
            )

    def _volume(
        self, geometry: Any, first: TileInfo, scene: Any, sun: tuple[float, float] | None
    ) -> dict[str, Any]:
        """``stockpile_series`` volume columns of one stockpile site in this scene.

        ``scene`` is the scene open for reading (or its path when it could not be opened).
        """
        from minewatch.volumes import VolumeResult, measure_volume

        when = _ts(first.acquired)
        try:
            result = measure_volume(geometry, first.crs, scene, when, self._dsm, sun)
        except Exception as exc:  # measure_volume refuses bad data itself; this is a bug net
            log.warning("volume of a stockpile in %s failed: %s", first.scene_id, exc)
            result = VolumeResult.refused(f"volume failed: {type(exc).__name__}: {exc}")
        return result.row()

    def _water(self, first: TileInfo, grid: Any) -> np.ndarray | None:
        """Water of the scene grid from NDWI of B03/B08; None when the model has a water class.

        Raises:
            SceneError: The scene cannot be read or lacks B03/B08.
        """
        from minewatch.errors import SceneError
        from minewatch.rasters import SceneReader
        from minewatch.scenes import group_files
        from minewatch.vessels import VesselConfig, ndwi_water
        from pipelines.options import list_inputs

        if any(c in self._classes for c in VesselConfig().water_classes):
            return None
        refs, _ = group_files(list_inputs(first.source))
        ref = next((r for r in refs if r.scene_id == first.scene_id), refs[0] if refs else None)
        if ref is None:
            raise SceneError(f"no scene at {first.source}")
        reader = SceneReader(ref, bands=["B03", "B08"]).open()
        try:
            assert reader.grid is not None
            if not reader.grid.transform.almost_equals(grid.transform):
                raise SceneError(
                    f"the B03/B08 grid {tuple(reader.grid.transform)[:6]} is not the grid the "
                    f"model saw {tuple(grid.transform)[:6]}"
                )
            data, valid = reader.read(0, 0, grid.height, grid.width)
        finally:
            reader.close()
        return np.asarray(ndwi_water(data[0], data[1]) & valid)

    def _vessels(
        self,
        scene_id: str,
        first: TileInfo,
        probs: np.ndarray,
        count: np.ndarray,
        grid: Any,
        found: SceneSites,
        counts: collections.Counter[str],
    ) -> Iterator[Any]:
        """Find and judge the scene's vessels; write its ``vessels`` file; flag in ``found``."""
        from minewatch.errors import MinewatchError
        from minewatch.vessels import find_vessels

        try:
            water = self._water(first, grid)
            rows, _ = find_vessels(
                probs,
                self._classes,
                grid.transform,
                first.crs,
                scene_id=scene_id,
                acquired=first.acquired or None,
                model_version=self._version,
                water=water,
                valid=count > 0,
                ports=self._ports,
            )
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
        counts["vessels_found"] += len(rows)
        counts["vessels_flagged"] += sum(r["flagged"] for r in rows)
        for row in rows:
            if self._c.bigquery:
                yield TaggedOutput("vessel_rows", row)
            if row["flagged"]:
                found.sites.append(
                    {
                        "kind": "vessel",
                        "wkb": row["geometry_source"],
                        "area_m2": row["area_m2"],
                        "score": row["score"],
                        "flagged": True,
                        "reason": row["reason"],
                        "licence_id": None,
                        "volume": None,
                    }
                )

    def _write_raster(
        self, scene_id: str, probs: np.ndarray, count: np.ndarray, grid: Any, crs: str
    ) -> None:
        path = self._scene_file("rasters", scene_id, ".tif")
        write_probability_cog(path, probs, count, grid.transform, crs, self._classes)

    def _quicklook(self, first: TileInfo, found: SceneSites) -> None:
        import shapely

        from minewatch.quicklook import scene_quicklook
        from minewatch.scenes import group_files
        from pipelines.options import list_inputs

        try:
            refs, _ = group_files(list_inputs(first.source))
        except Exception as exc:  # the pictures are a courtesy, never a failure
            log.warning("no quicklook for %s: %s", first.scene_id, exc)
            return
        ref = next((r for r in refs if r.scene_id == first.scene_id), refs[0] if refs else None)
        if ref is None or ref.kind != "scene":
            return
        path = self._scene_file("quicklooks", first.scene_id, ".png")
        _makedirs(posixpath.dirname(path))
        sites = [(shapely.from_wkb(s["wkb"]), s["flagged"]) for s in found.sites]
        try:
            scene_quicklook(ref, sites, path)
        except Exception as exc:
            log.warning("no quicklook for %s: %s", first.scene_id, exc)


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
            _makedirs(posixpath.dirname(path))
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


def _open_scene(source: str, stack: contextlib.ExitStack) -> Any:
    """The scene open for reading until ``stack`` closes; its path when it cannot be opened.

    Given the path, :func:`minewatch.volumes.measure_volume` tries again per site
    and gives each site the reason it could not read the scene.
    """
    import rasterio

    try:
        return stack.enter_context(rasterio.open(source))
    except Exception:
        return source


def _scene_sun(scene: Any) -> tuple[float, float] | None:
    """The sun angles of a scene's tags (an open scene, or a path); None when it has none.

    None also when the scene cannot be read: :func:`minewatch.volumes.measure_volume`
    then reads the tags itself and gives each site the reason.
    """
    import rasterio

    from minewatch.volumes import sun_from_tags

    if not isinstance(scene, str):
        return sun_from_tags(scene.tags())
    try:
        with rasterio.open(scene) as src:
            return sun_from_tags(src.tags())
    except Exception:
        return None


#: ``stockpile_series`` volume columns of a site measured by nothing.
_NO_VOLUME: dict[str, Any] = {
    "volume_m3": None,
    "volume_method": None,
    "volume_uncertainty_m3": None,
    "volume_reason": None,
    "height_m": None,
}


def _area_key(crs: str, centre: Any, cell: float) -> str:
    return f"{crs}|{math.floor(centre.x / cell)}|{math.floor(centre.y / cell)}"


def _safe(text: str) -> str:
    from minewatch.scenes import safe_id

    return safe_id(text)


def _makedirs(folder: str) -> None:
    import os

    if "://" not in folder:
        os.makedirs(folder, exist_ok=True)


def _write_frames(
    item: tuple[tuple[str, str], Iterable[dict[str, Any]]], out: str, version: str
) -> int:
    (camera, day), rows = item
    rows = sorted(
        rows, key=lambda r: (r["acquired"] or datetime.min.replace(tzinfo=UTC), r["frame_id"])
    )
    name = f"{_safe(camera or 'camera')}__{_safe(version)}.parquet"
    write_geoparquet(
        posixpath.join(out, "frame_labels", f"date={day}", name),
        rows,
        "frame_labels",
        frame_labels_schema(),
    )
    return len(rows)


def _remove_stale(folder: str, name: str, days: set[str]) -> None:
    """Delete ``folder/date=*/name`` files of days not in ``days``.

    An area's ``sites`` rows are split by first sighting: when an earlier scene
    arrives later, its sites move to an earlier day's file, and the file of the
    day they were in before would keep a second copy. The new files are written
    first, so a reader between the two steps sees a site twice for a moment,
    never not at all.
    """
    matched = FileSystems.match([posixpath.join(folder, "date=*", name)])[0].metadata_list
    stale = [
        m.path
        for m in matched
        if posixpath.basename(posixpath.dirname(m.path)).removeprefix("date=") not in days
    ]
    if stale:
        FileSystems.delete(stale)


class LinkSites(beam.DoFn):  # type: ignore[misc]
    """Link the sites of one area across acquisitions; write sites and stockpile series.

    Each ``(area, scenes)`` element rewrites the area's files for the model
    version (``sites/date=D/<area>__<version>.parquet``, D the first sighting;
    ``stockpile_series`` by acquisition day) and deletes the area's files of
    that version under days that no longer hold a row, so a rerun with more
    scenes leaves each site once.
    """

    def __init__(self, config: InferConfig) -> None:
        self._c = config
        self._version = config.model.version
        self._rules = config.rules

    def process(self, item: tuple[str, Iterable[SceneSites]]) -> Iterator[Any]:
        """Write the area's sites, site observations and stockpile series; yield series rows."""
        import shapely

        from minewatch.sites import link_series

        key, scenes = item
        ordered = sorted(scenes, key=lambda s: (s.acquired, s.scene_id))
        crs = ordered[0].crs
        site_rows: list[dict[str, Any]] = []
        observation_rows: list[dict[str, Any]] = []
        series_rows: list[dict[str, Any]] = []
        kinds = sorted({s["kind"] for sc in ordered for s in sc.sites})
        for kind in kinds:
            dated = [(sc, [s for s in sc.sites if s["kind"] == kind]) for sc in ordered]
            geoms = [
                (sc.scene_id, [shapely.from_wkb(s["wkb"]) for s in sites]) for sc, sites in dated
            ]
            by_scene = {sc.scene_id: (sc, sites) for sc, sites in dated}
            for chain in link_series(geoms):
                scene0, i0 = chain[0]
                digest = hashlib.sha1(f"{crs}|{kind}|{scene0}|{i0}".encode()).hexdigest()[:10]
                site_id = f"{kind}-{digest}"
                members = [(by_scene[sid][0], by_scene[sid][1][i]) for sid, i in chain]
                last_scene, last = members[-1]
                score = float(np.mean([m["score"] for _, m in members]))
                # A vessel site is one sighting of a moving ship at an unlicensed
                # berth: there is no second date to wait for.
                status = (
                    "confirmed"
                    if kind == "vessel"
                    else self._rules.status(kind, len(members), score)
                )
                for sc, m in members:
                    observation_rows.append(
                        {
                            "site_id": site_id,
                            "kind": kind,
                            "scene_id": sc.scene_id,
                            "acquired": _ts(sc.acquired),
                            "geometry": bytes(
                                shapely.to_wkb(
                                    reproject(shapely.from_wkb(m["wkb"]), crs, "EPSG:4326")
                                )
                            ),
                            "source_crs": crs,
                            "geometry_source": m["wkb"],
                            "area_m2": m["area_m2"],
                            "score": m["score"],
                            "flagged": bool(m["flagged"]),
                            "reason": m["reason"],
                            "licence_id": m["licence_id"],
                            "status": status,
                            "model_version": self._version,
                        }
                    )
                site_rows.append(
                    {
                        "site_id": site_id,
                        "kind": kind,
                        "commodity": None,
                        # the last sighting's outline, reprojected once above
                        "geometry": observation_rows[-1]["geometry"],
                        "source_crs": crs,
                        "geometry_source": last["wkb"],
                        "area_m2": last["area_m2"],
                        "score": score,
                        "first_seen": _ts(members[0][0].acquired),
                        "last_seen": _ts(last_scene.acquired),
                        "acquisitions": len(members),
                        "flagged": bool(last["flagged"]),
                        "reason": last["reason"],
                        "licence_id": last["licence_id"],
                        "model_version": self._version,
                        "scene_ids": [sc.scene_id for sc, _ in members],
                        "status": status,
                    }
                )
                if kind == "stockpile":
                    previous = None
                    for sc, m in members:
                        series_rows.append(
                            {
                                "site_id": site_id,
                                "acquired": _ts(sc.acquired),
                                "scene_id": sc.scene_id,
                                "area_m2": m["area_m2"],
                                "change_m2": None if previous is None else m["area_m2"] - previous,
                                "model_version": self._version,
                                **(m.get("volume") or _NO_VOLUME),
                            }
                        )
                        previous = m["area_m2"]
        name = f"{_safe(key)}__{_safe(self._version)}.parquet"
        for table, rows, when, schema in (
            ("sites", site_rows, "first_seen", sites_schema()),
            ("site_observations", observation_rows, "acquired", site_observations_schema()),
            ("stockpile_series", series_rows, "acquired", stockpile_series_schema()),
        ):
            parts: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
            for row in rows:
                parts[row[when].date().isoformat() if row[when] else "unknown"].append(row)
            for day, part in parts.items():
                write_geoparquet(
                    posixpath.join(self._c.out, table, f"date={day}", name), part, table, schema
                )
            _remove_stale(posixpath.join(self._c.out, table), name, set(parts))
        yield TaggedOutput(
            COUNTS,
            (
                "",
                collections.Counter(
                    sites=len(site_rows),
                    sites_flagged=sum(r["flagged"] for r in site_rows),
                    sites_candidate=sum(r["status"] == "candidate" for r in site_rows),
                ),
            ),
        )
        if self._c.bigquery:
            for row in site_rows:
                yield TaggedOutput("site_rows", row)
            for row in observation_rows:
                yield TaggedOutput("observation_rows", row)
        yield from series_rows


# -- input accounting and the dead letter ------------------------------------------------


def _split_counts(item: tuple[str, Any]) -> Iterator[Any]:
    """Job counts (key ``""``) to the main output, per-input counts to ``scene``."""
    key, counts = item
    if key:
        yield TaggedOutput("scene", (("scene", key), counts))
    else:
        yield counts


def _dead_key(row: dict[str, Any]) -> tuple[tuple[str, str], dict[str, Any]]:
    """A dead-letter row's file key: its scene (or frame), else the input it names."""
    if row["scene_id"]:
        return ("scene", row["scene_id"]), row
    return ("input", row["input"]), row


def _dead_letter_name(key: tuple[str, str], version: str) -> str:
    kind, name = key
    if kind == "scene":
        return f"{_safe(name)}__{_safe(version)}.parquet"
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    return f"input-{_safe(posixpath.basename(name.rstrip('/')))}-{digest}__{_safe(version)}.parquet"


def _write_rows(path: str, rows: Iterable[dict[str, Any]], schema: Any, chunk: int = 10_000) -> int:
    """Stream ``rows`` into one Parquet file, atomically; no row deletes the file.

    Rows are written ``chunk`` at a time, so a scene with a million dead tiles is
    never in memory at once. Returns the number of rows written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = posixpath.dirname(path)
    temp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}.parquet")
    written = 0
    stream: Any = None
    writer: Any = None
    try:
        it = iter(rows)
        while part := list(itertools.islice(it, chunk)):
            if writer is None:
                _makedirs(folder)
                stream = FileSystems.create(temp)
                writer = pq.ParquetWriter(stream, schema)
            writer.write_table(pa.Table.from_pylist(part, schema=schema))
            written += len(part)
    except BaseException:
        if writer is not None:
            writer.close()
            stream.close()
            FileSystems.delete([temp])
        raise
    if writer is not None:
        writer.close()
        stream.close()
        replace_file(temp, path)
    elif FileSystems.exists(path):
        FileSystems.delete([path])  # a rerun in which the input has no dead letter left
    return written


class AccountInputs(beam.DoFn):  # type: ignore[misc]
    """Decide each input's outcome; write its dead-letter file.

    Elements are ``(key, {"counts", "source", "dead"})`` from a ``CoGroupByKey``:
    ``key`` is ``("scene", scene_id)`` for a scene or frame (its cut counts, a
    ``labelled`` count from :class:`PerScene`, its path, its dead-letter rows),
    or ``("input", path)`` for rows that name no scene (inputs refused at
    discovery, unreadable shards and records).

    A scene is labelled when at least one of its tiles was; otherwise it is
    dead-lettered, with a row of kind ``input`` (``no tile kept (...)``: the
    tiles dropped by the cut, refused by the model and failed in inference,
    by reason) unless the scene was already refused whole when opened.

    The rows of a key go to ``dead_letter/<scene>__<version>.parquet`` (or
    ``input-<name>-<hash>__<version>.parquet``), written atomically and
    replaced by a rerun; a key with no row left deletes its old file.

    Args:
        out: Tables folder.
        version: Model version (part of the file names).
    """

    def __init__(self, out: str, version: str) -> None:
        self._out = out
        self._version = version

    def process(self, item: tuple[tuple[str, str], dict[str, Iterable[Any]]]) -> Iterator[Any]:
        """Write the key's dead-letter file; yield job counts, ``rows`` the added rows."""
        key, groups = item
        counts: collections.Counter[str] = collections.Counter()
        for part in groups["counts"]:
            counts.update(part)
        sources = sorted(set(groups["source"]))
        tally: collections.Counter[str] = collections.Counter()
        refused: collections.Counter[str] = collections.Counter()
        added: list[dict[str, str]] = []

        def rows() -> Iterator[dict[str, Any]]:
            for row in groups["dead"]:
                tally[f"dead_letter.{row['kind']}"] += 1
                if row["kind"] == "tile" and row["stage"] == "infer":
                    refused[row["reason"]] += 1
                yield row
            outcome = self._outcome(key, counts, refused, sources)
            if outcome is not None:
                tally[f"dead_letter.{outcome['kind']}"] += 1
                added.append(outcome)
                yield outcome

        _write_rows(
            posixpath.join(self._out, "dead_letter", _dead_letter_name(key, self._version)),
            rows(),
            dead_letter_schema(),
        )
        if key[0] == "scene":
            tally["inputs_labelled" if counts.get("labelled") else "inputs_dead_lettered"] += 1
        yield tally
        for row in added:
            yield TaggedOutput("rows", row)

    @staticmethod
    def _outcome(
        key: tuple[str, str],
        counts: collections.Counter[str],
        refused: collections.Counter[str],
        sources: Sequence[str],
    ) -> dict[str, str] | None:
        """The ``no tile kept`` row of a scene that was not labelled, else None."""
        kind, scene_id = key
        if kind != "scene" or counts.get("labelled") or counts.get("failed"):
            return None  # labelled, or refused whole by the cut (its row says why)
        parts = [
            f"{n} {k.split('.', 1)[1]}"
            for k, n in sorted(counts.items())
            if k.startswith("dropped.") and n
        ]
        parts += [f"{n} {reason}" for reason, n in refused.most_common(3)]
        if len(refused) > 3:
            parts.append(
                f"{sum(refused.values()) - sum(n for _, n in refused.most_common(3))} other"
            )
        detail = ", ".join(parts) or "no tile planned"
        source = sources[0] if sources else scene_id
        return dead_row(source, f"no tile kept ({detail})", "input", scene_id, stage="account")


def _finish(
    _: Any, counts: dict[str, int], series: list[dict[str, Any]], out: str, header: dict[str, Any]
) -> dict[str, Any]:
    from minewatch.quicklook import plot_stockpile_series, plot_stockpile_volumes

    plot = volume_plot = None
    if series and header.get("pictures", True):
        version = _safe(header["model_version"])
        plot = posixpath.join(out, "plots", f"stockpile_area__{version}.png")
        _makedirs(posixpath.dirname(plot))
        plot_stockpile_series(series, plot)
        if any(r.get("volume_m3") is not None for r in series):
            volume_plot = posixpath.join(out, "plots", f"stockpile_volume__{version}.png")
            plot_stockpile_volumes(series, volume_plot)
    for table, schema in (*INFER_TABLES.items(), ("dead_letter", dead_letter_schema)):
        # A table with no row yet still exists, so queries over it answer "no rows".
        folder = posixpath.join(out, table)
        empty = posixpath.join(folder, "empty.parquet")
        if not FileSystems.exists(folder) and not FileSystems.exists(empty):
            write_geoparquet(empty, [], table, schema())
    rejected = counts.get("inputs_rejected", 0)
    stats = {
        **header,
        "inputs": {
            "total": counts.get("inputs_labelled", 0)
            + counts.get("inputs_dead_lettered", 0)
            + rejected,
            "labelled": counts.get("inputs_labelled", 0),
            "dead_lettered": counts.get("inputs_dead_lettered", 0) + rejected,
        },
        "counts": dict(sorted(counts.items())),
        "plot": plot,
        "volume_plot": volume_plot,
    }
    # Temporary file, then rename: a reader (or a second run) never sees half a file.
    path = posixpath.join(out, "infer_stats.json")
    temp = posixpath.join(out, f".tmp-{uuid.uuid4().hex}.json")
    with FileSystems.create(temp) as f:
        f.write(json.dumps(stats, indent=2, default=str).encode())
    replace_file(temp, path)
    return stats


# -- the job -----------------------------------------------------------------------


def _scene_sources(match: Any) -> list[tuple[str, str]]:
    """The distinct ``(scene_id, source)`` pairs of one manifest file.

    Made distinct per file in Arrow (a manifest holds a row per tile, and a
    scene has thousands), so only a few pairs per file go on to ``Distinct``.
    """
    import pyarrow.parquet as pq

    with FileSystems.open(match.path) as f:
        table = pq.read_table(f, columns=["scene_id", "source"])
    pairs = table.group_by(["scene_id", "source"]).aggregate([])
    return list(zip(pairs["scene_id"].to_pylist(), pairs["source"].to_pylist(), strict=True))


def is_tile_dir(path: str) -> bool:
    """Whether ``path`` is the output folder of a tile job."""
    return bool(FileSystems.exists(posixpath.join(path, "stats.json"))) and bool(
        FileSystems.exists(posixpath.join(path, "tiles"))
    )


class InferScenes(beam.PTransform):  # type: ignore[misc]
    """Label scenes, frames or tile records and write the inference tables.

    Args:
        config: The job's options.
        header: Fields for ``infer_stats.json``.
    """

    def __init__(self, config: InferConfig, header: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._c = config
        self._header = header or {}

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        """Build the job."""
        c = self._c
        model = c.model
        tile_dirs = [i for i in c.inputs if is_tile_dir(i)]
        raw = [i for i in c.inputs if i not in tile_dirs]
        examples, dead, counts, scene_sources = [], [], [], []
        if raw:
            size = model.tile_size
            task = model.metadata.get("task", "tile")
            tiling = TileConfig(
                inputs=tuple(raw),
                out=c.out,
                label_source="none",
                bands=model.bands or None if task != "frame" else None,
                tile_size=size,
                stride=c.stride or max(1, size // 2),
            )
            cut = pbegin | "Cut" >> CutScenes(tiling)
            made = cut["batches"] | "Examples" >> beam.ParDo(ToExamples(model)).with_outputs(
                DEAD, COUNTS, main="ok"
            )
            examples.append(made.ok)
            dead.extend([cut["dead"], made[DEAD]])
            counts.append(made[COUNTS])
            # Per-scene cut counts feed the input accounting; of the job-level ones,
            # only the inputs refused at discovery (the other inputs are per scene).
            counts.append(
                cut["counts"]
                | "CutCounts" >> beam.Filter(lambda kv: kv[0] != "" or "inputs_rejected" in kv[1])
            )
            scene_sources.append(
                cut["refs"] | "RefSources" >> beam.Map(lambda ref: (ref.scene_id, ref.source))
            )
        sources = pbegin | "NoSources" >> beam.Create([])
        if tile_dirs:
            sources = (
                pbegin
                | "Manifests"
                >> beam.Create([posixpath.join(d, "manifest", "*.parquet") for d in tile_dirs])
                | "MatchManifests" >> fileio.MatchAll()
                | "SceneSources" >> beam.FlatMap(_scene_sources)
                | "Distinct" >> beam.Distinct()
            )
            # Not ReadAllFromTFRecord: it raises on a truncated or corrupt shard and
            # so fails the job; ReadShards dead-letters the rest of such a shard.
            shards = (
                pbegin
                | "TileShards"
                >> beam.Create([posixpath.join(d, "tiles", "*.tfrecord") for d in tile_dirs])
                | "MatchShards" >> fileio.MatchAll()
                | "SpreadShards" >> beam.Reshuffle()
                | "OpenShards" >> fileio.ReadMatches()
                | "ReadShards"
                >> beam.ParDo(ReadShards(ExampleMaker(model))).with_outputs(
                    DEAD, COUNTS, main="examples"
                )
            )
            examples.append(shards.examples)
            dead.append(shards[DEAD])
            counts.append(shards[COUNTS])
        scene_sources.append(sources)
        handler = KeyedTileModelHandler(TileModelHandler(model.saved_model, c.batch_size))
        predicted, failed = (
            examples
            | "AllExamples" >> beam.Flatten()
            | "RunInference" >> RunInference(handler).with_exception_handling()
        )
        dead.append(failed.failed_inferences | "FailedBatches" >> beam.FlatMap(_failed_batch))
        per_scene = (
            predicted
            | "ByScene" >> beam.FlatMap(_by_scene)
            | "GroupScene" >> beam.GroupByKey()
            | "PerScene"
            >> beam.ParDo(PerScene(c), sources=beam.pvalue.AsDict(sources)).with_outputs(
                COUNTS, DEAD, "frames", "tile_rows", "vessel_rows", main="sites"
            )
        )
        counts.append(per_scene[COUNTS])
        dead.append(per_scene[DEAD])
        frames = (
            per_scene.frames
            | "GroupCameraDay" >> beam.GroupByKey()
            | "WriteFrames" >> beam.Map(_write_frames, out=c.out, version=model.version)
            | "FrameRows" >> beam.Map(lambda n: ("", collections.Counter(frame_rows=n)))
        )
        counts.append(frames)
        linked = (
            per_scene.sites
            | "GroupArea" >> beam.GroupByKey()
            | "LinkSites"
            >> beam.ParDo(LinkSites(c)).with_outputs(
                COUNTS, "site_rows", "observation_rows", main="series"
            )
        )
        counts.append(linked[COUNTS])
        if c.bigquery:
            from pipelines.bigquery import WriteTablesToBigQuery

            tables = {
                "tile_labels": per_scene.tile_rows,
                "frame_labels": per_scene.frames | "FrameRowValues" >> beam.Values(),
                "sites": linked.site_rows,
                "site_observations": linked.observation_rows,
                "stockpile_series": linked.series,
                "vessels": per_scene.vessel_rows,
            }
            _ = tables | "BigQuery" >> WriteTablesToBigQuery(
                c.bigquery, run_id=self._header.get("run_id", "")
            )
        dead_rows = dead | "AllDead" >> beam.Flatten()
        split = (
            counts
            | "AllCounts" >> beam.Flatten()
            | "SplitCounts" >> beam.FlatMap(_split_counts).with_outputs("scene", main="job")
        )
        by_input = {
            "counts": split.scene,
            "source": (
                scene_sources
                | "AllSources" >> beam.Flatten()
                | "KeySources" >> beam.Map(lambda kv: (("scene", kv[0]), kv[1]))
            ),
            "dead": dead_rows | "KeyDead" >> beam.Map(_dead_key),
        }
        accounted = (
            by_input
            | "ByInput" >> beam.CoGroupByKey()
            # Accounts for each input and writes its dead-letter file.
            | "WriteDeadLetter"
            >> beam.ParDo(AccountInputs(c.out, model.version)).with_outputs("rows", main="counts")
        )
        totals = (
            (split.job, accounted.counts)
            | "JobCounts" >> beam.Flatten()
            | "Sum" >> beam.CombineGlobally(SumCounters())
        )
        stats = (
            pbegin
            | "FinishTrigger" >> beam.Create([None])
            | "Finish"
            >> beam.Map(
                _finish,
                counts=beam.pvalue.AsSingleton(totals),
                series=beam.pvalue.AsList(linked.series),
                out=c.out,
                header=self._header,
            )
        )
        all_dead = (dead_rows, accounted.rows) | "DeadLetterRows" >> beam.Flatten()
        return {"stats": stats, "dead_letter": all_dead}


def run_infer(
    config: InferConfig,
    beam_args: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any] | None:
    """Build and run the Infer job; return ``infer_stats.json`` (None on a test pipeline)."""
    header = {
        "run_id": f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
        "model_version": config.model.version,
        "model": config.model.path,
        "input_paths": list(config.inputs),
        "classes": list(config.model.classes),
        "site_classes": list(config.positive),
        "pictures": config.pictures,
        "dsm": config.dsm,
        "sun": list(config.sun) if config.sun else None,
        "licensed_ports": config.licensed_ports,
        "bigquery": config.bigquery or None,
    }
    stats, _ = run_pipeline(
        "Infer" >> InferScenes(config, header),
        beam_args,
        save_main_session,
        test_pipeline,
        posixpath.join(config.out, "infer_stats.json"),
    )
    return stats
