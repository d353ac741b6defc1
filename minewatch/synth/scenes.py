"""Synthetic mining scenes on a real Sentinel-2 background, with their truth.

Objects are planned once (:func:`plan_layout`) in pixel coordinates of the
crop, then rendered per acquisition: stockpiles grow or shrink, pits appear
and widen, sun, season, illumination gain and clouds change. Every object is
drawn with a soft edge (alpha ramp of :data:`EDGE_PX` pixels); its truth
polygon is the outline of the pixels where it is the top-most object with
alpha >= 0.5, so rasterising the polygon (pixel-centre rule) gives back exactly
``area_m2 / pixel_area`` pixels.

Radiometric model, in digital numbers (reflectance x 10000), per band ``b``::

    ground  = path_b + season_b * (background - path_b)          # vegetation phenology
    object  = path_b + 10000 * rho_b(material) * texture * shade  # alpha-blended over ground
    shadow  = path_b + (1 - 0.55 * shadow_alpha) * (ground - path_b)
    scene   = gain * ground  then  (1 - c) * scene + c * 10000 * rho_b(cloud)

``path_b`` is the scene's dark-object value (0.5th percentile of the band),
standing in for atmospheric path radiance, so that surface reflectances from
:mod:`minewatch.synth.materials` sit plausibly in a top-of-atmosphere scene.
``manifest.json`` records ``path_b``, ``gain`` and ``season_b`` so tests can
invert the model.

Two worlds share this code (:data:`WORLDS`). ``"flat"`` is the model above.
``"realistic"`` keeps the files and the truth schema but draws windrows and
kidney piles besides cones (:class:`~minewatch.synth.relief.Ridge`), benched
pits, surfaces cut from the scene's own bare ground
(:mod:`minewatch.synth.surfaces`: ``rho_b`` becomes a per-pixel, per-band
field), a curved road from every pit to a pile, and feathered clouds whose
softened shadows take 65 % of the light.

Pit legality in the truth is by construction: each pit is placed with a
status (inside one concession, clear of all concessions and protected areas,
or inside a protected area) in a disc that covers its widest outline of all
dates, and the truth's ``illegal``, ``reason`` and ``licence_id`` say that
status. The inference job's legality rule is neither imported nor called
here; ``tests/minewatch/test_synth_legality.py`` checks that it agrees.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.features
import rasterio.shutil
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from scipy import ndimage
from shapely import affinity
from shapely.geometry import Point, Polygon, box, mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from minewatch.synth.background import Background
from minewatch.synth.materials import QUANTIFICATION, signature
from minewatch.synth.relief import DSM_MARGIN_M, REPOSE_DEG, Cone, Pile, Ridge, Terrain, write_dsm
from minewatch.synth.sizes import SizeSpec
from minewatch.synth.surfaces import Swatches, bench_shade, find_swatches, slope_shade
from minewatch.synth.vessels import (
    Berth,
    VesselTruth,
    occlusion,
    paint_vessels,
    place_vessels,
    plan_berths,
    write_licensed_ports,
)

__all__ = [
    "CLASSES",
    "EDGE_PX",
    "WORLDS",
    "Acquisition",
    "Layout",
    "ScenePlan",
    "plan_layout",
    "plan_scenes",
    "render_acquisition",
    "write_scenes",
]

log = logging.getLogger(__name__)

#: Truth classes for scene objects (clouds go to a separate file). Vessels lie on
#: the background's own water (:mod:`minewatch.synth.vessels`): a crop without a
#: water body large enough for a ship has none.
CLASSES: tuple[str, ...] = ("stockpile", "mining_scar", "haul_road", "pit_water", "vessel")
#: Width of the soft edge (alpha 0 -> 1) in pixels.
EDGE_PX = 1.5
#: Supersampling of stockpile shadows (sub-pixels per pixel side).
SHADOW_SUPERSAMPLE = 4
#: Assumed cloud-top height for cloud shadows, metres.
CLOUD_HEIGHT_M = 1500.0
#: Sentinel-2 overpass, local solar time (10:30).
OVERPASS_HOURS = 10.5
_FIRST_DATE = dt.date(2024, 1, 15)
#: Realistic world: share of the ground's light a full cloud shadow takes away
#: (direct sun blocked, sky light left), its penumbra (pixels) and the width
#: of the feathered cloud edge (in standard deviations of the cloud field).
_CLOUD_SHADOW_REALISTIC = 0.65
_PENUMBRA_PX = 1.5
_FEATHER = 1.0
#: Ground-truth worlds: today's idealised one and the realistic one.
WORLDS: tuple[str, ...] = ("flat", "realistic")
#: Realistic pits: harmonic amplitudes x this (rougher, often non-convex outlines).
_PIT_ROUGHNESS = 2.0
#: Realistic stockpile shapes, in turn.
_PILE_KINDS = ("star", "windrow", "kidney")
#: ``(illegal, reason)`` of a pit by its placement status.
_LEGALITY: dict[str, tuple[bool, str | None]] = {
    "legal": (False, None),
    "outside": (True, "outside_concession"),
    "protected": (True, "protected_area"),
}
# Phenology amplitude per band: reflectance of vegetation rises in the red edge
# and NIR in summer and falls a little in the red (chlorophyll absorption).
_SEASON_AMPLITUDE = {"B04": -0.10, "B05": 0.05, "B06": 0.15, "B07": 0.20, "B08": 0.20}
_SEASON_AMPLITUDE |= {"B8A": 0.20, "B09": 0.10}


# --------------------------------------------------------------------------- planning


@dataclass
class Blob:
    """A star-shaped object (radius modulated by a few harmonics) or a ridge pile.

    ``kind`` ``"star"`` is the star shape of every flat-world object; the
    realistic world adds stockpiles of kind ``"windrow"`` and ``"kidney"``
    (:class:`~minewatch.synth.relief.Ridge`), whose ``radius`` is the half
    width and ``spine``, ``bend`` and ``angle`` give the crest line.
    """

    oid: str
    cls: str
    material: str
    commodity: str | None
    row: float
    col: float
    radius: float
    amps: np.ndarray
    phases: np.ndarray
    radius_by_date: list[float | None]
    parent: str | None = None
    #: Pits: where placement put it, ``legal`` (inside a concession), ``outside``
    #: (clear of every concession and protected area) or ``protected``.
    status: str | None = None
    #: Pits: the concession it was placed in (``legal`` only).
    licence_id: str | None = None
    #: ``"star"``, or for realistic stockpiles ``"windrow"`` / ``"kidney"``.
    kind: str = "star"
    #: Ridges: spine length in half widths.
    spine: float = 0.0
    #: Ridges: angle the spine turns through, radians.
    bend: float = 0.0
    #: Ridges: spine direction at its midpoint, ``atan2(drow, dcol)``.
    angle: float = 0.0
    #: Realistic pits: number of benches (0: a flat pit).
    benches: int = 0

    def max_extent(self) -> float:
        """Largest distance from the centre over all dates, in pixels."""
        radii = [r for r in self.radius_by_date if r is not None]
        if self.kind != "star":
            return max(radii) * (self.spine / 2 + 1.0) + EDGE_PX
        return max(radii) * (1.0 + float(np.abs(self.amps).sum())) + EDGE_PX

    def pile(self, t: int, pixel_size: float) -> Pile | None:
        """The pile's shape on date ``t`` (stockpiles only; ``None`` if absent).

        The crest height is ``tan(repose) x radius`` (the half width of a
        ridge), so the nominal side slope is the commodity's angle of repose.
        """
        radius = self.radius_by_date[t]
        if self.cls != "stockpile" or radius is None:
            return None
        slope = math.tan(math.radians(REPOSE_DEG.get(self.material, 37.0)))
        height = slope * radius * pixel_size
        if self.kind != "star":
            return Ridge(
                self.row, self.col, radius, self.spine * radius, self.angle, self.bend, height,
                self.kind,
            )  # fmt: skip
        return Cone(self.row, self.col, radius, self.amps, self.phases, height)


@dataclass
class Road:
    """A haul road: a polyline of pixel coordinates with a width."""

    oid: str
    points: list[tuple[float, float]]
    width: float
    first_date: int


@dataclass
class Layout:
    """Everything placed in one crop, in crop pixel coordinates.

    Attributes:
        width: Crop width in pixels.
        height: Crop height in pixels.
        transform: Crop transform (scene CRS).
        concessions: ``(licence_id, polygon)`` in pixel coordinates.
        protected: ``(name, polygon)`` in pixel coordinates.
        blobs: Stockpiles, scars and pit water in paint order.
        roads: Haul roads.
        dates: Acquisition dates.
        world: ``"flat"`` or ``"realistic"`` (:data:`WORLDS`).
    """

    width: int
    height: int
    transform: Affine
    concessions: list[tuple[str, Polygon]]
    protected: list[tuple[str, Polygon]]
    blobs: list[Blob]
    roads: list[Road]
    dates: list[dt.date]
    world: str = "flat"


class _LandMask:
    """Water/land from NDWI on a decimated read, for placing objects on land."""

    def __init__(self, land: np.ndarray, factor: int) -> None:
        self.land = land
        self.factor = factor

    def disc_on_land(self, row: float, col: float, radius: float) -> bool:
        pts = [(row, col)] + [
            (row + radius * math.sin(a), col + radius * math.cos(a))
            for a in np.linspace(0, 2 * math.pi, 8, endpoint=False)
        ]
        for r, c in pts:
            i, j = int(r // self.factor), int(c // self.factor)
            if not (0 <= i < self.land.shape[0] and 0 <= j < self.land.shape[1]):
                return False
            if not self.land[i, j]:
                return False
        return True

    def fraction(self, geom: BaseGeometry, rng: np.random.Generator, n: int = 64) -> float:
        minx, miny, maxx, maxy = geom.bounds
        hits = total = 0
        for _ in range(n * 4):
            x, y = rng.uniform(minx, maxx), rng.uniform(miny, maxy)
            if not geom.contains(Point(x, y)):
                continue
            total += 1
            hits += self.disc_on_land(y, x, 0.0)
            if total >= n:
                break
        return hits / total if total else 0.0


def _rotated_rect(cx: float, cy: float, w: float, h: float, angle: float) -> Polygon:
    rect = box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    return affinity.rotate(rect, angle, origin=(cx, cy))


def _place_regions(
    layout_rng: np.random.Generator, spec: SizeSpec, width: int, height: int, land: _LandMask
) -> tuple[list[tuple[str, Polygon]], list[tuple[str, Polygon]]]:
    concessions: list[tuple[str, Polygon]] = []
    side = 0.45 * min(width, height) / math.sqrt(spec.n_concessions)
    for k in range(spec.n_concessions):
        for attempt in range(600):
            min_land = 0.9 if attempt < 400 else 0.0
            w, h = side * layout_rng.uniform(0.9, 1.1), side * layout_rng.uniform(1.0, 1.2)
            half = 0.5 * math.hypot(w, h)
            cx = layout_rng.uniform(half + 4, max(half + 5, width - half - 4))
            cy = layout_rng.uniform(half + 4, max(half + 5, height - half - 4))
            poly = _rotated_rect(cx, cy, w, h, float(layout_rng.uniform(-20, 20)))
            if any(poly.distance(p) < 20 for _, p in concessions):
                continue
            if land.fraction(poly, layout_rng) < min_land:
                continue
            concessions.append((f"ML-2019-{k + 1:03d}", poly))
            break
    protected: list[tuple[str, Polygon]] = []
    radius = 0.12 * min(width, height) / math.sqrt(spec.n_protected)
    for k in range(spec.n_protected):
        for attempt in range(600):
            min_land = 0.8 if attempt < 400 else 0.0
            r = radius * layout_rng.uniform(0.9, 1.1)
            cx = layout_rng.uniform(1.4 * r + 4, width - 1.4 * r - 4)
            cy = layout_rng.uniform(r + 4, height - r - 4)
            poly = affinity.scale(Point(cx, cy).buffer(r, 16), 1.3, 1.0)
            if any(poly.distance(p) < 12 for _, p in concessions + protected):
                continue
            if land.fraction(poly, layout_rng) < min_land:
                continue
            protected.append((f"PA-{k + 1:02d}", poly))
            break
    return concessions, protected


def _growth(rng: np.random.Generator, n_dates: int, index: int) -> list[float]:
    """Area factors per date: alternate growth and shrinkage by 20-45 %."""
    factors = [1.0]
    for t in range(1, n_dates):
        m = float(rng.uniform(0.2, 0.45))
        grow = (index + t) % 2 == 1
        factors.append(factors[-1] * ((1.0 + m) if grow else 1.0 / (1.0 + m)))
    return factors


def plan_layout(
    spec: SizeSpec,
    width: int,
    height: int,
    transform: Affine,
    land_mask: np.ndarray,
    land_factor: int,
    rng: np.random.Generator,
    world: str = "flat",
) -> Layout:
    """Place concessions, protected areas, pits, stockpiles and roads.

    Placement is by rejection sampling; an object that finds no room after a
    few hundred tries is left out (logged), so the counts in ``spec`` are
    upper bounds.

    The realistic world places concessions, protected areas and pits by the
    same rules, with rougher pit outlines and 3-5 benches; its stockpiles are
    cones, windrows and kidneys in turn (every fifth beside an illegal pit
    rather than anywhere), and every pit gets a curved haul road to a pile
    (``spec.n_roads`` is not used).

    Args:
        spec: Size specification (counts, radius ranges, dates).
        width: Crop width in pixels.
        height: Crop height in pixels.
        transform: Crop transform.
        land_mask: Boolean land mask of the crop, decimated by ``land_factor``.
        land_factor: Decimation of ``land_mask``.
        rng: Random generator (the layout stream).
        world: ``"flat"`` or ``"realistic"``; default ``"flat"``.

    Returns:
        The :class:`Layout`.
    """
    realistic = world == "realistic"
    land = _LandMask(land_mask, land_factor)
    dates = [_FIRST_DATE + dt.timedelta(days=spec.date_step_days * t) for t in range(spec.n_dates)]
    concessions, protected = _place_regions(rng, spec, width, height, land)
    conc_union = unary_union([p for _, p in concessions]) if concessions else Polygon()
    prot_union = unary_union([p for _, p in protected]) if protected else Polygon()
    taken: list[tuple[float, float, float]] = []
    blobs: list[Blob] = []

    def free(row: float, col: float, r: float) -> bool:
        return all(math.hypot(row - a, col - b) > r + c + 3 for a, b, c in taken)

    def harmonics() -> tuple[np.ndarray, np.ndarray]:
        return rng.uniform(0.0, 0.08, 3), rng.uniform(0, 2 * math.pi, 3)

    # Pits: legal ones inside concessions, illegal ones outside or in protected areas.
    statuses = ["legal", "outside", "legal", "protected"]
    n_early = (spec.n_scars + 1) // 2
    scars: list[Blob] = []
    for k in range(spec.n_scars):
        status = statuses[k % len(statuses)]
        if status == "protected" and not protected:
            status = "outside"
        first = 0 if k < n_early or spec.n_dates == 1 else int(rng.integers(1, spec.n_dates))
        radius = float(rng.uniform(*spec.scar_radius))
        amps, phases = harmonics()
        if realistic:
            amps = amps * _PIT_ROUGHNESS
        radii: list[float | None] = [
            None if t < first else radius * (1.0 + 0.08 * (t - first)) for t in range(spec.n_dates)
        ]
        blob = Blob(
            f"pit-{k + 1:03d}",
            "mining_scar",
            "tailings" if rng.random() < 0.3 else "bare_soil",
            None,
            0.0,
            0.0,
            radius,
            amps,
            phases,
            radii,
            status=status,
            benches=int(rng.integers(3, 6)) if realistic else 0,
        )
        # ``extent`` covers the pit's largest radius over all dates, so the widening
        # pit stays where it was placed: the legality truth holds on every date.
        extent = blob.max_extent()
        for _ in range(800):
            col = float(rng.uniform(extent + 2, width - extent - 2))
            row = float(rng.uniform(extent + 2, height - extent - 2))
            disc = Point(col, row).buffer(extent + 3)
            holder = next((lid for lid, p in concessions if disc.within(p)), None)
            if status == "legal" and holder is None:
                continue
            if status == "outside" and (disc.intersects(conc_union) or disc.intersects(prot_union)):
                continue
            if status == "protected" and not any(disc.within(p) for _, p in protected):
                continue
            if not free(row, col, extent) or not land.disc_on_land(row, col, extent):
                continue
            blob.row, blob.col, blob.licence_id = row, col, holder
            taken.append((row, col, extent))
            scars.append(blob)
            blobs.append(blob)
            break
        else:
            log.info("no room for %s (%s); left out", blob.oid, status)
    # Turbid water in about half of the pits, inside the pit.
    for blob in list(scars):
        if rng.random() < 0.5:
            continue
        frac = float(rng.uniform(0.3, 0.45))
        off = blob.radius * 0.25
        ang = float(rng.uniform(0, 2 * math.pi))
        amps, phases = harmonics()
        water = Blob(
            blob.oid.replace("pit", "water"),
            "pit_water",
            "turbid_water",
            None,
            blob.row + off * math.sin(ang),
            blob.col + off * math.cos(ang),
            blob.radius * frac,
            amps,
            phases,
            [None if r is None else r * frac for r in blob.radius_by_date],
            parent=blob.oid,
        )
        blobs.append(water)
    # Stockpiles: most in concession stockyards, a few anywhere on land.
    commodities = ["coal", "iron_ore", "bauxite", "sand"]
    stockpiles: list[Blob] = []
    for k in range(spec.n_stockpiles):
        commodity = commodities[k % len(commodities)]
        radius = float(rng.uniform(*spec.stockpile_radius))
        amps, phases = harmonics()
        factors = _growth(rng, spec.n_dates, k)
        blob = Blob(
            f"sp-{k + 1:03d}",
            "stockpile",
            commodity,
            commodity,
            0.0,
            0.0,
            radius,
            amps,
            phases,
            [radius * math.sqrt(f) for f in factors],
        )
        if realistic:
            _shape_pile(blob, k, rng)
        extent = blob.max_extent()
        in_yard = concessions and k % 5 != 4
        # Realistic: the odd pile out lies beside an illegal pit, not just anywhere.
        rogue = [s for s in scars if s.status != "legal"] if realistic and not in_yard else []
        beside = rogue[(k // 5) % len(rogue)] if rogue else None
        for attempt in range(800):
            col = float(rng.uniform(extent + 2, width - extent - 2))
            row = float(rng.uniform(extent + 2, height - extent - 2))
            if beside is not None and attempt < 400:
                ang = float(rng.uniform(0, 2 * math.pi))
                gap = beside.max_extent() + extent + float(rng.uniform(3, 15))
                row, col = beside.row + gap * math.sin(ang), beside.col + gap * math.cos(ang)
                if not (extent + 2 < row < height - extent - 2):
                    continue
                if not (extent + 2 < col < width - extent - 2):
                    continue
            if in_yard and not conc_union.contains(Point(col, row).buffer(extent)):
                continue
            if not free(row, col, extent) or not land.disc_on_land(row, col, extent):
                continue
            blob.row, blob.col = row, col
            taken.append((row, col, extent))
            stockpiles.append(blob)
            blobs.append(blob)
            break
        else:
            log.info("no room for %s; left out", blob.oid)
    if realistic:
        pit_roads = _pit_roads(scars, stockpiles, concessions, width, height, rng)
        return Layout(
            width, height, transform, concessions, protected, blobs, pit_roads, dates, world
        )
    # Haul roads: from a pit to the nearest stockpile (legal) or to the crop edge.
    roads: list[Road] = []
    for k in range(min(spec.n_roads, len(scars))):
        pit = scars[k % len(scars)]
        start = (pit.row, pit.col)
        yard = [s for s in stockpiles if conc_union.contains(Point(s.col, s.row))]
        if yard and conc_union.contains(Point(pit.col, pit.row)):
            dest = min(yard, key=lambda s: math.hypot(s.row - pit.row, s.col - pit.col))
            end = (dest.row, dest.col)
        else:
            end = _nearest_edge(pit, width, height)
        mid = (
            (start[0] + end[0]) / 2 + float(rng.normal(0, 6)),
            (start[1] + end[1]) / 2 + float(rng.normal(0, 6)),
        )
        first = next(t for t, r in enumerate(pit.radius_by_date) if r is not None)
        roads.append(
            Road(f"road-{k + 1:03d}", [start, mid, end], float(rng.uniform(2.0, 3.0)), first)
        )
    return Layout(width, height, transform, concessions, protected, blobs, roads, dates)


def _nearest_edge(pit: Blob, width: int, height: int) -> tuple[float, float]:
    """The point of the crop's edge nearest a pit's centre (where its road leaves)."""
    edges = [(0.0, pit.col), (float(height), pit.col), (pit.row, 0.0), (pit.row, float(width))]
    return min(edges, key=lambda e: math.hypot(e[0] - pit.row, e[1] - pit.col))


def _shape_pile(blob: Blob, k: int, rng: np.random.Generator) -> None:
    """Make a realistic stockpile a cone, windrow or kidney (in turn, by ``k``).

    Windrows and kidneys are drawn narrower than the cone of the same radius,
    so that their footprints stay comparable in area.
    """
    kind = _PILE_KINDS[k % len(_PILE_KINDS)]
    if kind == "star":
        return
    if kind == "windrow":
        scale, spine = 0.7, float(rng.uniform(3.0, 4.5))
        bend = float(rng.uniform(-0.35, 0.35))
    else:
        scale = 0.65
        bend = float(rng.uniform(2.3, 2.8)) * (1.0 if rng.random() < 0.5 else -1.0)
        # Arc radius 1.6-2 half widths: a bean whose hollow stays open (it must
        # exceed 1, the inner edge reaching the arc's centre).
        spine = abs(bend) * float(rng.uniform(1.6, 2.0))
    blob.kind, blob.spine, blob.bend = kind, spine, bend
    blob.angle = float(rng.uniform(0, math.pi))
    blob.radius *= scale
    blob.radius_by_date = [None if r is None else r * scale for r in blob.radius_by_date]


def _curved(
    start: tuple[float, float], end: tuple[float, float], rng: np.random.Generator, n: int = 12
) -> list[tuple[float, float]]:
    """A gently curved polyline: a quadratic Bezier bowed sideways by ~15 % of its length."""
    (r0, c0), (r1, c1) = start, end
    length = math.hypot(r1 - r0, c1 - c0) or 1.0
    bow = float(rng.normal(0.0, 0.15)) * length
    ctrl = ((r0 + r1) / 2 + bow * (c1 - c0) / length, (c0 + c1) / 2 - bow * (r1 - r0) / length)
    out = []
    for u in np.linspace(0.0, 1.0, n + 1):
        a, b, c = (1 - u) ** 2, 2 * u * (1 - u), u**2
        out.append((a * r0 + b * ctrl[0] + c * r1, a * c0 + b * ctrl[1] + c * c1))
    return out


def _pit_roads(
    scars: list[Blob],
    stockpiles: list[Blob],
    concessions: list[tuple[str, Polygon]],
    width: int,
    height: int,
    rng: np.random.Generator,
) -> list[Road]:
    """Realistic haul roads: every pit to a pile, slightly curved.

    A legal pit's road goes to the nearest pile of its own concession, any
    other to the nearest pile; with no pile at all, to the nearest crop edge.
    """
    roads: list[Road] = []
    holders = dict(concessions)
    for k, pit in enumerate(scars):
        start = (pit.row, pit.col)
        own = holders.get(pit.licence_id or "")
        yard = [s for s in stockpiles if own is not None and own.contains(Point(s.col, s.row))]
        piles = yard or stockpiles
        if piles:
            dest = min(piles, key=lambda s: math.hypot(s.row - pit.row, s.col - pit.col))
            end = (dest.row, dest.col)
        else:
            end = _nearest_edge(pit, width, height)
        first = next(t for t, r in enumerate(pit.radius_by_date) if r is not None)
        points = _curved(start, end, rng)
        roads.append(Road(f"road-{k + 1:03d}", points, float(rng.uniform(2.0, 3.5)), first))
    return roads


# --------------------------------------------------------------------------- rendering


@dataclass
class _Sprite:
    """One object drawn on a bounding box of the crop."""

    oid: str
    cls: str
    material: str
    commodity: str | None
    row0: int
    col0: int
    alpha: np.ndarray
    texture: np.ndarray
    parent: str | None = None
    #: Realistic world: per-band reflectance ``(bands, h, w)`` that replaces the
    #: material's table spectrum (``NaN`` in bands left to the background).
    surface: np.ndarray | None = None


@dataclass(frozen=True)
class _Look:
    """What the realistic world paints with."""

    swatches: Swatches
    pixel_size: float


@dataclass
class Acquisition:
    """One rendered acquisition (before the background is read).

    Attributes:
        index: Position in the time series.
        date: Acquisition date.
        sun_azimuth: Degrees clockwise from north.
        sun_elevation: Degrees above the horizon.
        gain: Global illumination gain applied to the whole scene.
        season: Phenology factor per band (applied to the background only).
        sprites: Objects in paint order.
        shadows: ``(row0, col0, alpha)`` stockpile shadows.
        cloud: Cloud opacity (H, W) or ``None``.
        cloud_shadow: Cloud-shadow opacity (H, W) or ``None``.
        labels: Top-most object per pixel (0 = none), indexes ``sprites`` + 1.
        cones: Stockpile shapes (cones, and ridges in the realistic world) by
            object id.
        vessels: Ships on the water (painted over everything but clouds).
        transform: Crop transform (where ``vessels`` are painted); ``None``
            when there are none.
        cloud_shadow_strength: Share of the ground's light a full cloud
            shadow takes away.
    """

    index: int
    date: dt.date
    sun_azimuth: float
    sun_elevation: float
    gain: float
    season: dict[str, float]
    sprites: list[_Sprite] = field(default_factory=list)
    shadows: list[tuple[int, int, np.ndarray]] = field(default_factory=list)
    cloud: np.ndarray | None = None
    cloud_shadow: np.ndarray | None = None
    labels: np.ndarray | None = None
    cones: dict[str, Pile] = field(default_factory=dict)
    vessels: list[VesselTruth] = field(default_factory=list)
    transform: Affine | None = None
    cloud_shadow_strength: float = 0.5


def _season(date: dt.date, band_names: tuple[str, ...]) -> dict[str, float]:
    """Phenology factor per band on ``date`` (largest in mid-July)."""
    phase = math.cos(2 * math.pi * (date.timetuple().tm_yday - 196) / 365.0)
    return {b: 1.0 + _SEASON_AMPLITUDE.get(b, 0.0) * phase for b in band_names}


def _water_any_date(
    overview: np.ndarray, path: np.ndarray, bands: tuple[str, ...], dates: list[dt.date]
) -> np.ndarray:
    """Where NDWI >= 0 on some acquisition (after its phenology factors).

    Berths are planned on this mask: the land beside them is land on every
    date, so a ship alongside is alongside on every date (marginal ground whose
    NDWI crosses 0 with the season would otherwise move the shore by hundreds
    of metres between dates).
    """
    g, n = bands.index("B03"), bands.index("B08")
    wet = np.zeros(overview.shape[1:], bool)
    for date in dates:
        season = _season(date, bands)
        green = path[g] + season["B03"] * (overview[g] - path[g])
        nir = path[n] + season["B08"] * (overview[n] - path[n])
        wet |= (green - nir) / np.maximum(green + nir, 1.0) >= 0.0
    return wet


def sun_position(lat: float, lon: float, date: dt.date) -> tuple[float, float]:
    """Approximate sun azimuth and elevation at the Sentinel-2 overpass.

    Args:
        lat: Latitude in degrees.
        lon: Longitude in degrees (unused: the overpass is at local solar time).
        date: Acquisition date.

    Returns:
        ``(azimuth, elevation)`` in degrees; azimuth clockwise from north.
    """
    del lon
    doy = date.timetuple().tm_yday
    decl = math.radians(23.44) * math.sin(2 * math.pi * (284 + doy) / 365.0)
    hour = math.radians(15.0 * (OVERPASS_HOURS - 12.0))
    phi = math.radians(lat)
    sin_el = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(hour)
    elevation = math.degrees(math.asin(sin_el))
    azimuth = math.degrees(
        math.atan2(-math.sin(hour), math.tan(decl) * math.cos(phi) - math.sin(phi) * math.cos(hour))
    )
    return azimuth % 360.0, elevation


def _blob_sprite(
    blob: Blob,
    t: int,
    width: int,
    height: int,
    rng: np.random.Generator,
    sun: tuple[float, float],
    pile: Pile | None = None,
    look: _Look | None = None,
) -> _Sprite | None:
    """Alpha and texture of one object on date ``t``.

    ``pile`` is the stockpile's shape (a ridge's footprint comes from it);
    with ``look`` (the realistic world) the surface comes from real bare
    ground, piles are lit by their slopes and pits show their benches.
    """
    radius = blob.radius_by_date[t]
    if radius is None:
        return None
    ridge = pile if isinstance(pile, Ridge) else None
    if ridge is not None:
        reach = ridge.reach + EDGE_PX + 1
    else:
        reach = radius * (1.0 + float(np.abs(blob.amps).sum())) + EDGE_PX + 1
    r0, r1 = max(0, int(blob.row - reach)), min(height, math.ceil(blob.row + reach) + 1)
    c0, c1 = max(0, int(blob.col - reach)), min(width, math.ceil(blob.col + reach) + 1)
    rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64) + 0.5
    dy, dx = rr - blob.row, cc - blob.col
    if ridge is not None:
        # Signed distance to the footprint edge, as ``rad - dist`` is for a star.
        inside = ridge.half_width - ridge.spine_distance(rr, cc)
        dist, rad = ridge.half_width - inside, np.full(rr.shape, ridge.half_width)
    else:
        dist = np.hypot(dy, dx)
        theta = np.arctan2(dy, dx)
        k = np.arange(2, 2 + len(blob.amps))[:, None, None]
        modulation = 1.0 + (
            blob.amps[:, None, None] * np.cos(k * theta + blob.phases[:, None, None])
        ).sum(0)
        rad = radius * modulation
    alpha = np.clip((rad - dist) / EDGE_PX + 0.5, 0.0, 1.0)
    strength = 0.05 if blob.cls == "stockpile" else 0.10
    noise = ndimage.gaussian_filter(rng.normal(size=alpha.shape), 1.0)
    texture = 1.0 + strength * noise / max(float(noise.std()), 1e-6)
    surface = None
    if look is not None:
        # The swatch brings the texture; a little grain on top, then the relief.
        texture = 1.0 + 0.03 * noise / max(float(noise.std()), 1e-6)
        if pile is not None:
            heights = pile.height(rr, cc)
            texture = texture * slope_shade(heights, look.pixel_size, *sun)
        if blob.benches:
            texture = texture * bench_shade(dist, rad, dy, dx, blob.benches, sun[0])
        texture = np.clip(texture, 0.2, 1.8)
        surface = look.swatches.surface(blob.material, alpha.shape, rng)
    else:
        if blob.cls == "stockpile":
            # Slopes facing the sun are brighter: shade follows the radial direction.
            az = math.radians(sun[0])
            to_sun = (-math.cos(az), math.sin(az))  # (row, col) towards the sun
            with np.errstate(invalid="ignore", divide="ignore"):
                facing = np.where(dist > 0, (dy * to_sun[0] + dx * to_sun[1]) / dist, 0.0)
            texture = texture * np.clip(1.0 + 0.25 * (dist / rad) * facing, 0.7, 1.3)
        texture = np.clip(texture, 0.6, 1.4)
    return _Sprite(
        blob.oid,
        blob.cls,
        blob.material,
        blob.commodity,
        r0,
        c0,
        alpha.astype(np.float32),
        texture.astype(np.float32),
        blob.parent,
        surface,
    )


def _road_sprite(
    road: Road, width: int, height: int, rng: np.random.Generator, look: _Look | None = None
) -> _Sprite:
    pts = np.array(road.points)
    reach = road.width / 2 + EDGE_PX + 1
    r0 = max(0, int(pts[:, 0].min() - reach))
    r1 = min(height, math.ceil(pts[:, 0].max() + reach) + 1)
    c0 = max(0, int(pts[:, 1].min() - reach))
    c1 = min(width, math.ceil(pts[:, 1].max() + reach) + 1)
    rr, cc = np.mgrid[r0:r1, c0:c1].astype(np.float64) + 0.5
    dist = np.full(rr.shape, np.inf)
    for (ar, ac), (br, bc) in itertools.pairwise(pts):
        vr, vc = br - ar, bc - ac
        length2 = vr * vr + vc * vc or 1.0
        u = np.clip(((rr - ar) * vr + (cc - ac) * vc) / length2, 0.0, 1.0)
        dist = np.minimum(dist, np.hypot(rr - ar - u * vr, cc - ac - u * vc))
    alpha = np.clip((road.width / 2 - dist) / EDGE_PX + 0.5, 0.0, 1.0)
    noise = ndimage.gaussian_filter(rng.normal(size=alpha.shape), 1.0)
    texture = np.clip(1.0 + 0.05 * noise / max(float(noise.std()), 1e-6), 0.6, 1.4)
    surface = None if look is None else look.swatches.surface("haul_road", alpha.shape, rng)
    return _Sprite(
        road.oid, "haul_road", "haul_road", None, r0, c0, alpha.astype(np.float32),
        texture.astype(np.float32), surface=surface,
    )  # fmt: skip


def _cone_shadow(
    cone: Pile, width: int, height: int, sun: tuple[float, float], pixel_size: float,
    slope_to_sun: float,
) -> tuple[int, int, np.ndarray] | None:  # fmt: skip
    """Cast shadow of a pile: the fraction of each pixel's ground in shadow.

    A ground point is in shadow when some point of the pile towards the sun
    rises above the ray from it to the sun. The ground is the local terrain
    plane (``slope_to_sun``: its rise per metre towards the sun); the test runs
    on a grid of :data:`SHADOW_SUPERSAMPLE`² sub-pixels per pixel, marching
    towards the sun in sub-pixel steps up to the apex's shadow. A pile whose
    sides are nowhere steeper than the sun's elevation casts none.
    """
    azimuth, elevation = sun
    tan_eff = max(math.tan(math.radians(elevation)) - slope_to_sun, math.tan(math.radians(5.0)))
    length = cone.height_m / tan_eff / pixel_size  # apex to shadow tip, pixels
    az = math.radians(azimuth)
    away = (math.cos(az), -math.sin(az))  # (row, col) away from the sun
    reach = cone.reach + 1.0
    # Shadow tips of the crest (the apex of a cone, the spine of a ridge).
    tips = cone.crest() + length * np.array(away)
    r0 = max(0, math.floor(min(cone.row - reach, tips[:, 0].min() - 1)))
    r1 = min(height, math.ceil(max(cone.row + reach, tips[:, 0].max() + 1)))
    c0 = max(0, math.floor(min(cone.col - reach, tips[:, 1].min() - 1)))
    c1 = min(width, math.ceil(max(cone.col + reach, tips[:, 1].max() + 1)))
    if r0 >= r1 or c0 >= c1:
        return None
    f = SHADOW_SUPERSAMPLE
    rr = r0 + (np.arange((r1 - r0) * f) + 0.5) / f
    cc = c0 + (np.arange((c1 - c0) * f) + 0.5) / f
    h = cone.height(rr[:, None], cc[None, :])
    shadow = np.zeros(h.shape, dtype=bool)
    rise = pixel_size * tan_eff / f  # the sun ray's rise per sub-pixel step
    for i in range(1, math.ceil(length * f) + 1):
        # ndimage.shift: out[p] = in[p - shift], so this samples h one step nearer the sun
        towards = ndimage.shift(h, (i * away[0], i * away[1]), order=1, cval=0.0)
        shadow |= towards > i * rise
    shadow &= h <= 0.0
    frac = shadow.reshape(r1 - r0, f, c1 - c0, f).mean(axis=(1, 3))
    return r0, c0, frac.astype(np.float32)


def _clouds(
    rng: np.random.Generator, width: int, height: int, cover: float, feather: bool = False
) -> np.ndarray:
    """Cloud opacity: a smooth random field above its ``1 - cover`` quantile.

    With ``feather`` (realistic world) finer billows are added and the edge
    ramp is several times wider and eased, so clouds thin out over tens of
    metres instead of ending at a hard rim; opacity >= 0.5 still covers
    ``cover`` of the crop.
    """
    coarse = (max(4, height // 8), max(4, width // 8))
    field_ = ndimage.gaussian_filter(rng.normal(size=coarse), 2.5, mode="wrap")
    field_ = ndimage.zoom(field_, (height / coarse[0], width / coarse[1]), order=1)[:height, :width]
    if feather:
        fine_shape = (max(4, height // 3), max(4, width // 3))
        fine = ndimage.gaussian_filter(rng.normal(size=fine_shape), 1.5, mode="wrap")
        fine = ndimage.zoom(fine, (height / fine_shape[0], width / fine_shape[1]), order=1)
        fine = fine[:height, :width]
        field_ = field_ + 0.3 * float(field_.std()) / max(float(fine.std()), 1e-9) * fine
    threshold = float(np.quantile(field_, 1.0 - cover))
    soft = (_FEATHER if feather else 0.25) * float(field_.std())
    alpha = np.clip((field_ - threshold) / soft + 0.5, 0.0, 1.0)
    if feather:
        alpha = alpha * alpha * (3.0 - 2.0 * alpha)  # smoothstep: no kink at either end
    return alpha.astype(np.float32)


def render_acquisition(
    layout: Layout,
    t: int,
    latlon: tuple[float, float],
    pixel_size: float,
    band_names: tuple[str, ...],
    rng: np.random.Generator,
    sun: tuple[float, float] | None = None,
    terrain: Terrain | None = None,
    swatches: Swatches | None = None,
) -> Acquisition:
    """Draw every object of one date on the crop grid (no background yet).

    Args:
        layout: The planned layout.
        t: Acquisition index.
        latlon: Crop centre, degrees, for the sun position.
        pixel_size: Metres per pixel.
        band_names: Bands of the output scene.
        rng: Random generator for this date.
        sun: ``(azimuth, elevation)`` in degrees to use instead of the sun
            position at the overpass; default ``None``.
        terrain: Terrain under the stockpiles (their shadows fall on it);
            default flat.
        swatches: Real bare ground to texture objects with; needed, and only
            used, when ``layout.world`` is ``"realistic"``.

    Returns:
        The :class:`Acquisition` with sprites, shadows, clouds and labels.
    """
    date = layout.dates[t]
    azimuth, elevation = sun if sun is not None else sun_position(latlon[0], latlon[1], date)
    season = _season(date, band_names)
    gain = 1.0 if t == 0 else float(rng.uniform(0.9, 1.1))
    acq = Acquisition(t, date, azimuth, elevation, gain, season)
    width, height = layout.width, layout.height
    look = None
    if layout.world == "realistic":
        if swatches is None:
            raise ValueError("the realistic world needs swatches of real bare ground")
        look = _Look(swatches, pixel_size)
        acq.cloud_shadow_strength = _CLOUD_SHADOW_REALISTIC
    for road in layout.roads:
        if t >= road.first_date:
            acq.sprites.append(_road_sprite(road, width, height, rng, look))
    tan_el = math.tan(math.radians(max(elevation, 5.0)))
    az = math.radians(azimuth)
    for blob in layout.blobs:
        cone = blob.pile(t, pixel_size)
        sprite = _blob_sprite(blob, t, width, height, rng, (azimuth, elevation), cone, look)
        if sprite is None:
            continue
        acq.sprites.append(sprite)
        if cone is None:
            continue
        acq.cones[blob.oid] = cone
        slope_to_sun = 0.0
        if terrain is not None:
            gx, gy = terrain.gradient(*(layout.transform @ (cone.col, cone.row)))
            slope_to_sun = gx * math.sin(az) + gy * math.cos(az)
        shadow = _cone_shadow(cone, width, height, (azimuth, elevation), pixel_size, slope_to_sun)
        if shadow is not None and shadow[2].any():
            acq.shadows.append(shadow)
    labels = np.zeros((height, width), dtype=np.int32)
    for i, sp in enumerate(acq.sprites, start=1):
        h, w = sp.alpha.shape
        view = labels[sp.row0 : sp.row0 + h, sp.col0 : sp.col0 + w]
        view[sp.alpha >= 0.5] = i
    acq.labels = labels
    if t > 0:
        cover = float(rng.uniform(0.05, 0.2))
        acq.cloud = _clouds(rng, width, height, cover, feather=look is not None)
        length = CLOUD_HEIGHT_M / tan_el / pixel_size
        az = math.radians(azimuth)
        offset = (length * math.cos(az), -length * math.sin(az))
        if look is None:
            shifted = ndimage.shift(acq.cloud, offset, order=0, mode="constant")
        else:
            # Sub-pixel displacement and a penumbra: the sun is half a degree wide
            # and thin cloud edges pass some direct light.
            shifted = ndimage.shift(acq.cloud, offset, order=1, mode="constant")
            shifted = ndimage.gaussian_filter(shifted, _PENUMBRA_PX)
        acq.cloud_shadow = (shifted * (1.0 - acq.cloud)).astype(np.float32)
    return acq


def _clip_paste(
    target: np.ndarray, row_lo: int, row0: int, col0: int, patch: np.ndarray
) -> tuple[tuple[slice, slice], tuple[slice, slice]] | None:
    """Slices of ``target`` (a strip starting at crop row ``row_lo``) and ``patch``."""
    rows, cols = target.shape[-2:]
    pr0, pc0 = row0 - row_lo, col0
    ph, pw = patch.shape
    tr0, tr1 = max(0, pr0), min(rows, pr0 + ph)
    tc0, tc1 = max(0, pc0), min(cols, pc0 + pw)
    if tr0 >= tr1 or tc0 >= tc1:
        return None
    return (slice(tr0, tr1), slice(tc0, tc1)), (
        slice(tr0 - pr0, tr1 - pr0),
        slice(tc0 - pc0, tc1 - pc0),
    )


def compose_block(
    ground: np.ndarray,
    row_lo: int,
    acq: Acquisition,
    band_names: tuple[str, ...],
    path: np.ndarray,
) -> np.ndarray:
    """Composite objects, shadows and clouds over a block of background rows.

    Args:
        ground: Float32 ``(bands, rows, width)`` background digital numbers.
        row_lo: Crop row of the block's first row.
        acq: The rendered acquisition.
        band_names: Band names of ``ground``'s first axis.
        path: Dark-object (path radiance) value per band.

    Returns:
        Uint16 ``(bands, rows, width)`` scene block.
    """
    p = path[:, None, None].astype(np.float32)
    season = np.array([acq.season[b] for b in band_names], dtype=np.float32)[:, None, None]
    x = p + season * (ground - p)
    for sp in acq.sprites:
        sl = _clip_paste(x, row_lo, sp.row0, sp.col0, sp.alpha)
        if sl is None:
            continue
        (tr, tc), (pr, pc) = sl
        a = sp.alpha[pr, pc]
        tex = sp.texture[pr, pc]
        sig = signature(sp.material, band_names)
        for b, rho in enumerate(sig):
            if np.isnan(rho):
                continue
            refl = float(rho) if sp.surface is None else sp.surface[b, pr, pc]
            target = path[b] + QUANTIFICATION * refl * tex
            x[b, tr, tc] = x[b, tr, tc] * (1.0 - a) + a * target
    for row0, col0, sa in acq.shadows:
        sl = _clip_paste(x, row_lo, row0, col0, sa)
        if sl is None:
            continue
        (tr, tc), (pr, pc) = sl
        x[:, tr, tc] = p + (x[:, tr, tc] - p) * (1.0 - 0.55 * sa[pr, pc])
    if acq.vessels and acq.transform is not None:
        # Ships lie on the water, over any object; clouds and the gain come after.
        paint_vessels(
            {b: x[i] for i, b in enumerate(band_names)},
            acq.vessels,
            acq.transform @ Affine.translation(0, row_lo),
            {b: float(path[i]) for i, b in enumerate(band_names)},
        )
    rows = x.shape[1]
    if acq.cloud_shadow is not None:
        cs = acq.cloud_shadow[row_lo : row_lo + rows]
        x = p + (x - p) * (1.0 - acq.cloud_shadow_strength * cs)
    x *= np.float32(acq.gain)
    if acq.cloud is not None:
        c = acq.cloud[row_lo : row_lo + rows]
        cloud_dn = QUANTIFICATION * signature("cloud", band_names).astype(np.float32)
        x = x * (1.0 - c) + c * cloud_dn[:, None, None]
    return np.clip(np.rint(x), 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------- truth


def _crs_member(crs: rasterio.crs.CRS) -> dict[str, Any] | None:
    auth = ProjCRS.from_user_input(crs.to_wkt()).to_authority()
    if auth is None:
        return None
    return {"type": "name", "properties": {"name": f"urn:ogc:def:crs:{auth[0]}::{auth[1]}"}}


def _rounded(geom: BaseGeometry) -> dict[str, Any]:
    def fix(obj: Any) -> Any:
        if isinstance(obj, float):
            return round(obj, 3)
        if isinstance(obj, list | tuple):
            return [fix(o) for o in obj]
        return obj

    gj = mapping(geom)
    return {"type": gj["type"], "coordinates": fix(gj["coordinates"])}


def write_geojson(
    path: Path, features: list[tuple[BaseGeometry, dict[str, Any]]], crs: rasterio.crs.CRS
) -> None:
    """Write a FeatureCollection in the scene CRS (GDAL's named-CRS member).

    Args:
        path: Output file.
        features: ``(geometry, properties)`` pairs.
        crs: Scene CRS, recorded as ``urn:ogc:def:crs:EPSG::<code>``.
    """
    doc: dict[str, Any] = {"type": "FeatureCollection"}
    member = _crs_member(crs)
    if member is not None:
        doc["crs"] = member
    doc["features"] = [
        {"type": "Feature", "properties": props, "geometry": _rounded(geom)}
        for geom, props in features
    ]
    path.write_text(json.dumps(doc, indent=1) + "\n")


def _polygons(labels: np.ndarray, transform: Affine) -> dict[int, BaseGeometry]:
    parts: dict[int, list[BaseGeometry]] = {}
    for geom, value in rasterio.features.shapes(
        labels, mask=labels > 0, transform=transform, connectivity=4
    ):
        parts.setdefault(int(value), []).append(shape(geom))
    return {k: unary_union(v) if len(v) > 1 else v[0] for k, v in parts.items()}


# --------------------------------------------------------------------------- writing


@dataclass
class SceneOutput:
    """Paths written for one acquisition."""

    date: dt.date
    scene: Path
    truth: Path
    clouds: Path
    illegal: Path
    dsm: Path
    meta: dict[str, Any]


def _pixel_to_map(geom: BaseGeometry, transform: Affine) -> BaseGeometry:
    return affinity.affine_transform(
        geom, [transform.a, transform.b, transform.d, transform.e, transform.c, transform.f]
    )


@dataclass
class ScenePlan:
    """What is decided once for every acquisition of one ground-truth set.

    Attributes:
        layout: The objects, in crop pixels.
        transform: Crop transform.
        factor: Decimation of ``overview``.
        overview: Decimated read of the crop, ``(bands, rows, cols)``.
        path: Dark-object value per band.
        latlon: Crop centre, degrees.
        terrain: Terrain model of the DSMs.
        date_seeds: Seed of each acquisition's rendering stream.
        dsm_rngs: Noise generator of each acquisition's DSM.
        swatches: Real bare ground the realistic world paints with; ``None``
            in the flat world.
    """

    layout: Layout
    transform: Affine
    factor: int
    overview: np.ndarray
    path: np.ndarray
    latlon: tuple[float, float]
    terrain: Terrain
    date_seeds: list[np.random.SeedSequence]
    dsm_rngs: list[np.random.Generator]
    swatches: Swatches | None = None


def plan_scenes(
    background: Background, spec: SizeSpec, seed: int, world: str = "flat"
) -> ScenePlan:
    """Crop the background and plan the layout, terrain and rendering streams.

    Args:
        background: The background scene.
        spec: Size specification.
        seed: Random seed.
        world: ``"flat"`` or ``"realistic"``; default ``"flat"``.

    Returns:
        The :class:`ScenePlan`; :func:`render_acquisition` with
        ``np.random.default_rng(plan.date_seeds[t])`` draws date ``t`` as
        :func:`write_scenes` does.
    """
    # The crop keeps its size where the background allows and moves inwards
    # (a user scene smaller than the default offsets is used from its corner).
    width = min(spec.width or background.width, background.width)
    height = min(spec.height or background.height, background.height)
    col_off = min(spec.col_off, background.width - width)
    row_off = min(spec.row_off, background.height - height)
    transform = background.transform @ Affine.translation(col_off, row_off)
    bands = background.band_names

    # Decimated read: dark-object values and a land mask for placement.
    factor = max(1, math.ceil(max(width, height) / 512))
    dshape = (math.ceil(height / factor), math.ceil(width / factor))
    overview = background.read(transform @ Affine.scale(factor), dshape)
    path = np.percentile(overview.reshape(len(bands), -1), 0.5, axis=1).astype(np.float32)
    green, nir = overview[bands.index("B03")], overview[bands.index("B08")]
    ndwi = (green - nir) / np.maximum(green + nir, 1.0)
    land = ndimage.binary_erosion(ndwi < 0.0, iterations=1)

    seq = np.random.SeedSequence([seed, 1])
    layout_seed, *date_seeds = seq.spawn(1 + spec.n_dates)
    layout_rng = np.random.default_rng(layout_seed)
    layout = plan_layout(spec, width, height, transform, land, factor, layout_rng, world)

    cx, cy = transform @ (width / 2, height / 2)
    to_geo = Transformer.from_crs(
        ProjCRS.from_wkt(background.crs.to_wkt()), "EPSG:4326", always_xy=True
    )
    lon, lat = to_geo.transform(cx, cy)

    # Heights come from their own stream so that they leave the layout as it was.
    relief_rng, *dsm_rngs = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, 2]).spawn(1 + spec.n_dates)
    )
    terrain = Terrain.random(relief_rng, cx, cy)
    swatches = None
    if world == "realistic":
        swatches = find_swatches(background, transform, overview, factor, path)
    return ScenePlan(
        layout, transform, factor, overview, path, (lat, lon), terrain, date_seeds, dsm_rngs,
        swatches,
    )  # fmt: skip


def write_scenes(
    out_dir: Path,
    background: Background,
    spec: SizeSpec,
    seed: int,
    sun: tuple[float, float] | None = None,
    dsm_crs: str | None = None,
    world: str = "flat",
) -> tuple[list[SceneOutput], dict[str, Any]]:
    """Plan, render and write every acquisition of one size.

    Writes ``scenes/scene_<date>.tif``, ``truth/scene_<date>.geojson``,
    ``truth/clouds_<date>.geojson``, ``truth/illegal_<date>.geojson``,
    ``dsm/dsm_<date>.tif``, ``concessions.geojson``,
    ``protected_areas.geojson`` and ``licensed_ports.geojson`` under
    ``out_dir``.

    Args:
        out_dir: Output root.
        background: The background scene.
        spec: Size specification.
        seed: Random seed.
        sun: ``(azimuth, elevation)`` in degrees for every date instead of the
            sun at the overpass; default ``None``.
        dsm_crs: CRS of the DSM files (anything pyproj reads); default the
            scene CRS.
        world: ``"flat"`` or ``"realistic"`` (:func:`plan_layout`,
            :mod:`minewatch.synth.surfaces`); default ``"flat"``.

    Returns:
        Per-acquisition outputs and the scene part of the manifest.
    """
    plan = plan_scenes(background, spec, seed, world)
    layout, transform, terrain = plan.layout, plan.transform, plan.terrain
    width, height = layout.width, layout.height
    overview, path, factor = plan.overview, plan.path, plan.factor
    lat, lon = plan.latlon
    bands = background.band_names
    pixel_area = abs(transform.a * transform.e)
    dsm_out_crs = rasterio.crs.CRS.from_user_input(dsm_crs) if dsm_crs else background.crs

    # Vessels too: berths are planned once on the background's water (NDWI >= 0 on
    # some date, the decimated read), ships placed per date; their own stream again.
    vessel_rng, *vessel_seeds = (
        np.random.default_rng(s) for s in np.random.SeedSequence([seed, 3]).spawn(1 + spec.n_dates)
    )
    water = _water_any_date(overview, path, bands, layout.dates)
    water_tf = transform @ Affine.scale(factor)
    berths: list[Berth] = plan_berths(water, water_tf, background.crs, vessel_rng)

    (out_dir / "scenes").mkdir(parents=True, exist_ok=True)
    (out_dir / "truth").mkdir(parents=True, exist_ok=True)
    (out_dir / "dsm").mkdir(parents=True, exist_ok=True)
    write_licensed_ports(out_dir / "licensed_ports.geojson", berths)
    conc_map = [(lid, _pixel_to_map(p, transform)) for lid, p in layout.concessions]
    survey = unary_union([p for _, p in conc_map]).buffer(DSM_MARGIN_M)
    if survey.is_empty:
        survey = box(*(transform @ (0, height)), *(transform @ (width, 0)))
    prot_map = [(name, _pixel_to_map(p, transform)) for name, p in layout.protected]
    write_geojson(
        out_dir / "concessions.geojson",
        [
            (poly, {"licence_id": lid, "holder": f"Synthetic Mining Co. {i + 1}",
                    "area_m2": round(poly.area, 1)})
            for i, (lid, poly) in enumerate(conc_map)
        ],
        background.crs,
    )  # fmt: skip
    write_geojson(
        out_dir / "protected_areas.geojson",
        [(poly, {"name": name, "designation": "nature_reserve", "area_m2": round(poly.area, 1)})
         for name, poly in prot_map],
        background.crs,
    )  # fmt: skip

    outputs: list[SceneOutput] = []
    blobs_by_id = {b.oid: b for b in layout.blobs}
    previous_area: dict[str, float] = {}
    previous_volume: dict[str, float] = {}
    first_seen: dict[str, str] = {}
    px = background.pixel_size
    for t, (date_seed, dsm_rng) in enumerate(zip(plan.date_seeds, plan.dsm_rngs, strict=True)):
        date_rng = np.random.default_rng(date_seed)
        acq = render_acquisition(
            layout, t, (lat, lon), px, bands, date_rng, sun, terrain, plan.swatches
        )
        acq.transform = transform
        acq.vessels, _ = place_vessels(water, water_tf, background.crs, vessel_seeds[t], t, berths)
        if acq.cloud is not None:
            acq.vessels = occlusion(acq.vessels, acq.cloud, transform)
        stem = f"scene_{acq.date.isoformat()}"
        scene_path = out_dir / "scenes" / f"{stem}.tif"
        _write_scene(scene_path, background, transform, width, height, spec, acq, path)
        dsm_path = out_dir / "dsm" / f"dsm_{acq.date.isoformat()}.tif"
        write_dsm(
            dsm_path, acq.date, background.crs, transform, survey, list(acq.cones.values()),
            terrain, spec.dsm_res_m, dsm_rng, dsm_out_crs,
        )  # fmt: skip

        # Truth polygons.
        assert acq.labels is not None
        polys = _polygons(acq.labels, transform)
        cloud_mask = acq.cloud >= 0.5 if acq.cloud is not None else None
        features: list[tuple[BaseGeometry, dict[str, Any]]] = []
        illegal: list[tuple[BaseGeometry, dict[str, Any]]] = []
        for i, sp in enumerate(acq.sprites, start=1):
            geom = polys.get(i)
            if geom is None:
                continue
            npix = int((acq.labels == i).sum())
            area = npix * pixel_area
            occluded = (
                float((cloud_mask & (acq.labels == i)).sum()) / npix
                if cloud_mask is not None
                else 0.0
            )
            first_seen.setdefault(sp.oid, acq.date.isoformat())
            props: dict[str, Any] = {
                "id": sp.oid,
                "class": sp.cls,
                "commodity": sp.commodity,
                "material": sp.material,
                "area_m2": round(area, 1),
                "acquisition": acq.date.isoformat(),
                "first_seen": first_seen[sp.oid],
                "area_change_m2": (
                    round(area - previous_area[sp.oid], 1)
                    if sp.cls == "stockpile" and sp.oid in previous_area
                    else None
                ),
                "occluded": round(occluded, 4),
                "parent": sp.parent,
                "illegal": False,
                "reason": None,
                "licence_id": None,
            }
            previous_area[sp.oid] = area
            cone = acq.cones.get(sp.oid)
            if cone is not None:
                volume = cone.volume_m3(px)
                apex = Point(*(transform @ (cone.col, cone.row)))
                props.update(
                    shape=cone.form,
                    height_m=round(cone.height_m, 3),
                    side_slope_deg=REPOSE_DEG.get(sp.material, 37.0),
                    volume_m3=round(volume, 1),
                    volume_change_m3=(
                        round(volume - previous_volume[sp.oid], 1)
                        if sp.oid in previous_volume
                        else None
                    ),
                    apex_x=round(apex.x, 3),
                    apex_y=round(apex.y, 3),
                    dsm_covered=bool(survey.contains(apex.buffer((cone.reach + 3) * px))),
                )
                previous_volume[sp.oid] = volume
            if sp.cls == "mining_scar":
                # By construction, not by the inference job's rule: placement put
                # the pit (at its widest) inside a concession, clear of all, or in a
                # protected area.
                pit = blobs_by_id[sp.oid]
                bad, reason = _LEGALITY[str(pit.status)]
                props.update(illegal=bad, reason=reason, licence_id=pit.licence_id)
                if bad:
                    illegal.append((geom, props))
            else:
                props["licence_id"] = next(
                    (lid for lid, p in conc_map if p.contains(geom.representative_point())), None
                )
            features.append((geom, props))
        for v in acq.vessels:
            # The hull outline itself (not a pixel outline: hulls are anti-aliased).
            vessel_props = v.properties() | {
                "acquisition": acq.date.isoformat(),
                "area_m2": round(v.polygon.area, 1),
            }
            features.append((v.polygon, vessel_props))
        truth_path = out_dir / "truth" / f"{stem}.geojson"
        write_geojson(truth_path, features, background.crs)
        illegal_path = out_dir / "truth" / f"illegal_{acq.date.isoformat()}.geojson"
        write_geojson(illegal_path, illegal, background.crs)
        clouds: list[tuple[BaseGeometry, dict[str, Any]]] = []
        if cloud_mask is not None:
            cloud_labels = ndimage.label(cloud_mask)[0].astype(np.int32)
            for k, geom in sorted(_polygons(cloud_labels, transform).items()):
                clouds.append(
                    (geom, {"id": f"cloud-{k:03d}", "class": "cloud",
                            "area_m2": round(geom.area, 1), "acquisition": acq.date.isoformat()})
                )  # fmt: skip
        clouds_path = out_dir / "truth" / f"clouds_{acq.date.isoformat()}.geojson"
        write_geojson(clouds_path, clouds, background.crs)
        meta = {
            "date": acq.date.isoformat(),
            "scene": str(scene_path.relative_to(out_dir)),
            "truth": str(truth_path.relative_to(out_dir)),
            "clouds": str(clouds_path.relative_to(out_dir)),
            "illegal": str(illegal_path.relative_to(out_dir)),
            "dsm": str(dsm_path.relative_to(out_dir)),
            "sun_azimuth_deg": round(acq.sun_azimuth, 3),
            "sun_elevation_deg": round(acq.sun_elevation, 3),
            "gain": acq.gain,
            "season": {b: round(v, 6) for b, v in acq.season.items()},
            "cloud_fraction": round(float(cloud_mask.mean()), 4) if cloud_mask is not None else 0.0,
            "objects": len(features),
            "illegal_sites": len(illegal),
            "vessels": len(acq.vessels),
            "vessels_flagged": sum(v.flagged for v in acq.vessels),
        }
        outputs.append(
            SceneOutput(acq.date, scene_path, truth_path, clouds_path, illegal_path, dsm_path, meta)
        )
    manifest = {
        "crs": background.crs.to_string(),
        "transform": list(transform)[:6],
        "width": width,
        "height": height,
        "bands": list(bands),
        "quantification": QUANTIFICATION,
        "path_radiance": [round(float(v), 3) for v in path],
        "dsm_crs": dsm_out_crs.to_string(),
        "dsm_resolution_m": spec.dsm_res_m,
        "terrain": {
            "z0": round(terrain.z0, 3),
            "gx": round(terrain.gx, 6),
            "gy": round(terrain.gy, 6),
        },
        "background": os.path.basename(os.path.normpath(background.source)),
        "berths": [
            {"id": b.id, "licensed": b.licensed, "x": round(b.x, 3), "y": round(b.y, 3)}
            for b in berths
        ],
        "acquisitions": [o.meta for o in outputs],
    }
    if plan.swatches is not None:
        side = int(plan.swatches.patches.shape[-1])
        manifest["swatches"] = [
            {"row": r, "col": c, "side": side, "bare_fraction": f}
            for (r, c), f in zip(plan.swatches.origins, plan.swatches.bare_fraction, strict=True)
        ]
    return outputs, manifest


def _write_scene(
    path: Path,
    background: Background,
    transform: Affine,
    width: int,
    height: int,
    spec: SizeSpec,
    acq: Acquisition,
    path_radiance: np.ndarray,
) -> None:
    bands = background.band_names
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": len(bands),
        "dtype": "uint16",
        "crs": background.crs,
        "transform": transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
    }
    tmp = path.with_suffix(".tmp.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for i, name in enumerate(bands, start=1):
            dst.set_band_description(i, name)
        dst.update_tags(
            TIFFTAG_DATETIME=acq.date.strftime("%Y:%m:%d") + " 10:30:00",
            ACQUISITION=acq.date.isoformat(),
            SYNTHETIC="minewatch synth",
            SUN_AZIMUTH=f"{acq.sun_azimuth:.3f}",
            SUN_ELEVATION=f"{acq.sun_elevation:.3f}",
        )
        for row_lo in range(0, height, spec.block_rows):
            rows = min(spec.block_rows, height - row_lo)
            block_tf = transform @ Affine.translation(0, row_lo)
            ground = background.read(block_tf, (rows, width))
            block = compose_block(ground, row_lo, acq, bands, path_radiance)
            dst.write(block, window=rasterio.windows.Window(0, row_lo, width, rows))
    # Cloud-optimised layout (overviews, ordered IFDs) from the tiled file.
    try:
        rasterio.shutil.copy(
            tmp, path, driver="COG", compress="DEFLATE", predictor="2", blocksize=256,
            overview_resampling="average",
        )  # fmt: skip
        tmp.unlink()
    except rasterio.errors.RasterioError:
        log.warning("COG driver unavailable; writing a tiled GeoTIFF instead")
        os.replace(tmp, path)
