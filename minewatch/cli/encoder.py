"""``minewatch encoder``: train the label-free contrastive tile encoder for ``minewatch graph``."""

from __future__ import annotations

import sys
from typing import Any

import click

from minewatch.cli.options import comma_list, out_opt, overwrite_opt
from minewatch.errors import ConfigError, InputError
from minewatch.paths import abs_path
from nsl_models.encoder import EncoderConfig

#: The option defaults: the class fields (``--help`` imports no TensorFlow).
_D = EncoderConfig


@click.command(short_help="Train a label-free tile encoder for the graph's --embedding.")
@click.argument("tiles_dir", metavar="TILES_DIR")
@out_opt
@click.option(
    "--steps", type=click.IntRange(1), default=_D.steps, show_default=True, help="Optimizer steps."
)
@click.option(
    "--seed",
    type=int,
    default=_D.seed,
    show_default=True,
    help="Seed of the weights, the data order and the views.",
)
@click.option(
    "--dim", type=click.IntRange(1, 4096), default=_D.dim, show_default=True, help="Embedding size."
)
@click.option(
    "--batch-size",
    type=click.IntRange(2),
    default=_D.batch_size,
    show_default=True,
    help="Tiles per step (each tile's negatives are the other tiles' views).",
)
@click.option(
    "--width",
    type=click.IntRange(1, 1024),
    default=_D.width,
    show_default=True,
    help="Filters of the first block (the second has twice as many).",
)
@click.option(
    "--temperature",
    type=click.FloatRange(0, min_open=True),
    default=_D.temperature,
    show_default=True,
    help="NT-Xent temperature.",
)
@click.option(
    "--learning-rate",
    type=click.FloatRange(0, min_open=True),
    default=_D.learning_rate,
    show_default=True,
    help="Adam learning rate (cosine decay to 10%).",
)
@click.option(
    "--corruptions",
    callback=comma_list,
    metavar="NAMES|none",
    default=",".join(_D.corruptions),
    show_default=True,
    help="Corruptions (minewatch.corruptions) a view draws one from; 'none': flips and "
    "band jitter only.",
)
@click.option(
    "--max-severity",
    type=click.IntRange(1, 5),
    default=_D.max_severity,
    show_default=True,
    help="Highest corruption severity of a view.",
)
@click.option(
    "--shuffle-buffer",
    type=click.IntRange(1),
    default=_D.shuffle_buffer,
    show_default=True,
    help="Records in the shuffle buffer (the memory bound).",
)
@overwrite_opt
def encoder(tiles_dir: str, out: str, overwrite: bool, **options: Any) -> None:
    """Train a contrastive tile encoder on TILES_DIR's own tiles, no labels, and export it.

    TILES_DIR is the --out folder of 'minewatch tile' (tiles/*.tfrecord and
    stats.json). Each step takes a batch of tiles, makes two views of each (a
    random corruption, flip or quarter turn, and band jitter) and trains a small
    CNN to tell every tile's two views from the others (SimCLR's NT-Xent loss).
    The same tiles, options and seed give the same weights (CPU).

    Writes DIR as a SavedModel whose 'embedding' signature takes the z-scored
    tile pixels (what 'minewatch graph --embedding DIR' gives a model) and
    DIR/encoder.json (options, tiles fingerprint, steps, seconds, loss curve).
    An encoder already in DIR that was trained on the same tiles and options is
    kept; another one needs --overwrite. 'minewatch graph --embedding
    contrastive' runs this with the defaults into its own --out/encoder.

    \b
    Examples:
      minewatch encoder out/tiles --out out/encoder
      minewatch graph out/tiles --out out/graph --embedding out/encoder
      minewatch encoder out/tiles --out out/enc64 --dim 64 --steps 800 --seed 1
    """
    from nsl_models.encoder import train_encoder

    values = dict(options)
    if values["corruptions"] == ("none",):
        values["corruptions"] = ()
    try:
        config = EncoderConfig.from_dict(values)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--corruptions") from None
    try:
        meta = train_encoder(abs_path(tiles_dir), abs_path(out), config, overwrite=overwrite)
    except InputError as err:
        raise click.ClickException(str(err)) from None
    click.echo(summary(out, meta))


def summary(out: str, meta: dict[str, Any]) -> str:
    """One line on what was trained (or kept)."""
    if meta.get("reused"):
        return f"{out}: encoder already trained on these tiles with these options, kept"
    first, last = meta["loss"][0][1], meta["loss"][-1][1]
    return (
        f"{out}: {meta['steps']} steps in {meta['seconds']} s, contrastive loss "
        f"{first} -> {last} (chance {meta['loss_chance']}), embedding dim "
        f"{meta['options']['dim']}"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(encoder())
