"""``minewatch graph``: tiles into a similarity graph and NSL's packed training examples."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

import click

from minewatch.cli.options import DRY_RUN, click_error, click_options, rows_table
from minewatch.errors import ConfigError, InputError
from pipelines.graph.options import CONTRASTIVE, GRAPH_ARGS

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
@click_options(GRAPH_ARGS)
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
    from pipelines.graph import graph_config, run_graph

    try:
        if params["embedding"] == CONTRASTIVE:
            params = contrastive_params(params, ctx.args)
        config, beam_args, header = graph_config(params, ctx.args)
        stats = run_graph(config, beam_args, header=header)
    except ConfigError as exc:
        raise click_error(exc) from exc
    click.echo(summary(stats) if stats is not None else DRY_RUN)


def contrastive_params(params: dict[str, Any], extra: Sequence[str] = ()) -> dict[str, Any]:
    """``--embedding contrastive``: train (or reuse) the encoder in ``--out``/encoder.

    The Graph stage reads a trained encoder but may not train one (training is
    ``nsl_models``' work, a layer the stage does not import), so the command
    trains it first. The other options and ``--out`` are checked before, as the
    job will check them, so that a mistake costs no minutes of training.

    Args:
        params: The command's options, ``embedding`` being ``contrastive``.
        extra: Tokens click did not parse: Beam options.

    Returns:
        ``params`` with the encoder's folder as ``embedding`` and ``whiten``
        defaulting to :data:`CONTRASTIVE_WHITEN`.

    Raises:
        ConfigError: An option cannot work; or the encoder cannot be trained on
            these tiles, or its folder holds another one and ``--overwrite`` was
            not given (both name ``--embedding``).
    """
    import posixpath

    from nsl_models.encoder import EncoderConfig, train_encoder
    from pipelines.graph import graph_config
    from pipelines.graph.job import prepare_out

    # "builtin" stands in for the encoder not trained yet; every other check is the job's.
    config, _, header = graph_config({**params, "embedding": "builtin"}, extra)
    prepare_out(config.out, config.overwrite)
    folder = posixpath.join(config.out, "encoder")
    try:
        encoder = EncoderConfig.from_dict(CONTRASTIVE_OPTIONS)
        meta = train_encoder(header["tiles_dir"], folder, encoder, overwrite=config.overwrite)
    except InputError as err:
        raise ConfigError(str(err), "--embedding") from None
    what = "kept" if meta.get("reused") else f"trained in {meta['seconds']} s"
    log.info("contrastive encoder %s: %s", folder, what)
    whiten = CONTRASTIVE_WHITEN if params["whiten"] is None else params["whiten"]
    return {**params, "embedding": folder, "whiten": whiten}


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
