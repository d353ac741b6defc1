"""From class probabilities to sites: rasters, polygons, areas, legality, series.

The pure functions the inference job composes, each testable on its own:

1. :func:`pixel_raster` mosaics the per-pixel probabilities of a model with the
   pixel head onto the scene grid at pixel resolution, averaging where tiles
   overlap. For tile-only models, :func:`probability_raster` paints tile
   probabilities at the resolution of the tiling step (``gcd(tile, stride)``
   pixels), so sites follow tile borders at that resolution.
2. :func:`polygonize` turns the winning class of each cell into polygons, one per
   connected region of a positive class, merged across tile borders by
   construction, with areas in m² in a projected CRS.
3. :func:`assess_legality` flags mining outside every licensed area or inside a
   protected one, with the reason.
4. :func:`link_series` matches sites of one kind across acquisitions by overlap
   into a time series with area change.
5. :class:`SiteRules` holds how sites are cut and judged per kind (the model's
   calibrated operating points, or the command's options) and decides a
   site's ``status`` (``confirmed`` or ``candidate``).

:func:`match_sites` scores found sites against known polygons (recall and
precision at an IoU threshold), for tests and ``bench/seg_truth.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine

__all__ = [
    "CellGrid",
    "KindRule",
    "SiteRules",
    "SiteShape",
    "assess_legality",
    "link_series",
    "match_sites",
    "pixel_mosaic",
    "pixel_raster",
    "polygonize",
    "probability_raster",
    "reweight",
    "smooth_probabilities",
]


#: A site seen on at least this many acquisitions is confirmed whatever its score.
CONFIRM_ACQUISITIONS = 2
#: Mean score at which a site seen once is confirmed, where the model states none.
DEFAULT_CONFIRM_SCORE = 0.8


@dataclass(frozen=True)
class KindRule:
    """How sites of one kind are kept and judged.

    Attributes:
        min_score: Regions whose mean probability of the kind is lower are dropped.
        min_area_m2: Smaller regions are dropped.
        confirm_score: A site seen on one acquisition only is ``confirmed``
            when its mean score reaches this, else a ``candidate``.
    """

    min_score: float = 0.0
    min_area_m2: float = 0.0
    confirm_score: float = DEFAULT_CONFIRM_SCORE


@dataclass(frozen=True)
class SiteRules:
    """How sites are cut from probabilities and which are confirmed.

    Built by :meth:`from_operating_points` from a model's ``operating_points``
    (chosen on the training world's validation split, ``docs/training.md``)
    with the command's options on top: an option that is given wins for every
    kind, one that is not falls back to the model's value, then to the built-in
    default.

    A site's ``status`` (:meth:`status`) is ``confirmed`` when it was seen on
    :data:`CONFIRM_ACQUISITIONS` acquisitions or more, or once with a mean
    score of at least its kind's ``confirm_score``; otherwise ``candidate``:
    one sighting with a modest score is what false sites look like.

    Attributes:
        threshold: Least probability of a cell's winning class. Default 0.5.
        smooth: Box filter side in cells before sites are cut. Default 1.
        kinds: Per-kind rules; kinds not listed get ``default``.
        default: The rule of unlisted kinds.
        class_weights: Per class (model order), factors the probabilities are
            multiplied by (and renormalised) before the winning class is
            taken: a prior chosen for the decision, apart from the calibrated
            probabilities the model serves; None (default) leaves them.
    """

    threshold: float = 0.5
    smooth: int = 1
    kinds: Mapping[str, KindRule] = field(default_factory=dict)
    default: KindRule = KindRule()
    class_weights: tuple[float, ...] | None = None

    def rule(self, kind: str) -> KindRule:
        """The rule of ``kind``."""
        return self.kinds.get(kind, self.default)

    def status(self, kind: str, acquisitions: int, score: float) -> str:
        """``confirmed`` or ``candidate`` for a site of ``kind`` (see the class)."""
        if acquisitions >= CONFIRM_ACQUISITIONS or score >= self.rule(kind).confirm_score:
            return "confirmed"
        return "candidate"

    @classmethod
    def from_operating_points(
        cls,
        points: Mapping[str, Any] | None,
        *,
        threshold: float | None = None,
        smooth: int | None = None,
        min_score: float | None = None,
        min_area_m2: float | None = None,
        classes: Sequence[str] | None = None,
    ) -> SiteRules:
        """The model's operating points with the given options on top.

        Args:
            points: A model's ``metadata.json`` ``operating_points``
                (``{"threshold", "smooth", "class_weights", "kinds": {kind:
                {"min_score", "min_area_m2", "confirm_score"}}}``), or None.
            threshold: Overrides the threshold when not None.
            smooth: Overrides the smoothing when not None.
            min_score: Overrides every kind's ``min_score`` when not None.
            min_area_m2: Overrides every kind's ``min_area_m2`` when not None.
            classes: The model's classes, to check ``class_weights`` against.

        Returns:
            The rules.

        Raises:
            ConfigError: ``class_weights`` does not have one value per class.
        """
        points = points or {}

        def rule(values: Mapping[str, Any]) -> KindRule:
            base = KindRule(
                min_score=float(values.get("min_score", 0.0)),
                min_area_m2=float(values.get("min_area_m2", 0.0)),
                confirm_score=float(values.get("confirm_score", DEFAULT_CONFIRM_SCORE)),
            )
            return KindRule(
                min_score=base.min_score if min_score is None else min_score,
                min_area_m2=base.min_area_m2 if min_area_m2 is None else min_area_m2,
                confirm_score=base.confirm_score,
            )

        weights = points.get("class_weights")
        if weights and classes is not None and len(weights) != len(classes):
            from minewatch.errors import ConfigError

            raise ConfigError(
                f"operating_points.class_weights has {len(weights)} values for the model's "
                f"{len(classes)} classes {list(classes)}: export the model again"
            )
        return cls(
            threshold=float(points.get("threshold", 0.5)) if threshold is None else threshold,
            smooth=int(points.get("smooth", 1)) if smooth is None else smooth,
            kinds={k: rule(v) for k, v in (points.get("kinds") or {}).items()},
            default=rule({}),
            class_weights=tuple(float(w) for w in weights) if weights else None,
        )


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


def pixel_raster(
    tiles: Iterable[tuple[int, int, np.ndarray]],
    scene_height: int,
    scene_width: int,
    scene_transform: Affine,
    num_classes: int,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, CellGrid]:
    """Average per-pixel tile probabilities onto the scene grid (cells of 1 pixel).

    A pixel whose probabilities are all 0 (the inference job zeroes invalid input
    pixels) does not count; parts of a tile outside the scene are cut off.
    Memory: ``K + 1`` float32/int planes of the scene, one scene at a time.
    Tiles of one size go to :func:`pixel_mosaic` together.

    Args:
        tiles: ``(row_off, col_off, probabilities [h, w, K])`` per tile.
        scene_height: Scene rows.
        scene_width: Scene columns.
        scene_transform: Scene affine transform.
        num_classes: ``K``.
        scale: Probability of one unit of the tiles' values (``1 / 250`` for
            the job's byte-quantised probabilities). Default 1.

    Returns:
        ``probs`` float32 ``[K, H, W]`` (0 where nothing counts), ``count`` int32
        ``[H, W]`` (tiles whose valid pixel covers each pixel), and the grid.
    """
    total = np.zeros((scene_height, scene_width, num_classes), np.float32)
    count = np.zeros((scene_height, scene_width), np.int32)
    by_size: dict[tuple[int, int], list[tuple[int, int, np.ndarray]]] = {}
    for row, col, probs in tiles:
        by_size.setdefault(probs.shape[:2], []).append((row, col, np.asarray(probs)))
    for members in by_size.values():
        rows = np.array([r for r, _, _ in members], np.int64)
        cols = np.array([c for _, c, _ in members], np.int64)
        _mosaic(total, count, rows, cols, np.stack([p for _, _, p in members]))
    return _averaged(total, count, scale, scene_transform)


def pixel_mosaic(
    rows: np.ndarray,
    cols: np.ndarray,
    values: np.ndarray,
    scene_height: int,
    scene_width: int,
    scene_transform: Affine,
    num_classes: int,
    scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, CellGrid]:
    """:func:`pixel_raster` of tiles of one size given as arrays.

    Tiles whose offsets agree modulo the tile size never overlap, so each such
    set is laid onto the scene in one block copy rather than tile by tile (an
    inference job cuts a scene into a few such sets: one per phase of its
    stride, plus the shifted tiles at the edges); tiles repeating a position
    are added one by one.

    Args:
        rows: ``[n]`` tile row offsets.
        cols: ``[n]`` tile column offsets.
        values: ``[n, h, w, K]`` per-pixel probabilities (in units of ``scale``).
        scene_height: Scene rows.
        scene_width: Scene columns.
        scene_transform: Scene affine transform.
        num_classes: ``K``.
        scale: Probability of one unit of ``values``. Default 1.

    Returns:
        As :func:`pixel_raster`.
    """
    total = np.zeros((scene_height, scene_width, num_classes), np.float32)
    count = np.zeros((scene_height, scene_width), np.int32)
    if len(values):
        _mosaic(total, count, np.asarray(rows), np.asarray(cols), values)
    return _averaged(total, count, scale, scene_transform)


def _averaged(
    total: np.ndarray, count: np.ndarray, scale: float, transform: Affine
) -> tuple[np.ndarray, np.ndarray, CellGrid]:
    """``[H, W, K]`` sums -> ``([K, H, W]`` means times ``scale``, count, pixel grid)."""
    np.multiply(total, np.float32(scale) / np.maximum(count, 1)[..., None], out=total)
    probs = np.ascontiguousarray(np.moveaxis(total, -1, 0))
    return probs, count, CellGrid(1, count.shape[0], count.shape[1], transform)


def _mosaic(
    total: np.ndarray, count: np.ndarray, rows: np.ndarray, cols: np.ndarray, values: np.ndarray
) -> None:
    """Add ``[n, h, w, K]`` tiles at ``(rows, cols)`` into ``total`` and ``count``."""
    h, w = values.shape[1:3]
    phase_r, phase_c = rows % h, cols % w
    block_r, block_c = (rows - phase_r) // h, (cols - phase_c) // w
    phases, which = np.unique(np.stack([phase_r, phase_c], 1), axis=0, return_inverse=True)
    for p, (r0, c0) in enumerate(phases):
        members = np.flatnonzero(which.ravel() == p)
        blocks = np.stack([block_r[members], block_c[members]], 1)
        _, first = np.unique(blocks, axis=0, return_index=True)
        once = members[np.sort(first)]
        if len(once) > 1:
            _add_blocks(total, count, block_r[once], block_c[once], values[once], int(r0), int(c0))
        else:
            once = members[:0]
        for i in np.setdiff1d(members, once):  # repeated positions, or a set of one tile
            _add_plane(total, count, values[i], int(rows[i]), int(cols[i]))


def _add_plane(
    total: np.ndarray, count: np.ndarray, plane: np.ndarray, top: int, left: int
) -> None:
    """Add ``plane`` ``[h, w, K]`` with its corner at ``(top, left)``, cut to the scene."""
    r_from, c_from = max(0, -top), max(0, -left)
    r_to = min(plane.shape[0], total.shape[0] - top)
    c_to = min(plane.shape[1], total.shape[1] - left)
    if r_to <= r_from or c_to <= c_from:
        return
    part = plane[r_from:r_to, c_from:c_to]
    rows = slice(top + r_from, top + r_to)
    cols = slice(left + c_from, left + c_to)
    total[rows, cols] += part
    count[rows, cols] += (part > 0).any(axis=-1)


def _add_blocks(
    total: np.ndarray,
    count: np.ndarray,
    block_r: np.ndarray,
    block_c: np.ndarray,
    values: np.ndarray,
    r0: int,
    c0: int,
) -> None:
    """Add tiles at distinct blocks of one ``(r0, c0)`` phase (so none overlaps) in one copy."""
    h, w, k = values.shape[1:]
    shift_r, shift_c = int(block_r.min()), int(block_c.min())  # may start above/left of 0
    br, bc = block_r - shift_r, block_c - shift_c
    grid = np.zeros((int(br.max()) + 1, int(bc.max()) + 1, h, w, k), values.dtype)
    grid[br, bc] = values
    plane = grid.transpose(0, 2, 1, 3, 4).reshape(grid.shape[0] * h, grid.shape[1] * w, k)
    _add_plane(total, count, plane, r0 + shift_r * h, c0 + shift_c * w)


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


def _planar_metres(crs: str) -> bool:
    """Whether areas in ``crs`` are planar square metres (or there is no CRS)."""
    from minewatch.geo import is_metric

    return not crs or is_metric(crs)


def _area_m2(geoms: Sequence[Any], crs: str) -> list[float]:
    """Areas in m²: planar in a projected CRS in metres, else in an equal-area CRS."""
    from minewatch.geo import reproject

    if _planar_metres(crs):
        return [float(g.area) for g in geoms]
    # EPSG:6933: WGS 84 / NSIDC EASE-Grid 2.0, equal-area
    return [float(reproject(g, crs, "EPSG:6933").area) for g in geoms]


def smooth_probabilities(probs: np.ndarray, covered: np.ndarray, size: int) -> np.ndarray:
    """``probs`` averaged over ``size`` x ``size`` windows of covered cells.

    Uncovered cells neither count nor change (they stay as they were); each
    covered cell's probabilities still sum to what they summed to.

    Args:
        probs: ``[K, h, w]`` probabilities.
        covered: ``[h, w]`` bool, True where a tile covered the cell.
        size: Window side in cells (odd sizes centre the window).

    Returns:
        The smoothed ``[K, h, w]`` array (float32).
    """
    from scipy import ndimage

    weight = covered.astype(np.float32)
    norm = ndimage.uniform_filter(weight, size=size, mode="constant")
    everywhere = bool(covered.all())  # the usual case: no weighting pass, no masking pass
    data = probs.astype(np.float32, copy=False)
    out = ndimage.uniform_filter(
        data if everywhere else data * weight, size=(1, size, size), mode="constant"
    )
    np.divide(out, norm, out=out, where=norm > 0)
    return out if everywhere else np.where(covered, out, data)


def reweight(probs: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """``[K, h, w]`` probabilities times per-class ``weights``, renormalised per cell.

    Cells whose probabilities are all 0 (uncovered) stay 0.
    """
    w = np.asarray(weights, np.float32).reshape(-1, *([1] * (probs.ndim - 1)))
    out = probs.astype(np.float32) * w
    total = out.sum(axis=0, keepdims=True)
    np.divide(out, total, out=out, where=total > 0)
    return out


def polygonize(
    probs: np.ndarray,
    covered: np.ndarray,
    grid: CellGrid,
    crs: str,
    classes: Sequence[str],
    positive: Sequence[str],
    threshold: float = 0.5,
    min_area_m2: float | Mapping[str, float] = 0.0,
    min_score: float | Mapping[str, float] = 0.0,
    smooth: int = 1,
    class_weights: Sequence[float] | None = None,
) -> list[SiteShape]:
    """Polygons of the connected regions whose winning class is positive.

    A cell belongs to class ``k`` when ``k`` has the highest mean probability
    there and that probability reaches ``threshold``. Regions are 4-connected.
    With ``smooth`` > 1 the probabilities are first averaged over ``smooth`` x
    ``smooth`` covered cells (a box filter that ignores uncovered cells): a
    pixel head's isolated speckles and ragged edges stop making sites of their
    own, at the cost of objects narrower than about ``smooth / 2`` cells.

    Args:
        probs: ``[K, h, w]`` mean probabilities.
        covered: ``[h, w]``, > 0 where a tile covered the cell.
        grid: The cells' grid.
        crs: Scene CRS (for areas).
        classes: Class names, index order.
        positive: Names of the classes that make sites.
        threshold: Least probability of the winning class.
        min_area_m2: Smaller regions are dropped; one value, or one per class
            name (classes not named: 0).
        min_score: Regions whose mean probability of their class (their
            ``score``) is lower are dropped; one value, or one per class name.
        smooth: Side of the box filter, in cells; 1 (default) leaves the
            probabilities as they are.
        class_weights: Per class, factors applied to the (smoothed)
            probabilities, renormalised per cell, before classes win and
            scores are taken (:attr:`SiteRules.class_weights`); default none.

    Returns:
        The sites, in class then row order.
    """
    import shapely
    from rasterio.features import shapes
    from scipy import ndimage
    from shapely.geometry import shape

    if smooth > 1:
        probs = smooth_probabilities(probs, covered > 0, smooth)
    if class_weights is not None:
        probs = reweight(probs, class_weights)
    winner = probs.argmax(axis=0)
    best = probs.max(axis=0)
    ok = (covered > 0) & (best >= threshold)
    planar = _planar_metres(crs)
    t = grid.transform
    cell_area = abs(t.a * t.e - t.b * t.d)
    out: list[SiteShape] = []
    for name in positive:
        if name not in classes:
            continue
        k = list(classes).index(name)
        least_area = _per_kind(min_area_m2, name)
        least_score = _per_kind(min_score, name)
        mask = ok & (winner == k)
        if not mask.any():
            continue
        # One label per 4-connected region (ndimage's default structure, the same
        # connectivity as ``shapes``): one polygon per label, scored in one pass.
        regions, n = ndimage.label(mask)
        sums = np.bincount(regions.ravel(), weights=probs[k].ravel(), minlength=n + 1)
        sizes = np.bincount(regions.ravel(), minlength=n + 1)
        # Regions that cannot pass are dropped before they are traced: the score
        # is known per label, and so is the area where the CRS is planar metres.
        slack = 1.0 - 1e-9  # rounding must never drop what the exact test below keeps
        keep = sums >= least_score * sizes * slack
        if planar:
            keep &= sizes * cell_area >= least_area * slack
        keep[0] = False
        if not keep[1:].all():
            mask = keep[regions]
            if not mask.any():
                continue
        found = [
            (int(value), shape(geom))
            for geom, value in shapes(regions.astype(np.int32), mask=mask, transform=grid.transform)
        ]
        areas = _area_m2([g for _, g in found], crs)
        for (value, geom), area in sorted(
            zip(found, areas, strict=True), key=lambda item: item[0][0]
        ):
            score = float(sums[value] / sizes[value]) if sizes[value] else 0.0
            if area < least_area or score < least_score:
                continue
            out.append(SiteShape(name, shapely.make_valid(geom), area, score))
    return out


def _per_kind(value: float | Mapping[str, float], kind: str) -> float:
    return float(value.get(kind, 0.0)) if isinstance(value, Mapping) else float(value)


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
    (:mod:`minewatch.synth`) does not call it: it says which pits are illegal
    by where it placed them, and a test shows the two agree on its worlds.

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
    import shapely

    series: list[list[tuple[str, int]]] = []
    open_ends: dict[int, int] = {}  # index in previous acquisition -> series number
    previous: Sequence[Any] = ()
    tree: Any = None
    for when, geoms in dated:
        ends: dict[int, int] = {}
        taken: set[int] = set()
        for i, geom in enumerate(geoms):
            best, best_j = 0.0, -1
            # Only the previous sites whose boxes meet this one can overlap it.
            near = tree.query(geom, predicate="intersects") if tree is not None else ()
            for j in sorted(int(j) for j in near):
                if j in taken or j not in open_ends:
                    continue
                prev = previous[j]
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
        tree = shapely.STRtree(list(geoms)) if len(geoms) else None
    return series


def match_sites(
    found: Sequence[Any], truth: Sequence[Any], min_iou: float = 0.3
) -> list[tuple[int, int, float]]:
    """Pair found polygons with known ones, one to one, by IoU.

    Greedy by decreasing IoU: the best-overlapping pair is matched first, and
    each polygon is matched at most once; pairs below ``min_iou`` are not.
    Recall is ``len(pairs) / len(truth)``, precision ``len(pairs) / len(found)``.

    Args:
        found: Polygons found (shapely), one CRS.
        truth: Known polygons, same CRS.
        min_iou: Least intersection over union of a pair. Default 0.3.

    Returns:
        ``(found index, truth index, iou)`` per matched pair.
    """
    import shapely

    if not len(found) or not len(truth):
        return []
    tree = shapely.STRtree(list(truth))
    candidates: list[tuple[float, int, int]] = []
    for i, geom in enumerate(found):
        for j in tree.query(geom, predicate="intersects"):
            other = truth[int(j)]
            union = geom.union(other).area
            iou = geom.intersection(other).area / union if union else 0.0
            if iou >= min_iou:
                candidates.append((iou, i, int(j)))
    pairs: list[tuple[int, int, float]] = []
    used_found: set[int] = set()
    used_truth: set[int] = set()
    for iou, i, j in sorted(candidates, reverse=True):
        if i not in used_found and j not in used_truth:
            used_found.add(i)
            used_truth.add(j)
            pairs.append((i, j, iou))
    return pairs
