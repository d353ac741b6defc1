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
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass
from pathlib import Path

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

    def area_m2(self, pixel_size: float) -> float:
        """Exact footprint area (the continuous outline), m²."""
        theta = np.linspace(0.0, 2 * math.pi, _SAMPLES, endpoint=False)
        return float(0.5 * np.mean(self.rad(theta) ** 2) * 2 * math.pi) * pixel_size**2

    def volume_m3(self, pixel_size: float) -> float:
        """Exact volume: apex height x footprint area / 3, m³."""
        return self.height_m * self.area_m2(pixel_size) / 3.0


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
    cones: list[Cone],
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
