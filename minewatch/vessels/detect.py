"""Vessel footprints from a per-pixel vessel probability, and their shore.

:func:`detect_vessels` finds hysteresis-thresholded components, measures each
(centre, length, width, heading) and finds the water gap to the nearest land,
which decides whether the vessel is berthed. Water masks come from NDWI
(:func:`ndwi_water`) or the model's water classes (:func:`water_from_classes`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine

from minewatch.errors import ConfigError, InputError
from minewatch.geo import is_metric

__all__ = [
    "Detection",
    "VesselConfig",
    "check_crs",
    "detect_vessels",
    "ndwi_water",
    "water_from_classes",
]


@dataclass(frozen=True)
class VesselConfig:
    """How vessels are found and judged.

    Attributes:
        vessel_class: Name of the vessel class; default ``vessel``.
        water_classes: Classes that count as navigable water when no water mask
            is given; default ``("water",)`` (not ``pit_water``).
        threshold: Least vessel probability of a vessel's core pixels; default 0.5.
        grow_threshold: Least vessel probability of pixels joined to a core
            (hysteresis); default 0.25. Equal to ``threshold`` for plain
            thresholding.
        min_pixels: Smaller components are dropped; default 3.
        measure: ``moments`` (default): centre, length, width and heading of
            the rectangle with the same probability-weighted second moments as
            the component (sub-pixel; length ``sqrt(12 * var + pixel²)``);
            ``rectangle``: the minimum rotated rectangle of the component's
            pixel outline (whole pixels; reads long on blurred edges).
        berth_gap_m: Most water between hull and land for a berthed vessel;
            default 20 m.
        shore_search_m: How far from a vessel land is looked for; default 2000 m.
        max_island_m2: Enclosed non-water patches smaller than this count as
            water (the mixed pixels around a hull, buoys, small rocks);
            default 20000 m² (2 ha).
        licence_radius_m: Radius of a port with no ``radius_m``; default 500 m.
    """

    vessel_class: str = "vessel"
    water_classes: tuple[str, ...] = ("water",)
    threshold: float = 0.5
    grow_threshold: float = 0.25
    min_pixels: int = 3
    measure: str = "moments"
    berth_gap_m: float = 20.0
    shore_search_m: float = 2000.0
    max_island_m2: float = 20_000.0
    licence_radius_m: float = 500.0

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ConfigError(f"threshold must be in (0, 1], got {self.threshold}")
        if not 0.0 < self.grow_threshold <= self.threshold:
            raise ConfigError(
                f"grow_threshold must be in (0, threshold={self.threshold}], "
                f"got {self.grow_threshold}"
            )
        if self.measure not in ("moments", "rectangle"):
            raise ConfigError(f"measure must be 'moments' or 'rectangle', got {self.measure!r}")
        if self.min_pixels < 1:
            raise ConfigError(f"min_pixels must be at least 1, got {self.min_pixels}")
        for name in ("berth_gap_m", "shore_search_m", "max_island_m2", "licence_radius_m"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")


@dataclass(frozen=True)
class Detection:
    """One vessel footprint in one scene, in the scene CRS.

    Attributes:
        x: Centre of the minimum rotated rectangle.
        y: Centre.
        length_m: Long side of the rectangle.
        width_m: Short side.
        heading_deg: Direction of the long side, degrees from north,
            clockwise, in ``[0, 180)``.
        area_m2: Area of the component's pixels.
        pixels: Number of pixels.
        score: Mean vessel probability over the pixels.
        rectangle: The minimum rotated rectangle (shapely polygon).
        gap_m: Water between hull and land; ``None`` when no land lies within
            ``shore_search_m``.
        shore_x: Nearest shore point, or ``None``.
        shore_y: Nearest shore point, or ``None``.
        shore_distance_m: Hull centre to the shore point, or ``None``.
        berthed: ``gap_m <= berth_gap_m``.
    """

    x: float
    y: float
    length_m: float
    width_m: float
    heading_deg: float
    area_m2: float
    pixels: int
    score: float
    rectangle: Any
    gap_m: float | None
    shore_x: float | None
    shore_y: float | None
    shore_distance_m: float | None
    berthed: bool


def check_crs(crs: str) -> Any:
    """Parse a scene CRS and require it to be projected in metres.

    Args:
        crs: Anything :meth:`pyproj.CRS.from_user_input` reads.

    Returns:
        The :class:`pyproj.CRS`.

    Raises:
        InputError: Unreadable, or not projected in metres.
    """
    from pyproj import CRS

    try:
        proj = CRS.from_user_input(crs)
    except Exception as exc:
        raise InputError(f"cannot read the scene CRS {crs!r}: {exc}") from exc
    if not is_metric(proj):
        raise InputError(
            f"vessel lengths and distances need a scene CRS projected in metres "
            f"(Sentinel-2 tiles are UTM), got {proj.name}; reproject the scene"
        )
    return proj


def ndwi_water(green: np.ndarray, nir: np.ndarray, threshold: float = 0.0) -> np.ndarray:
    """Water where NDWI = (green - nir) / (green + nir) reaches ``threshold``.

    The synthetic ground truth uses the same rule (NDWI >= 0) for where water is.

    Args:
        green: Green band (Sentinel-2 B03), any units.
        nir: Near-infrared band (B08), same units and shape.
        threshold: Least NDWI of water; default 0.0.

    Returns:
        Boolean array; False where both bands are 0 (nodata).

    Raises:
        ValueError: The bands differ in shape.
    """
    if green.shape != nir.shape:
        raise ValueError(f"green {green.shape} and nir {nir.shape} differ in shape")
    g = green.astype(np.float32)
    n = nir.astype(np.float32)
    total = g + n
    with np.errstate(invalid="ignore", divide="ignore"):
        ndwi = np.where(total > 0, (g - n) / np.where(total > 0, total, 1.0), -1.0)
    return np.asarray(ndwi >= threshold)


def water_from_classes(
    probs: np.ndarray, classes: Sequence[str], water_classes: Sequence[str] = ("water",)
) -> np.ndarray:
    """Water where the winning class of ``probs [K, H, W]`` is a water class.

    Args:
        probs: Class probabilities ``[K, H, W]``.
        classes: Class names, index order.
        water_classes: Names that count as water; default ``("water",)``.

    Returns:
        Boolean ``[H, W]``.

    Raises:
        ConfigError: No water class among ``classes`` (pass an NDWI mask instead).
    """
    found = [classes.index(c) for c in water_classes if c in classes]
    if not found:
        raise ConfigError(
            f"the model has no water class ({list(water_classes)} not in {list(classes)}): "
            "pass a water mask, e.g. ndwi_water(green, nir) of the scene"
        )
    winner = probs.argmax(axis=0)
    return np.isin(winner, found)


def _fill_islands(wet: np.ndarray, max_pixels: int) -> np.ndarray:
    """Mark non-water patches enclosed by water and smaller than ``max_pixels`` as water."""
    from scipy import ndimage

    dry, n = ndimage.label(~wet)
    if n == 0:
        return wet
    sizes = np.bincount(dry.ravel(), minlength=n + 1)
    border = np.unique(np.concatenate([dry[0], dry[-1], dry[:, 0], dry[:, -1]]))
    small = sizes <= max_pixels
    small[0] = False
    small[border] = False
    return wet | small[dry]


def _rectangle(comp: np.ndarray, transform: Affine) -> tuple[Any, float, float, float]:
    """Minimum rotated rectangle of a component's pixel outline: (rect, length, width, heading)."""
    import shapely
    from rasterio.features import shapes
    from shapely.geometry import shape

    outline = shapely.union_all(
        [
            shape(g)
            for g, v in shapes(
                comp.astype(np.uint8), mask=comp, transform=transform, connectivity=8
            )
            if v == 1
        ]
    )
    rect = shapely.minimum_rotated_rectangle(outline)
    xy = np.asarray(rect.exterior.coords)[:4]
    e1, e2 = xy[1] - xy[0], xy[2] - xy[1]
    long_, short = (e1, e2) if np.hypot(*e1) >= np.hypot(*e2) else (e2, e1)
    heading = math.degrees(math.atan2(long_[0], long_[1])) % 180.0
    return rect, float(np.hypot(*long_)), float(np.hypot(*short)), heading


def _moments(
    comp: np.ndarray, weights: np.ndarray, transform: Affine
) -> tuple[float, float, float, float, float]:
    """Probability-weighted second moments: (x, y, length, width, heading)."""
    rows, cols = np.nonzero(comp)
    wts = weights[rows, cols].astype(np.float64)
    wts = wts / wts.sum()
    xs = transform.c + transform.a * (cols + 0.5) + transform.b * (rows + 0.5)
    ys = transform.f + transform.d * (cols + 0.5) + transform.e * (rows + 0.5)
    mx, my = float(wts @ xs), float(wts @ ys)
    dx, dy = xs - mx, ys - my
    cov = np.array([[wts @ (dx * dx), wts @ (dx * dy)], [wts @ (dx * dy), wts @ (dy * dy)]])
    vals, vecs = np.linalg.eigh(cov)
    px2 = abs(transform.a * transform.e - transform.b * transform.d)
    length = math.sqrt(max(12.0 * float(vals[1]) + px2, 0.0))
    width = math.sqrt(max(12.0 * float(vals[0]) + px2, 0.0))
    ux, uy = vecs[:, 1]
    heading = math.degrees(math.atan2(ux, uy)) % 180.0
    return mx, my, length, width, heading


def _oriented_rectangle(x: float, y: float, length: float, width: float, heading: float) -> Any:
    from shapely.geometry import Polygon

    fx, fy = math.sin(math.radians(heading)), math.cos(math.radians(heading))
    sx, sy = fy, -fx
    corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    return Polygon(
        [
            (
                x + u * fx * length / 2 + v * sx * width / 2,
                y + u * fy * length / 2 + v * sy * width / 2,
            )
            for u, v in corners
        ]
    )


def detect_vessels(
    vessel_prob: np.ndarray,
    water: np.ndarray,
    transform: Affine,
    crs: str,
    config: VesselConfig | None = None,
    valid: np.ndarray | None = None,
) -> list[Detection]:
    """Vessel footprints and their shore relation in one scene (rules: module doc).

    Args:
        vessel_prob: Vessel probability ``[H, W]``.
        water: Boolean ``[H, W]``, True on water (a hull's own pixels need not be).
        transform: Affine transform of the grid (north-up or rotated).
        crs: Scene CRS, projected in metres.
        config: Thresholds; default :class:`VesselConfig`.
        valid: Boolean ``[H, W]``, False where the model saw nothing (such
            pixels are neither vessel nor land); default all valid.

    Returns:
        Detections in row-major order of their first pixel.

    Raises:
        InputError: The CRS is not projected in metres.
        ValueError: The arrays differ in shape.
    """
    import shapely
    from scipy import ndimage
    from shapely.geometry import Point
    from shapely.ops import nearest_points

    config = config or VesselConfig()
    check_crs(crs)
    if vessel_prob.ndim != 2 or water.shape != vessel_prob.shape:
        raise ValueError(
            f"vessel_prob {vessel_prob.shape} and water {water.shape} must be the same 2-D shape"
        )
    if valid is not None and valid.shape != vessel_prob.shape:
        raise ValueError(f"valid {valid.shape} differs from vessel_prob {vessel_prob.shape}")
    ok = np.ones(vessel_prob.shape, bool) if valid is None else np.asarray(valid, bool)
    # Hysteresis: components grow from pixels at ``threshold`` into connected
    # pixels at ``grow_threshold``, which keeps a 1-2 pixel wide barge in one piece.
    core = (vessel_prob >= config.threshold) & ok
    vessel = (vessel_prob >= config.grow_threshold) & ok
    # Unknown pixels are not land: a vessel next to a nodata strip is not berthed there.
    wet_all = np.asarray(water, bool) | vessel | ~ok
    px_col = math.hypot(transform.a, transform.d)
    px_row = math.hypot(transform.b, transform.e)
    pixel = min(px_col, px_row)
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    reach = math.ceil(config.shore_search_m / pixel)
    max_island = int(config.max_island_m2 / pixel_area)
    labels, n_labels = ndimage.label(vessel, structure=np.ones((3, 3), bool))
    seeded = np.zeros(n_labels + 1, bool)
    seeded[np.unique(labels[core])] = True
    seeded[0] = False
    labels[~seeded[labels]] = 0
    out: list[Detection] = []
    height, width = vessel.shape
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        r0, r1 = max(0, sl[0].start - reach), min(height, sl[0].stop + reach)
        c0, c1 = max(0, sl[1].start - reach), min(width, sl[1].stop + reach)
        comp = labels[r0:r1, c0:c1] == k
        n = int(comp.sum())
        if n < config.min_pixels:
            continue
        win_tf = transform @ Affine.translation(c0, r0)
        if config.measure == "moments":
            cx, cy, length, rwidth, heading = _moments(comp, vessel_prob[r0:r1, c0:c1], win_tf)
            rect = _oriented_rectangle(cx, cy, length, rwidth, heading)
        else:
            rect, length, rwidth, heading = _rectangle(comp, win_tf)
        centre = rect.centroid
        score = float(vessel_prob[r0:r1, c0:c1][comp].mean())
        wet = _fill_islands(wet_all[r0:r1, c0:c1], max_island)
        gap = shore_x = shore_y = shore_d = None
        if not wet.all():
            dist, (ir, ic) = ndimage.distance_transform_edt(
                wet, sampling=(px_row, px_col), return_indices=True
            )
            gap = max(0.0, float(dist[comp].min()) - pixel)
            rows, cols = np.nonzero(comp)
            xs = win_tf.c + win_tf.a * (cols + 0.5) + win_tf.b * (rows + 0.5)
            ys = win_tf.f + win_tf.d * (cols + 0.5) + win_tf.e * (rows + 0.5)
            j = int(np.argmin(np.hypot(xs - centre.x, ys - centre.y)))
            lr, lc = int(ir[rows[j], cols[j]]), int(ic[rows[j], cols[j]])
            square = shapely.Polygon(
                [win_tf @ (lc + dc, lr + dr) for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1))]
            )
            shore = nearest_points(square, Point(centre.x, centre.y))[0]
            shore_x, shore_y = float(shore.x), float(shore.y)
            shore_d = float(centre.distance(shore))
        berthed = gap is not None and gap <= config.berth_gap_m
        out.append(
            Detection(
                x=float(centre.x),
                y=float(centre.y),
                length_m=length,
                width_m=rwidth,
                heading_deg=heading,
                area_m2=n * pixel_area,
                pixels=n,
                score=score,
                rectangle=rect,
                gap_m=gap,
                shore_x=shore_x,
                shore_y=shore_y,
                shore_distance_m=shore_d,
                berthed=berthed,
            )
        )
    return out
