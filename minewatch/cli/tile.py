"""``minewatch tile``: scenes and camera frames into georeferenced tiles."""

from __future__ import annotations

import csv
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
    comma_list,
    job_inputs,
    out_opt,
    overwrite_opt,
    profile_opt,
    rows_table,
    with_profile,
)
from minewatch.scenes import safe_id, stem

_RESAMPLING = ("nearest", "bilinear", "cubic", "average", "mode", "lanczos")


@click.command(
    short_help="Tile scenes and camera frames into TFRecords (Beam job).",
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("inputs", nargs=-1, type=click.UNPROCESSED, metavar="INPUT... [BEAM OPTIONS]")
@out_opt
@click.option(
    "--labels",
    metavar="FILE",
    help="Polygons (GeoJSON, GeoPackage) with a class attribute, or a frames CSV "
    "path,camera_id,timestamp,label. Without it, weak spectral labels.",
)
@click.option(
    "--label-field",
    default="class",
    show_default=True,
    help="Polygon attribute holding the class name.",
)
@click.option(
    "--classes",
    callback=comma_list,
    metavar="NAMES",
    help="Class names in index order (default: from the labels).",
)
@click.option(
    "--sparse-labels",
    is_flag=True,
    help="Pixels outside every polygon are unknown, not background.",
)
@click.option(
    "--min-class-fraction",
    type=click.FloatRange(0, 1),
    default=0.05,
    show_default=True,
    help="Share of a tile's valid pixels a class needs to label it.",
)
@click.option(
    "--weak-labels/--no-weak-labels",
    default=True,
    show_default=True,
    help="Without --labels, label tiles with spectral index rules (marked weak).",
)
@click.option(
    "--bands",
    callback=comma_list,
    metavar="NAMES",
    help="Bands to stack, in order, e.g. B02,B03,B04,B08 (default: all).",
)
@click.option(
    "--tile-size",
    type=click.IntRange(8, 4096),
    default=64,
    show_default=True,
    metavar="PX",
    help="Tile side in pixels.",
)
@click.option(
    "--stride",
    type=click.IntRange(1, 4096),
    default=None,
    metavar="PX",
    help="Step between tiles; less than --tile-size overlaps. [default: tile size]",
)
@click.option(
    "--edge",
    type=click.Choice(["shift", "pad", "drop"]),
    default="shift",
    show_default=True,
    help="Last row/column of tiles: shift flush with the edge, pad past it, or drop.",
)
@click.option(
    "--min-valid",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Drop tiles with a smaller fraction of valid (not nodata/cloud) pixels.",
)
@click.option(
    "--resolution",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Grid pixel size in CRS units [default: the finest band's].",
)
@click.option(
    "--resampling",
    type=click.Choice(_RESAMPLING),
    default="bilinear",
    show_default=True,
    help="Resampling of bands that are off the grid.",
)
@click.option("--nodata", type=float, default=None, help="Nodata value overriding the files'.")
@click.option(
    "--cloud-band",
    default=None,
    metavar="NAME",
    help="Quality band to mask clouds with (e.g. SCL, BQA).",
)
@click.option(
    "--cloud-values",
    callback=comma_list,
    metavar="INTS",
    help="Values of --cloud-band that are invalid (e.g. 3,8,9,10 for SCL).",
)
@click.option(
    "--cloud-bits",
    callback=comma_list,
    metavar="INTS",
    help="Bits of --cloud-band that mark invalid pixels (e.g. 4 for BQA cloud).",
)
@click.option(
    "--frame-pattern",
    default=None,
    metavar="REGEX",
    help="Regex with groups camera_id and timestamp, searched in frame paths.",
)
@click.option(
    "--block-tiles",
    type=click.IntRange(1, 64),
    default=8,
    show_default=True,
    help="Tiles per side of the block one worker reads at once.",
)
@click.option(
    "--records-per-shard",
    type=click.IntRange(1),
    default=4096,
    show_default=True,
    help="Most tiles per TFRecord shard.",
)
@click.option(
    "--gdal-cache-mb",
    type=click.IntRange(8),
    default=128,
    show_default=True,
    help="GDAL block cache per worker process (MB).",
)
@click.option(
    "--max-scene-pixels",
    type=click.IntRange(1),
    default=10_000_000_000,
    show_default=True,
    help="Refuse rasters declaring more pixels (bomb guard).",
)
@overwrite_opt
@profile_opt
@click.pass_context
def tile(ctx: click.Context, /, **params: Any) -> None:
    """Tile scenes and camera frames into georeferenced TFRecord tiles.

    INPUT is files, globs or folders. A folder of single-band files named
    PREFIX_BAND.ext is one scene; PNG/JPEG files are camera frames. Options that
    minewatch does not know pass to Beam unchanged.

    Writes DIR/tiles/ (TFRecords), DIR/manifest/ (Parquet), DIR/dead_letter/
    (Parquet: input, reason, ...) and DIR/stats.json.

    \b
    Examples:
      minewatch tile scenes/s2/ --out out/tiles --bands B02,B03,B04,B08
      minewatch tile 'scenes/*.tif' --out out --labels truth.geojson \\
          --tile-size 64 --stride 32 --direct_num_workers=2 \\
          --direct_running_mode=multi_processing
      minewatch tile frames/ --out out/frames --labels frames/labels.csv
    """
    stats = execute(params, extra=ctx.args)
    click.echo(summary(stats) if stats is not None else DRY_RUN)


def _bad(message: str, hint: str) -> click.BadParameter:
    return click.BadParameter(message, param_hint=hint)


def build(
    params: dict[str, Any], extra: Sequence[str] = ()
) -> tuple[Any, list[str], list[tuple[str, str]], dict[str, Any]]:
    """Check the options and turn them into a TileConfig.

    Args:
        params: click's parsed parameters.
        extra: Tokens click did not parse.

    Returns:
        ``(config, beam_args, label_rejections, header)``.

    Raises:
        click.BadParameter: An option cannot work; the message names it.
    """
    from minewatch.rasters import CloudMask
    from minewatch.scenes import DEFAULT_FRAME_PATTERN
    from pipelines.options import TileConfig

    inputs, beam_args = job_inputs([*params["inputs"], *extra], "file, glob or folder")
    out = params["out"]
    out = abs_path(out)
    _prepare_out(out, params["overwrite"])

    classes: tuple[str, ...] = params["classes"]
    labels = params["labels"]
    rejections: list[tuple[str, str]] = []
    label_info: dict[str, Any] = {}
    csv_columns: tuple[str, ...] = ()
    scene_labels: tuple[tuple[str, str], ...] = ()
    if labels:
        labels = abs_path(labels)
        if labels.lower().endswith(".csv"):
            source = "csv"
            csv_columns, classes = _check_frames_csv(labels, classes)
        else:
            source = "vector"
            files = _label_files(labels)
            loaded = _load_vector_labels(files, params, classes)
            classes = loaded[0].classes
            if len(files) > 1 or not _is_single_file(labels):
                classes = _union_classes(loaded, params["classes"])
                scene_labels = tuple((safe_id(stem(f)), f) for f in files)
                labels = None
            for vl in loaded:
                rejections.extend(vl.rejected)
            label_info = {
                "files": len(files),
                "features": sum(len(vl.wkb) for vl in loaded),
                "features_rejected": sum(len(vl.rejected) for vl in loaded),
                "features_repaired": sum(vl.repaired for vl in loaded),
            }
    elif params["weak_labels"]:
        from minewatch.labels import WEAK_CLASSES

        source, classes = "weak", WEAK_CLASSES
    else:
        source, classes = "none", ()

    cloud = None
    if params["cloud_band"]:
        try:
            values = tuple(int(v) for v in params["cloud_values"])
            bits = tuple(int(v) for v in params["cloud_bits"])
        except ValueError as exc:
            raise _bad(f"not an integer: {exc}", "--cloud-values/--cloud-bits") from exc
        if not values and not bits:
            raise _bad("give --cloud-values or --cloud-bits with --cloud-band", "--cloud-band")
        cloud = CloudMask(params["cloud_band"], values, bits)
    elif params["cloud_values"] or params["cloud_bits"]:
        raise _bad("--cloud-values/--cloud-bits need --cloud-band", "--cloud-band")

    config = TileConfig(
        inputs=tuple(abs_path(i) for i in inputs),
        out=out,
        labels=labels,
        scene_labels=scene_labels,
        label_field=params["label_field"],
        classes=tuple(classes),
        label_source=source,
        sparse_labels=params["sparse_labels"],
        min_class_fraction=params["min_class_fraction"],
        bands=params["bands"] or None,
        tile_size=params["tile_size"],
        stride=params["stride"],
        edge=params["edge"],
        min_valid=params["min_valid"],
        resolution=params["resolution"],
        resampling=params["resampling"],
        nodata=params["nodata"],
        cloud=cloud,
        frame_pattern=params["frame_pattern"] or DEFAULT_FRAME_PATTERN,
        block_tiles=params["block_tiles"],
        max_scene_pixels=params["max_scene_pixels"],
        records_per_shard=params["records_per_shard"],
        gdal_cache_mb=params["gdal_cache_mb"],
        csv_columns=csv_columns,
    )
    header = {
        "minewatch_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "label_source": source,
        "classes": list(classes),
        "labels": {"path": params["labels"], **label_info},
        "options": {
            "tile_size": config.tile_size,
            "stride": config.step,
            "edge": config.edge,
            "min_valid": config.min_valid,
            "bands": list(config.bands) if config.bands else None,
            "resolution": config.resolution,
            "resampling": config.resampling,
        },
    }
    return config, with_profile(params.get("profile"), "tile", beam_args), rejections, header


_VECTOR_EXTENSIONS = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml")


def _is_single_file(pattern: str) -> bool:
    return not any(ch in pattern for ch in "*?[") and not os.path.isdir(pattern)


def _label_files(pattern: str) -> list[str]:
    """The polygon files ``--labels`` names: one file, or a folder / glob of them."""
    from pipelines.tiling import list_inputs

    if _is_single_file(pattern):
        return [pattern]
    files = [f for f in list_inputs(pattern) if f.lower().endswith(_VECTOR_EXTENSIONS)]
    if not files:
        raise _bad(
            f"{pattern!r} holds no polygon file ({', '.join(_VECTOR_EXTENSIONS)})", "--labels"
        )
    return files


def _load_vector_labels(
    files: Sequence[str], params: dict[str, Any], classes: tuple[str, ...]
) -> list[Any]:
    from minewatch.errors import LabelError
    from minewatch.labels import VectorLabels

    loaded = []
    for path in files:
        try:
            loaded.append(
                VectorLabels.load(
                    path, params["label_field"], classes or None, sparse=params["sparse_labels"]
                )
            )
        except LabelError as exc:
            raise _bad(str(exc), "--labels") from exc
    return loaded


def _union_classes(loaded: Sequence[Any], classes: tuple[str, ...]) -> tuple[str, ...]:
    from minewatch.labels import BACKGROUND

    if classes:
        return (BACKGROUND, *[c for c in classes if c != BACKGROUND])
    found = {c for vl in loaded for c in vl.classes if c != BACKGROUND}
    return (BACKGROUND, *sorted(found))


def _check_frames_csv(
    path: str, classes: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    from apache_beam.io.filesystems import FileSystems

    from minewatch.errors import LabelError
    from minewatch.labels import FrameLabels

    try:
        with FileSystems.open(path) as raw:
            lines = (line.decode("utf-8") for line in raw)
            header = next(lines, "")
            columns = FrameLabels.check_header(header, path)
            seen: set[str] = set()
            if "label" in columns:
                at = columns.index("label")
                for row in csv.reader(lines):
                    if len(row) == len(columns) and row[at].strip():
                        seen.add(row[at].strip())
    except (OSError, UnicodeDecodeError) as exc:
        raise _bad(f"cannot read {path}: {exc}", "--labels") from exc
    except LabelError as exc:
        raise _bad(str(exc), "--labels") from exc
    if classes:
        unknown = sorted(seen - set(classes))
        if unknown:
            raise _bad(f"labels {unknown} of {path} are not in --classes", "--classes")
        return tuple(columns), classes
    return tuple(columns), tuple(sorted(seen))


def _prepare_out(out: str, overwrite: bool) -> None:
    from apache_beam.io.filesystems import FileSystems

    from pipelines.tiling import output_paths

    paths = output_paths(out)
    existing = [p for p in paths.values() if FileSystems.exists(p)]
    if existing and not overwrite:
        raise _bad(
            f"{out} already holds a tile job's output; add --overwrite to replace it", "--out"
        )
    for p in existing:
        if "://" in p:
            FileSystems.delete([p])
        elif os.path.isdir(p):
            shutil.rmtree(p)
        else:
            os.remove(p)
    if overwrite and "://" not in out and os.path.isdir(out):
        # Temporary folders of earlier runs that were killed before they committed.
        for name in os.listdir(out):
            if name.startswith(".tmp-") and os.path.isdir(os.path.join(out, name)):
                shutil.rmtree(os.path.join(out, name), ignore_errors=True)
    if "://" not in out:
        os.makedirs(out, exist_ok=True)


def execute(
    params: dict[str, Any],
    extra: Sequence[str] = (),
    save_main_session: bool = True,
    test_pipeline: Any = None,
) -> dict[str, Any] | None:
    """Check the options, then build and run the job (see ``pipelines.tiling.run_tile``)."""
    from pipelines.tiling import run_tile

    config, beam_args, rejections, header = build(params, extra)
    return run_tile(config, beam_args, save_main_session, test_pipeline, rejections, header)


def launch(
    argv: Sequence[str], save_main_session: bool = True, test_pipeline: Any = None
) -> dict[str, Any] | None:
    """Parse command-line arguments as ``minewatch tile`` does and run the job."""
    with tile.make_context("minewatch tile", list(argv)) as ctx:
        return execute(ctx.params, ctx.args, save_main_session, test_pipeline)


def summary(stats: dict[str, Any]) -> str:
    """Render the job's accounting as a small table."""
    inputs, tiles = stats["inputs"], stats["tiles"]
    rows = [
        ("inputs", inputs["total"]),
        ("  tiled", inputs["tiled"]),
        ("  dead-lettered", inputs["dead_lettered"]),
        ("tiles planned", tiles["planned"]),
        ("  written", tiles["written"]),
        *((f"  dropped: {k}", v) for k, v in tiles["dropped"].items()),
        ("shards", len(stats["shards"])),
    ]
    width = max(len(k) for k, _ in rows)
    lines = rows_table(rows).splitlines()
    counters = stats.get("beam_counters") or {}
    if counters:
        lines.append("")
        lines.append("Beam counters (minewatch.tile):")
        lines.extend(f"  {k:<{width}}{v:>8}" for k, v in sorted(counters.items()))
    if stats.get("classes"):
        lines.append("")
        lines.append(f"labels: {stats['label_source']}  classes: {', '.join(stats['classes'])}")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(tile())
