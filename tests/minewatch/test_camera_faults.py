import dataclasses
import itertools
import math

import numpy as np
import pytest

from minewatch import camera_faults as cf
from minewatch.camera_faults import (
    BELT_COMBOS,
    BELT_FAULTS,
    BELT_SUITE,
    FAULTS,
    LADDER_RATIOS,
    MEDIUM,
    PHYSICAL_ORDER,
    apply_fault,
    draw_combo,
    fault,
    jpeg_quality,
    magnitude,
)
from minewatch.corruptions import CORRUPTIONS, corrupt
from minewatch.errors import ConfigError, InputError
from minewatch.synth.frames import make_frame


def _rng(seed=7):
    return np.random.default_rng(seed)


@pytest.fixture(scope="module")
def frame():
    return make_frame("medium", 128, np.random.default_rng(3))


def _damage(out, clean):
    return float(np.abs(out.astype(np.float64) - clean.astype(np.float64)).mean())


def test_registry_and_ladder():
    assert BELT_FAULTS == (
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
    assert BELT_COMBOS == ("combo2", "combo3") and BELT_SUITE == BELT_FAULTS + BELT_COMBOS
    assert set(FAULTS) == set(MEDIUM) == set(BELT_FAULTS) == set(PHYSICAL_ORDER)
    assert LADDER_RATIOS == (1 / 3, 2 / 3, 1.0, 1.5, 2.0)
    for name, f in FAULTS.items():
        assert f.name == name and f.parameter and f.unit
        assert 7 <= len(f.grid) <= 9 and all(b > a for a, b in itertools.pairwise(f.grid))
        assert f.medium == MEDIUM[name]
        assert f.grid[0] <= f.medium <= f.grid[-1]
        assert magnitude(name, 0) == 0.0
        for k in range(1, 6):
            want = min(MEDIUM[name] * LADDER_RATIOS[k - 1], f.max_magnitude)
            assert math.isclose(magnitude(name, k), want)
        assert magnitude(name, 3) == MEDIUM[name]
    assert FAULTS["tilt"].unit == "degrees" and FAULTS["tilt"].parameter == "camera pitch"


def test_fault_rejects_a_bad_grid():
    with pytest.raises(ConfigError, match="strictly increasing"):
        dataclasses.replace(FAULTS["tilt"], grid=(1, 2, 2, 3, 4, 5, 6))
    with pytest.raises(ConfigError, match="7-9"):
        dataclasses.replace(FAULTS["tilt"], grid=(1, 2, 3))


@pytest.mark.parametrize("name", BELT_SUITE)
def test_shape_dtype_identity_and_determinism(frame, name):
    out = fault(frame, name, 3, _rng())
    assert out.shape == frame.shape and out.dtype == np.uint8
    np.testing.assert_array_equal(out, fault(frame, name, 3, _rng()))
    clean = fault(frame, name, 0, _rng())
    np.testing.assert_array_equal(clean, frame)
    assert clean is not frame
    assert not np.array_equal(out, frame)


@pytest.mark.parametrize("name", BELT_FAULTS)
def test_magnitude_zero_returns_a_copy(frame, name):
    out = apply_fault(frame, name, 0.0, _rng())
    np.testing.assert_array_equal(out, frame)
    assert out is not frame


@pytest.mark.parametrize("name", ["tilt", "lateral_shift", "glare", "smear", "noise_jpeg"])
def test_different_seeds_differ(frame, name):
    outs = [fault(frame, name, 4, _rng(seed)) for seed in range(4)]
    assert any(not np.array_equal(outs[0], o) for o in outs[1:])


@pytest.mark.parametrize("name", BELT_FAULTS)
def test_damage_grows_along_the_grid(frame, name):
    # Same seed at every magnitude: each fault draws its random choices before the magnitude.
    damage = [_damage(apply_fault(frame, name, m, _rng(5)), frame) for m in FAULTS[name].grid]
    assert damage[0] > 0
    # A shifted texture stops decorrelating once the shift passes the ore blobs' size, so on
    # some frames lateral_shift's damage flattens (and dips up to ~6 %) at the end of the grid.
    slack = 0.9 if name == "lateral_shift" else 1.0
    assert all(b >= slack * a for a, b in itertools.pairwise(damage)), damage
    assert damage[-1] > 2 * damage[0]


@pytest.mark.parametrize("name", BELT_FAULTS)
def test_other_dtypes_and_channel_counts(name):
    rng = np.random.default_rng(0)
    for image in (
        rng.integers(0, 6000, (20, 24, 13), dtype=np.uint16),
        rng.random((16, 12, 1), dtype=np.float32),
        rng.integers(0, 256, (5, 4, 4), dtype=np.uint8),
    ):
        out = apply_fault(image, name, FAULTS[name].medium, _rng())
        assert out.shape == image.shape and out.dtype == image.dtype


def test_belt_blur_acts_along_the_belt_only(frame):
    across = np.broadcast_to(frame[64:65], frame.shape).copy()  # constant along axis 0
    out = apply_fault(across, "belt_blur", 8.0, _rng())
    np.testing.assert_array_equal(out[10:-10], across[10:-10])
    along = np.broadcast_to(frame[:, 64:65], frame.shape).copy()  # constant along axis 1
    out = apply_fault(along, "belt_blur", 8.0, _rng())
    assert np.abs(out.astype(int) - along).max() > 10
    # Box of 8 px: the row profile is a running mean along axis 0.
    col = along[:, 0, 0].astype(np.float64)
    expected = np.convolve(col, np.r_[0.5, np.ones(7), 0.5] / 8.0, mode="same")
    np.testing.assert_allclose(out[10:-10, 0, 0], expected[10:-10], atol=1.0)


def test_lateral_shift_moves_a_stripe_by_a_tenth_of_the_width():
    image = np.full((128, 128, 3), 40, np.uint8)
    image[:, 60:64] = 220
    out = apply_fault(image, "lateral_shift", 10.0, _rng())
    cols = np.flatnonzero(out[64, :, 0] > 150)
    moved = cols.mean() - 61.5
    assert abs(abs(moved) - 12.8) <= 0.5
    assert len(cols) == 4
    # The exposed side is dark, close to the edge columns.
    exposed = out[:, :13] if moved > 0 else out[:, -13:]
    assert abs(float(exposed.mean()) - 40) < 3


def test_lateral_shift_fill_matches_the_rubber(frame):
    out = apply_fault(frame, "lateral_shift", 15.0, _rng())
    shift = round(0.15 * 128)
    side = out[:, :shift] if np.array_equal(out[:, shift:], frame[:, :-shift]) else out[:, -shift:]
    rubber = np.concatenate([frame[:, :3], frame[:, -3:]], axis=1)
    assert abs(float(side.mean()) - float(rubber.mean())) < 10
    assert side.std() > 0  # mild noise, not a flat band


def test_tilt_is_keystone_plus_small_roll():
    image = np.zeros((128, 128, 3), np.uint8)
    image[:, 40:88] = 200
    # Horizontal scale 1 -/+ s on the far/near edge, s = tan(pitch) * (H / 2) / (1.5 * side).
    s = math.tan(math.radians(15.0)) / 3.0
    edge = 63.5 / 64.0  # row centres 0 and 127 sit half a pixel inside the frame edge
    signs = set()
    for seed in range(6):
        out = apply_fault(image, "tilt", 15.0, _rng(seed))
        width = out[..., 0].astype(np.float64).sum(axis=1) / 200.0  # band width, sub-pixel
        sign = 1 if width[0] < width[-1] else -1
        signs.add(sign)
        assert abs(width[0] - 48 * (1 - sign * s * edge)) < 1.0
        assert abs(width[-1] - 48 * (1 + sign * s * edge)) < 1.0
        assert abs(width[64] - 48) < 1.0
        # The roll (5 degrees) moves the band's centre sideways from top to bottom.
        cols = np.arange(128)
        centre = (out[..., 0] * cols).sum(axis=1) / out[..., 0].sum(axis=1)
        assert abs(abs(centre[-1] - centre[0]) - 127 * math.tan(math.radians(5.0))) < 2.5
    assert signs == {-1, 1}  # random sign of the pitch


def test_exposure_clip_saturates_with_positive_ev(frame):
    before = int((frame == 255).sum())
    seed = next(s for s in range(20) if np.random.default_rng(s).integers(2))  # positive sign
    counts = [
        int((apply_fault(frame, "exposure_clip", ev, _rng(seed)) == 255).sum())
        for ev in (0.5, 1.0, 2.0)
    ]
    assert before <= counts[0] < counts[1] < counts[2]


def test_exposure_clip_gain_is_in_linear_light():
    image = np.full((4, 4, 3), 100, np.uint8)
    seed = next(s for s in range(20) if np.random.default_rng(s).integers(2))
    out = apply_fault(image, "exposure_clip", 1.0, _rng(seed))
    expected = 255 * ((100 / 255) ** 2.2 * 2.0) ** (1 / 2.2)
    assert abs(int(out[0, 0, 0]) - expected) <= 1


def test_wb_drift_tilts_red_against_blue():
    image = np.full((4, 4, 3), 120, np.uint8)
    out = apply_fault(image, "wb_drift", 20.0, _rng()).astype(int)
    red, green, blue = out[0, 0]
    assert green == 120 and (red - 120) * (blue - 120) < 0


def test_glare_adds_a_bright_blob(frame):
    out = apply_fault(frame, "glare", 0.5, _rng())
    diff = out.astype(int) - frame
    assert diff.min() >= 0 and diff.max() >= 100
    assert (diff > 2).mean() < 0.6  # a patch, not the whole frame


def test_smear_covers_part_of_the_frame(frame):
    out = apply_fault(frame, "smear", 40.0, _rng())
    changed = (np.abs(out.astype(int) - frame).max(axis=2) > 2).mean()
    assert 0.15 < changed < 0.8


def test_noise_jpeg_changes_the_image(frame):
    out = apply_fault(frame, "noise_jpeg", 3.0, _rng())
    assert _damage(out, frame) > 2
    assert jpeg_quality(0.0) == 95 and jpeg_quality(3.0) == 71 and jpeg_quality(20.0) == 10


@pytest.mark.parametrize("name,count", [("combo2", 2), ("combo3", 3)])
def test_combos_apply_distinct_faults_in_physical_order(frame, name, count):
    for seed in range(5):
        rng = _rng(seed)
        names = draw_combo(name, rng)
        assert len(set(names)) == count and set(names) <= set(BELT_FAULTS)
        assert list(names) == sorted(names, key=PHYSICAL_ORDER.index)
        expected = frame
        for single in names:
            expected = apply_fault(expected, single, magnitude(single, 4), rng)
        out = fault(frame, name, 4, _rng(seed))
        np.testing.assert_array_equal(out, expected)
        for single in BELT_FAULTS:
            assert not np.array_equal(out, fault(frame, single, 4, _rng(seed)))


def test_through_corruptions(frame):
    assert set(BELT_SUITE) <= set(CORRUPTIONS)
    out = corrupt(frame, "tilt", 3, _rng())
    np.testing.assert_array_equal(out, fault(frame, "tilt", 3, _rng()))
    np.testing.assert_array_equal(
        CORRUPTIONS["combo3"](frame, 2, _rng()), fault(frame, "combo3", 2, _rng())
    )
    from minewatch import corruptions

    assert corruptions.BELT_SUITE is BELT_SUITE and "BELT_SUITE" in corruptions.__all__


def test_errors(frame):
    with pytest.raises(ConfigError, match="unknown belt fault 'fog'"):
        fault(frame, "fog", 1, _rng())
    with pytest.raises(ConfigError, match="unknown belt fault"):
        apply_fault(frame, "combo2", 1.0, _rng())
    with pytest.raises(ConfigError, match="unknown belt fault"):
        magnitude("fog", 1)
    with pytest.raises(ConfigError, match="unknown belt combo"):
        draw_combo("combo9", _rng())
    with pytest.raises(ConfigError, match=r"severity must be in 0\.\.5"):
        fault(frame, "tilt", 6, _rng())
    with pytest.raises(ConfigError, match="severity must be an int"):
        fault(frame, "tilt", 1.5, _rng())
    with pytest.raises(ConfigError, match="magnitude"):
        apply_fault(frame, "tilt", -1.0, _rng())
    with pytest.raises(ConfigError, match="magnitude"):
        apply_fault(frame, "tilt", 80.0, _rng())
    with pytest.raises(InputError, match=r"\(H, W, C\)"):
        fault(frame[..., 0], "tilt", 1, _rng())
    with pytest.raises(InputError, match=r"\(H, W, C\)"):
        apply_fault(np.zeros((0, 4, 3), np.uint8), "glare", 0.1, _rng())
    with pytest.raises(InputError, match="dtype"):
        fault(frame.astype(bool), "glare", 1, _rng())
    assert cf.MEDIUM is MEDIUM
