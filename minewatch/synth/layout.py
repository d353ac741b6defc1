"""Where the objects of a ground-truth set go: concessions, protected areas, pits, piles, roads.

:func:`plan_layout` places everything once, in pixel coordinates of the crop,
by rejection sampling on the layout's random stream; rendering
(:mod:`minewatch.synth.render`) then draws it per date.

Pit legality is by construction: each pit is placed with a status (inside one
concession, clear of all concessions and protected areas, or inside a protected
area) in a disc that covers its widest outline of all dates, and
:data:`LEGALITY` turns that status into the truth's ``illegal`` and ``reason``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from shapely import affinity
from shapely.geometry import Point, Polygon, box
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from minewatch.synth.relief import REPOSE_DEG, Cone, Pile, Ridge
from minewatch.synth.sizes import SizeSpec

__all__ = [
    "CLASSES",
    "EDGE_PX",
    "LEGALITY",
    "WORLDS",
    "Blob",
    "Layout",
    "Road",
    "plan_layout",
]

log = logging.getLogger(__name__)

#: Truth classes for scene objects (clouds go to a separate file). Vessels lie on
#: the background's own water (:mod:`minewatch.synth.vessels`): a crop without a
#: water body large enough for a ship has none.
CLASSES: tuple[str, ...] = ("stockpile", "mining_scar", "haul_road", "pit_water", "vessel")
#: Width of the soft edge (alpha 0 -> 1) in pixels.
EDGE_PX = 1.5
#: Date of the first acquisition; the others follow every ``spec.date_step_days``.
_FIRST_DATE = dt.date(2024, 1, 15)
#: Ground-truth worlds: today's idealised one and the realistic one.
WORLDS: tuple[str, ...] = ("flat", "realistic")
#: Realistic pits: harmonic amplitudes x this (rougher, often non-convex outlines).
_PIT_ROUGHNESS = 2.0
#: Realistic stockpile shapes, in turn.
_PILE_KINDS = ("star", "windrow", "kidney")
#: ``(illegal, reason)`` of a pit by its placement status.
LEGALITY: dict[str, tuple[bool, str | None]] = {
    "legal": (False, None),
    "outside": (True, "outside_concession"),
    "protected": (True, "protected_area"),
}


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
