"""What a job calls per site and scene: the DSM matched to the scene, else the shadow.

:class:`DsmIndex` matches DSM files to scenes by acquisition date or file stem,
:func:`sun_from_tags` reads the sun from a scene's metadata, and
:func:`measure_volume` tries each method in turn and says why each one it passed
over was refused.
"""

from __future__ import annotations

import datetime as dt
import glob
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import rasterio
from pyproj import CRS
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from minewatch.errors import ConfigError
from minewatch.geo import reproject
from minewatch.paths import is_remote
from minewatch.volumes.dsm import volume_from_dsm
from minewatch.volumes.grid import as_crs, opened, raster_name
from minewatch.volumes.result import VolumeResult
from minewatch.volumes.shadow import height_from_shadow

__all__ = ["DsmEntry", "DsmIndex", "measure_volume", "sun_from_tags"]

_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")


def sun_from_tags(tags: Mapping[str, str]) -> tuple[float, float] | None:
    """Sun ``(azimuth, elevation)`` in degrees from raster metadata, if present.

    Understands, case-insensitively: ``SUN_AZIMUTH``/``SUN_ELEVATION`` (Landsat
    MTL names, written by ``minewatch synth``), ``view:sun_azimuth``/
    ``view:sun_elevation`` (STAC view extension), ``MEAN_SUN_AZIMUTH_ANGLE``/
    ``MEAN_SUN_ZENITH_ANGLE`` and ``s2:mean_solar_azimuth``/
    ``s2:mean_solar_zenith`` (Sentinel-2 tile metadata; elevation = 90 - zenith).

    Args:
        tags: Metadata items, e.g. ``rasterio`` ``src.tags()``.

    Returns:
        ``(azimuth, elevation)``, or ``None`` when no pair is found or a value
        is not a number.
    """
    low = {k.lower(): v for k, v in tags.items()}
    pairs = (
        ("sun_azimuth", "sun_elevation", False),
        ("view:sun_azimuth", "view:sun_elevation", False),
        ("mean_sun_azimuth_angle", "mean_sun_zenith_angle", True),
        ("s2:mean_solar_azimuth", "s2:mean_solar_zenith", True),
    )
    for az_key, el_key, zenith in pairs:
        if az_key in low and el_key in low:
            try:
                az, el = float(low[az_key]), float(low[el_key])
            except ValueError:
                return None
            return az % 360.0, (90.0 - el) if zenith else el
    return None


@dataclass(frozen=True)
class DsmEntry:
    """One DSM file: where, when, and what area.

    Attributes:
        path: The file.
        date: Acquisition date from the name (``YYYY-MM-DD`` or ``YYYYMMDD``) or
            the ``ACQUISITION``/``TIFFTAG_DATETIME`` tags; ``None`` if neither.
        stem: File name without extension.
        crs: CRS as WKT.
        bounds: ``(left, bottom, right, top)`` in that CRS.
    """

    path: str
    date: dt.date | None
    stem: str
    crs: str
    bounds: tuple[float, float, float, float]


def _date_of(text: str) -> dt.date | None:
    for m in _DATE.finditer(text):
        try:
            return dt.date(int(m[1]), int(m[2]), int(m[3]))
        except ValueError:
            continue
    return None


def _bare_stem(stem: str) -> str:
    s = stem.lower()
    for affix in ("dsm_", "dem_", "scene_", "_dsm", "_dem", "-dsm", "dsm-"):
        s = s.replace(affix, "")
    return s


class DsmIndex:
    """DSMs matched to scenes by acquisition date, else by file stem.

    A scene dated 2024-01-15 uses every DSM dated within ``max_days`` of it
    (nearest first); a scene with no date uses the DSMs whose stem, without
    ``dsm_``/``scene_`` affixes, equals the scene's. Only file headers are read
    when the index is built.

    Example:
        >>> index = DsmIndex.from_glob("out/gt/dsm/*.tif")  # doctest: +SKIP
        >>> [e.path for e in index.candidates("scene_2024-01-15.tif", None)]  # doctest: +SKIP
        ['out/gt/dsm/dsm_2024-01-15.tif']

    Args:
        entries: The DSM files.
        max_days: Largest date difference between a scene and its DSM; default 0.
    """

    def __init__(self, entries: Sequence[DsmEntry], max_days: int = 0) -> None:
        self.entries = list(entries)
        self.max_days = max_days

    @classmethod
    def from_glob(cls, pattern: str, max_days: int = 0) -> DsmIndex:
        """Index the DSM files matching ``pattern`` (e.g. ``dsm/*.tif`` or ``gs://b/dsm/*.tif``).

        Local globs go through :func:`glob.glob`, URLs through Beam's
        ``FileSystems.match`` (rasterio reads ``gs://`` through GDAL).

        Raises:
            ConfigError: Nothing matches, or a match is not a readable raster.
        """
        if is_remote(pattern):
            from apache_beam.io.filesystems import FileSystems

            try:
                (result,) = FileSystems.match([pattern])
            except Exception as exc:
                raise ConfigError(f"--dsm {pattern!r}: cannot list: {exc}") from exc
            paths = sorted(m.path for m in result.metadata_list)
        else:
            paths = sorted(glob.glob(pattern))
        if not paths:
            raise ConfigError(f"--dsm {pattern!r} matched no file; give a glob of DSM GeoTIFFs")
        entries = []
        for path in paths:
            try:
                with rasterio.open(path) as src:
                    tags = src.tags()
                    crs = src.crs.to_wkt() if src.crs else ""
                    bounds = src.bounds
            except rasterio.errors.RasterioError as exc:
                raise ConfigError(f"--dsm: {path} is not a readable raster: {exc}") from exc
            stem = os.path.splitext(os.path.basename(path))[0]
            date = (
                _date_of(stem)
                or _date_of(tags.get("ACQUISITION", ""))
                or _date_of(tags.get("TIFFTAG_DATETIME", "").replace(":", "-"))
            )
            entries.append(
                DsmEntry(path, date, stem, crs, (bounds[0], bounds[1], bounds[2], bounds[3]))
            )
        return cls(entries, max_days)

    def candidates(
        self, scene_path: str, scene_time: dt.datetime | dt.date | None
    ) -> list[DsmEntry]:
        """DSMs for one scene, best first.

        Args:
            scene_path: The scene file (its stem is the fallback key).
            scene_time: Acquisition time; its date is the primary key.

        Returns:
            Matching entries (possibly empty).
        """
        stem = os.path.splitext(os.path.basename(scene_path))[0]
        day = scene_time.date() if isinstance(scene_time, dt.datetime) else scene_time
        day = day or _date_of(stem)
        if day is not None:
            dated = [
                (abs((e.date - day).days), e.path, e)
                for e in self.entries
                if e.date is not None and abs((e.date - day).days) <= self.max_days
            ]
            if dated:
                return [e for _, _, e in sorted(dated, key=lambda t: (t[0], t[1]))]
        return [e for e in self.entries if _bare_stem(e.stem) == _bare_stem(stem)]


def _overlaps(entry: DsmEntry, geom: BaseGeometry, crs: CRS) -> bool:
    if not entry.crs:
        return True  # let volume_from_dsm say what is wrong with it
    try:
        moved = reproject(geom, crs, CRS.from_wkt(entry.crs))
    except Exception:
        return True
    return bool(moved.intersects(box(*entry.bounds)))


def measure_volume(
    site_geometry: BaseGeometry,
    site_crs: Any,
    scene_path: str | Any,
    scene_time: dt.datetime | dt.date | None,
    dsm_index: DsmIndex | None = None,
    sun: tuple[float, float] | None = None,
    **options: Any,
) -> VolumeResult:
    """Volume of one stockpile site in one scene: DSM, else shadow, else why not.

    Order: each DSM matched to the scene whose bounds reach the site
    (:func:`volume_from_dsm`); then the shadow (:func:`height_from_shadow`) with
    ``sun`` or the scene's own sun tags (:func:`sun_from_tags`). When the DSM was
    refused and the shadow worked, ``reason`` says why the DSM was not used.

    Example:
        >>> index = DsmIndex.from_glob("out/gt/dsm/*.tif")  # doctest: +SKIP
        >>> r = measure_volume(poly, "EPSG:32618", "out/gt/scenes/scene_2024-01-15.tif",
        ...                    dt.date(2024, 1, 15), index)  # doctest: +SKIP
        >>> r.method, round(r.volume_m3)  # doctest: +SKIP
        ('dsm', 79650)

    Args:
        site_geometry: Footprint of the site in this scene.
        site_crs: CRS of ``site_geometry``.
        scene_path: The scene (for the shadow and its sun tags): its path, or the
            scene open for reading (left open: a job opens each scene once for
            all its piles).
        scene_time: Acquisition time (matches the DSM).
        dsm_index: DSMs; default none.
        sun: ``(azimuth, elevation)`` in degrees overriding the scene's tags.
        **options: Passed on: ``rim_gap_m``, ``rim_width_m``, ``min_coverage``
            to the DSM method; ``max_slope_deg``, ``min_shadow_px``, ``bands``
            to the shadow method.

    Returns:
        The :class:`VolumeResult`; never raises for bad data.
    """
    dsm_keys = {"rim_gap_m", "rim_width_m", "min_coverage"}
    dsm_opts = {k: v for k, v in options.items() if k in dsm_keys}
    shadow_opts = {k: v for k, v in options.items() if k not in dsm_keys}
    crs = as_crs(site_crs)
    path = raster_name(scene_path)
    reasons: list[str] = []
    if dsm_index is not None:
        found = [
            e for e in dsm_index.candidates(path, scene_time)
            if _overlaps(e, site_geometry, crs)
        ]  # fmt: skip
        if not found:
            reasons.append("no DSM for this acquisition covers the stockpile")
        for entry in found:
            result = volume_from_dsm(site_geometry, crs, entry.path, **dsm_opts)
            if result.method == "dsm":
                return result
            reasons.append(f"dsm: {result.reason}")
    if sun is None:
        try:
            with opened(scene_path) as src:
                sun = sun_from_tags(src.tags())
        except rasterio.errors.RasterioError as exc:
            reasons.append(f"cannot read scene {path}: {exc}")
            return VolumeResult.refused("; ".join(reasons), path)
    if sun is None:
        reasons.append(
            "no sun angles: the scene has no SUN_AZIMUTH/SUN_ELEVATION tags; pass "
            "--sun-azimuth and --sun-elevation"
        )
        return VolumeResult.refused("; ".join(reasons), path)
    result = height_from_shadow(site_geometry, crs, scene_path, sun[0], sun[1], **shadow_opts)
    if result.method == "shadow":
        return replace(result, reason="; ".join(reasons) or None)
    reasons.append(f"shadow: {result.reason}")
    return VolumeResult.refused("; ".join(reasons), path)
