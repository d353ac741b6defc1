"""Edges between tiles: similarity (top-k cosine in cells), spatial and temporal.

Similarity (:class:`SimilarityEdges`) never compares all pairs, and no step holds
all vectors: a bounded sample (65,536 per dimension) fits ``trees`` partition
trees of 2-means cuts (``--trees``); batches of vectors are routed through them
at once (those near a cut go to both sides) and emitted as one element per ``(dim, tree,
cell)`` of the batch; each cell (~``cell_size`` vectors) is grouped and
compared exactly by blocked matrix products; the candidates are merged into each
node's top ``k`` by a ``CombinePerKey`` whose accumulator holds numpy arrays for
a shard of nodes. Elements are few and large: about ``N / batch_size x cells``
of them, never one per vector and tree.

Spatial edges join tiles of one scene whose windows touch or overlap, keyed by
grid cells; temporal edges join tiles of different acquisitions with the same
CRS and bounds, keyed by the rounded bounds. Neither compares all pairs.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from minewatch.errors import ConfigError
from pipelines.graph.descriptors import DEAD, NS, Concat, Node, SumByDim, dead_row, sampled
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

__all__ = [
    "KINDS",
    "SIMILARITY",
    "SPATIAL",
    "TEMPORAL",
    "SimilarityEdges",
    "SpatialEdges",
    "TemporalEdges",
    "edges_schema",
    "rows_table",
]

SIMILARITY, SPATIAL, TEMPORAL = "similarity", "spatial", "temporal"
#: The edge kinds, in ``stats.json``'s order.
KINDS = (SIMILARITY, SPATIAL, TEMPORAL)


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
        self._bad = Metrics.counter(NS, "vectors_dead_lettered")

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
                    DEAD, dead_row("", "vector is zero or not finite", ids[bad], stage="similarity")
                )
            if not good.all():
                ids, unit = ids[good], unit[good]
            if ids.size:
                yield dim, VectorBatch(ids, node_keys(list(ids)), unit)


def _count_rows(item: tuple[int, VectorBatch]) -> dict[int, int]:
    dim, batch = item
    return {dim: int(batch.ids.size)}


def _sample_rows(
    item: tuple[int, VectorBatch], counts: dict[int, int], size: int
) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """A uniform sample of about ``size`` rows per dimension: ``(dim, (keys, rows))``."""
    dim, batch = item
    keep = sampled(batch.keys, min(1.0, size / max(1, counts.get(dim, 1))))
    if keep.any():
        yield dim, (batch.keys[keep], batch.unit[keep])


def _fit_trees(
    item: tuple[int, np.ndarray],
    counts: dict[int, int],
    trees: int,
    leaf_size: int,
    threshold: float,
    spill: float,
    seed: int,
    k: int = 10,
    spill_pairs: float = 0.9,
) -> tuple[int, list[PartitionTree]]:
    """``trees`` partition trees; each after the first fits a different 80% of the sample."""
    dim, sample = item
    fitted = []
    for r in range(trees):
        rows = sample
        if r:
            pick = np.random.default_rng([seed, dim, r]).random(sample.shape[0]) < 0.8
            rows = sample[pick]
        fitted.append(
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
    return dim, fitted


def _assign_cells(
    item: tuple[int, VectorBatch], trees: dict[int, list[PartitionTree]]
) -> Iterator[tuple[tuple[int, int, int], VectorBatch]]:
    """Yield ``((dim, tree, cell), rows of the batch in that cell)``, for every tree."""
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
        self._split = Metrics.counter(NS, "cells_split")
        self._pairs = Metrics.counter(NS, "pairs_compared")

    def process(
        self, item: tuple[tuple[int, int, int], Iterable[VectorBatch]], counts: dict[int, int]
    ) -> Iterator[tuple[int, Candidates]]:
        """Yield ``(shard, Candidates)``."""
        (dim, r, _), parts = item
        parts = list(parts)
        ids = np.concatenate([p.ids for p in parts])
        keys = np.concatenate([p.keys for p in parts])
        unit = np.concatenate([p.unit for p in parts])
        # The parts arrive in whatever order the runner's bundles made; put the cell
        # in a fixed order (largest key first) so that ties among equal similarities
        # resolve the same way on every runner and run, by the larger key as in
        # merge_topk.
        order = np.argsort(keys, kind="stable")[::-1]
        ids, keys, unit = ids[order], keys[order], unit[order]
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

    Candidates come from ``trees`` partition trees (:func:`build_tree`): 2-means
    cuts fitted to a bounded sample of the vectors, so that each leaf cell holds
    about ``cell_size`` of them and near neighbours on either side of a cut
    meet in a cell through spill (a margin per cut, wide enough to keep
    ``spill_pairs`` of the sample's near-neighbour pairs together). Batches of
    vectors are routed through the trees at once and emitted as one element per
    ``(dim, tree, cell)`` present in the batch; each cell is grouped and
    compared exactly; a ``CombinePerKey`` on shards of source nodes keeps each
    node's ``k`` best over all trees. With
    ``N <= cell_size`` there is one cell and the result is exact.

    Example:
        >>> pairs = p | beam.Create([("a", [1.0, 0.0]), ("b", [0.9, 0.1])])  # doctest: +SKIP
        >>> out = pairs | SimilarityEdges(k=5, threshold=0.8)  # doctest: +SKIP
        >>> out["edges"]  # PCollection of pyarrow Tables (edges_schema)  # doctest: +SKIP

    Args:
        k: Most neighbours per node. Default 10.
        threshold: Least cosine similarity. Default 0.8.
        trees: Partition trees (more: higher recall, proportionally more work).
            Default 1.
        cell_size: Most vectors per leaf cell (estimated from the sample); cells
            over 4x are cut further by hyperplanes. Default 16384.
        seed: Seed of the trees. Default 0.
        batch_size: Vectors per batch (with ``batched=False``). Default 4096.
        shard_nodes: Nodes per top-k merge shard. Default 50,000.
        spill: Least fraction of the vectors at each cut that also go to the
            other side: a floor under ``spill_pairs``' margin. Default 0 (with
            ``spill_pairs=0`` the fraction alone sets the margins).
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
        trees: int = 1,
        cell_size: int = 16384,
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
        self._trees = trees
        self._cell_size = cell_size
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
            | "SumCounts" >> beam.CombineGlobally(SumByDim())
        )
        trees = beam.pvalue.AsDict(
            vectors
            | "SampleRows" >> beam.FlatMap(_sample_rows, counts, self._sample_size)
            | "GatherSample" >> beam.CombinePerKey(Concat())
            | "FitTrees"
            >> beam.Map(
                _fit_trees,
                counts,
                trees=self._trees,
                leaf_size=self._cell_size,
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
                    self._k, self._threshold, self._cell_size, self._seed, self._shard_nodes
                ),
                counts,
            )
            | "TopKPerNode" >> beam.CombinePerKey(TopKPerNode(self._k))
            | "EdgeTables" >> beam.MapTuple(lambda _, cands: similarity_table(cands))
        )
        return {"edges": edges, "dead_letter": prepared[DEAD]}


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


def rows_table(rows: Sequence[tuple[str, str, float, str]]) -> pa.Table:
    """``(src, dst, weight, kind)`` rows as an edges table (:func:`edges_schema`)."""
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
