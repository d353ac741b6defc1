"""Belt frame sets of their own cameras: what the robustness benchmark trains and tests on."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from minewatch.synth.frames import GRADES, CameraLook, make_frame, write_belt_set


def rows(folder):
    with open(folder / "labels.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_sets_of_two_seeds_share_no_camera_and_grades_are_balanced(tmp_path):
    a = write_belt_set(tmp_path / "a", frames=24, cameras=3, seed=1, frame_size=64)
    b = write_belt_set(tmp_path / "b", frames=24, cameras=3, seed=2, frame_size=64)
    assert a["frames"] == 24 and a["grades"] == dict.fromkeys(GRADES, 6)
    assert not set(a["cameras"]) & set(b["cameras"])
    got = rows(tmp_path / "a")
    assert len(got) == 24 and {r["camera_id"] for r in got} == set(a["cameras"])
    assert {r["label"] for r in got} == set(GRADES)
    image = np.asarray(Image.open(tmp_path / "a" / got[0]["path"]))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_same_seed_same_bytes(tmp_path):
    write_belt_set(tmp_path / "a", frames=8, cameras=2, seed=5, frame_size=32)
    write_belt_set(tmp_path / "b", frames=8, cameras=2, seed=5, frame_size=32)
    for r in rows(tmp_path / "a"):
        assert (tmp_path / "a" / r["path"]).read_bytes() == (
            tmp_path / "b" / r["path"]
        ).read_bytes()


def test_a_camera_look_changes_the_frame_and_the_reference_look_does_not():
    textures = None
    ref = make_frame("high", 64, np.random.default_rng(0), textures)
    same = make_frame("high", 64, np.random.default_rng(0), textures, CameraLook())
    warm = make_frame("high", 64, np.random.default_rng(0), textures,
                      CameraLook(gain=1.05, tint=(1.03, 1.0, 0.97)))  # fmt: skip
    np.testing.assert_array_equal(ref, same)
    red, blue = (warm[..., c].mean() / ref[..., c].mean() for c in (0, 2))
    assert red > 1.06 and red > blue + 0.04


def test_cli_writes_only_frames(tmp_path):
    from minewatch.cli.main import cli

    out = tmp_path / "belt"
    res = CliRunner().invoke(
        cli, ["synth", "--out", str(out), "--belt-frames", "8", "--belt-cameras", "2",
              "--frame-size", "32", "--seed", "3"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["frames"]
    assert len(rows(out / "frames")) == 8
    bad = CliRunner().invoke(cli, ["synth", "--out", str(tmp_path / "x"), "--belt-frames", "2",
                                   "--belt-cameras", "4"])  # fmt: skip
    assert bad.exit_code != 0 and "2 frames for 4 cameras" in bad.output


def test_too_few_frames_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="frames >= cameras"):
        write_belt_set(tmp_path, frames=1, cameras=2, seed=0)
