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
  job's :class:`PerScene` writes the same files as ``minewatch infer``.
* **Sites**: :class:`LinkArea` is keyed by area: Beam runs one key at a time, so
  two workers never rewrite one area's ``sites`` file at once; the area's
  scenes live in keyed state, backed by ``_ledger/areas/`` for restarts.
* **Frames**: per-frame ``frame_labels`` rows and ``frame_summaries`` rows per
  camera and event-time window (the frame's timestamp), with a stated
  allowed lateness; later frames are dead-lettered, never dropped silently.
* **Ledger**: one small file per finished unit, merged every ``compact_every``
  polls into at most 256 bucket files (:func:`compact_ledger`).

The guarantees and limits are in ``docs/streaming.md``.
"""

from __future__ import annotations

import collections
import glob as globlib
import hashlib
import json
import logging
import math
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import KeyedModelHandler, PredictionResult, RunInference
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from minewatch.paths import replace_file
from minewatch.registry import ModelRef, resolve_model
from minewatch.scenes import safe_id
from minewatch.tables import (
    INFER_TABLES,
    dead_letter_schema,
    frame_labels_schema,
    frame_summaries_schema,
    write_geoparquet,
)
from pipelines.infer.linking import LinkSites
from pipelines.infer.options import InferConfig
from pipelines.infer.scene_outputs import PerScene
from pipelines.infer.serving import ExampleMaker, TileModelHandler
from pipelines.infer.sites import SceneSites
from pipelines.tile.job import DEAD, CutTiles, PlanScene, TileBatch, dead_row
from pipelines.tile.options import TileConfig

__all__ = [
    "STREAM_TABLES",
    "DedupFiles",
    "GcsNotifications",
    "LinkArea",
    "PrepareScene",
    "StableInput",
    "StreamConfig",
    "StreamModelHandler",
    "StreamScenes",
    "SummariseFrames",
    "WatchFiles",
    "bound_local_metrics",
    "compact_ledger",
    "ledger_entries",
    "list_units",
    "run_stream",
]

log = logging.getLogger(__name__)
_NS = "minewatch.stream"
LEDGER = "_ledger"
#: The tables a stream writes: the Infer tables plus per-window frame summaries.
STREAM_TABLES = {**INFER_TABLES, "frame_summaries": frame_summaries_schema}

# Tags of the labelling steps' extra outputs.
_DONE = "done"
_FRAMES = "frames"
_AREAS = "areas"


@dataclass(frozen=True)
class StreamConfig:
    """Options of ``minewatch stream`` besides Beam's.

    Attributes:
        watch: Glob (or folder) of scenes to watch, local or remote; with
            ``subscription``, the pattern notified objects must match.
        registry: A registry (its ``current.json`` is followed) or a model folder.
        out: Tables folder (the ledger lives in ``out/_ledger``).
        poll_seconds: Seconds between two listings. Default 10.
        max_polls: Stop after this many polls; None for no limit.
        duration: Stop after this many seconds; None for no limit.
        stride: Tiling step; half the model's tile size when None.
        batch_size: Most tiles per model call. Default 64.
        concessions: Polygons of licensed areas, or None.
        protected: Polygons of protected areas, or None.
        threshold: Least probability of a cell's winning class.
        min_area_m2: Smaller sites are dropped.
        min_score: Sites whose mean probability of their class is lower are
            dropped.
        smooth: Box filter side, in raster cells, before sites are cut. As
            ``minewatch infer``'s options of the same names: None (default) takes
            the served model's operating points (``minewatch.sites.SiteRules``).
        pictures: Draw a quicklook PNG per scene. Default True.
        frame_window: Seconds of the event-time windows frames are summarised
            over, per camera. Default 60.
        allowed_lateness: Seconds after its window's end that a frame is still
            counted in the window's summary. Default 600.
        band_wait: Seconds a band folder that lacks some of the model's bands
            waits (after its last change) before it is labelled as it is. Default 600.
        compact_every: Merge the ledger's loose files every this many polls.
            Default 100.
        subscription: Pub/Sub subscription of GCS object notifications to read
            instead of listing ``watch`` (production). Default None.
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
    threshold: float | None = None
    min_area_m2: float | None = None
    min_score: float | None = None
    smooth: int | None = None
    pictures: bool = True
    frame_window: float = 60.0
    allowed_lateness: float = 600.0
    band_wait: float = 600.0
    compact_every: int = 100
    subscription: str | None = None

    @property
    def pattern(self) -> str:
        """The glob to match: a folder means every file and folder in it."""
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
            min_area_m2=self.min_area_m2,
            min_score=self.min_score,
            smooth=self.smooth,
            pictures=self.pictures,
        )


FileStat = tuple[str, int, float]


@dataclass(frozen=True)
class StableInput:
    """A unit (one file, or a band folder) whose files held still for a poll interval.

    Attributes:
        source: The file, or the band folder.
        files: ``(path, size, mtime)`` of each file, sorted.
        poll: The poll (or, for notifications, the poll interval) it was found in.
    """

    source: str
    files: tuple[FileStat, ...]
    poll: int

    @property
    def path(self) -> str:
        """The unit's path (its source)."""
        return self.source

    @property
    def size(self) -> int:
        """Bytes in all its files."""
        return sum(f[1] for f in self.files)

    @property
    def mtime(self) -> float:
        """Latest mtime of its files."""
        return max((f[2] for f in self.files), default=0.0)

    @property
    def key(self) -> str:
        """Ledger key: ``sha1(source|path|size|mtime|...)``."""
        text = "|".join([self.source, *(f"{p}|{s}|{m!r}" for p, s, m in self.files)])
        return hashlib.sha1(text.encode()).hexdigest()


# -- units -----------------------------------------------------------------------------


def _list_files(pattern: str) -> list[FileStat]:
    """``(path, size, mtime)`` of the files matching ``pattern``; hidden names skipped.

    A matched local folder stands for the files directly in it (a band folder).
    """
    if "://" in pattern:
        result = FileSystems.match([pattern])[0]
        return [
            (m.path, int(m.size_in_bytes), float(m.last_updated_in_seconds))
            for m in result.metadata_list
            if not posixpath.basename(m.path).startswith(".")
        ]
    found: list[FileStat] = []
    for path in sorted(globlib.glob(pattern)):
        if posixpath.basename(path).startswith("."):
            continue
        paths = [path]
        if os.path.isdir(path):
            paths = [
                posixpath.join(path, n) for n in sorted(os.listdir(path)) if not n.startswith(".")
            ]
        for p in paths:
            try:
                st = os.stat(p)
            except FileNotFoundError:  # removed between listing and stat
                continue
            if not os.path.isfile(p):
                continue
            found.append((os.path.abspath(p), st.st_size, st.st_mtime))
    return found


def list_units(
    files: Iterable[FileStat], bands: Sequence[str] = ()
) -> list[tuple[str, tuple[FileStat, ...], bool]]:
    """Group listed files into units, as ``minewatch tile`` groups its inputs.

    Args:
        files: ``(path, size, mtime)`` per file.
        bands: The bands the served model reads; a band folder is complete when
            it has them all. A lone file named like one of them
            (``PREFIX_B02.tif``) is a band folder still being filled.

    Returns:
        ``(source, files, complete)`` per unit; files the tiler rejects are
        units of their own (they are dead-lettered once, with the reason).
    """
    from minewatch.scenes import _BAND_FILE, group_files, stem

    stat = {f[0]: f for f in files}
    refs, rejected = group_files(stat)
    need = set(bands) if len(bands) >= 2 else set()
    units: list[tuple[str, tuple[FileStat, ...], bool]] = []
    for ref in refs:
        members = tuple(sorted(stat[p] for p in ref.files))
        if ref.band_names:
            units.append((ref.source, members, not need or need <= set(ref.band_names)))
            continue
        match = _BAND_FILE.match(stem(ref.files[0])) if ref.kind == "scene" else None
        if match and match["band"] in need:
            units.append((posixpath.dirname(ref.files[0]), members, False))
        else:
            units.append((ref.source, members, True))
    for r in rejected:
        if r.input in stat:
            units.append((r.input, (stat[r.input],), True))
        else:  # a folder whose band files clash: the folder is the unit
            inside = tuple(sorted(f for p, f in stat.items() if posixpath.dirname(p) == r.input))
            units.append((r.input, inside, True))
    return units


class _Registry:
    """The registry's current model, resolved again at most once per poll."""

    def __init__(self, registry: str) -> None:
        self._registry = registry
        self._model: ModelRef | None = None
        self._poll: int | None = None

    def current(self, poll: int) -> ModelRef:
        if self._model is None or poll != self._poll:
            self._poll = poll
            try:
                self._model = resolve_model(self._registry)
            except Exception as exc:  # half-promoted registry: keep serving the old model
                if self._model is None:
                    raise
                log.warning("keeping model %s: %s", self._model.version, exc)
        return self._model


# State parameters as module-level singletons (Beam's idiom, without calls in defaults).
_SEEN = beam.DoFn.StateParam(ReadModifyWriteStateSpec("seen", PickleCoder()))
_POLLS = beam.DoFn.StateParam(ReadModifyWriteStateSpec("polls", PickleCoder()))
_SENT = beam.DoFn.StateParam(ReadModifyWriteStateSpec("sent", PickleCoder()))
_OBJECTS = beam.DoFn.StateParam(ReadModifyWriteStateSpec("objects", PickleCoder()))
_SCENES = beam.DoFn.StateParam(ReadModifyWriteStateSpec("scenes", PickleCoder()))
_ROWS = beam.DoFn.StateParam(ReadModifyWriteStateSpec("rows", PickleCoder()))


class WatchFiles(beam.DoFn):  # type: ignore[misc]
    """List the glob at each poll; yield the units that are stable (and complete).

    Keyed by a single key so one state holds the last stat of every unit: a
    unit is stable when its files' ``(size, mtime)`` equal the ones first seen
    at least ``poll_seconds`` (wall clock) ago, so polls that bunch up after a
    slow step never pass a file that is still being written. Every
    ``compact_every`` polls the ledger is compacted (this key runs one poll at
    a time, so compactions never overlap).

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._c = config
        self._polls = Metrics.counter(_NS, "polls")
        self._writing = Metrics.counter(_NS, "units_still_changing")
        self._waiting = Metrics.counter(_NS, "band_folders_waiting")

    def setup(self) -> None:
        """Follow the registry (for the bands a complete band folder holds)."""
        self._registry = _Registry(self._c.registry)

    def process(
        self, item: tuple[str, Any], seen_state: Any = _SEEN, polls_state: Any = _POLLS
    ) -> Iterator[StableInput]:
        """Yield the stable units of this poll."""
        poll = (polls_state.read() or 0) + 1
        polls_state.write(poll)
        self._polls.inc()
        if poll % self._c.compact_every == 0:
            try:
                compact_ledger(self._c.out)
            except Exception as exc:  # a failed compaction leaves loose files: retried later
                log.warning("ledger compaction failed: %s", exc)
        seen: dict[str, tuple[tuple[FileStat, ...], float]] = seen_state.read() or {}
        now = time.time()
        try:
            bands = self._registry.current(poll).bands
            units = list_units(_list_files(self._c.pattern), bands)
        except Exception as exc:  # a listing error waits for the next poll
            log.warning("cannot list %s: %s", self._c.pattern, exc)
            return
        current: dict[str, tuple[tuple[FileStat, ...], float]] = {}
        for source, files, complete in units:
            before = seen.get(source)
            if before is not None and before[0] == files:
                current[source] = before
                held = now - before[1]
                # 0.95: the impulse fires on the interval, give or take a few ms.
                if held >= 0.95 * self._c.poll_seconds:
                    if complete or held >= self._c.band_wait:
                        yield StableInput(source, files, poll)
                    else:
                        self._waiting.inc()
            else:
                current[source] = (files, now)
                if before is not None:
                    self._writing.inc()
        seen_state.write(current)


class DedupFiles(beam.DoFn):  # type: ignore[misc]
    """Pass each unit stat once per run (state keyed by source)."""

    def __init__(self) -> None:
        self._dups = Metrics.counter(_NS, "repeats_dropped")

    def process(self, item: tuple[str, StableInput], sent: Any = _SENT) -> Iterator[StableInput]:
        """Yield the unit unless this stat of it was already sent."""
        _, f = item
        if sent.read() == f.files:
            self._dups.inc()
            return
        sent.write(f.files)
        yield f


# -- Pub/Sub notifications ----------------------------------------------------------


def _parse_notification(message: Any) -> Iterator[Any]:
    """A GCS notification (``PubsubMessage`` or ``(data, attributes)``) -> one object."""
    if isinstance(message, tuple):
        data, attributes = message
    else:
        data, attributes = message.data, message.attributes
    attributes = dict(attributes or {})
    event = attributes.get("eventType", "")
    if event != "OBJECT_FINALIZE":
        Metrics.counter(_NS, "notifications_ignored").inc()
        return
    try:
        resource = json.loads(data)
        bucket, name = resource["bucket"], resource["name"]
        size = int(resource["size"])
        updated = datetime.fromisoformat(resource["updated"].replace("Z", "+00:00"))
    except Exception as exc:
        where = f"gs://{attributes.get('bucketId', '?')}/{attributes.get('objectId', '?')}"
        yield TaggedOutput(
            DEAD,
            dead_row(
                where,
                f"unreadable GCS notification: {type(exc).__name__}: {exc}",
                "input",
                stage="notify",
            ),
        )
        return
    path = f"gs://{bucket}/{name}"
    yield posixpath.dirname(path), (path, size, updated.timestamp())


class GatherFolder(beam.DoFn):  # type: ignore[misc]
    """Objects of one folder (state keyed by folder) -> units, once complete.

    A finalized object is complete by definition, so a single file is passed at
    once; a band folder is passed when it holds every band of the served model.
    Passed objects leave the state, so it holds only incomplete folders.

    Args:
        config: The stream's options (``watch`` filters the objects).
    """

    def __init__(self, config: StreamConfig) -> None:
        self._c = config
        self._ignored = Metrics.counter(_NS, "notifications_ignored")

    def setup(self) -> None:
        """Follow the registry (for the bands a complete band folder holds)."""
        from apache_beam.io.filesystem import FileSystem

        self._registry = _Registry(self._c.registry)
        self._match = FileSystem.translate_pattern(self._c.watch)

    def process(self, item: tuple[str, FileStat], objects: Any = _OBJECTS) -> Iterator[StableInput]:
        """Add the object to its folder; yield the folder's complete units."""
        import re

        _, obj = item
        if not re.match(self._match, obj[0]) and not re.match(
            self._match, posixpath.dirname(obj[0])
        ):
            self._ignored.inc()
            return
        held: dict[str, FileStat] = objects.read() or {}
        held[obj[0]] = obj
        poll = int(time.time() // self._c.poll_seconds)
        bands = self._registry.current(poll).bands
        for source, files, complete in list_units(held.values(), bands):
            if complete:
                for f in files:
                    held.pop(f[0], None)
                yield StableInput(source, files, poll)
        objects.write(held)


class GcsNotifications(beam.PTransform):  # type: ignore[misc]
    """GCS ``OBJECT_FINALIZE`` notifications -> the same units the folder watcher yields.

    Takes Pub/Sub messages (``PubsubMessage``, or ``(data, attributes)``) in the
    ``JSON_API_V1`` payload format; other event types are counted and ignored,
    unreadable payloads go to the ``dead`` output. Returns ``{"units", "dead"}``.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        super().__init__()
        self._c = config

    def expand(self, messages: beam.PCollection) -> dict[str, beam.PCollection]:
        """Parse, group by folder, pass complete units."""
        parsed = messages | "Parse" >> beam.FlatMap(_parse_notification).with_outputs(
            DEAD, main="objects"
        )
        units = parsed.objects | "GatherFolder" >> beam.ParDo(GatherFolder(self._c))
        return {"units": units, "dead": parsed[DEAD]}


# -- ledger --------------------------------------------------------------------------


def _ledger_path(out: str, key: str) -> str:
    return posixpath.join(out, LEDGER, f"{key}.json")


def _bucket_path(out: str, key: str) -> str:
    bare = key[2:] if key.startswith("c-") else key
    return posixpath.join(out, LEDGER, "index", f"{bare[:2]}.jsonl")


def _content_key(f: StableInput) -> str:
    """``c-sha1(source|name|sha256(bytes)|...)``: the same unit copied or touched again."""
    parts = [f.source]
    for path, _, _ in f.files:
        digest = hashlib.sha256()
        with FileSystems.open(path) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        parts.append(f"{posixpath.basename(path)}|{digest.hexdigest()}")
    return "c-" + hashlib.sha1("|".join(parts).encode()).hexdigest()


def _write_json(path: str, data: dict[str, Any]) -> None:
    _write_bytes(path, json.dumps(data, indent=1, default=str).encode())


def _write_bytes(path: str, data: bytes) -> None:
    folder = posixpath.dirname(path)
    if "://" not in folder:
        os.makedirs(folder, exist_ok=True)
    temp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}")
    with FileSystems.create(temp) as f:
        f.write(data)
    replace_file(temp, path)


def _read_json(path: str) -> dict[str, Any] | None:
    try:
        with FileSystems.open(path) as f:
            data: dict[str, Any] = json.loads(f.read())
    except Exception:
        return None
    return data


def _glob(pattern: str) -> list[str]:
    if "://" in pattern:
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    return sorted(globlib.glob(pattern))


def _stamp(path: str) -> tuple[int, float] | None:
    """Size and mtime of a file, or None when it does not exist."""
    if "://" not in path:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_size, st.st_mtime_ns / 1e9
    found = FileSystems.match([path])[0].metadata_list
    return (int(found[0].size_in_bytes), float(found[0].last_updated_in_seconds)) if found else None


def _read_bucket(path: str) -> dict[str, dict[str, Any]]:
    try:
        with FileSystems.open(path) as f:
            lines = f.read().decode().splitlines()
    except Exception:
        return {}
    rows = (json.loads(line) for line in lines if line.strip())
    return {row["key"]: row["entry"] for row in rows}


class _LedgerIndex:
    """Is a key in the ledger: a loose file, or a line of its compacted bucket.

    Buckets are cached (a few at a time) and read again when their stat changes.
    """

    def __init__(self, out: str, buckets: int = 16) -> None:
        self._out = out
        self._size = buckets
        self._cache: collections.OrderedDict[str, tuple[Any, set[str]]] = collections.OrderedDict()

    def has(self, key: str) -> bool:
        # Loose file first: a compaction writes the bucket before it deletes the file.
        if FileSystems.exists(_ledger_path(self._out, key)):
            return True
        path = _bucket_path(self._out, key)
        stamp = _stamp(path)
        if stamp is None:
            return False
        cached = self._cache.get(path)
        if cached is None or cached[0] != stamp:
            cached = (stamp, set(_read_bucket(path)))
            self._cache[path] = cached
        self._cache.move_to_end(path)
        while len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return key in cached[1]


def compact_ledger(out: str) -> int:
    """Merge the ledger's loose entry files into its bucket files; return how many.

    Entries live in ``_ledger/<key>.json`` when written, and are merged into
    ``_ledger/index/<first 2 hex digits of the key>.jsonl`` (one JSON object
    ``{"key", "entry"}`` per line), so the ledger holds at most 256 bucket files
    plus the entries written since the last compaction. Each bucket is written
    whole (temporary file, then rename) before the loose files it took in are
    deleted, so a key is always in one of the two. Run one compaction at a time.

    Args:
        out: The tables folder.

    Returns:
        The number of loose files merged.
    """
    loose = [
        p
        for p in _glob(posixpath.join(out, LEDGER, "*.json"))
        if not posixpath.basename(p).startswith(".")
    ]
    by_bucket: dict[str, list[tuple[str, str, dict[str, Any]]]] = collections.defaultdict(list)
    for path in loose:
        entry = _read_json(path)
        if entry is None:  # half-written or vanished: left for the next compaction
            continue
        key = posixpath.basename(path)[: -len(".json")]
        by_bucket[_bucket_path(out, key)].append((path, key, entry))
    merged = 0
    for bucket, items in sorted(by_bucket.items()):
        rows = _read_bucket(bucket)
        rows.update({key: entry for _, key, entry in items})
        text = "".join(
            json.dumps({"key": k, "entry": e}, default=str) + "\n" for k, e in rows.items()
        )
        _write_bytes(bucket, text.encode())
        FileSystems.delete([path for path, _, _ in items])
        merged += len(items)
    if merged:
        log.info("ledger: merged %d loose entries into %d buckets", merged, len(by_bucket))
    return merged


def ledger_entries(out: str) -> list[dict[str, Any]]:
    """Every unit entry of the ledger under ``out``, loose or compacted (aliases left out)."""
    found: dict[str, dict[str, Any]] = {}
    for bucket in _glob(posixpath.join(out, LEDGER, "index", "*.jsonl")):
        found.update(_read_bucket(bucket))
    for path in _glob(posixpath.join(out, LEDGER, "*.json")):
        entry = _read_json(path)
        if entry is not None:
            found[posixpath.basename(path)[: -len(".json")]] = entry
    return [e for k, e in sorted(found.items()) if not k.startswith("c-")]


# -- labelling -----------------------------------------------------------------------


class _Models:
    """Loaded models (:class:`~pipelines.infer.serving.ServedModel`) by path, a few kept."""

    def __init__(self, batch_size: int, keep: int) -> None:
        self._batch_size = batch_size
        self._keep = keep
        self._loaded: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, path: str) -> Any:
        with self._lock:
            if path not in self._loaded:
                self._loaded[path] = TileModelHandler(path, self._batch_size).load_model()
                Metrics.counter(_NS, "model_loads").inc()
                log.info("loaded model %s", path)
            self._loaded.move_to_end(path)
            while len(self._loaded) > self._keep:
                self._loaded.popitem(last=False)
            return self._loaded[path]


class StreamModelHandler(TileModelHandler):
    """Serve, per element, the SavedModel the element was tiled for.

    Examples are ``(saved_model_path, stack)``; each call groups them by path and
    runs each group through that model (the ``keep`` most recent ones stay
    loaded), and every ``PredictionResult`` carries the path in ``model_id``.
    So a model promoted mid-stream labels the scenes tiled after it, and never
    half a scene. :meth:`update_model_path` follows RunInference's model-update
    side input, where a runner supports it, by changing the default model.

    Example::

        handler = KeyedModelHandler(StreamModelHandler(model.saved_model))
        labelled = keyed_stacks | RunInference(handler)

    Args:
        saved_model: The SavedModel served when an example names none.
        batch_size: Most tiles per model call. Default 64.
        keep: Models kept loaded per worker. Default 2.
    """

    def __init__(self, saved_model: str, batch_size: int = 64, keep: int = 2) -> None:
        super().__init__(saved_model, batch_size)
        self._keep = keep

    def update_model_path(self, model_path: str | None = None) -> None:
        """Serve ``model_path`` for examples that name no model."""
        if model_path:
            self._saved_model = model_path

    def load_model(self) -> _Models:
        """Return a per-worker cache of loaded models (filled on first use)."""
        return _Models(self._batch_size, self._keep)

    def run_inference(
        self,
        batch: Sequence[Any],
        model: Any,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        """Predict each ``(path, stack)`` with its model; ``model_id`` is the path."""
        examples = [e if isinstance(e, tuple) else (self._saved_model, e) for e in batch]
        by_path: dict[str, list[int]] = collections.defaultdict(list)
        for i, (path, _) in enumerate(examples):
            by_path[path or self._saved_model].append(i)
        results: list[PredictionResult | None] = [None] * len(examples)
        for path, index in by_path.items():
            served = model.get(path)
            stacks = [examples[i][1] for i in index]
            for i, r in zip(index, super().run_inference(stacks, served), strict=True):
                results[i] = PredictionResult(None, r.inference, path)
        return [r for r in results if r is not None]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        """Bytes of pixels (not a pickle of them)."""
        return int(sum(e[1].nbytes if isinstance(e, tuple) else e.nbytes for e in batch))


def _entry(f: StableInput, run_id: str) -> dict[str, Any]:
    return {
        "path": f.source,
        "files": [p for p, _, _ in f.files],
        "size": f.size,
        "mtime": f.mtime,
        "key": f.key,
        "poll": f.poll,
        "run_id": run_id,
        "found": time.time(),
    }


class PrepareScene(beam.DoFn):  # type: ignore[misc]
    """Tile one unit for the registry's current model, unless the ledger has it.

    Yields ``(meta, (saved_model, stack))`` for ``RunInference``; a unit with no
    tile to label goes to ``done`` as a dead entry with the reason.

    Args:
        config: The stream's options.
        run_id: Written into each ledger entry.
    """

    def __init__(self, config: StreamConfig, run_id: str) -> None:
        self._c = config
        self._run_id = run_id
        self._skipped = Metrics.counter(_NS, "units_already_done")
        self._vanished = Metrics.counter(_NS, "units_vanished")

    def setup(self) -> None:
        """Open the ledger index and follow the registry."""
        self._ledger = _LedgerIndex(self._c.out)
        self._registry = _Registry(self._c.registry)

    def process(self, f: StableInput) -> Iterator[Any]:
        """Tile ``f`` unless the ledger has it."""
        if self._ledger.has(f.key):
            self._skipped.inc()
            return
        try:
            content = _content_key(f)
        except Exception as exc:  # vanished or unreadable: the next poll sees what happened
            self._vanished.inc()
            log.warning(
                "cannot read %s (%s): tried again when it changes or after a restart", f.source, exc
            )
            return
        if self._ledger.has(content):
            self._skipped.inc()
            return
        model = self._registry.current(f.poll)
        entry = {**_entry(f, self._run_id), "content_key": content}
        entry.update(model_version=model.version, model=model.path)
        dead: list[dict[str, str]] = []
        try:
            out = self._cut(f, model, dead)
        except Exception as exc:  # one bad unit never stops the stream
            out = {"status": "dead", "reason": f"{type(exc).__name__}: {exc}"}
        entry["_dead"] = dead
        if "stack" not in out:
            entry.update(out)
            yield TaggedOutput(_DONE, entry)
            return
        stack = out.pop("stack")
        entry.update(out)
        yield entry, (model.saved_model, stack)

    def _cut(self, f: StableInput, model: ModelRef, dead: list[dict[str, str]]) -> dict[str, Any]:
        from minewatch.scenes import group_files

        refs, rejected = group_files([p for p, _, _ in f.files])
        for r in rejected:
            dead.append(dead_row(r.input, r.reason, r.kind, stage="discover"))
        if not refs:
            return {"status": "dead", "reason": rejected[0].reason if rejected else "not a scene"}
        ref = refs[0]
        size = model.tile_size
        task = model.metadata.get("task", "tile")
        tiling = TileConfig(
            inputs=(f.source,),
            out=self._c.out,
            label_source="none",
            bands=model.bands or None if task != "frame" else None,
            tile_size=size,
            stride=self._c.stride or max(1, size // 2),
        )
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
        make = ExampleMaker(model)
        infos: list[tuple[Any, ...]] = []
        stacks: list[np.ndarray] = []
        for batch in batches:
            example, refused = make(batch)
            dead.extend(refused)
            if example is not None:
                infos.extend(example[0])
                stacks.append(example[1])
        if not stacks:
            reason = dead[0]["reason"] if dead else "no tile to label"
            return {"status": "dead", "reason": reason, "scene_id": ref.scene_id}
        return {
            "scene_id": ref.scene_id,
            "kind": ref.kind,
            "infos": infos,
            "stack": np.concatenate(stacks),
        }


def _model_of(saved_model: str, cache: dict[str, ModelRef]) -> ModelRef:
    if saved_model not in cache:
        cache[saved_model] = resolve_model(posixpath.dirname(saved_model.rstrip("/")))
    return cache[saved_model]


class WriteTables(beam.DoFn):  # type: ignore[misc]
    """Predictions of one unit -> its ``tile_labels`` file, raster and quicklook.

    Yields scenes with sites to ``areas`` keyed by area, frames to ``frames``,
    and everything else (finished) as the entry.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._c = config

    def setup(self) -> None:
        """Caches of models and per-version PerScene steps."""
        self._models: dict[str, ModelRef] = {}
        self._per_scene: dict[str, PerScene] = {}

    def process(self, item: tuple[dict[str, Any], PredictionResult]) -> Iterator[Any]:
        """Write the unit's files; yield what follows."""
        entry, result = item
        entry = dict(entry)
        try:
            model = _model_of(str(result.model_id), self._models)
            entry.update(model_version=model.version, model=model.path)
            per_scene = self._per_scene.get(model.path)
            if per_scene is None:
                per_scene = PerScene(self._c.infer_config(model, entry["path"]))
                per_scene.setup()
                self._per_scene[model.path] = per_scene
            infos = entry.pop("infos")
            frame, area, found = None, None, None
            for out in per_scene.process((entry["scene_id"], [(infos, result.inference)])):
                if isinstance(out, TaggedOutput):
                    if out.tag == "frames":
                        frame = out.value[1]
                else:
                    area, found = out
        except Exception as exc:
            entry.pop("infos", None)
            entry.update(status="dead", reason=f"{type(exc).__name__}: {exc}", tiles=0)
            yield TaggedOutput(_DONE, entry)
            return
        day = infos[0][5][:10] if infos[0][5] else "unknown"
        entry.update(
            status="labelled",
            tiles=len(infos),
            tile_labels=posixpath.join(
                "tile_labels",
                f"date={day}",
                f"{safe_id(entry['scene_id'])}__{safe_id(model.version)}.parquet",
            ),
        )
        if frame is not None:
            yield TaggedOutput(_FRAMES, (entry, frame))
        elif found is not None:
            sites = {
                "scene_id": found.scene_id,
                "acquired": found.acquired,
                "crs": found.crs,
                "sites": [{**s, "wkb": s["wkb"].hex()} for s in found.sites],
            }
            yield TaggedOutput(_AREAS, (area, (entry, sites)))
        else:
            yield TaggedOutput(_DONE, entry)


def _failed(item: tuple[Sequence[Any], Exception]) -> Iterator[dict[str, Any]]:
    batch, exc = item
    for entry, _ in batch:
        entry = dict(entry)
        entry.pop("infos", None)
        entry.update(status="dead", reason=f"inference failed: {type(exc).__name__}: {exc}")
        yield entry


def _area_record(out: str, area: str) -> str:
    digest = hashlib.sha1(area.encode()).hexdigest()[:20]
    return posixpath.join(out, LEDGER, "areas", f"{digest}.json")


class LinkArea(beam.DoFn):  # type: ignore[misc]
    """Link one area's sites over the scenes each model version labelled there.

    Keyed by area: Beam processes one key at a time, so no two workers rewrite
    an area's ``sites``/``stockpile_series`` files at once, and no in-process
    lock or memory is shared. The scenes of the area live in keyed state; the
    first scene of an area in a run reads them back from ``_ledger/areas/``,
    which is rewritten (temporary file, then rename) after each scene.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._c = config

    def setup(self) -> None:
        """Cache of models by folder."""
        self._models: dict[str, ModelRef] = {}

    def process(
        self, item: tuple[str, tuple[dict[str, Any], dict[str, Any]]], scenes_state: Any = _SCENES
    ) -> Iterator[dict[str, Any]]:
        """Add the scene to its area; rewrite the area's site files; yield the entry."""
        area, (entry, sites) = item
        record = _area_record(self._c.out, area)
        scenes: dict[str, dict[str, Any]] | None = scenes_state.read()
        if scenes is None:
            saved = _read_json(record)
            scenes = saved["versions"] if saved and saved.get("area") == area else {}
        version = entry["model_version"]
        scenes.setdefault(version, {})[sites["scene_id"]] = sites
        scenes_state.write(scenes)
        _write_json(record, {"area": area, "versions": scenes})
        try:
            if entry["model"] not in self._models:
                self._models[entry["model"]] = resolve_model(entry["model"])
            model = self._models[entry["model"]]
            linked = [
                SceneSites(
                    s["scene_id"],
                    s["acquired"],
                    s["crs"],
                    [{**x, "wkb": bytes.fromhex(x["wkb"])} for x in s["sites"]],
                )
                for s in scenes[version].values()
            ]
            config = self._c.infer_config(model, entry["path"])
            collections.deque(LinkSites(config).process((area, linked)), maxlen=0)
        except Exception as exc:  # the tile labels stand; the sites wait for the area's next scene
            log.warning("could not link area %s: %s", area, exc)
            entry["_dead"] = [
                *entry.get("_dead", []),
                dead_row(
                    entry["path"],
                    f"site linking failed: {exc}",
                    "input",
                    entry["scene_id"],
                    stage="link",
                ),
            ]
        entry["area"] = area
        yield entry


# -- frames --------------------------------------------------------------------------


def _window_of(ts: float, size: float) -> tuple[float, float]:
    start = math.floor(ts / size) * size
    return start, start + size


class StampFrames(beam.DoFn):  # type: ignore[misc]
    """Give each frame its event time; dead-letter frames later than the lateness.

    The event time is the frame's timestamp (from its name), else its file's
    mtime. A frame whose window ended more than ``allowed_lateness`` ago (wall
    clock, which is never behind the stream's watermark) is not summarised: it
    keeps its ``tile_labels`` rows and gets a dead-letter row with the reason.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._c = config
        self._late = Metrics.counter(_NS, "frames_late")

    def process(self, item: tuple[dict[str, Any], dict[str, Any]]) -> Iterator[Any]:
        """Yield ``TimestampedValue((camera, (entry, row)), t)`` or a late entry."""
        from apache_beam.transforms.window import TimestampedValue

        entry, row = item
        when = row["acquired"]
        ts = when.timestamp() if when is not None else float(entry["mtime"])
        _, end = _window_of(ts, self._c.frame_window)
        late = time.time() - end
        if late > self._c.allowed_lateness:
            self._late.inc()
            reason = (
                f"frame {late:.0f} s after its {self._c.frame_window:g} s window closed "
                f"(allowed lateness {self._c.allowed_lateness:g} s): not in frame_labels "
                "or frame_summaries"
            )
            entry = {**entry, "status": "late", "reason": reason}
            entry["_dead"] = [
                *entry.get("_dead", []),
                dead_row(entry["path"], reason, "frame", entry["scene_id"], stage="window"),
            ]
            yield TaggedOutput(_DONE, entry)
            return
        yield TimestampedValue((row["camera_id"] or "camera", (entry, row)), ts)


def _window_name(camera: str, start: float, version: str) -> tuple[str, str]:
    when = datetime.fromtimestamp(start, UTC)
    return f"date={when:%Y-%m-%d}", f"{safe_id(camera)}__{when:%Y%m%dT%H%M%S}__{safe_id(version)}"


def _summary(
    camera: str, start: float, end: float, rows: Sequence[dict[str, Any]], classes: Sequence[str]
) -> dict[str, Any]:
    counts = collections.Counter(r["label"] for r in rows)
    probs = np.mean([r["probabilities"] for r in rows], axis=0)
    k = max(counts, key=lambda c: (counts[c], probs[c] if c < len(probs) else 0.0))
    times = [r["acquired"] for r in rows if r["acquired"] is not None]
    n = max(len(classes), len(probs))
    return {
        "camera_id": camera,
        "window_start": datetime.fromtimestamp(start, UTC),
        "window_end": datetime.fromtimestamp(end, UTC),
        "frames": len(rows),
        "grade": classes[k] if k < len(classes) else str(k),
        "classes": list(classes),
        "grade_counts": [counts.get(i, 0) for i in range(n)],
        "score": float(np.mean([r["score"] for r in rows])),
        "probabilities": [float(p) for p in probs],
        "first_frame": min(times) if times else None,
        "last_frame": max(times) if times else None,
        "model_version": rows[0]["model_version"],
    }


class SummariseFrames(beam.DoFn):  # type: ignore[misc]
    """Per camera and event-time window: rewrite its ``frame_labels`` and summary files.

    State is keyed by camera and scoped to the window (Beam drops it when the
    window expires). Each frame rewrites the window's two files, one per model
    version, so rows are queryable as soon as a frame is labelled, and the
    summary is final when the window's last frame is in. The first frame of a
    window in a run merges the rows a previous run wrote, so a restart inside
    a window keeps its earlier frames.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._c = config
        self._rows = Metrics.counter(_NS, "frame_rows")

    def setup(self) -> None:
        """Cache of models by folder (for class names)."""
        self._models: dict[str, ModelRef] = {}

    def process(
        self,
        item: tuple[str, tuple[dict[str, Any], dict[str, Any]]],
        window: Any = beam.DoFn.WindowParam,
        rows_state: Any = _ROWS,
    ) -> Iterator[dict[str, Any]]:
        """Add the frame; rewrite its window's files; yield the entry."""
        import pyarrow.parquet as pq

        camera, (entry, row) = item
        version = row["model_version"]
        start, end = float(window.start), float(window.end)
        part, name = _window_name(camera, start, version)
        labels = posixpath.join(self._c.out, "frame_labels", part, f"{name}.parquet")
        held: dict[str, dict[str, dict[str, Any]]] = rows_state.read() or {}
        if version not in held:
            held[version] = {}
            if FileSystems.exists(labels):  # a previous run's rows of this window
                with FileSystems.open(labels) as f:
                    for old in pq.read_table(f).to_pylist():
                        held[version][old["frame_id"]] = old
        held[version][row["frame_id"]] = row
        rows_state.write(held)
        rows = sorted(
            held[version].values(),
            key=lambda r: (r["acquired"] is None, r["acquired"] or 0, r["frame_id"]),
        )
        if entry["model"] not in self._models:
            self._models[entry["model"]] = resolve_model(entry["model"])
        classes = self._models[entry["model"]].classes
        write_geoparquet(labels, rows, "frame_labels", frame_labels_schema())
        write_geoparquet(
            posixpath.join(self._c.out, "frame_summaries", part, f"{name}.parquet"),
            [_summary(camera, start, end, rows, classes)],
            "frame_summaries",
            frame_summaries_schema(),
        )
        self._rows.inc()
        yield {
            **entry,
            "window_start": start,
            "frame_labels": f"frame_labels/{part}/{name}.parquet",
        }


# -- recording ------------------------------------------------------------------------


class Record(beam.DoFn):  # type: ignore[misc]
    """Write a finished unit's dead-letter rows, then its ledger entries; yield the entry.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._c = config
        self._labelled = Metrics.counter(_NS, "units_labelled")
        self._dead = Metrics.counter(_NS, "units_dead_lettered")
        self._late = Metrics.counter(_NS, "units_late")

    def process(self, entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Record ``entry``."""
        out = self._c.out
        entry = dict(entry)
        entry.pop("infos", None)
        dead = list(entry.pop("_dead", []))
        if entry["status"] == "dead" and not any(d["kind"] == "input" for d in dead):
            dead.append(dead_row(entry["path"], entry["reason"], "input", stage="stream"))
        if dead:
            write_geoparquet(
                posixpath.join(out, "dead_letter", f"stream-{entry['key']}.parquet"),
                dead,
                "dead_letter",
                dead_letter_schema(),
            )
        entry["done"] = time.time()
        # Rows first, ledger last: a crash in between relabels the unit, whose
        # files (named by scene and version) are then replaced, not duplicated.
        _write_json(_ledger_path(out, entry["key"]), entry)
        if entry.get("content_key"):
            _write_json(_ledger_path(out, entry["content_key"]), {"key": entry["key"]})
        {"dead": self._dead, "late": self._late}.get(entry["status"], self._labelled).inc()
        yield entry


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
        run_id: This run's id (ledger entries).
        start: Wall-clock time of the first poll (seconds since the epoch).
    """

    def __init__(self, config: StreamConfig, run_id: str, start: float) -> None:
        super().__init__()
        self._c = config
        self._run_id = run_id
        self._start = start

    def _units(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        from apache_beam.transforms.periodicsequence import PeriodicImpulse

        c = self._c
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

        c = self._c
        prepared = (
            self._units(pbegin)
            | "KeyBySource"
            >> beam.Map(lambda f: (f.source, f)).with_output_types(tuple[str, StableInput])
            | "Dedup" >> beam.ParDo(DedupFiles())
            | "Prepare"
            >> beam.ParDo(PrepareScene(c, self._run_id)).with_outputs(_DONE, main="stacks")
        )
        first = resolve_model(c.registry)
        # One scene per model call, batched by the scene's own stack: BatchElements
        # stamps its batches at the end of the global window, which a streaming
        # DirectRunner releases only when the stream stops.
        handler = KeyedModelHandler(
            StreamModelHandler(first.saved_model, c.batch_size)
        ).with_no_batching()
        predicted, failed = (
            prepared.stacks
            | "OnePerCall" >> beam.Map(lambda item: [item])
            | "RunInference" >> RunInference(handler).with_exception_handling()
        )
        tables = predicted | "Tables" >> beam.ParDo(WriteTables(c)).with_outputs(
            _DONE, _FRAMES, _AREAS
        )
        linked = tables[_AREAS] | "LinkArea" >> beam.ParDo(LinkArea(c))
        stamped = tables[_FRAMES] | "EventTime" >> beam.ParDo(StampFrames(c)).with_outputs(
            _DONE, main="frames"
        )
        summarised = (
            stamped.frames
            | "FrameWindows"
            >> beam.WindowInto(
                window.FixedWindows(c.frame_window), allowed_lateness=c.allowed_lateness
            )
            | "Summarise" >> beam.ParDo(SummariseFrames(c))
            | "Global" >> beam.WindowInto(window.GlobalWindows())
        )
        # One Record per branch: on Beam 2.77's streaming DirectRunner a Flatten
        # holds its output until the stream stops (measured), which would delay
        # every ledger entry to the end of the run.
        finished = {
            "Dead": prepared[_DONE],
            "Failed": failed.failed_inferences | "FailedInference" >> beam.FlatMap(_failed),
            "Labelled": tables[_DONE],
            "Linked": linked,
            "Late": stamped[_DONE],
            "Frames": summarised,
        }
        reports = [
            pcoll | f"Record{name}" >> beam.ParDo(Record(c)) | f"Report{name}" >> beam.Map(_report)
            for name, pcoll in finished.items()
        ]
        return reports[0]


def _ensure_tables(out: str) -> None:
    # Queries over a table with no row yet answer "no rows" (as after 'minewatch infer').
    for table, schema in STREAM_TABLES.items():
        folder = posixpath.join(out, table)
        if not FileSystems.exists(folder):
            write_geoparquet(posixpath.join(folder, "empty.parquet"), [], table, schema())


def _counters(result: Any) -> dict[str, int]:
    """This run's counters; empty when the runner reports none (the ledger stands)."""
    out: dict[str, int] = collections.defaultdict(int)
    try:
        for counter in result.metrics().query()["counters"]:
            if counter.key.metric.namespace == _NS:
                value = counter.committed if counter.committed is not None else counter.attempted
                out[counter.key.metric.name] += int(value or 0)
    except Exception as exc:
        log.warning("could not read Beam counters: %s", exc)
    return dict(out)


def bound_local_metrics() -> bool:
    """Make Beam's local FnApiRunner merge each bundle's metrics at once; True if it did.

    Beam 2.77's DirectRunner runs the stream on the FnApiRunner, whose
    ``run_stages`` folds each finished bundle's monitoring infos into the
    earlier ones with ``consolidate(itertools.chain(new, previous))``, a lazy
    generator that nests one level per bundle and is read only when the
    pipeline ends. Every bundle's metric protos stay alive until then (memory),
    and reading them ends in ``RecursionError`` (the run's counters are lost). A
    ``PeriodicImpulse`` there re-runs its deferred remainder at once, so an idle
    stream executes hundreds of bundles a second: a bare ``PeriodicImpulse |
    Map`` grew by 230-450 MB/min (``docs/reliability.md``, section 4). Merging
    eagerly (``list(...)``) gives the same metrics and holds one merged list per
    stage. Other runners do not use this function; it is replaced once, in this
    process, and only where the module still has it.

    Returns:
        True when the runner now merges eagerly; False when this Beam has no
        such function (a warning is logged).
    """
    try:
        from apache_beam.metrics import monitoring_infos
        from apache_beam.runners.portability.fn_api_runner import fn_runner
    except ImportError:  # pragma: no cover - a Beam without the FnApiRunner
        return False
    current = getattr(fn_runner, "consolidate_monitoring_infos", None)
    if current is None:
        log.warning("Beam's FnApiRunner changed: its metrics are not bounded here")
        return False
    if getattr(current, "_minewatch_eager", False):
        return True

    def consolidate(infos: Iterable[Any]) -> list[Any]:
        return list(monitoring_infos.consolidate(infos))

    consolidate._minewatch_eager = True  # type: ignore[attr-defined]
    fn_runner.consolidate_monitoring_infos = consolidate
    return True


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
    if "://" not in config.out:
        os.makedirs(config.out, exist_ok=True)
    _ensure_tables(config.out)
    # The first poll waits a little: PeriodicImpulse fires the polls it missed
    # while the runner started all at once, and bunched polls prove nothing stable.
    start = time.time() + 2.0
    _ = pipeline | "Stream" >> StreamScenes(config, run_id, start)
    if test_pipeline is not None:
        return None
    result = pipeline.run()
    result.wait_until_finish()
    counters = _counters(result)
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
