"""Quicklooks a person reads at a glance: a stretch clouds do not darken, a legend, a scale."""

from __future__ import annotations

import numpy as np
import shapely
from PIL import Image

from minewatch.scenes import SceneRef
from pipelines.infer.quicklook import _scale_length, clear_sky, scene_quicklook, short_site, stretch
from tests.factories import ORIGIN, squares_scene


def test_clouds_saturate_instead_of_darkening_the_ground():
    rng = np.random.default_rng(0)
    ground = rng.uniform(500, 1500, (3, 100, 100)).astype(np.float32)
    cloudy = ground.copy()
    cloudy[:, :25, :] = 9000  # a quarter of the scene under cloud
    valid = np.ones((100, 100), bool)
    assert not clear_sky(cloudy, valid)[:25].any() and clear_sky(cloudy, valid)[25:].all()
    out = stretch(cloudy, valid)
    assert (out[:, :25] == 255).all()  # clouds white
    # the ground spans the range as it does without the cloud
    assert 100 < np.median(out[:, 25:]) < 200
    np.testing.assert_allclose(np.median(out[:, 25:]), np.median(stretch(ground, valid)), atol=8)
    invalid = valid.copy()
    invalid[50:, :] = False
    assert (stretch(ground, invalid)[:, 50:] == 0).all()


def test_scale_bar_lengths_are_round():
    assert _scale_length(10_240) == 2000 and _scale_length(960) == 100
    assert _scale_length(4_000) == 500
    assert short_site("stockpile-3fa9c1d2e0") == "stockpile-3fa9" and short_site("x") == "x"


def test_a_quicklook_with_sites_of_several_kinds(tmp_path):
    path = squares_scene(tmp_path, [(16, 16, 32), (64, 64, 16)], "2024-01-01")
    ref = SceneRef("scene_2024-01-01", "scene", path, (path,), acquired="2024-01-01T00:00:00+00:00")
    left, top = ORIGIN.c, ORIGIN.f
    sites = [
        (shapely.box(left + 160, top - 480, left + 480, top - 160), False, "stockpile"),
        (shapely.box(left + 640, top - 800, left + 800, top - 640), True, "mining_scar"),
        (shapely.box(left + 10, top - 50, left + 50, top - 10), False),  # kind left out
    ]
    out = tmp_path / "q.png"
    scene_quicklook(ref, sites, str(out), model_version="v7")
    image = np.asarray(Image.open(out).convert("RGB"))
    assert image.shape[0] > 96 and image.shape[1] > 96  # the scene plus title and margins
    red = (image[..., 0] > 200) & (image[..., 1] < 60) & (image[..., 2] < 60)
    yellow = (image[..., 0] > 200) & (image[..., 1] > 180) & (image[..., 2] < 60)
    assert red.any() and yellow.any()  # the flagged outline and the stockpile's
