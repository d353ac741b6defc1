"""Image corruptions at controlled severities, for robustness evaluation.

Every function has the signature ``fn(image, severity, rng) -> image``:

* ``image`` is ``(H, W, C)``: a uint8 RGB camera frame, a uint16 Sentinel-2
  tile (digital number = reflectance x 10000) or a float tile (reflectance);
* ``severity`` is an int in ``0..5``; 0 returns an unchanged copy;
* ``rng`` is a :class:`numpy.random.Generator`; random choices (direction,
  sign, noise) come from it only, so a seeded generator gives the same output.

The result has the input's shape and dtype; integer results are rounded and
clipped to the dtype's range. Radiometric magnitudes are fractions of the
dtype's *full scale* (:func:`full_scale`): 255 for uint8, 10000 for uint16
(Sentinel-2 quantification value), the dtype maximum for other integers, 1.0
for floats.

Physical meaning of severity ``k`` (``1..5``):

===================  ==========================================================
``shift``            camera misalignment: content moves by exactly ``k`` px
                     along one image axis (random axis and sign); edges repeat.
``rotation``         camera misalignment: rotation by ``2k`` degrees about the
                     centre, random sign.
``scale``            camera misalignment (distance/zoom): magnification by
                     ``1 + 0.05k`` or its inverse, about the centre.
``motion_blur``      vibration: linear blur of length ``2k + 1`` px in a random
                     direction (amplitude ``k`` px either side).
``gaussian_noise``   additive white noise, sigma ``0.02k`` x full scale.
``exposure``         exposure drift: gain of ``2 ** (+-k / 4)``, i.e. ``k / 4`` EV.
``white_balance``    white-balance drift: channel gains tilt linearly from
                     ``1 + 0.05k`` on the first channel to ``1 - 0.05k`` on the
                     last (random sign); a warm/cool cast for RGB.
``misregistration``  satellite band-to-band misregistration: every band moves
                     by ``0.2k`` px (sub-pixel up to k = 4) in its own random
                     direction (cubic spline).
``haze``             thin haze: ``out = (1 - t) x + t A``, mean optical mixing
                     ``t = 0.1k`` varying smoothly in space; airlight ``A`` is
                     brighter at short wavelengths (channels assumed in
                     wavelength order, or R, G, B when ``C == 3``).
``sensor_noise``     detector noise: read noise sigma ``0.002k`` x full scale,
                     shot noise of variance ``1e-4 k x full scale x signal``,
                     and column striping (per-column gain sd ``0.002k``).
===================  ==========================================================

Belt-camera faults: the physical faults of a conveyor-belt camera (mount tilt,
lateral shift, belt motion blur, defocus, clipped exposure, white-balance
drift, glare, lens smear, noise and JPEG, and random combinations of 2 or 3)
live in :mod:`minewatch.camera_faults`, each with a physical magnitude (degrees,
px, EV, ...) and a calibrated severity ladder. They are registered here under
their names (:data:`BELT_SUITE`: the nine :data:`BELT_FAULTS` and the two
:data:`BELT_COMBOS`), so ``corrupt(frame, "tilt", 3, rng)`` works like any other
corruption.

Example:
    >>> import numpy as np
    >>> from minewatch.corruptions import CORRUPTIONS
    >>> frame = np.zeros((64, 64, 3), np.uint8)
    >>> out = CORRUPTIONS["motion_blur"](frame, 3, np.random.default_rng(0))
    >>> out.shape, out.dtype
    ((64, 64, 3), dtype('uint8'))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from minewatch.camera_faults import BELT_COMBOS, BELT_FAULTS, BELT_SUITE
from minewatch.camera_faults import fault as _belt_fault
from minewatch.errors import ConfigError, InputError
from minewatch.pixels import finish as _finish
from minewatch.pixels import full_scale
from minewatch.pixels import random_sign as _sign

__all__ = [
    "BELT_COMBOS",
    "BELT_FAULTS",
    "BELT_SUITE",
    "CORRUPTIONS",
    "FRAME_CORRUPTIONS",
    "SATELLITE_CORRUPTIONS",
    "SEVERITIES",
    "Corruption",
    "corrupt",
    "corrupt_batch",
    "exposure",
    "full_scale",
    "gaussian_noise",
    "haze",
    "misregistration",
    "motion_blur",
    "rotation",
    "scale",
    "sensor_noise",
    "shift",
    "white_balance",
]

#: A corruption: ``(image[H, W, C], severity, rng) -> image`` of same shape and dtype.
Corruption = Callable[[np.ndarray, int, np.random.Generator], np.ndarray]

#: Severities written to evaluation sets; 0 (identity) is also accepted.
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)
_MAX_SEVERITY = 5


def _check(image: np.ndarray, severity: int) -> None:
    if not isinstance(image, np.ndarray) or image.ndim != 3:
        shape = getattr(image, "shape", None)
        raise InputError(f"image must be a numpy array of shape (H, W, C), got shape {shape}")
    if not np.issubdtype(image.dtype, np.integer) and not np.issubdtype(image.dtype, np.floating):
        raise InputError(f"image dtype must be integer or floating, got {image.dtype}")
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise ConfigError(f"severity must be an int in 0..{_MAX_SEVERITY}, got {severity!r}")
    if not 0 <= severity <= _MAX_SEVERITY:
        raise ConfigError(f"severity must be in 0..{_MAX_SEVERITY}, got {severity}")


def shift(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Translate by exactly ``severity`` pixels along a random axis.

    Args:
        image: ``(H, W, C)`` array.
        severity: 0..5; content moves ``severity`` px; border rows or columns
            repeat the edge.
        rng: Chooses the axis and direction.

    Returns:
        The shifted image, same shape and dtype (values are copied, not
        interpolated).

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    axis = int(rng.integers(2))
    delta = _sign(rng) * int(severity)
    rows, cols = np.arange(image.shape[0]), np.arange(image.shape[1])
    if axis == 0:
        rows = np.clip(rows - delta, 0, image.shape[0] - 1)
    else:
        cols = np.clip(cols - delta, 0, image.shape[1] - 1)
    return image[rows][:, cols].copy()


def rotation(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Rotate by ``2 * severity`` degrees about the centre, random sign.

    Args:
        image: ``(H, W, C)`` array.
        severity: 0..5 (0 to 10 degrees).
        rng: Chooses the direction.

    Returns:
        The rotated image (bilinear, reflected borders), same shape and dtype.

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    angle = 2.0 * severity * _sign(rng)
    if severity == 0:
        return image.copy()
    out = ndimage.rotate(
        image.astype(np.float64), angle, axes=(0, 1), reshape=False, order=1, mode="reflect"
    )
    return _finish(out, image.dtype)


def scale(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Magnify by ``1 + 0.05 * severity`` (or its inverse) about the centre.

    Args:
        image: ``(H, W, C)`` array.
        severity: 0..5 (up to 25 % zoom in or out).
        rng: Chooses zoom in or out.

    Returns:
        The rescaled image (bilinear, reflected borders), same shape and dtype.

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    factor = (1.0 + 0.05 * severity) ** _sign(rng)
    if severity == 0:
        return image.copy()
    centre = (np.array(image.shape[:2], dtype=np.float64) - 1.0) / 2.0
    matrix = np.diag([1.0 / factor, 1.0 / factor, 1.0])
    offset = np.append(centre - centre / factor, 0.0)
    out = ndimage.affine_transform(
        image.astype(np.float64), matrix, offset=offset, order=1, mode="reflect"
    )
    return _finish(out, image.dtype)


def _line_kernel(length: int, angle_deg: float) -> np.ndarray:
    kernel = np.zeros((length, length), dtype=np.float64)
    half = (length - 1) / 2.0
    t = np.linspace(-half, half, 8 * length)
    theta = np.deg2rad(angle_deg)
    r = np.rint(half - t * np.sin(theta)).astype(int)
    c = np.rint(half + t * np.cos(theta)).astype(int)
    np.add.at(kernel, (r, c), 1.0)
    return kernel / kernel.sum()


def motion_blur(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Linear motion blur of length ``2 * severity + 1`` px (vibration).

    Args:
        image: ``(H, W, C)`` array.
        severity: 0..5 (blur length 1 to 11 px).
        rng: Chooses the direction (0..180 degrees).

    Returns:
        The blurred image (reflected borders), same shape and dtype.

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    angle = float(rng.uniform(0.0, 180.0))
    if severity == 0:
        return image.copy()
    kernel = _line_kernel(2 * severity + 1, angle)
    data = image.astype(np.float64)
    out = np.empty_like(data)
    for c in range(data.shape[2]):
        out[..., c] = ndimage.convolve(data[..., c], kernel, mode="reflect")
    return _finish(out, image.dtype)


def gaussian_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Add white Gaussian noise of sigma ``0.02 * severity`` x full scale.

    Args:
        image: ``(H, W, C)`` array.
        severity: 0..5 (sigma 0 to 10 % of full scale, 25.5 DN for uint8).
        rng: Draws the noise.

    Returns:
        The noisy image, same shape and dtype.

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    sigma = 0.02 * severity * full_scale(image.dtype)
    noise = rng.normal(0.0, 1.0, size=image.shape) * sigma
    if severity == 0:
        return image.copy()
    return _finish(image.astype(np.float64) + noise, image.dtype)


def exposure(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Multiply by ``2 ** (+-severity / 4)``: an exposure error of ``severity / 4`` EV.

    Args:
        image: ``(H, W, C)`` array.
        severity: 0..5 (gain 1 to 2.38, or its inverse).
        rng: Chooses over- or under-exposure.

    Returns:
        The re-exposed image (clipped for integer types), same shape and dtype.

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    gain = 2.0 ** (_sign(rng) * severity / 4.0)
    return _finish(image.astype(np.float64) * gain, image.dtype)


def white_balance(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Tilt channel gains from ``1 + 0.05k`` (first) to ``1 - 0.05k`` (last).

    Args:
        image: ``(H, W, C)`` array; for RGB the first channel is red, so a
            positive tilt is a warm cast and a negative one a cool cast.
        severity: ``k`` in 0..5 (end channels differ by up to +-25 %).
        rng: Chooses the sign of the tilt.

    Returns:
        The recoloured image, same shape and dtype. Single-channel images are
        returned unchanged (the tilt is 0 on one channel).

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    channels = image.shape[2]
    tilt = np.linspace(1.0, -1.0, channels) if channels > 1 else np.zeros(1)
    gains = 1.0 + _sign(rng) * 0.05 * severity * tilt
    return _finish(image.astype(np.float64) * gains, image.dtype)


def misregistration(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Shift every band by ``0.2 * severity`` px in its own random direction.

    Args:
        image: ``(H, W, C)`` array, one band per channel.
        severity: 0..5 (0.2 to 1.0 px per band).
        rng: Chooses each band's direction.

    Returns:
        The misregistered image (cubic spline, nearest-edge borders), same
        shape and dtype.

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    angles = np.asarray(rng.uniform(0.0, 2.0 * np.pi, size=image.shape[2]), dtype=np.float64)
    if severity == 0:
        return image.copy()
    magnitude = 0.2 * severity
    data = image.astype(np.float64)
    out = np.empty_like(data)
    for c, theta in enumerate(angles.tolist()):
        delta = (magnitude * np.sin(theta), magnitude * np.cos(theta))
        out[..., c] = ndimage.shift(data[..., c], delta, order=3, mode="nearest")
    return _finish(out, image.dtype)


def _smooth_field(shape: tuple[int, int], rng: np.random.Generator, sigma: float) -> np.ndarray:
    """A smooth random field scaled to 0..1."""
    field = ndimage.gaussian_filter(rng.normal(size=shape), sigma=sigma, mode="wrap")
    lo, hi = field.min(), field.max()
    return (field - lo) / (hi - lo) if hi > lo else np.full(shape, 0.5)


def haze(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Blend towards a blue-heavy airlight by a mean fraction ``0.1 * severity``.

    Args:
        image: ``(H, W, C)`` array; channels in wavelength order (Sentinel-2
            product order) or, when ``C == 3``, R, G, B.
        severity: 0..5 (mean mixing fraction 0 to 0.5; it varies by +-25 %
            of that in space).
        rng: Draws the spatial haze pattern.

    Returns:
        The hazy image, same shape and dtype.

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    height, width, channels = image.shape
    field = _smooth_field((height, width), rng, sigma=max(height, width) / 8.0)
    if severity == 0:
        return image.copy()
    if channels == 3:
        airlight = np.array([0.20, 0.25, 0.30])
    else:
        airlight = np.linspace(0.30, 0.08, channels)
    airlight = airlight * full_scale(image.dtype)
    t = (0.1 * severity * (0.75 + 0.5 * field))[..., None]
    out = (1.0 - t) * image.astype(np.float64) + t * airlight
    return _finish(out, image.dtype)


def sensor_noise(image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Signal-dependent detector noise with column striping.

    Args:
        image: ``(H, W, C)`` array.
        severity: ``k`` in 0..5: read-noise sigma ``0.002k`` x full scale, shot
            noise variance ``1e-4 k`` x full scale x signal, per-column gain
            standard deviation ``0.002k`` (push-broom detector striping).
        rng: Draws the noise and column gains.

    Returns:
        The noisy image, same shape and dtype.

    Raises:
        InputError: ``image`` is not ``(H, W, C)``.
        ConfigError: ``severity`` is not an int in 0..5.
    """
    _check(image, severity)
    fs = full_scale(image.dtype)
    data = image.astype(np.float64)
    column_gain = 1.0 + rng.normal(0.0, 0.002 * severity, size=(1, image.shape[1], image.shape[2]))
    variance = (0.002 * severity * fs) ** 2 + 1e-4 * severity * fs * np.clip(data, 0.0, None)
    noise = rng.normal(size=image.shape) * np.sqrt(variance)
    if severity == 0:
        return image.copy()
    return _finish(data * column_gain + noise, image.dtype)


class _BeltCorruption:
    """One belt-camera fault as a corruption: :func:`minewatch.camera_faults.fault` by name.

    A module-level class rather than a closure, so the registry's entries pickle
    like the plain functions beside them.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.__name__ = name

    def __call__(self, image: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
        return _belt_fault(image, self.name, severity, rng)

    def __repr__(self) -> str:
        return f"<belt fault {self.name!r}>"


#: Every corruption by name (the belt-camera faults of :data:`BELT_SUITE` last).
CORRUPTIONS: dict[str, Corruption] = {
    "shift": shift,
    "rotation": rotation,
    "scale": scale,
    "motion_blur": motion_blur,
    "gaussian_noise": gaussian_noise,
    "exposure": exposure,
    "white_balance": white_balance,
    "misregistration": misregistration,
    "haze": haze,
    "sensor_noise": sensor_noise,
    **{name: _BeltCorruption(name) for name in BELT_SUITE},
}

#: Corruptions that matter for conveyor-belt cameras (written by ``minewatch synth``).
FRAME_CORRUPTIONS: tuple[str, ...] = (
    "shift",
    "rotation",
    "scale",
    "motion_blur",
    "gaussian_noise",
    "exposure",
    "white_balance",
)

#: Satellite-specific corruptions (any corruption also works on multiband tiles).
SATELLITE_CORRUPTIONS: tuple[str, ...] = ("misregistration", "haze", "sensor_noise")


def corrupt(
    image: np.ndarray, name: str, severity: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Apply one named corruption.

    Args:
        image: ``(H, W, C)`` array.
        name: A key of :data:`CORRUPTIONS`.
        severity: 0..5.
        rng: Random generator; defaults to ``np.random.default_rng(0)``.

    Returns:
        The corrupted image, same shape and dtype.

    Raises:
        ConfigError: Unknown ``name`` or bad ``severity``.
        InputError: ``image`` is not ``(H, W, C)``.
    """
    try:
        fn = CORRUPTIONS[name]
    except KeyError:
        raise ConfigError(
            f"unknown corruption {name!r}; choose one of {', '.join(CORRUPTIONS)}"
        ) from None
    return fn(image, severity, rng if rng is not None else np.random.default_rng(0))


def corrupt_batch(
    batch: np.ndarray, name: str, severity: int, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Apply one named corruption to each image of a batch.

    Args:
        batch: ``(N, H, W, C)`` array.
        name: A key of :data:`CORRUPTIONS`.
        severity: 0..5.
        rng: Random generator shared by the batch (each image draws its own
            direction/noise from it); defaults to ``np.random.default_rng(0)``.

    Returns:
        ``(N, H, W, C)`` array of the batch's dtype.

    Raises:
        ConfigError: Unknown ``name`` or bad ``severity``.
        InputError: ``batch`` is not ``(N, H, W, C)``.
    """
    if not isinstance(batch, np.ndarray) or batch.ndim != 4:
        shape = getattr(batch, "shape", None)
        raise InputError(f"batch must be a numpy array of shape (N, H, W, C), got shape {shape}")
    gen = rng if rng is not None else np.random.default_rng(0)
    if len(batch) == 0:
        return batch.copy()
    return np.stack([corrupt(image, name, severity, gen) for image in batch])
