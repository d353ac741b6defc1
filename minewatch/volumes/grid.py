"""Reading a pile's neighbourhood of a raster in any CRS, for both volume methods.

CRSs are parsed once per process, footprints are moved into a metric CRS for
buffering, one window around the pile is read (it may stick out of the raster),
and each pixel gets its ground area and the fraction of it a shape covers.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import rasterio
import rasterio.features
from affine import Affine
from pyproj import CRS, Geod, Proj
from rasterio.enums import MergeAlg
from rasterio.windows import Window
from shapely.geometry import Point
from shapely.geometry.base import BaseGeometry

from minewatch.geo import is_metric, reproject, transformer

__all__ = [
    "MAX_WINDOW_PIXELS",
    "WGS84",
    "as_crs",
    "coverages",
    "metric_crs",
    "opened",
    "pixel_areas",
    "raster_name",
    "read_window",
    "window_around",
]

#: Most pixels one window read may hold; a pile needing more is refused.
MAX_WINDOW_PIXELS = 16_000_000


def as_crs(crs: Any) -> CRS:
    """``crs`` as a pyproj CRS: a pyproj CRS, a rasterio CRS, a string or an EPSG code."""
    if isinstance(crs, CRS):
        return crs
    if hasattr(crs, "to_wkt"):
        return _crs_from_wkt(crs.to_wkt())
    return _crs_from_user(crs) if isinstance(crs, str) else CRS.from_user_input(crs)


# A job measures thousands of piles in a handful of CRSs: parse each CRS once
# per process, not once per pile (minewatch.geo builds each transformer once).
_crs_from_wkt = functools.lru_cache(maxsize=64)(CRS.from_wkt)
_crs_from_user = functools.lru_cache(maxsize=64)(CRS.from_user_input)

#: Longitude and latitude, for a pile's position on the ellipsoid.
WGS84 = CRS.from_epsg(4326)


def raster_name(raster: str | os.PathLike[str] | Any) -> str:
    """A raster's path, given the path or an open dataset."""
    return os.fspath(raster) if isinstance(raster, str | os.PathLike) else str(raster.name)


@contextlib.contextmanager
def opened(raster: str | os.PathLike[str] | Any) -> Iterator[Any]:
    """``raster`` opened for the block: a path is opened and closed; an open dataset is lent."""
    if hasattr(raster, "read") and hasattr(raster, "transform"):
        yield raster
        return
    with rasterio.open(os.fspath(raster)) as src:
        yield src


def metric_crs(geom: BaseGeometry, crs: CRS) -> tuple[CRS, BaseGeometry]:
    """A CRS in metres for buffering ``geom``: its own, or a local equidistant one."""
    if is_metric(crs):
        return crs, geom
    to_geo = transformer(crs, WGS84)
    lon, lat = to_geo.transform(geom.centroid.x, geom.centroid.y)
    local = CRS.from_proj4(f"+proj=aeqd +lat_0={lat} +lon_0={lon} +datum=WGS84 +units=m")
    return local, reproject(geom, crs, local)


def window_around(bounds: tuple[float, float, float, float], transform: Affine, pad: int) -> Window:
    """The pixel window of ``transform``'s grid holding ``bounds``, grown by ``pad`` pixels."""
    minx, miny, maxx, maxy = bounds
    corners = [~transform @ (x, y) for x in (minx, maxx) for y in (miny, maxy)]
    cols, rows = [c for c, _ in corners], [r for _, r in corners]
    c0, r0 = math.floor(min(cols)) - pad, math.floor(min(rows)) - pad
    return Window(c0, r0, math.ceil(max(cols)) + pad - c0, math.ceil(max(rows)) + pad - r0)


def read_window(
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


def coverages(
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


def pixel_areas(src_crs: CRS, transform: Affine, win: Window, at: Point) -> np.ndarray:
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
        lon, lat = transformer(src_crs, WGS84).transform(at.x, at.y)
        scale = Proj(src_crs).get_factors(lon, lat).areal_scale
        if math.isfinite(scale) and scale > 0:
            area /= scale
    except Exception:  # a CRS pyproj cannot give factors for: take its units at face value
        pass
    return np.full(rows, area)
