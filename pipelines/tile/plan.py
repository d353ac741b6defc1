"""The Tile job's planning: a scene into blocks of tiles, and blocks dealt into shards.

A block is a small task (scene, window, tile positions), so only tasks, never
pixels, are grouped; the shard a block goes to follows from its scene and
position alone, so shard names and contents do not depend on the runner.
"""

from __future__ import annotations

import collections
import hashlib
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from minewatch.errors import SceneError
from minewatch.labels import FrameLabel
from minewatch.rasters import Block, SceneReader, plan_blocks
from minewatch.scenes import SceneRef
from pipelines.tile.accounting import COUNTS, DEAD, NS, dead_row
from pipelines.tile.options import TileConfig

__all__ = [
    "BlockTask",
    "GroupBlocksIntoShards",
    "PlanScene",
    "scene_reader",
]

# -- planning ----------------------------------------------------------------------


@dataclass(frozen=True)
class BlockTask:
    """A block of one scene to read and cut; small, so it can be shuffled.

    Attributes:
        ref: The scene.
        label: Its frames-CSV row, if any.
        block: The block of tiles.
        shard: Name (without extension) of the tile shard the block's tiles go
            to; ``""`` outside the Tile job (see :class:`GroupBlocksIntoShards`).
    """

    ref: SceneRef
    label: FrameLabel | None
    block: Block
    shard: str = ""


def scene_reader(ref: SceneRef, config: TileConfig) -> SceneReader:
    """The reader of a scene or frame with the job's bands, resolution and masks."""
    return SceneReader(
        ref,
        bands=None if ref.kind == "frame" else config.bands,
        resolution=config.resolution if ref.kind == "scene" else None,
        resampling=config.resampling,
        nodata=config.nodata,
        cloud=config.cloud if ref.kind == "scene" else None,
        max_pixels=config.max_scene_pixels,
    )


class PlanScene(beam.DoFn):  # type: ignore[misc]
    """Check a scene's headers and split its grid into blocks of tiles."""

    def __init__(self, config: TileConfig) -> None:
        self._config = config
        self._rejected = Metrics.counter(NS, "inputs_dead_lettered")
        self._planned = Metrics.counter(NS, "tiles_planned")

    def process(self, item: tuple[SceneRef, FrameLabel | None]) -> Iterator[Any]:
        """Yield BlockTasks; a scene that cannot be read goes to ``dead``."""
        ref, label = item
        c = self._config
        try:
            with scene_reader(ref, c) as reader:
                assert reader.grid is not None
                height, width = reader.grid.height, reader.grid.width
        except SceneError as exc:
            self._rejected.inc()
            yield TaggedOutput(COUNTS, (ref.scene_id, collections.Counter(failed=1)))
            yield TaggedOutput(
                DEAD, dead_row(ref.source, str(exc), "input", ref.scene_id, stage="open")
            )
            return
        blocks = list(plan_blocks(height, width, c.tile_size, c.step, c.edge, c.block_tiles))
        planned = sum(b.num_tiles for b in blocks)
        self._planned.inc(planned)
        yield TaggedOutput(COUNTS, (ref.scene_id, collections.Counter(planned=planned)))
        for block in blocks:
            yield BlockTask(ref, label, block)


#: Planned tiles per shard, as a share of ``--records-per-shard``. Blocks land in
#: shards by a hash, so shard sizes scatter around the mean; a mean below the cap
#: keeps most shards in one file (a shard that reaches the cap rolls over into a
#: part file, so the cap always holds).
_SHARD_FILL = 0.8


def _stable_hash(text: str) -> int:
    """A 64-bit hash of ``text`` that is the same in every process and run.

    Python's ``hash`` of a string is salted per process, so it cannot place
    records in files.
    """
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def _shard_count(planned: int, records_per_shard: int) -> int:
    """Tile shards of a job that plans ``planned`` tiles (at least 1)."""
    return max(1, math.ceil(planned / (_SHARD_FILL * records_per_shard)))


def _key_by_shard(task: BlockTask, planned: int, records_per_shard: int) -> tuple[int, BlockTask]:
    n = _shard_count(planned, records_per_shard)
    index = _stable_hash(f"{task.ref.scene_id}:{task.block.row}:{task.block.col}") % n
    return index, replace(task, shard=f"tiles-{index:05d}-of-{n:05d}")


def _blocks_in_order(item: tuple[int, Iterable[BlockTask]]) -> Iterator[BlockTask]:
    """A shard's blocks by scene and position: the order its tiles are written in."""
    _, tasks = item
    yield from sorted(tasks, key=lambda t: (t.ref.scene_id, t.block.row, t.block.col))


class GroupBlocksIntoShards(beam.PTransform):  # type: ignore[misc]
    """Deal block tasks into tile shards; emit each shard's blocks together, in order.

    The number of shards follows from the planned tiles of the whole job
    (:func:`_shard_count`), and a block's shard from a hash of its scene id and
    position, so the same inputs and options give the same shards, each with
    the same blocks, whatever the runner's bundles. Only the small block tasks
    are grouped; the blocks of one shard come out of one element, consecutively,
    so the cut and write steps fused after it see them in that order.

    Args:
        records_per_shard: Most tiles per shard file.

    Returns (from ``expand``):
        The block tasks with :attr:`BlockTask.shard` set.
    """

    def __init__(self, records_per_shard: int) -> None:
        super().__init__()
        self._max = records_per_shard

    def expand(self, tasks: beam.PCollection) -> beam.PCollection:
        """Count the planned tiles, key each block by its shard, group, sort."""
        planned = (
            tasks
            | "PlannedTiles" >> beam.Map(lambda t: t.block.num_tiles)
            | "SumPlanned" >> beam.CombineGlobally(sum)
        )
        return (
            tasks
            | "KeyByShard" >> beam.Map(_key_by_shard, beam.pvalue.AsSingleton(planned), self._max)
            | "GroupShards" >> beam.GroupByKey()
            | "BlocksInOrder" >> beam.FlatMap(_blocks_in_order)
        )
