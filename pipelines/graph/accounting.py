"""Accounting of the Graph job: counts, what the graph is worth, and ``stats.json``.

Accounting (``stats.json``, checked by the tests)::

    tiles.read = tiles.embedded + sum(tiles.dead_lettered.values())

``stats.json`` also says what the graph is worth, each figure summed by a combine:
the similarity edges' cosine quantiles (``similarity_cosine``), the packed bytes
against the plain ones (``packed_size``), and per class and edge kind the share
of packed neighbours with the seed's label (``homophily``); ``docs/graph.md``.
:func:`finalize` commits the packed shards and writes ``stats.json``.
"""

from __future__ import annotations

import collections
import json
import os
import posixpath
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict
from typing import Any

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.filesystems import FileSystems

from minewatch.paths import is_remote
from pipelines.graph.edges import KINDS, SIMILARITY, SPATIAL, TEMPORAL
from pipelines.graph.options import GraphConfig
from pipelines.graph.pack import packed_name

__all__ = [
    "SumHistograms",
    "config_options",
    "cosine_histogram",
    "count_kinds",
    "finalize",
]


#: Bins of the similarity-cosine histogram in ``stats.json`` (width 1e-4 over [-1, 1]).
_COSINE_BINS = 20_001
_QUANTILES = (0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99)


def cosine_histogram(table: pa.Table) -> Iterator[np.ndarray]:
    """Counts of a table's similarity-edge weights in :data:`_COSINE_BINS` bins (if any)."""
    similar = table.filter(pc.equal(table.column("kind"), SIMILARITY))
    if similar.num_rows:
        w = similar.column("weight").to_numpy().astype(np.float64)
        bins = np.clip(np.rint((w + 1.0) * 1e4), 0, _COSINE_BINS - 1).astype(np.int64)
        yield np.bincount(bins, minlength=_COSINE_BINS)


class SumHistograms(beam.CombineFn):  # type: ignore[misc]
    """Sum the cosine histograms of :func:`cosine_histogram`."""

    def create_accumulator(self) -> np.ndarray:
        """An empty histogram."""
        return np.zeros(_COSINE_BINS, np.int64)

    def add_input(self, acc: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """Add one histogram."""
        acc += counts
        return acc

    def merge_accumulators(self, accs: Iterable[np.ndarray]) -> np.ndarray:
        """Sum the partial histograms."""
        out = self.create_accumulator()
        for acc in accs:
            out += acc
        return out

    def extract_output(self, acc: np.ndarray) -> np.ndarray:
        """The summed histogram."""
        return acc


def _cosine_summary(histogram: np.ndarray) -> dict[str, Any]:
    """``stats.json``'s ``similarity_cosine``: count, min, mean, max and quantiles.

    Values are read from a histogram of 1e-4-wide bins (to 4 decimals).
    """
    n = int(histogram.sum())
    if not n:
        return {"edges": 0}
    centres = np.arange(histogram.size) / 1e4 - 1.0
    cum = np.cumsum(histogram)
    present = np.flatnonzero(histogram)
    quantiles = {str(q): round(float(centres[np.searchsorted(cum, q * n)]), 4) for q in _QUANTILES}
    return {
        "edges": n,
        "min": round(float(centres[present[0]]), 4),
        "mean": round(float(histogram @ centres / n), 4),
        "max": round(float(centres[present[-1]]), 4),
        "quantiles": quantiles,
    }


def count_kinds(table: pa.Table) -> dict[str, int]:
    """``{"edges.<kind>": n}`` of an edges table."""
    kinds = table.column("kind").to_pylist()
    return {f"edges.{k}": v for k, v in collections.Counter(kinds).items()}


def config_options(c: GraphConfig) -> dict[str, Any]:
    """``stats.json``'s ``options``: the config less what does not shape the graph."""
    options = asdict(c)
    options.pop("norm")
    options.pop("classes")
    options.pop("overwrite")  # what happens to an earlier run's outputs, not to this graph
    options["whiten"] = c.whitens
    return options


def _homophily(counts: dict[str, int], classes: Sequence[str]) -> dict[str, Any]:
    """``stats.json``'s ``homophily`` from the ``homophily.<label>.<kind>.<count>`` counts."""
    by_label: dict[int, dict[str, dict[str, int]]] = {}
    seeds: collections.Counter[int] = collections.Counter()
    for key, value in counts.items():
        if not key.startswith("homophily."):
            continue
        _, index, rest = key.split(".", 2)
        if rest == "seeds":
            seeds[int(index)] += value
            continue
        kind, what = rest.rsplit(".", 1)
        by_label.setdefault(int(index), {}).setdefault(kind, {})[what] = value

    def section(kinds: dict[str, dict[str, int]]) -> dict[str, Any]:
        out = {}
        for kind in (*KINDS, "all"):
            c = kinds.get(kind, {})
            n, labelled, same = c.get("neighbours", 0), c.get("labelled", 0), c.get("same", 0)
            share = round(same / labelled, 4) if labelled else None
            out[kind] = {"neighbours": n, "labelled": labelled, "same": same, "share": share}
        return out

    if not seeds:
        return {}
    total: dict[str, dict[str, int]] = {}
    for kinds in by_label.values():
        for kind, c in kinds.items():
            acc = total.setdefault(kind, {})
            for what, v in c.items():
                acc[what] = acc.get(what, 0) + v
    by_class = {}
    for label in sorted(seeds):
        name = classes[label] if 0 <= label < len(classes) else str(label)
        by_class[name] = {"seeds": seeds[label], **section(by_label.get(label, {}))}
    return {"all": {"seeds": sum(seeds.values()), **section(total)}, "by_class": by_class}


def _packed_size(counts: dict[str, int], pack_k: int) -> dict[str, Any]:
    """``stats.json``'s ``packed_size``: bytes of the packed records against the plain ones."""
    packed, plain = counts.get("packed_bytes", 0), counts.get("seed_bytes", 0)
    return {
        "records": counts.get("packed", 0),
        "bytes": packed,
        "plain_bytes": plain,
        "ratio": round(packed / plain, 4) if plain else None,
        "target_ratio": 1 + pack_k,
        "tiles_bytes": counts.get("tile_bytes", 0),
    }


def _embedding_stats(c: GraphConfig, whitening: Sequence[Any]) -> dict[str, Any]:
    fitted = {
        str(dim): (
            {"sample": w.rows, "shrinkage": round(w.shrinkage, 6)}
            if w is not None
            else "not whitened: fewer than 2 vectors, or all equal"
        )
        for dim, w in sorted(whitening)
    }
    return {"name": c.embedding, "whiten": c.whitens, "whitening": fitted}


def finalize(
    _: Any,
    counts: dict[str, int],
    stats_path: str,
    header: dict[str, Any],
    packed_files: list[str],
    packed_shards: int,
    packed_dir: str,
    temp_dir: str,
    config: GraphConfig | None = None,
    cosines: np.ndarray | None = None,
    whitening: Sequence[Any] = (),
) -> dict[str, Any]:
    """Move the packed shards into place, then write ``stats.json``.

    ``packed_files`` are the committed shards, ``packed/<attempt>/<name>``
    relative to ``temp_dir``; a shard number that no record hashed to gets an
    empty file, so ``packed-*-of-NNNNN`` is complete. ``stats.json``: tiles in =
    embedded + dead-lettered; edges by kind; the embedding and its whitening; the
    similarity edges' cosines; packed sizes; homophily of the packed neighbours.
    """
    c = config or GraphConfig("", "")
    if not is_remote(packed_dir):
        os.makedirs(packed_dir, exist_ok=True)
    written = set()
    for rel in sorted(set(packed_files)):
        name = rel.rsplit("/", 1)[1]
        src, dst = posixpath.join(temp_dir, rel), posixpath.join(packed_dir, name)
        if name in written:
            raise RuntimeError(f"two committed bundles wrote packed shard {name}")
        written.add(name)
        if FileSystems.exists(src):
            FileSystems.rename([src], [dst])
        elif not FileSystems.exists(dst):  # a retried finalize already moved it
            raise OSError(f"{src} of a committed bundle is missing")
    for index in range(packed_shards):
        name = packed_name(index, packed_shards)
        if name not in written:
            with FileSystems.create(posixpath.join(packed_dir, name)):
                pass
    if FileSystems.exists(temp_dir):
        FileSystems.delete([temp_dir])
    dead = {k.split(".", 1)[1]: v for k, v in sorted(counts.items()) if k.startswith("dead.")}
    files_corrupt = dead.pop("read", 0)
    edges = {kind: counts.get(f"edges.{kind}", 0) for kind in (SIMILARITY, SPATIAL, TEMPORAL)}
    stats = {
        **header,
        "tiles": {
            "read": counts.get("tiles_read", 0),
            "embedded": counts.get("embedded", 0),
            "dead_lettered": dead,
        },
        "files_corrupt": files_corrupt,
        "edges": {**edges, "total": sum(edges.values())},
        "graph_lines": counts.get("graph_lines", 0),
        "packed": counts.get("packed", 0),
        "embedding": _embedding_stats(c, whitening),
        "similarity_cosine": _cosine_summary(
            cosines if cosines is not None else np.zeros(_COSINE_BINS, np.int64)
        ),
        "packed_size": _packed_size(counts, c.pack_k),
        "homophily": _homophily(counts, c.classes),
    }
    if c.classes:
        stats["classes"] = list(c.classes)
    with FileSystems.create(stats_path) as f:
        f.write(json.dumps(stats, indent=2, default=str).encode())
    return stats
