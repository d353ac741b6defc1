"""The Beam side of packing: the graph file, NSL's packed examples, and their shards.

The edges become, per source, the TSV lines of ``graph.tsv`` and an adjacency
(:func:`directed`, :func:`adjacency`). Packing follows NSL's ``pack_nbrs`` (see
:mod:`pipelines.graph.packing`): seeds are the labelled tiles, neighbours any
tile, the ``pack_k`` best edges by weight whatever their kind; the neighbour
features (``nbr_features`` of them) are joined by ``CoGroupByKey`` on the
neighbour id, never from a side input of all tiles (:func:`pack_seeds`).

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
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from minewatch.paths import is_remote
from minewatch.tfrecord import write_record
from pipelines.graph.descriptors import NS
from pipelines.graph.packing import example_bytes, feature_entries, pack_example

__all__ = [
    "COUNTS",
    "LINES",
    "PackNeighbours",
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
        self._packed = Metrics.counter(NS, "examples_packed")

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


def packed_name(index: int, shards: int) -> str:
    """File name of packed shard ``index`` of ``shards``."""
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
        name = packed_name(index, shards)
        folder = posixpath.join(self._temp_dir, "packed", self._attempt)
        if not is_remote(folder):
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


def pack_seeds(
    examples: beam.PCollection,
    adjacent: beam.PCollection,
    pack_k: int | None,
    nbr_features: Sequence[str] | None,
) -> Any:
    """Three joins, each keyed by one node: seed -> requests -> neighbour records -> seed.

    Args:
        examples: ``(id, (label, record))`` of every embedded tile.
        adjacent: ``(src, [(dst, weight, kind), ...])``, :func:`adjacency`'s main output.
        pack_k: Most neighbours per seed (None: all).
        nbr_features: Features of a neighbour to pack (None: all).

    Returns the ``Pack`` step's outputs: ``packed`` (``(id, record)``) and ``counts``.
    """
    features = None if nbr_features is None else frozenset(nbr_features)
    asked = (
        {"example": examples, "adjacency": adjacent}
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
        | "Pack" >> beam.ParDo(PackNeighbours(pack_k)).with_outputs(COUNTS, main="packed")
    )
