import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage
from skimage import data
from skimage.registration import phase_cross_correlation
from skimage.transform import warp_polar

from minewatch.corruptions import (
    CORRUPTIONS,
    FRAME_CORRUPTIONS,
    SATELLITE_CORRUPTIONS,
    corrupt,
    corrupt_batch,
    full_scale,
)
from minewatch.errors import ConfigError, InputError

RNG_SEED = 123


def _rng():
    return np.random.default_rng(RNG_SEED)


@pytest.fixture(scope="module")
def textured():
    """A 128x128 float grey texture, 3 channels, values in 0..1."""
    img = data.gravel()[100:228, 100:228].astype(np.float64) / 255.0
    return np.repeat(img[..., None], 3, axis=2)


def _images():
    rng = np.random.default_rng(0)
    return {
        "uint8_rgb": rng.integers(0, 256, (40, 48, 3), dtype=np.uint8),
        "uint16_s2": rng.integers(0, 6000, (32, 36, 13), dtype=np.uint16),
        "float32": rng.random((24, 20, 4), dtype=np.float32),
    }


def test_registry_lists_frame_and_satellite_corruptions():
    assert set(FRAME_CORRUPTIONS) | set(SATELLITE_CORRUPTIONS) <= set(CORRUPTIONS)
    assert {"shift", "rotation", "scale", "motion_blur", "gaussian_noise"} <= set(CORRUPTIONS)
    assert {"exposure", "white_balance", "misregistration", "haze", "sensor_noise"} <= set(
        CORRUPTIONS
    )


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
@pytest.mark.parametrize("kind", sorted(_images()))
def test_shape_dtype_and_determinism(name, kind):
    image = _images()[kind]
    out = CORRUPTIONS[name](image, 3, _rng())
    assert out.shape == image.shape
    assert out.dtype == image.dtype
    np.testing.assert_array_equal(out, CORRUPTIONS[name](image, 3, _rng()))
    np.testing.assert_array_equal(CORRUPTIONS[name](image, 0, _rng()), image)


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(CORRUPTIONS)),
    severity=st.integers(0, 5),
    height=st.integers(4, 24),
    width=st.integers(4, 24),
    channels=st.integers(1, 6),
    dtype=st.sampled_from([np.uint8, np.uint16, np.float32, np.float64]),
)
def test_any_shape_any_dtype(name, severity, height, width, channels, dtype):
    image = (np.random.default_rng(1).random((height, width, channels)) * 200).astype(dtype)
    out = CORRUPTIONS[name](image, severity, np.random.default_rng(2))
    assert out.shape == image.shape and out.dtype == image.dtype


@pytest.mark.parametrize("severity", [1, 2, 3, 4, 5])
def test_shift_moves_content_by_severity_pixels(textured, severity):
    out = CORRUPTIONS["shift"](textured, severity, _rng())
    m = 8  # ignore the repeated border
    shift, _, _ = phase_cross_correlation(textured[m:-m, m:-m, 0], out[m:-m, m:-m, 0])
    assert sorted(np.abs(shift).tolist()) == [0.0, float(severity)]


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_rotation_angle_is_two_degrees_per_severity(textured, severity):
    out = CORRUPTIONS["rotation"](textured, severity, _rng())
    radius = 60
    a = warp_polar(textured[..., 0], radius=radius)
    b = warp_polar(out[..., 0], radius=radius)
    shift, _, _ = phase_cross_correlation(a, b, upsample_factor=20)
    assert abs(abs(shift[0]) - 2 * severity) < 0.6


@pytest.mark.parametrize("severity", [2, 4])
def test_scale_factor_is_five_percent_per_severity(textured, severity):
    out = CORRUPTIONS["scale"](textured, severity, _rng())
    radius = 60
    a = warp_polar(textured[..., 0], radius=radius, scaling="log")
    b = warp_polar(out[..., 0], radius=radius, scaling="log")
    shift, _, _ = phase_cross_correlation(a[:, :50], b[:, :50], upsample_factor=20)
    klog = radius / np.log(radius)
    measured = np.exp(abs(shift[1]) / klog)
    assert abs(measured - (1 + 0.05 * severity)) < 0.02


def test_motion_blur_reduces_high_frequencies_monotonically():
    frame = data.astronaut()[:128, :128]
    energies = []
    for severity in range(6):
        out = CORRUPTIONS["motion_blur"](frame, severity, _rng()).astype(np.float64)
        lap = out[1:-1, 1:-1] * 4 - out[:-2, 1:-1] - out[2:, 1:-1] - out[1:-1, :-2] - out[1:-1, 2:]
        energies.append(float((lap**2).mean()))
    assert all(b < a for a, b in itertools.pairwise(energies))


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_gaussian_noise_sigma(severity):
    image = np.full((128, 128, 3), 0.5, np.float64)
    out = CORRUPTIONS["gaussian_noise"](image, severity, _rng())
    assert (out - image).std() == pytest.approx(0.02 * severity, rel=0.05)
    frame = np.full((128, 128, 3), 128, np.uint8)
    out8 = CORRUPTIONS["gaussian_noise"](frame, severity, _rng()).astype(float)
    assert (out8 - 128).std() == pytest.approx(0.02 * severity * 255, rel=0.08)


@pytest.mark.parametrize("severity", [1, 2, 5])
def test_exposure_gain_is_quarter_stops(severity):
    image = np.full((8, 8, 3), 0.2, np.float64)
    out = CORRUPTIONS["exposure"](image, severity, _rng())
    assert abs(np.log2(out.mean() / 0.2)) == pytest.approx(severity / 4)


def test_white_balance_tilts_channel_gains():
    image = np.full((8, 8, 3), 0.4, np.float64)
    out = CORRUPTIONS["white_balance"](image, 4, _rng())
    gains = out.mean(axis=(0, 1)) / 0.4
    assert gains[1] == pytest.approx(1.0)
    assert abs(gains[0] - 1) == pytest.approx(0.2) and abs(gains[2] - 1) == pytest.approx(0.2)
    assert (gains[0] - 1) * (gains[2] - 1) < 0


def _lucas_kanade(a, b, m=10):
    """Shift d such that b(x) ~ a(x - d), by iterated least squares on gradients."""
    d = np.zeros(2)
    for _ in range(6):
        warped = ndimage.shift(a, d, order=3, mode="nearest")
        gy, gx = np.gradient(warped)
        grad = np.stack([gy[m:-m, m:-m].ravel(), gx[m:-m, m:-m].ravel()], axis=1)
        resid = (b - warped)[m:-m, m:-m].ravel()
        d -= np.linalg.lstsq(grad, resid, rcond=None)[0]
    return d


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_misregistration_shifts_each_band_subpixel(severity):
    smooth = ndimage.gaussian_filter(np.random.default_rng(5).normal(size=(96, 96)), 4.0)
    tile = np.repeat(smooth[..., None], 4, axis=2)
    out = CORRUPTIONS["misregistration"](tile, severity, _rng())
    shifts = [_lucas_kanade(tile[..., band], out[..., band]) for band in range(4)]
    for d in shifts:
        assert np.hypot(*d) == pytest.approx(0.2 * severity, abs=0.02)
    assert len({tuple(np.round(d, 2)) for d in shifts}) == 4  # each band its own direction


@pytest.mark.parametrize("severity", [1, 3, 5])
def test_haze_mixing_fraction(severity):
    dark = np.zeros((64, 64, 13), np.float64)
    out = CORRUPTIONS["haze"](dark, severity, _rng())
    airlight = np.linspace(0.30, 0.08, 13)
    t = out / airlight
    assert t.mean() == pytest.approx(0.1 * severity, rel=0.2)
    assert out[..., 0].mean() > out[..., -1].mean()  # blue hazier than SWIR


def test_sensor_noise_grows_with_severity():
    tile = np.full((64, 64, 4), 2000, np.uint16)
    spreads = [
        (CORRUPTIONS["sensor_noise"](tile, s, _rng()).astype(float) - 2000).std() for s in range(6)
    ]
    assert spreads[0] == 0
    assert all(b > a for a, b in itertools.pairwise(spreads))


def test_full_scale():
    assert full_scale(np.uint8) == 255 and full_scale(np.uint16) == 10000
    assert full_scale(np.float32) == 1.0


def test_bad_severity_and_image_and_name():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ConfigError, match=r"severity must be in 0\.\.5"):
        CORRUPTIONS["shift"](img, 6, _rng())
    with pytest.raises(ConfigError, match="severity must be an int"):
        CORRUPTIONS["shift"](img, 1.5, _rng())
    with pytest.raises(InputError, match=r"\(H, W, C\)"):
        CORRUPTIONS["shift"](np.zeros((8, 8)), 1, _rng())
    with pytest.raises(ConfigError, match="unknown corruption 'fog'"):
        corrupt(img, "fog", 1)


def test_corrupt_batch():
    batch = np.random.default_rng(0).integers(0, 255, (5, 16, 16, 3), dtype=np.uint8)
    out = corrupt_batch(batch, "gaussian_noise", 2, _rng())
    assert out.shape == batch.shape and out.dtype == batch.dtype
    with pytest.raises(InputError, match="N, H, W, C"):
        corrupt_batch(batch[0], "shift", 1)
