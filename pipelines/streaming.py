"""Streaming mode: watch a folder, label each new scene once, write the Infer tables.

Graph::

    PeriodicImpulse ─ Poll ─ WatchFiles (state: last stat per path) ─ stable files
        ─ KeyByPath ─ DedupFiles (state: last stat sent per path) ─ LabelScene ─ Report
                                                                      │
                      ledger (TABLES_DIR/_ledger) ◄── checked before, written after

* **Watch**: every ``poll_seconds`` the glob is listed with Beam's
  ``FileSystems.match``; a file is *stable* when its size and mtime are the same
  as at an earlier poll at least ``poll_seconds`` ago. Files still being
  written wait.
* **Dedup**: a stateful DoFn keyed by path passes each ``(path, size, mtime)``
  once per run; the durable ledger makes the stream skip, after a restart or
  when a file is touched or copied again with the same bytes, every scene
  already labelled or dead-lettered.
* **Label**: the batch job's own per-scene code (:class:`PlanScene`,
  :class:`CutTiles`, :class:`ToExamples`, :class:`TileModelHandler`,
  :class:`PerScene`, :class:`LinkSites`) runs for one scene inside
  :class:`LabelScene`, so rows land in the same files, under the same names,
  as ``minewatch infer`` writes.
* **Model refresh**: the registry's ``current.json`` is resolved again at most
  once per poll; a new version is loaded and labels the later scenes.

The guarantees and limits are in ``docs/streaming.md``.
"""

from __future__ import annotations

import collections
import glob as globlib
import hashlib
import json
import logging
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from minewatch.registry import ModelRef, resolve_model
from minewatch.tables import INFER_TABLES, dead_letter_schema, replace_file, write_geoparquet
from pipelines.batch_inference import (
    InferConfig,
    LinkSites,
    PerScene,
    SceneSites,
    TileModelHandler,
    ToExamples,
    _safe,
)
from pipelines.options import TileConfig
from pipelines.tiling import DEAD, CutTiles, PlanScene, TileBatch, _dead

__all__ = [
    "DedupFiles",
    "LabelScene",
    "StableFile",
    "StreamConfig",
    "StreamScenes",
    "WatchFiles",
    "ledger_entries",
    "run_stream",
]

log = logging.getLogger(__name__)
_NS = "minewatch.stream"
LEDGER = "_ledger"


@dataclass(frozen=True)
class StreamConfig:
    """Options of ``minewatch stream`` besides Beam's.

    Attributes:
        watch: Glob (or folder) of scenes to watch, local or remote.
        registry: A registry (its ``current.json`` is followed) or a model folder.
        out: Tables folder (the ledger lives in ``out/_ledger``).
        poll_seconds: Seconds between two listings. Default 10.
        max_polls: Stop after this many polls; None for no limit.
        duration: Stop after this many seconds; None for no limit.
        stride: Tiling step; half the model's tile size when None.
        batch_size: Most tiles per model call. Default 64.
        concessions: Polygons of licensed areas, or None.
        protected: Polygons of protected areas, or None.
        threshold: Least probability of a cell's winning class. Default 0.5.
        pictures: Draw a quicklook PNG per scene. Default True.
    """

    watch: str
    registry: str
    out: str
    poll_seconds: float = 10.0
    max_polls: int | None = None
    duration: float | None = None
    stride: int | None = None
    batch_size: int = 64
    concessions: str | None = None
    protected: str | None = None
    threshold: float = 0.5
    pictures: bool = True

    @property
    def pattern(self) -> str:
        """The glob to match: a folder means every file in it."""
        if "://" not in self.watch and os.path.isdir(self.watch):
            return posixpath.join(self.watch, "*")
        return self.watch

    def infer_config(self, model: ModelRef, source: str) -> InferConfig:
        """The batch job's options for one scene labelled by ``model``."""
        return InferConfig(
            inputs=(source,),
            out=self.out,
            model=model,
            concessions=self.concessions,
            protected=self.protected,
            stride=self.stride,
            batch_size=self.batch_size,
            threshold=self.threshold,
            pictures=self.pictures,
        )


@dataclass(frozen=True)
class StableFile:
    """A file whose size and mtime held still for a poll interval."""

    path: str
    size: int
    mtime: float
    poll: int

    @property
    def key(self) -> str:
        """Ledger key: ``sha1(path|size|mtime)``."""
        return hashlib.sha1(f"{self.path}|{self.size}|{self.mtime!r}".encode()).hexdigest()


# -- watching ------------------------------------------------------------------------

# State parameters as module-level singletons (Beam's idiom, without calls in defaults).
_SEEN = beam.DoFn.StateParam(ReadModifyWriteStateSpec("seen", PickleCoder()))
_POLLS = beam.DoFn.StateParam(ReadModifyWriteStateSpec("polls", PickleCoder()))
_SENT = beam.DoFn.StateParam(ReadModifyWriteStateSpec("sent", PickleCoder()))


def _match(pattern: str) -> list[tuple[str, int, float]]:
    """``(path, size, mtime)`` of the files matching ``pattern``; hidden files skipped."""
    if "://" not in pattern:
        # Beam's local match does not skip folders or report mtimes on every version.
        found = []
        for path in sorted(globlib.glob(pattern)):
            if posixpath.basename(path).startswith(".") or not os.path.isfile(path):
                continue
            try:
                st = os.stat(path)
            except FileNotFoundError:  # removed between listing and stat
                continue
            found.append((os.path.abspath(path), st.st_size, st.st_mtime))
        return found
    result = FileSystems.match([pattern])[0]
    return [
        (m.path, int(m.size_in_bytes), float(m.last_updated_in_seconds))
        for m in result.metadata_list
        if not posixpath.basename(m.path).startswith(".")
    ]


class WatchFiles(beam.DoFn):  # type: ignore[misc]
    """List the glob at each poll; yield files unchanged for at least one poll interval.

    Keyed by a single key so one state holds the last stat of every path: a
    path is stable when its ``(size, mtime)`` equals the one first seen at
    least ``poll_seconds`` (wall clock) ago, so polls that bunch up after a
    slow step never pass a file that is still being written.

    Args:
        pattern: The glob.
        poll_seconds: The poll interval.
        out: Tables folder (each poll is recorded under ``_ledger/runs/<run_id>``).
        run_id: This run's id.
    """

    def __init__(self, pattern: str, poll_seconds: float, out: str, run_id: str) -> None:
        self._pattern = pattern
        self._poll = poll_seconds
        self._out = out
        self._run_id = run_id
        self._polls = Metrics.counter(_NS, "polls")
        self._writing = Metrics.counter(_NS, "files_still_being_written")

    def process(
        self,
        item: tuple[str, Any],
        seen_state: Any = _SEEN,
        polls_state: Any = _POLLS,
    ) -> Iterator[StableFile]:
        """Yield the stable files of this poll."""
        poll = (polls_state.read() or 0) + 1
        polls_state.write(poll)
        self._polls.inc()
        _mark(self._out, self._run_id, f"poll-{poll:06d}.json", {"time": time.time()})
        seen: dict[str, tuple[int, float, float]] = seen_state.read() or {}
        now = time.time()
        current: dict[str, tuple[int, float, float]] = {}
        try:
            files = _match(self._pattern)
        except Exception as exc:  # a listing error waits for the next poll
            log.warning("cannot list %s: %s", self._pattern, exc)
            return
        for path, size, mtime in files:
            before = seen.get(path)
            if before is not None and before[:2] == (size, mtime):
                current[path] = before
                # 0.95: the impulse fires on the interval, give or take a few ms.
                if now - before[2] >= 0.95 * self._poll:
                    yield StableFile(path, size, mtime, poll)
            else:
                current[path] = (size, mtime, now)
                if before is not None:
                    self._writing.inc()
        seen_state.write(current)


class DedupFiles(beam.DoFn):  # type: ignore[misc]
    """Pass each ``(path, size, mtime)`` once per run (state keyed by path)."""

    def __init__(self) -> None:
        self._dups = Metrics.counter(_NS, "repeats_dropped")

    def process(self, item: tuple[str, StableFile], sent: Any = _SENT) -> Iterator[StableFile]:
        """Yield the file unless this stat of this path was already sent."""
        _, f = item
        if sent.read() == (f.size, f.mtime):
            self._dups.inc()
            return
        sent.write((f.size, f.mtime))
        yield f


# -- ledger --------------------------------------------------------------------------


def _ledger_path(out: str, key: str) -> str:
    return posixpath.join(out, LEDGER, f"{key}.json")


def _content_key(path: str) -> str:
    """``sha1(path|sha256(bytes))``: the same scene copied or touched again."""
    digest = hashlib.sha256()
    with FileSystems.open(path) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return "c-" + hashlib.sha1(f"{path}|{digest.hexdigest()}".encode()).hexdigest()


def _write_json(path: str, data: dict[str, Any]) -> None:
    folder = posixpath.dirname(path)
    if "://" not in folder:
        os.makedirs(folder, exist_ok=True)
    temp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}.json")
    with FileSystems.create(temp) as f:
        f.write(json.dumps(data, indent=1, default=str).encode())
    replace_file(temp, path)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with FileSystems.open(path) as f:
            data: dict[str, Any] = json.loads(f.read())
    except Exception:
        return None
    return data


def ledger_entries(out: str) -> list[dict[str, Any]]:
    """Every scene entry of the ledger under ``out`` (content aliases left out)."""
    pattern = posixpath.join(out, LEDGER, "*.json")
    if "://" in out:
        paths = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    else:
        paths = sorted(globlib.glob(pattern))
    entries = []
    for path in paths:
        if posixpath.basename(path).startswith("c-"):
            continue
        entry = _read_json(path)
        if entry is not None:
            entries.append(entry)
    return entries


# -- labelling -----------------------------------------------------------------------

# Sites are linked per area from the ledger; one writer at a time per process.
_LINK_LOCK = threading.Lock()


class LabelScene(beam.DoFn):  # type: ignore[misc]
    """Label one stable file exactly as ``minewatch infer`` would; record it in the ledger.

    Runs the batch job's per-scene DoFns in-line (plan, cut, refuse, predict,
    write ``tile_labels``, raster and quicklook, link sites) and yields one
    ledger entry per file it labelled or dead-lettered. A file already in the
    ledger (same stat, or same path and bytes) is skipped.

    Args:
        config: The stream's options.
        run_id: Written into each ledger entry and dead-letter file name.
    """

    def __init__(self, config: StreamConfig, run_id: str) -> None:
        self._c = config
        self._run_id = run_id
        self._labelled = Metrics.counter(_NS, "scenes_labelled")
        self._dead = Metrics.counter(_NS, "scenes_dead_lettered")
        self._skipped = Metrics.counter(_NS, "scenes_already_done")
        self._reloads = Metrics.counter(_NS, "model_loads")

    def setup(self) -> None:
        """Nothing is loaded yet: the model is resolved on the first file."""
        self._model: ModelRef | None = None
        self._signature: Any = None
        self._handler: TileModelHandler | None = None
        self._checked_poll = 0

    def _refresh(self, poll: int) -> ModelRef:
        """Resolve the registry again (once per poll); load a new version."""
        if self._model is None or poll > self._checked_poll:
            self._checked_poll = poll
            try:
                model = resolve_model(self._c.registry)
            except Exception as exc:  # half-promoted registry: keep serving the old model
                if self._model is None:
                    raise
                log.warning("keeping model %s: %s", self._model.version, exc)
                return self._model
            if self._model is None or model.version != self._model.version:
                handler = TileModelHandler(model.saved_model, self._c.batch_size)
                self._signature = handler.load_model()
                self._handler = handler
                self._model = model
                self._reloads.inc()
                log.info("serving model %s", model.version)
        return self._model

    def process(self, f: StableFile) -> Iterator[dict[str, Any]]:
        """Label ``f`` unless the ledger has it; yield its ledger entry."""
        out = self._c.out
        if FileSystems.exists(_ledger_path(out, f.key)):
            self._skip(f, "same path, size and mtime")
            return
        try:
            content = _content_key(f.path)
        except Exception:  # vanished or unreadable: the next poll sees what happened
            return
        if FileSystems.exists(_ledger_path(out, content)):
            self._skip(f, "same path and bytes")
            return
        model = self._refresh(f.poll)
        entry: dict[str, Any] = {
            "path": f.path,
            "size": f.size,
            "mtime": f.mtime,
            "key": f.key,
            "content_key": content,
            "poll": f.poll,
            "run_id": self._run_id,
            "model_version": model.version,
        }
        dead: list[dict[str, str]] = []
        try:
            entry.update(self._label(f.path, model, dead))
        except Exception as exc:  # one bad scene never stops the stream
            log.warning("dead-lettered %s: %s", f.path, exc)
            entry.update(status="dead", reason=f"{type(exc).__name__}: {exc}", tiles=0)
            dead.append(_dead(f.path, entry["reason"], "input", stage="stream"))
        if entry["status"] == "dead" and not any(d["kind"] == "input" for d in dead):
            dead.append(_dead(f.path, entry["reason"], "input", stage="stream"))
        if dead:
            write_geoparquet(
                posixpath.join(out, "dead_letter", f"stream-{f.key}.parquet"),
                dead,
                "dead_letter",
                dead_letter_schema(),
            )
        entry["done"] = time.time()
        # Rows first, ledger last: a crash in between relabels the scene, whose
        # files (named by scene and version) are then replaced, not duplicated.
        _write_json(_ledger_path(out, f.key), entry)
        _write_json(_ledger_path(out, content), {"key": f.key, "path": f.path})
        (self._dead if entry["status"] == "dead" else self._labelled).inc()
        yield entry

    def _skip(self, f: StableFile, why: str) -> None:
        self._skipped.inc()
        _mark(self._c.out, self._run_id, f"skipped-{f.key}.json", {"path": f.path, "why": why})

    def _label(self, path: str, model: ModelRef, dead: list[dict[str, str]]) -> dict[str, Any]:
        from minewatch.scenes import group_files

        assert self._handler is not None
        refs, rejected = group_files([path])
        for r in rejected:
            dead.append(_dead(r.input, r.reason, r.kind, stage="discover"))
        if not refs:
            reason = rejected[0].reason if rejected else "not a scene"
            return {"status": "dead", "reason": reason, "tiles": 0}
        ref = refs[0]
        size = model.tile_size
        task = model.metadata.get("task", "tile")
        tiling = TileConfig(
            inputs=(path,),
            out=self._c.out,
            label_source="none",
            bands=model.bands or None if task != "frame" else None,
            tile_size=size,
            stride=self._c.stride or max(1, size // 2),
        )
        config = self._c.infer_config(model, path)
        batches: list[TileBatch] = []
        cutter = CutTiles(tiling)
        cutter.setup()
        try:
            for task_or_tag in PlanScene(tiling).process((ref, None)):
                if isinstance(task_or_tag, TaggedOutput):
                    if task_or_tag.tag == DEAD:
                        dead.append(task_or_tag.value)
                    continue
                for out in cutter.process(task_or_tag):
                    if isinstance(out, TaggedOutput):
                        if out.tag == DEAD:
                            dead.append(out.value)
                    else:
                        batches.append(out)
        finally:
            cutter.teardown()
        examples = ToExamples(model)
        examples.start_bundle()
        stacks = []
        for batch in batches:
            for out in examples.process(batch):
                if isinstance(out, TaggedOutput):
                    if out.tag == DEAD:
                        dead.append(out.value)
                else:
                    stacks.append(out)
        if not stacks:
            reason = dead[0]["reason"] if dead else "no tile to label"
            return {"status": "dead", "reason": reason, "tiles": 0, "scene_id": ref.scene_id}
        results = self._handler.run_inference([s for _, s in stacks], self._signature)
        groups = [
            ([astuple(info) for info in infos], result.inference)
            for (infos, _), result in zip(stacks, results, strict=True)
        ]
        per_scene = PerScene(config)
        per_scene.setup()
        area = None
        found = None
        for out in per_scene.process((ref.scene_id, groups)):
            if not isinstance(out, TaggedOutput):
                area, found = out
        entry: dict[str, Any] = {
            "status": "labelled",
            "scene_id": ref.scene_id,
            "tiles": sum(len(infos) for infos, _ in stacks),
            "tile_labels": posixpath.join(
                "tile_labels",
                f"date={_day(stacks[0][0][0].acquired)}",
                f"{_safe(ref.scene_id)}__{_safe(model.version)}.parquet",
            ),
        }
        if found is not None:
            entry["area"] = area
            entry["scene_sites"] = {
                "scene_id": found.scene_id,
                "acquired": found.acquired,
                "crs": found.crs,
                "sites": [{**s, "wkb": s["wkb"].hex()} for s in found.sites],
            }
            self._link(config, model.version, area, found)
        return entry

    def _link(self, config: InferConfig, version: str, area: Any, found: SceneSites) -> None:
        """Link the area's sites over every scene this model version labelled so far."""
        with _LINK_LOCK:
            scenes = [found]
            for e in ledger_entries(self._c.out):
                if (
                    e.get("area") == area
                    and e.get("model_version") == version
                    and e.get("scene_id") != found.scene_id
                ):
                    s = e["scene_sites"]
                    sites = [{**x, "wkb": bytes.fromhex(x["wkb"])} for x in s["sites"]]
                    scenes.append(SceneSites(s["scene_id"], s["acquired"], s["crs"], sites))
            collections.deque(LinkSites(config).process((area, scenes)), maxlen=0)


def _day(acquired: str) -> str:
    return acquired[:10] if acquired else "unknown"


def _report(entry: dict[str, Any]) -> dict[str, Any]:
    latency = entry["done"] - entry["mtime"]
    log.info(
        "%s %s (%s tiles, model %s, %.1f s after it landed)",
        entry["status"],
        entry["path"],
        entry.get("tiles", 0),
        entry["model_version"],
        latency,
    )
    return entry


class StreamScenes(beam.PTransform):  # type: ignore[misc]
    """Watch, deduplicate and label scenes as they land; yields ledger entries.

    Args:
        config: The stream's options.
        run_id: This run's id (ledger entries, dead-letter files).
        start: Wall-clock time of the first poll (seconds since the epoch).
    """

    def __init__(self, config: StreamConfig, run_id: str, start: float) -> None:
        super().__init__()
        self._c = config
        self._run_id = run_id
        self._start = start

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        """Build the stream."""
        from apache_beam.transforms.periodicsequence import PeriodicImpulse

        c = self._c
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
            | "Watch" >> beam.ParDo(WatchFiles(c.pattern, c.poll_seconds, c.out, self._run_id))
            | "KeyByPath"
            >> beam.Map(lambda f: (f.path, f)).with_output_types(tuple[str, StableFile])
            | "Dedup" >> beam.ParDo(DedupFiles())
            | "Label" >> beam.ParDo(LabelScene(c, self._run_id))
            | "Report" >> beam.Map(_report)
        )


def _run_files(out: str, run_id: str, prefix: str) -> list[str]:
    pattern = posixpath.join(out, LEDGER, "runs", run_id, f"{prefix}*")
    if "://" in out:
        return [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    return globlib.glob(pattern)


def _mark(out: str, run_id: str, name: str, data: dict[str, Any]) -> None:
    """Record an event of this run (a skip, a poll): one small file each, no shared writer."""
    _write_json(posixpath.join(out, LEDGER, "runs", run_id, name), data)


def _ensure_tables(out: str) -> None:
    # Queries over a table with no row yet answer "no rows" (as after 'minewatch infer').
    for table, schema in INFER_TABLES.items():
        folder = posixpath.join(out, table)
        if not FileSystems.exists(folder):
            write_geoparquet(posixpath.join(folder, "empty.parquet"), [], table, schema())


def run_stream(
    config: StreamConfig,
    beam_args: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any] | None:
    """Run the stream until ``max_polls`` or ``duration``; return what it did.

    Args:
        config: The stream's options.
        beam_args: Beam options; ``--streaming`` is added when missing.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline and do not run it.

    Returns:
        ``{"run_id", "labelled", "dead_lettered", "skipped", "model_versions",
        "latency_s", "entries"}`` for this run (None on a test pipeline);
        ``latency_s`` is file mtime to ledger entry (rows queryable), per file.

    Raises:
        ValueError: Neither ``max_polls`` nor ``duration`` with a DirectRunner
            (it would never stop), or a poll interval that is not positive.
    """
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        SetupOptions,
        StandardOptions,
    )

    if config.poll_seconds <= 0:
        raise ValueError("poll_seconds must be positive")
    args = list(beam_args)
    if "--streaming" not in args:
        args.append("--streaming")
    options = PipelineOptions(args)
    options.view_as(SetupOptions).save_main_session = save_main_session
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    if "Direct" in str(runner) and config.max_polls is None and config.duration is None:
        raise ValueError("give max_polls or duration: a local stream would never stop")
    run_id = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    pipeline = test_pipeline if test_pipeline is not None else beam.Pipeline(options=options)
    if "://" not in config.out:
        os.makedirs(config.out, exist_ok=True)
    _ensure_tables(config.out)
    _ = pipeline | "Stream" >> StreamScenes(config, run_id, time.time())
    if test_pipeline is not None:
        return None
    result = pipeline.run()
    result.wait_until_finish()
    skipped = _run_files(config.out, run_id, "skipped-")
    polls = _run_files(config.out, run_id, "poll-")
    entries = [e for e in ledger_entries(config.out) if e.get("run_id") == run_id]
    entries.sort(key=lambda e: e["done"])
    return {
        "run_id": run_id,
        "polls": len(polls),
        "labelled": sum(e["status"] == "labelled" for e in entries),
        "dead_lettered": sum(e["status"] == "dead" for e in entries),
        "skipped": len(skipped),
        "model_versions": sorted({e["model_version"] for e in entries}),
        "latency_s": [round(e["done"] - e["mtime"], 2) for e in entries],
        "entries": entries,
    }
