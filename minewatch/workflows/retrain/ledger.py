"""The retrain's tables: the scene ledger and the ``training_runs`` table.

The ledger (``TABLES/retrain_ledger/batch-<run_id>.parquet``) holds one row per
scene file tiled, keyed by ``(path, size, mtime)``; writing a night's part is the
commit point of its batch. ``training_runs`` holds one row per run.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from minewatch.paths import is_remote

__all__ = [
    "LEDGER",
    "RUNS",
    "SceneKey",
    "empty_record",
    "find_new_scenes",
    "list_scenes",
    "read_ledger",
    "read_training_runs",
    "write_ledger",
    "write_record",
]

LEDGER = "retrain_ledger"
RUNS = "training_runs"


@dataclass(frozen=True, order=True)
class SceneKey:
    """A scene file as the ledger knows it: a rewrite changes size or mtime.

    Attributes:
        path: Absolute path or URL.
        size: Bytes.
        mtime: Last modification, seconds since the epoch (as the file system
            reports it; object stores give the upload time).
    """

    path: str
    size: int
    mtime: float

    @property
    def key(self) -> str:
        """The ledger key ``path|size|mtime``."""
        return f"{self.path}|{self.size}|{self.mtime:.6f}"


def _ledger_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime", pa.float64()),
            ("run_id", pa.string()),
            ("recorded", pa.timestamp("s", tz="UTC")),
        ]
    )


def list_scenes(pattern: str) -> list[SceneKey]:
    """Every file a folder, glob or file names, with size and mtime.

    Args:
        pattern: Local path/glob/folder or a URL (``gs://bucket/folder/``).

    Returns:
        Keys sorted by path; hidden files (``.name``) are left out.
    """
    from apache_beam.io.filesystems import FileSystems

    from pipelines.options import list_inputs

    if not is_remote(pattern):
        keys = []
        for p in list_inputs(pattern):
            st = os.stat(p)
            keys.append(SceneKey(p, st.st_size, st.st_mtime))
        return sorted(keys)
    glob = pattern + "**" if pattern.endswith("/") else pattern
    found = FileSystems.match([glob])[0].metadata_list
    return sorted(
        SceneKey(m.path, int(m.size_in_bytes), float(m.last_updated_in_seconds))
        for m in found
        if not posixpath.basename(m.path).startswith(".")
    )


def read_ledger(tables_dir: str) -> list[dict[str, Any]]:
    """All ledger rows (one per scene file tiled), oldest run first.

    Args:
        tables_dir: The tables folder.

    Returns:
        Rows of ``TABLES/retrain_ledger/*.parquet``; empty when there is none.
    """
    return _read_parts(os.path.join(tables_dir, LEDGER), _ledger_schema())


def _read_parts(folder: str, schema: Any) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if not os.path.isdir(folder):
        return []
    rows: list[dict[str, Any]] = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".parquet") and not name.startswith("."):
            rows.extend(pq.read_table(os.path.join(folder, name), schema=schema).to_pylist())
    return rows


def find_new_scenes(pattern: str, tables_dir: str) -> tuple[list[SceneKey], int]:
    """Scene files not in the ledger yet.

    Args:
        pattern: The config's ``scenes``.
        tables_dir: The tables folder.

    Returns:
        ``(new keys, number of files seen)``.
    """
    seen = {row["key"] for row in read_ledger(tables_dir)}
    found = list_scenes(pattern)
    return [k for k in found if k.key not in seen], len(found)


def read_training_runs(tables_dir: str) -> list[dict[str, Any]]:
    """All rows of the ``training_runs`` table, oldest first.

    Args:
        tables_dir: The tables folder.

    Returns:
        The rows (empty when there is none).
    """
    from minewatch.tables import training_runs_schema

    rows = _read_parts(os.path.join(tables_dir, RUNS), training_runs_schema())
    return sorted(rows, key=lambda r: (r["started"], r["run_id"]))


def empty_record(run_id: str, started: datetime) -> dict[str, Any]:
    """A ``training_runs`` row with every column None but the run's id and start.

    Args:
        run_id: The run's id.
        started: The run's start time.

    Returns:
        The row, ``promoted`` False.
    """
    from minewatch.tables import training_runs_schema

    record: dict[str, Any] = {f.name: None for f in training_runs_schema()}
    record.update(run_id=run_id, started=started, promoted=False)
    return record


def write_record(tables_dir: str, record: dict[str, Any]) -> None:
    """Stamp ``finished`` and write the run's row as ``TABLES/training_runs/run-<id>.parquet``.

    Args:
        tables_dir: The tables folder.
        record: The row (from :func:`empty_record`); ``finished`` is set in place.
    """
    from minewatch.tables import training_runs_schema, write_geoparquet

    record["finished"] = datetime.now(UTC).replace(microsecond=0)
    path = os.path.join(tables_dir, RUNS, f"run-{record['run_id']}.parquet")
    write_geoparquet(path, [record], RUNS, training_runs_schema())


def write_ledger(tables_dir: str, run_id: str, keys: Sequence[SceneKey], now: datetime) -> None:
    """Write the batch's ledger part, the commit point of its scene files.

    Args:
        tables_dir: The tables folder.
        run_id: The run that tiled them.
        keys: The scene files tiled.
        now: When they were recorded.
    """
    from minewatch.tables import write_geoparquet

    rows = [
        {
            "key": k.key,
            "path": k.path,
            "size": k.size,
            "mtime": k.mtime,
            "run_id": run_id,
            "recorded": now,
        }
        for k in keys
    ]
    path = os.path.join(tables_dir, LEDGER, f"batch-{run_id}.parquet")
    write_geoparquet(path, rows, LEDGER, _ledger_schema())
