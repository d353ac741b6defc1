"""Stockpile height from its shadow in the scene and the sun, and a cone volume from it."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.windows import Window
from shapely.geometry import Point, box
from shapely.geometry.base import BaseGeometry

from minewatch.errors import ConfigError
from minewatch.geo import reproject, transformer
from minewatch.volumes.grid import (
    MAX_WINDOW_PIXELS,
    as_crs,
    coverages,
    metric_crs,
    opened,
    pixel_areas,
    raster_name,
    read_window,
    window_around,
)
from minewatch.volumes.result import VolumeResult

__all__ = ["SHADOW_BANDS", "height_from_shadow"]

#: Bands averaged into the brightness image for shadows, when the scene has them.
SHADOW_BANDS: tuple[str, ...] = ("B02", "B03", "B04", "B08")
_HUBER = 1.345
#: Model part of the shadow-length uncertainty, pixels (apex off the centroid,
#: the pile's soft edge, ground not flat).
_MODEL_PX = 1.0
_MIN_GAIN = 8.0

#: Refuse a pile before scanning shadow lengths when no shadow fit could pass
#: (:meth:`_ShadowScan.gain_bound`). Off only to test that the refusal is sound.
_PRESCREEN = True
#: Most numbers the shadow scan holds at once (sub-pixels x tips).
_CHUNK = 4_000_000


def _subpixel_centres(
    rows: np.ndarray, cols: np.ndarray, transform: Affine, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the ``k x k`` sub-pixels of pixels ``(rows, cols)``, in ``transform``'s CRS.

    Returns:
        ``x`` and ``y``, each ``len(rows) x k²``.
    """
    offsets = (np.arange(k) + 0.5) / k
    # Nudged a hair left and far less down in the grid, so that a centre on an
    # edge of a shape counts as GDAL's scanline rasteriser counts it (inside on
    # a right or top edge, outside on a left or bottom one, rows first):
    # centres do fall on the edges of a hull of pixel-aligned footprints.
    c = cols[:, None] + np.tile(offsets, k)[None, :] - 1e-6
    r = rows[:, None] + np.repeat(offsets, k)[None, :] + 1e-8
    t = transform
    return t.a * c + t.b * r + t.c, t.d * c + t.e * r + t.f


def _shadow_entry(
    footprint: BaseGeometry,
    origin: np.ndarray,
    away: np.ndarray,
    far: float,
    x: np.ndarray,
    y: np.ndarray,
) -> np.ndarray:
    """Tip distance at which each point enters a cone's predicted shadow.

    The shadow with its tip ``D`` from ``origin`` along ``away`` is ``hull(footprint
    + tip) - footprint``. These sets only grow with ``D`` (a nearer tip lies on the
    segment from the origin, inside the footprint's hull, to a farther one), so a
    point is in the shadow of every ``D >= entry``: one number per point stands
    for the shadow at every tip distance. A point ``p`` outside the hull ``H`` is
    in ``hull(H + t)`` exactly when ``t`` lies in the cone at ``p`` spanned by the
    directions ``p - v`` over the hull's vertices ``v``; the tip enters that cone
    where its path crosses one of the cone's two edges, through the vertices
    seen at the extreme angles from ``p``.

    Args:
        footprint: The pile, in metres.
        origin: Apex ``(x, y)``, inside the footprint's hull.
        away: Unit vector away from the sun.
        far: Farthest tip distance of interest; points only entering beyond it
            (or never) get ``inf``, as do points inside the footprint.
        x: Point eastings, any shape.
        y: Point northings, same shape.

    Returns:
        Entry distances, shape of ``x``: 0 inside the hull but outside the footprint.
    """
    hull = footprint.convex_hull
    out = np.full(x.shape, np.inf)
    reach = shapely.convex_hull(shapely.union(footprint, Point(*(origin + away * far))))
    maybe = shapely.intersects_xy(reach, x, y)
    maybe[maybe] = ~shapely.contains_xy(footprint, x[maybe], y[maybe])
    in_hull = maybe.copy()
    in_hull[maybe] = shapely.contains_xy(hull, x[maybe], y[maybe])
    out[in_hull] = 0.0
    beyond = maybe & ~in_hull
    if not beyond.any() or not isinstance(hull, shapely.Polygon):
        return out
    p = np.column_stack([x[beyond], y[beyond]])
    verts = np.asarray(hull.exterior.coords)[:-1]
    to_origin = origin[None, :] - p
    rel = verts[None, :, :] - p[:, None, :]
    # angle of each vertex seen from p, measured from the direction to the origin
    angle = np.arctan2(
        to_origin[:, None, 0] * rel[..., 1] - to_origin[:, None, 1] * rel[..., 0],
        to_origin[:, None, 0] * rel[..., 0] + to_origin[:, None, 1] * rel[..., 1],
    )
    d = p - origin[None, :]
    entry = np.full(len(p), np.inf)
    for pick in (np.argmin(angle, axis=1), np.argmax(angle, axis=1)):
        b = p - verts[pick]  # edge of the cone: p + mu b, mu >= 0
        # origin + D away = p + mu b, by Cramer's rule
        det = b[:, 0] * away[1] - away[0] * b[:, 1]
        with np.errstate(divide="ignore", invalid="ignore"):
            dist = (b[:, 0] * d[:, 1] - d[:, 0] * b[:, 1]) / det
            mu = (away[0] * d[:, 1] - away[1] * d[:, 0]) / det
        hit = (np.abs(det) > 1e-12 * np.hypot(b[:, 0], b[:, 1])) & (dist >= 0) & (mu >= 0)
        entry = np.where(hit, np.minimum(entry, dist), entry)
    out[beyond] = np.where(entry <= far, entry, np.inf)
    return out


def _huber(u: np.ndarray) -> np.ndarray:
    return np.where(u <= _HUBER, 0.5 * u**2, _HUBER * u - 0.5 * _HUBER**2)


def _huber_fits(a: np.ndarray, y: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Huber fits of ``y`` on each of the designs ``a`` (``m x n x p``), all at once.

    Six reweighted least-squares steps from the least-squares fit; each step
    solves the weighted normal equations through a pseudo-inverse, which is the
    minimum-norm least-squares solution also when a column repeats another.

    Returns:
        Huber losses in noise-sigma units (``m``) and coefficients (``m x p``).
    """
    w = np.ones(a.shape[:2])
    at = a.transpose(0, 2, 1)
    u = np.zeros(a.shape[:2])
    coef = np.zeros((a.shape[0], a.shape[2]))
    for _ in range(6):
        aw = at * w[:, None, :]
        gram = aw @ a
        vals, vecs = np.linalg.eigh(gram)
        inv = np.where(vals > 1e-12 * vals[:, -1:], 1.0 / np.where(vals > 0, vals, 1.0), 0.0)
        rhs = (vecs.transpose(0, 2, 1) @ (aw @ y)[..., None])[..., 0]
        coef = (vecs @ (inv * rhs)[..., None])[..., 0]
        u = np.abs(y[None, :] - (a @ coef[..., None])[..., 0]) / scale
        w = np.where(u <= _HUBER, 1.0, _HUBER / np.maximum(u, 1e-12))
    return _huber(u).sum(axis=1), coef


class _ShadowScan:
    """Fits of ``plane + c edge - k shadow(D)`` to one pile's sample pixels.

    Args:
        design: Plane and edge columns of the sample pixels (``n x 4``).
        y: Their brightness, relative to the sunlit ground.
        scale: Noise sigma of ``y``.
        enter: Tip distance at which each of each pixel's sub-pixels enters the
            predicted shadow (``n x supersample²``; :func:`_shadow_entry`).
    """

    def __init__(self, design: np.ndarray, y: np.ndarray, scale: float, enter: np.ndarray) -> None:
        self.design, self.y, self.scale, self.enter = design, y, scale, enter
        self.loss0 = float(_huber_fits(design[None], y, scale)[0][0])
        self._done: dict[bytes, tuple[float, float]] = {}

    def evaluate(self, tips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Huber loss and shadow depth for each tip distance (``inf``, 0: no shadow)."""
        # A few million numbers at a time: a pile of a thousand pixels does not
        # take a gigabyte for its hundreds of tips.
        step = max(1, _CHUNK // self.enter.size)
        if tips.size > step:
            parts = [self.evaluate(tips[i : i + step]) for i in range(0, tips.size, step)]
            return np.concatenate([q[0] for q in parts]), np.concatenate([q[1] for q in parts])
        shadow = (self.enter[None, :, :] <= tips[:, None, None]).mean(axis=2)
        keys = [s.tobytes() for s in shadow]
        # Tips that shade the same sub-pixels share one fit: equal shadows, equal losses.
        todo = {k: i for i, k in enumerate(keys) if k not in self._done and shadow[i].any()}
        if todo:
            rows = list(todo.values())
            n, p = self.design.shape
            a = np.empty((len(rows), n, p + 1))
            a[:, :, :p] = self.design
            a[:, :, p] = -shadow[rows]
            loss, coef = _huber_fits(a, self.y, self.scale)
            for k, lo, depth in zip(todo, loss, coef[:, p], strict=True):
                self._done[k] = (float(lo), float(depth))
        out = [
            self._done.get(k, (math.inf, 0.0)) if s.any() else (math.inf, 0.0)
            for k, s in zip(keys, shadow, strict=True)
        ]
        return np.array([o[0] for o in out]), np.array([o[1] for o in out])

    def gain_bound(self) -> float:
        """An upper bound on the loss drop any shadow fit of the scan can reach.

        A shadow only darkens, by ``k s >= 0`` with ``s`` its pixel coverage, and
        only on pixels some tried tip shades; the fit that may darken each such
        pixel freely is at least as good as any shadow fit (with ``k > 0``). That
        relaxed fit is convex: Huber on the other pixels, Huber of the positive
        part of the residual on these. Its minimum is bounded from below by any
        feasible point of its dual, ``sum(lambda y) - sum(lambda² sigma²) / 2``
        with ``A' lambda = 0`` and ``sigma lambda`` in ``[-1.345, 1.345]`` (in
        ``[0, 1.345]`` on the shadable pixels). The dual point is the loss
        gradient at a minimiser found by Newton and majorise-minimise steps,
        corrected onto ``A' lambda = 0`` on the pixels in the quadratic part of
        the loss: the bound holds however roughly the minimiser was found, and
        when the corrected point is not feasible it is ``inf`` and nothing is
        refused.

        Returns:
            ``loss0`` minus the lower bound, in Huber loss units (noise sigmas² / 2).
        """
        shadable = np.isfinite(self.enter).any(axis=1)
        a, y, sigma = self.design, self.y, self.scale
        if not shadable.any():
            return 0.0
        low = np.where(shadable, 0.0, -_HUBER)

        def relaxed(c: np.ndarray) -> tuple[float, np.ndarray]:
            u = (y - a @ c) / sigma
            return float(_huber(np.where(shadable, np.maximum(u, 0.0), np.abs(u))).sum()), u

        coef = np.linalg.lstsq(a, y, rcond=None)[0]
        loss, u = relaxed(coef)
        for _ in range(30):
            # Two candidate steps, the better one taken: Newton's (fast near the
            # minimum) and a majorise-minimise one (a quadratic above each pixel's
            # loss touching it at the current residual; it also moves the
            # coefficients no pixel in the quadratic part constrains).
            free = (u > low) & (u < _HUBER)
            grad = a.T @ np.clip(u, low, _HUBER)
            newton = coef + sigma * np.linalg.lstsq(a[free].T @ a[free], grad, rcond=None)[0]
            w = np.where(np.abs(u) <= _HUBER, 1.0, _HUBER / np.maximum(np.abs(u), 1e-12))
            dark = shadable & (u < 0)
            w[dark] = 1.0
            sw = np.sqrt(w)
            target = np.where(dark, a @ coef, y)
            mm = np.linalg.lstsq(a * sw[:, None], target * sw, rcond=None)[0]
            (new_loss, new_u), new = min(
                (relaxed(newton), newton), (relaxed(mm), mm), key=lambda c: c[0][0]
            )
            if new_loss > loss:
                break
            done = loss - new_loss <= 1e-12 * max(loss, 1.0)
            coef, loss, u = new, new_loss, new_u
            if done:
                break
        nu = np.clip(u, low, _HUBER)  # sigma x lambda
        free = (u > low) & (u < _HUBER)
        nu[free] -= np.linalg.lstsq(a[free].T, a.T @ nu, rcond=None)[0]
        if (nu < low).any() or (nu > _HUBER).any() or np.abs(a.T @ nu).max() > 1e-9:
            return math.inf
        dual = float(nu @ y) / sigma - 0.5 * float(nu @ nu)
        return self.loss0 - dual


def _brightness_bands(src: Any, bands: Sequence[str] | None) -> list[int]:
    names = [d or "" for d in src.descriptions]
    wanted = list(bands) if bands is not None else [b for b in SHADOW_BANDS if b in names]
    if bands is not None:
        missing = [b for b in wanted if b not in names]
        if missing:
            raise ConfigError(f"scene has no band(s) {', '.join(missing)}; it has {names}")
    if not wanted:
        return list(range(1, src.count + 1))
    return [names.index(b) + 1 for b in wanted]


def height_from_shadow(
    polygon: BaseGeometry,
    polygon_crs: Any,
    scene_path: str | os.PathLike[str] | Any,
    sun_azimuth: float,
    sun_elevation: float,
    *,
    bands: Sequence[str] | None = None,
    max_slope_deg: float = 40.0,
    min_shadow_px: float = 1.5,
    supersample: int = 5,
) -> VolumeResult:
    """Pile height from its shadow in the scene, and a cone volume from it.

    Shape assumption: a **cone** with its apex over the footprint's centroid
    (conical piles from a stacker or a conveyor drop; a windrow or a flat-topped
    pile breaks it). On flat ground the cone's shadow is the convex hull of the
    footprint and the apex's shadow point, which lies ``D = height /
    tan(elevation)`` from the apex in the anti-solar direction; the shadow
    seen beyond the footprint is that hull minus the footprint. A cone casts no
    shadow at all once the sun is higher than its side slopes.

    Measurement: a brightness image (mean of B02, B03, B04, B08 if the scene
    has them, else all bands) is read in one window around the pile and its
    longest possible shadow, and divided by the median of the sunlit ground
    near it. The pixels outside the footprint within three pixels of the
    longest possible shadow are fitted as ``plane + c edge - k shadow(D)``
    (``plane``: the ground's brightness trend; ``edge``: the one-pixel ring
    where the pile's own material blends into the ground, brighter or darker;
    ``k``: shadow depth) with a Huber loss scaled by the sunlit ground's robust
    spread, so a road or a roof is an outlier, not a shadow. ``shadow(D)`` is
    the fraction of each pixel's ``supersample``² sub-pixel centres inside the
    predicted shadow: partial pixels count, so ``D`` is not quantised to whole
    pixels. ``D`` is scanned in half-pixel steps, then in 0.1 px steps around
    the best. The predicted shadows only grow with ``D``, so each sub-pixel is
    given once the ``D`` at which it enters the shadow, and every step of the
    scan is a comparison, fitted together with the others (the same sub-pixels
    GDAL's rasteriser would burn for each ``D``).

    Before the scan, a pile is refused when no shadow fit could pass: the fit
    that may darken every pixel any tried shadow touches by any amount bounds
    what every shadow fit can gain over no shadow (a dual-feasible point of that
    convex fit makes the bound exact, not estimated), and if even that is under
    four noise sigmas the scan could not accept a shadow. Most non-piles (a
    weak model's false stockpiles) end here.

    Uncertainty (one sigma) of ``D``: the range where the loss rises by 0.5
    (one sigma), combined with one pixel for the model (apex off
    the centroid, the pile's soft edge, non-flat ground); ``height = D
    tan(elevation)``, ``volume = height x area / 3`` (footprint area taken as
    exact).

    Refusals: sun below the horizon or too high (a cone of this footprint with
    slopes up to ``max_slope_deg`` would cast less than ``min_shadow_px`` pixels
    of shadow beyond its edge), no shadow found (no fit with a positive depth;
    fitted depth under 0.1, or fitting a shadow does not beat no shadow by
    four noise sigmas; or, before the scan, no shadow fit could), unreadable
    scene.

    Args:
        polygon: Footprint.
        polygon_crs: CRS of ``polygon``.
        scene_path: The scene raster (any CRS): a path, or a dataset open for
            reading (left open; a job measuring many piles opens the scene once).
        sun_azimuth: Degrees clockwise from north.
        sun_elevation: Degrees above the horizon.
        bands: Band descriptions to average; default B02, B03, B04, B08 or all.
        max_slope_deg: Steepest side slope expected (angle of repose); default 40.
        min_shadow_px: Shortest measurable shadow beyond the edge; default 1.5 px.
        supersample: Sub-pixels per pixel side for the predicted shadow; default 5.

    Returns:
        A :class:`VolumeResult` with ``method = "shadow"``, or ``"none"`` and
        the reason.

    Raises:
        ConfigError: ``bands`` names a band the scene does not have.
    """
    source = raster_name(scene_path)
    if polygon.is_empty or polygon.area <= 0:
        return VolumeResult.refused("empty stockpile footprint", source)
    if not 0.0 < sun_elevation < 90.0:
        return VolumeResult.refused(
            f"sun elevation {sun_elevation:.1f} deg is not above the horizon and below the "
            "zenith: no usable shadow",
            source,
        )
    crs = as_crs(polygon_crs)
    work_crs, footprint = metric_crs(polygon, crs)
    area = float(footprint.area)
    tan_e = math.tan(math.radians(sun_elevation))
    tan_s = math.tan(math.radians(max_slope_deg))
    r_eq = math.sqrt(area / math.pi)
    h_max = r_eq * tan_s
    longest = h_max / tan_e  # apex to shadow tip, m, for the steepest plausible pile
    try:
        with opened(scene_path) as src:
            if src.crs is None:
                return VolumeResult.refused(f"scene {source} has no CRS", source)
            scene_crs = as_crs(src.crs)
            centre = reproject(footprint.centroid, work_crs, scene_crs)
            pixel_area = pixel_areas(scene_crs, src.transform, Window(0, 0, 1, 1), centre)
            pixel = math.sqrt(float(pixel_area[0]))
            beyond = max(0.0, h_max * (1.0 / tan_e - 1.0 / tan_s))
            if beyond < min_shadow_px * pixel:
                return VolumeResult.refused(
                    f"sun too high for shadows: at {sun_elevation:.1f} deg elevation a conical "
                    f"pile of this footprint (sides up to {max_slope_deg:.0f} deg) casts at most "
                    f"{beyond:.1f} m ({beyond / pixel:.1f} px) of shadow beyond its edge; need "
                    f"{min_shadow_px:g} px. Use a DSM or a scene with a lower sun",
                    source,
                )
            az = math.radians(sun_azimuth)
            away = np.array([-math.sin(az), -math.cos(az)])  # (east, north), away from the sun
            apex = footprint.centroid
            # The pile, its farthest shadow and a margin for the ground's level.
            left, bottom, right, top = footprint.bounds
            dx, dy = away * longest
            grow = max(3 * pixel, 0.5 * r_eq)
            reach = box(
                left + min(dx, 0.0) - grow,
                bottom + min(dy, 0.0) - grow,
                right + max(dx, 0.0) + grow,
                top + max(dy, 0.0) + grow,
            )
            reach_s = reproject(reach, work_crs, scene_crs, pixel)
            win = window_around(reach_s.bounds, src.transform, pad=1)
            if win.width * win.height > MAX_WINDOW_PIXELS:
                return VolumeResult.refused("stockpile shadow window too large", source)
            got = read_window(src, win, _brightness_bands(src, bands))
            if got is None:
                return VolumeResult.refused("scene does not cover the stockpile", source)
            data, valid = got
            wt = src.window_transform(win)
    except rasterio.errors.RasterioError as exc:
        return VolumeResult.refused(f"cannot read scene {source}: {exc}", source)
    valid &= (data > 0).all(axis=0)
    bright = data.mean(axis=0)
    shape = bright.shape
    foot_s = reproject(footprint, work_crs, scene_crs, pixel)
    ring_s = reproject(footprint.buffer(pixel), work_crs, scene_crs, pixel)
    inside, ring = coverages([foot_s, ring_s], shape, wt, supersample)
    edge = (ring > 0) & (inside < 0.5)
    origin = np.array(apex.coords[0])
    longest_hull = shapely.convex_hull(footprint.union(Point(*(origin + away * longest))))
    hull_max = reproject(longest_hull, work_crs, scene_crs, pixel)
    near_ring = reproject(longest_hull.buffer(3 * pixel), work_crs, scene_crs, pixel)
    in_hull, near = coverages([hull_max, near_ring], shape, wt, 1)
    maybe_shadow = in_hull > 0
    sample = valid & (inside < 0.5) & (near > 0)
    sunlit = sample & ~edge & ~maybe_shadow
    if not (sample & maybe_shadow & ~edge).any():
        return VolumeResult.refused(
            f"sun too high for shadows: at {sun_elevation:.1f} deg elevation the longest "
            "possible shadow stays within the pixel ring at the footprint's edge",
            source,
        )
    if sunlit.sum() < 10:
        return VolumeResult.refused(
            "too few clear pixels around the stockpile to look for its shadow", source
        )
    level = float(np.median(bright[sunlit]))
    ratio = bright / level
    # Robust scale of the sunlit ground's texture: the Huber loss below treats
    # pixels beyond 1.345 of these sigmas (a road, a roof, a pond) as outliers.
    scale = max(1.4826 * float(np.median(np.abs(ratio[sunlit] - 1.0))), 0.01)
    y = ratio[sample]
    rows, cols = np.nonzero(sample)
    span = max(float(shape[0]), float(shape[1]))
    # Plane of the ground's brightness, plus the ring just outside the footprint,
    # which mixes ground with the pile's own material (the footprint edge cuts
    # pixels), brighter or darker: one term.
    design = np.column_stack(
        [np.ones(y.size), cols / span - 0.5, rows / span - 0.5, edge[sample].astype(np.float64)]
    )
    # Coarse half-pixel steps over every possible tip distance, then 0.1 px
    # steps within a pixel of the best coarse one: no tip is tried beyond `far`.
    coarse = np.arange(0.5 * pixel, longest + 0.5 * pixel, 0.5 * pixel)
    far = float(coarse[-1]) + 1.5 * pixel
    sub_x, sub_y = _subpixel_centres(rows, cols, wt, supersample)
    if scene_crs != work_crs:
        sub_x, sub_y = map(np.asarray, transformer(scene_crs, work_crs).transform(sub_x, sub_y))
    enter = _shadow_entry(footprint, origin, away, far, sub_x, sub_y)
    scan = _ShadowScan(design, y, scale, enter)
    loss0 = scan.loss0
    if _PRESCREEN:
        bound = scan.gain_bound()
        if bound < _MIN_GAIN:
            return VolumeResult.refused(
                "no shadow found beyond the stockpile's edge (no shadow fit can beat no "
                f"shadow by more than {math.sqrt(2 * max(bound, 0.0)):.1f} noise sigmas)",
                source,
            )
    loss_c, depth_c = scan.evaluate(coarse)
    good = np.isfinite(loss_c) & (depth_c > 0)
    if not good.any():
        return VolumeResult.refused("no shadow found beyond the stockpile's edge", source)
    d0 = float(coarse[good][np.argmin(loss_c[good])])
    tried = {float(d) for d in coarse}
    fine = np.array(
        [d for d in np.arange(d0 - pixel, d0 + pixel + 1e-9, 0.1 * pixel)
         if d > 0 and float(d) not in tried]
    )  # fmt: skip
    loss_f, depth_f = scan.evaluate(fine)
    tips_all = np.concatenate([coarse, fine])
    order = np.argsort(tips_all, kind="stable")
    tips = tips_all[order]
    loss = np.concatenate([loss_c, loss_f])[order]
    depth = np.concatenate([depth_c, depth_f])[order]
    ok = np.isfinite(loss) & (depth > 0)
    best = int(np.argmin(np.where(ok, loss, np.inf)))
    gain = loss0 - loss[best]
    # A loss drop of g is a chi-square drop of 2g: _MIN_GAIN = 8 asks for four sigmas.
    if depth[best] < 0.1 or gain < _MIN_GAIN:
        return VolumeResult.refused(
            f"no shadow found beyond the stockpile's edge (best fit: depth {depth[best]:.2f}, "
            f"{math.sqrt(2 * max(gain, 0.0)):.1f} noise sigmas)",
            source,
        )
    inside_1 = ok & (loss <= loss[best] + 0.5)
    spread = 0.5 * float(tips[inside_1].max() - tips[inside_1].min())
    sigma_d = math.hypot(max(spread, 0.05 * pixel), _MODEL_PX * pixel)
    height = float(tips[best]) * tan_e
    sigma_h = sigma_d * tan_e
    return VolumeResult(
        "shadow",
        volume_m3=height * area / 3.0,
        uncertainty_m3=sigma_h * area / 3.0,
        height_m=height,
        height_uncertainty_m=sigma_h,
        area_m2=area,
        source=source,
    )
