"""Tiles into vectors: reading tile records, built-in or model embeddings, whitening.

Tiles are read from the tile job's TFRecord files (:class:`ReadTileRecords`,
:class:`ParseTile`), embedded by ``RunInference`` with the built-in descriptor
(:class:`BuiltinEmbedding`) or a SavedModel (:class:`SavedModelEmbedding`), and
checked (:class:`CheckEmbedding`): each tile gives a vector, a :class:`Node` for
spatial and temporal edges, and its record for packing, or a dead-letter row.

Whitening (:class:`WhitenVectors`, on for the built-in descriptor) fits a ZCA
whitening to a bounded, key-chosen sample of the vectors, gathered by a combine,
and applies it to every vector, so that cosine similarities spread. The sample
(:func:`sampled`, :class:`Concat`) is the one the partition trees of
:mod:`pipelines.graph.edges` are fitted to.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import (
    ModelHandler,
    PredictionResult,
)
from apache_beam.pvalue import TaggedOutput

from minewatch.embeddings import (
    BandNorm,
    Whitening,
    describe,
    fit_whitening,
    load_saved_model,
    normalized_pixels,
)
from minewatch.quiet import Progress
from minewatch.spec import Tile, decode_tiles
from minewatch.tfrecord import read_records
from pipelines.graph.neighbours import (
    node_keys,
)

__all__ = [
    "DEAD",
    "EXAMPLES",
    "NODES",
    "NS",
    "BuiltinEmbedding",
    "CheckEmbedding",
    "Concat",
    "Node",
    "ParseTile",
    "ParsedTile",
    "ReadTileRecords",
    "SavedModelEmbedding",
    "SumByDim",
    "WhitenVectors",
    "dead_row",
    "failed_batch",
    "sampled",
]

#: Namespace of the job's Beam counters.
NS = "minewatch.graph"
#: Output tag of dead-letter rows.
DEAD = "dead"
#: Output tag of :class:`CheckEmbedding`'s nodes.
NODES = "nodes"
#: Output tag of :class:`CheckEmbedding`'s ``(id, (label, record, (path, offset)))`` examples.
EXAMPLES = "examples"


def dead_row(
    input: str, reason: str, tile_id: str = "", scene_id: str = "", stage: str = ""
) -> dict[str, str]:
    """A dead-letter row (:func:`minewatch.tables.dead_letter_schema`) of a tile."""
    return {
        "input": input,
        "reason": reason,
        "kind": "tile",
        "scene_id": scene_id,
        "tile_id": tile_id,
        "stage": stage,
    }


# -- reading and embedding -----------------------------------------------------------


@dataclass
class ParsedTile:
    """A decoded tile with its serialized record (kept for packing)."""

    tile: Tile
    record: bytes
    source: str
    #: Byte offset of the record in ``source`` (-1: unknown), where packing reads it again.
    offset: int = -1


class Node(NamedTuple):
    """What spatial and temporal edges need of a tile."""

    tile_id: str
    scene_id: str
    kind: str
    crs: str
    bounds: tuple[float, ...]
    row: int
    col: int
    height: int
    width: int
    acquired: int


class ReadTileRecords(beam.DoFn):  # type: ignore[misc]
    """Read one TFRecord file; a corrupt or truncated file is dead-lettered where it breaks."""

    def __init__(self) -> None:
        self._corrupt = Metrics.counter(NS, "files_corrupt")

    def process(self, readable: Any) -> Iterator[Any]:
        """Yield ``(path, record, offset)``; the rest of a corrupt file goes to ``dead``."""
        path = readable.metadata.path
        try:
            with readable.open(compression_type="uncompressed") as f:
                offset = 0
                for record in read_records(f):
                    yield path, record, offset
                    offset += 16 + len(record)  # length, its CRC, data, its CRC
        except (ValueError, OSError) as exc:
            self._corrupt.inc()
            yield TaggedOutput(DEAD, dead_row(path, f"unreadable TFRecord: {exc}", stage="read"))


class ParseTile(beam.DoFn):  # type: ignore[misc]
    """Decode a tile record; an unparseable one is dead-lettered."""

    def __init__(self) -> None:
        self._bad = Metrics.counter(NS, "tiles_unparseable")

    def process(self, item: tuple[Any, ...]) -> Iterator[Any]:
        """Yield ``(tile_id, ParsedTile)`` of ``(path, record[, offset])``, or a dead-letter row."""
        path, record = item[0], item[1]
        offset = item[2] if len(item) > 2 else -1
        try:
            (tile,) = decode_tiles([record])
        except Exception as exc:  # tfx-bsl raises several types for bad protos
            self._bad.inc()
            reason = f"not a tile record: {type(exc).__name__}: {exc}"
            yield TaggedOutput(DEAD, dead_row(path, reason, stage="parse"))
            return
        yield tile.tile_id, ParsedTile(tile, record, path, offset)


class BuiltinEmbedding(ModelHandler):  # type: ignore[misc]
    """RunInference handler of the built-in descriptor (:func:`minewatch.embeddings.describe`).

    Args:
        norm: Per-band mean/std of the tile job.
        batch_size: Most tiles per batch.
    """

    def __init__(self, norm: BandNorm, batch_size: int = 256) -> None:
        super().__init__()
        self._norm = norm
        self._batch_size = batch_size

    def load_model(self) -> BandNorm:
        """Nothing to load: the 'model' is the band normalisation."""
        return self._norm

    def run_inference(
        self, batch: Sequence[ParsedTile], model: BandNorm, inference_args: Any = None
    ) -> Iterable[PredictionResult]:
        """One descriptor per tile."""
        return [
            PredictionResult(p, describe(p.tile.image, p.tile.valid, p.tile.bands, model))
            for p in batch
        ]

    def get_num_bytes(self, batch: Sequence[ParsedTile]) -> int:
        """Image bytes of the batch (the default pickles it)."""
        return sum(p.tile.image.nbytes for p in batch)

    def batch_elements_kwargs(self) -> dict[str, Any]:
        """Batches of up to ``batch_size`` tiles."""
        return {"min_batch_size": 1, "max_batch_size": self._batch_size}


class SavedModelEmbedding(BuiltinEmbedding):
    """RunInference handler of a SavedModel's ``embedding`` signature.

    By default the model gets the z-scored pixels (invalid ones 0) as ``float32
    [B, H, W, C]``. A model ``minewatch train`` exported (``raw_bands`` given, from
    its ``metadata.json``) normalises inside, so it gets the stored pixels cast to
    float32 (invalid ones 0), in the order of the bands it was trained on; a tile
    lacking one of them fails its batch (dead-lettered with the reason). Tiles of
    different shapes go in separate calls.

    Args:
        path: SavedModel directory.
        norm: Per-band mean/std of the tile job.
        batch_size: Most tiles per batch.
        raw_bands: The bands of a model that takes raw pixels (``metadata.json``
            ``bands``); empty for a model that takes z-scored ones.
    """

    def __init__(
        self, path: str, norm: BandNorm, batch_size: int = 256, raw_bands: Sequence[str] = ()
    ) -> None:
        super().__init__(norm, batch_size)
        self._path = path
        self._raw_bands = tuple(raw_bands)

    def load_model(self) -> Any:
        """Load the signature (imports TensorFlow with Keras 2)."""
        return load_saved_model(self._path)

    def _pixels(self, tile: Tile) -> np.ndarray:
        if not self._raw_bands:
            return normalized_pixels(tile.image, tile.valid, self._norm, tile.bands)
        image, missing = tile.in_band_order(self._raw_bands)
        if missing:
            raise ValueError(
                f"tile {tile.tile_id} lacks bands {missing} of the model {self._path} "
                f"(trained on {list(self._raw_bands)})"
            )
        raw = image.astype(np.float32)
        raw[~tile.valid] = 0.0
        return raw

    def run_inference(
        self, batch: Sequence[ParsedTile], model: Any, inference_args: Any = None
    ) -> Iterable[PredictionResult]:
        """Embed the batch, one model call per distinct tile shape."""
        out: list[np.ndarray | None] = [None] * len(batch)
        shapes: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
        for i, p in enumerate(batch):
            shapes[p.tile.image.shape].append(i)
        for index in shapes.values():
            images = np.stack([self._pixels(batch[i].tile) for i in index])
            for i, vec in zip(index, model(images), strict=True):
                out[i] = vec
        return [PredictionResult(p, v) for p, v in zip(batch, out, strict=True)]


class CheckEmbedding(beam.DoFn):  # type: ignore[misc]
    """Route each embedded tile: vector, node and example, or a dead-letter row."""

    def __init__(self, bounds_decimals: int) -> None:
        self._decimals = bounds_decimals
        self._embedded = Metrics.counter(NS, "tiles_embedded")
        self._bad = Metrics.counter(NS, "tiles_dead_lettered")
        self._progress = Progress("graph")

    def setup(self) -> None:
        """Start this worker's progress log."""
        self._progress = Progress("graph")

    def process(self, item: tuple[str, Any]) -> Iterator[Any]:
        """Yield ``(id, vector)``; ``nodes``: Node; ``examples``: ``(id, (label, record, place))``.

        The place is ``(path, byte offset)`` of the record, where packing reads it again.
        """
        tile_id, result = item
        parsed: ParsedTile = result.example
        tile = parsed.tile
        vec = np.asarray(result.inference, np.float32).ravel()
        reason = ""
        if not tile.valid.any():
            reason = "tile has no valid pixel: nothing to describe"
        elif not np.all(np.isfinite(vec)):
            reason = "embedding is not finite (NaN or inf among the valid pixels?)"
        elif not np.any(vec):
            reason = "embedding is all zeros: cosine similarity is undefined"
        if reason:
            self._bad.inc()
            yield TaggedOutput(
                DEAD, dead_row(parsed.source, reason, tile_id, tile.scene_id, "embed")
            )
            return
        self._embedded.inc()
        self._progress.add(tiles=1)
        yield tile_id, vec
        h, w = tile.image.shape[:2]
        bounds = tuple(round(b, self._decimals) for b in tile.bounds)
        yield TaggedOutput(
            NODES,
            Node(
                tile_id, tile.scene_id, tile.kind, tile.crs, bounds,
                tile.row_off, tile.col_off, h, w, tile.acquired_unix,
            ),
        )  # fmt: skip
        location = (parsed.source, parsed.offset)
        yield TaggedOutput(EXAMPLES, (tile_id, (int(tile.label), parsed.record, location)))


def failed_batch(item: tuple[Any, Any]) -> Iterator[dict[str, str]]:
    """Dead-letter every tile of a batch whose embedding raised."""
    batch, error = item
    reason = f"embedding failed: {error}"
    for tile_id, parsed in batch:
        yield dead_row(parsed.source, reason, tile_id, parsed.tile.scene_id, "embed")


# -- samples of vectors (the whitening's and the partition trees') ---------------------


class SumByDim(beam.CombineFn):  # type: ignore[misc]
    """Sum ``{dim: count}`` dicts: how many vectors of each dimension."""

    def create_accumulator(self) -> dict[int, int]:
        """No vectors yet."""
        return {}

    def add_input(self, acc: dict[int, int], counts: dict[int, int]) -> dict[int, int]:
        """Add one dict of counts."""
        for dim, n in counts.items():
            acc[dim] = acc.get(dim, 0) + n
        return acc

    def merge_accumulators(self, accs: Iterable[dict[int, int]]) -> dict[int, int]:
        """Sum the partial counts."""
        out: dict[int, int] = {}
        for acc in accs:
            self.add_input(out, acc)
        return out

    def extract_output(self, acc: dict[int, int]) -> dict[int, int]:
        """The counts by dimension."""
        return acc


def sampled(keys: np.ndarray, fraction: float) -> np.ndarray:
    """Rows kept in a uniform sample of ``fraction``, decided by the node keys.

    The key decides, not a random draw, so a retried bundle samples the same rows.
    """
    return (keys.astype(np.float64) + 2.0**63) / 2.0**64 < fraction


class Concat(beam.CombineFn):  # type: ignore[misc]
    """Concatenate ``(keys, rows)`` parts of one dimension (a bounded sample), sorted by key.

    Sorted, the sample is the same array whatever order the runner merged the
    parts in, so the trees and the whitening fitted to it are the same in every run.
    """

    def create_accumulator(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """No parts yet."""
        return []

    def add_input(
        self, acc: list[tuple[np.ndarray, np.ndarray]], part: tuple[np.ndarray, np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """Keep one part."""
        acc.append(part)
        return acc

    def merge_accumulators(
        self, accs: Iterable[list[tuple[np.ndarray, np.ndarray]]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """All the parts."""
        return [part for acc in accs for part in acc]

    def extract_output(self, acc: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """The rows, sorted by key (``[0, 0]`` when there are none)."""
        if not acc:
            return np.zeros((0, 0), np.float32)
        keys = np.concatenate([k for k, _ in acc])
        rows = np.concatenate([r for _, r in acc])
        return rows[np.argsort(keys, kind="stable")]


# -- whitening ------------------------------------------------------------------------


def _count_dim(item: tuple[str, np.ndarray]) -> dict[int, int]:
    return {int(np.asarray(item[1]).size): 1}


def _whitening_sample(
    item: tuple[str, np.ndarray], counts: dict[int, int], size: int
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """``(dim, (key, row))`` for the vectors in a uniform sample of about ``size`` per dim."""
    node_id, vec = item
    v = np.asarray(vec, np.float32).ravel()
    key = node_keys([node_id])
    if sampled(key, min(1.0, size / max(1, counts.get(v.size, 1))))[0]:
        yield v.size, (key, v[None, :])


def _fit_whitening(item: tuple[int, np.ndarray]) -> tuple[int, Whitening | None]:
    dim, sample = item
    return dim, fit_whitening(sample)


def _whiten(
    item: tuple[str, np.ndarray], whitenings: dict[int, Whitening | None]
) -> tuple[str, np.ndarray]:
    node_id, vec = item
    v = np.asarray(vec, np.float32).ravel()
    w = whitenings.get(v.size)
    return node_id, v if w is None else w.apply(v)


class WhitenVectors(beam.PTransform):  # type: ignore[misc]
    """``(id, vector)`` pairs, whitened with statistics of the vectors themselves.

    Per dimension, a uniform sample of about ``sample_size`` vectors (chosen by
    node key, as the partition trees' sample is; all of them when there are
    fewer) is gathered by a combine, sorted by key, and a ZCA whitening is fitted
    to it (:func:`minewatch.embeddings.fit_whitening`); every vector is then
    whitened with it (a side input of ``D x D`` numbers per dimension). No step
    holds more than the sample. A dimension with fewer than 2 vectors, or
    vectors that are all equal, is passed through unchanged.

    Why a sample and not sums over all vectors: the sorted sample gives the same
    whitening, bit for bit, whatever order the runner merges bundles in (sums of
    floats do not), so the packed weights do not change between runs; 65,536
    vectors estimate a covariance of a few hundred dimensions well.

    Args:
        sample_size: Vectors per dimension the whitening is fitted to. Default 65,536.

    Returns (from ``expand``):
        A dict: ``vectors`` (whitened pairs) and ``whitening`` (one
        ``(dim, Whitening or None)`` per dimension).
    """

    def __init__(self, sample_size: int = 65_536) -> None:
        super().__init__()
        self._sample_size = sample_size

    def expand(self, pairs: beam.PCollection) -> dict[str, beam.PCollection]:
        """Count per dimension, sample, fit, whiten."""
        counts = beam.pvalue.AsSingleton(
            pairs
            | "CountDims" >> beam.Map(_count_dim)
            | "SumDims" >> beam.CombineGlobally(SumByDim())
        )
        fitted = (
            pairs
            | "SampleVectors" >> beam.FlatMap(_whitening_sample, counts, self._sample_size)
            | "GatherSample" >> beam.CombinePerKey(Concat())
            | "FitWhitening" >> beam.Map(_fit_whitening)
        )
        whitened = pairs | "Whiten" >> beam.Map(_whiten, beam.pvalue.AsDict(fitted))
        return {"vectors": whitened, "whitening": fitted}
