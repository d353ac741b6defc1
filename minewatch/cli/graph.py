"""``minewatch graph``: tiles into a similarity graph and NSL's packed training examples."""

from __future__ import annotations

import logging
import os
import shutil
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import click

from minewatch import __version__
from minewatch.cli.options import (
    DRY_RUN,
    abs_path,
    out_opt,
    overwrite_opt,
    profile_opt,
    rows_table,
    with_profile,
)

#: ``--nbr-features``' default, ``pipelines.similarity_graph.LEAN_NBR_FEATURES`` (the
#: command does not import Beam to answer ``--help``; a test keeps the two equal).
LEAN_NBR_FEATURES = ("image/raw", "mask/valid", "tile/id", "label/class")
#: ``--embedding`` value that trains the label-free encoder (``nsl_models.encoder``).
CONTRASTIVE = "contrastive"
#: Whether ``--embedding contrastive`` whitens by default (docs/graph.md, "Which embedding").
CONTRASTIVE_WHITEN = True
#: ``EncoderConfig`` fields ``--embedding contrastive`` trains with; none: its defaults,
#: the same as ``minewatch encoder``'s.
CONTRASTIVE_OPTIONS: dict[str, Any] = {}

log = logging.getLogger(__name__)


@click.command(
    short_help="Build the tile similarity graph and pack neighbours for NSL (Beam job).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("tiles_dir", metavar="TILES_DIR [BEAM OPTIONS]")
@out_opt
@click.option(
    "--k",
    "k",
    type=click.IntRange(1, 1000),
    default=10,
    show_default=True,
    help="Most similarity neighbours per tile (edges written; --pack-k: how many are packed).",
)
@click.option(
    "--pack-k",
    "pack_k",
    type=click.IntRange(1, 1000),
    default=3,
    show_default=True,
    help="Most neighbours packed per labelled example, the best by weight over all edge "
    "kinds (the trainer reads graph.max_neighbors of them).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(-1, 1),
    default=0.8,
    show_default=True,
    help="Least cosine similarity of a similarity edge.",
)
@click.option(
    "--embedding",
    default="builtin",
    show_default=True,
    metavar="builtin|contrastive|SAVEDMODEL_DIR",
    help="Built-in descriptor; 'contrastive': a label-free encoder trained on these tiles "
    "into --out/encoder first (the defaults of 'minewatch encoder'; a few minutes on 2 "
    "CPUs, reused when the tiles and options are the same); or a SavedModel with an "
    "'embedding' signature taking z-scored pixels (docs/graph.md, 'Which embedding').",
)
@click.option(
    "--whiten/--no-whiten",
    default=None,
    help="Whiten the embeddings with the job's own statistics before the similarity "
    "search, so that cosines spread.  [default: on for builtin and contrastive, off for "
    "a SavedModel]",
)
@click.option(
    "--rounds",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Partition trees for similarity candidates (more: higher recall, more work).",
)
@click.option(
    "--bucket-size",
    type=click.IntRange(16),
    default=16384,
    show_default=True,
    help="Most tiles per cell compared all-pairs (more cells above it).",
)
@click.option(
    "--spill-pairs",
    type=click.FloatRange(0, 1),
    default=0.9,
    show_default=True,
    help="Share of a sample's near-neighbour pairs each partition cut keeps together "
    "(its spill margin); 0: spill by --spill alone.",
)
@click.option(
    "--spill",
    type=click.FloatRange(0, 0.5),
    default=0.0,
    show_default=True,
    help="Least fraction of the tiles at each partition cut that also go to the other side.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Partition tree seed.")
@click.option(
    "--spatial-weight",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of edges between touching tiles of a scene; 0 for none.",
)
@click.option(
    "--temporal-weight",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of edges between acquisitions of the same footprint; 0 for none.",
)
@click.option(
    "--temporal-window",
    type=click.IntRange(1),
    default=4,
    show_default=True,
    help="Following acquisitions each one links to.",
)
@click.option(
    "--undirected", is_flag=True, help="Pack with every edge both ways (pack_nbrs' flag)."
)
@click.option(
    "--nbr-features",
    default=",".join(LEAN_NBR_FEATURES),
    show_default=True,
    metavar="all|FEATURE,...",
    help="Tile features of a neighbour copied into a packed example; 'all' for every "
    "one (exactly NSL's pack_nbrs).",
)
@overwrite_opt
@profile_opt
@click.pass_context
def graph(ctx: click.Context, /, **params: Any) -> None:
    """Build the similarity graph of a tile job's tiles and pack neighbours for NSL.

    TILES_DIR is the --out folder of 'minewatch tile' (tiles/*.tfrecord and
    stats.json). Options that minewatch does not know pass to Beam unchanged.

    Writes DIR/edges/ (Parquet: src, dst, weight, kind), DIR/graph.tsv (NSL's
    src<TAB>dst<TAB>weight), DIR/packed/ (TFRecords with NL_nbr_* features),
    DIR/dead_letter/ (Parquet) and DIR/stats.json (with the similarity cosines,
    packed sizes and the homophily of the packed neighbours). With --embedding
    contrastive, DIR/encoder/ holds the encoder (see 'minewatch encoder').

    \b
    Examples:
      minewatch graph out/tiles --out out/graph
      minewatch graph out/tiles --out out/graph --k 5 --threshold 0.9 \\
          --embedding models/classifier --direct_num_workers=2 \\
          --direct_running_mode=multi_processing
      minewatch graph out/tiles --out out/graph --pack-k 2 --temporal-weight 0.9
      minewatch graph out/tiles --out out/graph --embedding contrastive
    """
    stats = execute(params, extra=ctx.args)
    click.echo(summary(stats) if stats is not None else DRY_RUN)


def build(
    params: dict[str, Any], extra: Sequence[str] = ()
) -> tuple[Any, list[str], dict[str, Any]]:
    """Check the options and turn them into a GraphConfig.

    Args:
        params: click's parsed parameters.
        extra: Tokens click did not parse.

    Returns:
        ``(config, beam_args, header)``.

    Raises:
        click.BadParameter: An option cannot work; the message names it.
    """
    import json
    import posixpath

    from apache_beam.io.filesystems import FileSystems

    from minewatch.embeddings import BandNorm
    from pipelines.options import split_beam_args
    from pipelines.similarity_graph import GraphConfig

    rest, beam_args = split_beam_args(list(extra))
    if rest:
        raise click.UsageError(f"unexpected arguments {rest}: give one TILES_DIR")
    tiles_dir = params["tiles_dir"]
    if "://" not in tiles_dir:
        tiles_dir = os.path.abspath(tiles_dir)
    pattern = posixpath.join(tiles_dir, "tiles", "*.tfrecord")
    if not FileSystems.match([pattern])[0].metadata_list:
        raise click.BadParameter(
            f"{pattern} matches no file; give the --out folder of 'minewatch tile'",
            param_hint="TILES_DIR",
        )
    stats_path = posixpath.join(tiles_dir, "stats.json")
    if not FileSystems.exists(stats_path):
        raise click.BadParameter(
            f"{stats_path} is missing: the built-in descriptor and the model input are "
            "z-scored with the tile job's band statistics; run 'minewatch tile' to make it",
            param_hint="TILES_DIR",
        )
    with FileSystems.open(stats_path) as f:
        tile_stats = json.loads(f.read())
    norm = BandNorm.from_stats(tile_stats)
    classes = tuple(str(c) for c in tile_stats.get("classes") or ())
    nbr_features = _nbr_features(params["nbr_features"])
    embedding = params["embedding"]
    whiten = params["whiten"]
    contrastive = embedding == CONTRASTIVE
    if contrastive and whiten is None:
        whiten = CONTRASTIVE_WHITEN
    if embedding != "builtin" and not contrastive:
        if "://" not in embedding:
            embedding = os.path.abspath(embedding)
        if not FileSystems.exists(posixpath.join(embedding, "saved_model.pb")):
            raise click.BadParameter(
                f"{embedding} is not a SavedModel directory (no saved_model.pb); give "
                "'builtin', 'contrastive' or a model exported with an 'embedding' signature",
                param_hint="--embedding",
            )
    out = params["out"]
    out = abs_path(out)
    _prepare_out(out, params["overwrite"])
    if contrastive:
        embedding = _contrastive_encoder(tiles_dir, posixpath.join(out, "encoder"), params)
    config = GraphConfig(
        tiles=pattern,
        out=out,
        norm=norm,
        embedding=embedding,
        k=params["k"],
        threshold=params["threshold"],
        rounds=params["rounds"],
        bucket_size=params["bucket_size"],
        seed=params["seed"],
        pack_k=params["pack_k"],
        whiten=whiten,
        spill=params["spill"],
        spill_pairs=params["spill_pairs"],
        nbr_features=nbr_features,
        classes=classes,
        spatial_weight=params["spatial_weight"],
        temporal_weight=params["temporal_weight"],
        temporal_window=params["temporal_window"],
        undirected=params["undirected"],
    )
    header = {
        "minewatch_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tiles_dir": tiles_dir,
    }
    return config, with_profile(params.get("profile"), "graph", beam_args), header


def _contrastive_encoder(tiles_dir: str, folder: str, params: dict[str, Any]) -> str:
    """``--embedding contrastive``: train (or reuse) the encoder in ``folder``; its path.

    Raises:
        click.BadParameter: The encoder cannot be trained on these tiles, or ``folder``
            holds another one and ``--overwrite`` was not given.
    """
    from minewatch.errors import InputError
    from nsl_models.encoder import EncoderConfig, train_encoder

    try:
        config = EncoderConfig.from_dict(CONTRASTIVE_OPTIONS)
        meta = train_encoder(tiles_dir, folder, config, overwrite=params["overwrite"])
    except InputError as err:
        raise click.BadParameter(str(err), param_hint="--embedding") from None
    what = "kept" if meta.get("reused") else f"trained in {meta['seconds']} s"
    log.info("contrastive encoder %s: %s", folder, what)
    return folder


def _nbr_features(value: str) -> tuple[str, ...] | None:
    """``--nbr-features``: None for ``all``, else known tile feature names."""
    from minewatch.spec import FEATURES

    if value.strip() == "all":
        return None
    names = tuple(dict.fromkeys(n.strip() for n in value.split(",") if n.strip()))
    unknown = [n for n in names if n not in FEATURES]
    if unknown or not names:
        what = f"{', '.join(unknown)}: not tile features" if unknown else "no feature named"
        raise click.BadParameter(
            f"{what}; give 'all' or some of {', '.join(FEATURES)} "
            "(docs/tiles.md); the trainer needs image/raw",
            param_hint="--nbr-features",
        )
    return names


def _prepare_out(out: str, overwrite: bool) -> None:
    from apache_beam.io.filesystems import FileSystems

    from pipelines.similarity_graph import output_paths

    existing = [p for p in output_paths(out).values() if FileSystems.exists(p)]
    if existing and not overwrite:
        raise click.BadParameter(
            f"{out} already holds a graph job's output; add --overwrite to replace it",
            param_hint="--out",
        )
    for p in existing:
        if "://" in p:
            FileSystems.delete([p])
        elif os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
    if "://" not in out:
        os.makedirs(out, exist_ok=True)


def execute(
    params: dict[str, Any],
    extra: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: Any = None,
) -> dict[str, Any] | None:
    """Check the options, then build and run the job (see ``pipelines.similarity_graph``)."""
    from pipelines.similarity_graph import run_graph

    config, beam_args, header = build(params, extra)
    return run_graph(config, beam_args, save_main_session, test_pipeline, header)


def launch(
    argv: Sequence[str], save_main_session: bool = True, test_pipeline: Any = None
) -> dict[str, Any] | None:
    """Parse command-line arguments as ``minewatch graph`` does and run the job."""
    with graph.make_context("minewatch graph", list(argv)) as ctx:
        return execute(ctx.params, ctx.args, save_main_session, test_pipeline)


def summary(stats: dict[str, Any]) -> str:
    """Render the job's accounting as a small table."""
    tiles, edges = stats["tiles"], stats["edges"]
    rows = [
        ("tiles read", tiles["read"]),
        ("  embedded", tiles["embedded"]),
        *((f"  dead-lettered: {k}", v) for k, v in tiles["dead_lettered"].items()),
        *((f"edges: {k}", v) for k, v in edges.items()),
        ("graph.tsv lines", stats["graph_lines"]),
        ("packed examples", stats["packed"]),
    ]
    cosine = stats.get("similarity_cosine") or {}
    if cosine.get("edges"):
        q = cosine["quantiles"]
        rows.append(("similarity cosine q01/q50/q99", f"{q['0.01']}/{q['0.5']}/{q['0.99']}"))
    size = stats.get("packed_size") or {}
    if size.get("ratio") is not None:
        rows.append(
            ("packed bytes / plain bytes", f"{size['ratio']} (target <= {size['target_ratio']})")
        )
    homophily = (stats.get("homophily") or {}).get("all") or {}
    if homophily:
        rows.append(("packed neighbours, same label", homophily["all"]["share"]))
    return rows_table(rows)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(graph())
