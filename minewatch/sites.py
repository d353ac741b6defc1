"""From per-tile class probabilities to sites: rasters, polygons, areas, legality, series.

The pure functions the inference job composes, each testable on its own:

1. :func:`probability_raster` paints tile probabilities onto the scene grid at
   the resolution of the tiling step (``gcd(tile, stride)`` pixels), averaging
   where tiles overlap, so sites follow tile borders at that resolution.
2. :func:`polygonize` turns the winning class of each cell into polygons, one per
   connected region of a positive class, merged across tile borders by
   construction, with areas in m² in a projected CRS.
3. :func:`assess_legality` flags mining outside every licensed area or inside a
   protected one, with the reason.
4. :func:`link_series` matches sites of one kind across acquisitions by overlap
   into a time series with area change.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine

__all__ = [
    "CellGrid",
    "SiteShape",
    "assess_legality",
    "link_series",
    "polygonize",
    "probability_raster",
]


@dataclass(frozen=True)
class CellGrid:
    """The grid of a probability raster: scene grid coarsened by ``cell`` pixels.

    Attributes:
        cell: Scene pixels per cell side.
        height: Cell rows.
        width: Cell columns.
        transform: Affine transform of cell (0, 0) in the scene CRS.
    """

    cell: int
    height: int
    width: int
    transform: Affine


def probability_raster(
    tiles: Iterable[tuple[int, int, Sequence[float] | np.ndarray]],
    scene_height: int,
    scene_width: int,
    scene_transform: Affine,
    tile: int,
    stride: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray, CellGrid]:
    """Average tile probabilities onto cells of ``gcd(tile, stride)`` pixels.

    Args:
        tiles: ``(row_off, col_off, probabilities)`` per tile.
        scene_height: Scene rows.
        scene_width: Scene columns.
        scene_transform: Scene affine transform.
        tile: Tile size in pixels.
        stride: Tiling step in pixels.
        num_classes: Length of each probability vector.

    Returns:
        ``probs`` float32 ``[K, h, w]`` (0 where no tile covers a cell), ``count``
        int ``[h, w]`` (tiles covering each cell), and the cell grid.
    """
    cell = math.gcd(tile, stride)
    height = -(-scene_height // cell)
    width = -(-scene_width // cell)
    total = np.zeros((num_classes, height, width), np.float64)
    count = np.zeros((height, width), np.int32)
    span = tile // cell
    for row, col, probs in tiles:
        r, c = row // cell, col // cell
        window = (slice(r, min(r + span, height)), slice(c, min(c + span, width)))
        total[(slice(None), *window)] += np.asarray(probs, np.float64)[:, None, None]
        count[window] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), 0.0).astype(np.float32)
    grid = CellGrid(cell, height, width, scene_transform @ Affine.scale(cell))
    return mean, count, grid


@dataclass
class SiteShape:
    """One connected region of a positive class in one scene.

    Attributes:
        kind: Class name.
        geometry: Polygon in the scene CRS (shapely).
        area_m2: Area in square metres.
        score: Mean probability of ``kind`` over the region.
        properties: Anything the caller attaches (scene id, time, flags, ...).
    """

    kind: str
    geometry: Any
    area_m2: float
    score: float
    properties: dict[str, Any] = field(default_factory=dict)


def _area_m2(geoms: Sequence[Any], crs: str) -> list[float]:
    """Areas in m²: planar in a projected CRS in metres, else in an equal-area CRS."""
    import shapely
    from pyproj import CRS, Transformer

    src = CRS.from_user_input(crs) if crs else None
    if src is None:
        return [float(g.area) for g in geoms]
    if src.is_projected and src.axis_info[0].unit_name in ("metre", "meter"):
        return [float(g.area) for g in geoms]
    t = Transformer.from_crs(src, "EPSG:6933", always_xy=True)  # WGS 84 / NSIDC EASE-Grid 2.0

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = t.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return [float(shapely.transform(g, project).area) for g in geoms]


def polygonize(
    probs: np.ndarray,
    covered: np.ndarray,
    grid: CellGrid,
    crs: str,
    classes: Sequence[str],
    positive: Sequence[str],
    threshold: float = 0.5,
    min_area_m2: float = 0.0,
) -> list[SiteShape]:
    """Polygons of the connected regions whose winning class is positive.

    A cell belongs to class ``k`` when ``k`` has the highest mean probability
    there and that probability reaches ``threshold``. Regions are 4-connected.

    Args:
        probs: ``[K, h, w]`` mean probabilities.
        covered: ``[h, w]``, > 0 where a tile covered the cell.
        grid: The cells' grid.
        crs: Scene CRS (for areas).
        classes: Class names, index order.
        positive: Names of the classes that make sites.
        threshold: Least probability of the winning class.
        min_area_m2: Smaller regions are dropped.

    Returns:
        The sites, in class then row order.
    """
    import shapely
    from rasterio.features import shapes
    from shapely.geometry import shape

    winner = probs.argmax(axis=0)
    best = probs.max(axis=0)
    ok = (covered > 0) & (best >= threshold)
    out: list[SiteShape] = []
    for name in positive:
        if name not in classes:
            continue
        k = list(classes).index(name)
        mask = ok & (winner == k)
        if not mask.any():
            continue
        geoms = [
            shape(geom)
            for geom, value in shapes(mask.astype(np.uint8), mask=mask, transform=grid.transform)
            if value == 1
        ]
        areas = _area_m2(geoms, crs)
        from rasterio.features import rasterize

        for geom, area in zip(geoms, areas, strict=True):
            if area < min_area_m2:
                continue
            cells = (
                rasterize(
                    [(geom, 1)], out_shape=mask.shape, transform=grid.transform, dtype="uint8"
                ).astype(bool)
                & mask
            )
            score = float(probs[k][cells].mean()) if cells.any() else 0.0
            out.append(SiteShape(name, shapely.make_valid(geom), area, score))
    return out


def assess_legality(
    geom: Any,
    concessions: Sequence[tuple[str, Any]],
    protected: Sequence[tuple[str, Any]],
) -> tuple[bool, str | None, str | None]:
    """Decide whether a mining site is illegal.

    The rule: a site that overlaps a protected area (positive intersection area)
    is illegal with reason ``protected_area``; otherwise one with more than half
    of its area outside every concession is illegal with reason
    ``outside_concession``; otherwise it is legal. The ground truth
    (:mod:`minewatch.synth`) and the inference job use this one rule.

    Args:
        geom: The site polygon.
        concessions: ``(licence_id, polygon)`` pairs, same CRS as ``geom``.
        protected: ``(name, polygon)`` pairs, same CRS as ``geom``.

    Returns:
        ``(illegal, reason, licence_id)``; ``licence_id`` is the concession that
        holds most of the site, or None.
    """
    from shapely.ops import unary_union

    licence, most = None, 0.0
    for lid, poly in concessions:
        overlap = geom.intersection(poly).area
        if overlap > most:
            licence, most = lid, overlap
    if any(geom.intersection(p).area > 0 for _, p in protected):
        return True, "protected_area", licence
    inside = unary_union([p for _, p in concessions]).intersection(geom).area if concessions else 0
    if geom.area - inside > 0.5 * geom.area:
        return True, "outside_concession", licence
    return False, None, licence


def link_series(
    dated: Sequence[tuple[str, Sequence[Any]]], min_overlap: float = 0.1
) -> list[list[tuple[str, int]]]:
    """Chain sites across acquisitions by overlap into series.

    A site continues the series of the previous acquisition's site it overlaps
    most (intersection over the smaller area at least ``min_overlap``), each
    earlier site continuing at most once; other sites start new series.

    Args:
        dated: ``(acquisition, geometries)`` in time order, one CRS.
        min_overlap: Least intersection-over-smaller-area to link two sites.

    Returns:
        Series, each a list of ``(acquisition, index into that acquisition's
        geometries)`` in time order.
    """
    series: list[list[tuple[str, int]]] = []
    open_ends: dict[int, int] = {}  # index in previous acquisition -> series number
    previous: Sequence[Any] = ()
    for when, geoms in dated:
        ends: dict[int, int] = {}
        taken: set[int] = set()
        for i, geom in enumerate(geoms):
            best, best_j = 0.0, -1
            for j, prev in enumerate(previous):
                if j in taken or j not in open_ends:
                    continue
                smaller = min(geom.area, prev.area) or 1.0
                overlap = geom.intersection(prev).area / smaller
                if overlap > best:
                    best, best_j = overlap, j
            if best_j >= 0 and best >= min_overlap:
                taken.add(best_j)
                number = open_ends[best_j]
                series[number].append((when, i))
            else:
                number = len(series)
                series.append([(when, i)])
            ends[i] = number
        open_ends, previous = ends, geoms
    return series
