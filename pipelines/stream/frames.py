"""Camera frames: event-time windows per camera, late frames, per-window summaries.

Per-frame ``frame_labels`` rows and ``frame_summaries`` rows per camera and
event-time window (the frame's timestamp), with a stated allowed lateness;
later frames are dead-lettered, never dropped silently.
"""

from __future__ import annotations

import collections
import math
import posixpath
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.coders import PickleCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from minewatch.registry import ModelRef, resolve_model
from minewatch.scenes import safe_id
from minewatch.tables import frame_labels_schema, frame_summaries_schema, write_geoparquet
from pipelines.stream.labelling import BIGQUERY, DONE
from pipelines.stream.metrics import NS
from pipelines.stream.options import StreamConfig
from pipelines.tile.accounting import dead_row

__all__ = ["StampFrames", "SummariseFrames", "window_summary"]

# State parameter as a module-level singleton (Beam's idiom, without calls in defaults).
_ROWS = beam.DoFn.StateParam(ReadModifyWriteStateSpec("rows", PickleCoder()))


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
        self._config = config
        self._late = Metrics.counter(NS, "frames_late")

    def process(self, item: tuple[dict[str, Any], dict[str, Any]]) -> Iterator[Any]:
        """Yield ``TimestampedValue((camera, (entry, row)), t)`` or a late entry."""
        from apache_beam.transforms.window import TimestampedValue

        entry, row = item
        when = row["acquired"]
        ts = when.timestamp() if when is not None else float(entry["mtime"])
        _, end = _window_of(ts, self._config.frame_window)
        late = time.time() - end
        if late > self._config.allowed_lateness:
            self._late.inc()
            reason = (
                f"frame {late:.0f} s after its {self._config.frame_window:g} s window closed "
                f"(allowed lateness {self._config.allowed_lateness:g} s): not in frame_labels "
                "or frame_summaries"
            )
            entry = {**entry, "status": "late", "reason": reason}
            entry["_dead"] = [
                *entry.get("_dead", []),
                dead_row(entry["path"], reason, "frame", entry["scene_id"], stage="window"),
            ]
            yield TaggedOutput(DONE, entry)
            return
        yield TimestampedValue((row["camera_id"] or "camera", (entry, row)), ts)


def _window_name(camera: str, start: float, version: str) -> tuple[str, str]:
    when = datetime.fromtimestamp(start, UTC)
    return f"date={when:%Y-%m-%d}", f"{safe_id(camera)}__{when:%Y%m%dT%H%M%S}__{safe_id(version)}"


def window_summary(
    camera: str, start: float, end: float, rows: Sequence[dict[str, Any]], classes: Sequence[str]
) -> dict[str, Any]:
    """One ``frame_summaries`` row: a camera's frame rows in the window ``[start, end)``.

    ``grade`` is the class with most frames (ties: the higher mean probability);
    ``score`` and ``probabilities`` are means over the frames.
    """
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
    a window keeps its earlier frames. With ``bigquery``, the frame's row and
    the window's summary go to ``bigquery`` as ``(table, [row], [])``.

    Args:
        config: The stream's options.
    """

    def __init__(self, config: StreamConfig) -> None:
        self._config = config
        self._rows = Metrics.counter(NS, "frame_rows")

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
        labels = posixpath.join(self._config.out, "frame_labels", part, f"{name}.parquet")
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
        summary = window_summary(camera, start, end, rows, classes)
        write_geoparquet(
            posixpath.join(self._config.out, "frame_summaries", part, f"{name}.parquet"),
            [summary],
            "frame_summaries",
            frame_summaries_schema(),
        )
        self._rows.inc()
        if self._config.bigquery:
            yield TaggedOutput(BIGQUERY, ("frame_labels", [row], []))
            yield TaggedOutput(BIGQUERY, ("frame_summaries", [summary], []))
        yield {
            **entry,
            "window_start": start,
            "frame_labels": f"frame_labels/{part}/{name}.parquet",
        }
