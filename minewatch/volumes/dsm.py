"""Stockpile volume from an elevation model: the height above a plane fitted to its rim."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np
import rasterio
import rasterio.features
from shapely.geometry.base import BaseGeometry

from minewatch.geo import reproject
from minewatch.volumes.grid import (
    MAX_WINDOW_PIXELS,
    as_crs,
    metric_crs,
    opened,
    pixel_areas,
    raster_name,
    read_window,
    window_around,
)
from minewatch.volumes.result import VolumeResult

__all__ = ["volume_from_dsm"]

_FEET = {"ft", "foot", "feet", "us-ft", "us survey foot", "ftus"}


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
    source = raster_name(dsm_path)
    if polygon.is_empty or polygon.area <= 0:
        return VolumeResult.refused("empty stockpile footprint", source)
    crs = as_crs(polygon_crs)
    work_crs, footprint = metric_crs(polygon, crs)
    inner = footprint.buffer(rim_gap_m)
    outer = footprint.buffer(rim_gap_m + rim_width_m)
    try:
        with opened(dsm_path) as src:
            if src.crs is None:
                return VolumeResult.refused(f"DSM {source} has no CRS", source)
            dsm_crs = as_crs(src.crs)
            step = max(1.0, rim_width_m / 4)
            inner_d = reproject(inner, work_crs, dsm_crs, step)
            outer_d = reproject(outer, work_crs, dsm_crs, step)
            win = window_around(outer_d.bounds, src.transform, pad=1)
            if win.width * win.height > MAX_WINDOW_PIXELS:
                return VolumeResult.refused(
                    f"stockpile covers {int(win.width)} x {int(win.height)} DSM pixels, more "
                    f"than one window read allows ({MAX_WINDOW_PIXELS}); use a coarser DSM",
                    source,
                )
            got = read_window(src, win, [band])
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
            areas = pixel_areas(dsm_crs, src.transform, win, inner_d.centroid)
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
