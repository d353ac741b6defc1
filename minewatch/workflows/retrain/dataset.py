"""``WORK/dataset/``: the union of the committed batches, as one tile job's output.

``tiles/`` and ``manifest/`` hold hard links (local) or copies of the batches'
files and ``stats.json`` merges their band statistics exactly; the folder is
rebuilt from the ledger each run, so syncing is idempotent.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from minewatch.errors import InputError
from minewatch.paths import write_json

__all__ = ["acquired_window", "merge_band_stats", "sync_dataset"]


def merge_band_stats(parts: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """Merge the ``bands`` sections of several tile jobs' ``stats.json`` exactly.

    Each part holds ``count``, ``mean``, ``std`` (population), ``min`` and
    ``max`` per band; sums and sums of squares are rebuilt from them, so the
    merged mean and std equal those of one job over all the pixels.

    Args:
        parts: ``stats["bands"]`` of each job.

    Returns:
        The merged ``bands`` section (same keys).
    """
    from minewatch.bandstats import BandStats

    merged = BandStats({})
    for bands in parts:
        merged.merge(BandStats.from_summary(bands))
    return merged.summary()


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _link(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (copy across devices); an existing ``dst`` stays."""
    if os.path.exists(dst):
        return
    try:
        os.link(src, dst)
    except OSError:
        temp = f"{dst}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copy2(src, temp)
        os.replace(temp, dst)


def sync_dataset(work: str, batches: Sequence[str]) -> dict[str, Any]:
    """Make ``WORK/dataset/`` the union of the committed batches (idempotent).

    Args:
        work: The work folder.
        batches: Run ids of the committed batches, in order.

    Returns:
        The dataset's ``stats.json`` content.

    Raises:
        InputError: Batches with different class lists (give ``--classes`` in
            ``tile_args`` so every night labels the same classes).
    """
    dataset = os.path.join(work, "dataset")
    stats_parts, classes, first = [], None, ""
    totals = {"tiles": 0, "inputs": 0}
    with_tiles = []
    for batch in batches:
        folder = os.path.join(work, "batches", batch)
        stats = _read_json(os.path.join(folder, "stats.json"))
        batch_classes = list(stats.get("classes") or [])
        if stats["tiles"]["written"]:
            with_tiles.append(batch)
            if classes is None:
                classes, first = batch_classes, batch
            elif batch_classes != classes:
                raise InputError(
                    f"batch {batch} has classes {batch_classes}, batch {first} has {classes}: "
                    "fix the class list with --classes in tile_args"
                )
        stats_parts.append(stats.get("bands") or {})
        totals["tiles"] += int(stats["tiles"]["written"])
        totals["inputs"] += int(stats["inputs"]["total"])
        for table in ("tiles", "manifest"):
            src_dir = os.path.join(folder, table)
            dst_dir = os.path.join(dataset, table)
            os.makedirs(dst_dir, exist_ok=True)
            for name in sorted(os.listdir(src_dir)) if os.path.isdir(src_dir) else ():
                if name.startswith(".") or name == "part-empty.parquet":
                    continue
                # Shard names are derived from each batch's own inputs
                # (tiles-00000-of-00001.tfrecord in every small batch): the batch
                # id keeps one batch's files from standing in for another's.
                _link(os.path.join(src_dir, name), os.path.join(dst_dir, f"{batch}__{name}"))
    merged = {
        "label_source": "retrain",
        "classes": classes or [],
        "batches": list(batches),
        "batches_with_tiles": with_tiles,
        "tiles": {"written": totals["tiles"]},
        "inputs": {"total": totals["inputs"]},
        "bands": merge_band_stats(stats_parts),
    }
    write_json(os.path.join(dataset, "stats.json"), merged)
    return merged


def acquired_window(dataset: str) -> tuple[Any, Any]:
    """The first and last ``acquired`` time in the dataset's manifest.

    Args:
        dataset: The dataset folder (``WORK/dataset``).

    Returns:
        ``(earliest, latest)``, or ``(None, None)`` when there is no manifest.
    """
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    folder = os.path.join(dataset, "manifest")
    if not os.path.isdir(folder) or not os.listdir(folder):
        return None, None
    column = ds.dataset(folder, format="parquet").to_table(columns=["acquired"])["acquired"]
    bounds = pc.min_max(column)
    return bounds["min"].as_py(), bounds["max"].as_py()
