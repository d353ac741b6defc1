"""Accounting for every input, the dead letter, and the job's ``infer_stats.json``.

Accounting (``infer_stats.json``, written atomically)::

    inputs.total = inputs.labelled + inputs.dead_lettered
    tiles_in     = tiles_labelled + tiles_dead_lettered

An input (scene or frame) is labelled when one of its tiles is; any other has
one dead-letter row of kind ``input`` (refused, or ``no tile kept (...)``).
Each input's dead-letter rows go to one file named by the input and the model
version (``dead_letter/<scene>__<version>.parquet``), written atomically and
replaced by a rerun.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import json
import posixpath
import uuid
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.pvalue import TaggedOutput

from minewatch.paths import replace_file
from minewatch.scenes import safe_id
from minewatch.tables import INFER_TABLES, dead_letter_schema, write_geoparquet
from pipelines.infer.scene_outputs import makedirs
from pipelines.tile.accounting import dead_row

__all__ = ["AccountInputs", "dead_key", "finish", "split_counts"]


def split_counts(item: tuple[str, Any]) -> Iterator[Any]:
    """Job counts (key ``""``) to the main output, per-input counts to ``scene``."""
    key, counts = item
    if key:
        yield TaggedOutput("scene", (("scene", key), counts))
    else:
        yield counts


def dead_key(row: dict[str, Any]) -> tuple[tuple[str, str], dict[str, Any]]:
    """A dead-letter row's file key: its scene (or frame), else the input it names."""
    if row["scene_id"]:
        return ("scene", row["scene_id"]), row
    return ("input", row["input"]), row


def _dead_letter_name(key: tuple[str, str], version: str) -> str:
    kind, name = key
    if kind == "scene":
        return f"{safe_id(name)}__{safe_id(version)}.parquet"
    digest = hashlib.sha1(name.encode()).hexdigest()[:10]
    base = safe_id(posixpath.basename(name.rstrip("/")))
    return f"input-{base}-{digest}__{safe_id(version)}.parquet"


def _write_rows(path: str, rows: Iterable[dict[str, Any]], schema: Any, chunk: int = 10_000) -> int:
    """Stream ``rows`` into one Parquet file, atomically; no row deletes the file.

    Rows are written ``chunk`` at a time, so a scene with a million dead tiles is
    never in memory at once. Returns the number of rows written.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = posixpath.dirname(path)
    temp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}.parquet")
    written = 0
    stream: Any = None
    writer: Any = None
    try:
        it = iter(rows)
        while part := list(itertools.islice(it, chunk)):
            if writer is None:
                makedirs(folder)
                stream = FileSystems.create(temp)
                writer = pq.ParquetWriter(stream, schema)
            writer.write_table(pa.Table.from_pylist(part, schema=schema))
            written += len(part)
    except BaseException:
        if writer is not None:
            writer.close()
            stream.close()
            FileSystems.delete([temp])
        raise
    if writer is not None:
        writer.close()
        stream.close()
        replace_file(temp, path)
    elif FileSystems.exists(path):
        FileSystems.delete([path])  # a rerun in which the input has no dead letter left
    return written


class AccountInputs(beam.DoFn):  # type: ignore[misc]
    """Decide each input's outcome; write its dead-letter file.

    Elements are ``(key, {"counts", "source", "dead"})`` from a ``CoGroupByKey``:
    ``key`` is ``("scene", scene_id)`` for a scene or frame (its cut counts, a
    ``labelled`` count from :class:`~pipelines.infer.scene_outputs.WriteSceneOutputs`,
    its path, its dead-letter rows), or ``("input", path)`` for rows that name
    no scene (inputs refused at discovery, unreadable shards and records).

    A scene is labelled when at least one of its tiles was; otherwise it is
    dead-lettered, with a row of kind ``input`` (``no tile kept (...)``: the
    tiles dropped by the cut, refused by the model and failed in inference,
    by reason) unless the scene was already refused whole when opened.

    The rows of a key go to ``dead_letter/<scene>__<version>.parquet`` (or
    ``input-<name>-<hash>__<version>.parquet``), written atomically and
    replaced by a rerun; a key with no row left deletes its old file.

    Args:
        out: Tables folder.
        version: Model version (part of the file names).
    """

    def __init__(self, out: str, version: str) -> None:
        self._out = out
        self._version = version

    def process(self, item: tuple[tuple[str, str], dict[str, Iterable[Any]]]) -> Iterator[Any]:
        """Write the key's dead-letter file; yield job counts, ``rows`` the added rows."""
        key, groups = item
        counts: collections.Counter[str] = collections.Counter()
        for part in groups["counts"]:
            counts.update(part)
        sources = sorted(set(groups["source"]))
        tally: collections.Counter[str] = collections.Counter()
        refused: collections.Counter[str] = collections.Counter()
        added: list[dict[str, str]] = []

        def rows() -> Iterator[dict[str, Any]]:
            for row in groups["dead"]:
                tally[f"dead_letter.{row['kind']}"] += 1
                if row["kind"] == "tile" and row["stage"] == "infer":
                    refused[row["reason"]] += 1
                yield row
            outcome = self._outcome(key, counts, refused, sources)
            if outcome is not None:
                tally[f"dead_letter.{outcome['kind']}"] += 1
                added.append(outcome)
                yield outcome

        _write_rows(
            posixpath.join(self._out, "dead_letter", _dead_letter_name(key, self._version)),
            rows(),
            dead_letter_schema(),
        )
        if key[0] == "scene":
            tally["inputs_labelled" if counts.get("labelled") else "inputs_dead_lettered"] += 1
        yield tally
        for row in added:
            yield TaggedOutput("rows", row)

    @staticmethod
    def _outcome(
        key: tuple[str, str],
        counts: collections.Counter[str],
        refused: collections.Counter[str],
        sources: Sequence[str],
    ) -> dict[str, str] | None:
        """The ``no tile kept`` row of a scene that was not labelled, else None."""
        kind, scene_id = key
        if kind != "scene" or counts.get("labelled") or counts.get("failed"):
            return None  # labelled, or refused whole by the cut (its row says why)
        parts = [
            f"{n} {k.split('.', 1)[1]}"
            for k, n in sorted(counts.items())
            if k.startswith("dropped.") and n
        ]
        parts += [f"{n} {reason}" for reason, n in refused.most_common(3)]
        if len(refused) > 3:
            parts.append(
                f"{sum(refused.values()) - sum(n for _, n in refused.most_common(3))} other"
            )
        detail = ", ".join(parts) or "no tile planned"
        source = sources[0] if sources else scene_id
        return dead_row(source, f"no tile kept ({detail})", "input", scene_id, stage="account")


def finish(
    _: Any, counts: dict[str, int], series: list[dict[str, Any]], out: str, header: dict[str, Any]
) -> dict[str, Any]:
    """Draw the stockpile plots, give every table a folder, write ``infer_stats.json``.

    Args:
        _: The trigger element (the job calls this once, after everything else).
        counts: The job's summed counts.
        series: Every ``stockpile_series`` row, for the plots.
        out: Tables folder.
        header: The fixed fields of the stats (run id, model, options).

    Returns:
        The stats as written.
    """
    from pipelines.infer.quicklook import plot_stockpile_series, plot_stockpile_volumes

    plot = volume_plot = None
    if series and header.get("pictures", True):
        version = safe_id(header["model_version"])
        plot = posixpath.join(out, "plots", f"stockpile_area__{version}.png")
        makedirs(posixpath.dirname(plot))
        plot_stockpile_series(series, plot)
        if any(r.get("volume_m3") is not None for r in series):
            volume_plot = posixpath.join(out, "plots", f"stockpile_volume__{version}.png")
            plot_stockpile_volumes(series, volume_plot)
    for table, schema in (*INFER_TABLES.items(), ("dead_letter", dead_letter_schema)):
        # A table with no row yet still exists, so queries over it answer "no rows".
        folder = posixpath.join(out, table)
        empty = posixpath.join(folder, "empty.parquet")
        if not FileSystems.exists(folder) and not FileSystems.exists(empty):
            write_geoparquet(empty, [], table, schema())
    rejected = counts.get("inputs_rejected", 0)
    stats = {
        **header,
        "inputs": {
            "total": counts.get("inputs_labelled", 0)
            + counts.get("inputs_dead_lettered", 0)
            + rejected,
            "labelled": counts.get("inputs_labelled", 0),
            "dead_lettered": counts.get("inputs_dead_lettered", 0) + rejected,
        },
        "counts": dict(sorted(counts.items())),
        "plot": plot,
        "volume_plot": volume_plot,
    }
    # Temporary file, then rename: a reader (or a second run) never sees half a file.
    path = posixpath.join(out, "infer_stats.json")
    temp = posixpath.join(out, f".tmp-{uuid.uuid4().hex}.json")
    with FileSystems.create(temp) as f:
        f.write(json.dumps(stats, indent=2, default=str).encode())
    replace_file(temp, path)
    return stats
