"""The Tile job's accounting: dead-letter rows, per-scene outcomes, band statistics, counters.

Every input ends tiled or dead-lettered, and every planned tile written or
dropped with a reason; the counts that prove it (``stats.json``) are made here.
The output tags (:data:`DEAD`, :data:`COUNTS`, ...) are shared by every step of
the job and by the Infer and Stream jobs, which reuse its per-scene code.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterable, Iterator
from typing import Any

import apache_beam as beam
from apache_beam.pvalue import TaggedOutput

from minewatch.bandstats import BandStats
from pipelines.combiners import SumCounters

__all__ = [
    "BAND_STATS",
    "COUNTS",
    "DEAD",
    "LABEL_HITS",
    "NS",
    "SHARDS",
    "AccountScenes",
    "MergeBandStats",
    "dead_row",
    "job_counters",
]

log = logging.getLogger(__name__)

NS = "minewatch.tile"
DEAD = "dead"
COUNTS = "counts"
BAND_STATS = "band_stats"
SHARDS = "shards"
LABEL_HITS = "label_hits"


def dead_row(
    input: str, reason: str, kind: str, scene_id: str = "", tile_id: str = "", stage: str = ""
) -> dict[str, str]:
    """One row of the ``dead_letter`` table (:func:`minewatch.tables.dead_letter_schema`)."""
    return {
        "input": input,
        "reason": reason,
        "kind": kind,
        "scene_id": scene_id,
        "tile_id": tile_id,
        "stage": stage,
    }


class MergeBandStats(beam.CombineFn):  # type: ignore[misc]
    """Per-band statistics of every block, merged into the job's (``band_stats`` of stats.json)."""

    def create_accumulator(self) -> BandStats:
        """No band seen yet."""
        return BandStats({})

    def add_input(self, acc: BandStats, stats: BandStats) -> BandStats:
        """Fold one block's statistics in."""
        acc.merge(stats)
        return acc

    def merge_accumulators(self, accs: Iterable[BandStats]) -> BandStats:
        """Fold partial merges together."""
        out = BandStats({})
        for acc in accs:
            out.merge(acc)
        return out

    def extract_output(self, acc: BandStats) -> dict[str, dict[str, float]]:
        """Mean, deviation and counts per band."""
        return acc.summary()


def _scene_outcome(item: tuple[str, dict[str, int]]) -> Iterator[Any]:
    """Decide per scene whether it was tiled; a scene with no tile is dead-lettered."""
    scene_id, counts = item
    if not scene_id:  # job-level counts (discovery rejections, scenes seen)
        yield counts
        return
    out = collections.Counter({k: v for k, v in counts.items() if k != "failed"})
    if counts.get("failed"):
        out["inputs_dead_lettered"] += 1
    elif counts.get("written", 0) > 0:
        out["inputs_tiled"] += 1
    else:
        out["inputs_dead_lettered"] += 1
        dropped = {k.split(".", 1)[1]: v for k, v in counts.items() if k.startswith("dropped.")}
        detail = ", ".join(f"{v} {k}" for k, v in sorted(dropped.items())) or "no tile planned"
        yield TaggedOutput(
            DEAD, dead_row(scene_id, f"no tile kept ({detail})", "input", scene_id, stage="account")
        )
    yield out


class AccountScenes(beam.PTransform):  # type: ignore[misc]
    """Per-scene counts to job totals; scenes that kept no tile become dead letters.

    Returns (from ``expand``): ``(totals, dead_rows)``: a one-element PCollection of
    the job's counts, and the dead-letter rows of scenes without a tile.
    """

    def expand(self, counts: beam.PCollection) -> tuple[beam.PCollection, beam.PCollection]:
        """Combine per scene, decide each scene's outcome, combine for the job."""
        outcome = (
            counts
            | "CountPerScene" >> beam.CombinePerKey(SumCounters())
            | "SceneOutcome" >> beam.FlatMap(_scene_outcome).with_outputs(DEAD, main="counts")
        )
        totals = outcome.counts | "CountJob" >> beam.CombineGlobally(SumCounters())
        return totals, outcome[DEAD]


def job_counters(result: Any) -> dict[str, int]:
    """The job's Beam counters (namespace :data:`NS`) by name; empty where a runner has none."""
    out: dict[str, int] = {}
    try:
        for counter in result.metrics().query()["counters"]:
            if counter.key.metric.namespace == NS:
                value = counter.committed if counter.committed is not None else counter.attempted
                out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value)
    except Exception as exc:  # some runners report no metrics; the stats file stands
        log.warning("could not read Beam counters: %s", exc)
    return out
