"""The Graph job: tiles into a similarity graph and NSL's packed training examples.

Graph (every step labelled)::

    tiles/*.tfrecord ─ Read ─ Parse ─ Embed (RunInference) ─ Check ─┬─ vectors ─ Similarity ─┐
          (corrupt files, bad records, failed embeddings) ─ dead    │  (Whitening first)      │
                                                                    ├─ nodes ─┬─ Spatial ────┤
                                                                    │         └─ Temporal ───┤
          edges/ ─────────────────────────────────────────────── edges ─ Adjacency ─ graph.tsv
                                                                    │             │
                                                                    └─ examples ──┴─ Pack ─ packed/

Packing plans on ids, labels, sizes and records' places; the shard writers read
the records again from the tile files (:mod:`.pack`).
The steps live by concept in the package: :mod:`.descriptors` (reading tiles,
the built-in or model embeddings, whitening), :mod:`.edges` (similarity edges
by partition trees and cells, spatial and temporal edges), :mod:`.pack` (the
graph file, packing as NSL's ``pack_nbrs`` does, the packed shards) and
:mod:`.accounting` (counts, ``stats.json``, committing the packed shards). This
module composes them (:class:`BuildTileGraph`) and runs the job.

Accounting (``stats.json``, checked by the tests)::

    tiles.read = tiles.embedded + sum(tiles.dead_lettered.values())

``stats.json`` also says what the graph is worth (:mod:`.accounting`,
``docs/graph.md``).
"""

from __future__ import annotations

import logging
import os
import posixpath
import uuid
from collections.abc import Sequence
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

from minewatch.errors import ConfigError
from minewatch.paths import is_remote
from minewatch.tables import dead_letter_schema
from pipelines.combiners import SumCounters
from pipelines.graph.accounting import (
    SumHistograms,
    config_options,
    cosine_histogram,
    count_kinds,
    finalize,
)
from pipelines.graph.descriptors import (
    DEAD,
    EXAMPLES,
    NODES,
    BuiltinEmbedding,
    CheckEmbedding,
    ParseTile,
    ReadTileRecords,
    SavedModelEmbedding,
    WhitenVectors,
    failed_batch,
)
from pipelines.graph.edges import (
    SimilarityEdges,
    SpatialEdges,
    TemporalEdges,
    edges_schema,
    rows_table,
)
from pipelines.graph.options import GraphConfig
from pipelines.graph.pack import COUNTS, LINES, WritePackedShards, adjacency, directed, pack_seeds
from pipelines.options import run_pipeline

__all__ = [
    "BuildTileGraph",
    "output_paths",
    "prepare_out",
    "run",
    "run_graph",
]

log = logging.getLogger(__name__)


def output_paths(out: str) -> dict[str, str]:
    """Where ``minewatch graph`` writes, under ``out``."""
    return {
        "edges": posixpath.join(out, "edges"),
        "graph": posixpath.join(out, "graph.tsv"),
        "packed": posixpath.join(out, "packed"),
        "dead_letter": posixpath.join(out, "dead_letter"),
        "stats": posixpath.join(out, "stats.json"),
    }


class BuildTileGraph(beam.PTransform):  # type: ignore[misc]
    """The Graph job: embed tiles, build edges, write the graph and packed examples.

    Example:
        >>> with beam.Pipeline() as p:  # doctest: +SKIP
        ...     p | "Graph" >> BuildTileGraph(GraphConfig("out/tiles/*.tfrecord", "out/graph"))

    Args:
        config: The job's options.
        header: Extra fields for ``stats.json``.
    """

    def __init__(self, config: GraphConfig, header: dict[str, Any] | None = None) -> None:
        super().__init__()
        self._config = config
        self._header = header or {}

    def expand(self, pbegin: beam.pvalue.PBegin) -> dict[str, beam.PCollection]:
        """Build the job; return the edge tables, dead-letter rows, packed files and stats."""
        c = self._config
        paths = output_paths(c.out)
        dead: list[beam.PCollection] = []
        counts: list[beam.PCollection] = []

        read = (
            pbegin
            | "MatchTiles" >> fileio.MatchFiles(c.tiles)
            | "SpreadFiles" >> beam.Reshuffle()
            | "OpenTiles" >> fileio.ReadMatches()
            | "ReadTiles" >> beam.ParDo(ReadTileRecords()).with_outputs(DEAD, main="records")
        )
        dead.append(read[DEAD])
        parsed = read.records | "Parse" >> beam.ParDo(ParseTile()).with_outputs(DEAD, main="tiles")
        dead.append(parsed[DEAD])
        handler: ModelHandler = (
            BuiltinEmbedding(c.norm, c.batch_size)
            if c.embedding == "builtin"
            else SavedModelEmbedding(c.embedding, c.norm, c.batch_size, c.embedding_bands)
        )
        embedded, failed = (
            parsed.tiles
            | "Embed" >> RunInference(KeyedModelHandler(handler)).with_exception_handling()
        )
        dead.append(failed.failed_inferences | "EmbedFailures" >> beam.FlatMap(failed_batch))
        checked = embedded | "CheckEmbedding" >> beam.ParDo(
            CheckEmbedding(c.bounds_decimals)
        ).with_outputs(DEAD, NODES, EXAMPLES, main="vectors")
        dead.append(checked[DEAD])

        vectors = checked.vectors
        whitening = None
        if c.whitens:
            whitened = vectors | "Whitening" >> WhitenVectors()
            vectors, whitening = whitened["vectors"], whitened["whitening"]
        similar = vectors | "Similarity" >> SimilarityEdges(
            c.k,
            c.threshold,
            c.trees,
            c.cell_size,
            c.seed,
            spill=c.spill,
            spill_pairs=c.spill_pairs,
        )
        dead.append(similar["dead_letter"])
        other: list[beam.PCollection] = []
        if c.spatial_weight > 0:
            other.append(checked[NODES] | "Spatial" >> SpatialEdges(c.spatial_weight))
        if c.temporal_weight > 0:
            other.append(
                checked[NODES] | "Temporal" >> TemporalEdges(c.temporal_weight, c.temporal_window)
            )
        tables = [similar["edges"]]
        if other:
            tables.append(
                other
                | "OtherEdges" >> beam.Flatten()
                | "BatchEdgeRows" >> beam.BatchElements(min_batch_size=1, max_batch_size=65536)
                | "EdgeRowTables" >> beam.Map(rows_table)
            )
        edges = tables | "AllEdges" >> beam.Flatten()
        edges | "WriteEdges" >> beam.io.WriteToParquetBatched(
            posixpath.join(paths["edges"], "edges"), edges_schema(), file_name_suffix=".parquet"
        )

        adjacent = (
            edges
            | "DirectedEdges" >> beam.FlatMap(directed, undirected=c.undirected)
            | "GroupBySource" >> beam.GroupByKey()
            | "Adjacency" >> beam.FlatMap(adjacency).with_outputs(LINES, main="adjacency")
        )
        adjacent[LINES] | "WriteGraphTsv" >> beam.io.WriteToText(
            paths["graph"], num_shards=1, shard_name_template=""
        )
        plans = pack_seeds(checked[EXAMPLES], adjacent.adjacency, c.pack_k, c.nbr_features)
        # Temporary files of the packed shards; only the job's finalize moves them.
        temp_dir = posixpath.join(c.out, f".tmp-{uuid.uuid4().hex[:12]}")
        written = plans | "WritePacked" >> WritePackedShards(
            temp_dir, c.records_per_shard, nbr_features=c.nbr_features
        )

        dead_rows = dead | "AllDeadLetters" >> beam.Flatten()
        dead_rows | "WriteDeadLetter" >> beam.io.WriteToParquet(
            posixpath.join(paths["dead_letter"], "dead_letter"),
            dead_letter_schema(),
            file_name_suffix=".parquet",
        )
        counts.append(read.records | "CountRead" >> beam.Map(lambda _: {"tiles_read": 1}))
        counts.append(dead_rows | "CountDead" >> beam.Map(lambda row: {f"dead.{row['stage']}": 1}))
        counts.append(checked.vectors | "CountEmbedded" >> beam.Map(lambda _: {"embedded": 1}))
        counts.append(edges | "CountEdges" >> beam.Map(count_kinds))
        counts.append(adjacent[LINES] | "CountLines" >> beam.Map(lambda _: {"graph_lines": 1}))
        counts.append(written[COUNTS])
        counts.append(
            checked[EXAMPLES] | "CountTileBytes" >> beam.Map(lambda e: {"tile_bytes": len(e[1][1])})
        )
        totals = (
            counts
            | "AllCounts" >> beam.Flatten()
            | "SumCounts" >> beam.CombineGlobally(SumCounters())
        )
        cosines = (
            edges
            | "CosineHistogram" >> beam.FlatMap(cosine_histogram)
            | "SumHistograms" >> beam.CombineGlobally(SumHistograms())
        )
        if whitening is None:
            whitening = pbegin | "NoWhitening" >> beam.Create([])
        stats = (
            pbegin
            | "FinalizeTrigger" >> beam.Create([None])
            | "Finalize"
            >> beam.Map(
                finalize,
                counts=beam.pvalue.AsSingleton(totals),
                stats_path=paths["stats"],
                header={**self._header, "options": config_options(c)},
                config=c,
                cosines=beam.pvalue.AsSingleton(cosines),
                whitening=beam.pvalue.AsList(whitening),
                packed_files=beam.pvalue.AsList(written["files"]),
                packed_shards=beam.pvalue.AsSingleton(written["shards"]),
                packed_dir=paths["packed"],
                temp_dir=temp_dir,
            )
        )
        return {
            "edges": edges,
            "dead_letter": dead_rows,
            "packed": written["files"],
            "stats": stats,
        }


# -- the job -------------------------------------------------------------------------


def prepare_out(out: str, overwrite: bool) -> None:
    """Make ``out`` ready for a graph job: refuse an earlier run's outputs unless ``overwrite``.

    With ``overwrite``, the earlier outputs are removed (``out/encoder``, the
    contrastive encoder ``minewatch graph`` may keep there, is not an output).

    Raises:
        ConfigError: ``out`` holds an earlier run's outputs and ``overwrite`` is off.
    """
    import shutil

    existing = [p for p in output_paths(out).values() if FileSystems.exists(p)]
    if existing and not overwrite:
        raise ConfigError(
            f"{out} already holds a graph job's output; add --overwrite to replace it", "--out"
        )
    for p in existing:
        if is_remote(p):
            FileSystems.delete([p])
        elif os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
    if not is_remote(out):
        os.makedirs(out, exist_ok=True)


def run_graph(
    config: GraphConfig,
    beam_args: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
    header: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Build and run the Graph job.

    Args:
        config: The job's options (checked by :func:`~pipelines.graph.options.graph_config`).
        beam_args: Beam pipeline options, passed through unchanged.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.
        header: Extra fields for ``stats.json``.

    Returns:
        The contents of ``stats.json``, or None when building on ``test_pipeline``
        or for a ``--dry_run``.

    Raises:
        ConfigError: ``config.out`` holds an earlier run's outputs and
            ``config.overwrite`` is off.
    """
    prepare_out(config.out, config.overwrite)
    stats, _ = run_pipeline(
        "Graph" >> BuildTileGraph(config, header),
        beam_args,
        save_main_session,
        test_pipeline,
        output_paths(config.out)["stats"],
    )
    return stats


def run(
    argv: Sequence[str] | None = None,
    save_main_session: bool = True,
    test_pipeline: beam.Pipeline | None = None,
) -> dict[str, Any] | None:
    """Run the Graph job from command-line arguments, ours and Beam's (Beam's ``run(argv)``).

    Args:
        argv: Arguments as on the command line after ``minewatch graph``:
            TILES_DIR, :data:`~pipelines.graph.options.GRAPH_ARGS`, Beam options.
        save_main_session: Pickle ``__main__`` for the workers.
        test_pipeline: Build on this pipeline instead and do not run it.

    Returns:
        See :func:`run_graph`.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
            ``--embedding contrastive`` is one (``minewatch graph`` trains the
            encoder; this job only reads one).
    """
    from minewatch.arguments import parse
    from pipelines.graph.options import GRAPH_ARGS, graph_config

    params, rest = parse(GRAPH_ARGS, argv, "minewatch graph")
    config, beam_args, header = graph_config(params, rest)
    return run_graph(config, beam_args, save_main_session, test_pipeline, header)
