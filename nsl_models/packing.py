"""A spatial-neighbour graph and NSL-packed records from a tile job's output.

A stand-in for the similarity-graph job (``pipelines/similarity_graph.py``) for
tests, benchmarks and the measured claims: it builds a graph from tile
*positions* (no embeddings) and packs it with NSL's own
``nsl.tools.pack_nbrs``, so the records have exactly the packed format the
graph job writes.

Edges (weight 1, undirected), from the manifest:

* the 4-neighbours of a tile in its scene grid (``row_off``/``col_off`` one tile
  apart);
* the tile at the same position in every other scene of the same CRS and
  grid (the same place on another date), when ``temporal``.

The graph TSV is ``source_id<TAB>target_id<TAB>weight`` (NSL's format).
"""

from __future__ import annotations

import glob
import importlib
import os
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from minewatch.compat import import_nsl

__all__ = ["pack_tiles", "spatial_graph"]


def spatial_graph(tiles_dir: str, out_tsv: str, temporal: bool = True) -> int:
    """Write the spatial/temporal neighbour graph of a tile job as TSV.

    Args:
        tiles_dir: ``minewatch tile`` output (reads ``manifest/*.parquet``).
        out_tsv: Output TSV path.
        temporal: Also link the same position across scenes. Default True.

    Returns:
        Number of directed edges written (each undirected edge once).
    """
    import pyarrow.parquet as pq

    parts = sorted(glob.glob(os.path.join(tiles_dir, "manifest", "*.parquet")))
    columns = ["tile_id", "scene_id", "crs", "row_off", "col_off", "height", "width"]
    table = [row for p in parts for row in pq.read_table(p, columns=columns).to_pylist()]
    by_pos = {(r["scene_id"], r["row_off"], r["col_off"]): r["tile_id"] for r in table}
    same_place: dict[tuple[str, int, int], list[str]] = defaultdict(list)
    edges: set[tuple[str, str]] = set()
    for r in table:
        for dr, dc in ((r["height"], 0), (0, r["width"])):
            other = by_pos.get((r["scene_id"], r["row_off"] + dr, r["col_off"] + dc))
            if other is not None:
                edges.add((r["tile_id"], other))
        if temporal and r["crs"]:
            same_place[(r["crs"], r["row_off"], r["col_off"])].append(r["tile_id"])
    for ids in same_place.values():
        for i, a in enumerate(ids):
            for b in ids[i + 1 :]:
                edges.add((a, b))
    os.makedirs(os.path.dirname(os.path.abspath(out_tsv)), exist_ok=True)
    with open(out_tsv, "w") as f:
        for a, b in sorted(edges):
            f.write(f"{a}\t{b}\t1.0\n")
    return len(edges)


def _writer(path: str) -> Any:
    """A ``tf.io.TFRecordWriter`` (TensorFlow imported lazily)."""
    import tensorflow as tf

    return tf.io.TFRecordWriter(path)


def _split_by_label(files: Sequence[str], labelled_path: str, unlabelled_path: str) -> None:
    import tensorflow as tf

    spec = {"label/class": tf.io.FixedLenFeature([], tf.int64, default_value=-1)}
    with (
        tf.io.TFRecordWriter(labelled_path) as labelled,
        tf.io.TFRecordWriter(unlabelled_path) as unlabelled,
    ):
        for record in tf.data.TFRecordDataset(list(files)):
            label = int(tf.io.parse_single_example(record, spec)["label/class"])
            (labelled if label >= 0 else unlabelled).write(record.numpy())


def pack_tiles(tiles_dir: str, out_dir: str, max_neighbors: int = 3, temporal: bool = True) -> str:
    """Write ``OUT/packed/packed.tfrecord``: labelled tiles with their neighbours.

    Builds :func:`spatial_graph` into ``OUT/graph.tsv`` and packs it as
    ``nsl.tools.pack_nbrs(labelled, unlabelled, graph, out,
    add_undirected_edges=True, max_nbrs=max_neighbors, id_feature_name="tile/id")``
    would (with NSL's own reader and joiner: its TSV reader fails on Python 3.11).
    Labelled tiles (``label/class >= 0``) become training records; unlabelled
    tiles appear only as neighbours (NSL's behaviour).

    Args:
        tiles_dir: ``minewatch tile`` output.
        out_dir: Output folder (may be ``tiles_dir``).
        max_neighbors: Most neighbours per record. Default 3.
        temporal: Link the same place across dates. Default True.

    Returns:
        The packed TFRecord path.
    """
    import_nsl()
    files = sorted(glob.glob(os.path.join(tiles_dir, "tiles", "*.tfrecord")))
    work = os.path.join(out_dir, "packing")
    os.makedirs(work, exist_ok=True)
    os.makedirs(os.path.join(out_dir, "packed"), exist_ok=True)
    graph = os.path.join(out_dir, "graph.tsv")
    spatial_graph(tiles_dir, graph, temporal=temporal)
    labelled = os.path.join(work, "labelled.tfrecord")
    unlabelled = os.path.join(work, "unlabelled.tfrecord")
    _split_by_label(files, labelled, unlabelled)
    out = os.path.join(out_dir, "packed", "packed.tfrecord")
    # nsl.tools.pack_nbrs reads the TSV with open(..., "rU"), which Python 3.11
    # refuses; its own reader and joiner (same module) do the rest, so the
    # records are byte-for-byte what pack_nbrs would write.
    # TODO(issue 5): use the graph job's packed output once it lands.
    impl = importlib.import_module("neural_structured_learning.tools.pack_nbrs")
    adjacency: dict[str, dict[str, float]] = defaultdict(dict)
    with open(graph) as f:
        for line in f:
            src, dst, weight = line.rstrip("\n").split("\t")
            adjacency[src][dst] = float(weight)
            adjacency[dst][src] = float(weight)  # add_undirected_edges=True
    seeds = impl._read_tfrecord_examples(labelled, "tile/id")
    nbrs = impl._read_tfrecord_examples(unlabelled, "tile/id")
    with _writer(out) as writer:
        for merged in impl._join_examples(seeds, nbrs, adjacency, max_neighbors):
            writer.write(merged.SerializeToString())
    return out
