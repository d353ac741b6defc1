"""Stockpile volumes: from an elevation model, or from the shadow and the sun.

Two methods, both per stockpile footprint and acquisition (``docs/volumes.md``):

* :func:`volume_from_dsm` reads just the pile's neighbourhood of a DSM in any
  CRS, fits a plane to a rim just outside the footprint and sums the height
  above it.
* :func:`height_from_shadow` fits a cone's shadow to the dark pixels on the
  anti-solar side of the pile in the scene itself, given the sun's elevation
  and azimuth, and turns the height into a cone volume.

:func:`measure_volume` is what a job calls per site and scene: the DSM when one
covers the pile (:class:`DsmIndex` matches DSMs to scenes by date or stem),
else the shadow, else a refusal with the reasons. Nothing here raises on bad
data: every refusal is a :class:`VolumeResult` with ``method = "none"`` and the
reason, so a table row can carry it.
"""

from __future__ import annotations

import datetime as dt
import glob
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS, Geod, Proj, Transformer
from rasterio.windows import Window
from shapely import affinity
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry

from minewatch.errors import ConfigError

__all__ = [
    "VOLUME_METHODS",
    "DsmEntry",
    "DsmIndex",
    "VolumeResult",
    "height_from_shadow",
    "measure_volume",
    "sun_from_tags",
    "volume_from_dsm",
]

#: Values of ``stockpile_series.volume_method``.
VOLUME_METHODS: tuple[str, ...] = ("dsm", "shadow", "none")
#: Bands averaged into the brightness image for shadows, when the scene has them.
SHADOW_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08")
_MAX_WINDOW_PIXELS = 16_000_000
_HUBER = 1.345
#: Model part of the shadow-length uncertainty, pixels (apex off the centroid,
#: the pile's soft edge, ground not flat).
_MODEL_PX = 1.0
_MIN_GAIN = 8.0
_FEET = {"ft", "foot", "feet", "us-ft", "us survey foot", "ftus"}
_DATE = re.compile(r"(\d{4})-?(\d{2})-?(\d{2})")


@dataclass(frozen=True)
class VolumeResult:
    """A stockpile volume, or why there is none.

    Attributes:
        method: ``"dsm"``, ``"shadow"`` or ``"none"`` (refused).
        volume_m3: Volume above the base, m³; ``None`` when refused.
        uncertainty_m3: One standard uncertainty of the volume, m³.
        reason: Why the volume is missing, or why a fallback method was used.
        height_m: Pile height above the base (DSM: highest point; shadow:
            fitted apex height), m.
        height_uncertainty_m: One standard uncertainty of ``height_m``.
        area_m2: Footprint area used, m².
        source: The DSM or scene the value came from.
    """

    method: str
    volume_m3: float | None = None
    uncertainty_m3: float | None = None
    reason: str | None = None
    height_m: float | None = None
    height_uncertainty_m: float | None = None
    area_m2: float | None = None
    source: str | None = None

    @classmethod
    def refused(cls, reason: str, source: str | None = None) -> VolumeResult:
        """A result with no volume, ``method = "none"`` and the reason."""
        return cls("none", reason=reason, source=source)

    def row(self) -> dict[str, Any]:
        """The ``stockpile_series`` volume columns of this result."""
        return {
            "volume_m3": self.volume_m3,
            "volume_method": self.method,
            "volume_uncertainty_m3": self.uncertainty_m3,
            "volume_reason": self.reason,
            "height_m": self.height_m,
        }


# --------------------------------------------------------------------------- geometry


def _pyproj(crs: Any) -> CRS:
    if hasattr(crs, "to_wkt"):
        return CRS.from_wkt(crs.to_wkt())
    return CRS.from_user_input(crs)


def _metric_crs(geom: BaseGeometry, crs: CRS) -> tuple[CRS, BaseGeometry]:
    """A CRS in metres for buffering ``geom``: its own, or a local equidistant one."""
    axis = crs.axis_info[0] if crs.axis_info else None
    if crs.is_projected and axis is not None and axis.unit_name in ("metre", "meter"):
        return crs, geom
    to_geo = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    lon, lat = to_geo.transform(geom.centroid.x, geom.centroid.y)
    local = CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m")
    return local, _reproject(geom, crs, local)


def _reproject(geom: BaseGeometry, src: CRS, dst: CRS, step: float | None = None) -> BaseGeometry:
    if src == dst:
        return geom
    if step is not None:
        # straight edges in one CRS are curves in another: densify before moving
        geom = shapely.segmentize(geom, step)
    tr = Transformer.from_crs(src, dst, always_xy=True)

    def move(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, move)


def _window(bounds: tuple[float, float, float, float], transform: Affine, pad: int) -> Window:
    minx, miny, maxx, maxy = bounds
    corners = [~transform @ (x, y) for x in (minx, maxx) for y in (miny, maxy)]
    cols, rows = [c for c, _ in corners], [r for _, r in corners]
    c0, r0 = math.floor(min(cols)) - pad, math.floor(min(rows)) - pad
    return Window(c0, r0, math.ceil(max(cols)) + pad - c0, math.ceil(max(rows)) + pad - r0)


def _read_window(
    src: Any, win: Window, bands: Sequence[int]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Read ``win`` (may stick out of the raster) as float64 with a validity mask."""
    full = Window(0, 0, src.width, src.height)
    try:
        inside = win.intersection(full)
    except rasterio.errors.WindowError:
        return None
    data = np.full((len(bands), int(win.height), int(win.width)), np.nan)
    part = src.read(list(bands), window=inside, masked=True).astype(np.float64)
    r0, c0 = int(inside.row_off - win.row_off), int(inside.col_off - win.col_off)
    h, w = part.shape[1:]
    data[:, r0 : r0 + h, c0 : c0 + w] = np.ma.filled(part, np.nan)
    valid = np.isfinite(data).all(axis=0)
    return data, valid


def _coverage(geom: BaseGeometry, shape: tuple[int, int], transform: Affine, k: int) -> np.ndarray:
    """Fraction of each pixel inside ``geom``, from ``k x k`` sub-pixels."""
    if geom.is_empty:
        return np.zeros(shape)
    fine = rasterio.features.rasterize(
        [geom],
        out_shape=(shape[0] * k, shape[1] * k),
        transform=transform @ Affine.scale(1.0 / k),
        dtype="uint8",
    )
    return fine.reshape(shape[0], k, shape[1], k).mean(axis=(1, 3))


def _pixel_areas(src_crs: CRS, transform: Affine, win: Window, at: Point) -> np.ndarray:
    """Ground area of each pixel row of ``win`` in m² (equal-area handling).

    Geographic grids: the ellipsoidal area of one pixel per row (pyproj.Geod).
    Projected grids: the CRS pixel area in m² divided by the projection's areal
    scale at the pile (UTM: 0.9992 to 1.0008; Web Mercator: 1/cos²(lat)).
    """
    rows = int(win.height)
    if src_crs.is_geographic:
        geod = Geod(ellps="WGS84") if src_crs.ellipsoid is None else src_crs.get_geod()
        assert geod is not None
        out = np.empty(rows)
        for i in range(rows):
            r = win.row_off + i
            xs, ys = zip(
                *(
                    transform @ (win.col_off + dc, r + dr)
                    for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1))
                ),
                strict=True,
            )
            out[i] = abs(geod.polygon_area_perimeter(xs, ys)[0])
        return out
    factor = src_crs.axis_info[0].unit_conversion_factor if src_crs.axis_info else 1.0
    area = abs(transform.a * transform.e - transform.b * transform.d) * factor**2
    try:
        lon, lat = Transformer.from_crs(src_crs, "EPSG:4326", always_xy=True).transform(at.x, at.y)
        scale = Proj(src_crs).get_factors(lon, lat).areal_scale
        if math.isfinite(scale) and scale > 0:
            area /= scale
    except Exception:  # a CRS pyproj cannot give factors for: take its units at face value
        pass
    return np.full(rows, area)


def _robust_plane(
    cols: np.ndarray, rows: np.ndarray, z: np.ndarray
) -> tuple[Callable[[np.ndarray, np.ndarray], np.ndarray], float, int]:
    """Plane through rim heights, refitted without points beyond 3 robust sigmas.

    Returns:
        The plane as a function of ``(cols, rows)``, the standard deviation of
        the inliers' residuals and the number of inliers.
    """
    c0, r0 = float(cols.mean()), float(rows.mean())
    a = np.column_stack([np.ones_like(z), cols - c0, rows - r0])
    keep = np.ones(z.shape, dtype=bool)
    coef = np.zeros(3)
    for _ in range(5):
        coef = np.linalg.lstsq(a[keep], z[keep], rcond=None)[0]
        res = z - a @ coef
        mad = 1.4826 * float(np.median(np.abs(res[keep] - np.median(res[keep]))))
        new = np.abs(res) <= 3.0 * max(mad, 1e-6)
        if new.sum() < 3 or (new == keep).all():
            break
        keep = new
    res = z[keep] - a[keep] @ coef
    sigma = float(np.sqrt(np.sum(res**2) / max(int(keep.sum()) - 3, 1)))

    def plane(c: np.ndarray, r: np.ndarray) -> np.ndarray:
        return coef[0] + coef[1] * (c - c0) + coef[2] * (r - r0)

    return plane, sigma, int(keep.sum())


# --------------------------------------------------------------------------- DSM


def volume_from_dsm(
    polygon: BaseGeometry,
    polygon_crs: Any,
    dsm_path: str | os.PathLike[str],
    *,
    rim_gap_m: float = 10.0,
    rim_width_m: float = 10.0,
    min_coverage: float = 0.98,
    band: int = 1,
) -> VolumeResult:
    """Volume of a stockpile above a plane fitted to its rim, from a DSM.

    Only the pile's neighbourhood is read (one window). The footprint is moved
    into the DSM's CRS, never the raster into the footprint's, so no elevation
    is resampled. The pile is the footprint grown by ``rim_gap_m`` (a detected
    footprint is uncertain by about a scene pixel, and a pile's toe must not
    land on the rim); the rim is the ring from there to ``rim_gap_m +
    rim_width_m``. A plane is fitted to the rim heights by least squares,
    dropping points beyond three robust standard deviations and refitting (a
    truck, a neighbouring pile or a ditch on the rim does not tilt it). A plane,
    not a higher-order surface: the base is extrapolated from a thin ring into
    the pile's interior, where curvature terms fitted on the ring are poorly
    constrained and can bend the base into a bump or a dip; yards are graded
    close to flat over a pile's width.

    ``volume = sum(max(z - base, 0) x pixel ground area)`` over the pile's
    pixels (pixel-centre rule), scaled up by the covered fraction when a few
    pixels are nodata. Pixel ground areas are exact for geographic DSMs (per
    row, on the ellipsoid) and corrected by the projection's areal scale for
    projected ones. Heights are metres unless the band's unit says feet.

    Uncertainty: ``rim sigma x pile area`` (the rim misfit taken as a bias
    shared by every pixel, which is conservative) plus the volume share of
    nodata pixels.

    Args:
        polygon: Footprint.
        polygon_crs: CRS of ``polygon`` (anything pyproj or rasterio reads).
        dsm_path: DSM raster (any CRS, metres).
        rim_gap_m: Growth of the footprint before the rim starts; default 10.
        rim_width_m: Rim width; default 10.
        min_coverage: Fewest fraction of the pile's pixels with data; default 0.98.
        band: DSM band; default 1.

    Returns:
        A :class:`VolumeResult` with ``method = "dsm"``, or ``"none"`` and the
        reason (DSM does not reach the pile, nodata over it, no rim, unreadable).
    """
    source = os.fspath(dsm_path)
    if polygon.is_empty or polygon.area <= 0:
        return VolumeResult.refused("empty stockpile footprint", source)
    crs = _pyproj(polygon_crs)
    work_crs, footprint = _metric_crs(polygon, crs)
    inner = footprint.buffer(rim_gap_m)
    outer = footprint.buffer(rim_gap_m + rim_width_m)
    try:
        with rasterio.open(source) as src:
            if src.crs is None:
                return VolumeResult.refused(f"DSM {source} has no CRS", source)
            dsm_crs = _pyproj(src.crs)
            step = max(1.0, rim_width_m / 4)
            inner_d = _reproject(inner, work_crs, dsm_crs, step)
            outer_d = _reproject(outer, work_crs, dsm_crs, step)
            win = _window(outer_d.bounds, src.transform, pad=1)
            if win.width * win.height > _MAX_WINDOW_PIXELS:
                return VolumeResult.refused(
                    f"stockpile covers {int(win.width)} x {int(win.height)} DSM pixels, more "
                    f"than one window read allows ({_MAX_WINDOW_PIXELS}); use a coarser DSM",
                    source,
                )
            got = _read_window(src, win, [band])
            if got is None:
                left, bottom, right, top = src.bounds
                return VolumeResult.refused(
                    f"DSM does not cover the stockpile: its bounds ({left:.6g}, {bottom:.6g}, "
                    f"{right:.6g}, {top:.6g}) miss the pile and its rim",
                    source,
                )
            data, valid = got
            unit = (src.units[band - 1] or "").strip().lower() if src.units else ""
            wt = src.window_transform(win)
            areas = _pixel_areas(dsm_crs, src.transform, win, inner_d.centroid)
    except rasterio.errors.RasterioError as exc:
        return VolumeResult.refused(f"cannot read DSM {source}: {exc}", source)
    z = data[0] * (0.3048 if unit in _FEET else 1.0)
    shape = z.shape
    pile = rasterio.features.rasterize([inner_d], out_shape=shape, transform=wt).astype(bool)
    ring = rasterio.features.rasterize([outer_d], out_shape=shape, transform=wt).astype(bool)
    ring &= ~pile
    if not pile.any():
        return VolumeResult.refused("stockpile footprint is smaller than a DSM pixel", source)
    covered = float((pile & valid).sum()) / float(pile.sum())
    if covered < min_coverage:
        return VolumeResult.refused(
            f"DSM has data for only {100 * covered:.0f} % of the stockpile (nodata or outside "
            f"its extent); need {100 * min_coverage:.0f} %",
            source,
        )
    rim = ring & valid
    if rim.sum() < 8 or rim.sum() < 0.5 * ring.sum():
        return VolumeResult.refused(
            f"DSM has data for only {int(rim.sum())} of {int(ring.sum())} rim pixels around "
            "the stockpile; cannot fit its base",
            source,
        )
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    plane, sigma, _ = _robust_plane(cc[rim], rr[rim], z[rim])
    use = pile & valid
    above = z[use] - plane(cc[use], rr[use])
    pixel_area = np.broadcast_to(areas[:, None], shape)[use]
    volume = float(np.sum(np.clip(above, 0.0, None) * pixel_area)) / covered
    pile_area = float(np.sum(np.broadcast_to(areas[:, None], shape)[pile]))
    uncertainty = sigma * pile_area + (1.0 - covered) * volume
    return VolumeResult(
        "dsm",
        volume_m3=volume,
        uncertainty_m3=uncertainty,
        height_m=float(above.max()),
        height_uncertainty_m=sigma,
        area_m2=float(footprint.area),
        source=source,
    )


# --------------------------------------------------------------------------- shadow


def _brightness_bands(src: Any, bands: Sequence[str] | None) -> list[int]:
    names = [d or "" for d in src.descriptions]
    wanted = list(bands) if bands is not None else [b for b in SHADOW_BANDS if b in names]
    if bands is not None:
        missing = [b for b in wanted if b not in names]
        if missing:
            raise ConfigError(f"scene has no band(s) {', '.join(missing)}; it has {names}")
    if not wanted:
        return list(range(1, src.count + 1))
    return [names.index(b) + 1 for b in wanted]


def height_from_shadow(
    polygon: BaseGeometry,
    polygon_crs: Any,
    scene_path: str | os.PathLike[str],
    sun_azimuth: float,
    sun_elevation: float,
    *,
    bands: Sequence[str] | None = None,
    max_slope_deg: float = 40.0,
    min_shadow_px: float = 1.5,
    supersample: int = 5,
) -> VolumeResult:
    """Pile height from its shadow in the scene, and a cone volume from it.

    Shape assumption: a **cone** with its apex over the footprint's centroid
    (conical piles from a stacker or a conveyor drop; a windrow or a flat-topped
    pile breaks it). On flat ground the cone's shadow is the convex hull of the
    footprint and the apex's shadow point, which lies ``D = height /
    tan(elevation)`` from the apex in the anti-solar direction; the shadow
    seen beyond the footprint is that hull minus the footprint. A cone casts no
    shadow at all once the sun is higher than its side slopes.

    Measurement: a brightness image (mean of B02, B03, B04, B08 if the scene
    has them, else all bands) is read in one window around the pile and its
    longest possible shadow, and divided by the median of the sunlit ground
    near it. The pixels outside the footprint within three pixels of the
    longest possible shadow are fitted as ``plane + c edge - k shadow(D)``
    (``plane``: the ground's brightness trend; ``edge``: the one-pixel ring
    where the pile's own material blends into the ground, brighter or darker;
    ``k``: shadow depth) with a Huber loss scaled by the sunlit ground's robust
    spread, so a road or a roof is an outlier, not a shadow. ``shadow(D)`` is
    the predicted shadow rasterised with ``supersample``² sub-pixels per pixel:
    partial pixels count, so ``D`` is not quantised to whole pixels. ``D`` is
    scanned in half-pixel steps, then in 0.1 px steps around the best.

    Uncertainty (one sigma) of ``D``: the range where the loss rises by 0.5
    (one sigma), combined with one pixel for the model (apex off
    the centroid, the pile's soft edge, non-flat ground); ``height = D
    tan(elevation)``, ``volume = height x area / 3`` (footprint area taken as
    exact).

    Refusals: sun below the horizon or too high (a cone of this footprint with
    slopes up to ``max_slope_deg`` would cast less than ``min_shadow_px`` pixels
    of shadow beyond its edge), no shadow found (fitted depth under 0.1, or
    fitting a shadow does not beat no shadow by four noise sigmas), unreadable
    scene.

    Args:
        polygon: Footprint.
        polygon_crs: CRS of ``polygon``.
        scene_path: The scene raster (any CRS).
        sun_azimuth: Degrees clockwise from north.
        sun_elevation: Degrees above the horizon.
        bands: Band descriptions to average; default B02, B03, B04, B08 or all.
        max_slope_deg: Steepest side slope expected (angle of repose); default 40.
        min_shadow_px: Shortest measurable shadow beyond the edge; default 1.5 px.
        supersample: Sub-pixels per pixel side for the predicted shadow; default 5.

    Returns:
        A :class:`VolumeResult` with ``method = "shadow"``, or ``"none"`` and
        the reason.

    Raises:
        ConfigError: ``bands`` names a band the scene does not have.
    """
    source = os.fspath(scene_path)
    if polygon.is_empty or polygon.area <= 0:
        return VolumeResult.refused("empty stockpile footprint", source)
    if not 0.0 < sun_elevation < 90.0:
        return VolumeResult.refused(
            f"sun elevation {sun_elevation:.1f} deg is not above the horizon and below the "
            "zenith: no usable shadow",
            source,
        )
    crs = _pyproj(polygon_crs)
    work_crs, footprint = _metric_crs(polygon, crs)
    area = float(footprint.area)
    tan_e = math.tan(math.radians(sun_elevation))
    tan_s = math.tan(math.radians(max_slope_deg))
    r_eq = math.sqrt(area / math.pi)
    h_max = r_eq * tan_s
    longest = h_max / tan_e  # apex to shadow tip, m, for the steepest plausible pile
    try:
        with rasterio.open(source) as src:
            if src.crs is None:
                return VolumeResult.refused(f"scene {source} has no CRS", source)
            scene_crs = _pyproj(src.crs)
            centre = _reproject(footprint.centroid, work_crs, scene_crs)
            pixel_area = _pixel_areas(scene_crs, src.transform, Window(0, 0, 1, 1), centre)
            pixel = math.sqrt(float(pixel_area[0]))
            beyond = max(0.0, h_max * (1.0 / tan_e - 1.0 / tan_s))
            if beyond < min_shadow_px * pixel:
                return VolumeResult.refused(
                    f"sun too high for shadows: at {sun_elevation:.1f} deg elevation a conical "
                    f"pile of this footprint (sides up to {max_slope_deg:.0f} deg) casts at most "
                    f"{beyond:.1f} m ({beyond / pixel:.1f} px) of shadow beyond its edge; need "
                    f"{min_shadow_px:g} px. Use a DSM or a scene with a lower sun",
                    source,
                )
            az = math.radians(sun_azimuth)
            away = np.array([-math.sin(az), -math.cos(az)])  # (east, north), away from the sun
            apex = footprint.centroid
            reach = footprint.union(affinity.translate(footprint, *(away * longest))).buffer(
                max(3 * pixel, 0.5 * r_eq)
            )
            reach_s = _reproject(reach, work_crs, scene_crs, pixel)
            win = _window(reach_s.bounds, src.transform, pad=1)
            if win.width * win.height > _MAX_WINDOW_PIXELS:
                return VolumeResult.refused("stockpile shadow window too large", source)
            got = _read_window(src, win, _brightness_bands(src, bands))
            if got is None:
                return VolumeResult.refused("scene does not cover the stockpile", source)
            data, valid = got
            wt = src.window_transform(win)
    except rasterio.errors.RasterioError as exc:
        return VolumeResult.refused(f"cannot read scene {source}: {exc}", source)
    valid &= (data > 0).all(axis=0)
    bright = data.mean(axis=0)
    shape = bright.shape
    foot_s = _reproject(footprint, work_crs, scene_crs, pixel)
    inside = _coverage(foot_s, shape, wt, supersample)
    ring_s = _reproject(footprint.buffer(pixel), work_crs, scene_crs, pixel)
    edge = (_coverage(ring_s, shape, wt, supersample) > 0) & (inside < 0.5)
    origin = np.array(apex.coords[0])
    longest_hull = shapely.convex_hull(footprint.union(Point(*(origin + away * longest))))
    hull_max = _reproject(longest_hull, work_crs, scene_crs, pixel)
    maybe_shadow = _coverage(hull_max, shape, wt, 1) > 0
    near_ring = _reproject(longest_hull.buffer(3 * pixel), work_crs, scene_crs, pixel)
    sample = valid & (inside < 0.5) & (_coverage(near_ring, shape, wt, 1) > 0)
    sunlit = sample & ~edge & ~maybe_shadow
    if not (sample & maybe_shadow & ~edge).any():
        return VolumeResult.refused(
            f"sun too high for shadows: at {sun_elevation:.1f} deg elevation the longest "
            "possible shadow stays within the pixel ring at the footprint's edge",
            source,
        )
    if sunlit.sum() < 10:
        return VolumeResult.refused(
            "too few clear pixels around the stockpile to look for its shadow", source
        )
    level = float(np.median(bright[sunlit]))
    ratio = bright / level
    # Robust scale of the sunlit ground's texture: the Huber loss below treats
    # pixels beyond 1.345 of these sigmas (a road, a roof, a pond) as outliers.
    scale = max(1.4826 * float(np.median(np.abs(ratio[sunlit] - 1.0))), 0.01)
    y = ratio[sample]
    rows, cols = np.nonzero(sample)
    span = max(float(shape[0]), float(shape[1]))
    base = np.column_stack([np.ones(y.size), cols / span - 0.5, rows / span - 0.5])
    # The ring just outside the footprint mixes ground with the pile's own
    # material (the footprint edge cuts pixels), brighter or darker: one term.
    e = edge[sample].astype(np.float64)[:, None]

    def fit(shadow: np.ndarray | None) -> tuple[float, float]:
        """Huber loss (in noise-sigma units) and shadow depth of the best fit."""
        cols_ = [base, e] if shadow is None else [base, e, -shadow[:, None]]
        a = np.hstack(cols_)
        w = np.ones(y.size)
        coef = np.zeros(a.shape[1])
        for _ in range(6):
            sw = np.sqrt(w)
            coef = np.linalg.lstsq(a * sw[:, None], y * sw, rcond=None)[0]
            u = np.abs(y - a @ coef) / scale
            w = np.where(u <= _HUBER, 1.0, _HUBER / np.maximum(u, 1e-12))
        loss = np.where(u <= _HUBER, 0.5 * u**2, _HUBER * u - 0.5 * _HUBER**2)
        return float(loss.sum()), float(coef[-1]) if shadow is not None else 0.0

    loss0, _ = fit(None)

    def evaluate(d: float) -> tuple[float, float]:
        hull = shapely.convex_hull(shapely.union(footprint, Point(*(origin + away * d))))
        cast = hull.difference(footprint)
        if cast.is_empty or cast.area < 1e-6 * area:
            return math.inf, 0.0
        frac = _coverage(_reproject(cast, work_crs, scene_crs, pixel), shape, wt, supersample)
        s = frac[sample]
        if not s.any():
            return math.inf, 0.0
        return fit(s)

    # Coarse half-pixel steps over every possible tip distance, then 0.1 px
    # steps within a pixel of the best coarse one.
    coarse = np.arange(0.5 * pixel, longest + 0.5 * pixel, 0.5 * pixel)
    scores = {float(d): evaluate(float(d)) for d in coarse}
    good = {d: v for d, v in scores.items() if math.isfinite(v[0]) and v[1] > 0}
    if not good:
        return VolumeResult.refused("no shadow found beyond the stockpile's edge", source)
    d0 = min(good, key=lambda d: good[d][0])
    for d in np.arange(d0 - pixel, d0 + pixel + 1e-9, 0.1 * pixel):
        if d > 0 and float(d) not in scores:
            scores[float(d)] = evaluate(float(d))
    tips = np.array(sorted(scores))
    loss = np.array([scores[d][0] for d in tips])
    depth = np.array([scores[d][1] for d in tips])
    ok = np.isfinite(loss) & (depth > 0)
    best = int(np.argmin(np.where(ok, loss, np.inf)))
    gain = loss0 - loss[best]
    # A loss drop of g is a chi-square drop of 2g: _MIN_GAIN = 8 asks for four sigmas.
    if depth[best] < 0.1 or gain < _MIN_GAIN:
        return VolumeResult.refused(
            f"no shadow found beyond the stockpile's edge (best fit: depth {depth[best]:.2f}, "
            f"{math.sqrt(2 * max(gain, 0.0)):.1f} noise sigmas)",
            source,
        )
    inside_1 = ok & (loss <= loss[best] + 0.5)
    spread = 0.5 * float(tips[inside_1].max() - tips[inside_1].min())
    sigma_d = math.hypot(max(spread, 0.05 * pixel), _MODEL_PX * pixel)
    height = float(tips[best]) * tan_e
    sigma_h = sigma_d * tan_e
    return VolumeResult(
        "shadow",
        volume_m3=height * area / 3.0,
        uncertainty_m3=sigma_h * area / 3.0,
        height_m=height,
        height_uncertainty_m=sigma_h,
        area_m2=area,
        source=source,
    )


# --------------------------------------------------------------------------- wiring


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
        if "://" in pattern:
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
        moved = _reproject(geom, crs, CRS.from_wkt(entry.crs))
    except Exception:
        return True
    return bool(moved.intersects(box(*entry.bounds)))


def measure_volume(
    site_geometry: BaseGeometry,
    site_crs: Any,
    scene_path: str,
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
        scene_path: The scene (for the shadow and its sun tags).
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
    crs = _pyproj(site_crs)
    reasons: list[str] = []
    if dsm_index is not None:
        found = [
            e for e in dsm_index.candidates(scene_path, scene_time)
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
            with rasterio.open(scene_path) as src:
                sun = sun_from_tags(src.tags())
        except rasterio.errors.RasterioError as exc:
            reasons.append(f"cannot read scene {scene_path}: {exc}")
            return VolumeResult.refused("; ".join(reasons), scene_path)
    if sun is None:
        reasons.append(
            "no sun angles: the scene has no SUN_AZIMUTH/SUN_ELEVATION tags; pass "
            "--sun-azimuth and --sun-elevation"
        )
        return VolumeResult.refused("; ".join(reasons), scene_path)
    result = height_from_shadow(site_geometry, crs, scene_path, sun[0], sun[1], **shadow_opts)
    if result.method == "shadow":
        return replace(result, reason="; ".join(reasons) or None)
    reasons.append(f"shadow: {result.reason}")
    return VolumeResult.refused("; ".join(reasons), scene_path)
