"""Vessels from a per-pixel class raster: footprints, berths, licences, scores.

Issue 11. Ships of 60-300 m are 6-30 Sentinel-2 pixels long, too small for tile
classes but plain in a per-pixel ``vessel`` class. For one scene this module
turns that class into rows of the ``vessels`` table
(:func:`minewatch.tables.vessels_schema`) and flagged ``sites`` rows:

1. **Footprints** (:func:`detect_vessels`): 8-connected components of pixels
   whose vessel probability reaches ``grow_threshold`` (0.25) and that hold at
   least one pixel at ``threshold`` (0.5), hysteresis thresholding that keeps
   a barge one or two pixels wide in one piece; components under
   ``min_pixels`` are dropped (boats under about 3 pixels are not resolved).
   The minimum rotated rectangle of a component's pixel outline gives the
   centre, the length (long side), the width and the heading (direction of the
   long side, degrees from north, clockwise, 0-180: a footprint does not tell
   bow from stern).
2. **Shore** (same function): water is the water mask (a ``water`` class or
   NDWI, :func:`ndwi_water`) joined with the vessel pixels themselves (a hull
   is on water, and its NDWI is negative), with enclosed non-water specks under
   ``max_island_m2`` (the mixed pixels around a hull) filled in; land is the
   rest. Within ``shore_search_m`` of each vessel a distance transform gives
   the **gap**: the water between the hull and land, ``max(0, d - pixel)`` for
   the least centre-to-centre distance ``d`` from a hull pixel to a land pixel.
   **Rule: a vessel is berthed when the gap is at most** ``berth_gap_m``
   **(20 m, two pixels at 10 m); otherwise it is moving** (or at anchor: the
   footprint alone cannot tell). The nearest shore point is the point of the
   land pixel nearest the hull centre that is closest to that centre.
3. **Licences** (:class:`PortRegistry`, :func:`judge_vessels`): a berthed
   vessel is licensed when its shore point lies within a licensed port's
   ``radius_m`` (default ``licence_radius_m``, 500 m) of the port's geometry
   (point, line or polygon, any CRS, reprojected); a berthed vessel that is
   not is flagged, with the reason.
4. **Scores** (:func:`match_vessels`): detections against known vessels, one
   to one within a centre distance (default 50 m): recall, precision, length
   and heading errors, and whether the flagged sets agree.

Distances are in metres, so the scene CRS must be projected in metres
(Sentinel-2 tiles are UTM). Memory: the label image of the vessel mask plus one
window of ``2 * shore_search_m`` around each vessel at a time.

Example::

    ports = PortRegistry.from_file("licensed_ports.geojson")
    vessels, sites = find_vessels(
        probs, classes, transform, "EPSG:32618", water=ndwi_water(green, nir),
        scene_id="S2A_...", acquired="2024-01-15T10:30:00Z", model_version="v3",
        ports=ports,
    )
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from affine import Affine

from minewatch.errors import ConfigError, InputError
from minewatch.geo import is_metric, reproject

__all__ = [
    "Detection",
    "Port",
    "PortRegistry",
    "VesselConfig",
    "VesselScore",
    "detect_vessels",
    "find_vessels",
    "flagged_site_rows",
    "judge_vessels",
    "match_vessels",
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


def _check_crs(crs: str) -> Any:
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
    _check_crs(crs)
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


# --------------------------------------------------------------------------- licences


@dataclass(frozen=True)
class Port:
    """A licensed loading point.

    Attributes:
        port_id: Identifier (``port_id``, else ``id``, else ``name`` field).
        name: Name, or ``None``.
        licence_id: Export licence, or ``None``.
        radius_m: How far from ``geometry`` a berth belongs to the port, or
            ``None`` for the configured default.
        geometry: Point, line or polygon (shapely), in the registry's CRS.
    """

    port_id: str
    name: str | None
    licence_id: str | None
    radius_m: float | None
    geometry: Any


class PortRegistry:
    """Licensed ports and jetties, reprojected once per scene CRS.

    Example::

        ports = PortRegistry.from_file("licensed_ports.geojson")
        near = ports.in_crs("EPSG:32618")

    Args:
        ports: The ports.
        crs: CRS of their geometries; default EPSG:4326 (GeoJSON's).
    """

    def __init__(self, ports: Sequence[Port], crs: str = "EPSG:4326") -> None:
        self.ports = list(ports)
        self.crs = crs
        self._by_crs: dict[str, list[Port]] = {}

    def __len__(self) -> int:
        return len(self.ports)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> PortRegistry:
        """Read a registry from any vector file OGR reads (GeoJSON, GeoPackage, ...).

        Fields: ``port_id`` (else ``id``, else ``name``; else the feature
        number), ``name``, ``licence_id`` and ``radius_m`` (metres, > 0), all
        optional. GeoJSON without a ``crs`` member is EPSG:4326.

        Args:
            path: The file.

        Returns:
            The registry (possibly empty: then every berth is unlicensed).

        Raises:
            InputError: The file cannot be read, a feature has no geometry, or
                a ``radius_m`` is not a positive number.
        """
        import pyogrio
        import shapely

        try:
            meta, _, geometry, fields = pyogrio.raw.read(os.fspath(path))
        except Exception as exc:
            raise InputError(f"cannot read the licensed-ports file {path}: {exc}") from exc
        names = list(meta["fields"])

        def column(*keys: str) -> Any:
            key = next((k for k in keys if k in names), None)
            return fields[names.index(key)] if key else None

        ids, port_names = column("port_id", "id", "name"), column("name")
        licences, radii = column("licence_id"), column("radius_m")
        ports = []
        for i, wkb in enumerate(geometry):
            if wkb is None:
                raise InputError(f"{path}: feature {i} has no geometry; give each port a point")
            radius = None
            if radii is not None and radii[i] is not None:
                try:
                    radius = float(radii[i])
                except (TypeError, ValueError):
                    radius = math.nan
                if not radius > 0:
                    raise InputError(
                        f"{path}: feature {i} has radius_m={radii[i]}; "
                        "give a positive number of metres or leave it out"
                    )
            ports.append(
                Port(
                    port_id=str(ids[i]) if ids is not None and ids[i] is not None else str(i),
                    name=str(port_names[i]) if port_names is not None and port_names[i] else None,
                    licence_id=str(licences[i])
                    if licences is not None and licences[i] is not None
                    else None,
                    radius_m=radius,
                    geometry=shapely.make_valid(shapely.from_wkb(wkb)),
                )
            )
        return cls(ports, str(meta["crs"] or "EPSG:4326"))

    def in_crs(self, crs: str) -> list[Port]:
        """The ports with geometries in ``crs`` (cached per CRS)."""
        if crs not in self._by_crs:
            self._by_crs[crs] = [
                Port(
                    p.port_id,
                    p.name,
                    p.licence_id,
                    p.radius_m,
                    reproject(p.geometry, self.crs, crs),
                )
                for p in self.ports
            ]
        return self._by_crs[crs]


def _timestamp(when: str | datetime | None) -> datetime | None:
    if when is None or isinstance(when, datetime):
        return when
    try:
        ts = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError as exc:
        raise InputError(f"cannot read the acquisition time {when!r}: {exc}") from exc
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def judge_vessels(
    detections: Sequence[Detection],
    crs: str,
    *,
    scene_id: str,
    acquired: str | datetime | None,
    model_version: str,
    ports: PortRegistry | None = None,
    config: VesselConfig | None = None,
) -> list[dict[str, Any]]:
    """Rows of the ``vessels`` table, with the licence check.

    Without ``ports`` nothing is judged: ``licensed``, ``port_id`` and
    ``port_distance_m`` are null and nothing is flagged. With ports, the
    nearest port to the shore point (to the centre for a vessel with no shore
    in reach) is reported; a berthed vessel is licensed when its shore point is
    within some port's radius, else flagged with the reason.

    Args:
        detections: From :func:`detect_vessels`.
        crs: Scene CRS.
        scene_id: Scene identifier.
        acquired: Acquisition time (ISO 8601 string or datetime), or ``None``.
        model_version: Version of the model that made the raster.
        ports: Licensed ports, or ``None``.
        config: Radii; default :class:`VesselConfig`.

    Returns:
        One dict per detection with the columns of
        :func:`minewatch.tables.vessels_schema`.

    Raises:
        InputError: The CRS is not projected in metres, or ``acquired`` is not
            ISO 8601.
    """
    import shapely
    from pyproj import Transformer
    from shapely.geometry import Point

    config = config or VesselConfig()
    _check_crs(crs)
    when = _timestamp(acquired)
    to_geo = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    near = ports.in_crs(crs) if ports is not None else []
    rows = []
    for d in detections:
        lon, lat = to_geo.transform(d.x, d.y)
        shore_lon = shore_lat = None
        if d.shore_x is not None and d.shore_y is not None:
            shore_lon, shore_lat = to_geo.transform(d.shore_x, d.shore_y)
        anchor = Point(d.shore_x, d.shore_y) if d.shore_x is not None else Point(d.x, d.y)
        port_id = port_distance = licensed = reason = None
        flagged = False
        if ports is not None:
            dists = [float(p.geometry.distance(anchor)) for p in near]
            if dists:
                i = int(np.argmin(dists))
                port_id, port_distance = near[i].port_id, dists[i]
            if d.berthed:
                licensed = any(
                    dist <= (p.radius_m if p.radius_m is not None else config.licence_radius_m)
                    for p, dist in zip(near, dists, strict=True)
                )
                if not licensed:
                    flagged = True
                    reason = (
                        f"berthed at an unlicensed shore point {port_distance / 1000:.1f} km "
                        f"from the nearest licensed port {port_id}"
                        if port_distance is not None
                        else "berthed at a shore point; the registry holds no licensed port"
                    )
        digest = hashlib.sha1(f"{scene_id}|{d.x:.1f}|{d.y:.1f}".encode()).hexdigest()[:12]
        rect_wgs84 = reproject(d.rectangle, crs, "EPSG:4326")
        rows.append(
            {
                "vessel_id": f"vessel-{digest}",
                "scene_id": scene_id,
                "acquired": when,
                "lon": float(lon),
                "lat": float(lat),
                "x": d.x,
                "y": d.y,
                "source_crs": crs,
                "geometry": bytes(shapely.to_wkb(rect_wgs84)),
                "geometry_source": bytes(shapely.to_wkb(d.rectangle)),
                "length_m": d.length_m,
                "width_m": d.width_m,
                "heading_deg": d.heading_deg,
                "area_m2": d.area_m2,
                "pixels": d.pixels,
                "score": d.score,
                "berthed": d.berthed,
                "shore_gap_m": d.gap_m,
                "shore_lon": None if shore_lon is None else float(shore_lon),
                "shore_lat": None if shore_lat is None else float(shore_lat),
                "shore_distance_m": d.shore_distance_m,
                "port_id": port_id,
                "port_distance_m": port_distance,
                "licensed": licensed,
                "flagged": flagged,
                "reason": reason,
                "model_version": model_version,
            }
        )
    return rows


def flagged_site_rows(vessel_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """``sites`` rows (kind ``vessel``) for the flagged vessels, one per sighting.

    Vessels move, so a sighting is not linked across acquisitions: each row has
    ``acquisitions = 1``, ``first_seen = last_seen = acquired``, the hull
    rectangle as geometry and the vessel's id as ``site_id``.

    Args:
        vessel_rows: From :func:`judge_vessels`.

    Returns:
        Rows with the columns of :func:`minewatch.tables.sites_schema`.
    """
    return [
        {
            "site_id": r["vessel_id"],
            "kind": "vessel",
            "commodity": None,
            "geometry": r["geometry"],
            "source_crs": r["source_crs"],
            "geometry_source": r["geometry_source"],
            "area_m2": r["area_m2"],
            "score": r["score"],
            "first_seen": r["acquired"],
            "last_seen": r["acquired"],
            "acquisitions": 1,
            "flagged": True,
            "reason": r["reason"],
            "licence_id": None,
            "model_version": r["model_version"],
            "scene_ids": [r["scene_id"]],
            "status": "confirmed",
        }
        for r in vessel_rows
        if r["flagged"]
    ]


def find_vessels(
    probs: np.ndarray,
    classes: Sequence[str],
    transform: Affine,
    crs: str,
    *,
    scene_id: str,
    acquired: str | datetime | None,
    model_version: str,
    water: np.ndarray | None = None,
    valid: np.ndarray | None = None,
    ports: PortRegistry | None = None,
    config: VesselConfig | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``vessels`` rows and flagged ``sites`` rows of one scene's class raster.

    Args:
        probs: Class probabilities ``[K, H, W]`` (e.g. from
            :func:`minewatch.sites.pixel_raster`).
        classes: Class names, index order; must hold ``config.vessel_class``.
        transform: Grid transform.
        crs: Scene CRS, projected in metres.
        scene_id: Scene identifier.
        acquired: Acquisition time, or ``None``.
        model_version: Model version.
        water: Boolean water mask ``[H, W]``; default the water classes of
            ``probs`` (:func:`water_from_classes`).
        valid: Boolean ``[H, W]``, False where no prediction exists.
        ports: Licensed ports, or ``None`` (nothing is judged).
        config: Thresholds; default :class:`VesselConfig`.

    Returns:
        ``(vessel_rows, flagged_site_rows)``.

    Raises:
        ConfigError: No vessel class, or no water mask and no water class.
        InputError: The CRS is not projected in metres.
    """
    config = config or VesselConfig()
    if config.vessel_class not in classes:
        raise ConfigError(
            f"the model has no {config.vessel_class!r} class ({list(classes)}); "
            "train with vessel truth (docs/vessels.md)"
        )
    if probs.ndim != 3 or probs.shape[0] != len(classes):
        raise ValueError(f"probs must be [K={len(classes)}, H, W], got {probs.shape}")
    if water is None:
        water = water_from_classes(probs, classes, config.water_classes)
    prob = probs[list(classes).index(config.vessel_class)]
    found = detect_vessels(prob, water, transform, crs, config, valid)
    rows = judge_vessels(
        found,
        crs,
        scene_id=scene_id,
        acquired=acquired,
        model_version=model_version,
        ports=ports,
        config=config,
    )
    return rows, flagged_site_rows(rows)


# --------------------------------------------------------------------------- scores


def _get(obj: Any, key: str) -> Any:
    return obj[key] if isinstance(obj, Mapping) else getattr(obj, key)


def _axial_error(a: float, b: float) -> float:
    """Difference of two axial directions (mod 180), in ``[0, 90]`` degrees."""
    d = abs(a - b) % 180.0
    return min(d, 180.0 - d)


@dataclass
class VesselScore:
    """Detections scored against known vessels (:func:`match_vessels`).

    Attributes:
        tolerance_m: Largest centre distance of a match.
        pairs: ``(truth id, detection index, centre distance m)``.
        missed: Truth ids with no detection.
        false: Indices of detections matching no truth vessel.
        ignored: Truth ids left out (mostly under cloud), and detections
            matched to them are neither right nor wrong.
        length_errors: Truth id -> ``(found - true) / true`` length.
        heading_errors: Truth id -> axial heading difference, degrees.
        flagged_truth: Ids of truth vessels berthed at unlicensed points.
        flagged_found: Truth ids whose matched detection is flagged.
        false_flags: Indices of flagged detections that match no flagged truth.
    """

    tolerance_m: float
    pairs: list[tuple[str, int, float]] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    false: list[int] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    length_errors: dict[str, float] = field(default_factory=dict)
    heading_errors: dict[str, float] = field(default_factory=dict)
    flagged_truth: set[str] = field(default_factory=set)
    flagged_found: set[str] = field(default_factory=set)
    false_flags: list[int] = field(default_factory=list)

    @property
    def recall(self) -> float:
        """Matched / truth vessels (1.0 when there are none)."""
        total = len(self.pairs) + len(self.missed)
        return len(self.pairs) / total if total else 1.0

    @property
    def precision(self) -> float:
        """Matched / detections (1.0 when there are none)."""
        total = len(self.pairs) + len(self.false)
        return len(self.pairs) / total if total else 1.0

    @property
    def flags_agree(self) -> bool:
        """The flagged detections are exactly the vessels at unlicensed points."""
        return self.flagged_found == self.flagged_truth and not self.false_flags


def match_vessels(
    detections: Sequence[Any],
    truth: Sequence[Any],
    tolerance_m: float = 50.0,
    max_occluded: float = 0.5,
) -> VesselScore:
    """Pair detections with known vessels, one to one, by centre distance.

    Greedy by increasing distance: the closest pair is matched first, each
    vessel at most once; pairs farther than ``tolerance_m`` are not matched.
    50 m is five 10 m pixels: a sixth of the shortest carrier and less than
    the spacing of two ships moored side by side.

    Args:
        detections: Rows of :func:`judge_vessels` or :class:`Detection` s
            (``x``, ``y``, ``length_m``, ``heading_deg``; ``flagged`` for rows).
        truth: :class:`minewatch.synth.vessels.VesselTruth` s or mappings with
            ``id``, ``x``, ``y``, ``length_m``, ``heading_deg``, ``berthed``,
            ``licensed`` and optionally ``occluded``, same CRS.
        tolerance_m: Largest centre distance of a match; default 50 m.
        max_occluded: Truth vessels at least this much under cloud are
            ignored; default 0.5.

    Returns:
        The :class:`VesselScore`.
    """
    score = VesselScore(tolerance_m)
    keep: list[Any] = []
    ignored: list[Any] = []
    for t in truth:
        occluded = _get(t, "occluded") if _has(t, "occluded") else 0.0
        (ignored if occluded is not None and occluded >= max_occluded else keep).append(t)
    score.ignored = [str(_get(t, "id")) for t in ignored]
    everyone = keep + ignored
    candidates = []
    for i, t in enumerate(everyone):
        for j, d in enumerate(detections):
            dist = math.hypot(_get(d, "x") - _get(t, "x"), _get(d, "y") - _get(t, "y"))
            if dist <= tolerance_m:
                candidates.append((dist, i, j))
    used_t: set[int] = set()
    used_d: set[int] = set()
    for dist, i, j in sorted(candidates):
        if i in used_t or j in used_d:
            continue
        used_t.add(i)
        used_d.add(j)
        if i >= len(keep):  # matched a vessel under cloud: neither right nor wrong
            continue
        t, d = keep[i], detections[j]
        tid = str(_get(t, "id"))
        score.pairs.append((tid, j, dist))
        score.length_errors[tid] = (_get(d, "length_m") - _get(t, "length_m")) / _get(t, "length_m")
        score.heading_errors[tid] = _axial_error(_get(d, "heading_deg"), _get(t, "heading_deg"))
    score.missed = [str(_get(t, "id")) for i, t in enumerate(keep) if i not in used_t]
    score.false = [j for j in range(len(detections)) if j not in used_d]
    score.flagged_truth = {
        str(_get(t, "id")) for t in keep if _get(t, "berthed") and _get(t, "licensed") is False
    }
    by_detection = {j: tid for tid, j, _ in score.pairs}
    for j, d in enumerate(detections):
        if not (_has(d, "flagged") and _get(d, "flagged")):
            continue
        matched = by_detection.get(j)
        if matched is not None and matched in score.flagged_truth:
            score.flagged_found.add(matched)
        elif matched is not None or j in score.false:
            score.false_flags.append(j)
    return score


def _has(obj: Any, key: str) -> bool:
    return key in obj if isinstance(obj, Mapping) else hasattr(obj, key)
