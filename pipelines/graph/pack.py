"""The Beam side of packing: the graph file, NSL's packed examples, and their shards.

The edges become, per source, the TSV lines of ``graph.tsv`` and an adjacency
(:func:`directed`, :func:`adjacency`). Packing follows NSL's ``pack_nbrs`` (see
:mod:`pipelines.graph.packing`): seeds are the labelled tiles, neighbours any
tile, the ``pack_k`` best edges by weight whatever their kind. The choice is
made on ids, weights and labels alone; only then are the chosen neighbours'
features (``nbr_features`` of them) joined by ``CoGroupByKey`` on the neighbour
id, never from a side input of all tiles (:func:`pack_seeds`), so a record
moves to at most ``pack_k`` seeds' joins, not to every seed it has an edge from.

The packed records go to ``packed/packed-SSSSS-of-NNNNN.tfrecord``
(:class:`WritePackedShards`): ``NNNNN`` follows from the number and bytes of the
records, a record's shard from a hash of its tile id, and each shard's records
are sorted by tile id, so the files and their order do not depend on how the
runner cut bundles (the trainer's input order is then the same in every run).
"""

from __future__ import annotations

import collections
import hashlib
import math
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from minewatch.paths import is_remote
from minewatch.tfrecord import read_records, write_record
from pipelines.graph.descriptors import NS
from pipelines.graph.packing import example_bytes, feature_entries, pack_example, packed_size

__all__ = [
    "COUNTS",
    "LINES",
    "WritePackedShards",
    "adjacency",
    "directed",
    "pack_seeds",
    "packed_name",
]

#: Output tag of :func:`adjacency`'s ``graph.tsv`` lines.
LINES = "lines"
#: Output tag of :class:`PackNeighbours`'s counts.
COUNTS = "counts"

# -- graph file and packing -----------------------------------------------------------


def directed(
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


def adjacency(item: tuple[str, Iterable[tuple[str, float, str, bool]]]) -> Iterator[Any]:
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


#: A record's place: ``(path, byte offset)`` in a tile file, or the record itself
#: where its place is unknown (examples not read from files).
Location = tuple[str, int] | bytes


def _location(value: tuple[Any, ...]) -> Location:
    if len(value) > 2 and value[2][1] >= 0:
        return (value[2][0], int(value[2][1]))
    return value[1]


def _node(
    item: tuple[str, tuple[Any, ...]], features: frozenset[str] | None = None
) -> tuple[str, tuple[int, int, tuple[tuple[str, int], ...], Location]]:
    """``(id, (label, record bytes, neighbour profile, location))``: what routing needs of a tile.

    The profile is ``(name, serialized length)`` of each feature a neighbour packs
    (``features`` of it): enough to know a packed record's size
    (:func:`pipelines.graph.packing.packed_size`) before any record moves.
    """
    node_id, value = item
    label, record = value[0], value[1]
    profile = tuple(
        (n, len(v)) for n, v in feature_entries(record) if features is None or n in features
    )
    return node_id, (int(label), len(record), profile, _location(value))


def _requests(item: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, Any]]:
    """For a labelled tile (a seed): ``(dst, (seed id, weight, kind))`` per out-edge."""
    node_id, groups = item
    nodes, adjacency = groups["node"], groups["adjacency"]
    if not nodes or nodes[0][0] < 0:
        return
    for nbrs in adjacency:
        for dst, w, kind in nbrs:
            yield dst, (node_id, w, kind)


def _existing(item: tuple[str, dict[str, list[Any]]]) -> Iterator[tuple[str, Any]]:
    """``(seed id, (weight, nbr id, nbr label, kind, profile, location))`` per existing target.

    Targets without an Example are dropped, as ``pack_nbrs`` does.
    """
    nbr_id, groups = item
    if not groups["node"] or not groups["request"]:
        return
    label, _, profile, location = groups["node"][0]
    for seed_id, w, kind in groups["request"]:
        yield seed_id, (w, nbr_id, label, kind, profile, location)


def _plan(item: tuple[str, dict[str, list[Any]]], max_nbrs: int | None) -> Iterator[Any]:
    """A seed's packing plan: ``pack_nbrs``'s choice of neighbours, before any record moves.

    By ``(weight, id)`` decreasing, whatever the edge kind, at most ``max_nbrs``
    (:func:`pipelines.graph.packing.select_neighbours`'s order). Yields
    ``(seed id, (label, location, packed size, [(weight, nbr id, nbr label, kind,
    nbr location), ...]))`` for a labelled tile.
    """
    seed_id, groups = item
    if not groups["node"]:
        return
    label, seed_bytes, _, location = groups["node"][0]
    if label < 0:
        return
    ranked = sorted(groups["nbr"], key=lambda n: (n[0], n[1]), reverse=True)
    chosen = ranked if max_nbrs is None else ranked[:max_nbrs]
    size = packed_size(seed_bytes, [n[4] for n in chosen])
    yield seed_id, (label, location, size, [(w, i, lab, k, loc) for w, i, lab, k, _, loc in chosen])


def _keep_features(record: bytes, names: frozenset[str]) -> bytes:
    """The Example with only the features in ``names``."""
    return example_bytes([(n, v) for n, v in feature_entries(record) if n in names])


#: Bytes of packed records per file, on average: a shard is sorted in memory.
_PACKED_SHARD_BYTES = 256 << 20


def _stable_hash(text: str) -> int:
    """A 64-bit hash of ``text``, the same in every process (``hash`` is salted)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class _SumSizes(beam.CombineFn):  # type: ignore[misc]
    """``(records, bytes)`` of the packed records, from the seeds' plans."""

    def create_accumulator(self) -> tuple[int, int]:
        return 0, 0

    def add_input(self, acc: tuple[int, int], item: tuple[str, Any]) -> tuple[int, int]:
        return acc[0] + 1, acc[1] + item[1][2]

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


def packed_name(index: int, shards: int) -> str:
    """File name of packed shard ``index`` of ``shards``."""
    return f"packed-{index:05d}-of-{shards:05d}.tfrecord"


def _read_at(locations: Iterable[Location]) -> dict[Location, bytes]:
    """The records at ``locations``, each file opened once and read in offset order."""
    out: dict[Location, bytes] = {}
    by_path: dict[str, list[int]] = collections.defaultdict(list)
    for loc in set(locations):
        if isinstance(loc, bytes):
            out[loc] = loc
        else:
            by_path[loc[0]].append(loc[1])
    for path, offsets in sorted(by_path.items()):
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            for offset in sorted(offsets):
                f.seek(offset)
                record = next(read_records(f), None)
                if record is None:
                    raise ValueError(f"{path}: no TFRecord at byte {offset}")
                out[(path, offset)] = record
    return out


class _WritePackedShard(beam.DoFn):  # type: ignore[misc]
    """Pack one shard's seeds and write them, sorted by tile id, under the attempt's folder.

    The seeds' and chosen neighbours' records are read from the tile files at
    the places the plans give (one shard's worth in memory); a packed record
    whose size is not the planned one (a tile file changed under the job)
    fails the bundle, since the number of files was sized from the plans.
    """

    def __init__(self, temp_dir: str, features: frozenset[str] | None) -> None:
        self._temp_dir = temp_dir
        self._features = features
        self._packed = Metrics.counter(NS, "examples_packed")

    def start_bundle(self) -> None:
        """A folder per bundle attempt: a retry never writes into a file a failed one holds."""
        self._attempt = uuid.uuid4().hex[:12]

    def process(self, item: tuple[tuple[int, int], Iterable[tuple[str, Any]]]) -> Iterator[Any]:
        """Yield the file's path relative to the temporary folder; ``counts``: dicts of counts."""
        (index, shards), plans = item
        plans = sorted(plans, key=lambda p: p[0])
        records = _read_at(
            loc for _, (_, seed, _, nbrs) in plans for loc in (seed, *(n[4] for n in nbrs))
        )
        kept: dict[Location, bytes] = {}

        def nbr_record(loc: Location) -> bytes:
            if self._features is None:
                return records[loc]
            if loc not in kept:
                kept[loc] = _keep_features(records[loc], self._features)
            return kept[loc]

        name = packed_name(index, shards)
        folder = posixpath.join(self._temp_dir, "packed", self._attempt)
        if not is_remote(folder):
            os.makedirs(folder, exist_ok=True)
        with FileSystems.create(posixpath.join(folder, name)) as f:
            for seed_id, (label, seed, size, nbrs) in plans:
                record = records[seed]
                packed = pack_example(record, [(w, i, nbr_record(loc)) for w, i, _, _, loc in nbrs])
                if len(packed) != size:
                    raise RuntimeError(
                        f"packed record of {seed_id!r} has {len(packed)} bytes, planned {size}: "
                        "did a tile file change during the job?"
                    )
                write_record(f, packed)
                self._packed.inc()
                yield TaggedOutput(COUNTS, _counts(label, record, packed, nbrs))
        yield f"packed/{self._attempt}/{name}"


def _counts(label: int, record: bytes, packed: bytes, nbrs: Sequence[Any]) -> dict[str, int]:
    """A seed's counts for ``stats.json``.

    Bytes before and after packing; per edge kind, the neighbours' labels
    against the seed's (homophily).
    """
    counts = collections.Counter(
        {"packed": 1, "packed_bytes": len(packed), "seed_bytes": len(record)}
    )
    counts[f"homophily.{label}.seeds"] += 1
    for _, _, nbr_label, kind, _ in nbrs:
        for k in (kind, "all"):
            prefix = f"homophily.{label}.{k}"
            counts[f"{prefix}.neighbours"] += 1
            counts[f"{prefix}.labelled"] += nbr_label >= 0
            counts[f"{prefix}.same"] += nbr_label == label
    return dict(counts)


class WritePackedShards(beam.PTransform):  # type: ignore[misc]
    """Seeds' packing plans into TFRecord files whose content and order are reproducible.

    The number of files follows from the records' count and planned bytes
    (:func:`_packed_shard_count`), a record's file from a hash of its tile id,
    and each file holds its records sorted by tile id: the same records give
    the same files, whatever the runner's bundles. Only the plans (ids,
    weights, labels, places of records) are grouped by file; each file's
    worker reads its seeds' and neighbours' records from the tile files and
    packs them (:func:`pipelines.graph.packing.pack_example`), so no step
    shuffles or holds more records than one file's (about ``shard_bytes``).
    Files are written under ``temp_dir`` per bundle attempt; the job's
    finalize step moves the committed ones into place.

    Args:
        temp_dir: The job's temporary folder.
        records_per_shard: Records per file, on average.
        shard_bytes: Bytes per file, on average. Default :data:`_PACKED_SHARD_BYTES`.
        nbr_features: Features of a neighbour to pack (None: all).

    Returns (from ``expand``):
        A dict: ``files`` (paths relative to ``temp_dir``, ``packed/<attempt>/<name>``),
        ``shards`` (one element: the number of files) and ``counts`` (a dict of
        counts per packed seed).
    """

    def __init__(
        self,
        temp_dir: str,
        records_per_shard: int,
        shard_bytes: int = _PACKED_SHARD_BYTES,
        nbr_features: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self._temp_dir = temp_dir
        self._records = records_per_shard
        self._bytes = shard_bytes
        self._features = None if nbr_features is None else frozenset(nbr_features)

    def expand(self, plans: beam.PCollection) -> dict[str, beam.PCollection]:
        """Size the records, key each plan by its shard, group, pack and write sorted."""
        shards = (
            plans
            | "PackedSize" >> beam.CombineGlobally(_SumSizes())
            | "ShardCount"
            >> beam.Map(
                _packed_shard_count, records_per_shard=self._records, shard_bytes=self._bytes
            )
        )
        written = (
            plans
            | "KeyByShard" >> beam.Map(_key_by_shard, beam.pvalue.AsSingleton(shards))
            | "GroupShards" >> beam.GroupByKey()
            | "WriteShards"
            >> beam.ParDo(_WritePackedShard(self._temp_dir, self._features)).with_outputs(
                COUNTS, main="files"
            )
        )
        return {"files": written.files, "shards": shards, COUNTS: written[COUNTS]}


def pack_seeds(
    examples: beam.PCollection,
    adjacent: beam.PCollection,
    pack_k: int | None,
    nbr_features: Sequence[str] | None,
) -> beam.PCollection:
    """Each seed's packing plan, from joins on ids, weights, labels and sizes alone.

    Seed -> its out-edges' targets (``JoinSeedEdges``), target -> exists? its
    label, size and place (``JoinNeighbourNodes``), seed -> its ``pack_k`` best
    (``PlanSeeds``). No record crosses a shuffle: :class:`WritePackedShards`
    reads the seeds' and chosen neighbours' records from the tile files.

    Args:
        examples: ``(id, (label, record[, (path, offset)]))`` of every embedded
            tile (without a place, the record itself travels in the plans).
        adjacent: ``(src, [(dst, weight, kind), ...])``, :func:`adjacency`'s main output.
        pack_k: Most neighbours per seed (None: all).
        nbr_features: Features of a neighbour to pack (None: all).

    Returns:
        ``(seed id, (label, location, packed size, [(weight, nbr id, nbr label,
        kind, nbr location), ...]))`` per labelled tile.
    """
    features = None if nbr_features is None else frozenset(nbr_features)
    nodes = examples | "Nodes" >> beam.Map(_node, features=features)
    requests = (
        {"node": nodes, "adjacency": adjacent}
        | "JoinSeedEdges" >> beam.CoGroupByKey()
        | "Requests" >> beam.FlatMap(_requests)
    )
    existing = (
        {"node": nodes, "request": requests}
        | "JoinNeighbourNodes" >> beam.CoGroupByKey()
        | "Existing" >> beam.FlatMap(_existing)
    )
    return (
        {"node": nodes, "nbr": existing}
        | "JoinSeedNeighbours" >> beam.CoGroupByKey()
        | "PlanSeeds" >> beam.FlatMap(_plan, max_nbrs=pack_k)
    )
