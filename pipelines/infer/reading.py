"""Reading a tile job's output: its TFRecord shards into the model's examples, its manifests.

A tile-job folder given as INPUT is read shard by shard (:class:`ReadShards`);
a truncated or corrupt shard is dead-lettered (kind ``shard``) from where it
breaks, and the job goes on. Its records do not carry their scene's path, so
the manifests are read for it (:func:`scene_sources`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import posixpath
from collections.abc import Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from minewatch.spec import Tile, decode_tiles
from minewatch.tfrecord import read_records
from pipelines.infer.serving import NS, ExampleMaker
from pipelines.tile.accounting import COUNTS, DEAD, dead_row
from pipelines.tile.cut import TileBatch

__all__ = ["ReadShards", "is_tile_dir", "scene_sources"]


def _decode_chunk(
    path: str, records: Sequence[bytes], make: ExampleMaker
) -> tuple[list[Any], collections.Counter[str]]:
    """Decode a chunk of tile records; return what to emit, and the tile counts.

    tfx-bsl decodes the chunk in one call (per-record calls cost more than the
    model here); a chunk that fails is decoded record by record so that only
    its bad records are dead-lettered. Emits, per scene in the chunk, the
    example ``make`` makes of its tiles and their refusals (as
    :class:`~pipelines.infer.serving.ToExamples` would). Pure: it runs on
    :class:`ReadShards`' decoding thread, which must not touch Beam's state.
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
        # The record does not carry its scene's path: WriteSceneOutputs looks it up by id.
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
        self._corrupt = Metrics.counter(NS, "shards_dead_lettered")
        self._tiles = Metrics.counter(NS, "tiles_in")
        self._refused = Metrics.counter(NS, "tiles_dead_lettered")

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


def scene_sources(match: Any) -> list[tuple[str, str]]:
    """The distinct ``(scene_id, source)`` pairs of one manifest file (a ``fileio`` match).

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
