"""Moving geometries between coordinate reference systems, with transformers built once."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from pyproj import CRS, Transformer

__all__ = ["is_metric", "reproject", "transformer"]


def is_metric(crs: Any) -> bool:
    """Whether ``crs`` is projected with its first axis in metres (areas are planar m²).

    Args:
        crs: A pyproj CRS, or anything ``CRS.from_user_input`` reads (EPSG code,
            WKT, a rasterio CRS).
    """
    from pyproj import CRS

    proj = crs if isinstance(crs, CRS) else CRS.from_user_input(crs)
    axis = proj.axis_info[0] if proj.axis_info else None
    return bool(proj.is_projected and axis is not None and axis.unit_name in ("metre", "meter"))


@functools.lru_cache(maxsize=64)
def transformer(src: str | CRS, dst: str | CRS) -> Transformer:
    """The ``always_xy`` transformer from ``src`` to ``dst``, built once per pair.

    A job moves thousands of polygons between a handful of CRSs; building a
    transformer costs more than moving one polygon. pyproj transformers are
    safe to share between threads (each thread gets its own PROJ object).
    """
    from pyproj import Transformer

    return Transformer.from_crs(src, dst, always_xy=True)


@functools.lru_cache(maxsize=64)
def _same(src: str | CRS, dst: str | CRS) -> bool:
    from pyproj import CRS

    return bool(CRS.from_user_input(src).equals(CRS.from_user_input(dst)))


def reproject(geom: Any, src: str | CRS, dst: str | CRS, step: float | None = None) -> Any:
    """``geom`` (shapely) moved from ``src`` to ``dst``; itself when they are the same CRS.

    Args:
        geom: The geometry.
        src: Its CRS (anything pyproj takes).
        dst: The CRS to move it to.
        step: Densify edges to this length (in ``src`` units) first: a straight
            edge in one CRS is a curve in another. Default: as it is.

    Returns:
        The moved geometry.
    """
    import shapely

    if _same(src, dst):
        return geom
    if step is not None:
        geom = shapely.segmentize(geom, step)
    t = transformer(src, dst)

    def move(xy: np.ndarray) -> np.ndarray:
        x, y = t.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, move)
