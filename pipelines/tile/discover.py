"""The Tile job's discovery: input files into scenes and frames, and frame labels joined to them.

A file that is not a scene or frame, or a frame label that names no frame, is
dead-lettered with the reason, never dropped.
"""

from __future__ import annotations

import collections
import posixpath
from collections.abc import Iterator, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput

from minewatch.errors import InputError
from minewatch.labels import FrameLabels, VectorLabels
from minewatch.scenes import Rejection, SceneRef, group_files, unique_ids
from minewatch.stac import read_stac, stac_document
from pipelines.options import list_inputs
from pipelines.tile.accounting import COUNTS, DEAD, NS, dead_row
from pipelines.tile.options import TileConfig

__all__ = [
    "DiscoverScenes",
    "ParseFrameLabels",
    "attach_frame_label",
    "label_refs",
    "unused_labels",
]

# -- discovery ---------------------------------------------------------------------


class DiscoverScenes(beam.DoFn):  # type: ignore[misc]
    """List all inputs at once and group their files into scenes and frames."""

    def __init__(self, frame_pattern: str, stac_bands: Sequence[tuple[str, str]] = ()) -> None:
        self._frame_pattern = frame_pattern
        self._stac_bands = dict(stac_bands) or None
        self._inputs = Metrics.counter(NS, "inputs")
        self._rejected = Metrics.counter(NS, "inputs_dead_lettered")

    def process(self, patterns: Sequence[str]) -> Iterator[Any]:
        """Yield SceneRefs; dead-letter rows to ``dead``; input counts to ``counts``."""
        files: list[str] = []
        stac_refs: list[SceneRef] = []
        rejected: list[Rejection] = []
        for pattern in patterns:
            doc = stac_document(pattern)
            if doc is not None:
                found, refused = read_stac(pattern, self._stac_bands, doc)
                stac_refs.extend(found)
                rejected.extend(refused)
                continue
            matched = list_inputs(pattern)
            if not matched:
                yield from self._reject(Rejection(pattern, "matched no file"))
            files.extend(matched)
        refs, refused = group_files(files, self._frame_pattern)
        refs = unique_ids([*refs, *stac_refs])
        for rejection in [*rejected, *refused]:
            yield from self._reject(rejection)
        for ref in refs:
            self._inputs.inc()
            yield TaggedOutput(COUNTS, ("", collections.Counter(inputs_discovered=1)))
            yield ref

    def _reject(self, rejection: Rejection) -> Iterator[Any]:
        self._inputs.inc()
        self._rejected.inc()
        yield TaggedOutput(COUNTS, ("", collections.Counter(inputs_rejected=1)))
        yield TaggedOutput(
            DEAD, dead_row(rejection.input, rejection.reason, "input", stage="discover")
        )


# -- frame labels ------------------------------------------------------------------


class ParseFrameLabels(beam.DoFn):  # type: ignore[misc]
    """Parse frames-CSV lines into ``(path, FrameLabel)``; bad lines are dead-lettered."""

    def __init__(self, csv_path: str, columns: Sequence[str]) -> None:
        self._csv = csv_path
        self._columns = tuple(columns)
        self._base = posixpath.dirname(csv_path)

    def process(self, line: str) -> Iterator[Any]:
        """Yield ``(path, FrameLabel)`` or a dead-letter row."""
        if not line.strip():
            return
        try:
            row = FrameLabels.parse_line(line, self._columns, self._base)
        except InputError as exc:
            yield TaggedOutput(DEAD, dead_row(self._csv, str(exc), "label", stage="labels"))
            return
        yield row.path, row


def attach_frame_label(item: tuple[str, dict[str, list[Any]]]) -> Iterator[Any]:
    """Join frames with their CSV rows; rows without a frame are dead-lettered."""
    path, groups = item
    refs, rows = groups["ref"], groups["label"]
    for _ in rows[1:]:
        yield TaggedOutput(
            DEAD,
            dead_row(
                path, "duplicate row in frame labels; first one used", "label", stage="labels"
            ),
        )
    if not refs:
        for row in rows[:1]:
            yield TaggedOutput(
                DEAD,
                dead_row(
                    row.path, "frame label for a file that is not an input", "label", stage="labels"
                ),
            )
        return
    label = rows[0] if rows else None
    for ref in refs:
        if label is not None:
            ref = replace(
                ref,
                camera_id=label.camera_id or ref.camera_id,
                acquired=_iso_or(label.timestamp, ref.acquired),
            )
        yield ref, label


def _iso_or(text: str, default: str) -> str:
    if not text:
        return default
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return default


def label_refs(path: str, config: TileConfig) -> Iterator[str]:
    """The reference of every polygon in a label file (to find those no block used)."""
    labels = VectorLabels.load(
        path, config.label_field, config.classes, sparse=config.sparse_labels
    )
    yield from labels.refs


def unused_labels(item: tuple[str, dict[str, list[bool]]]) -> Iterator[dict[str, str]]:
    """A dead-letter row for a polygon that no block read (it lies outside every scene)."""
    ref, groups = item
    if groups["polygon"] and not groups["hit"]:
        yield dead_row(
            ref,
            "polygon outside every scene (it overlaps no block that was read)",
            "label",
            stage="labels",
        )
