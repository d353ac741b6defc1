"""Heights for the ground truth: terrain, conical stockpiles and the DSM files.

Every stockpile is a *star cone*: its apex (height ``height_m``) stands over the
blob centre and the surface falls linearly along each ray to the footprint
edge ``rad(theta)``, the same star-shaped outline the scene paints. Its volume is
exactly ``height_m * footprint_area / 3`` for any star-shaped base, which is
what the truth records. The side slope along a ray is
``height_m / rad(theta)``; ``height_m = tan(repose) * radius`` puts the nominal
slope at the commodity's angle of repose (:data:`REPOSE_DEG`).

The terrain is a gentle tilted plane plus three long sine waves (metres above
the ellipsoid, made up), seeded separately from the scene layout so adding it
changed no layout. A survey DSM covers the concessions (a drone flight over the
licence areas) plus :data:`DSM_MARGIN_M`; everything else is nodata, so piles
outside every concession have no elevation data, as in the field.

The realistic world (``make_ground_truth(world="realistic")``) adds *ridges*
(:class:`Ridge`): piles whose crest is a curve, the spine, rather than a point.
The surface falls linearly from the spine to the footprint edge at
``half_width`` pixels, so every cross-section across the spine is the same
triangle. A straight spine is a windrow (a triangular prism with half-cone
ends), a spine bent into a circular arc a kidney-shaped pile. By Pappus's
theorem the swept triangle has volume ``height_m x half_width x length`` for
either spine (the triangle's centroid lies on the spine), and the two ends add
half a cone each, so the volume is exact in closed form too.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np
import rasterio
import rasterio.features
import shapely
from affine import Affine
from pyproj import CRS as ProjCRS
from pyproj import Transformer
from rasterio.crs import CRS
from rasterio.warp import calculate_default_transform
from shapely.geometry.base import BaseGeometry

__all__ = [
    "DSM_MARGIN_M",
    "DSM_NODATA",
    "DSM_NOISE_M",
    "REPOSE_DEG",
    "Cone",
    "Pile",
    "Ridge",
    "Terrain",
    "write_dsm",
]

#: Nominal side slope of conical piles per commodity, degrees (angle of repose;
#: handbook values for dry bulk material, rounded).
REPOSE_DEG: dict[str, float] = {"coal": 38.0, "iron_ore": 40.0, "bauxite": 36.0, "sand": 34.0}
#: DSM nodata value.
DSM_NODATA = -9999.0
#: Standard deviation of the DSM's per-pixel noise, metres (photogrammetry-like).
DSM_NOISE_M = 0.10
#: How far the survey reaches beyond the concessions, metres.
DSM_MARGIN_M = 60.0
_SAMPLES = 4096


class Pile(Protocol):
    """What the DSM, the shadows and the truth need of a stockpile's shape.

    Coordinates are crop pixels (continuous); heights are metres above the
    local ground.
    """

    @property
    def row(self) -> float:
        """Crest centre row (the apex of a cone)."""
        ...

    @property
    def col(self) -> float:
        """Crest centre column."""
        ...

    @property
    def height_m(self) -> float:
        """Crest height above the ground, metres."""
        ...

    @property
    def form(self) -> str:
        """Name of the shape, written as the truth's ``shape`` property."""
        ...

    @property
    def reach(self) -> float:
        """Largest distance from ``(row, col)`` to the footprint edge, pixels."""
        ...

    def height(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Pile height in metres at crop pixel coordinates (0 off the footprint)."""
        ...

    def crest(self) -> np.ndarray:
        """``(n, 2)`` rows and columns of points at the full height ``height_m``."""
        ...

    def area_m2(self, pixel_size: float) -> float:
        """Exact footprint area, m²."""
        ...

    def volume_m3(self, pixel_size: float) -> float:
        """Exact volume, m³."""
        ...


@dataclass(frozen=True)
class Cone:
    """A star-shaped conical stockpile in crop pixel coordinates.

    Attributes:
        row: Apex row (crop pixels, continuous).
        col: Apex column.
        radius: Nominal footprint radius, pixels.
        amps: Harmonic amplitudes of the outline (orders 2, 3, ...).
        phases: Harmonic phases.
        height_m: Apex height above the ground, metres.
    """

    row: float
    col: float
    radius: float
    amps: np.ndarray
    phases: np.ndarray
    height_m: float
    #: Truth ``shape`` of every cone.
    form: ClassVar[str] = "cone"

    def rad(self, theta: np.ndarray) -> np.ndarray:
        """Footprint radius in pixels along direction ``theta`` (atan2(drow, dcol))."""
        k = np.arange(2, 2 + len(self.amps)).reshape((-1,) + (1,) * np.ndim(theta))
        amps = self.amps.reshape((-1,) + (1,) * np.ndim(theta))
        phases = self.phases.reshape((-1,) + (1,) * np.ndim(theta))
        return self.radius * (1.0 + (amps * np.cos(k * theta + phases)).sum(0))

    @property
    def reach(self) -> float:
        """Largest footprint radius, pixels."""
        return self.radius * (1.0 + float(np.abs(self.amps).sum()))

    def height(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Pile height in metres at crop pixel coordinates (0 off the footprint)."""
        dy, dx = rows - self.row, cols - self.col
        rad = self.rad(np.arctan2(dy, dx))
        return self.height_m * np.clip(1.0 - np.hypot(dy, dx) / rad, 0.0, None)

    def crest(self) -> np.ndarray:
        """The apex, as a ``(1, 2)`` array of row and column."""
        return np.array([[self.row, self.col]])

    def area_m2(self, pixel_size: float) -> float:
        """Exact footprint area (the continuous outline), m²."""
        theta = np.linspace(0.0, 2 * math.pi, _SAMPLES, endpoint=False)
        return float(0.5 * np.mean(self.rad(theta) ** 2) * 2 * math.pi) * pixel_size**2

    def volume_m3(self, pixel_size: float) -> float:
        """Exact volume: apex height x footprint area / 3, m³."""
        return self.height_m * self.area_m2(pixel_size) / 3.0


@dataclass(frozen=True)
class Ridge:
    """A pile along a spine: a windrow (straight spine) or kidney (arc), in pixels.

    The spine is a circular arc of length ``length`` through ``(row, col)``
    (its midpoint), heading ``angle`` there and turning through ``bend``
    radians in all (0: a straight segment). The height falls linearly from
    ``height_m`` on the spine to 0 at distance ``half_width``, so the side
    slope across the spine is ``height_m / (half_width x pixel size)``.

    Example:
        >>> windrow = Ridge(50.0, 50.0, 3.0, 12.0, 0.0, 0.0, 23.0, "windrow")
        >>> round(windrow.volume_m3(10.0))  # 23 x (3 x 12 + pi x 9 / 3) x 100
        104477

    Attributes:
        row: Spine midpoint row (crop pixels, continuous).
        col: Spine midpoint column.
        half_width: Distance from the spine to the footprint edge, pixels.
        length: Spine length, pixels.
        angle: Spine direction at the midpoint, ``atan2(drow, dcol)``, radians.
        bend: Angle the spine turns through, radians; ``|bend| x half_width``
            must stay below ``length`` (the inner edge keeps clear of the arc's
            centre) and ``|bend|`` below pi.
        height_m: Crest height above the ground, metres.
        form: ``"windrow"`` or ``"kidney"`` (the truth's ``shape``).
    """

    row: float
    col: float
    half_width: float
    length: float
    angle: float
    bend: float
    height_m: float
    form: str = "windrow"

    def __post_init__(self) -> None:
        if abs(self.bend) * self.half_width >= self.length or abs(self.bend) >= math.pi:
            raise ValueError(
                f"a ridge needs |bend| x half_width < length and |bend| < pi, got bend "
                f"{self.bend}, half_width {self.half_width}, length {self.length}"
            )

    @property
    def reach(self) -> float:
        """Bound on the distance from the midpoint to the footprint edge, pixels."""
        return self.length / 2 + self.half_width

    @property
    def straight(self) -> bool:
        """Whether the spine is a segment (a bend under a microradian counts as none)."""
        return abs(self.bend) < 1e-6

    def crest(self, n: int = 17) -> np.ndarray:
        """``(n, 2)`` rows and columns along the spine, ends included."""
        s = np.linspace(-0.5, 0.5, n) * self.length
        if self.straight:
            return np.column_stack(
                [self.row + s * math.sin(self.angle), self.col + s * math.cos(self.angle)]
            )
        radius = self.length / self.bend  # signed: the spine turns towards +normal
        phi = self.angle + s / radius  # heading along the arc
        # centre = midpoint + radius x normal, normal = heading turned +90 degrees
        c_row = self.row + radius * math.cos(self.angle)
        c_col = self.col - radius * math.sin(self.angle)
        return np.column_stack([c_row - radius * np.cos(phi), c_col + radius * np.sin(phi)])

    def spine_distance(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Distance in pixels from crop pixel coordinates to the spine."""
        ends = self.crest(2)
        if self.straight:
            (ar, ac), (br, bc) = ends
            vr, vc = br - ar, bc - ac
            u = np.clip(((rows - ar) * vr + (cols - ac) * vc) / (vr * vr + vc * vc), 0.0, 1.0)
            return np.hypot(rows - ar - u * vr, cols - ac - u * vc)
        radius = self.length / self.bend
        c_row = self.row + radius * math.cos(self.angle)
        c_col = self.col - radius * math.sin(self.angle)
        dr, dc = rows - c_row, cols - c_col
        # angle of each point around the centre, relative to the midpoint's
        mid = math.atan2(self.row - c_row, self.col - c_col)
        rel = (np.arctan2(dr, dc) - mid + math.pi) % (2 * math.pi) - math.pi
        on_arc = np.abs(rel) <= abs(self.bend) / 2
        to_arc = np.abs(np.hypot(dr, dc) - abs(radius))
        to_ends = np.minimum(
            np.hypot(rows - ends[0, 0], cols - ends[0, 1]),
            np.hypot(rows - ends[1, 0], cols - ends[1, 1]),
        )
        return np.where(on_arc, to_arc, to_ends)

    def height(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Pile height in metres at crop pixel coordinates (0 off the footprint)."""
        d = self.spine_distance(rows, cols)
        return self.height_m * np.clip(1.0 - d / self.half_width, 0.0, None)

    def area_m2(self, pixel_size: float) -> float:
        """Exact footprint area: a band ``2 half_width`` wide plus a disc, m²."""
        w = self.half_width
        return (2 * w * self.length + math.pi * w * w) * pixel_size**2

    def volume_m3(self, pixel_size: float) -> float:
        """Exact volume: swept triangle (Pappus) plus one cone, m³."""
        w = self.half_width
        return self.height_m * (w * self.length + math.pi * w * w / 3) * pixel_size**2


@dataclass(frozen=True)
class Terrain:
    """Smooth made-up terrain: ``z0`` + a tilt + three sine waves, in metres.

    Attributes:
        x0: Reference easting (crop centre), CRS units.
        y0: Reference northing.
        z0: Elevation at the reference point, metres.
        gx: Slope towards east (m per m).
        gy: Slope towards north.
        waves: ``(amplitude m, kx, ky rad per m, phase)`` per wave.
    """

    x0: float
    y0: float
    z0: float
    gx: float
    gy: float
    waves: tuple[tuple[float, float, float, float], ...]

    @classmethod
    def random(cls, rng: np.random.Generator, x0: float, y0: float) -> Terrain:
        """Draw a terrain: tilt up to 1 %, waves of 1-2.5 m over 0.8-2 km."""
        slope, direction = rng.uniform(0.002, 0.01), rng.uniform(0, 2 * math.pi)
        waves = []
        for _ in range(3):
            amp, length, angle = (
                rng.uniform(1.0, 2.5),
                rng.uniform(800, 2000),
                rng.uniform(0, math.pi),
            )
            k = 2 * math.pi / length
            waves.append(
                (amp, k * math.cos(angle), k * math.sin(angle), rng.uniform(0, 2 * math.pi))
            )
        return cls(
            x0, y0, float(rng.uniform(20, 60)), slope * math.cos(direction),
            slope * math.sin(direction), tuple(waves),
        )  # fmt: skip

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Elevation in metres at map coordinates ``x``, ``y`` (scene CRS)."""
        dx, dy = x - self.x0, y - self.y0
        z = self.z0 + self.gx * dx + self.gy * dy
        for amp, kx, ky, phase in self.waves:
            z = z + amp * np.sin(kx * dx + ky * dy + phase)
        return z

    def gradient(self, x: float, y: float) -> tuple[float, float]:
        """Terrain slope ``(dz/dx, dz/dy)`` at one point."""
        dx, dy = x - self.x0, y - self.y0
        gx, gy = self.gx, self.gy
        for amp, kx, ky, phase in self.waves:
            c = amp * math.cos(kx * dx + ky * dy + phase)
            gx, gy = gx + c * kx, gy + c * ky
        return gx, gy


def write_dsm(
    path: Path,
    date: dt.date,
    scene_crs: CRS,
    scene_transform: Affine,
    coverage: BaseGeometry,
    cones: Sequence[Pile],
    terrain: Terrain,
    res_m: float,
    rng: np.random.Generator,
    dsm_crs: CRS | None = None,
) -> None:
    """Write one acquisition's DSM: terrain + piles + noise, nodata off ``coverage``.

    The grid is ``res_m`` pixels over ``coverage``'s bounds in the scene CRS, or,
    with ``dsm_crs``, GDAL's default grid for those bounds in that CRS (heights
    are evaluated at its pixel centres, not resampled). Format: single-band
    float32 GeoTIFF, metres, 256 px tiles, DEFLATE with the floating-point
    predictor, nodata :data:`DSM_NODATA`, heights rounded to 1 cm, tags
    ``ACQUISITION`` and ``TIFFTAG_DATETIME`` as on the scenes.

    Args:
        path: Output file.
        date: Acquisition date (tags).
        scene_crs: CRS of the scene and of ``coverage``.
        scene_transform: Transform of the scene crop (for pile pixel coordinates).
        coverage: Surveyed area in the scene CRS.
        cones: Stockpiles present on this date.
        terrain: Terrain model.
        res_m: Pixel size in the scene CRS, metres.
        rng: Noise generator.
        dsm_crs: CRS to write in; default the scene CRS.
    """
    minx, miny, maxx, maxy = coverage.bounds
    minx, miny = math.floor(minx / res_m) * res_m, math.floor(miny / res_m) * res_m
    width, height = math.ceil((maxx - minx) / res_m), math.ceil((maxy - miny) / res_m)
    transform = Affine(res_m, 0.0, minx, 0.0, -res_m, miny + height * res_m)
    crs = scene_crs
    if dsm_crs is not None and dsm_crs != scene_crs:
        left, bottom = transform @ (0, height)
        right, top = transform @ (width, 0)
        transform, width, height = calculate_default_transform(
            scene_crs, dsm_crs, width, height, left, bottom, right, top
        )
        crs = dsm_crs
    cols, rows = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    xs, ys = transform @ (cols, rows)  # type: ignore[operator]
    if crs != scene_crs:
        to_scene = Transformer.from_crs(
            ProjCRS.from_wkt(crs.to_wkt()), ProjCRS.from_wkt(scene_crs.to_wkt()), always_xy=True
        )
        xs, ys = to_scene.transform(xs, ys)
    z = terrain(np.asarray(xs, dtype=np.float64), np.asarray(ys, dtype=np.float64))
    pc, pr = (np.asarray(v) for v in ~scene_transform @ (xs, ys))
    row_lo, row_hi = pr.min(axis=1), pr.max(axis=1)
    for cone in cones:
        reach = cone.reach + 1.0
        # Rows of the DSM the pile can touch: a band, so masks stay small.
        band = np.nonzero((row_hi > cone.row - reach) & (row_lo < cone.row + reach))[0]
        if band.size == 0:
            continue
        rs = slice(int(band[0]), int(band[-1]) + 1)
        near = (np.abs(pr[rs] - cone.row) < reach) & (np.abs(pc[rs] - cone.col) < reach)
        z[rs][near] += cone.height(pr[rs][near], pc[rs][near])
    z = np.round(z + rng.normal(0.0, DSM_NOISE_M, z.shape), 2)
    survey = coverage
    if crs != scene_crs:
        to_dsm = Transformer.from_crs(
            ProjCRS.from_wkt(scene_crs.to_wkt()), ProjCRS.from_wkt(crs.to_wkt()), always_xy=True
        )
        survey = shapely.transform(
            shapely.segmentize(coverage, 4 * res_m),
            lambda xy: np.column_stack(to_dsm.transform(xy[:, 0], xy[:, 1])),
        )
    covered = rasterio.features.rasterize([survey], out_shape=z.shape, transform=transform)
    z[covered == 0] = DSM_NODATA
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "float32",
        "crs": crs,
        "transform": transform,
        "nodata": DSM_NODATA,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 3,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(z.astype(np.float32), 1)
        dst.set_band_description(1, "elevation")
        dst.units = ("metre",)
        dst.update_tags(
            TIFFTAG_DATETIME=date.strftime("%Y:%m:%d") + " 10:30:00",
            ACQUISITION=date.isoformat(),
            SYNTHETIC="minewatch synth",
        )
