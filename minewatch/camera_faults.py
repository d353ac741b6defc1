"""Physical faults of a conveyor-belt camera, applied to whole frames.

Each fault has one physical parameter (its *magnitude*) in a physical unit, so
a result can be read as "the model holds up to 6 degrees of mount tilt", not
"up to severity 3". Frames follow :func:`minewatch.synth.frames.make_frame`:
axis 0 (rows) runs along the belt, in the direction of belt motion, row 0 at
the far edge; axis 1 (columns) runs across it, with dark rubber at both sides.

Assumed camera geometry (the nominal belt camera; the numbers only enter
where a fault's parameter is converted to pixels):

* frame side 128 px over about 1 m of belt: ground sample distance 8 mm/px;
* belt speed 4 m/s, so belt motion during an exposure of ``t`` ms is
  ``4 m/s x t / 8 mm/px = t / 2`` px;
* focal length 1.5 x frame side (192 px for 128 px, a ~37 degree field of
  view), looking straight down when mounted correctly;
* values are gamma-encoded (gamma 2.2); gains act on linear light.

=================  ==========================  =======  ========================================
fault              parameter (magnitude)       unit     grid
=================  ==========================  =======  ========================================
``tilt``           camera pitch                degrees  1, 2, 3, 4, 6, 8, 10, 15, 20
``lateral_shift``  camera offset across belt   % width  1, 2, 3, 5, 7.5, 10, 15, 20
``belt_blur``      blur length along the belt  px       1.5, 2, 3, 4, 6, 8, 12, 16
``defocus``        blur-disk radius            px       0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5
``exposure_clip``  exposure error              EV       0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3
``wb_drift``       red/blue gain drift         %        2, 4, 6, 8, 10, 15, 20, 25, 30
``glare``          glare peak                  x FS     0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5,
                                                        0.6, 0.8
``smear``          veil strength               %        5, 10, 15, 20, 30, 40, 50, 60
``noise_jpeg``     sensor noise sigma          % FS     0.5, 1, 1.5, 2, 3, 4, 6, 8, 10
=================  ==========================  =======  ========================================

(FS: full scale, 255 for uint8.) Each grid runs from barely visible to the
largest plausible value and is what a calibration run measures damage on.

What each fault does at magnitude ``m``:

``tilt``
    Mount pitch ``m`` degrees (random sign) seen as keystone: a projective
    warp whose horizontal scale is ``1 - s`` on the far edge (top row) and
    ``1 + s`` on the near edge, ``s = tan(m) x (H / 2) / f`` with ``f`` the
    focal length, 1.5 x the longer side (``s = tan(m) / 3`` for a square
    frame: 0.035 at 6 degrees, 0.12 at 20), plus a roll of
    ``m / 3`` degrees about the optical axis (random sign). Bilinear,
    reflected borders.
``lateral_shift``
    The camera sits ``m`` % of the frame width off the belt centre line
    (random side): content moves along columns by ``round(m / 100 x W)`` px;
    the exposed side shows belt edge and structure, filled with the mean of
    the frame's outer 3 columns on that side (rubber) plus noise of their
    standard deviation.
``belt_blur``
    Motion blur along rows only, a box of length ``m`` px (fractional ends):
    ``m = belt speed x exposure time / ground sample distance``, so with the
    nominal camera 1 px per 2 ms of exposure; 6 px is a 12 ms exposure.
``defocus``
    A pillbox (uniform disk) point spread function of radius ``m`` px, area
    weighted at its edge, on every channel.
``exposure_clip``
    An exposure error of ``m`` EV (random sign): linear light is multiplied by
    ``2 ** +-m`` and clipped at full scale, where highlight detail is lost
    for good (shadows lose it to quantisation).
``wb_drift``
    White balance drifts by ``p = m`` %: in linear light red gain ``1 + p``,
    green 1, blue ``1 - p`` (random sign: warm or cool cast), clipped at
    full scale. Other channel counts tilt linearly from the first channel to
    the last.
``glare``
    A specular reflection of the lamp: a Gaussian blob of peak ``m`` x full
    scale added to every channel, then clipped; centre uniform over the
    frame, radius 15-25 % of the shorter side (the Gaussian sigma is half the
    radius, so the blob is at 13.5 % of its peak at the radius).
``smear``
    Dirt or oil on the window: a soft random region covering 30-60 % of the
    frame is blurred (Gaussian, sigma ``m / 20`` px) and veiled, i.e. its
    contrast falls by ``m`` % towards the local mean brightness (a Gaussian
    mean over an eighth of the frame side).
``noise_jpeg``
    Sensor noise then compression: white Gaussian noise of sigma ``m`` % of
    full scale, then 8-bit JPEG (PIL, in memory, 4:2:0 chroma for RGB) at
    quality ``clip(round(95 - 8 m), 10, 95)``: 87 at 1 %, 71 at 3 %, 47 at 6 %.

Severity: severity ``k`` in 1..5 is magnitude ``MEDIUM[name] x
LADDER_RATIOS[k - 1]``, i.e. ``1/3, 2/3, 1, 1.5, 2`` times the fault's *medium*
magnitude (:data:`MEDIUM`, measured on the grid by a calibration run: the
smallest magnitude at which a plain model loses 5 points, or the grid's last
where none does), capped at the fault's largest accepted magnitude (``smear``
at 100 %); severity 0 is the clean frame. ``combo2`` and ``combo3`` draw 2
(or 3) distinct faults with the generator and apply each at its own severity
``k`` magnitude, in physical order: geometry (``tilt``, ``lateral_shift``),
optics and motion (``belt_blur``, ``defocus``, ``smear``, ``glare``),
exposure and colour (``exposure_clip``, ``wb_drift``), sensor last
(``noise_jpeg``).

Every fault draws its random choices (sign, position, noise) from ``rng``
before looking at the magnitude, so one seed gives the same choices at every
magnitude and damage can be compared along the grid. Frames are meant to be
uint8 RGB; other shapes and dtypes work too (any ``(H, W, C)``; uint16 or
float in fractions of full scale, 10000 and 1.0), so the faults also run on
any tile :mod:`minewatch.corruptions` accepts. ``exposure_clip``,
``wb_drift`` and ``glare`` saturate at full scale for every dtype.

Example:
    >>> import numpy as np
    >>> from minewatch.camera_faults import MEDIUM, apply_fault, fault, magnitude
    >>> frame = np.full((128, 128, 3), 90, np.uint8)
    >>> magnitude("belt_blur", 3) == MEDIUM["belt_blur"]
    True
    >>> out = fault(frame, "tilt", 3, np.random.default_rng(0))
    >>> out.shape, out.dtype
    ((128, 128, 3), dtype('uint8'))
    >>> int(apply_fault(frame, "exposure_clip", 0.0, np.random.default_rng(0))[0, 0, 0])
    90
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from PIL import Image
from scipy import ndimage, signal

from minewatch.errors import ConfigError, InputError
from minewatch.pixels import finish as _finish
from minewatch.pixels import full_scale as _full_scale
from minewatch.pixels import random_sign as _sign

__all__ = [
    "BELT_COMBOS",
    "BELT_FAULTS",
    "BELT_SPEED_M_S",
    "BELT_SUITE",
    "FAULTS",
    "FOCAL_LENGTH_SIDES",
    "GAMMA",
    "GROUND_SAMPLE_MM",
    "LADDER_RATIOS",
    "MEDIUM",
    "PHYSICAL_ORDER",
    "Fault",
    "apply_fault",
    "draw_combo",
    "fault",
    "jpeg_quality",
    "magnitude",
]

#: Magnitude of each fault at severity 3 ("medium"), in the fault's unit.
#: Calibrated 2026-12-05, once, before any arm was trained, and not moved since:
#: ``bench/robustness.py --calibrate`` trained a plain whole-frame model (no fault
#: augmentation, seed 1000) on the training world and scored it on 500 frames of
#: the calibration world (seed 13, cameras of its own; clean accuracy 0.994). Medium
#: is the smallest grid magnitude at which that model loses at least 5 points:
#: exposure_clip 0.5 EV (0.942), wb_drift 25 % (0.904), glare 0.8 (0.902). The
#: other six never cost 5 points on their grid (worst: tilt 20 deg 0.988,
#: lateral_shift 20 % 0.986, belt_blur 16 px 0.996, defocus 5 px 0.992, smear 60 %
#: 0.972, noise_jpeg 10 % 0.996), so their medium is the largest plausible
#: magnitude, the grid's last (docs/results.md, "Belt robustness").
MEDIUM: dict[str, float] = {
    "tilt": 20.0,
    "lateral_shift": 20.0,
    "belt_blur": 16.0,
    "defocus": 5.0,
    "exposure_clip": 0.5,
    "wb_drift": 25.0,
    "glare": 0.8,
    "smear": 60.0,
    "noise_jpeg": 10.0,
}

#: Severity ``k`` (1..5) is ``MEDIUM[name] * LADDER_RATIOS[k - 1]``.
LADDER_RATIOS: tuple[float, ...] = (1 / 3, 2 / 3, 1.0, 1.5, 2.0)

#: The nine single faults.
BELT_FAULTS: tuple[str, ...] = (
    "tilt",
    "lateral_shift",
    "belt_blur",
    "defocus",
    "exposure_clip",
    "wb_drift",
    "glare",
    "smear",
    "noise_jpeg",
)
#: Random combinations of 2 and 3 distinct single faults.
BELT_COMBOS: tuple[str, ...] = ("combo2", "combo3")
#: Everything :func:`fault` accepts.
BELT_SUITE: tuple[str, ...] = BELT_FAULTS + BELT_COMBOS
#: Order in which a combination applies its faults: geometry, optics and
#: motion, exposure and colour, sensor.
PHYSICAL_ORDER: tuple[str, ...] = (
    "tilt",
    "lateral_shift",
    "belt_blur",
    "defocus",
    "smear",
    "glare",
    "exposure_clip",
    "wb_drift",
    "noise_jpeg",
)

#: Belt speed of the nominal camera, m/s.
BELT_SPEED_M_S = 4.0
#: Ground sample distance of the nominal camera (128 px over ~1 m), mm/px.
GROUND_SAMPLE_MM = 8.0
#: Focal length of the nominal camera in frame sides (192 px for 128 px).
FOCAL_LENGTH_SIDES = 1.5
#: Encoding gamma assumed to reach linear light.
GAMMA = 2.2

_MAX_SEVERITY = 5
_COMBO_SIZE = {"combo2": 2, "combo3": 3}
# Knots per side of the random field that shapes the smear region.
_SMEAR_KNOTS = 4

#: A fault's effect: ``(image, magnitude, rng) -> image``; validation is done by the caller.
FaultFn = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


# --- helpers -------------------------------------------------------------------------------------


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or 0 in image.shape:
        shape = getattr(image, "shape", None)
        raise InputError(
            f"image must be a non-empty numpy array of shape (H, W, C), got shape {shape}"
        )
    if not np.issubdtype(image.dtype, np.integer) and not np.issubdtype(image.dtype, np.floating):
        raise InputError(
            f"image dtype must be integer or floating (belt frames are uint8 RGB), "
            f"got {image.dtype}"
        )


def _check_severity(severity: int) -> None:
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise ConfigError(f"severity must be an int in 0..{_MAX_SEVERITY}, got {severity!r}")
    if not 0 <= severity <= _MAX_SEVERITY:
        raise ConfigError(f"severity must be in 0..{_MAX_SEVERITY}, got {severity}")


def _to_linear(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, 0.0) ** GAMMA


def _to_encoded(values: np.ndarray) -> np.ndarray:
    return np.maximum(values, 0.0) ** (1.0 / GAMMA)


# --- geometry ------------------------------------------------------------------------------------


def _tilt(image: np.ndarray, pitch_deg: float, rng: np.random.Generator) -> np.ndarray:
    pitch_sign, roll_sign = _sign(rng), _sign(rng)
    if pitch_deg == 0:
        return image.copy()
    height, width, channels = image.shape
    focal = FOCAL_LENGTH_SIDES * max(height, width)
    half_h = height / 2.0
    s = pitch_sign * math.tan(math.radians(pitch_deg)) * half_h / focal
    roll = math.radians(roll_sign * pitch_deg / 3.0)
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    v = np.arange(height, dtype=np.float32)[:, None] - cy
    u = np.arange(width, dtype=np.float32)[None, :] - cx
    # Output -> keystoned frame: undo the roll about the optical axis.
    cos, sin = math.cos(roll), math.sin(roll)
    u1 = cos * u + sin * v
    v1 = -sin * u + cos * v
    # Keystoned frame -> scene: the homography [[1, 0, 0], [0, 1, s h], [0, s / h, 1]] keeps the
    # top and bottom rows in place and samples rows at v with horizontal scale 1 + s v / h, so
    # content on the far (top) edge shrinks by 1 - s and on the near edge grows by 1 + s.
    w = 1.0 + (s / half_h) * v1
    rows = (v1 + s * half_h) / w + cy
    cols = u1 / w + cx
    data = image.astype(np.float32)
    out = np.empty_like(data)
    for c in range(channels):
        out[..., c] = ndimage.map_coordinates(data[..., c], (rows, cols), order=1, mode="reflect")
    return _finish(out, image.dtype)


def _lateral_shift(image: np.ndarray, percent: float, rng: np.random.Generator) -> np.ndarray:
    direction = _sign(rng)
    height, width, _ = image.shape
    noise = rng.standard_normal((height, width, 1), dtype=np.float32)
    shift = min(math.floor(percent / 100.0 * width + 0.5), width)
    if shift == 0:
        return image.copy()
    data = image.astype(np.float32)
    out = np.empty_like(data)
    strip_width = min(3, width)
    if direction > 0:  # content moves to higher columns; the low-column side is exposed
        out[:, shift:] = data[:, : width - shift]
        strip, exposed = data[:, :strip_width], np.s_[:, :shift]
    else:
        out[:, : width - shift] = data[:, shift:]
        strip, exposed = data[:, width - strip_width :], np.s_[:, width - shift :]
    mean = strip.mean(axis=(0, 1))
    spread = strip.std(axis=(0, 1))
    out[exposed] = mean + spread * noise[exposed]
    return _finish(out, image.dtype)


# --- optics and motion ---------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _box_kernel(length: float) -> np.ndarray:
    """Box of ``length`` px centred on 0, pixel weights = overlap with ``[-L/2, L/2]``."""
    half = max(length, 1.0) / 2.0
    reach = math.ceil(half - 0.5)
    offsets = np.arange(-reach, reach + 1, dtype=np.float64)
    weights = np.clip(np.minimum(offsets + 0.5, half) - np.maximum(offsets - 0.5, -half), 0, None)
    return (weights / weights.sum()).astype(np.float32)


def _belt_blur(image: np.ndarray, length_px: float, rng: np.random.Generator) -> np.ndarray:
    if length_px == 0:
        return image.copy()
    kernel = _box_kernel(round(float(length_px), 4))
    out = ndimage.convolve1d(image.astype(np.float32), kernel, axis=0, mode="reflect")
    return _finish(out, image.dtype)


@lru_cache(maxsize=64)
def _disk_kernel(radius: float) -> np.ndarray:
    """Pillbox of ``radius`` px, each pixel weighted by its area inside (8 x 8 subsamples)."""
    reach = math.ceil(radius + 0.5)
    sub = (np.arange(8) + 0.5) / 8.0 - 0.5
    grid = np.arange(-reach, reach + 1, dtype=np.float64)
    fine = (grid[:, None] + sub[None, :]).ravel()
    inside = (fine[:, None] ** 2 + fine[None, :] ** 2) <= radius**2
    size = grid.size
    weights = inside.reshape(size, 8, size, 8).mean(axis=(1, 3))
    if weights.sum() == 0:  # radius far below a pixel: no blur
        weights[reach, reach] = 1.0
    return (weights / weights.sum()).astype(np.float32)[..., None]


def _defocus(image: np.ndarray, radius_px: float, rng: np.random.Generator) -> np.ndarray:
    if radius_px == 0:
        return image.copy()
    kernel = _disk_kernel(round(float(radius_px), 4))
    reach = kernel.shape[0] // 2
    padded = np.pad(
        image.astype(np.float32), ((reach, reach), (reach, reach), (0, 0)), mode="symmetric"
    )
    # FFT convolution: a 9 x 9 disk by direct convolution costs ~3 ms on a frame, this ~1 ms.
    out = signal.fftconvolve(padded, kernel, mode="valid", axes=(0, 1))
    return _finish(out, image.dtype)


@lru_cache(maxsize=32)
def _smoothing_matrix(size: int, sigma: float) -> np.ndarray:
    """Row-normalised Gaussian smoothing matrix: ``M @ x`` is a local mean along an axis."""
    pos = np.arange(size, dtype=np.float64)
    weights = np.exp(-0.5 * ((pos[:, None] - pos[None, :]) / sigma) ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


@lru_cache(maxsize=32)
def _knot_basis(size: int) -> np.ndarray:
    """Gaussian bumps at ``_SMEAR_KNOTS`` knots: ``B @ N @ B'.T`` is a smooth random field."""
    pos = np.arange(size, dtype=np.float64)[:, None]
    spacing = size / _SMEAR_KNOTS
    knots = (np.arange(_SMEAR_KNOTS)[None, :] + 0.5) * spacing
    return np.exp(-0.5 * ((pos - knots) / spacing) ** 2)


def _local_mean(data: np.ndarray) -> np.ndarray:
    height, width, _ = data.shape
    sigma = max(height, width) / 8.0
    rows, cols = _smoothing_matrix(height, sigma), _smoothing_matrix(width, sigma)
    return np.einsum("ij,jkc,lk->ilc", rows, data, cols, optimize=True)


def _smear(image: np.ndarray, veil_percent: float, rng: np.random.Generator) -> np.ndarray:
    cover = float(rng.uniform(0.3, 0.6))
    knots = rng.standard_normal((_SMEAR_KNOTS, _SMEAR_KNOTS))
    if veil_percent == 0:
        return image.copy()
    height, width, _ = image.shape
    field_ = _knot_basis(height) @ knots @ _knot_basis(width).T
    threshold = np.quantile(field_, 1.0 - cover)
    softness = max(0.25 * float(field_.std()), 1e-9)
    mask = np.clip((field_ - threshold) / softness + 0.5, 0.0, 1.0).astype(np.float32)[..., None]
    data = image.astype(np.float32)
    sigma = veil_percent / 20.0
    blurred = ndimage.gaussian_filter(data, (sigma, sigma, 0.0), mode="reflect")
    veil = min(veil_percent / 100.0, 1.0)
    smeared = (1.0 - veil) * blurred + veil * _local_mean(blurred)
    return _finish(data + mask * (smeared - data), image.dtype)


def _glare(image: np.ndarray, peak: float, rng: np.random.Generator) -> np.ndarray:
    height, width, _ = image.shape
    centre_r = float(rng.uniform(0.0, height))
    centre_c = float(rng.uniform(0.0, width))
    radius = float(rng.uniform(0.15, 0.25)) * min(height, width)
    if peak == 0:
        return image.copy()
    sigma = radius / 2.0
    blob_r = np.exp(-0.5 * ((np.arange(height) + 0.5 - centre_r) / sigma) ** 2)
    blob_c = np.exp(-0.5 * ((np.arange(width) + 0.5 - centre_c) / sigma) ** 2)
    blob = np.outer(blob_r, blob_c).astype(np.float32)[..., None]
    fs = _full_scale(image.dtype)
    out = np.clip(image.astype(np.float32) + (peak * fs) * blob, 0.0, fs)
    return _finish(out, image.dtype)


# --- exposure and colour -------------------------------------------------------------------------


def _exposure_clip(image: np.ndarray, ev: float, rng: np.random.Generator) -> np.ndarray:
    direction = _sign(rng)
    if ev == 0:
        return image.copy()
    fs = _full_scale(image.dtype)
    linear = _to_linear(image.astype(np.float32) / fs) * (2.0 ** (direction * ev))
    return _finish(_to_encoded(np.minimum(linear, 1.0)) * fs, image.dtype)


def _wb_drift(image: np.ndarray, percent: float, rng: np.random.Generator) -> np.ndarray:
    direction = _sign(rng)
    if percent == 0:
        return image.copy()
    channels = image.shape[2]
    tilt = np.linspace(1.0, -1.0, channels) if channels > 1 else np.zeros(1)
    gains = (1.0 + direction * percent / 100.0 * tilt).astype(np.float32)
    fs = _full_scale(image.dtype)
    linear = _to_linear(image.astype(np.float32) / fs) * gains
    return _finish(_to_encoded(np.minimum(linear, 1.0)) * fs, image.dtype)


# --- sensor --------------------------------------------------------------------------------------


def jpeg_quality(noise_percent: float) -> int:
    """JPEG quality that goes with a noise level in :func:`apply_fault` ``noise_jpeg``.

    Args:
        noise_percent: Noise sigma in percent of full scale.

    Returns:
        ``clip(round(95 - 8 * noise_percent), 10, 95)``.
    """
    return int(np.clip(round(95.0 - 8.0 * noise_percent), 10, 95))


def _jpeg_roundtrip(data8: np.ndarray, quality: int) -> np.ndarray:
    def roundtrip(plane: np.ndarray, mode: str) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(plane, mode=mode).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        with Image.open(buf) as decoded:
            return np.asarray(decoded.convert(mode))

    if data8.shape[2] == 3:
        return roundtrip(data8, "RGB")
    # Other channel counts: each channel is its own greyscale JPEG.
    return np.stack([roundtrip(data8[..., c], "L") for c in range(data8.shape[2])], axis=-1)


def _noise_jpeg(image: np.ndarray, noise_percent: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(image.shape, dtype=np.float32)
    if noise_percent == 0:
        return image.copy()
    fs = _full_scale(image.dtype)
    noisy = image.astype(np.float32) / fs + (noise_percent / 100.0) * noise
    # JPEG is 8-bit: non-uint8 images are encoded at 8 bits of their full scale.
    data8 = np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)
    decoded = _jpeg_roundtrip(data8, jpeg_quality(noise_percent))
    if image.dtype == np.uint8:
        return decoded.copy()
    return _finish(decoded.astype(np.float32) * (fs / 255.0), image.dtype)


# --- registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fault:
    """One physical camera fault and its calibration grid.

    Attributes:
        name: Key in :data:`FAULTS` and :data:`BELT_FAULTS`.
        parameter: What the magnitude measures, e.g. "camera pitch".
        unit: Unit of the magnitude, e.g. "degrees".
        grid: 7-9 strictly increasing magnitudes, barely visible to largest
            plausible, on which a calibration run measures damage.
        medium: Magnitude called severity 3 (from :data:`MEDIUM`).
        fn: ``(image, magnitude, rng) -> image``, called after validation.
        max_magnitude: Largest magnitude accepted (the model breaks down
            beyond it, e.g. a 45 degree tilt); default no limit.

    Example:
        >>> import numpy as np
        >>> blur = FAULTS["belt_blur"]
        >>> blur.parameter, blur.unit, blur.magnitude(5) == 2 * blur.medium
        ('blur length along the belt', 'px', True)
        >>> frame = np.zeros((32, 32, 3), np.uint8)
        >>> blur.apply(frame, 4.0, np.random.default_rng(0)).shape
        (32, 32, 3)
    """

    name: str
    parameter: str
    unit: str
    grid: tuple[float, ...]
    medium: float
    fn: FaultFn = field(repr=False, compare=False)
    max_magnitude: float = math.inf

    def __post_init__(self) -> None:
        if not 7 <= len(self.grid) <= 9 or any(b <= a for a, b in itertools.pairwise(self.grid)):
            raise ConfigError(
                f"fault {self.name!r}: grid must hold 7-9 strictly increasing magnitudes, "
                f"got {self.grid}"
            )
        if not 0 < self.medium <= self.max_magnitude:
            raise ConfigError(
                f"fault {self.name!r}: medium must be in (0, {self.max_magnitude}], "
                f"got {self.medium}"
            )

    def magnitude(self, severity: int) -> float:
        """Magnitude at a severity: ``medium * LADDER_RATIOS[severity - 1]``, 0 for 0.

        Capped at :attr:`max_magnitude`.

        Args:
            severity: 0..5.

        Returns:
            The magnitude in :attr:`unit`.

        Raises:
            ConfigError: ``severity`` is not an int in 0..5.
        """
        _check_severity(severity)
        if severity == 0:
            return 0.0
        return min(self.medium * LADDER_RATIOS[int(severity) - 1], self.max_magnitude)

    def apply(self, image: np.ndarray, magnitude: float, rng: np.random.Generator) -> np.ndarray:
        """Apply the fault at a physical magnitude.

        Args:
            image: ``(H, W, C)`` frame, uint8 RGB normally (see the module notes).
            magnitude: In :attr:`unit`, ``0 <= magnitude <= max_magnitude``;
                0 returns an unchanged copy (the generator advances as for any
                other magnitude).
            rng: Source of every random choice.

        Returns:
            The faulty frame, same shape and dtype.

        Raises:
            InputError: ``image`` is not a non-empty numeric ``(H, W, C)`` array.
            ConfigError: ``magnitude`` is not a number in ``[0, max_magnitude]``.
        """
        _check_image(image)
        if isinstance(magnitude, bool) or not isinstance(magnitude, int | float | np.number):
            raise ConfigError(f"{self.name} magnitude must be a number, got {magnitude!r}")
        value = float(magnitude)
        if not 0.0 <= value <= self.max_magnitude:
            raise ConfigError(
                f"{self.name} magnitude ({self.parameter}) must be in 0..{self.max_magnitude:g} "
                f"{self.unit}, got {magnitude!r}"
            )
        return self.fn(image, value, rng)


def _fault(
    name: str,
    parameter: str,
    unit: str,
    grid: tuple[float, ...],
    fn: FaultFn,
    max_magnitude: float = math.inf,
) -> Fault:
    return Fault(name, parameter, unit, grid, MEDIUM[name], fn, max_magnitude)


#: The nine single faults by name.
FAULTS: dict[str, Fault] = {
    f.name: f
    for f in (
        _fault("tilt", "camera pitch", "degrees", (1, 2, 3, 4, 6, 8, 10, 15, 20), _tilt, 45.0),
        _fault(
            "lateral_shift",
            "camera offset across the belt",
            "% of frame width",
            (1, 2, 3, 5, 7.5, 10, 15, 20),
            _lateral_shift,
            100.0,
        ),
        _fault(
            "belt_blur",
            "blur length along the belt",
            "px",
            (1.5, 2, 3, 4, 6, 8, 12, 16),
            _belt_blur,
            1000.0,
        ),
        _fault(
            "defocus",
            "blur-disk radius",
            "px",
            (0.75, 1, 1.25, 1.5, 2, 2.5, 3, 4, 5),
            _defocus,
            64.0,
        ),
        _fault(
            "exposure_clip",
            "exposure error",
            "EV",
            (0.25, 0.5, 0.75, 1, 1.5, 2, 2.5, 3),
            _exposure_clip,
            16.0,
        ),
        _fault(
            "wb_drift",
            "red/blue gain drift",
            "%",
            (2, 4, 6, 8, 10, 15, 20, 25, 30),
            _wb_drift,
            100.0,
        ),
        _fault(
            "glare",
            "glare peak",
            "x full scale",
            (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8),
            _glare,
        ),
        _fault(
            "smear",
            "veil strength",
            "%",
            (5, 10, 15, 20, 30, 40, 50, 60),
            _smear,
            100.0,
        ),
        _fault(
            "noise_jpeg",
            "sensor noise sigma",
            "% of full scale",
            (0.5, 1, 1.5, 2, 3, 4, 6, 8, 10),
            _noise_jpeg,
            100.0,
        ),
    )
}


def _single(name: str) -> Fault:
    try:
        return FAULTS[name]
    except (KeyError, TypeError):
        hint = " (combos have no single magnitude; use fault())" if name in BELT_COMBOS else ""
        raise ConfigError(
            f"unknown belt fault {name!r}{hint}; choose one of {', '.join(BELT_FAULTS)}"
        ) from None


def magnitude(name: str, severity: int) -> float:
    """Physical magnitude of a single fault at a severity.

    Args:
        name: One of :data:`BELT_FAULTS`.
        severity: 0..5; ``MEDIUM[name] * LADDER_RATIOS[severity - 1]``, 0 for 0.

    Returns:
        The magnitude in the fault's unit.

    Raises:
        ConfigError: Unknown ``name`` or bad ``severity``.
    """
    return _single(name).magnitude(severity)


def apply_fault(
    image: np.ndarray, name: str, magnitude: float, rng: np.random.Generator
) -> np.ndarray:
    """Apply one single fault at a physical magnitude.

    Args:
        image: ``(H, W, C)`` frame, uint8 RGB normally.
        name: One of :data:`BELT_FAULTS`.
        magnitude: In the fault's unit (see :data:`FAULTS`); 0 returns a copy.
        rng: Source of every random choice.

    Returns:
        The faulty frame, same shape and dtype.

    Raises:
        ConfigError: Unknown ``name`` or a magnitude out of range.
        InputError: ``image`` is not a non-empty numeric ``(H, W, C)`` array.
    """
    return _single(name).apply(image, magnitude, rng)


def draw_combo(name: str, rng: np.random.Generator) -> tuple[str, ...]:
    """Draw the single faults of a combination, as :func:`fault` does.

    Args:
        name: ``"combo2"`` or ``"combo3"``.
        rng: Generator; advanced exactly as :func:`fault` advances it first.

    Returns:
        2 or 3 distinct names of :data:`BELT_FAULTS`, in :data:`PHYSICAL_ORDER`.

    Raises:
        ConfigError: ``name`` is not a combination.
    """
    if name not in _COMBO_SIZE:
        raise ConfigError(f"unknown belt combo {name!r}; choose one of {', '.join(BELT_COMBOS)}")
    picked = {BELT_FAULTS[i] for i in rng.choice(len(BELT_FAULTS), _COMBO_SIZE[name], False)}
    return tuple(n for n in PHYSICAL_ORDER if n in picked)


def fault(image: np.ndarray, name: str, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Apply a belt fault or combination at a severity.

    Args:
        image: ``(H, W, C)`` frame, uint8 RGB normally.
        name: One of :data:`BELT_SUITE`.
        severity: 0..5; a single fault runs at :func:`magnitude`; a combo
            draws its faults with :func:`draw_combo` and runs each at its own
            severity magnitude, in :data:`PHYSICAL_ORDER`. 0 returns a copy.
        rng: Source of every random choice.

    Returns:
        The faulty frame, same shape and dtype.

    Raises:
        ConfigError: Unknown ``name`` or bad ``severity``.
        InputError: ``image`` is not a non-empty numeric ``(H, W, C)`` array.
    """
    _check_image(image)
    _check_severity(severity)
    if name in _COMBO_SIZE:
        out = image
        for single in draw_combo(name, rng):
            out = apply_fault(out, single, magnitude(single, severity), rng)
        return out.copy() if out is image else out
    return apply_fault(image, name, magnitude(name, severity), rng)
