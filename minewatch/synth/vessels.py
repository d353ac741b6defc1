"""Synthetic vessels on the water of a real scene: berths, hulls, wakes and their truth.

Issue 11: ore leaves by sea or river, sometimes from jetties, beaches or banks
that hold no export licence. This module places ships where a user would see
them in a Sentinel-2 scene and records exactly what it placed, so detection can
be scored against it (``docs/vessels.md``).

Placement works in map coordinates of the scene CRS (metres):

1. :func:`plan_berths` (once per crop) polygonises the water mask, takes the
   shoreline (water edge, not the crop edge) and picks berths: a shore point,
   the shoreline direction there (chord over the berth length, which smooths
   the pixel staircase), and the side the water is on. A berth is kept only if
   a rectangle of the largest vessel it takes lies at least
   :data:`MIN_WATER_FRACTION` on water with its shore-side edge within one
   mask pixel of land. Berths are at least ``spacing_m`` apart; the first
   ``n_licensed`` are licensed loading points (:func:`write_licensed_ports`),
   the others unlicensed shore points.
2. :func:`place_vessels` (once per acquisition) fills some berths with a
   vessel lying alongside (bow either way) and adds moving vessels in open
   water, away from the shore, each with a Kelvin V wake and a turbulent
   centre wake.
3. :func:`paint_vessels` draws hulls, bridges and wakes into band arrays with
   anti-aliased (supersampled) coverage; it works on any block of rows, so a
   scene written block by block gets each vessel whole.

Hull shapes are oriented rectangles with a bow taper; their minimum rotated
rectangle is exactly ``length_m x width_m``. Reflectances are rounded band
averages: painted steel decks and hatch covers are moderately bright and
spectrally flat (:data:`HULL_REFLECTANCE`), the white superstructure brighter
(:data:`BRIDGE_REFLECTANCE`), and whitewater foam bright in the visible and
dark beyond 900 nm where water absorbs (:data:`FOAM_REFLECTANCE`), so wakes keep
a positive NDWI while hulls have a negative one.

Example::

    berths = plan_berths(water, transform, crs, rng)
    write_licensed_ports(out_dir / "licensed_ports.geojson", berths)
    for t, date_rng in enumerate(date_rngs):
        vessels, _ = place_vessels(water, transform, crs, date_rng, t, berths)
        paint_vessels({b: block[i] for i, b in enumerate(bands)}, vessels, block_transform)
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from scipy import ndimage
from shapely.geometry import LineString, Point, Polygon, box, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from minewatch.errors import SceneError
from minewatch.geo import is_metric
from minewatch.synth.materials import BAND_NAMES, QUANTIFICATION

__all__ = [
    "BRIDGE_REFLECTANCE",
    "FOAM_REFLECTANCE",
    "HULL_REFLECTANCE",
    "KELVIN_HALF_ANGLE_DEG",
    "KINDS",
    "Berth",
    "VesselKind",
    "VesselSpec",
    "VesselTruth",
    "coverage",
    "hull_polygon",
    "licensed_ports_collection",
    "occlusion",
    "paint_vessels",
    "place_vessels",
    "plan_berths",
    "write_licensed_ports",
]

log = logging.getLogger(__name__)

_N = None
#: Reflectance of a loaded hull seen from above (deck, hatch covers), BAND_NAMES order.
HULL_REFLECTANCE: tuple[float | None, ...] = (
    0.140, 0.145, 0.150, 0.160, 0.170, 0.175, 0.180, 0.185, 0.185, 0.180, _N, 0.170, 0.140,
)  # fmt: skip
#: Reflectance of the white superstructure (bridge) near the stern.
BRIDGE_REFLECTANCE: tuple[float | None, ...] = (
    0.380, 0.400, 0.410, 0.410, 0.410, 0.410, 0.405, 0.400, 0.400, 0.380, _N, 0.330, 0.260,
)  # fmt: skip
#: Reflectance of whitewater foam (wakes): bright in the visible, water-dark in the SWIR.
FOAM_REFLECTANCE: tuple[float | None, ...] = (
    0.200, 0.205, 0.195, 0.170, 0.150, 0.125, 0.110, 0.100, 0.090, 0.060, _N, 0.030, 0.020,
)  # fmt: skip
#: Half-angle of a Kelvin wake (deep water, any speed), degrees.
KELVIN_HALF_ANGLE_DEG = 19.47
#: Least fraction of a berth rectangle that must lie on water.
MIN_WATER_FRACTION = 0.97


@dataclass(frozen=True)
class VesselKind:
    """Size and shape of one kind of vessel.

    Attributes:
        name: ``bulk_carrier`` or ``barge``.
        length_m: ``(min, max)`` overall length.
        width_m: ``(min, max)`` beam.
        taper: Fraction of the length over which the bow narrows.
        bow_width: Width of the bow tip as a fraction of the beam.
        bridge: Length of the superstructure at the stern as a fraction of
            the length (0: none).
    """

    name: str
    length_m: tuple[float, float]
    width_m: tuple[float, float]
    taper: float
    bow_width: float
    bridge: float


#: The vessel kinds :func:`place_vessels` draws from.
KINDS: dict[str, VesselKind] = {
    "bulk_carrier": VesselKind("bulk_carrier", (150.0, 300.0), (25.0, 45.0), 0.12, 0.3, 0.1),
    "barge": VesselKind("barge", (60.0, 100.0), (12.0, 20.0), 0.05, 0.7, 0.0),
}


@dataclass(frozen=True)
class VesselSpec:
    """How many berths and vessels to place.

    Attributes:
        n_licensed: Licensed loading points (ports/jetties); default 2.
        n_unlicensed: Unlicensed shore points used for loading; default 2.
        n_moving: Moving vessels per acquisition; default 2.
        occupancy: Chance that a berth holds a vessel on a date; default 0.7.
            One unlicensed berth (``acquisition mod n``) is always occupied, so
            every date has a vessel to flag.
        carrier_fraction: Share of berths and moving vessels that are bulk
            carriers (the rest barges); default 0.5.
        spacing_m: Least distance between two berths; default 1500 m, more
            than ``licence_radius_m`` plus a carrier length, so an unlicensed
            berth is never within a licensed port's radius.
        licence_radius_m: Radius written to each licensed port (how far from
            its point a berth still belongs to it); default 500 m.
        offshore_m: Least distance from a moving hull to land; default 200 m.
        min_water_m2: Water bodies smaller than this are ignored; default 0.2 km².
        min_land_m2: Land patches enclosed by water and smaller than this count
            as water (specks of NDWI < 0 in a lake or the sea are not a shore
            to berth at); default 20000 m² (2 ha), the detector's
            ``VesselConfig.max_island_m2``, so every berth is at a shore the
            detector also sees.
        tries: Random candidates per berth or vessel before giving up; default 200.
    """

    n_licensed: int = 2
    n_unlicensed: int = 2
    n_moving: int = 2
    occupancy: float = 0.7
    carrier_fraction: float = 0.5
    spacing_m: float = 1500.0
    licence_radius_m: float = 500.0
    offshore_m: float = 200.0
    min_water_m2: float = 200_000.0
    min_land_m2: float = 20_000.0
    tries: int = 200


@dataclass(frozen=True)
class Berth:
    """A shore point where a vessel can lie alongside.

    Attributes:
        id: ``port-NN`` (licensed) or ``shore-NN`` (unlicensed).
        licensed: Whether the point holds an export licence.
        x: Shore point, scene CRS.
        y: Shore point, scene CRS.
        lon: Shore point, degrees (EPSG:4326).
        lat: Shore point, degrees.
        axis_deg: Shoreline direction at the point, degrees from north,
            clockwise, 0-180.
        normal: Unit vector ``(dx, dy)`` from the shore into the water.
        kind: Vessel kind the berth takes.
        max_length_m: Longest vessel that fits.
        max_width_m: Widest vessel that fits.
        offset_m: Gap between the shore point and a hull's shore-side edge.
        name: Human-readable name (licensed ports).
        licence_id: Export licence (licensed ports), else ``None``.
        radius_m: How far from the point a berthed vessel still belongs to it.
    """

    id: str
    licensed: bool
    x: float
    y: float
    lon: float
    lat: float
    axis_deg: float
    normal: tuple[float, float]
    kind: str
    max_length_m: float
    max_width_m: float
    offset_m: float
    name: str
    licence_id: str | None
    radius_m: float


@dataclass(frozen=True)
class VesselTruth:
    """One placed vessel on one acquisition.

    Attributes:
        id: ``vessel-<acquisition>-<n>``.
        kind: A key of :data:`KINDS`.
        acquisition: Acquisition index.
        x: Hull centre, scene CRS.
        y: Hull centre, scene CRS.
        lon: Hull centre, degrees.
        lat: Hull centre, degrees.
        length_m: Overall length (long side of the minimum rotated rectangle).
        width_m: Beam.
        heading_deg: Bow direction, degrees from north, clockwise, 0-360.
        berthed: Lying alongside a berth (else moving).
        berth_id: The berth, or ``None`` for moving vessels.
        port_id: The licensed port it is berthed at, else ``None``.
        licensed: Whether the berth is licensed; ``None`` for moving vessels.
        speed_kn: Speed through the water (0 when berthed).
        brightness: Multiplier of the hull reflectance (paint, cargo, sun glint).
        polygon: Hull outline, scene CRS.
        bridge: Superstructure outline, or ``None``.
        wake: Wake outline (clipped to water, hull removed), or ``None``.
        occluded: Fraction of the hull under thick cloud (see :func:`occlusion`).
    """

    id: str
    kind: str
    acquisition: int
    x: float
    y: float
    lon: float
    lat: float
    length_m: float
    width_m: float
    heading_deg: float
    berthed: bool
    berth_id: str | None
    port_id: str | None
    licensed: bool | None
    speed_kn: float
    brightness: float
    polygon: Polygon
    bridge: Polygon | None = None
    wake: BaseGeometry | None = None
    occluded: float = 0.0

    @property
    def flagged(self) -> bool:
        """Berthed at an unlicensed shore point: what inference must flag."""
        return self.berthed and self.licensed is False

    def properties(self) -> dict[str, Any]:
        """GeoJSON properties (``class`` is ``vessel``), rounded for files.

        The acquisition is ``acquisition_index``, leaving ``acquisition`` to the
        writer (the truth files hold the ISO date there).
        """
        return {
            "id": self.id,
            "class": "vessel",
            "kind": self.kind,
            "acquisition_index": self.acquisition,
            "x": round(self.x, 3),
            "y": round(self.y, 3),
            "lon": round(self.lon, 7),
            "lat": round(self.lat, 7),
            "length_m": round(self.length_m, 2),
            "width_m": round(self.width_m, 2),
            "heading_deg": round(self.heading_deg, 2),
            "berthed": self.berthed,
            "berth_id": self.berth_id,
            "port_id": self.port_id,
            "licensed": self.licensed,
            "flagged": self.flagged,
            "speed_kn": round(self.speed_kn, 2),
            "occluded": round(self.occluded, 4),
        }


# --------------------------------------------------------------------------- geometry


def _unit(heading_deg: float) -> tuple[float, float]:
    """Map-coordinate unit vector of a heading (from north, clockwise)."""
    h = math.radians(heading_deg)
    return math.sin(h), math.cos(h)


def _local_to_map(
    cx: float, cy: float, heading_deg: float, points: Sequence[tuple[float, float]]
) -> list[tuple[float, float]]:
    """``(u, v)`` (u towards the bow, v to starboard) to map coordinates."""
    fx, fy = _unit(heading_deg)
    sx, sy = fy, -fx  # starboard: heading turned 90 degrees clockwise
    return [(cx + u * fx + v * sx, cy + u * fy + v * sy) for u, v in points]


def hull_polygon(
    cx: float, cy: float, length_m: float, width_m: float, heading_deg: float, kind: VesselKind
) -> Polygon:
    """Hull outline: a rectangle whose bow narrows over ``kind.taper`` of the length.

    Args:
        cx: Centre, map x.
        cy: Centre, map y.
        length_m: Overall length; the bow tip reaches ``+length_m / 2``.
        width_m: Beam.
        heading_deg: Bow direction, degrees from north, clockwise.
        kind: Shape parameters.

    Returns:
        The polygon; its minimum rotated rectangle is ``length_m x width_m``.
    """
    half_l, half_w = length_m / 2, width_m / 2
    shoulder = half_l - kind.taper * length_m
    tip = half_w * kind.bow_width
    local = [
        (-half_l, -half_w),
        (shoulder, -half_w),
        (half_l, -tip),
        (half_l, tip),
        (shoulder, half_w),
        (-half_l, half_w),
    ]
    return Polygon(_local_to_map(cx, cy, heading_deg, local))


def _bridge_polygon(
    cx: float, cy: float, length_m: float, width_m: float, heading_deg: float, kind: VesselKind
) -> Polygon | None:
    if kind.bridge <= 0:
        return None
    half_l, half_w = length_m / 2, width_m / 2
    aft, fore = -half_l + 0.02 * length_m, -half_l + (0.02 + kind.bridge) * length_m
    local = [(aft, -0.8 * half_w), (fore, -0.8 * half_w), (fore, 0.8 * half_w), (aft, 0.8 * half_w)]
    return Polygon(_local_to_map(cx, cy, heading_deg, local))


def _wake_polygon(
    cx: float, cy: float, length_m: float, width_m: float, heading_deg: float, wake_m: float
) -> BaseGeometry:
    """Kelvin V arms and a turbulent centre wake trailing from the stern."""
    stern = -length_m / 2
    alpha = math.radians(KELVIN_HALF_ANGLE_DEG)
    arm_w = max(0.4 * width_m, 8.0)
    parts = [
        LineString(
            _local_to_map(
                cx,
                cy,
                heading_deg,
                [(stern, 0.0), (stern - wake_m * math.cos(alpha), side * wake_m * math.sin(alpha))],
            )
        ).buffer(arm_w / 2, cap_style="flat")
        for side in (-1.0, 1.0)
    ]
    parts.append(
        LineString(
            _local_to_map(cx, cy, heading_deg, [(stern, 0.0), (stern - 0.6 * wake_m, 0.0)])
        ).buffer(0.4 * width_m, cap_style="flat")
    )
    return unary_union(parts)


def _rect(
    x: float, y: float, axis: tuple[float, float], normal: tuple[float, float], L: float, W: float
) -> Polygon:
    """Rectangle with one long side centred on ``(x, y)``, extending along ``normal``."""
    tx, ty = axis
    nx, ny = normal
    return Polygon(
        [
            (x - tx * L / 2, y - ty * L / 2),
            (x + tx * L / 2, y + ty * L / 2),
            (x + tx * L / 2 + nx * W, y + ty * L / 2 + ny * W),
            (x - tx * L / 2 + nx * W, y - ty * L / 2 + ny * W),
        ]
    )


# --------------------------------------------------------------------------- water


def _metric_crs(crs: Any) -> ProjCRS:
    text = crs.to_wkt() if hasattr(crs, "to_wkt") else crs
    proj = ProjCRS.from_user_input(text)
    if not is_metric(proj):
        raise SceneError(
            f"vessels are sized in metres: the scene CRS must be projected in metres "
            f"(Sentinel-2 tiles are UTM), got {proj.name}; reproject the background first"
        )
    return proj


class _Water:
    """Water polygon, land and shoreline of a mask, in map coordinates."""

    def __init__(self, water: np.ndarray, transform: Affine, crs: Any, spec: VesselSpec) -> None:
        if water.ndim != 2 or water.size == 0:
            raise SceneError(f"the water mask must be a non-empty 2-D array, got {water.shape}")
        self.pixel = float(math.hypot(transform.a, transform.d))
        mask = np.asarray(water, dtype=bool)
        # Drop isolated wet pixels and bodies too small to hold a ship.
        mask = ndimage.binary_opening(mask, iterations=1)
        labels, n = ndimage.label(mask)
        if n:
            sizes = np.bincount(labels.ravel())
            keep = sizes * abs(transform.a * transform.e) >= spec.min_water_m2
            keep[0] = False
            mask = keep[labels]
        # Fill land specks enclosed by water (not those touching the crop's edge).
        dry, n_dry = ndimage.label(~mask)
        if n_dry:
            sizes = np.bincount(dry.ravel())
            small = sizes * abs(transform.a * transform.e) < spec.min_land_m2
            small[0] = False
            edge = np.unique(np.concatenate([dry[0], dry[-1], dry[:, 0], dry[:, -1]]))
            small[edge] = False
            mask = mask | small[dry]
        self.mask = mask
        self.transform = transform
        geoms = [
            shapely.geometry.shape(g)
            for g, v in rasterio.features.shapes(
                mask.astype(np.uint8), mask=mask, transform=transform, connectivity=4
            )
            if v == 1
        ]
        self.area: BaseGeometry = unary_union(geoms) if geoms else Polygon()
        h, w = mask.shape
        corners = [transform @ (0, 0), transform @ (w, h)]
        self.frame = box(
            min(c[0] for c in corners),
            min(c[1] for c in corners),
            max(c[0] for c in corners),
            max(c[1] for c in corners),
        )
        self.land = self.frame.difference(self.area)
        edge = self.frame.exterior.buffer(0.5 * self.pixel)
        shore = shapely.line_merge(self.area.boundary.difference(edge)) if geoms else None
        self.lines: list[LineString] = []
        if shore is not None and not shore.is_empty:
            parts = getattr(shore, "geoms", [shore])
            self.lines = [p for p in parts if isinstance(p, LineString) and p.length > 0]
        shapely.prepare(self.area)
        to_geo = Transformer.from_crs(_metric_crs(crs), "EPSG:4326", always_xy=True)
        self.to_geo = to_geo

    def lonlat(self, x: float, y: float) -> tuple[float, float]:
        lon, lat = self.to_geo.transform(x, y)
        return float(lon), float(lat)

    def water_fraction(self, geom: BaseGeometry) -> float:
        near = shapely.clip_by_rect(self.area, *geom.bounds)
        return float(near.intersection(geom).area / geom.area) if geom.area else 0.0

    def land_distance(self, geom: BaseGeometry, reach: float) -> float:
        minx, miny, maxx, maxy = geom.bounds
        near = shapely.clip_by_rect(
            self.land, minx - reach, miny - reach, maxx + reach, maxy + reach
        )
        return float(geom.distance(near)) if not near.is_empty else math.inf


# --------------------------------------------------------------------------- planning


def _draw_kind(rng: np.random.Generator, spec: VesselSpec) -> VesselKind:
    return KINDS["bulk_carrier"] if rng.random() < spec.carrier_fraction else KINDS["barge"]


def _try_berth(
    w: _Water, rng: np.random.Generator, kind: VesselKind
) -> tuple[float, float, float, tuple[float, float], float, float, float] | None:
    """One random shore point with a berth for ``kind``; ``None`` if it does not fit."""
    length = float(rng.uniform(*kind.length_m))
    width = float(kind.width_m[1])
    lines = [ln for ln in w.lines if ln.length > length + 2 * w.pixel]
    if not lines:
        return None
    weights = np.array([ln.length for ln in lines])
    line = lines[int(rng.choice(len(lines), p=weights / weights.sum()))]
    s = float(rng.uniform(length / 2, line.length - length / 2))
    p, a, b = (
        line.interpolate(s),
        line.interpolate(s - length / 2),
        line.interpolate(s + length / 2),
    )
    tx, ty = b.x - a.x, b.y - a.y
    norm = math.hypot(tx, ty)
    if norm < 0.8 * length:  # the shore bends too much over the berth
        return None
    tx, ty = tx / norm, ty / norm
    normal = (-ty, tx)
    probe = Point(p.x + normal[0] * (width / 2 + w.pixel), p.y + normal[1] * (width / 2 + w.pixel))
    if not w.area.contains(probe):
        normal = (ty, -tx)
    for offset in np.arange(0.0, 2.01 * w.pixel, 0.25 * w.pixel):
        ox, oy = p.x + normal[0] * offset, p.y + normal[1] * offset
        rect = _rect(ox, oy, (tx, ty), normal, length, width)
        if not w.frame.contains(rect.buffer(w.pixel)):
            return None
        if w.water_fraction(rect) >= MIN_WATER_FRACTION:
            if w.land_distance(rect, 3 * w.pixel) > w.pixel:
                return None
            axis = math.degrees(math.atan2(tx, ty)) % 180.0
            return p.x, p.y, axis, normal, length, width, float(offset)
    return None


def plan_berths(
    water: np.ndarray,
    transform: Affine,
    crs: Any,
    rng: np.random.Generator,
    spec: VesselSpec | None = None,
) -> list[Berth]:
    """Pick licensed and unlicensed berths along the shoreline of a water mask.

    Args:
        water: Boolean ``[rows, cols]``, True on water (e.g. NDWI >= 0 on a
            decimated read of the background).
        transform: The mask's affine transform (any pixel size).
        crs: Scene CRS (rasterio or pyproj CRS, or a string); projected, metres.
        rng: Random generator (use the layout's, so berths stay put over dates).
        spec: Counts and distances; default :class:`VesselSpec`.

    Returns:
        Licensed berths first (``port-01``...), then unlicensed
        (``shore-01``...). Fewer than asked, with a log message, where the
        shoreline has no room; none where the mask has no water body of
        ``spec.min_water_m2``.

    Raises:
        SceneError: The CRS is not projected in metres, or the mask is not 2-D.
    """
    spec = spec or VesselSpec()
    w = _Water(water, transform, crs, spec)
    wanted = spec.n_licensed + spec.n_unlicensed
    found: list[tuple[float, float, float, tuple[float, float], float, float, float, str]] = []
    for _ in range(spec.tries * max(wanted, 1)):
        if len(found) >= wanted or not w.lines:
            break
        kind = _draw_kind(rng, spec)
        got = _try_berth(w, rng, kind)
        if got is None:
            continue
        if any(math.hypot(got[0] - f[0], got[1] - f[1]) < spec.spacing_m for f in found):
            continue
        found.append((*got, kind.name))
    if len(found) < wanted:
        log.info("room for %d of %d berths on this shoreline", len(found), wanted)
    n_licensed = min(spec.n_licensed, len(found))
    berths = []
    for i, (x, y, axis, normal, length, width, offset, kind_name) in enumerate(found):
        licensed = i < n_licensed
        number = i + 1 if licensed else i - n_licensed + 1
        lon, lat = w.lonlat(x, y)
        berths.append(
            Berth(
                id=f"port-{number:02d}" if licensed else f"shore-{number:02d}",
                licensed=licensed,
                x=x,
                y=y,
                lon=lon,
                lat=lat,
                axis_deg=axis,
                normal=normal,
                kind=kind_name,
                max_length_m=length,
                max_width_m=width,
                offset_m=offset,
                name=f"Synthetic Ore Jetty {number}" if licensed else f"Shore point {number}",
                licence_id=f"EXP-{number:04d}" if licensed else None,
                radius_m=spec.licence_radius_m,
            )
        )
    return berths


def _berthed(
    w: _Water, rng: np.random.Generator, berth: Berth, vid: str, acquisition: int
) -> VesselTruth:
    kind = KINDS[berth.kind]
    length = float(rng.uniform(kind.length_m[0], berth.max_length_m))
    width = float(rng.uniform(kind.width_m[0], berth.max_width_m))
    heading = (berth.axis_deg + (180.0 if rng.random() < 0.5 else 0.0)) % 360.0
    # A shorter hull than the berth's may sit where the shore bulges: ease it
    # off the shore until it is on water as the berth was.
    for extra in np.arange(0.0, 2.01 * w.pixel, 0.25 * w.pixel):
        off = berth.offset_m + float(extra) + width / 2
        cx, cy = berth.x + berth.normal[0] * off, berth.y + berth.normal[1] * off
        hull = hull_polygon(cx, cy, length, width, heading, kind)
        if w.water_fraction(hull) >= MIN_WATER_FRACTION:
            break
    lon, lat = w.lonlat(cx, cy)
    return VesselTruth(
        id=vid,
        kind=kind.name,
        acquisition=acquisition,
        x=cx,
        y=cy,
        lon=lon,
        lat=lat,
        length_m=length,
        width_m=width,
        heading_deg=heading,
        berthed=True,
        berth_id=berth.id,
        port_id=berth.id if berth.licensed else None,
        licensed=berth.licensed,
        speed_kn=0.0,
        brightness=float(rng.uniform(0.8, 1.3)),
        polygon=hull,
        bridge=_bridge_polygon(cx, cy, length, width, heading, kind),
    )


def _moving(
    w: _Water,
    rng: np.random.Generator,
    spec: VesselSpec,
    clearance: np.ndarray,
    taken: list[Polygon],
    vid: str,
    acquisition: int,
) -> VesselTruth | None:
    kind = _draw_kind(rng, spec)
    length = float(rng.uniform(*kind.length_m))
    width = float(rng.uniform(*kind.width_m))
    need = (length / 2 + spec.offshore_m) / w.pixel
    rows, cols = np.nonzero(clearance >= need)
    if rows.size == 0:
        return None
    for _ in range(spec.tries):
        k = int(rng.integers(rows.size))
        cx, cy = w.transform @ (cols[k] + float(rng.random()), rows[k] + float(rng.random()))
        heading = float(rng.uniform(0.0, 360.0))
        hull = hull_polygon(cx, cy, length, width, heading, kind)
        if w.water_fraction(hull) < 1.0 - 1e-9:
            continue
        if w.land_distance(hull, spec.offshore_m) < spec.offshore_m:
            continue
        if any(hull.distance(t) < spec.offshore_m for t in taken):
            continue
        speed = float(rng.uniform(6.0, 14.0))
        wake_m = length * float(rng.uniform(2.0, 4.0)) * speed / 10.0
        wake = _wake_polygon(cx, cy, length, width, heading, wake_m)
        wake = shapely.clip_by_rect(w.area, *wake.bounds).intersection(wake).difference(hull)
        lon, lat = w.lonlat(cx, cy)
        return VesselTruth(
            id=vid,
            kind=kind.name,
            acquisition=acquisition,
            x=cx,
            y=cy,
            lon=lon,
            lat=lat,
            length_m=length,
            width_m=width,
            heading_deg=heading,
            berthed=False,
            berth_id=None,
            port_id=None,
            licensed=None,
            speed_kn=speed,
            brightness=float(rng.uniform(0.8, 1.3)),
            polygon=hull,
            bridge=_bridge_polygon(cx, cy, length, width, heading, kind),
            wake=None if wake.is_empty else wake,
        )
    return None


def place_vessels(
    water: np.ndarray,
    transform: Affine,
    crs: Any,
    rng: np.random.Generator,
    acquisition: int,
    berths: Sequence[Berth] | None = None,
    spec: VesselSpec | None = None,
) -> tuple[list[VesselTruth], list[Berth]]:
    """Vessels of one acquisition: some berthed alongside the shore, some under way.

    Each berth holds a vessel with probability ``spec.occupancy``; the
    unlicensed berth ``acquisition mod n_unlicensed`` always does. Berthed
    hulls lie alongside, their shore-side edge ``berth.offset_m`` off the shore
    point, at most the berth's size; moving ones are at least
    ``spec.offshore_m`` from land and from every other hull, with a wake.

    Args:
        water: Boolean ``[rows, cols]``, True on water.
        transform: The mask's affine transform.
        crs: Scene CRS, projected in metres.
        rng: Random generator for this acquisition.
        acquisition: Acquisition index (in ids and the always-occupied berth).
        berths: Berths from :func:`plan_berths`; planned here from ``rng``
            when ``None`` (then they change from date to date: plan once for
            a time series).
        spec: Counts and distances; default :class:`VesselSpec`.

    Returns:
        ``(vessels, berths)``; vessel ids are ``vessel-<acquisition>-<n>``.

    Raises:
        SceneError: The CRS is not projected in metres, or the mask is not 2-D.
    """
    spec = spec or VesselSpec()
    if berths is None:
        berths = plan_berths(water, transform, crs, rng, spec)
    w = _Water(water, transform, crs, spec)
    unlicensed = [b for b in berths if not b.licensed]
    always = unlicensed[acquisition % len(unlicensed)].id if unlicensed else None
    vessels: list[VesselTruth] = []
    for berth in berths:
        occupied = rng.random() < spec.occupancy
        if berth.id == always or occupied:
            vid = f"vessel-{acquisition:02d}-{len(vessels) + 1:02d}"
            vessels.append(_berthed(w, rng, berth, vid, acquisition))
    if spec.n_moving and w.lines:
        clearance = ndimage.distance_transform_edt(w.mask)
        taken = [v.polygon for v in vessels]
        for _ in range(spec.n_moving):
            vid = f"vessel-{acquisition:02d}-{len(vessels) + 1:02d}"
            moving = _moving(w, rng, spec, clearance, taken, vid, acquisition)
            if moving is None:
                log.info("no open water left for a moving vessel on acquisition %d", acquisition)
                break
            vessels.append(moving)
            taken.append(moving.polygon)
    return vessels, list(berths)


# --------------------------------------------------------------------------- files


def licensed_ports_collection(berths: Sequence[Berth]) -> dict[str, Any]:
    """The licensed berths as a GeoJSON FeatureCollection (RFC 7946, EPSG:4326).

    Properties per feature: ``port_id``, ``name``, ``licence_id``,
    ``licence_type`` (``export``) and ``radius_m`` (how far from the point a
    berthed vessel still belongs to the port). ``minewatch infer
    --licensed-ports`` reads these fields (``docs/vessels.md``).
    """
    features = []
    for b in berths:
        if not b.licensed:
            continue
        features.append(
            {
                "type": "Feature",
                "properties": {
                    "port_id": b.id,
                    "name": b.name,
                    "licence_id": b.licence_id,
                    "licence_type": "export",
                    "radius_m": b.radius_m,
                },
                "geometry": mapping(Point(round(b.lon, 7), round(b.lat, 7))),
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_licensed_ports(path: str | os.PathLike[str], berths: Sequence[Berth]) -> Path:
    """Write ``licensed_ports.geojson``: one Point per licensed berth, EPSG:4326.

    The format is :func:`licensed_ports_collection`'s.

    Args:
        path: Output file.
        berths: Berths from :func:`plan_berths` (unlicensed ones are left out).

    Returns:
        The path written.
    """
    doc = licensed_ports_collection(berths)
    out = Path(path)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return out


# --------------------------------------------------------------------------- rendering


def coverage(
    geoms: Sequence[BaseGeometry], transform: Affine, shape: tuple[int, int], supersample: int = 4
) -> np.ndarray:
    """Fraction of each pixel covered by the union of ``geoms``.

    Args:
        geoms: Polygons in map coordinates.
        transform: Grid transform.
        shape: ``(rows, cols)``.
        supersample: Sub-pixels per pixel side; default 4.

    Returns:
        Float32 ``[rows, cols]`` in 0..1 (multiples of ``1 / supersample**2``).
    """
    rows, cols = shape
    items = [(g, 1) for g in geoms if g is not None and not g.is_empty]
    if not items or rows <= 0 or cols <= 0:
        return np.zeros((rows, cols), np.float32)
    fine = rasterio.features.rasterize(
        items,
        out_shape=(rows * supersample, cols * supersample),
        transform=transform @ Affine.scale(1.0 / supersample),
        dtype="uint8",
    )
    return fine.reshape(rows, supersample, cols, supersample).mean(axis=(1, 3)).astype(np.float32)


def _window(
    geom: BaseGeometry, transform: Affine, shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    minx, miny, maxx, maxy = geom.bounds
    inv = ~transform
    cs, rs = zip(
        *(inv @ xy for xy in ((minx, miny), (minx, maxy), (maxx, miny), (maxx, maxy))),
        strict=True,
    )
    r0, r1 = max(0, math.floor(min(rs)) - 1), min(shape[0], math.ceil(max(rs)) + 1)
    c0, c1 = max(0, math.floor(min(cs)) - 1), min(shape[1], math.ceil(max(cs)) + 1)
    if r0 >= r1 or c0 >= c1:
        return None
    return r0, r1, c0, c1


def _blend(
    bands: Mapping[str, np.ndarray],
    window: tuple[int, int, int, int],
    alpha: np.ndarray,
    reflectance: tuple[float | None, ...],
    scale: float,
    path: Mapping[str, float] | None,
) -> None:
    r0, r1, c0, c1 = window
    if not alpha.any():
        return
    for name, arr in bands.items():
        if name not in BAND_NAMES:
            raise KeyError(f"unknown Sentinel-2 band {name!r}; expected one of {BAND_NAMES}")
        rho = reflectance[BAND_NAMES.index(name)]
        if rho is None:  # B10 sees the atmosphere, not the ship
            continue
        target = (path or {}).get(name, 0.0) + QUANTIFICATION * rho * scale
        view = arr[r0:r1, c0:c1]
        view[...] = view * (1.0 - alpha) + alpha * target


def paint_vessels(
    bands: Mapping[str, np.ndarray],
    vessels: Sequence[VesselTruth],
    transform: Affine,
    path: Mapping[str, float] | None = None,
    supersample: int = 4,
) -> None:
    """Draw wakes, hulls and bridges into band arrays, in place.

    Each band is blended towards ``path_b + 10000 * rho_b`` with the object's
    anti-aliased coverage as alpha, the radiometric model of
    :mod:`minewatch.synth.scenes`. Wake foam fades with distance from the stern
    (e-folding one wake length) and covers at most 45 % of a pixel.

    Args:
        bands: Band name -> float ``[rows, cols]`` array of digital numbers
            (views into one block work); all on the grid of ``transform``.
        vessels: From :func:`place_vessels`.
        transform: Transform of the arrays (a block's own transform).
        path: Dark-object value per band added to painted reflectance;
            default 0.
        supersample: Sub-pixels per pixel side; default 4.

    Raises:
        KeyError: A band name is not a Sentinel-2 band.
        ValueError: The arrays differ in shape.
    """
    shapes = {a.shape for a in bands.values()}
    if len(shapes) > 1:
        raise ValueError(f"band arrays differ in shape: {sorted(shapes)}")
    if not shapes:
        return
    (shape,) = shapes
    grid = (int(shape[0]), int(shape[1]))
    for v in vessels:
        outline = v.polygon if v.wake is None else unary_union([v.polygon, v.wake])
        win = _window(outline, transform, grid)
        if win is None:
            continue
        r0, r1, c0, c1 = win
        sub = transform @ Affine.translation(c0, r0)
        size = (r1 - r0, c1 - c0)
        if v.wake is not None:
            wake = coverage([v.wake], sub, size, supersample)
            rr, cc = np.mgrid[r0:r1, c0:c1]
            xs, ys = transform @ (cc + 0.5, rr + 0.5)
            sx, sy = _unit(v.heading_deg)
            stern = (v.x - sx * v.length_m / 2, v.y - sy * v.length_m / 2)
            dist = np.hypot(xs - stern[0], ys - stern[1])
            extent = max(float(v.wake.hausdorff_distance(Point(stern))), v.length_m)
            fade = np.exp(-dist / extent).astype(np.float32)
            _blend(bands, win, 0.45 * wake * fade, FOAM_REFLECTANCE, 1.0, path)
        hull = coverage([v.polygon], sub, size, supersample)
        _blend(bands, win, hull, HULL_REFLECTANCE, v.brightness, path)
        if v.bridge is not None:
            _blend(bands, win, coverage([v.bridge], sub, size, supersample), BRIDGE_REFLECTANCE,
                   1.0, path)  # fmt: skip


def occlusion(
    vessels: Sequence[VesselTruth], cloud: np.ndarray, transform: Affine
) -> list[VesselTruth]:
    """Set each vessel's ``occluded``: the fraction of its hull pixels under thick cloud.

    Args:
        vessels: Placed vessels.
        cloud: Cloud opacity ``[rows, cols]`` (0..1) on the grid of ``transform``;
            a pixel is under thick cloud at >= 0.5.
        transform: Grid transform.

    Returns:
        Copies of ``vessels`` with ``occluded`` set.
    """
    out = []
    grid = (int(cloud.shape[0]), int(cloud.shape[1]))
    for v in vessels:
        win = _window(v.polygon, transform, grid)
        frac = 0.0
        if win is not None:
            r0, r1, c0, c1 = win
            hull = coverage([v.polygon], transform @ Affine.translation(c0, r0), (r1 - r0, c1 - c0))
            pixels = hull >= 0.5
            if pixels.any():
                frac = float((cloud[r0:r1, c0:c1][pixels] >= 0.5).mean())
        out.append(replace(v, occluded=frac))
    return out
