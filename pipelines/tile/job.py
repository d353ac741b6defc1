"""The Tile job: scenes and camera frames into georeferenced, labelled tiles.

Graph (every step labelled)::

    inputs ─ Discover ─┬─ (frames CSV join) ─ Plan ─ Shards ─ Cut ─ Write ─ manifest
                       └─ dead letter         │                 │      └─ shards ─┐
                                              └─ per-scene counts ┴─ band stats ─ Finalize
                                                                                (stats.json,
                                                                                 shard rename)

Scale: a scene is split into blocks of tiles (``--block-tiles``); blocks are
dealt into shards by a hash of their scene and position (about 80% of
``--records-per-shard`` planned tiles per shard, so scenes mix within a shard
and a big scene spreads over many), and the shards go to the workers. A worker
reads its shard's blocks one at a time, in a fixed order, cuts the tiles and
writes them to the shard's TFRecord file inside the same fused stage, so tile
pixels never pass through a shuffle and no process holds a scene. Only small
records (block tasks, counts, statistics, file names) are grouped.

Reproducible: a shard's name (``tiles-SSSSS-of-NNNNN.tfrecord``), its tiles and
their order follow from the inputs and the options alone, not from how the
runner cuts bundles or how many workers there are. The manifest and dead-letter
parts are named by a hash of their bytes, rows sorted (which rows share a part
follows the bundles).

Its steps live by concept: :mod:`.discover` (inputs into scenes and frames,
frame labels), :mod:`.plan` (blocks and shards), :mod:`.cut` (reading blocks,
cutting and labelling tiles), :mod:`.write` (shards, manifest, dead letter, the
commit), :mod:`.accounting` (dead-letter rows, counts, band statistics); this
module holds the composites and ``run``.

Accounting (written to ``stats.json`` and checked by the tests)::

    inputs.total  = inputs.tiled + inputs.dead_lettered
    tiles.planned = tiles.written + sum(tiles.dropped.values())
"""

from __future__ import annotations

import logging
import os
import posixpath
import uuid
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from minewatch.errors import ConfigError
from minewatch.paths import is_remote
from minewatch.tables import dead_letter_schema, manifest_schema
from pipelines.options import run_pipeline
from pipelines.tile.accounting import (
    BAND_STATS,
    COUNTS,
    DEAD,
    LABEL_HITS,
    SHARDS,
    AccountScenes,
    MergeBandStats,
    dead_row,
    job_counters,
)
from pipelines.tile.cut import CutTiles
from pipelines.tile.discover import (
    DiscoverScenes,
    ParseFrameLabels,
    attach_frame_label,
    label_refs,
    unused_labels,
)
from pipelines.tile.options import TileConfig
from pipelines.tile.plan import GroupBlocksIntoShards, PlanScene
from pipelines.tile.write import WriteParquetParts, WriteShards, finalize, output_paths

__all__ = ["CutScenes", "TileScenes", "prepare_out", "run", "run_tile"]

log = logging.getLogger(__name__)


class CutScenes(beam.PTransform):  # type: ignore[misc]
    """Discover, check and cut scenes and frames into tile batches (no writing).

    The part of the Tile job that the inference job reuses: it returns the tile
    batches (fused with whatever consumes them) and small side outputs.

    Args:
        config: The job's options.
        label_rejections: ``(feature, reason)`` of label features refused at launch.
        records_per_shard: Group the blocks into tile shards of at most this
            many tiles (:class:`GroupBlocksIntoShards`; the Tile job), so each
            batch names its shard and a shard's batches come consecutively.
            Default None: blocks are spread one by one (the inference job).

    Returns (from ``expand``):
        A dict of PCollections: ``batches`` (:class:`TileBatch`), ``dead``
        (dead-letter rows), ``counts`` (``(scene_id, Counter)``), ``band_stats``
        and ``refs`` (the :class:`SceneRef` of every scene that was planned).
    """

    def __init__(
        self,
        config: TileConfig,
        label_rejections: Sequence[tuple[str, str]] = (),
        records_per_shard: int | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._label_rejections = list(label_rejections)
        self._records_per_shard = records_per_shard

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        """Build discovery, planning and cutting."""
        c = self._config
        dead: list[beam.PCollection] = []
        counts: list[beam.PCollection] = []
        found = (
            pbegin
            | "Inputs" >> beam.Create([tuple(c.inputs)])
            | "Discover"
            >> beam.ParDo(DiscoverScenes(c.frame_pattern, c.stac_bands)).with_outputs(
                DEAD, COUNTS, main="refs"
            )
        )
        dead.append(found[DEAD])
        counts.append(found[COUNTS])
        if c.label_source == "csv" and c.labels:
            items = self._join_frame_labels(pbegin, found.refs, dead)
        else:
            items = found.refs | "NoFrameLabels" >> beam.Map(lambda ref: (ref, None))
        if self._label_rejections:
            dead.append(
                pbegin
                | "LabelRejections" >> beam.Create(self._label_rejections)
                | "LabelDeadLetter"
                >> beam.MapTuple(
                    lambda feature, reason: dead_row(feature, reason, "label", stage="labels")
                )
            )
        planned = items | "Plan" >> beam.ParDo(PlanScene(c)).with_outputs(
            DEAD, COUNTS, main="tasks"
        )
        dead.append(planned[DEAD])
        counts.append(planned[COUNTS])
        if self._records_per_shard:
            tasks = planned.tasks | "Shards" >> GroupBlocksIntoShards(self._records_per_shard)
        else:
            # Blocks of one scene spread over all workers; only block tasks are shuffled.
            tasks = planned.tasks | "Spread" >> beam.Reshuffle()
        cut = tasks | "Cut" >> beam.ParDo(CutTiles(c)).with_outputs(
            DEAD, COUNTS, BAND_STATS, LABEL_HITS, main="batches"
        )
        dead.append(cut[DEAD])
        counts.append(cut[COUNTS])
        if c.label_source == "vector":
            dead.append(self._unused_polygons(pbegin, cut[LABEL_HITS]))
        return {
            "batches": cut.batches,
            "dead": dead | "CutDeadLetters" >> beam.Flatten(),
            "counts": counts | "CutCounts" >> beam.Flatten(),
            "band_stats": cut[BAND_STATS],
            "refs": found.refs,
        }

    def _unused_polygons(
        self, pbegin: beam.pvalue.PBegin, hits: beam.PCollection
    ) -> beam.PCollection:
        """Dead-letter rows for label polygons that overlap no block of any scene.

        Each label file is read again in a worker for its polygons' refs, and
        joined with the refs the blocks reported, so no process holds more than
        one file's refs and the blocks' hits meet them in a shuffle.
        """
        c = self._config
        files = [c.labels] if c.labels else [path for _, path in c.scene_labels]
        refs = (
            pbegin
            | "LabelFiles" >> beam.Create(sorted(set(files)))
            | "LabelRefs" >> beam.FlatMap(label_refs, config=c)
            | "KeyRefs" >> beam.Map(lambda ref: (ref, True))
        )
        seen = hits | "KeyHits" >> beam.Map(lambda ref: (ref, True))
        return (
            {"polygon": refs, "hit": seen}
            | "JoinHits" >> beam.CoGroupByKey()
            | "Unused" >> beam.FlatMap(unused_labels)
        )

    def _join_frame_labels(
        self, pbegin: beam.pvalue.PBegin, refs: beam.PCollection, dead: list[beam.PCollection]
    ) -> beam.PCollection:
        c = self._config
        assert c.labels is not None
        rows = (
            pbegin
            | "ReadFrameLabels" >> beam.io.ReadFromText(c.labels, skip_header_lines=1)
            | "ParseFrameLabels"
            >> beam.ParDo(ParseFrameLabels(c.labels, c.csv_columns)).with_outputs(DEAD, main="rows")
        )
        dead.append(rows[DEAD])
        frames = (
            refs
            | "FramesOnly" >> beam.Filter(lambda ref: ref.kind == "frame")
            | "KeyFrames" >> beam.Map(lambda ref: (ref.source, ref))
        )
        scenes = (
            refs
            | "ScenesOnly" >> beam.Filter(lambda ref: ref.kind != "frame")
            | "ScenesUnlabelled" >> beam.Map(lambda ref: (ref, None))
        )
        joined = (
            {"ref": frames, "label": rows.rows}
            | "JoinFrameLabels" >> beam.CoGroupByKey()
            | "AttachFrameLabels"
            >> beam.FlatMap(attach_frame_label).with_outputs(DEAD, main="items")
        )
        dead.append(joined[DEAD])
        return (scenes, joined.items) | "ScenesAndFrames" >> beam.Flatten()


class TileScenes(beam.PTransform):  # type: ignore[misc]
    """Tile scenes and frames into TFRecords, a manifest, dead letters and stats.

    Example:
        >>> with beam.Pipeline() as p:  # doctest: +SKIP
        ...     p | "Tile" >> TileScenes(TileConfig(inputs=("scenes/",), out="out"))

    Args:
        config: The job's options.
        label_rejections: ``(feature, reason)`` of label features refused at launch.
        header: Extra fields for ``stats.json`` (classes, options, version).
    """

    def __init__(
        self,
        config: TileConfig,
        label_rejections: Sequence[tuple[str, str]] = (),
        header: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self._config = config
        self._label_rejections = list(label_rejections)
        self._header = header or {}

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        """Build the job; return the manifest rows, dead-letter rows and stats."""
        c = self._config
        temp_dir = posixpath.join(c.out, f".tmp-{uuid.uuid4().hex[:12]}")
        cut = pbegin | "Cut" >> CutScenes(c, self._label_rejections, c.records_per_shard)
        written = cut["batches"] | "WriteTiles" >> beam.ParDo(
            WriteShards(temp_dir, c.records_per_shard)
        ).with_outputs(SHARDS, main="rows")
        manifest_parts = written.rows | "WriteManifest" >> beam.ParDo(
            WriteParquetParts(temp_dir, "manifest", manifest_schema())
        )
        totals, outcome_dead = cut["counts"] | "Account" >> AccountScenes()
        band_stats = cut["band_stats"] | "BandStats" >> beam.CombineGlobally(MergeBandStats())
        dead_rows = (cut["dead"], outcome_dead) | "AllDeadLetters" >> beam.Flatten()
        dead_parts = dead_rows | "WriteDeadLetter" >> beam.ParDo(
            WriteParquetParts(temp_dir, "dead_letter", dead_letter_schema())
        )
        files = (written[SHARDS], manifest_parts, dead_parts) | "AllFiles" >> beam.Flatten()
        stats = (
            pbegin
            | "FinalizeTrigger" >> beam.Create([None])
            | "Finalize"
            >> beam.Map(
                finalize,
                files=beam.pvalue.AsList(files),
                counts=beam.pvalue.AsSingleton(totals),
                band_stats=beam.pvalue.AsSingleton(band_stats),
                out=c.out,
                temp_dir=temp_dir,
                header=self._header,
            )
        )
        return {"manifest": written.rows, "dead_letter": dead_rows, "stats": stats}


def prepare_out(out: str, overwrite: bool) -> None:
    """Make ``out`` ready for a tile job: refuse an earlier run's outputs unless ``overwrite``.

    With ``overwrite``, the earlier outputs and the temporary folders of runs
    killed before they committed are removed.

    Raises:
        ConfigError: ``out`` holds an earlier run's outputs and ``overwrite`` is off.
    """
    import shutil

    paths = output_paths(out)
    existing = [p for p in paths.values() if FileSystems.exists(p)]
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds a tile job's output; add --overwrite to replace it", "--out"
        )
    for p in existing:
        if is_remote(p):
            FileSystems.delete([p])
        elif os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
    if overwrite and not is_remote(out) and os.path.isdir(out):
        for name in os.listdir(out):
            if name.startswith(".tmp-") and os.path.isdir(os.path.join(out, name)):
                shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    if not is_remote(out):
        os.makedirs(out, exist_ok=True)


def run_tile(
    config: TileConfig,
    beam_args: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
    label_rejections: Sequence[tuple[str, str]] = (),
    header: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Build and run the Tile job.

    Args:
        config: The job's options (checked by :func:`~pipelines.tile.options.tile_config`).
        beam_args: Beam pipeline options, passed through unchanged.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.
        label_rejections: Label features refused at launch, for the dead letters.
        header: Extra fields for ``stats.json``.

    Returns:
        The contents of ``stats.json`` plus the job's Beam counters, or None when
        building on ``test_pipeline`` or for a ``--dry_run``.

    Raises:
        ConfigError: ``config.out`` holds an earlier run's outputs and
            ``config.overwrite`` is off.
    """
    prepare_out(config.out, config.overwrite)
    stats, result = run_pipeline(
        "Tile" >> TileScenes(config, label_rejections, header),
        beam_args,
        save_main_session,
        test_pipeline,
        output_paths(config.out)["stats"],
    )
    if stats is None:
        return None
    stats["beam_counters"] = job_counters(result)
    return stats


def run(
    argv: Sequence[str] | None = None,
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any] | None:
    """Run the Tile job from command-line arguments, ours and Beam's (Beam's ``run(argv)``).

    Args:
        argv: Arguments as on the command line after ``minewatch tile``:
            inputs, :data:`~pipelines.tile.options.TILE_ARGS`, Beam options.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.

    Returns:
        See :func:`run_tile`.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
    """
    from minewatch.arguments import parse
    from pipelines.tile.options import TILE_ARGS, tile_config

    params, rest = parse(TILE_ARGS, argv, "minewatch tile")
    config, beam_args, rejections, header = tile_config(params, rest)
    return run_tile(config, beam_args, save_main_session, test_pipeline, rejections, header)
