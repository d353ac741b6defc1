"""``minewatch train``, ``evaluate`` and ``promote``: the NSL trainer's commands.

Thin entry points over :mod:`nsl_models`; TensorFlow is imported inside each
command so ``minewatch --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from minewatch.cli.options import comma_list
from minewatch.errors import ConfigError, InputError


@click.command(short_help="Train a tile or frame classifier (NSL graph + adversarial).")
@click.option(
    "--config",
    "config_path",
    required=True,
    metavar="FILE",
    help="YAML or TOML config (see docs/training.md).",
)
@click.option(
    "--out", required=True, metavar="MODEL_DIR", help="Model folder; resumed if it exists."
)
@click.option(
    "--set",
    "overrides",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a config value, e.g. --set train.epochs=3 (repeatable).",
)
def train(config_path: str, out: str, overrides: tuple[str, ...]) -> None:
    """Train a model from a config and export it to MODEL_DIR.

    Checkpoints every train.checkpoint_every steps; running the same command
    again after a crash resumes from the last checkpoint. Writes
    MODEL_DIR/saved_model/ and MODEL_DIR/metadata.json at the end.

    \b
    Examples:
      minewatch train --config nsl_models/configs/tiles.yaml --out models/tiles
      minewatch train --config frames.yaml --out models/f1 \\
          --set train.epochs=3 --set adversarial.enabled=true
    """
    from nsl_models.configs import load_config

    try:
        config = load_config(config_path, overrides)
    except ConfigError as err:
        raise click.BadParameter(str(err), param_hint="--config/--set") from None
    from nsl_models.train import train_from_config

    try:
        result = train_from_config(config, out)
    except (ConfigError, InputError) as err:
        raise click.ClickException(str(err)) from None
    acc = result.metrics.get("accuracy")
    click.echo(
        f"{out}: version {result.metadata.get('version')}, step {result.global_step}, "
        f"held-out accuracy {acc if acc is None else round(acc, 4)}"
    )


@click.command(short_help="Evaluate models: clean, corrupted and adversarial accuracy.")
@click.argument("model_dirs", nargs=-1, required=True, metavar="MODEL_DIR...")
@click.option(
    "--data",
    required=True,
    metavar="DIR",
    help="A tile folder (output of `minewatch tile`), scored per tile; or a frames folder "
    "(labels.csv with path,camera_id,timestamp,label, like the frames/ folder of "
    "`minewatch synth`), scored per frame from the mean of its tiles' probabilities.",
)
@click.option(
    "--out", required=True, metavar="REPORT.json", help="Report path (a PNG is written next to it)."
)
@click.option(
    "--split",
    type=click.Choice(["all", "validation"]),
    default="all",
    show_default=True,
    help="All labelled tiles of DIR, or the held-out split of the training config "
    "(tile folders only; a frames folder is itself held out).",
)
@click.option(
    "--corruptions",
    callback=comma_list,
    metavar="NAMES",
    help="Corruptions (minewatch.corruptions); default: the belt-camera suite for frame "
    "models, satellite ones plus shift for tile models.",
)
@click.option(
    "--severities",
    callback=comma_list,
    default="1,3,5",
    show_default=True,
    metavar="INTS",
    help="Corruption severities.",
)
@click.option(
    "--epsilons",
    callback=comma_list,
    default="0.02,0.05",
    show_default=True,
    metavar="FLOATS",
    help="FGSM/PGD radii in per-band std units ('' for none).",
)
@click.option(
    "--max-examples",
    type=click.IntRange(0),
    default=0,
    help="Evaluate a seeded sample of this many tiles (frames for a frames folder).",
)
@click.option(
    "--decision",
    type=click.Choice(["served", "trained"]),
    default="served",
    show_default=True,
    help="Tile folders: read a tile's class from the served (calibrated) probabilities, "
    "or from the head as trained (the logit adjustment taken back out; what balanced "
    "accuracy rewards). docs/training.md, 'Calibrated decisions'.",
)
def evaluate(
    model_dirs: tuple[str, ...],
    data: str,
    out: str,
    split: str,
    corruptions: tuple[str, ...],
    severities: tuple[str, ...],
    epsilons: tuple[str, ...],
    max_examples: int,
    decision: str,
) -> None:
    """Per-class precision/recall/F1 and accuracy, clean and under corruption/attack.

    DIR is a tile folder (each tile scored; corruptions act on the stored
    tiles) or a frames folder with labels.csv (each frame scored, the unit the
    product grades: the faults act on the whole frame, which is then cut into
    the model's tiles as the tile job cuts it, and the frame's grade is the
    argmax of the mean tile probability; tile-level scores are kept under
    "tiles"). Writes REPORT.json and REPORT.png (accuracy vs severity, one
    line per model).

    \b
    Examples:
      minewatch evaluate models/plain models/nsl --data out/tiles --out report.json
      minewatch evaluate models/f1 models/f2 --data gt/frames --out r.json
      minewatch evaluate models/f1 --data gt/frames --out r.json \\
          --corruptions tilt,belt_blur,combo2 --severities 1,3,5 --epsilons 0.05
    """
    from minewatch.corruptions import BELT_SUITE, CORRUPTIONS, SATELLITE_CORRUPTIONS
    from nsl_models.evaluate import evaluate_models, plot_report, write_report
    from nsl_models.registry import read_metadata

    try:
        sev = [int(s) for s in severities]
        eps = [float(e) for e in epsilons]
    except ValueError as err:
        raise click.BadParameter(str(err), param_hint="--severities/--epsilons") from None
    unknown = [c for c in corruptions if c not in CORRUPTIONS]
    if unknown:
        raise click.BadParameter(
            f"unknown corruption(s) {unknown}; choose from {', '.join(CORRUPTIONS)}",
            param_hint="--corruptions",
        )
    try:
        if not corruptions:
            task = read_metadata(model_dirs[0])["task"]
            corruptions = BELT_SUITE if task == "frame" else ("shift", *SATELLITE_CORRUPTIONS)
        report = evaluate_models(
            model_dirs,
            data,
            split=split,
            corruptions=corruptions,
            severities=sev,
            epsilons=eps,
            max_examples=max_examples,
            decision=decision,
        )
    except (ConfigError, InputError) as err:
        raise click.ClickException(str(err)) from None
    write_report(report, out)
    png = out[: -len(".json")] + ".png" if out.endswith(".json") else out + ".png"
    plot_report(report, png)
    for m in report["models"]:
        clean = m["clean"]
        if report.get("unit") == "frame":
            click.echo(
                f"{m['model']}: clean frame accuracy {clean['accuracy']:.4f}, "
                f"tile accuracy {clean['tiles']['accuracy']:.4f} "
                f"({clean['examples']} frames, {clean['tiles']['examples']} tiles)"
            )
        else:
            click.echo(f"{m['model']}: clean accuracy {clean['accuracy']:.4f}")
    click.echo(f"wrote {out} and {png}")


@click.command(short_help="Copy a model into a registry and make it current if it is better.")
@click.argument("model_dir", metavar="MODEL_DIR")
@click.option("--registry", required=True, metavar="DIR", help="Registry folder.")
@click.option(
    "--metric",
    default=None,
    help="Held-out metric to compare "
    "[default: the candidate's selection metric, e.g. balanced_accuracy].",
)
def promote(model_dir: str, registry: str, metric: str | None) -> None:
    """Promote MODEL_DIR when it beats the registry's current model.

    Refuses (exit code 1) a model with NaN weights or metrics, another task or
    class list, or a held-out metric that does not beat the current one.
    Versions stay in DIR/versions/ for rollback.

    \b
    Example:
      minewatch promote models/tiles --registry registry/tiles
    """
    from nsl_models.registry import promote as promote_model

    try:
        decision = promote_model(model_dir, registry, metric)
    except (ConfigError, InputError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(decision.reason)
    if not decision.promoted:
        sys.exit(1)
