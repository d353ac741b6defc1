"""Serving the model: tiles into examples, examples through the SavedModel, results per scene.

The model runs through Beam's ``RunInference`` with :class:`TileModelHandler`,
which loads the SavedModel once per worker and calls its ``serving_default``
signature (:class:`ServedModel`: all the model batches of a call in one graph
call); no training code is imported. :class:`ExampleMaker` picks what the
model can take of a batch of tiles; :func:`by_scene` and
:class:`ScenePredictions` bring what it said back together per scene.

Between the steps a tile travels as a plain tuple of its :class:`TileInfo`
fields (:func:`tile_info`): Beam's coder encodes tuples natively, where a
dataclass goes through pickle.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, fields
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, PredictionResult
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from minewatch.registry import ModelRef
from minewatch.spec import Tile
from pipelines.tile.accounting import COUNTS, DEAD, dead_row
from pipelines.tile.cut import TileBatch

__all__ = [
    "NS",
    "PROBABILITY_STEPS",
    "ExampleMaker",
    "KeyedTileModelHandler",
    "ScenePredictions",
    "ServedModel",
    "TileInfo",
    "TileModelHandler",
    "ToExamples",
    "by_scene",
    "failed_batch",
    "tile_info",
]

#: Namespace of the Infer job's Beam counters.
NS = "minewatch.infer"
#: Probability bands of the per-scene rasters count in steps of 1 / PROBABILITY_STEPS.
PROBABILITY_STEPS = 250


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


def tile_info(tile: Tile, source: str) -> tuple[Any, ...]:
    """A tile's :class:`TileInfo` fields as a plain tuple, in field order.

    Plain tuples, not dataclasses, travel between the steps: Beam's coder
    encodes them natively, where a dataclass goes through pickle.

    Args:
        tile: The decoded tile.
        source: The path of its scene or frame.
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
            elif self._bands and tile.kind == "scene":
                image, missing = tile.in_band_order(self._bands)
                if missing:
                    reason = f"tile lacks the model's band(s) {missing}"
            if reason is None and image.shape[0] != self._size:
                reason = f"tile is {image.shape[0]} px, the model takes {self._size} px"
            if reason:
                refused.append(
                    dead_row(
                        batch.source, reason, "tile", tile.scene_id, tile.tile_id, stage="infer"
                    )
                )
                continue
            infos.append(tile_info(tile, batch.source))
            images.append(image)
        example = (tuple(infos), np.stack(images).astype(np.float32)) if infos else None
        return example, refused


class ToExamples(beam.DoFn):  # type: ignore[misc]
    """Tile batches -> ``(infos, float32 stack)`` (:class:`ExampleMaker`); refusals to ``dead``."""

    def __init__(self, model: ModelRef) -> None:
        self._make = ExampleMaker(model)
        self._tiles = Metrics.counter(NS, "tiles_in")
        self._refused = Metrics.counter(NS, "tiles_dead_lettered")

    def start_bundle(self) -> None:
        """Start the bundle's tile counts."""
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
        """Emit the bundle's tile counts (to ``counts``), once per bundle, not once per tile."""
        if self._counts:
            yield TaggedOutput(COUNTS, _global(("", +self._counts)))


def _global(value: Any) -> WindowedValue:
    window = GlobalWindow()
    return WindowedValue(value, window.max_timestamp(), [window])


def failed_batch(
    item: tuple[Sequence[tuple[Sequence[tuple[Any, ...]], Any]], Exception],
) -> Iterator[Any]:
    """Dead-letter rows (kind ``tile``) for every tile of a batch the model failed on.

    Args:
        item: ``(batch, exception)`` as ``RunInference``'s failed inferences
            give it; the batch's keys are the stacks' tile infos.
    """
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


def by_scene(item: tuple[Sequence[tuple[Any, ...]], PredictionResult]) -> Iterator[Any]:
    """``(infos, inference)`` -> ``(scene_id, (infos, inference))`` per scene.

    ``infos`` are :class:`TileInfo` tuples (:func:`tile_info`); ``inference`` is what
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
