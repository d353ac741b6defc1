"""Streaming mode: watch a folder (or GCS notifications), label each new scene once.

Graph::

    PeriodicImpulse ─ Watch (state: units and their stats) ─┐
    Pub/Sub ─ GcsNotifications (state: objects per folder) ──┴─ Dedup (state per source)
        ─ Prepare (ledger check; plan, cut, refuse) ─ RunInference ─ Tables ─┬─ Record
                                                            │                 │
                   LinkArea (state per area: its scenes) ◄──┤                 ▼
                   Window (camera, minute) ─ Summarise ◄────┘        ledger (TABLES_DIR/_ledger)

* **Watch**: every ``poll_seconds`` the glob is listed. Files are grouped into
  *units* as ``minewatch tile`` groups them (:func:`minewatch.scenes.group_files`):
  a multiband file or a camera frame is a unit, so is a folder of single-band
  files ``PREFIX_BAND.ext``. A unit is *stable* when the size and mtime of each
  of its files held for a poll interval; a band folder is also *complete* once
  it holds every band the served model reads (or after ``band_wait`` seconds).
* **Dedup**: a stateful DoFn keyed by source passes each unit stat once per
  run; the durable ledger (checked in Prepare) skips, after a restart or a
  copy of the same bytes, every unit already labelled or dead-lettered.
* **Label**: the batch job's per-scene code tiles the unit (:class:`PlanScene`,
  :class:`CutTiles`, :class:`ExampleMaker`); Beam's ``RunInference`` runs the
  SavedModel the unit was tiled for (:class:`StreamModelHandler`); the batch
  job's :class:`WriteSceneOutputs` writes the same files as ``minewatch infer``.
* **Sites**: :class:`LinkArea` is keyed by area: Beam runs one key at a time, so
  two workers never rewrite one area's ``sites`` file at once; the area's
  scenes live in keyed state, backed by ``_ledger/areas/`` for restarts.
* **Frames**: per-frame ``frame_labels`` rows and ``frame_summaries`` rows per
  camera and event-time window (the frame's timestamp), with a stated
  allowed lateness; later frames are dead-lettered, never dropped silently.
* **BigQuery** (``--bigquery``): the rows of each unit, area or frame window
  are upserted as they come (:class:`pipelines.bigquery.UpsertRows`, one step
  per branch), with the keys a re-linked area no longer has deleted.
* **Ledger**: one small file per finished unit, merged every ``compact_every``
  polls into at most 256 bucket files (:func:`~.ledger.compact_ledger`).

Its steps live by concept: :mod:`.sources` (**Watch**, notifications and
**Dedup**), :mod:`.ledger` (the ledger and **Record**), :mod:`.models` (model
following and serving), :mod:`.labelling` (**Label** and **Sites**),
:mod:`.frames` (**Frames**), :mod:`.metrics` (counters); :mod:`.options`
declares and checks the options.
The guarantees and limits are in ``docs/streaming.md``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import posixpath
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, RunInference

from minewatch.arguments import parse
from minewatch.paths import is_remote
from minewatch.registry import resolve_model
from minewatch.tables import (
    INFER_TABLES,
    dead_letter_schema,
    frame_summaries_schema,
    write_geoparquet,
)
from pipelines.stream.frames import StampFrames, SummariseFrames
from pipelines.stream.labelling import (
    AREAS,
    BIGQUERY,
    DONE,
    FRAMES,
    LinkArea,
    PrepareScene,
    WriteTables,
    failed_inference,
)
from pipelines.stream.ledger import RecordInLedger, ledger_entries
from pipelines.stream.metrics import bound_local_metrics, read_counters
from pipelines.stream.models import StreamModelHandler
from pipelines.stream.options import STREAM_ARGS, StreamConfig, stream_config
from pipelines.stream.sources import DedupFiles, GcsNotifications, StableInput, WatchFiles

__all__ = ["STREAM_TABLES", "StreamScenes", "run", "run_stream"]

log = logging.getLogger(__name__)
#: The tables a stream writes: the Infer tables plus per-window frame summaries.
STREAM_TABLES = {**INFER_TABLES, "frame_summaries": frame_summaries_schema}


def _report(entry: dict[str, Any]) -> dict[str, Any]:
    log.info(
        "%s %s (%s tiles, model %s, %.1f s after it landed)",
        entry["status"],
        entry["path"],
        entry.get("tiles", 0),
        entry.get("model_version"),
        entry["done"] - entry["mtime"],
    )
    return entry


def _notification_dead(row: dict[str, str], out: str) -> None:
    name = hashlib.sha1(row["input"].encode() + row["reason"].encode()).hexdigest()
    write_geoparquet(
        posixpath.join(out, "dead_letter", f"notify-{name}.parquet"),
        [row],
        "dead_letter",
        dead_letter_schema(),
    )


class StreamScenes(beam.PTransform):  # type: ignore[misc]
    """Watch (or read notifications), deduplicate and label units; yields ledger entries.

    Args:
        config: The stream's options.
        run_id: This run's id (ledger entries, BigQuery staging tables).
        start: Wall-clock time of the first poll (seconds since the epoch).
        bigquery_client: With ``config.bigquery``, a client to use instead of
            ``google.cloud.bigquery.Client`` (tests); None in production.
    """

    def __init__(
        self, config: StreamConfig, run_id: str, start: float, bigquery_client: Any = None
    ) -> None:
        super().__init__()
        self._config = config
        self._run_id = run_id
        self._start = start
        self._bigquery_client = bigquery_client

    def _units(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        from apache_beam.transforms.periodicsequence import PeriodicImpulse

        c = self._config
        if c.subscription:
            notes = (
                pbegin
                | "Notifications"
                >> beam.io.ReadFromPubSub(subscription=c.subscription, with_attributes=True)
                | "Units" >> GcsNotifications(c)
            )
            notes["dead"] | "NotificationDeadLetter" >> beam.Map(_notification_dead, out=c.out)
            return notes["units"]
        stops = [1e13]
        if c.max_polls is not None:
            # PeriodicImpulse fires at start + k * interval for every time before stop.
            stops.append(self._start + (c.max_polls - 0.5) * c.poll_seconds)
        if c.duration is not None:
            stops.append(self._start + c.duration)
        return (
            pbegin
            | "Polls"
            >> PeriodicImpulse(
                start_timestamp=self._start,
                stop_timestamp=min(stops),
                fire_interval=c.poll_seconds,
            )
            | "OneKey" >> beam.Map(lambda t: ("watch", t))
            | "Watch" >> beam.ParDo(WatchFiles(c))
        )

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        """Build the stream."""
        from apache_beam.transforms import window

        c = self._config
        prepared = (
            self._units(pbegin)
            | "KeyBySource"
            >> beam.Map(lambda f: (f.source, f)).with_output_types(tuple[str, StableInput])
            | "Dedup" >> beam.ParDo(DedupFiles())
            | "Prepare"
            >> beam.ParDo(PrepareScene(c, self._run_id)).with_outputs(DONE, main="stacks")
        )
        first = resolve_model(c.registry)
        # One scene per model call, batched by the scene's own stack: BatchElements
        # stamps its batches at the end of the global window, which a streaming
        # DirectRunner releases only when the stream stops (the same stall upstream,
        # on Prism: https://github.com/apache/beam/pull/34781).
        handler = KeyedModelHandler(
            StreamModelHandler(first.saved_model, c.batch_size)
        ).with_no_batching()
        predicted, failed = (
            prepared.stacks
            | "OnePerCall" >> beam.Map(lambda item: [item])
            | "RunInference" >> RunInference(handler).with_exception_handling()
        )
        tables = predicted | "Tables" >> beam.ParDo(WriteTables(c)).with_outputs(
            DONE, FRAMES, AREAS, BIGQUERY
        )
        linked = tables[AREAS] | "LinkArea" >> beam.ParDo(LinkArea(c)).with_outputs(
            BIGQUERY, main="entries"
        )
        stamped = tables[FRAMES] | "EventTime" >> beam.ParDo(StampFrames(c)).with_outputs(
            DONE, main="frames"
        )
        windows = (
            stamped.frames
            | "FrameWindows"
            >> beam.WindowInto(
                window.FixedWindows(c.frame_window), allowed_lateness=c.allowed_lateness
            )
            | "Summarise" >> beam.ParDo(SummariseFrames(c)).with_outputs(BIGQUERY, main="entries")
        )
        summarised = windows.entries | "Global" >> beam.WindowInto(window.GlobalWindows())
        if c.bigquery:
            from pipelines.bigquery import UpsertRows

            upsert = UpsertRows(c.bigquery, self._run_id, test_client=self._bigquery_client)
            # One upsert step per branch, not one after a Flatten (see Record below).
            for name, rows in (
                ("Tables", tables[BIGQUERY]),
                ("Sites", linked[BIGQUERY]),
                ("Frames", windows[BIGQUERY]),
            ):
                _ = rows | f"BigQuery{name}" >> beam.ParDo(upsert)
        # One Record per branch: on Beam 2.77's streaming DirectRunner a Flatten
        # holds its output until the stream stops (measured), which would delay
        # every ledger entry to the end of the run. Streaming on Python's local
        # runner is incomplete upstream: https://github.com/apache/beam/issues/21987
        finished = {
            "Dead": prepared[DONE],
            "Failed": failed.failed_inferences
            | "FailedInference" >> beam.FlatMap(failed_inference),
            "Labelled": tables[DONE],
            "Linked": linked.entries,
            "Late": stamped[DONE],
            "Frames": summarised,
        }
        reports = [
            pcoll
            | f"Record{name}" >> beam.ParDo(RecordInLedger(c))
            | f"Report{name}" >> beam.Map(_report)
            for name, pcoll in finished.items()
        ]
        return reports[0]


def _ensure_tables(out: str) -> None:
    # Queries over a table with no row yet answer "no rows" (as after 'minewatch infer').
    for table, schema in STREAM_TABLES.items():
        folder = posixpath.join(out, table)
        if not FileSystems.exists(folder):
            write_geoparquet(posixpath.join(folder, "empty.parquet"), [], table, schema())


def run_stream(
    config: StreamConfig,
    beam_args: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
    bigquery_client: Any = None,
) -> dict[str, Any] | None:
    """Run the stream until ``max_polls`` or ``duration``; return what it did.

    Args:
        config: The stream's options.
        beam_args: Beam options; ``--streaming`` is added when missing.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline and do not run it.
        bigquery_client: With ``config.bigquery``, a client to use instead of
            ``google.cloud.bigquery.Client``, as Beam's ``WriteToBigQuery``
            takes a ``test_client``; None in production.

    Returns:
        ``{"run_id", "polls", "labelled", "dead_lettered", "late", "skipped",
        "model_versions", "latency_s", "entries", "counters"}`` for this run (None
        on a test pipeline); ``latency_s`` is file mtime to ledger entry (rows
        queryable), per unit. The entries and the counts derived from them come
        from the ledger; ``polls``, ``skipped`` and ``counters`` from Beam's
        counters (0 where a runner reports none; on the DirectRunner they were
        lost to a ``RecursionError`` before :func:`bound_local_metrics`).

    Raises:
        ValueError: Neither ``max_polls`` nor ``duration`` with a DirectRunner
            (it would never stop), or a poll interval, window or lateness that
            is not positive.
    """
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        SetupOptions,
        StandardOptions,
    )

    if config.poll_seconds <= 0:
        raise ValueError("poll_seconds must be positive")
    if config.frame_window <= 0 or config.allowed_lateness < 0:
        raise ValueError("frame_window must be positive and allowed_lateness not negative")
    if config.compact_every < 1:
        raise ValueError("compact_every must be at least 1")
    args = list(beam_args)
    if "--streaming" not in args:
        args.append("--streaming")
    options = PipelineOptions(args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    local = "Direct" in str(runner)
    if local and config.max_polls is None and config.duration is None:
        raise ValueError("give max_polls or duration: a local stream would never stop")
    if local:
        bound_local_metrics()
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    pipeline = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
    if not is_remote(config.out):
        os.makedirs(config.out, exist_ok=True)
    _ensure_tables(config.out)
    # The first poll waits a little: PeriodicImpulse fires the polls it missed
    # while the runner started all at once, and bunched polls prove nothing stable.
    start = time.time() + 2.0
    _ = pipeline | "Stream" >> StreamScenes(config, run_id, start, bigquery_client)
    if test_pipeline is not None:
        return None
    result = pipeline.run()
    result.wait_until_finish()
    counters = read_counters(result)
    entries = [e for e in ledger_entries(config.out) if e.get("run_id") == run_id]
    entries.sort(key=lambda e: e["done"])
    return {
        "run_id": run_id,
        "polls": counters.get("polls", 0),
        "labelled": sum(e["status"] == "labelled" for e in entries),
        "dead_lettered": sum(e["status"] == "dead" for e in entries),
        "late": sum(e["status"] == "late" for e in entries),
        "skipped": counters.get("units_already_done", 0),
        "model_versions": sorted({e["model_version"] for e in entries if e.get("model_version")}),
        "latency_s": [round(e["done"] - e["mtime"], 2) for e in entries],
        "entries": entries,
        "counters": counters,
    }


def run(
    argv: Sequence[str] | None = None,
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any] | None:
    """Run the stream from command-line arguments, ours and Beam's (Beam's ``run(argv)``).

    Args:
        argv: Arguments as on the command line after ``minewatch stream``:
            :data:`~pipelines.stream.options.STREAM_ARGS`, Beam options.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.

    Returns:
        See :func:`run_stream`.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
    """
    params, rest = parse(STREAM_ARGS, argv, "minewatch stream")
    config, beam_args = stream_config(params, rest)
    return run_stream(config, beam_args, save_main_session, test_pipeline)
