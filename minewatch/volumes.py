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

import contextlib
import datetime as dt
import functools
import glob
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS, Geod, Proj
from rasterio.enums import MergeAlg
from rasterio.windows import Window
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry

from minewatch.errors import ConfigError
from minewatch.geo import is_metric, reproject, transformer
from minewatch.paths import is_remote

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
    if isinstance(crs, CRS):
        return crs
    if hasattr(crs, "to_wkt"):
        return _crs_from_wkt(crs.to_wkt())
    return _crs_from_user(crs) if isinstance(crs, str) else CRS.from_user_input(crs)


# A job measures thousands of piles in a handful of CRSs: parse each CRS once
# per process, not once per pile (minewatch.geo builds each transformer once).
_crs_from_wkt = functools.lru_cache(maxsize=64)(CRS.from_wkt)
_crs_from_user = functools.lru_cache(maxsize=64)(CRS.from_user_input)


_WGS84 = CRS.from_epsg(4326)


def _name(raster: str | os.PathLike[str] | Any) -> str:
    """A raster's path, given the path or an open dataset."""
    return os.fspath(raster) if isinstance(raster, str | os.PathLike) else str(raster.name)


@contextlib.contextmanager
def _opened(raster: str | os.PathLike[str] | Any) -> Iterator[Any]:
    """``raster`` opened for the block: a path is opened and closed; an open dataset is lent."""
    if hasattr(raster, "read") and hasattr(raster, "transform"):
        yield raster
        return
    with rasterio.open(os.fspath(raster)) as src:
        yield src


def _metric_crs(geom: BaseGeometry, crs: CRS) -> tuple[CRS, BaseGeometry]:
    """A CRS in metres for buffering ``geom``: its own, or a local equidistant one."""
    if is_metric(crs):
        return crs, geom
    to_geo = transformer(crs, _WGS84)
    lon, lat = to_geo.transform(geom.centroid.x, geom.centroid.y)
    local = CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m")
    return local, reproject(geom, crs, local)


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


def _coverages(
    geoms: Sequence[BaseGeometry], shape: tuple[int, int], transform: Affine, k: int
) -> list[np.ndarray]:
    """Fraction of each pixel inside each of ``geoms`` (at most 8), from ``k x k`` sub-pixels.

    One rasterisation for all: each shape adds its own bit.
    """
    shapes = [(g, 1 << i) for i, g in enumerate(geoms) if not g.is_empty]
    if not shapes:
        return [np.zeros(shape) for _ in geoms]
    fine = rasterio.features.rasterize(
        shapes,
        out_shape=(shape[0] * k, shape[1] * k),
        transform=transform @ Affine.scale(1.0 / k),
        dtype="uint8",
        merge_alg=MergeAlg.add,
    )
    return [
        ((fine >> i) & 1).reshape(shape[0], k, shape[1], k).mean(axis=(1, 3))
        for i in range(len(geoms))
    ]


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
        lon, lat = transformer(src_crs, _WGS84).transform(at.x, at.y)
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
    dsm_path: str | os.PathLike[str] | Any,
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
        dsm_path: DSM raster (any CRS, metres): a path, or a dataset open for reading
            (left open; a job measuring many piles opens each raster once).
        rim_gap_m: Growth of the footprint before the rim starts; default 10.
        rim_width_m: Rim width; default 10.
        min_coverage: Fewest fraction of the pile's pixels with data; default 0.98.
        band: DSM band; default 1.

    Returns:
        A :class:`VolumeResult` with ``method = "dsm"``, or ``"none"`` and the
        reason (DSM does not reach the pile, nodata over it, no rim, unreadable).
    """
    source = _name(dsm_path)
    if polygon.is_empty or polygon.area <= 0:
        return VolumeResult.refused("empty stockpile footprint", source)
    crs = _pyproj(polygon_crs)
    work_crs, footprint = _metric_crs(polygon, crs)
    inner = footprint.buffer(rim_gap_m)
    outer = footprint.buffer(rim_gap_m + rim_width_m)
    try:
        with _opened(dsm_path) as src:
            if src.crs is None:
                return VolumeResult.refused(f"DSM {source} has no CRS", source)
            dsm_crs = _pyproj(src.crs)
            step = max(1.0, rim_width_m / 4)
            inner_d = reproject(inner, work_crs, dsm_crs, step)
            outer_d = reproject(outer, work_crs, dsm_crs, step)
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


#: Refuse a pile before scanning shadow lengths when no shadow fit could pass
#: (:meth:`_ShadowScan.gain_bound`). Off only to test that the refusal is sound.
_PRESCREEN = True
#: Most numbers the shadow scan holds at once (sub-pixels x tips).
_CHUNK = 4_000_000


def _subpixel_centres(
    rows: np.ndarray, cols: np.ndarray, transform: Affine, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the ``k x k`` sub-pixels of pixels ``(rows, cols)``, in ``transform``'s CRS.

    Returns:
        ``x`` and ``y``, each ``len(rows) x k²``.
    """
    offsets = (np.arange(k) + 0.5) / k
    # Nudged a hair left and far less down in the grid, so that a centre on an
    # edge of a shape counts as GDAL's scanline rasteriser counts it (inside on
    # a right or top edge, outside on a left or bottom one, rows first):
    # centres do fall on the edges of a hull of pixel-aligned footprints.
    c = cols[:, None] + np.tile(offsets, k)[None, :] - 1e-6
    r = rows[:, None] + np.repeat(offsets, k)[None, :] + 1e-8
    t = transform
    return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f


def _shadow_entry(
    footprint: BaseGeometry,
    origin: np.ndarray,
    away: np.ndarray,
    far: float,
    x: np.ndarray,
    y: np.ndarray,
) -> np.ndarray:
    """Tip distance at which each point enters a cone's predicted shadow.

    The shadow with its tip ``D`` from ``origin`` along ``away`` is ``hull(footprint
    + tip) - footprint``. These sets only grow with ``D`` (a nearer tip lies on the
    segment from the origin, inside the footprint's hull, to a farther one), so a
    point is in the shadow of every ``D >= entry``: one number per point stands
    for the shadow at every tip distance. A point ``p`` outside the hull ``H`` is
    in ``hull(H + t)`` exactly when ``t`` lies in the cone at ``p`` spanned by the
    directions ``p - v`` over the hull's vertices ``v``; the tip enters that cone
    where its path crosses one of the cone's two edges, through the vertices
    seen at the extreme angles from ``p``.

    Args:
        footprint: The pile, in metres.
        origin: Apex ``(x, y)``, inside the footprint's hull.
        away: Unit vector away from the sun.
        far: Farthest tip distance of interest; points only entering beyond it
            (or never) get ``inf``, as do points inside the footprint.
        x: Point eastings, any shape.
        y: Point northings, same shape.

    Returns:
        Entry distances, shape of ``x``: 0 inside the hull but outside the footprint.
    """
    hull = footprint.convex_hull
    out = np.full(x.shape, np.inf)
    reach = shapely.convex_hull(shapely.union(footprint, Point(*(origin + away * far))))
    maybe = shapely.intersects_xy(reach, x, y)
    maybe[maybe] = ~shapely.contains_xy(footprint, x[maybe], y[maybe])
    in_hull = maybe.copy()
    in_hull[maybe] = shapely.contains_xy(hull, x[maybe], y[maybe])
    out[in_hull] = 0.0
    beyond = maybe & ~in_hull
    if not beyond.any() or not isinstance(hull, shapely.Polygon):
        return out
    p = np.column_stack([x[beyond], y[beyond]])
    verts = np.asarray(hull.exterior.coords)[:-1]
    to_origin = origin[None, :] - p
    rel = verts[None, :, :] - p[:, None, :]
    # angle of each vertex seen from p, measured from the direction to the origin
    angle = np.arctan2(
        to_origin[:, None, 0] * rel[..., 1] - to_origin[:, None, 1] * rel[..., 0],
        to_origin[:, None, 0] * rel[..., 0] + to_origin[:, None, 1] * rel[..., 1],
    )
    d = p - origin[None, :]
    entry = np.full(len(p), np.inf)
    for pick in (np.argmin(angle, axis=1), np.argmax(angle, axis=1)):
        b = p - verts[pick]  # edge of the cone: p + mu b, mu >= 0
        # origin + D away = p + mu b, by Cramer's rule
        det = b[:, 0] * away[1] - away[0] * b[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = (b[:, 0] * d[:, 1] - d[:, 0] * b[:, 1]) / det
            mu = (away[0] * d[:, 1] - away[1] * d[:, 0]) / det
        hit = (np.abs(det) > 1e-12 * np.hypot(b[:, 0], b[:, 1])) & (dist >= 0) & (mu >= 0)
        entry = np.where(hit, np.minimum(entry, dist), entry)
    out[beyond] = np.where(entry <= far, entry, np.inf)
    return out


def _huber(u: np.ndarray) -> np.ndarray:
    return np.where(u <= _HUBER, 0.5 * u**2, _HUBER * u - 0.5 * _HUBER**2)


def _huber_fits(a: np.ndarray, y: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber fits of ``y`` on each of the designs ``a`` (``m x n x p``), all at once.

    Six reweighted least-squares steps from the least-squares fit; each step
    solves the weighted normal equations through a pseudo-inverse, which is the
    minimum-norm least-squares solution also when a column repeats another.

    Returns:
        Huber losses in noise-sigma units (``m``) and coefficients (``m x p``).
    """
    w = np.ones(a.shape[:2])
    at = a.transpose(0, 2, 1)
    u = np.zeros(a.shape[:2])
    coef = np.zeros((a.shape[0], a.shape[2]))
    for _ in range(6):
        aw = at * w[:, None, :]
        gram = aw @ a
        vals, vecs = np.linalg.eigh(gram)
        inv = np.where(vals > 1e-12 * vals[:, -1:], 1.0 / np.where(vals > 0, vals, 1.0), 0.0)
        rhs = (vecs.transpose(0, 2, 1) @ (aw @ y)[..., None])[..., 0]
        coef = (vecs @ (inv * rhs)[..., None])[..., 0]
        u = np.abs(y[None, :] - (a @ coef[..., None])[..., 0]) / scale
        w = np.where(u <= _HUBER, 1.0, _HUBER / np.maximum(u, 1e-12))
    return _huber(u).sum(axis=1), coef


class _ShadowScan:
    """Fits of ``plane + c edge - k shadow(D)`` to one pile's sample pixels.

    Args:
        design: Plane and edge columns of the sample pixels (``n x 4``).
        y: Their brightness, relative to the sunlit ground.
        scale: Noise sigma of ``y``.
        enter: Tip distance at which each of each pixel's sub-pixels enters the
            predicted shadow (``n x supersample²``; :func:`_shadow_entry`).
    """

    def __init__(self, design: np.ndarray, y: np.ndarray, scale: float, enter: np.ndarray) -> None:
        self.design, self.y, self.scale, self.enter = design, y, scale, enter
        self.loss0 = float(_huber_fits(design[None], y, scale)[0][0])
        self._done: dict[bytes, tuple[float, float]] = {}

    def evaluate(self, tips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Huber loss and shadow depth for each tip distance (``inf``, 0: no shadow)."""
        # A few million numbers at a time: a pile of a thousand pixels does not
        # take a gigabyte for its hundreds of tips.
        step = max(1, _CHUNK // self.enter.size)
        if tips.size > step:
            parts = [self.evaluate(tips[i : i + step]) for i in range(0, tips.size, step)]
            return np.concatenate([q[0] for q in parts]), np.concatenate([q[1] for q in parts])
        shadow = (self.enter[None, :, :] <= tips[:, None, None]).mean(axis=2)
        keys = [s.tobytes() for s in shadow]
        # Tips that shade the same sub-pixels share one fit: equal shadows, equal losses.
        todo = {k: i for i, k in enumerate(keys) if k not in self._done and shadow[i].any()}
        if todo:
            rows = list(todo.values())
            n, p = self.design.shape
            a = np.empty((len(rows), n, p + 1))
            a[:, :, :p] = self.design
            a[:, :, p] = -shadow[rows]
            loss, coef = _huber_fits(a, self.y, self.scale)
            for k, lo, depth in zip(todo, loss, coef[:, p], strict=True):
                self._done[k] = (float(lo), float(depth))
        out = [
            self._done.get(k, (math.inf, 0.0)) if s.any() else (math.inf, 0.0)
            for k, s in zip(keys, shadow, strict=True)
        ]
        return np.array([o[0] for o in out]), np.array([o[1] for o in out])

    def gain_bound(self) -> float:
        """An upper bound on the loss drop any shadow fit of the scan can reach.

        A shadow only darkens, by ``k s >= 0`` with ``s`` its pixel coverage, and
        only on pixels some tried tip shades; the fit that may darken each such
        pixel freely is at least as good as any shadow fit (with ``k > 0``). That
        relaxed fit is convex: Huber on the other pixels, Huber of the positive
        part of the residual on these. Its minimum is bounded from below by any
        feasible point of its dual, ``sum(lambda y) - sum(lambda² sigma²) / 2``
        with ``A' lambda = 0`` and ``sigma lambda`` in ``[-1.345, 1.345]`` (in
        ``[0, 1.345]`` on the shadable pixels). The dual point is the loss
        gradient at a minimiser found by Newton and majorise-minimise steps,
        corrected onto ``A' lambda = 0`` on the pixels in the quadratic part of
        the loss: the bound holds however roughly the minimiser was found, and
        when the corrected point is not feasible it is ``inf`` and nothing is
        refused.

        Returns:
            ``loss0`` minus the lower bound, in Huber loss units (noise sigmas² / 2).
        """
        shadable = np.isfinite(self.enter).any(axis=1)
        a, y, sigma = self.design, self.y, self.scale
        if not shadable.any():
            return 0.0
        low = np.where(shadable, 0.0, -_HUBER)

        def relaxed(c: np.ndarray) -> tuple[float, np.ndarray]:
            u = (y - a @ c) / sigma
            return float(_huber(np.where(shadable, np.maximum(u, 0.0), np.abs(u))).sum()), u

        coef = np.linalg.lstsq(a, y, rcond=None)[0]
        loss, u = relaxed(coef)
        for _ in range(30):
            # Two candidate steps, the better one taken: Newton's (fast near the
            # minimum) and a majorise-minimise one (a quadratic above each pixel's
            # loss touching it at the current residual; it also moves the
            # coefficients no pixel in the quadratic part constrains).
            free = (u > low) & (u < _HUBER)
            grad = a.T @ np.clip(u, low, _HUBER)
            newton = coef + sigma * np.linalg.lstsq(a[free].T @ a[free], grad, rcond=None)[0]
            w = np.where(np.abs(u) <= _HUBER, 1.0, _HUBER / np.maximum(np.abs(u), 1e-12))
            dark = shadable & (u < 0)
            w[dark] = 1.0
            sw = np.sqrt(w)
            target = np.where(dark, a @ coef, y)
            mm = np.linalg.lstsq(a * sw[:, None], target * sw, rcond=None)[0]
            (new_loss, new_u), new = min(
                (relaxed(newton), newton), (relaxed(mm), mm), key=lambda c: c[0][0]
            )
            if new_loss > loss:
                break
            done = loss - new_loss <= 1e-12 * max(loss, 1.0)
            coef, loss, u = new, new_loss, new_u
            if done:
                break
        nu = np.clip(u, low, _HUBER)  # sigma x lambda
        free = (u > low) & (u < _HUBER)
        nu[free] -= np.linalg.lstsq(a[free].T, a.T @ nu, rcond=None)[0]
        if (nu < low).any() or (nu > _HUBER).any() or np.abs(a.T @ nu).max() > 1e-9:
            return math.inf
        dual = float(nu @ y) / sigma - 0.5 * float(nu @ nu)
        return self.loss0 - dual


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
    scene_path: str | os.PathLike[str] | Any,
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
    the fraction of each pixel's ``supersample``² sub-pixel centres inside the
    predicted shadow: partial pixels count, so ``D`` is not quantised to whole
    pixels. ``D`` is scanned in half-pixel steps, then in 0.1 px steps around
    the best. The predicted shadows only grow with ``D``, so each sub-pixel is
    given once the ``D`` at which it enters the shadow, and every step of the
    scan is a comparison, fitted together with the others (the same sub-pixels
    GDAL's rasteriser would burn for each ``D``).

    Before the scan, a pile is refused when no shadow fit could pass: the fit
    that may darken every pixel any tried shadow touches by any amount bounds
    what every shadow fit can gain over no shadow (a dual-feasible point of that
    convex fit makes the bound exact, not estimated), and if even that is under
    four noise sigmas the scan could not accept a shadow. Most non-piles (a
    weak model's false stockpiles) end here.

    Uncertainty (one sigma) of ``D``: the range where the loss rises by 0.5
    (one sigma), combined with one pixel for the model (apex off
    the centroid, the pile's soft edge, non-flat ground); ``height = D
    tan(elevation)``, ``volume = height x area / 3`` (footprint area taken as
    exact).

    Refusals: sun below the horizon or too high (a cone of this footprint with
    slopes up to ``max_slope_deg`` would cast less than ``min_shadow_px`` pixels
    of shadow beyond its edge), no shadow found (no fit with a positive depth;
    fitted depth under 0.1, or fitting a shadow does not beat no shadow by
    four noise sigmas; or, before the scan, no shadow fit could), unreadable
    scene.

    Args:
        polygon: Footprint.
        polygon_crs: CRS of ``polygon``.
        scene_path: The scene raster (any CRS): a path, or a dataset open for
            reading (left open; a job measuring many piles opens the scene once).
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
    source = _name(scene_path)
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
        with _opened(scene_path) as src:
            if src.crs is None:
                return VolumeResult.refused(f"scene {source} has no CRS", source)
            scene_crs = _pyproj(src.crs)
            centre = reproject(footprint.centroid, work_crs, scene_crs)
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
            # The pile, its farthest shadow and a margin for the ground's level.
            left, bottom, right, top = footprint.bounds
            dx, dy = away * longest
            grow = max(3 * pixel, 0.5 * r_eq)
            reach = box(
                left + min(dx, 0.0) - grow,
                bottom + min(dy, 0.0) - grow,
                right + max(dx, 0.0) + grow,
                top + max(dy, 0.0) + grow,
            )
            reach_s = reproject(reach, work_crs, scene_crs, pixel)
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
    foot_s = reproject(footprint, work_crs, scene_crs, pixel)
    ring_s = reproject(footprint.buffer(pixel), work_crs, scene_crs, pixel)
    inside, ring = _coverages([foot_s, ring_s], shape, wt, supersample)
    edge = (ring > 0) & (inside < 0.5)
    origin = np.array(apex.coords[0])
    longest_hull = shapely.convex_hull(footprint.union(Point(*(origin + away * longest))))
    hull_max = reproject(longest_hull, work_crs, scene_crs, pixel)
    near_ring = reproject(longest_hull.buffer(3 * pixel), work_crs, scene_crs, pixel)
    in_hull, near = _coverages([hull_max, near_ring], shape, wt, 1)
    maybe_shadow = in_hull > 0
    sample = valid & (inside < 0.5) & (near > 0)
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
    # Plane of the ground's brightness, plus the ring just outside the footprint,
    # which mixes ground with the pile's own material (the footprint edge cuts
    # pixels), brighter or darker: one term.
    design = np.column_stack(
        [np.ones(y.size), cols / span - 0.5, rows / span - 0.5, edge[sample].astype(np.float64)]
    )
    # Coarse half-pixel steps over every possible tip distance, then 0.1 px
    # steps within a pixel of the best coarse one: no tip is tried beyond `far`.
    coarse = np.arange(0.5 * pixel, longest + 0.5 * pixel, 0.5 * pixel)
    far = float(coarse[-1]) + 1.5 * pixel
    sub_x, sub_y = _subpixel_centres(rows, cols, wt, supersample)
    if scene_crs != work_crs:
        sub_x, sub_y = map(np.asarray, transformer(scene_crs, work_crs).transform(sub_x, sub_y))
    enter = _shadow_entry(footprint, origin, away, far, sub_x, sub_y)
    scan = _ShadowScan(design, y, scale, enter)
    loss0 = scan.loss0
    if _PRESCREEN:
        bound = scan.gain_bound()
        if bound < _MIN_GAIN:
            return VolumeResult.refused(
                "no shadow found beyond the stockpile's edge (no shadow fit can beat no "
                f"shadow by more than {math.sqrt(2 * max(bound, 0.0)):.1f} noise sigmas)",
                source,
            )
    loss_c, depth_c = scan.evaluate(coarse)
    good = np.isfinite(loss_c) & (depth_c > 0)
    if not good.any():
        return VolumeResult.refused("no shadow found beyond the stockpile's edge", source)
    d0 = float(coarse[good][np.argmin(loss_c[good])])
    tried = {float(d) for d in coarse}
    fine = np.array(
        [d for d in np.arange(d0 - pixel, d0 + pixel + 1e-9, 0.1 * pixel)
         if d > 0 and float(d) not in tried]
    )  # fmt: skip
    loss_f, depth_f = scan.evaluate(fine)
    tips_all = np.concatenate([coarse, fine])
    order = np.argsort(tips_all, kind="stable")
    tips = tips_all[order]
    loss = np.concatenate([loss_c, loss_f])[order]
    depth = np.concatenate([depth_c, depth_f])[order]
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
    crs = _pyproj(site_crs)
    path = _name(scene_path)
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
            with _opened(scene_path) as src:
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
