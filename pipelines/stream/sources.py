"""Where the stream's units come from: a watched folder or GCS notifications, deduplicated.

* :class:`WatchFiles`: every ``poll_seconds`` the glob is listed. Files are
  grouped into *units* as ``minewatch tile`` groups them (:func:`list_units`):
  a multiband file or a camera frame is a unit, so is a folder of single-band
  files ``PREFIX_BAND.ext``. A unit is *stable* when the size and mtime of each
  of its files held for a poll interval; a band folder is also *complete* once
  it holds every band the served model reads (or after ``band_wait`` seconds).
* :class:`GcsNotifications`: GCS ``OBJECT_FINALIZE`` notifications become the
  same units.
* :class:`DedupFiles`: a stateful DoFn keyed by source passes each unit stat
  once per run.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import logging
import os
import posixpath
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from minewatch.paths import is_remote
from pipelines.stream.ledger import compact_ledger
from pipelines.stream.metrics import NS
from pipelines.stream.models import RegistryFollower
from pipelines.stream.options import StreamConfig
from pipelines.tile.accounting import DEAD, dead_row

__all__ = [
    "DedupFiles",
    "FileStat",
    "GatherFolder",
    "GcsNotifications",
    "StableInput",
    "WatchFiles",
    "content_key",
    "list_units",
]

log = logging.getLogger(__name__)

#: ``(path, size, mtime)`` of one listed file.
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


def content_key(f: StableInput) -> str:
    """``c-sha1(source|name|sha256(bytes)|...)``: the same unit copied or touched again."""
    parts = [f.source]
    for path, _, _ in f.files:
        digest = hashlib.sha256()
        with FileSystems.open(path) as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
        parts.append(f"{posixpath.basename(path)}|{digest.hexdigest()}")
    return "c-" + hashlib.sha1("|".join(parts).encode()).hexdigest()


# -- units -----------------------------------------------------------------------------


def _list_files(pattern: str) -> list[FileStat]:
    """``(path, size, mtime)`` of the files matching ``pattern``; hidden names skipped.

    A matched local folder stands for the files directly in it (a band folder).
    """
    if is_remote(pattern):
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


# State parameters as module-level singletons (Beam's idiom, without calls in defaults).
_SEEN = beam.DoFn.StateParam(ReadModifyWriteStateSpec("seen", PickleCoder()))
_POLLS = beam.DoFn.StateParam(ReadModifyWriteStateSpec("polls", PickleCoder()))
_SENT = beam.DoFn.StateParam(ReadModifyWriteStateSpec("sent", PickleCoder()))
_OBJECTS = beam.DoFn.StateParam(ReadModifyWriteStateSpec("objects", PickleCoder()))


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
        self._config = config
        self._polls = Metrics.counter(NS, "polls")
        self._writing = Metrics.counter(NS, "units_still_changing")
        self._waiting = Metrics.counter(NS, "band_folders_waiting")

    def setup(self) -> None:
        """Follow the registry (for the bands a complete band folder holds)."""
        self._registry = RegistryFollower(self._config.registry)

    def process(
        self, item: tuple[str, Any], seen_state: Any = _SEEN, polls_state: Any = _POLLS
    ) -> Iterator[StableInput]:
        """Yield the stable units of this poll."""
        poll = (polls_state.read() or 0) + 1
        polls_state.write(poll)
        self._polls.inc()
        if poll % self._config.compact_every == 0:
            try:
                compact_ledger(self._config.out)
            except Exception as exc:  # a failed compaction leaves loose files: retried later
                log.warning("ledger compaction failed: %s", exc)
        seen: dict[str, tuple[tuple[FileStat, ...], float]] = seen_state.read() or {}
        now = time.time()
        try:
            bands = self._registry.current(poll).bands
            units = list_units(_list_files(self._config.pattern), bands)
        except Exception as exc:  # a listing error waits for the next poll
            log.warning("cannot list %s: %s", self._config.pattern, exc)
            return
        current: dict[str, tuple[tuple[FileStat, ...], float]] = {}
        for source, files, complete in units:
            before = seen.get(source)
            if before is not None and before[0] == files:
                current[source] = before
                held = now - before[1]
                # 0.95: the impulse fires on the interval, give or take a few ms.
                if held >= 0.95 * self._config.poll_seconds:
                    if complete or held >= self._config.band_wait:
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
        self._dups = Metrics.counter(NS, "repeats_dropped")

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
        Metrics.counter(NS, "notifications_ignored").inc()
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
        self._config = config
        self._ignored = Metrics.counter(NS, "notifications_ignored")

    def setup(self) -> None:
        """Follow the registry (for the bands a complete band folder holds)."""
        from apache_beam.io.filesystem import FileSystem

        self._registry = RegistryFollower(self._config.registry)
        self._match = FileSystem.translate_pattern(self._config.watch)

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
        poll = int(time.time() // self._config.poll_seconds)
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
        self._config = config

    def expand(self, messages: beam.PCollection) -> dict[str, beam.PCollection]:
        """Parse, group by folder, pass complete units."""
        parsed = messages | "Parse" >> beam.FlatMap(_parse_notification).with_outputs(
            DEAD, main="objects"
        )
        units = parsed.objects | "GatherFolder" >> beam.ParDo(GatherFolder(self._config))
        return {"units": units, "dead": parsed[DEAD]}
