"""The Tile job's options: declared once, parsed by ``run(argv)`` and the CLI, checked here.

:data:`TILE_ARGS` declares the options; :func:`tile_config` checks a parsed set
(labels readable, classes consistent, cloud mask complete) and builds the
:class:`TileConfig` the job runs on, raising :class:`ConfigError` naming the
option that cannot work.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from minewatch import __version__
from minewatch.arguments import Choice, Float, Int, Names, Switch, Text
from minewatch.arguments import Flag as FlagArg
from minewatch.errors import ConfigError, LabelError
from minewatch.scenes import DEFAULT_FRAME_PATTERN, DEFAULT_MAX_PIXELS, safe_id, stem
from pipelines.options import (
    OUT,
    OVERWRITE,
    PROFILE,
    abs_path,
    job_inputs,
    list_inputs,
    stac_band_map,
    with_profile,
)

if TYPE_CHECKING:
    from minewatch.rasters import CloudMask

__all__ = ["TILE_ARGS", "TileConfig", "tile_config"]

_RESAMPLING = ("nearest", "bilinear", "cubic", "average", "mode", "lanczos")

#: The options of ``minewatch tile`` / ``pipelines.tile.run``, in ``--help`` order.
TILE_ARGS = (
    OUT,
    Text(
        "--labels",
        metavar="FILE",
        help="Polygons (GeoJSON, GeoPackage) with a class attribute, or a frames CSV "
        "path,camera_id,timestamp,label. Without it, weak spectral labels.",
    ),
    Text(
        "--label-field",
        default="class",
        show_default=True,
        help="Polygon attribute holding the class name.",
    ),
    Names(
        "--classes",
        metavar="NAMES",
        help="Class names in index order (default: from the labels).",
    ),
    FlagArg(
        "--sparse-labels",
        help="Pixels outside every polygon are unknown, not background.",
    ),
    Float(
        "--min-class-fraction",
        low=0,
        high=1,
        default=0.05,
        show_default=True,
        help="Share of a tile's valid pixels a class needs to label it.",
    ),
    Switch(
        "--weak-labels/--no-weak-labels",
        default=True,
        show_default=True,
        help="Without --labels, label tiles with spectral index rules (marked weak).",
    ),
    Names(
        "--bands",
        metavar="NAMES",
        help="Bands to stack, in order, e.g. B02,B03,B04,B08 (default: all).",
    ),
    Int(
        "--tile-size",
        low=8,
        high=4096,
        default=64,
        show_default=True,
        metavar="PX",
        help="Tile side in pixels.",
    ),
    Int(
        "--stride",
        low=1,
        high=4096,
        metavar="PX",
        help="Step between tiles; less than --tile-size overlaps. [default: tile size]",
    ),
    Choice(
        "--edge",
        ("shift", "pad", "drop"),
        default="shift",
        show_default=True,
        help="Last row/column of tiles: shift flush with the edge, pad past it, or drop.",
    ),
    Float(
        "--min-valid",
        low=0,
        high=1,
        default=0.5,
        show_default=True,
        help="Drop tiles with a smaller fraction of valid (not nodata/cloud) pixels.",
    ),
    Float(
        "--resolution",
        low=0,
        low_open=True,
        help="Grid pixel size in CRS units [default: the finest band's].",
    ),
    Choice(
        "--resampling",
        _RESAMPLING,
        default="bilinear",
        show_default=True,
        help="Resampling of bands that are off the grid.",
    ),
    Float("--nodata", help="Nodata value overriding the files'."),
    Text(
        "--cloud-band",
        metavar="NAME",
        help="Quality band to mask clouds with (e.g. SCL, BQA).",
    ),
    Names(
        "--cloud-values",
        metavar="INTS",
        help="Values of --cloud-band that are invalid (e.g. 3,8,9,10 for SCL).",
    ),
    Names(
        "--cloud-bits",
        metavar="INTS",
        help="Bits of --cloud-band that mark invalid pixels (e.g. 4 for BQA cloud).",
    ),
    Text(
        "--stac-bands",
        metavar="BAND=ASSET,...",
        help="For STAC inputs: band names from asset keys or eo:bands common names, e.g. "
        "B02=blue,B03=green (default: each raster asset's common name).",
    ),
    Text(
        "--frame-pattern",
        metavar="REGEX",
        help="Regex with groups camera_id and timestamp, searched in frame paths.",
    ),
    Int(
        "--block-tiles",
        low=1,
        high=64,
        default=8,
        show_default=True,
        help="Tiles per side of the block one worker reads at once.",
    ),
    Int(
        "--records-per-shard",
        low=1,
        default=4096,
        show_default=True,
        help="Most tiles per TFRecord shard.",
    ),
    Int(
        "--gdal-cache-mb",
        low=8,
        default=128,
        show_default=True,
        help="GDAL block cache per worker process (MB).",
    ),
    Int(
        "--max-scene-pixels",
        low=1,
        default=DEFAULT_MAX_PIXELS,
        show_default=True,
        help="Refuse rasters declaring more pixels (bomb guard).",
    ),
    OVERWRITE,
    PROFILE,
)


@dataclass(frozen=True)
class TileConfig:
    """Everything ``minewatch tile`` needs besides Beam's own options.

    Attributes:
        inputs: Files, globs or folders (local or ``gs://``).
        out: Output folder.
        labels: GeoJSON/GeoPackage polygons for every scene, or a frames CSV; None
            for weak labels (or when ``scene_labels`` is given).
        scene_labels: ``(scene_id, polygon file)`` pairs: per-scene labels, from a
            folder or glob of label files matched to scenes by file stem.
        label_field: Class attribute of the polygons. Default ``class``.
        classes: Class names in index order; by default taken from the labels.
        label_source: ``vector``, ``csv``, ``weak`` or ``none`` (set by :func:`tile_config`).
        sparse_labels: Pixels outside every polygon are unknown, not background.
        min_class_fraction: Fraction of a tile's valid pixels a class needs to
            label the tile. Default 0.05.
        bands: Band names to stack, in order; all of the scene's when None.
        tile_size: Tile side in pixels. Default 64.
        stride: Step between tiles; ``tile_size`` (no overlap) when None.
        edge: ``shift``, ``pad`` or ``drop`` for the last row/column of tiles.
        min_valid: Tiles with a smaller valid fraction are dropped. Default 0.5.
        resolution: Grid pixel size in CRS units; the finest band's when None.
        resampling: rasterio resampling for bands off the grid. Default bilinear.
        nodata: Nodata value overriding the files'.
        cloud: Optional quality-band cloud mask.
        frame_pattern: Regex with ``camera_id`` and ``timestamp`` groups for frames.
        stac_bands: ``(band, asset key or common name)`` pairs naming the bands of
            STAC inputs (:mod:`minewatch.stac`); empty: each asset's common name.
        block_tiles: Tiles per side of the block a worker reads at once. Default 8.
        max_scene_pixels: Scenes declaring more pixels are refused.
        records_per_shard: Most tiles per TFRecord shard. Default 4096.
        gdal_cache_mb: GDAL block cache per worker process, in MB. Default 128.
        csv_columns: Header of the frames CSV (set by :func:`tile_config` after checking it).
        overwrite: Replace an earlier run's outputs in ``out``; without it the
            job refuses to start over them.
    """

    inputs: tuple[str, ...]
    out: str
    labels: str | None = None
    scene_labels: tuple[tuple[str, str], ...] = ()
    label_field: str = "class"
    classes: tuple[str, ...] = ()
    label_source: str = "weak"
    sparse_labels: bool = False
    min_class_fraction: float = 0.05
    bands: tuple[str, ...] | None = None
    tile_size: int = 64
    stride: int | None = None
    edge: str = "shift"
    min_valid: float = 0.5
    resolution: float | None = None
    resampling: str = "bilinear"
    nodata: float | None = None
    cloud: CloudMask | None = None
    frame_pattern: str = DEFAULT_FRAME_PATTERN
    stac_bands: tuple[tuple[str, str], ...] = ()
    block_tiles: int = 8
    max_scene_pixels: int = DEFAULT_MAX_PIXELS
    records_per_shard: int = 4096
    gdal_cache_mb: int = 128
    csv_columns: tuple[str, ...] = ()
    overwrite: bool = False

    @property
    def step(self) -> int:
        """The stride, defaulting to the tile size."""
        return self.stride or self.tile_size


def tile_config(
    params: dict[str, Any], extra: Sequence[str] = ()
) -> tuple[TileConfig, list[str], list[tuple[str, str]], dict[str, Any]]:
    """Check parsed options and turn them into a :class:`TileConfig`.

    Args:
        params: The options by name (:data:`TILE_ARGS`' ``dest``), plus
            ``inputs`` when the CLI parsed the positional inputs itself.
        extra: Tokens the parser did not know: inputs and Beam options.

    Returns:
        ``(config, beam_args, label_rejections, header)``: label features refused
        here (for the dead letters) and the fixed fields of ``stats.json``.

    Raises:
        ConfigError: An option cannot work; :attr:`ConfigError.option` names it.
    """
    inputs, beam_args = job_inputs([*params.get("inputs", ()), *extra], "file, glob or folder")
    out = abs_path(params["out"])

    classes: tuple[str, ...] = tuple(params["classes"] or ())
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
                classes = _union_classes(loaded, tuple(params["classes"] or ()))
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
        bands=tuple(params["bands"]) or None,
        tile_size=params["tile_size"],
        stride=params["stride"],
        edge=params["edge"],
        min_valid=params["min_valid"],
        resolution=params["resolution"],
        resampling=params["resampling"],
        nodata=params["nodata"],
        cloud=_cloud_mask(params),
        frame_pattern=params["frame_pattern"] or DEFAULT_FRAME_PATTERN,
        stac_bands=stac_band_map(params.get("stac_bands")),
        block_tiles=params["block_tiles"],
        max_scene_pixels=params["max_scene_pixels"],
        records_per_shard=params["records_per_shard"],
        gdal_cache_mb=params["gdal_cache_mb"],
        csv_columns=csv_columns,
        overwrite=params["overwrite"],
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


def _cloud_mask(params: dict[str, Any]) -> CloudMask | None:
    from minewatch.rasters import CloudMask

    values, bits = params["cloud_values"] or (), params["cloud_bits"] or ()
    if not params["cloud_band"]:
        if values or bits:
            raise ConfigError("--cloud-values/--cloud-bits need --cloud-band", "--cloud-band")
        return None
    try:
        ints = tuple(int(v) for v in values), tuple(int(v) for v in bits)
    except ValueError as exc:
        raise ConfigError(f"not an integer: {exc}", "--cloud-values/--cloud-bits") from exc
    if not values and not bits:
        raise ConfigError("give --cloud-values or --cloud-bits with --cloud-band", "--cloud-band")
    return CloudMask(params["cloud_band"], *ints)


_VECTOR_EXTENSIONS = (".geojson", ".json", ".gpkg", ".shp", ".fgb", ".kml", ".gml")


def _is_single_file(pattern: str) -> bool:
    return not any(ch in pattern for ch in "*?[") and not os.path.isdir(pattern)


def _label_files(pattern: str) -> list[str]:
    """The polygon files ``--labels`` names: one file, or a folder / glob of them."""
    if _is_single_file(pattern):
        return [pattern]
    files = [f for f in list_inputs(pattern) if f.lower().endswith(_VECTOR_EXTENSIONS)]
    if not files:
        raise ConfigError(
            f"{pattern!r} holds no polygon file ({', '.join(_VECTOR_EXTENSIONS)})", "--labels"
        )
    return files


def _load_vector_labels(
    files: Sequence[str], params: dict[str, Any], classes: tuple[str, ...]
) -> list[Any]:
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
            raise ConfigError(str(exc), "--labels") from exc
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
        raise ConfigError(f"cannot read {path}: {exc}", "--labels") from exc
    except LabelError as exc:
        raise ConfigError(str(exc), "--labels") from exc
    if classes:
        unknown = sorted(seen - set(classes))
        if unknown:
            raise ConfigError(f"labels {unknown} of {path} are not in --classes", "--classes")
        return tuple(columns), classes
    return tuple(columns), tuple(sorted(seen))
