"""The stream's durable ledger: one entry per finished unit, under ``TABLES_DIR/_ledger``.

A unit is recorded by :class:`RecordInLedger` (its dead-letter rows first, its
entry last) under two keys: its stat (``StableInput.key``) and its bytes
(:func:`~.sources.content_key`), so a restart, or a copy of the same bytes, skips it
(:class:`LedgerIndex`). Loose entry files are merged every ``compact_every``
polls into at most 256 bucket files (:func:`compact_ledger`).
"""

from __future__ import annotations

import collections
import glob as globlib
import json
import logging
import os
import posixpath
import time
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics

from minewatch.paths import is_remote, write_bytes, write_json
from minewatch.tables import dead_letter_schema, write_geoparquet
from pipelines.stream.metrics import NS
from pipelines.stream.options import StreamConfig
from pipelines.tile.accounting import dead_row

__all__ = [
    "LEDGER",
    "LedgerIndex",
    "RecordInLedger",
    "compact_ledger",
    "ledger_entries",
    "ledger_path",
    "read_json",
]

log = logging.getLogger(__name__)
#: The ledger's folder under the tables folder.
LEDGER = "_ledger"


def ledger_path(out: str, key: str) -> str:
    """The loose entry file of ``key`` in the ledger under ``out``."""
    return posixpath.join(out, LEDGER, f"{key}.json")


def _bucket_path(out: str, key: str) -> str:
    bare = key[2:] if key.startswith("c-") else key
    return posixpath.join(out, LEDGER, "index", f"{bare[:2]}.jsonl")


def read_json(path: str) -> dict[str, Any] | None:
    """The JSON object in ``path``; None when it is missing or unreadable."""
    try:
        with FileSystems.open(path) as f:
            data: dict[str, Any] = json.loads(f.read())
    except Exception:
        return None
    return data


def _glob(pattern: str) -> list[str]:
    if is_remote(pattern):
        return sorted(m.path for m in FileSystems.match([pattern])[0].metadata_list)
    return sorted(globlib.glob(pattern))


def _stamp(path: str) -> tuple[int, float] | None:
    """Size and mtime of a file, or None when it does not exist."""
    if not is_remote(path):
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


class LedgerIndex:
    """Is a key in the ledger: a loose file, or a line of its compacted bucket.

    Buckets are cached (a few at a time) and read again when their stat changes.
    """

    def __init__(self, out: str, buckets: int = 16) -> None:
        self._out = out
        self._size = buckets
        self._cache: collections.OrderedDict[str, tuple[Any, set[str]]] = collections.OrderedDict()

    def has(self, key: str) -> bool:
        """Whether ``key`` is in the ledger."""
        # Loose file first: a compaction writes the bucket before it deletes the file.
        if FileSystems.exists(ledger_path(self._out, key)):
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
        entry = read_json(path)
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
        write_bytes(bucket, text.encode())
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
        entry = read_json(path)
        if entry is not None:
            found[posixpath.basename(path)[: -len(".json")]] = entry
    return [e for k, e in sorted(found.items()) if not k.startswith("c-")]


class RecordInLedger(beam.DoFn):  # type: ignore[misc]
    """Write a finished unit's dead-letter rows, then its ledger entries; yield the entry.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._config = config
        self._labelled = Metrics.counter(NS, "units_labelled")
        self._dead = Metrics.counter(NS, "units_dead_lettered")
        self._late = Metrics.counter(NS, "units_late")

    def process(self, entry: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Record ``entry``."""
        out = self._config.out
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
        write_json(ledger_path(out, entry["key"]), entry, indent=1)
        if entry.get("content_key"):
            write_json(ledger_path(out, entry["content_key"]), {"key": entry["key"]}, indent=1)
        {"dead": self._dead, "late": self._late}.get(entry["status"], self._labelled).inc()
        yield entry
