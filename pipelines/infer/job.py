"""The Infer job: label tiles and frames with a SavedModel, find sites, write tables.

Graph::

    scenes, frames ─ CutScenes ─┐                         ┌─ tile_labels (per scene)
    tile TFRecords ─ ReadShards ┴─ RunInference ─ PerScene ─┼─ frame_labels (camera, day)
                                        │                    ├─ probability COG, quicklook
                                        │                    ├─ vessels (--licensed-ports)
                                        │                    └─ LinkSites (per area): sites,
                                        │                       stockpile_series, plots
           dead letters, per-input counts ─ WriteDeadLetter (per input: outcome, file)
                                   every table, with --bigquery ─► WriteTablesToBigQuery

Its steps live by concept: :mod:`.serving` (the model, examples, results per
scene), :mod:`.reading` (tile-job shards), :mod:`.sites` (finding a scene's
sites and vessels), :mod:`.scene_outputs` (writing a scene's tables, raster
and quicklook), :mod:`.linking` (sites across acquisitions) and
:mod:`.accounting` (every input accounted for, the dead letter, the stats).
Failed model batches go to the dead letter with the error. Every row carries
the model version.
"""

from __future__ import annotations

import collections
import posixpath
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.ml.inference.base import RunInference

from minewatch.arguments import parse
from pipelines.combiners import SumCounters
from pipelines.infer.accounting import AccountInputs, dead_key, finish, split_counts
from pipelines.infer.linking import LinkSites
from pipelines.infer.options import INFER_ARGS, InferConfig, infer_config
from pipelines.infer.reading import ReadShards, is_tile_dir, scene_sources
from pipelines.infer.scene_outputs import WriteSceneOutputs, write_frames
from pipelines.infer.serving import (
    ExampleMaker,
    KeyedTileModelHandler,
    TileModelHandler,
    ToExamples,
    by_scene,
    failed_batch,
)
from pipelines.options import run_pipeline
from pipelines.tile.accounting import COUNTS, DEAD
from pipelines.tile.job import CutScenes
from pipelines.tile.options import TileConfig

__all__ = ["InferScenes", "run", "run_infer"]


class InferScenes(beam.PTransform):  # type: ignore[misc]
    """Label scenes, frames or tile records and write the inference tables.

    Args:
        config: The job's options.
        header: Fields for ``infer_stats.json``.
    """

    def __init__(self, config: InferConfig, header: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._config = config
        self._header = header or {}

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        """Build the job."""
        c = self._config
        model = c.model
        tile_dirs = [i for i in c.inputs if is_tile_dir(i)]
        raw = [i for i in c.inputs if i not in tile_dirs]
        examples, dead, counts, scene_paths = [], [], [], []
        if raw:
            size = model.tile_size
            task = model.metadata.get("task", "tile")
            tiling = TileConfig(
                inputs=tuple(raw),
                out=c.out,
                label_source="none",
                bands=model.bands or None if task != "frame" else None,
                tile_size=size,
                stride=c.stride or max(1, size // 2),
                stac_bands=c.stac_bands,
            )
            cut = pbegin | "Cut" >> CutScenes(tiling)
            made = cut["batches"] | "Examples" >> beam.ParDo(ToExamples(model)).with_outputs(
                DEAD, COUNTS, main="ok"
            )
            examples.append(made.ok)
            dead.extend([cut["dead"], made[DEAD]])
            counts.append(made[COUNTS])
            # Per-scene cut counts feed the input accounting; of the job-level ones,
            # only the inputs refused at discovery (the other inputs are per scene).
            counts.append(
                cut["counts"]
                | "CutCounts" >> beam.Filter(lambda kv: kv[0] != "" or "inputs_rejected" in kv[1])
            )
            scene_paths.append(
                cut["refs"] | "RefSources" >> beam.Map(lambda ref: (ref.scene_id, ref.source))
            )
        sources = pbegin | "NoSources" >> beam.Create([])
        if tile_dirs:
            sources = (
                pbegin
                | "Manifests"
                >> beam.Create([posixpath.join(d, "manifest", "*.parquet") for d in tile_dirs])
                | "MatchManifests" >> fileio.MatchAll()
                | "SceneSources" >> beam.FlatMap(scene_sources)
                | "Distinct" >> beam.Distinct()
            )
            # Not ReadAllFromTFRecord: it raises on a truncated or corrupt shard and
            # so fails the job; ReadShards dead-letters the rest of such a shard.
            shards = (
                pbegin
                | "TileShards"
                >> beam.Create([posixpath.join(d, "tiles", "*.tfrecord") for d in tile_dirs])
                | "MatchShards" >> fileio.MatchAll()
                | "SpreadShards" >> beam.Reshuffle()
                | "OpenShards" >> fileio.ReadMatches()
                | "ReadShards"
                >> beam.ParDo(ReadShards(ExampleMaker(model))).with_outputs(
                    DEAD, COUNTS, main="examples"
                )
            )
            examples.append(shards.examples)
            dead.append(shards[DEAD])
            counts.append(shards[COUNTS])
        scene_paths.append(sources)
        handler = KeyedTileModelHandler(TileModelHandler(model.saved_model, c.batch_size))
        predicted, failed = (
            examples
            | "AllExamples" >> beam.Flatten()
            | "RunInference" >> RunInference(handler).with_exception_handling()
        )
        dead.append(failed.failed_inferences | "FailedBatches" >> beam.FlatMap(failed_batch))
        per_scene = (
            predicted
            | "ByScene" >> beam.FlatMap(by_scene)
            | "GroupScene" >> beam.GroupByKey()
            # The step keeps its first label, so a running Dataflow job can be updated.
            | "PerScene"
            >> beam.ParDo(WriteSceneOutputs(c), sources=beam.pvalue.AsDict(sources)).with_outputs(
                COUNTS, DEAD, "frames", "tile_rows", "vessel_rows", main="sites"
            )
        )
        counts.append(per_scene[COUNTS])
        dead.append(per_scene[DEAD])
        frames = (
            per_scene.frames
            | "GroupCameraDay" >> beam.GroupByKey()
            | "WriteFrames" >> beam.Map(write_frames, out=c.out, version=model.version)
            | "FrameRows" >> beam.Map(lambda n: ("", collections.Counter(frame_rows=n)))
        )
        counts.append(frames)
        linked = (
            per_scene.sites
            | "GroupArea" >> beam.GroupByKey()
            | "LinkSites"
            >> beam.ParDo(LinkSites(c)).with_outputs(
                COUNTS, "site_rows", "observation_rows", main="series"
            )
        )
        counts.append(linked[COUNTS])
        if c.bigquery:
            from pipelines.bigquery import WriteTablesToBigQuery

            tables = {
                "tile_labels": per_scene.tile_rows,
                "frame_labels": per_scene.frames | "FrameRowValues" >> beam.Values(),
                "sites": linked.site_rows,
                "site_observations": linked.observation_rows,
                "stockpile_series": linked.series,
                "vessels": per_scene.vessel_rows,
            }
            _ = tables | "BigQuery" >> WriteTablesToBigQuery(
                c.bigquery, run_id=self._header.get("run_id", "")
            )
        dead_rows = dead | "AllDead" >> beam.Flatten()
        split = (
            counts
            | "AllCounts" >> beam.Flatten()
            | "SplitCounts" >> beam.FlatMap(split_counts).with_outputs("scene", main="job")
        )
        by_input = {
            "counts": split.scene,
            "source": (
                scene_paths
                | "AllSources" >> beam.Flatten()
                | "KeySources" >> beam.Map(lambda kv: (("scene", kv[0]), kv[1]))
            ),
            "dead": dead_rows | "KeyDead" >> beam.Map(dead_key),
        }
        accounted = (
            by_input
            | "ByInput" >> beam.CoGroupByKey()
            # Accounts for each input and writes its dead-letter file.
            | "WriteDeadLetter"
            >> beam.ParDo(AccountInputs(c.out, model.version)).with_outputs("rows", main="counts")
        )
        totals = (
            (split.job, accounted.counts)
            | "JobCounts" >> beam.Flatten()
            | "Sum" >> beam.CombineGlobally(SumCounters())
        )
        stats = (
            pbegin
            | "FinishTrigger" >> beam.Create([None])
            | "Finish"
            >> beam.Map(
                finish,
                counts=beam.pvalue.AsSingleton(totals),
                series=beam.pvalue.AsList(linked.series),
                out=c.out,
                header=self._header,
            )
        )
        all_dead = (dead_rows, accounted.rows) | "DeadLetterRows" >> beam.Flatten()
        return {"stats": stats, "dead_letter": all_dead}


def run_infer(
    config: InferConfig,
    beam_args: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any] | None:
    """Build and run the Infer job.

    Args:
        config: The job's options (checked by :func:`~pipelines.infer.options.infer_config`).
        beam_args: Beam pipeline options, passed through unchanged.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.

    Returns:
        The contents of ``infer_stats.json``, or None when building on
        ``test_pipeline`` or for a ``--dry_run``.
    """
    header = {
        "run_id": f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
        "model_version": config.model.version,
        "model": config.model.path,
        "input_paths": list(config.inputs),
        "classes": list(config.model.classes),
        "site_classes": list(config.positive),
        "pictures": config.pictures,
        "dsm": config.dsm,
        "sun": list(config.sun) if config.sun else None,
        "licensed_ports": config.licensed_ports,
        "bigquery": config.bigquery or None,
    }
    stats, _ = run_pipeline(
        "Infer" >> InferScenes(config, header),
        beam_args,
        save_main_session,
        test_pipeline,
        posixpath.join(config.out, "infer_stats.json"),
    )
    return stats


def run(
    argv: Sequence[str] | None = None,
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any] | None:
    """Run the Infer job from command-line arguments, ours and Beam's (Beam's ``run(argv)``).

    Args:
        argv: Arguments as on the command line after ``minewatch infer``:
            inputs, :data:`~pipelines.infer.options.INFER_ARGS`, Beam options.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.

    Returns:
        See :func:`run_infer`.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
    """
    params, rest = parse(INFER_ARGS, argv, "minewatch infer")
    config, beam_args = infer_config(params, rest)
    return run_infer(config, beam_args, save_main_session, test_pipeline)
