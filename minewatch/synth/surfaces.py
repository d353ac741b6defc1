"""Surfaces of the realistic world: real bare ground, benches and sunlit slopes.

The flat world paints each object with one table spectrum
(:mod:`minewatch.synth.materials`) times a scalar noise field. The realistic
world (``make_ground_truth(world="realistic")``) takes its surfaces from the
background scene itself:

1. :func:`find_swatches` looks for bare soil and rock on the decimated read of
   the crop: **high SWIR and low NDVI** (reflectance in B11 above
   :data:`BARE_SWIR`, NDVI below :data:`BARE_NDVI`, on path-corrected digital
   numbers), and keeps up to :data:`N_SWATCHES` squares of :data:`SWATCH_PX`
   pixels that are at least :data:`MIN_BARE` bare, read at full resolution.
   Their few pixels that are not bare (a hedge, a track) take the value of the
   nearest bare pixel. On the default scene the swatches are ploughed fields.
2. :meth:`Swatches.surface` cuts a patch for one object out of a swatch (random
   swatch, quarter-turn, flip and offset; mirrored tiling where the object is
   larger) and turns it into per-band reflectance: the patch's mean spectrum
   is blended with the material's table spectrum (:data:`SURFACE_MIX`) and the
   patch's own pixel-to-pixel variation, band by band, is kept. Pits of bare
   soil take the real soil's spectrum unchanged; coal or iron ore keep their
   table spectrum and borrow only the texture.
3. :func:`bench_shade` draws the benches of an open pit as concentric steps
   (flat benches darkening with depth, walls lit or shaded by the sun);
   :func:`slope_shade` lights a pile's slopes from its height field
   (Lambert, with a diffuse share so faces turned from the sun stay visible).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
from affine import Affine
from scipy import ndimage

from minewatch.synth.background import Background
from minewatch.synth.materials import QUANTIFICATION, signature

__all__ = [
    "BARE_NDVI",
    "BARE_SWIR",
    "MIN_BARE",
    "N_SWATCHES",
    "SURFACE_MIX",
    "SWATCH_PX",
    "Swatches",
    "bare_ground",
    "bench_shade",
    "find_swatches",
    "slope_shade",
]

#: Least B11 reflectance of bare ground (vegetation and water are darker in the SWIR).
BARE_SWIR = 0.20
#: Largest NDVI of bare ground.
BARE_NDVI = 0.35
#: Side of a swatch, full-resolution pixels (larger objects tile it, mirrored).
SWATCH_PX = 48
#: Least share of bare pixels in a swatch (the barest square is kept regardless).
MIN_BARE = 0.5
#: Swatches kept per crop.
N_SWATCHES = 8
#: Per material: ``(weight of the table spectrum, texture contrast)``. Weight 0
#: keeps the real ground's spectrum, 1 the table's; contrast scales the
#: swatch's pixel-to-pixel variation. Materials not listed stay flat (water).
SURFACE_MIX: dict[str, tuple[float, float]] = {
    "bare_soil": (0.0, 1.0),
    "tailings": (0.5, 1.0),
    "haul_road": (0.3, 0.6),
    "coal": (1.0, 0.8),
    "iron_ore": (1.0, 0.8),
    "bauxite": (1.0, 0.8),
    "sand": (1.0, 0.8),
}
log = logging.getLogger(__name__)

#: Share of a pixel's light that comes from the sky rather than the sun (slopes).
_DIFFUSE = 0.25


def bare_ground(reflectance: np.ndarray, band_names: tuple[str, ...]) -> np.ndarray:
    """Where the ground is bare soil or rock: high SWIR and low NDVI.

    Args:
        reflectance: ``(bands, rows, cols)`` reflectance (path-corrected).
        band_names: Band names of the first axis; B04 and B08 are needed,
            B11 (else B12) is used where present.

    Returns:
        Boolean ``(rows, cols)`` mask.
    """
    red, nir = reflectance[band_names.index("B04")], reflectance[band_names.index("B08")]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-4)
    bare = ndvi < BARE_NDVI
    swir = next((b for b in ("B11", "B12") if b in band_names), None)
    if swir is not None:
        bare &= reflectance[band_names.index(swir)] > BARE_SWIR
    else:  # no SWIR: bright in the red instead (soil, not shadowed roofs or water)
        bare &= red > 0.08
    return bare


@dataclass(frozen=True)
class Swatches:
    """Squares of real bare ground, as reflectance, to texture objects with.

    Attributes:
        patches: Float32 ``(n, bands, side, side)`` reflectance.
        origins: Crop ``(row, col)`` of each patch's top-left pixel.
        bare_fraction: Share of bare pixels in each patch (decimated read).
        band_names: Band names of the second axis.
    """

    patches: np.ndarray
    origins: tuple[tuple[int, int], ...]
    bare_fraction: tuple[float, ...]
    band_names: tuple[str, ...]

    def surface(
        self, material: str, shape: tuple[int, int], rng: np.random.Generator
    ) -> np.ndarray | None:
        """Per-band reflectance of one object's bounding box.

        Args:
            material: Row of the reflectance table the object is made of.
            shape: ``(rows, cols)`` of the bounding box.
            rng: Random generator (swatch, orientation and offset).

        Returns:
            Float32 ``(bands, rows, cols)`` reflectance, ``NaN`` in bands the
            material leaves alone (B10); ``None`` for materials without a
            texture (:data:`SURFACE_MIX`).
        """
        if material not in SURFACE_MIX:
            return None
        mix, contrast = SURFACE_MIX[material]
        patch = self.patches[int(rng.integers(len(self.patches)))]
        patch = np.rot90(patch, int(rng.integers(4)), axes=(1, 2))
        if rng.random() < 0.5:
            patch = patch[:, :, ::-1]
        rows, cols = shape
        side = patch.shape[1]
        r0, c0 = int(rng.integers(side)), int(rng.integers(side))
        # Mirrored tiling: no seams, whatever the object's size.
        pad = ((0, 0), (0, max(0, r0 + rows - side)), (0, max(0, c0 + cols - side)))
        cut = np.pad(patch, pad, mode="symmetric")[:, r0 : r0 + rows, c0 : c0 + cols]
        mean = patch.mean(axis=(1, 2))
        table = signature(material, self.band_names)
        base = mix * table + (1.0 - mix) * mean
        relative = cut / np.maximum(mean, 1e-4)[:, None, None]
        out = base[:, None, None] * (1.0 + contrast * (relative - 1.0))
        return np.clip(out, 0.0, 1.0).astype(np.float32)


def find_swatches(
    background: Background,
    transform: Affine,
    overview: np.ndarray,
    factor: int,
    path: np.ndarray,
    side: int = SWATCH_PX,
    count: int = N_SWATCHES,
) -> Swatches:
    """Pick the crop's barest squares and read them at full resolution.

    Squares are taken greedily by their share of bare pixels
    (:func:`bare_ground`), none overlapping, while the share is at least
    :data:`MIN_BARE`; a crop with less bare ground than that still gets its
    barest square (logged). Pixels of a swatch that are not bare take the
    spectrum of the nearest bare one.

    Args:
        background: The background scene.
        transform: Crop transform (full resolution).
        overview: ``(bands, rows, cols)`` decimated read of the crop.
        factor: Decimation of ``overview``.
        path: Dark-object value per band (subtracted to get reflectance).
        side: Swatch side, full-resolution pixels; default :data:`SWATCH_PX`.
        count: Swatches to keep; default :data:`N_SWATCHES`.

    Returns:
        The :class:`Swatches`.
    """
    bands = background.band_names
    refl = (overview - path[:, None, None]) / QUANTIFICATION
    bare = bare_ground(refl, bands).astype(np.float64)
    rows, cols = bare.shape
    win = max(1, min(side // factor, rows, cols))
    share = ndimage.uniform_filter(bare, win, mode="constant")
    # Centres whose window stays inside the crop.
    half = win // 2
    valid = np.zeros_like(share, dtype=bool)
    valid[half : rows - (win - half) + 1, half : cols - (win - half) + 1] = True
    score = np.where(valid, share, -1.0)
    origins: list[tuple[int, int]] = []
    fractions: list[float] = []
    for _ in range(count):
        i, j = np.unravel_index(int(np.argmax(score)), score.shape)
        if score[i, j] < 0 or (origins and score[i, j] < MIN_BARE):
            break
        fractions.append(round(float(score[i, j]), 4))
        r, c = (int(i) - half) * factor, (int(j) - half) * factor
        origins.append((r, c))
        score[max(0, i - win) : i + win + 1, max(0, j - win) : j + win + 1] = -1.0
    if fractions[0] < MIN_BARE:
        log.warning(
            "little bare ground in the crop (%.0f %% of the barest square); the realistic "
            "world's surfaces may show vegetation",
            100 * fractions[0],
        )
    side = win * factor
    patches = []
    for r, c in origins:
        dn = background.read(transform @ Affine.translation(c, r), (side, side))
        patch = (dn - path[:, None, None]) / QUANTIFICATION
        bare_px = bare_ground(patch, bands)
        if bare_px.any() and not bare_px.all():
            # Nearest bare pixel for every other one: no hedge or track in a pit.
            nearest = ndimage.distance_transform_edt(~bare_px, return_distances=False,
                                                     return_indices=True)  # fmt: skip
            patch = patch[:, nearest[0], nearest[1]]
        patches.append(patch)
    return Swatches(np.stack(patches).astype(np.float32), tuple(origins), tuple(fractions), bands)


def bench_shade(
    dist: np.ndarray,
    rad: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    benches: int,
    sun_azimuth: float,
) -> np.ndarray:
    """Brightness factor of a benched open pit: concentric steps.

    From the rim inwards the pit descends in ``benches`` steps; each ring is
    a wall (its outer third) then a flat bench. Benches darken with depth
    (moister, less sky); a wall faces the pit's centre, so it is lit on the
    far side from the sun and shaded on the near side.

    Args:
        dist: Distance of each pixel from the pit centre, pixels.
        rad: Pit outline radius in each pixel's direction, pixels.
        dy: Row offset from the centre.
        dx: Column offset from the centre.
        benches: Number of benches.
        sun_azimuth: Degrees clockwise from north.

    Returns:
        Float32 factor, 1 on the rim bench.
    """
    depth = np.clip(1.0 - dist / rad, 0.0, 1.0) * benches  # 0 at the rim
    step = np.minimum(np.floor(depth), benches - 1)
    within = depth - step
    az = math.radians(sun_azimuth)
    to_sun = (-math.cos(az), math.sin(az))  # (row, col) towards the sun
    with np.errstate(invalid="ignore", divide="ignore"):
        inward = np.where(dist > 0, -(dy * to_sun[0] + dx * to_sun[1]) / dist, 0.0)
    wall = 1.0 + 0.45 * inward
    bench = 1.0 - 0.06 * step
    factor = np.where(within < 1.0 / 3.0, wall * (1.0 - 0.06 * step), bench)
    # Half a pixel of blur: a bench edge falls across a pixel, not on its border.
    return ndimage.gaussian_filter(factor, 0.5).astype(np.float32)


def slope_shade(
    heights: np.ndarray, pixel_size: float, sun_azimuth: float, sun_elevation: float
) -> np.ndarray:
    """Brightness factor of a pile's surface relative to flat ground.

    Lambert's law for the sun's share of the light, a constant sky share
    (:data:`_DIFFUSE`): a flat pixel gets 1, a slope facing the sun more, one
    facing away down to the sky share (self-shadow).

    Args:
        heights: Pile height in metres on the sprite's grid.
        pixel_size: Metres per pixel.
        sun_azimuth: Degrees clockwise from north.
        sun_elevation: Degrees above the horizon.

    Returns:
        Float32 factor, same shape as ``heights``.
    """
    d_row, d_col = np.gradient(heights, pixel_size)
    # Surface normal in (east, north, up); rows run south.
    nx, ny = -d_col, d_row
    norm = np.sqrt(nx * nx + ny * ny + 1.0)
    az, el = math.radians(sun_azimuth), math.radians(max(sun_elevation, 5.0))
    sx, sy, sz = math.sin(az) * math.cos(el), math.cos(az) * math.cos(el), math.sin(el)
    cos_i = np.clip((nx * sx + ny * sy + sz) / norm, 0.0, None)
    return (_DIFFUSE + (1.0 - _DIFFUSE) * cos_i / sz).astype(np.float32)
