"""Drawing one acquisition: sprites, pile shadows, clouds, and compositing them on the ground.

:func:`render_acquisition` draws every object of a :class:`~minewatch.synth.layout.Layout`
on one date (alpha, texture, the pile's shade and cast shadow, clouds and their
shadows) without the background; :func:`compose_block` blends that over a block
of background rows with the radiometric model of :mod:`minewatch.synth.scenes`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from affine import Affine
from scipy import ndimage

from minewatch.synth.layout import EDGE_PX, Blob, Layout, Road
from minewatch.synth.materials import QUANTIFICATION, signature
from minewatch.synth.relief import Pile, Ridge, Terrain
from minewatch.synth.surfaces import Swatches, bench_shade, slope_shade
from minewatch.synth.vessels import VesselTruth, paint_vessels

__all__ = [
    "CLOUD_HEIGHT_M",
    "OVERPASS_HOURS",
    "SHADOW_SUPERSAMPLE",
    "Acquisition",
    "cloud_opacity",
    "compose_block",
    "cone_shadow",
    "render_acquisition",
    "sun_position",
    "water_any_date",
]

#: Supersampling of stockpile shadows (sub-pixels per pixel side).
SHADOW_SUPERSAMPLE = 4
#: Assumed cloud-top height for cloud shadows, metres.
CLOUD_HEIGHT_M = 1500.0
#: Sentinel-2 overpass, local solar time (10:30).
OVERPASS_HOURS = 10.5
#: Realistic world: share of the ground's light a full cloud shadow takes away
#: (direct sun blocked, sky light left), its penumbra (pixels) and the width
#: of the feathered cloud edge (in standard deviations of the cloud field).
_CLOUD_SHADOW_REALISTIC = 0.65
_PENUMBRA_PX = 1.5
_FEATHER = 1.0
# Phenology amplitude per band: reflectance of vegetation rises in the red edge
# and NIR in summer and falls a little in the red (chlorophyll absorption).
_SEASON_AMPLITUDE = {"B04": -0.10, "B05": 0.05, "B06": 0.15, "B07": 0.20, "B08": 0.20}
_SEASON_AMPLITUDE |= {"B8A": 0.20, "B09": 0.10}


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


def water_any_date(
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


def cone_shadow(
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


def cloud_opacity(
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
        shadow = cone_shadow(cone, width, height, (azimuth, elevation), pixel_size, slope_to_sun)
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
        acq.cloud = cloud_opacity(rng, width, height, cover, feather=look is not None)
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
