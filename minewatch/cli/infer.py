"""``minewatch infer``: label scenes, frames or tiles; find sites; write tables."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import click

from minewatch.cli.options import (
    DRY_RUN,
    abs_path,
    check_model_and_areas,
    comma_list,
    job_inputs,
    profile_opt,
    site_opts,
    site_params,
    with_profile,
)


@click.command(
    short_help="Label tiles and frames, find sites, write tables (Beam job).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("inputs", nargs=-1, type=click.UNPROCESSED, metavar="INPUT... [BEAM OPTIONS]")
@click.option(
    "--model",
    required=True,
    metavar="REGISTRY_OR_MODEL_DIR",
    help="A registry (its current model) or a model folder.",
)
@click.option("--out", required=True, metavar="TABLES_DIR", help="Tables folder.")
@click.option(
    "--concessions", metavar="FILE", help="Licensed areas (polygons, property licence_id)."
)
@click.option("--protected", metavar="FILE", help="Protected areas (polygons, property name).")
@click.option(
    "--stride",
    type=click.IntRange(1),
    default=None,
    help="Tiling step for scene inputs [default: half the model's tile size].",
)
@click.option(
    "--batch-size",
    type=click.IntRange(1, 4096),
    default=64,
    show_default=True,
    help="Most tiles per model call.",
)
@click.option(
    "--site-classes",
    callback=comma_list,
    metavar="NAMES",
    help="Classes that make sites [default: all but background/other].",
)
@click.option(
    "--mining-classes",
    callback=comma_list,
    metavar="NAMES",
    help="Site classes judged against concessions [default: mining_scar].",
)
@site_opts
@click.option(
    "--volumes/--no-volumes",
    default=True,
    show_default=True,
    help="Measure each stockpile sighting's volume (DSM, else shadow; docs/volumes.md).",
)
@click.option(
    "--pictures/--no-pictures",
    default=True,
    show_default=True,
    help="Draw a quicklook PNG per scene and the stockpile area and volume plots.",
)
@click.option(
    "--dsm",
    metavar="GLOB",
    help="DSM GeoTIFFs (any CRS, metres) for stockpile volumes, matched to scenes by "
    "date, else by name (docs/volumes.md).",
)
@click.option(
    "--sun-azimuth",
    type=click.FloatRange(0, 360),
    default=None,
    metavar="DEG",
    help="Sun azimuth for shadow volumes (clockwise from north) [default: scene tags].",
)
@click.option(
    "--sun-elevation",
    type=click.FloatRange(0, 90, min_open=True),
    default=None,
    metavar="DEG",
    help="Sun elevation for shadow volumes [default: scene tags].",
)
@click.option(
    "--licensed-ports",
    metavar="FILE",
    help="Licensed ports/jetties (points or polygons; fields port_id, name, licence_id, "
    "radius_m): find vessels, write the vessels table, flag vessels berthed elsewhere "
    "(docs/vessels.md). Needs a model with a 'vessel' class.",
)
@click.option(
    "--bigquery",
    default="",
    metavar="bq://PROJECT.DATASET[.PREFIX]",
    help="Also write every table to BigQuery (docs/deploy.md); --out still gets Parquet.",
)
@profile_opt
@click.pass_context
def infer(ctx: click.Context, /, **params: Any) -> None:
    """Label INPUT with the model and write the tables under TABLES_DIR.

    Tables: tile_labels, frame_labels, sites, stockpile_series (with volumes),
    vessels (with --licensed-ports) and dead_letter (GeoParquet, partitioned by
    date), plus probability rasters, quicklooks and stockpile area and volume
    plots; with --bigquery, the tables also go to BigQuery.

    INPUT is scenes or frames (files, globs, folders; tiled with the model's
    bands and tile size) or output folders of 'minewatch tile'.

    \b
    Examples:
      minewatch infer out/gt/scenes --model registry/ --out tables/ \\
          --concessions out/gt/concessions.geojson --protected out/gt/protected_areas.geojson \\
          --dsm 'out/gt/dsm/*.tif' --licensed-ports out/gt/licensed_ports.geojson
      minewatch query "select site_id, area_m2, reason from sites where flagged" \\
          --tables tables/
      minewatch infer gs://b/scenes --model gs://b/registry --out gs://b/tables \\
          --bigquery bq://my-project.mining.nightly --runner DataflowRunner ...
    """
    stats = execute(params, ctx.args)
    click.echo(summary(stats) if stats is not None else DRY_RUN)


def build(params: dict[str, Any], extra: Sequence[str] = ()) -> tuple[Any, list[str]]:
    """Check the options; return ``(InferConfig, beam_args)``.

    Raises:
        click.BadParameter: An option cannot work; the message names it.
    """
    from pipelines.batch_inference import InferConfig

    inputs, beam_args = job_inputs(
        [*params["inputs"], *extra], "scenes, frames or a tile-job folder"
    )
    model = check_model_and_areas(params)
    unknown = [c for c in params["site_classes"] if c not in model.classes]
    if unknown:
        raise click.BadParameter(
            f"{unknown} are not classes of the model {model.classes}", param_hint="--site-classes"
        )
    sun = _sun(params)
    dsm = params.get("dsm")
    if dsm:
        from minewatch.errors import ConfigError
        from minewatch.volumes import DsmIndex

        dsm = abs_path(dsm)
        try:
            if "://" not in dsm:  # a cloud glob is listed by the workers, which can read it
                DsmIndex.from_glob(dsm)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--dsm") from exc
    ports = params.get("licensed_ports")
    if ports:
        ports = abs_path(ports)
        _check_ports(ports, model.classes)
    bigquery = params.get("bigquery") or ""
    if bigquery:
        from minewatch.errors import ConfigError
        from pipelines.bigquery import parse_target

        try:
            parse_target(bigquery)
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--bigquery") from exc
    out = abs_path(params["out"])
    if "://" not in out:
        os.makedirs(out, exist_ok=True)
    config = InferConfig(
        inputs=tuple(abs_path(i) for i in inputs),
        out=out,
        model=model,
        concessions=abs_path(params["concessions"]) if params["concessions"] else None,
        protected=abs_path(params["protected"]) if params["protected"] else None,
        stride=params["stride"],
        batch_size=params["batch_size"],
        site_classes=params["site_classes"],
        mining_classes=params["mining_classes"] or ("mining_scar",),
        **site_params(params),
        volumes=params["volumes"],
        pictures=params["pictures"],
        dsm=dsm or None,
        sun=sun,
        licensed_ports=ports or None,
        bigquery=bigquery,
    )
    return config, with_profile(params.get("profile"), "infer", beam_args)


def _sun(params: dict[str, Any]) -> tuple[float, float] | None:
    """``(azimuth, elevation)`` from the two options, which come together or not at all."""
    azimuth, elevation = params.get("sun_azimuth"), params.get("sun_elevation")
    if (azimuth is None) != (elevation is None):
        given, missing = (
            ("--sun-azimuth", "--sun-elevation")
            if elevation is None
            else ("--sun-elevation", "--sun-azimuth")
        )
        raise click.BadParameter(
            f"{given} needs {missing} too: give both sun angles, or neither to use the "
            "scenes' tags",
            param_hint=missing,
        )
    if azimuth is None or elevation is None:
        return None
    return float(azimuth), float(elevation)


def _check_ports(path: str, classes: Sequence[str]) -> None:
    """The ports file reads, and the model can find vessels."""
    from minewatch.errors import MinewatchError
    from minewatch.vessels import PortRegistry, VesselConfig

    vessel = VesselConfig().vessel_class
    if vessel not in classes:
        raise click.BadParameter(
            f"the model has no {vessel!r} class ({list(classes)}), so it cannot find vessels: "
            "train it on ground truth with vessels (docs/vessels.md) or leave the option out",
            param_hint="--licensed-ports",
        )
    if "://" in path:
        return  # read by the workers; GDAL needs the cloud credentials they have
    try:
        PortRegistry.from_file(path)
    except MinewatchError as exc:
        raise click.BadParameter(str(exc), param_hint="--licensed-ports") from exc


def execute(
    params: dict[str, Any],
    extra: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: Any = None,
) -> dict[str, Any] | None:
    """Check the options, then build and run the job."""
    from pipelines.batch_inference import run_infer

    config, beam_args = build(params, extra)
    return run_infer(config, beam_args, save_main_session, test_pipeline)


def launch(
    argv: Sequence[str], save_main_session: bool = True, test_pipeline: Any = None
) -> dict[str, Any] | None:
    """Parse arguments as ``minewatch infer`` does and run the job."""
    with infer.make_context("minewatch infer", list(argv)) as ctx:
        return execute(ctx.params, ctx.args, save_main_session, test_pipeline)


def summary(stats: dict[str, Any]) -> str:
    """The run's counts as a small table."""
    counts = stats["counts"]
    width = max([len(k) for k in counts] + [10])
    lines = [f"model {stats['model_version']}"]
    inputs = stats.get("inputs")
    if isinstance(inputs, dict):
        lines.append(
            f"inputs {inputs['total']}: {inputs['labelled']} labelled, "
            f"{inputs['dead_lettered']} dead-lettered"
        )
    lines += [f"  {k:<{width}}  {v:>8}" for k, v in counts.items()]
    if stats.get("plot"):
        lines.append(f"stockpile plot: {stats['plot']}")
    if stats.get("volume_plot"):
        lines.append(f"stockpile volume plot: {stats['volume_plot']}")
    return "\n".join(lines)
