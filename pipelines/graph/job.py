"""The Graph job: tiles into a similarity graph and NSL's packed training examples.

Graph (every step labelled)::

    tiles/*.tfrecord ─ Read ─ Parse ─ Embed (RunInference) ─ Check ─┬─ vectors ─ Similarity ─┐
          (corrupt files, bad records, failed embeddings) ─ dead    │  (Whitening first)      │
                                                                    ├─ nodes ─┬─ Spatial ────┤
                                                                    │         └─ Temporal ───┤
          edges/ ─────────────────────────────────────────────── edges ─ Adjacency ─ graph.tsv
                                                                    │             │
                                                                    └─ examples ──┴─ Pack ─ packed/

Whitening (:class:`WhitenVectors`, on for the built-in descriptor) fits a ZCA
whitening to a bounded, key-chosen sample of the vectors, gathered by a combine,
and applies it to every vector, so that cosine similarities spread.

Similarity (:class:`SimilarityEdges`) never compares all pairs, and no step holds
all vectors: a bounded sample (65,536 per dimension) fits a partition tree of
2-means cuts per round; batches of vectors are routed through it at once (those
near a cut go to both sides) and emitted as one element per ``(dim, round,
cell)`` of the batch; each cell (~``bucket_size`` vectors) is grouped and
compared exactly by blocked matrix products; the candidates are merged into each
node's top ``k`` by a ``CombinePerKey`` whose accumulator holds numpy arrays for
a shard of nodes. Elements are few and large: about ``N / batch_size x cells``
of them, never one per vector and round.

Spatial edges join tiles of one scene whose windows touch or overlap, keyed by
grid cells; temporal edges join tiles of different acquisitions with the same
CRS and bounds, keyed by the rounded bounds. Neither compares all pairs.

Packing follows NSL's ``pack_nbrs`` (see :mod:`pipelines.graph.packing`): seeds are
the labelled tiles, neighbours any tile, the ``pack_k`` best edges by weight
whatever their kind; the neighbour features (``nbr_features`` of them) are joined
by ``CoGroupByKey`` on the neighbour id, never from a side input of all tiles.

The packed records go to ``packed/packed-SSSSS-of-NNNNN.tfrecord``
(:class:`WritePackedShards`): ``NNNNN`` follows from the number and bytes of the
records, a record's shard from a hash of its tile id, and each shard's records
are sorted by tile id, so the files and their order do not depend on how the
runner cut bundles (the trainer's input order is then the same in every run).

Accounting (``stats.json``, checked by the tests)::

    tiles.read = tiles.embedded + sum(tiles.dead_lettered.values())

``stats.json`` also says what the graph is worth, each figure summed by a combine:
the similarity edges' cosine quantiles (``similarity_cosine``), the packed bytes
against the plain ones (``packed_size``), and per class and edge kind the share
of packed neighbours with the seed's label (``homophily``); ``docs/graph.md``.
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
from dataclasses import asdict, dataclass
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
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

from minewatch.embeddings import (
    BandNorm,
    Whitening,
    describe,
    fit_whitening,
    load_saved_model,
    normalized_pixels,
)
from minewatch.errors import ConfigError
from minewatch.spec import Tile, decode_tiles
from minewatch.tables import dead_letter_schema
from minewatch.tfrecord import read_records, write_record
from pipelines.graph.neighbours import (
    Candidates,
    PartitionTree,
    assign_leaves,
    build_tree,
    hyperplanes,
    iter_groups,
    merge_topk,
    node_keys,
    normalize,
    split_bucket,
    topk_within,
)
from pipelines.graph.options import GraphConfig
from pipelines.graph.packing import example_bytes, feature_entries, pack_example
from pipelines.options import run_pipeline

__all__ = [
    "BuildTileGraph",
    "SimilarityEdges",
    "SpatialEdges",
    "TemporalEdges",
    "WhitenVectors",
    "WritePackedShards",
    "edges_schema",
    "output_paths",
    "prepare_out",
    "run",
    "run_graph",
]

log = logging.getLogger(__name__)

_NS = "minewatch.graph"
DEAD = "dead"
NODES = "nodes"
EXAMPLES = "examples"
LINES = "lines"

SIMILARITY, SPATIAL, TEMPORAL = "similarity", "spatial", "temporal"
KINDS = (SIMILARITY, SPATIAL, TEMPORAL)
COUNTS = "counts"


def output_paths(out: str) -> dict[str, str]:
    """Where ``minewatch graph`` writes, under ``out``."""
    return {
        "edges": posixpath.join(out, "edges"),
        "graph": posixpath.join(out, "graph.tsv"),
        "packed": posixpath.join(out, "packed"),
        "dead_letter": posixpath.join(out, "dead_letter"),
        "stats": posixpath.join(out, "stats.json"),
    }


def edges_schema() -> pa.Schema:
    """One row per directed edge: ``src``, ``dst``, ``weight`` and ``kind``.

    ``kind`` is ``similarity`` (weight: cosine similarity), ``spatial`` or
    ``temporal`` (weight: the configured constant).
    """
    return pa.schema(
        [
            ("src", pa.string()),
            ("dst", pa.string()),
            ("weight", pa.float32()),
            ("kind", pa.string()),
        ]
    )


def _dead(
    input: str, reason: str, tile_id: str = "", scene_id: str = "", stage: str = ""
) -> dict[str, str]:
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
        self._corrupt = Metrics.counter(_NS, "files_corrupt")

    def process(self, readable: Any) -> Iterator[Any]:
        """Yield ``(path, record)``; the rest of a corrupt file goes to ``dead``."""
        path = readable.metadata.path
        try:
            with readable.open(compression_type="uncompressed") as f:
                for record in read_records(f):
                    yield path, record
        except (ValueError, OSError) as exc:
            self._corrupt.inc()
            yield TaggedOutput(DEAD, _dead(path, f"unreadable TFRecord: {exc}", stage="read"))


class ParseTile(beam.DoFn):  # type: ignore[misc]
    """Decode a tile record; an unparseable one is dead-lettered."""

    def __init__(self) -> None:
        self._bad = Metrics.counter(_NS, "tiles_unparseable")

    def process(self, item: tuple[str, bytes]) -> Iterator[Any]:
        """Yield ``(tile_id, ParsedTile)``, or a dead-letter row."""
        path, record = item
        try:
            (tile,) = decode_tiles([record])
        except Exception as exc:  # tfx-bsl raises several types for bad protos
            self._bad.inc()
            reason = f"not a tile record: {type(exc).__name__}: {exc}"
            yield TaggedOutput(DEAD, _dead(path, reason, stage="parse"))
            return
        yield tile.tile_id, ParsedTile(tile, record, path)


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

    The model gets the z-scored pixels (invalid ones 0) as ``float32 [B, H, W, C]``;
    tiles of different shapes go in separate calls.

    Args:
        path: SavedModel directory.
        norm: Per-band mean/std of the tile job.
        batch_size: Most tiles per batch.
    """

    def __init__(self, path: str, norm: BandNorm, batch_size: int = 256) -> None:
        super().__init__(norm, batch_size)
        self._path = path

    def load_model(self) -> Any:
        """Load the signature (imports TensorFlow with Keras 2)."""
        return load_saved_model(self._path)

    def run_inference(
        self, batch: Sequence[ParsedTile], model: Any, inference_args: Any = None
    ) -> Iterable[PredictionResult]:
        """Embed the batch, one model call per distinct tile shape."""
        out: list[np.ndarray | None] = [None] * len(batch)
        shapes: dict[tuple[int, ...], list[int]] = collections.defaultdict(list)
        for i, p in enumerate(batch):
            shapes[p.tile.image.shape].append(i)
        for index in shapes.values():
            images = np.stack(
                [
                    normalized_pixels(
                        batch[i].tile.image, batch[i].tile.valid, self._norm, batch[i].tile.bands
                    )
                    for i in index
                ]
            )
            for i, vec in zip(index, model(images), strict=True):
                out[i] = vec
        return [PredictionResult(p, v) for p, v in zip(batch, out, strict=True)]


class CheckEmbedding(beam.DoFn):  # type: ignore[misc]
    """Route each embedded tile: vector, node and example, or a dead-letter row."""

    def __init__(self, bounds_decimals: int) -> None:
        self._decimals = bounds_decimals
        self._embedded = Metrics.counter(_NS, "tiles_embedded")
        self._bad = Metrics.counter(_NS, "tiles_dead_lettered")

    def process(self, item: tuple[str, Any]) -> Iterator[Any]:
        """Yield ``(id, vector)``; ``nodes``: Node; ``examples``: ``(id, (label, record))``."""
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
            yield TaggedOutput(DEAD, _dead(parsed.source, reason, tile_id, tile.scene_id, "embed"))
            return
        self._embedded.inc()
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
        yield TaggedOutput(EXAMPLES, (tile_id, (int(tile.label), parsed.record)))


def _failed_batch(item: tuple[Any, Any]) -> Iterator[dict[str, str]]:
    """Dead-letter every tile of a batch whose embedding raised."""
    batch, error = item
    reason = f"embedding failed: {error}"
    for tile_id, parsed in batch:
        yield _dead(parsed.source, reason, tile_id, parsed.tile.scene_id, "embed")


# -- similarity edges ----------------------------------------------------------------


class VectorBatch(NamedTuple):
    """Rows of one dimension: ids, 64-bit keys (:func:`node_keys`) and unit vectors."""

    ids: np.ndarray
    keys: np.ndarray
    unit: np.ndarray


class PrepareVectors(beam.DoFn):  # type: ignore[misc]
    """Normalise a batch of vectors, key the ids, and split the batch by dimension."""

    def __init__(self, batched: bool) -> None:
        self._batched = batched
        self._bad = Metrics.counter(_NS, "vectors_dead_lettered")

    def process(self, batch: Any) -> Iterator[Any]:
        """Yield ``(dim, VectorBatch)``; zero or non-finite vectors go to ``dead``."""
        if self._batched:
            names, matrix = batch
            items = list(zip(names, np.asarray(matrix, np.float32), strict=True))
        else:
            items = [(i, np.asarray(v, np.float32).ravel()) for i, v in batch]
        by_dim: dict[int, list[tuple[str, np.ndarray]]] = collections.defaultdict(list)
        for node_id, v in items:
            by_dim[v.size].append((node_id, v))
        for dim, rows in by_dim.items():
            ids = np.array([i for i, _ in rows], object)
            unit, norms = normalize(np.stack([v for _, v in rows]))
            good = np.isfinite(norms) & (norms > 0) & np.all(np.isfinite(unit), axis=1)
            for bad in np.flatnonzero(~good):
                self._bad.inc()
                yield TaggedOutput(
                    DEAD, _dead("", "vector is zero or not finite", ids[bad], stage="similarity")
                )
            if not good.all():
                ids, unit = ids[good], unit[good]
            if ids.size:
                yield dim, VectorBatch(ids, node_keys(list(ids)), unit)


def _count_rows(item: tuple[int, VectorBatch]) -> dict[int, int]:
    dim, batch = item
    return {dim: int(batch.ids.size)}


class _SumByDim(beam.CombineFn):  # type: ignore[misc]
    def create_accumulator(self) -> dict[int, int]:
        return {}

    def add_input(self, acc: dict[int, int], counts: dict[int, int]) -> dict[int, int]:
        for dim, n in counts.items():
            acc[dim] = acc.get(dim, 0) + n
        return acc

    def merge_accumulators(self, accs: Iterable[dict[int, int]]) -> dict[int, int]:
        out: dict[int, int] = {}
        for acc in accs:
            self.add_input(out, acc)
        return out

    def extract_output(self, acc: dict[int, int]) -> dict[int, int]:
        return acc


def _sampled(keys: np.ndarray, fraction: float) -> np.ndarray:
    """Rows kept in a uniform sample of ``fraction``, decided by the node keys.

    The key decides, not a random draw, so a retried bundle samples the same rows.
    """
    return (keys.astype(np.float64) + 2.0**63) / 2.0**64 < fraction


def _sample_rows(
    item: tuple[int, VectorBatch], counts: dict[int, int], size: int
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """A uniform sample of about ``size`` rows per dimension: ``(dim, (keys, rows))``."""
    dim, batch = item
    keep = _sampled(batch.keys, min(1.0, size / max(1, counts.get(dim, 1))))
    if keep.any():
        yield dim, (batch.keys[keep], batch.unit[keep])


class _Concat(beam.CombineFn):  # type: ignore[misc]
    """Concatenate ``(keys, rows)`` parts of one dimension (a bounded sample), sorted by key.

    Sorted, the sample is the same array whatever order the runner merged the
    parts in, so the trees and the whitening fitted to it are the same in every run.
    """

    def create_accumulator(self) -> list[tuple[np.ndarray, np.ndarray]]:
        return []

    def add_input(
        self, acc: list[tuple[np.ndarray, np.ndarray]], part: tuple[np.ndarray, np.ndarray]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        acc.append(part)
        return acc

    def merge_accumulators(
        self, accs: Iterable[list[tuple[np.ndarray, np.ndarray]]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        return [part for acc in accs for part in acc]

    def extract_output(self, acc: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        if not acc:
            return np.zeros((0, 0), np.float32)
        keys = np.concatenate([k for k, _ in acc])
        rows = np.concatenate([r for _, r in acc])
        return rows[np.argsort(keys, kind="stable")]


def _fit_trees(
    item: tuple[int, np.ndarray],
    counts: dict[int, int],
    rounds: int,
    leaf_size: int,
    threshold: float,
    spill: float,
    seed: int,
    k: int = 10,
    spill_pairs: float = 0.9,
) -> tuple[int, list[PartitionTree]]:
    """One partition tree per round; later rounds fit to a different 80% of the sample."""
    dim, sample = item
    trees = []
    for r in range(rounds):
        rows = sample
        if r:
            pick = np.random.default_rng([seed, dim, r]).random(sample.shape[0]) < 0.8
            rows = sample[pick]
        trees.append(
            build_tree(
                rows,
                counts.get(dim, 0),
                leaf_size,
                threshold,
                spill,
                seed=seed * 1009 + r,
                k=k,
                spill_pairs=spill_pairs,
            )
        )
    return dim, trees


def _assign_cells(
    item: tuple[int, VectorBatch], trees: dict[int, list[PartitionTree]]
) -> Iterator[tuple[tuple[int, int, int], VectorBatch]]:
    """Yield ``((dim, round, cell), rows of the batch in that cell)``, for every round."""
    dim, batch = item
    for r, tree in enumerate(trees[dim]):
        rows, cells = assign_leaves(tree, batch.unit, batch.keys)
        for cell, index in iter_groups(cells):
            take = rows[index]
            yield (dim, r, cell), VectorBatch(batch.ids[take], batch.keys[take], batch.unit[take])


class CompareInCell(beam.DoFn):  # type: ignore[misc]
    """Exact top-k inside one leaf cell; candidates go out sharded by source node."""

    def __init__(
        self, k: int, threshold: float, leaf_size: int, seed: int, shard_nodes: int
    ) -> None:
        self._k = k
        self._threshold = threshold
        self._leaf_size = leaf_size
        self._seed = seed
        self._shard_nodes = shard_nodes
        self._split = Metrics.counter(_NS, "cells_split")
        self._pairs = Metrics.counter(_NS, "pairs_compared")

    def process(
        self, item: tuple[tuple[int, int, int], Iterable[VectorBatch]], counts: dict[int, int]
    ) -> Iterator[tuple[int, Candidates]]:
        """Yield ``(shard, Candidates)``."""
        (dim, r, _), parts = item
        parts = list(parts)
        ids = np.concatenate([p.ids for p in parts])
        keys = np.concatenate([p.keys for p in parts])
        unit = np.concatenate([p.unit for p in parts])
        cap = 4 * self._leaf_size
        if ids.size > cap:
            # The sample under-estimated this cell; bound the work with extra
            # hyperplane cuts rather than compare all pairs.
            planes = hyperplanes(dim, r + 1, self._seed)[r]
            groups = split_bucket(unit, planes, cap)
            self._split.inc()
        else:
            groups = [np.arange(ids.size)]
        found = []
        for index in groups:
            self._pairs.inc(index.size * index.size)
            rows, cols, sims = topk_within(unit[index], self._k, self._threshold)
            rows, cols = index[rows], index[cols]
            found.append(Candidates(keys[rows], ids[rows], keys[cols], ids[cols], sims))
        cands = Candidates.concat(found)
        shards = max(1, math.ceil(sum(counts.values()) / self._shard_nodes))
        for shard, index in iter_groups(np.mod(cands.src_keys, shards)):
            yield shard, cands.take(index)


class _TopK:
    """Candidate arrays, compacted to each node's top k once they double in size."""

    def __init__(self) -> None:
        self.parts: list[Candidates] = []
        self.rows = 0
        self.floor = 0

    def add(self, cands: Candidates, k: int) -> None:
        self.parts.append(cands)
        self.rows += len(cands)
        if self.rows > 2 * self.floor + 65536:
            self.compact(k)

    def compact(self, k: int) -> Candidates:
        merged = merge_topk(Candidates.concat(self.parts), k)
        self.parts, self.rows, self.floor = [merged], len(merged), len(merged)
        return merged


class TopKPerNode(beam.CombineFn):  # type: ignore[misc]
    """Merge candidate edges into each source's ``k`` best (vectorised, per shard of nodes)."""

    def __init__(self, k: int) -> None:
        self._k = k

    def create_accumulator(self) -> _TopK:
        return _TopK()

    def add_input(self, acc: _TopK, cands: Candidates) -> _TopK:
        acc.add(cands, self._k)
        return acc

    def merge_accumulators(self, accs: Iterable[_TopK]) -> _TopK:
        out = _TopK()
        for acc in accs:
            for part in acc.parts:
                out.add(part, self._k)
        return out

    def extract_output(self, acc: _TopK) -> Candidates:
        return acc.compact(self._k)


def similarity_table(cands: Candidates) -> pa.Table:
    """Candidates as an edges table (:func:`edges_schema`)."""
    n = len(cands)
    return pa.Table.from_arrays(
        [
            pa.array(cands.src_ids, pa.string()),
            pa.array(cands.dst_ids, pa.string()),
            pa.array(cands.sims, pa.float32()),
            pa.array(np.full(n, SIMILARITY, object), pa.string()),
        ],
        schema=edges_schema(),
    )


class SimilarityEdges(beam.PTransform):  # type: ignore[misc]
    """``(id, vector)`` pairs into each node's top-k cosine neighbours.

    Candidates come from a partition tree per round (:func:`build_tree`): 2-means
    cuts fitted to a bounded sample of the vectors, so that each leaf cell holds
    about ``bucket_size`` of them and near neighbours on either side of a cut
    meet in a cell through spill (a margin per cut, wide enough to keep
    ``spill_pairs`` of the sample's near-neighbour pairs together). Batches of
    vectors are routed through the trees at once and emitted as one element per
    ``(dim, round, cell)`` present in the batch; each cell is grouped and
    compared exactly; a ``CombinePerKey`` on shards of source nodes keeps each
    node's ``k`` best over all rounds. With
    ``N <= bucket_size`` there is one cell and the result is exact.

    Example:
        >>> pairs = p | beam.Create([("a", [1.0, 0.0]), ("b", [0.9, 0.1])])  # doctest: +SKIP
        >>> out = pairs | SimilarityEdges(k=5, threshold=0.8)  # doctest: +SKIP
        >>> out["edges"]  # PCollection of pyarrow Tables (edges_schema)  # doctest: +SKIP

    Args:
        k: Most neighbours per node. Default 10.
        threshold: Least cosine similarity. Default 0.8.
        rounds: Partition trees (more: higher recall, proportionally more work).
            Default 1.
        bucket_size: Most vectors per leaf cell (estimated from the sample); cells
            over 4x are cut further by hyperplanes. Default 16384.
        seed: Seed of the trees. Default 0.
        batch_size: Vectors per batch (with ``batched=False``). Default 4096.
        shard_nodes: Nodes per top-k merge shard. Default 50,000.
        spill: Least fraction of the vectors at each cut that also go to the
            other side. Default 0 (it was 0.1 with ``spill_pairs=0``, the rule
            before ``spill_pairs``).
        spill_pairs: Share of the sample's near-neighbour pairs each cut's margin
            keeps together; 0 to spill by ``spill`` alone. Default 0.9.
        sample_size: Vectors per dimension the trees are fitted to. Default 65,536.
        batched: The input holds ``(ids, [n, D] array)`` batches instead of
            ``(id, vector)`` pairs. Default False.
    """

    def __init__(
        self,
        k: int = 10,
        threshold: float = 0.8,
        rounds: int = 1,
        bucket_size: int = 16384,
        seed: int = 0,
        batch_size: int = 4096,
        shard_nodes: int = 50_000,
        spill: float = 0.0,
        sample_size: int = 65_536,
        batched: bool = False,
        spill_pairs: float = 0.9,
    ) -> None:
        super().__init__()
        if not 0 <= spill <= 0.5:
            raise ConfigError(f"spill = {spill!r} must be a fraction in [0, 0.5]")
        if not 0 <= spill_pairs <= 1:
            raise ConfigError(f"spill_pairs = {spill_pairs!r} must be a quantile in [0, 1]")
        self._k = k
        self._threshold = threshold
        self._rounds = rounds
        self._bucket_size = bucket_size
        self._seed = seed
        self._batch_size = batch_size
        self._shard_nodes = shard_nodes
        self._spill = spill
        self._sample_size = sample_size
        self._batched = batched
        self._spill_pairs = spill_pairs

    def expand(self, pairs: beam.PCollection) -> dict[str, beam.PCollection]:
        """Return ``edges`` (pyarrow Tables) and ``dead_letter`` rows (bad vectors)."""
        batches = pairs
        if not self._batched:
            batches = pairs | "BatchVectors" >> beam.BatchElements(
                min_batch_size=self._batch_size, max_batch_size=self._batch_size
            )
        prepared = batches | "PrepareVectors" >> beam.ParDo(
            PrepareVectors(self._batched)
        ).with_outputs(DEAD, main="vectors")
        vectors = prepared.vectors
        counts = beam.pvalue.AsSingleton(
            vectors
            | "CountRows" >> beam.Map(_count_rows)
            | "SumCounts" >> beam.CombineGlobally(_SumByDim())
        )
        trees = beam.pvalue.AsDict(
            vectors
            | "SampleRows" >> beam.FlatMap(_sample_rows, counts, self._sample_size)
            | "GatherSample" >> beam.CombinePerKey(_Concat())
            | "FitTrees"
            >> beam.Map(
                _fit_trees,
                counts,
                rounds=self._rounds,
                leaf_size=self._bucket_size,
                threshold=self._threshold,
                spill=self._spill,
                seed=self._seed,
                k=self._k,
                spill_pairs=self._spill_pairs,
            )
        )
        edges = (
            vectors
            | "AssignCells" >> beam.FlatMap(_assign_cells, trees)
            | "GroupCells" >> beam.GroupByKey()
            | "CompareInCells"
            >> beam.ParDo(
                CompareInCell(
                    self._k, self._threshold, self._bucket_size, self._seed, self._shard_nodes
                ),
                counts,
            )
            | "TopKPerNode" >> beam.CombinePerKey(TopKPerNode(self._k))
            | "EdgeTables" >> beam.MapTuple(lambda _, cands: similarity_table(cands))
        )
        return {"edges": edges, "dead_letter": prepared[DEAD]}


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
    if _sampled(key, min(1.0, size / max(1, counts.get(v.size, 1))))[0]:
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
            | "SumDims" >> beam.CombineGlobally(_SumByDim())
        )
        fitted = (
            pairs
            | "SampleVectors" >> beam.FlatMap(_whitening_sample, counts, self._sample_size)
            | "GatherSample" >> beam.CombinePerKey(_Concat())
            | "FitWhitening" >> beam.Map(_fit_whitening)
        )
        whitened = pairs | "Whiten" >> beam.Map(_whiten, beam.pvalue.AsDict(fitted))
        return {"vectors": whitened, "whitening": fitted}


#: Bins of the similarity-cosine histogram in ``stats.json`` (width 1e-4 over [-1, 1]).
_COSINE_BINS = 20_001
_QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def _cosine_histogram(table: pa.Table) -> Iterator[np.ndarray]:
    """Counts of a table's similarity-edge weights in :data:`_COSINE_BINS` bins (if any)."""
    similar = table.filter(pc.equal(table.column("kind"), SIMILARITY))
    if similar.num_rows:
        w = similar.column("weight").to_numpy().astype(np.float64)
        bins = np.clip(np.rint((w + 1.0) * 1e4), 0, _COSINE_BINS - 1).astype(np.int64)
        yield np.bincount(bins, minlength=_COSINE_BINS)


class _SumHistograms(beam.CombineFn):  # type: ignore[misc]
    def create_accumulator(self) -> np.ndarray:
        return np.zeros(_COSINE_BINS, np.int64)

    def add_input(self, acc: np.ndarray, counts: np.ndarray) -> np.ndarray:
        acc += counts
        return acc

    def merge_accumulators(self, accs: Iterable[np.ndarray]) -> np.ndarray:
        out = self.create_accumulator()
        for acc in accs:
            out += acc
        return out

    def extract_output(self, acc: np.ndarray) -> np.ndarray:
        return acc


def _cosine_summary(histogram: np.ndarray) -> dict[str, Any]:
    """``stats.json``'s ``similarity_cosine``: count, min, mean, max and quantiles.

    Values are read from a histogram of 1e-4-wide bins (to 4 decimals).
    """
    n = int(histogram.sum())
    if not n:
        return {"edges": 0}
    centres = np.arange(histogram.size) / 1e4 - 1.0
    cum = np.cumsum(histogram)
    present = np.flatnonzero(histogram)
    quantiles = {str(q): round(float(centres[np.searchsorted(cum, q * n)]), 4) for q in _QUANTILES}
    return {
        "edges": n,
        "min": round(float(centres[present[0]]), 4),
        "mean": round(float(histogram @ centres / n), 4),
        "max": round(float(centres[present[-1]]), 4),
        "quantiles": quantiles,
    }


# -- spatial and temporal edges -------------------------------------------------------


def _spatial_cells(node: Node) -> Iterator[tuple[tuple[str, int, int, int, int], Node]]:
    """Key a tile by every grid cell its closed window touches (cells of its own size)."""
    h, w = node.height, node.width
    for cr in range(node.row // h, (node.row + h) // h + 1):
        for cc in range(node.col // w, (node.col + w) // w + 1):
            yield (node.scene_id, h, w, cr, cc), node


def _spatial_pairs(
    item: tuple[tuple[str, int, int, int, int], Iterable[Node]], weight: float
) -> Iterator[tuple[str, str, float, str]]:
    """Edges between tiles of one cell that touch or overlap, emitted by one cell only."""
    (_, h, w, cr, cc), group = item
    nodes = sorted(group, key=lambda n: n.tile_id)
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 :]:
            touch = (
                a.row <= b.row + b.height
                and b.row <= a.row + a.height
                and a.col <= b.col + b.width
                and b.col <= a.col + a.width
            )
            # The pair is seen in every cell both touch; emit it in the cell holding
            # the top-left corner of their (closed) intersection.
            if touch and (max(a.row, b.row) // h, max(a.col, b.col) // w) == (cr, cc):
                yield a.tile_id, b.tile_id, weight, SPATIAL
                yield b.tile_id, a.tile_id, weight, SPATIAL


class SpatialEdges(beam.PTransform):  # type: ignore[misc]
    """Edges between tiles of the same scene whose windows touch or overlap.

    Tiles are keyed by the grid cells (of the tile's own size) that their closed
    window covers, so only tiles sharing a cell are compared.

    Args:
        weight: Weight of every spatial edge.
    """

    def __init__(self, weight: float) -> None:
        super().__init__()
        self._weight = weight

    def expand(self, nodes: beam.PCollection) -> beam.PCollection:
        """Return ``(src, dst, weight, "spatial")`` tuples, both directions."""
        return (
            nodes
            | "KeyByCell" >> beam.FlatMap(_spatial_cells)
            | "GroupCells" >> beam.GroupByKey()
            | "TouchingPairs" >> beam.FlatMap(_spatial_pairs, weight=self._weight)
        )


def _footprint(node: Node) -> Iterator[tuple[tuple[str, tuple[float, ...]], Node]]:
    if node.kind == "scene" and node.crs:
        yield (node.crs, node.bounds), node


def _temporal_pairs(
    item: tuple[Any, Iterable[Node]], weight: float, window: int
) -> Iterator[tuple[str, str, float, str]]:
    """Link each acquisition to the next ``window`` ones of the same footprint."""
    _, group = item
    nodes = sorted(group, key=lambda n: (n.acquired, n.scene_id, n.tile_id))
    for i, a in enumerate(nodes):
        for b in nodes[i + 1 : i + 1 + window]:
            if a.scene_id != b.scene_id:
                yield a.tile_id, b.tile_id, weight, TEMPORAL
                yield b.tile_id, a.tile_id, weight, TEMPORAL


class TemporalEdges(beam.PTransform):  # type: ignore[misc]
    """Edges between tiles of the same footprint in other acquisitions.

    Tiles of georeferenced scenes are keyed by ``(crs, rounded bounds)``; within a
    footprint, acquisitions are sorted by time and each links to the next
    ``window`` ones (all pairs when there are at most ``window + 1``).

    Args:
        weight: Weight of every temporal edge.
        window: Following acquisitions each one links to.
    """

    def __init__(self, weight: float, window: int) -> None:
        super().__init__()
        self._weight = weight
        self._window = window

    def expand(self, nodes: beam.PCollection) -> beam.PCollection:
        """Return ``(src, dst, weight, "temporal")`` tuples, both directions."""
        return (
            nodes
            | "KeyByFootprint" >> beam.FlatMap(_footprint)
            | "GroupFootprints" >> beam.GroupByKey()
            | "Acquisitions"
            >> beam.FlatMap(_temporal_pairs, weight=self._weight, window=self._window)
        )


def _rows_table(rows: Sequence[tuple[str, str, float, str]]) -> pa.Table:
    src, dst, weight, kind = zip(*rows, strict=True)
    return pa.Table.from_arrays(
        [
            pa.array(src, pa.string()),
            pa.array(dst, pa.string()),
            pa.array(weight, pa.float32()),
            pa.array(kind, pa.string()),
        ],
        schema=edges_schema(),
    )


# -- graph file and packing -----------------------------------------------------------


def _directed(
    table: pa.Table, undirected: bool
) -> Iterator[tuple[str, tuple[str, float, str, bool]]]:
    """``(src, (dst, weight, kind, reversed))`` per edge; also reversed ones when undirected.

    Weights are float32 values carried as Python floats, so ``repr`` writes them
    exactly and NSL's ``float()`` reads back the same number.
    """
    src = table.column("src").to_pylist()
    dst = table.column("dst").to_pylist()
    weight = table.column("weight").to_pylist()
    kind = table.column("kind").to_pylist()
    for s, d, w, k in zip(src, dst, weight, kind, strict=True):
        yield s, (d, w, k, False)
        if undirected:
            yield d, (s, w, k, True)


def _adjacency(item: tuple[str, Iterable[tuple[str, float, str, bool]]]) -> Iterator[Any]:
    """Max weight per target: TSV lines of the directed graph; the (un)directed adjacency.

    The adjacency is ``(src, [(dst, weight, kind), ...])``: the kind of the edge
    that gave the weight (of equal weights, the kind last in alphabetical order).
    """
    src, edges = item
    directed: dict[str, float] = {}
    both: dict[str, tuple[float, str]] = {}
    for dst, w, kind, rev in edges:
        if not rev and w > directed.get(dst, -math.inf):
            directed[dst] = w
        if (w, kind) > both.get(dst, (-math.inf, "")):
            both[dst] = (w, kind)
    for dst, w in sorted(directed.items()):
        yield TaggedOutput(LINES, f"{src}\t{dst}\t{w!r}")
    yield src, sorted((dst, w, kind) for dst, (w, kind) in both.items())


def _seeds_and_requests(item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    """For a labelled tile: ``(id, (label, record))`` (``seeds``) and one request per out-edge."""
    node_id, groups = item
    examples, adjacency = groups["example"], groups["adjacency"]
    if not examples:
        return
    label, record = examples[0]
    if label < 0:
        return
    yield TaggedOutput("seeds", (node_id, (label, record)))
    for nbrs in adjacency:
        for dst, w, kind in nbrs:
            yield dst, (node_id, w, kind)


def _keep_features(record: bytes, names: frozenset[str]) -> bytes:
    """The Example with only the features in ``names``."""
    return example_bytes([(n, v) for n, v in feature_entries(record) if n in names])


def _answer_requests(
    item: tuple[str, dict[str, list[Any]]], features: frozenset[str] | None = None
) -> Iterator[Any]:
    """Send the neighbour's record (``features`` of it) to every seed that asked.

    Yields ``(seed id, (weight, nbr id, record, nbr label, edge kind))``; targets
    without an Example are dropped, as ``pack_nbrs`` does.
    """
    nbr_id, groups = item
    if not groups["example"] or not groups["request"]:
        return
    label, record = groups["example"][0]
    if features is not None:
        record = _keep_features(record, features)
    for seed_id, w, kind in groups["request"]:
        yield seed_id, (w, nbr_id, record, label, kind)


class PackNeighbours(beam.DoFn):  # type: ignore[misc]
    """Merge a seed's best neighbours into it (:func:`pipelines.graph.packing.pack_example`).

    The choice is ``pack_nbrs``'s (:func:`pipelines.graph.packing.select_neighbours`):
    by ``(weight, id)`` decreasing, whatever the edge kind, at most ``max_nbrs``.
    Besides the record, each seed yields its counts (``counts`` output) for
    ``stats.json``: bytes before and after packing, and per edge kind how many
    chosen neighbours are labelled and how many share the seed's label.
    """

    def __init__(self, max_nbrs: int | None) -> None:
        self._max = max_nbrs
        self._packed = Metrics.counter(_NS, "examples_packed")

    def process(self, item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
        """Yield ``(tile id, packed record)`` of a seed; ``counts``: a dict of counts."""
        seed_id, groups = item
        ranked = sorted(groups["nbr"], key=lambda n: (n[0], n[1]), reverse=True)
        chosen = ranked if self._max is None else ranked[: self._max]
        for label, record in groups["seed"]:
            self._packed.inc()
            packed = pack_example(record, [(w, i, r) for w, i, r, _, _ in chosen])
            yield seed_id, packed
            counts = collections.Counter(
                {"packed": 1, "packed_bytes": len(packed), "seed_bytes": len(record)}
            )
            counts[f"homophily.{label}.seeds"] += 1
            for _, _, _, nbr_label, kind in chosen:
                for k in (kind, "all"):
                    prefix = f"homophily.{label}.{k}"
                    counts[f"{prefix}.neighbours"] += 1
                    counts[f"{prefix}.labelled"] += nbr_label >= 0
                    counts[f"{prefix}.same"] += nbr_label == label
            yield TaggedOutput(COUNTS, dict(counts))


#: Bytes of packed records per file, on average: a shard is sorted in memory.
_PACKED_SHARD_BYTES = 256 << 20


def _stable_hash(text: str) -> int:
    """A 64-bit hash of ``text``, the same in every process (``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _SumSizes(beam.CombineFn):  # type: ignore[misc]
    """``(records, bytes)`` of the packed records."""

    def create_accumulator(self) -> tuple[int, int]:
        return 0, 0

    def add_input(self, acc: tuple[int, int], item: tuple[str, bytes]) -> tuple[int, int]:
        return acc[0] + 1, acc[1] + len(item[1])

    def merge_accumulators(self, accs: Iterable[tuple[int, int]]) -> tuple[int, int]:
        n = b = 0
        for a in accs:
            n, b = n + a[0], b + a[1]
        return n, b

    def extract_output(self, acc: tuple[int, int]) -> tuple[int, int]:
        return acc


def _packed_shard_count(size: tuple[int, int], records_per_shard: int, shard_bytes: int) -> int:
    """Files for ``size = (records, bytes)`` of packed records (at least 1)."""
    records, nbytes = size
    return max(1, math.ceil(records / records_per_shard), math.ceil(nbytes / shard_bytes))


def _key_by_shard(
    item: tuple[str, bytes], shards: int
) -> tuple[tuple[int, int], tuple[str, bytes]]:
    return (_stable_hash(item[0]) % shards, shards), item


def _packed_name(index: int, shards: int) -> str:
    return f"packed-{index:05d}-of-{shards:05d}.tfrecord"


class _WritePackedShard(beam.DoFn):  # type: ignore[misc]
    """Write one shard's records, sorted by tile id, under the bundle attempt's folder."""

    def __init__(self, temp_dir: str) -> None:
        self._temp_dir = temp_dir

    def start_bundle(self) -> None:
        """A folder per bundle attempt: a retry never writes into a file a failed one holds."""
        self._attempt = uuid.uuid4().hex[:12]

    def process(self, item: tuple[tuple[int, int], Iterable[tuple[str, bytes]]]) -> Iterator[str]:
        """Yield the file's path relative to the temporary folder."""
        (index, shards), records = item
        name = _packed_name(index, shards)
        folder = posixpath.join(self._temp_dir, "packed", self._attempt)
        if "://" not in folder:
            os.makedirs(folder, exist_ok=True)
        with FileSystems.create(posixpath.join(folder, name)) as f:
            for _, record in sorted(records):
                write_record(f, record)
        yield f"packed/{self._attempt}/{name}"


class WritePackedShards(beam.PTransform):  # type: ignore[misc]
    """``(tile id, record)`` pairs into TFRecord files whose content and order are reproducible.

    The number of files follows from the records' count and bytes
    (:func:`_packed_shard_count`), a record's file from a hash of its tile id,
    and each file holds its records sorted by tile id: the same records give
    the same files, whatever the runner's bundles. A file's records are grouped
    and sorted in one worker, so a file is kept to about ``shard_bytes``.
    Files are written under ``temp_dir`` per bundle attempt; the job's
    finalize step moves the committed ones into place.

    Args:
        temp_dir: The job's temporary folder.
        records_per_shard: Records per file, on average.
        shard_bytes: Bytes per file, on average. Default :data:`_PACKED_SHARD_BYTES`.

    Returns (from ``expand``):
        A dict: ``files`` (paths relative to ``temp_dir``, ``packed/<attempt>/<name>``)
        and ``shards`` (one element: the number of files).
    """

    def __init__(
        self, temp_dir: str, records_per_shard: int, shard_bytes: int = _PACKED_SHARD_BYTES
    ) -> None:
        super().__init__()
        self._temp_dir = temp_dir
        self._records = records_per_shard
        self._bytes = shard_bytes

    def expand(self, packed: beam.PCollection) -> dict[str, beam.PCollection]:
        """Size the records, key each by its shard, group, write sorted."""
        shards = (
            packed
            | "PackedSize" >> beam.CombineGlobally(_SumSizes())
            | "ShardCount"
            >> beam.Map(
                _packed_shard_count, records_per_shard=self._records, shard_bytes=self._bytes
            )
        )
        files = (
            packed
            | "KeyByShard" >> beam.Map(_key_by_shard, beam.pvalue.AsSingleton(shards))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(_WritePackedShard(self._temp_dir))
        )
        return {"files": files, "shards": shards}


class BuildTileGraph(beam.PTransform):  # type: ignore[misc]
    """The Graph job: embed tiles, build edges, write the graph and packed examples.

    Example:
        >>> with beam.Pipeline() as p:  # doctest: +SKIP
        ...     p | "Graph" >> BuildTileGraph(GraphConfig("out/tiles/*.tfrecord", "out/graph"))

    Args:
        config: The job's options.
        header: Extra fields for ``stats.json``.
    """

    def __init__(self, config: GraphConfig, header: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._config = config
        self._header = header or {}

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        """Build the job; return the edge tables, dead-letter rows and stats."""
        c = self._config
        paths = output_paths(c.out)
        dead: list[beam.PCollection] = []
        counts: list[beam.PCollection] = []

        read = (
            pbegin
            | "MatchTiles" >> fileio.MatchFiles(c.tiles)
            | "SpreadFiles" >> beam.Reshuffle()
            | "OpenTiles" >> fileio.ReadMatches()
            | "ReadTiles" >> beam.ParDo(ReadTileRecords()).with_outputs(DEAD, main="records")
        )
        dead.append(read[DEAD])
        parsed = read.records | "Parse" >> beam.ParDo(ParseTile()).with_outputs(DEAD, main="tiles")
        dead.append(parsed[DEAD])
        handler: ModelHandler = (
            BuiltinEmbedding(c.norm, c.batch_size)
            if c.embedding == "builtin"
            else SavedModelEmbedding(c.embedding, c.norm, c.batch_size)
        )
        embedded, failed = (
            parsed.tiles
            | "Embed" >> RunInference(KeyedModelHandler(handler)).with_exception_handling()
        )
        dead.append(failed.failed_inferences | "EmbedFailures" >> beam.FlatMap(_failed_batch))
        checked = embedded | "CheckEmbedding" >> beam.ParDo(
            CheckEmbedding(c.bounds_decimals)
        ).with_outputs(DEAD, NODES, EXAMPLES, main="vectors")
        dead.append(checked[DEAD])

        vectors = checked.vectors
        whitening = None
        if c.whitens:
            whitened = vectors | "Whitening" >> WhitenVectors()
            vectors, whitening = whitened["vectors"], whitened["whitening"]
        similar = vectors | "Similarity" >> SimilarityEdges(
            c.k,
            c.threshold,
            c.rounds,
            c.bucket_size,
            c.seed,
            spill=c.spill,
            spill_pairs=c.spill_pairs,
        )
        dead.append(similar["dead_letter"])
        other: list[beam.PCollection] = []
        if c.spatial_weight > 0:
            other.append(checked[NODES] | "Spatial" >> SpatialEdges(c.spatial_weight))
        if c.temporal_weight > 0:
            other.append(
                checked[NODES] | "Temporal" >> TemporalEdges(c.temporal_weight, c.temporal_window)
            )
        tables = [similar["edges"]]
        if other:
            tables.append(
                other
                | "OtherEdges" >> beam.Flatten()
                | "BatchEdgeRows" >> beam.BatchElements(min_batch_size=1, max_batch_size=65536)
                | "EdgeRowTables" >> beam.Map(_rows_table)
            )
        edges = tables | "AllEdges" >> beam.Flatten()
        edges | "WriteEdges" >> beam.io.WriteToParquetBatched(
            posixpath.join(paths["edges"], "edges"), edges_schema(), file_name_suffix=".parquet"
        )

        adjacency = (
            edges
            | "DirectedEdges" >> beam.FlatMap(_directed, undirected=c.undirected)
            | "GroupBySource" >> beam.GroupByKey()
            | "Adjacency" >> beam.FlatMap(_adjacency).with_outputs(LINES, main="adjacency")
        )
        adjacency[LINES] | "WriteGraphTsv" >> beam.io.WriteToText(
            paths["graph"], num_shards=1, shard_name_template=""
        )
        packing = self._pack(checked[EXAMPLES], adjacency.adjacency)
        keyed = packing.packed
        packed = keyed | "PackedRecords" >> beam.Values()
        # Temporary files of the packed shards; only the job's finalize moves them.
        temp_dir = posixpath.join(c.out, f".tmp-{uuid.uuid4().hex[:12]}")
        written = keyed | "WritePacked" >> WritePackedShards(temp_dir, c.records_per_shard)

        dead_rows = dead | "AllDeadLetters" >> beam.Flatten()
        dead_rows | "WriteDeadLetter" >> beam.io.WriteToParquet(
            posixpath.join(paths["dead_letter"], "dead_letter"),
            dead_letter_schema(),
            file_name_suffix=".parquet",
        )
        counts.append(read.records | "CountRead" >> beam.Map(lambda _: {"tiles_read": 1}))
        counts.append(dead_rows | "CountDead" >> beam.Map(lambda row: {f"dead.{row['stage']}": 1}))
        counts.append(checked.vectors | "CountEmbedded" >> beam.Map(lambda _: {"embedded": 1}))
        counts.append(edges | "CountEdges" >> beam.Map(_count_kinds))
        counts.append(adjacency[LINES] | "CountLines" >> beam.Map(lambda _: {"graph_lines": 1}))
        counts.append(packing[COUNTS])
        counts.append(
            checked[EXAMPLES] | "CountTileBytes" >> beam.Map(lambda e: {"tile_bytes": len(e[1][1])})
        )
        totals = (
            counts
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombineGlobally(_SumCounts())
        )
        cosines = (
            edges
            | "CosineHistogram" >> beam.FlatMap(_cosine_histogram)
            | "SumHistograms" >> beam.CombineGlobally(_SumHistograms())
        )
        if whitening is None:
            whitening = pbegin | "NoWhitening" >> beam.Create([])
        stats = (
            pbegin
            | "FinalizeTrigger" >> beam.Create([None])
            | "Finalize"
            >> beam.Map(
                _finalize,
                counts=beam.pvalue.AsSingleton(totals),
                stats_path=paths["stats"],
                header={**self._header, "options": _options(c)},
                config=c,
                cosines=beam.pvalue.AsSingleton(cosines),
                whitening=beam.pvalue.AsList(whitening),
                packed_files=beam.pvalue.AsList(written["files"]),
                packed_shards=beam.pvalue.AsSingleton(written["shards"]),
                packed_dir=paths["packed"],
                temp_dir=temp_dir,
            )
        )
        return {"edges": edges, "dead_letter": dead_rows, "packed": packed, "stats": stats}

    def _pack(self, examples: beam.PCollection, adjacency: beam.PCollection) -> Any:
        """Three joins, each keyed by one node: seed -> requests -> neighbour records -> seed.

        Returns the ``Pack`` step's outputs: ``packed`` (``(id, record)``) and ``counts``.
        """
        c = self._config
        features = None if c.nbr_features is None else frozenset(c.nbr_features)
        asked = (
            {"example": examples, "adjacency": adjacency}
            | "JoinSeedEdges" >> beam.CoGroupByKey()
            | "SeedsAndRequests"
            >> beam.FlatMap(_seeds_and_requests).with_outputs("seeds", main="requests")
        )
        nbrs = (
            {"example": examples, "request": asked.requests}
            | "JoinNeighbourRecords" >> beam.CoGroupByKey()
            | "AnswerRequests" >> beam.FlatMap(_answer_requests, features=features)
        )
        return (
            {"seed": asked.seeds, "nbr": nbrs}
            | "JoinSeedNeighbours" >> beam.CoGroupByKey()
            | "Pack" >> beam.ParDo(PackNeighbours(c.pack_k)).with_outputs(COUNTS, main="packed")
        )


def _count_kinds(table: pa.Table) -> dict[str, int]:
    kinds = table.column("kind").to_pylist()
    return {f"edges.{k}": v for k, v in collections.Counter(kinds).items()}


class _SumCounts(beam.CombineFn):  # type: ignore[misc]
    def create_accumulator(self) -> collections.Counter[str]:
        return collections.Counter()

    def add_input(
        self, acc: collections.Counter[str], counts: dict[str, int]
    ) -> collections.Counter[str]:
        acc.update(counts)
        return acc

    def merge_accumulators(
        self, accs: Iterable[collections.Counter[str]]
    ) -> collections.Counter[str]:
        out: collections.Counter[str] = collections.Counter()
        for acc in accs:
            out.update(acc)
        return out

    def extract_output(self, acc: collections.Counter[str]) -> dict[str, int]:
        return dict(acc)


def _options(c: GraphConfig) -> dict[str, Any]:
    options = asdict(c)
    options.pop("norm")
    options.pop("classes")
    options.pop("overwrite")  # what happens to an earlier run's outputs, not to this graph
    options["whiten"] = c.whitens
    return options


def _homophily(counts: dict[str, int], classes: Sequence[str]) -> dict[str, Any]:
    """``stats.json``'s ``homophily`` from the ``homophily.<label>.<kind>.<count>`` counts."""
    by_label: dict[int, dict[str, dict[str, int]]] = {}
    seeds: collections.Counter[int] = collections.Counter()
    for key, value in counts.items():
        if not key.startswith("homophily."):
            continue
        _, index, rest = key.split(".", 2)
        if rest == "seeds":
            seeds[int(index)] += value
            continue
        kind, what = rest.rsplit(".", 1)
        by_label.setdefault(int(index), {}).setdefault(kind, {})[what] = value

    def section(kinds: dict[str, dict[str, int]]) -> dict[str, Any]:
        out = {}
        for kind in (*KINDS, "all"):
            c = kinds.get(kind, {})
            n, labelled, same = c.get("neighbours", 0), c.get("labelled", 0), c.get("same", 0)
            share = round(same / labelled, 4) if labelled else None
            out[kind] = {"neighbours": n, "labelled": labelled, "same": same, "share": share}
        return out

    if not seeds:
        return {}
    total: dict[str, dict[str, int]] = {}
    for kinds in by_label.values():
        for kind, c in kinds.items():
            acc = total.setdefault(kind, {})
            for what, v in c.items():
                acc[what] = acc.get(what, 0) + v
    by_class = {}
    for label in sorted(seeds):
        name = classes[label] if 0 <= label < len(classes) else str(label)
        by_class[name] = {"seeds": seeds[label], **section(by_label.get(label, {}))}
    return {"all": {"seeds": sum(seeds.values()), **section(total)}, "by_class": by_class}


def _packed_size(counts: dict[str, int], pack_k: int) -> dict[str, Any]:
    """``stats.json``'s ``packed_size``: bytes of the packed records against the plain ones."""
    packed, plain = counts.get("packed_bytes", 0), counts.get("seed_bytes", 0)
    return {
        "records": counts.get("packed", 0),
        "bytes": packed,
        "plain_bytes": plain,
        "ratio": round(packed / plain, 4) if plain else None,
        "target_ratio": 1 + pack_k,
        "tiles_bytes": counts.get("tile_bytes", 0),
    }


def _embedding_stats(c: GraphConfig, whitening: Sequence[Any]) -> dict[str, Any]:
    fitted = {
        str(dim): (
            {"sample": w.rows, "shrinkage": round(w.shrinkage, 6)}
            if w is not None
            else "not whitened: fewer than 2 vectors, or all equal"
        )
        for dim, w in sorted(whitening)
    }
    return {"name": c.embedding, "whiten": c.whitens, "whitening": fitted}


def _finalize(
    _: Any,
    counts: dict[str, int],
    stats_path: str,
    header: dict[str, Any],
    packed_files: list[str],
    packed_shards: int,
    packed_dir: str,
    temp_dir: str,
    config: GraphConfig | None = None,
    cosines: np.ndarray | None = None,
    whitening: Sequence[Any] = (),
) -> dict[str, Any]:
    """Move the packed shards into place, then write ``stats.json``.

    ``packed_files`` are the committed shards, ``packed/<attempt>/<name>``
    relative to ``temp_dir``; a shard number that no record hashed to gets an
    empty file, so ``packed-*-of-NNNNN`` is complete. ``stats.json``: tiles in =
    embedded + dead-lettered; edges by kind; the embedding and its whitening; the
    similarity edges' cosines; packed sizes; homophily of the packed neighbours.
    """
    c = config or GraphConfig("", "")
    if "://" not in packed_dir:
        os.makedirs(packed_dir, exist_ok=True)
    written = set()
    for rel in sorted(set(packed_files)):
        name = rel.rsplit("/", 1)[1]
        src, dst = posixpath.join(temp_dir, rel), posixpath.join(packed_dir, name)
        if name in written:
            raise RuntimeError(f"two committed bundles wrote packed shard {name}")
        written.add(name)
        if FileSystems.exists(src):
            FileSystems.rename([src], [dst])
        elif not FileSystems.exists(dst):  # a retried finalize already moved it
            raise OSError(f"{src} of a committed bundle is missing")
    for index in range(packed_shards):
        name = _packed_name(index, packed_shards)
        if name not in written:
            with FileSystems.create(posixpath.join(packed_dir, name)):
                pass
    if FileSystems.exists(temp_dir):
        FileSystems.delete([temp_dir])
    dead = {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("dead.")}
    files_corrupt = dead.pop("read", 0)
    edges = {kind: counts.get(f"edges.{kind}", 0) for kind in (SIMILARITY, SPATIAL, TEMPORAL)}
    stats = {
        **header,
        "tiles": {
            "read": counts.get("tiles_read", 0),
            "embedded": counts.get("embedded", 0),
            "dead_lettered": dead,
        },
        "files_corrupt": files_corrupt,
        "edges": {**edges, "total": sum(edges.values())},
        "graph_lines": counts.get("graph_lines", 0),
        "packed": counts.get("packed", 0),
        "embedding": _embedding_stats(c, whitening),
        "similarity_cosine": _cosine_summary(
            cosines if cosines is not None else np.zeros(_COSINE_BINS, np.int64)
        ),
        "packed_size": _packed_size(counts, c.pack_k),
        "homophily": _homophily(counts, c.classes),
    }
    if c.classes:
        stats["classes"] = list(c.classes)
    with FileSystems.create(stats_path) as f:
        f.write(json.dumps(stats, indent=2, default=str).encode())
    return stats


# -- the job -------------------------------------------------------------------------


def prepare_out(out: str, overwrite: bool) -> None:
    """Make ``out`` ready for a graph job: refuse an earlier run's outputs unless ``overwrite``.

    With ``overwrite``, the earlier outputs are removed (``out/encoder``, the
    contrastive encoder ``minewatch graph`` may keep there, is not an output).

    Raises:
        ConfigError: ``out`` holds an earlier run's outputs and ``overwrite`` is off.
    """
    import shutil

    existing = [p for p in output_paths(out).values() if FileSystems.exists(p)]
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds a graph job's output; add --overwrite to replace it", "--out"
        )
    for p in existing:
        if "://" in p:
            FileSystems.delete([p])
        elif os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
    if "://" not in out:
        os.makedirs(out, exist_ok=True)


def run_graph(
    config: GraphConfig,
    beam_args: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
    header: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Build and run the Graph job.

    Args:
        config: The job's options (checked by :func:`~pipelines.graph.options.graph_config`).
        beam_args: Beam pipeline options, passed through unchanged.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.
        header: Extra fields for ``stats.json``.

    Returns:
        The contents of ``stats.json``, or None when building on ``test_pipeline``
        or for a ``--dry_run``.

    Raises:
        ConfigError: ``config.out`` holds an earlier run's outputs and
            ``config.overwrite`` is off.
    """
    prepare_out(config.out, config.overwrite)
    stats, _ = run_pipeline(
        "Graph" >> BuildTileGraph(config, header),
        beam_args,
        save_main_session,
        test_pipeline,
        output_paths(config.out)["stats"],
    )
    return stats


def run(
    argv: Sequence[str] | None = None,
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any] | None:
    """Run the Graph job from command-line arguments, ours and Beam's (Beam's ``run(argv)``).

    Args:
        argv: Arguments as on the command line after ``minewatch graph``:
            TILES_DIR, :data:`~pipelines.graph.options.GRAPH_ARGS`, Beam options.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.

    Returns:
        See :func:`run_graph`.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
            ``--embedding contrastive`` is one (``minewatch graph`` trains the
            encoder; this job only reads one).
    """
    from minewatch.arguments import parse
    from pipelines.graph.options import GRAPH_ARGS, graph_config

    params, rest = parse(GRAPH_ARGS, argv, "minewatch graph")
    config, beam_args, header = graph_config(params, rest)
    return run_graph(config, beam_args, save_main_session, test_pipeline, header)
