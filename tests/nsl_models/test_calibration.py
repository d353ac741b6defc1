"""Calibration arithmetic and operating-point choice on hand-made cases."""

from __future__ import annotations

import numpy as np
import pytest

from nsl_models.calibration import (
    ValidationScenes,
    _confirm_score,
    choose_operating_points,
    logit_adjustment,
)

CLASSES = ("background", "stockpile", "mining_scar")
#: 10 m pixels in a UTM zone: areas in m² are 100 per pixel.
TRANSFORM = (10.0, 0.0, 500_000.0, 0.0, -10.0, 4_000_000.0)
CRS = "EPSG:32618"


def test_logit_adjustment_undoes_undersampling_and_weights():
    """A prior shifted by keep rate s_k and weight w_k comes back with log(1 / (s_k w_k))."""
    full = np.array([900.0, 90.0, 10.0])
    trained = np.array([90.0, 90.0, 10.0])  # background kept at 10 %
    weights = np.array([1.0, 2.0, 4.0])
    adj = logit_adjustment(full, trained, weights)
    raw = np.log([10.0, 0.5, 0.25])
    np.testing.assert_allclose(adj, raw - raw.mean(), rtol=1e-6)
    # The arithmetic in full: a model matching the shifted prior exactly ...
    p = np.array([0.6, 0.3, 0.1])
    shifted = p * trained / full * weights
    logits = np.log(shifted / shifted.sum())
    # ... gives the true posterior back once adjusted.
    back = np.exp(logits + adj)
    np.testing.assert_allclose(back / back.sum(), p, rtol=1e-6)


def test_logit_adjustment_leaves_unseen_classes_and_no_shift_alone():
    np.testing.assert_allclose(logit_adjustment([5, 5, 0], [5, 5, 0]), 0.0)
    adj = logit_adjustment([10, 0, 10], [1, 0, 10])
    assert adj[1] == 0.0 and adj[0] > adj[2]


def _scene(probs_fn: object = None) -> ValidationScenes:
    """One 40 x 40 scene in four 20 px tiles: a 6 x 6 pile (found), a 2 x 2 speckle (false)."""
    h = w = 20
    truth = np.zeros((40, 40), np.int32)
    truth[5:11, 5:11] = 1  # a pile of 36 px = 3,600 m²
    probs = np.zeros((40, 40, 3), np.float32)
    probs[..., 0] = 1.0
    probs[5:11, 5:11] = (0.1, 0.9, 0.0)  # found, confident
    probs[30:32, 30:32] = (0.3, 0.7, 0.0)  # a false speckle of 400 m², score 0.7
    tiles, masks, rows, cols = [], [], [], []
    for r in (0, 20):
        for c in (0, 20):
            tiles.append(probs[r : r + h, c : c + w])
            masks.append(truth[r : r + h, c : c + w])
            rows.append(r)
            cols.append(c)
    return ValidationScenes.mosaic(
        np.stack(tiles), np.stack(masks), ["s"] * 4, rows, cols, {"s": TRANSFORM}, {"s": CRS}
    )


def test_mosaic_lays_tiles_back():
    scenes = _scene()
    assert scenes.probs["s"].shape == (3, 40, 40) and scenes.covered["s"].all()
    assert scenes.truth["s"][5:11, 5:11].min() == 1 and scenes.truth["s"].sum() == 36


def test_operating_points_drop_the_false_speckle_and_keep_the_pile():
    points = choose_operating_points(_scene(), CLASSES, ["stockpile", "mining_scar"])
    pile = points["kinds"]["stockpile"]
    # Either cut removes the speckle: score > 0.7, or area > 400 m².
    assert pile["min_score"] > 0.7 or pile["min_area_m2"] > 400.0
    assert pile["validation"] == {"truth": 1, "found": 1, "matched": 1, "f1": 1.0}
    # With smoothing the speckle's score falls; either way F1 is 1 and the pile stays.
    assert points["smooth"] in (1, 3)
    assert points["kinds"]["mining_scar"]["validation"]["truth"] == 0
    assert "min_score" not in points["kinds"]["mining_scar"]


@pytest.mark.parametrize(
    ("sightings", "cut"),
    [
        ([(0.95, True), (0.9, True), (0.8, False), (0.7, True)], 0.9),
        ([(0.95, False)], 1.0),
        ([], 1.0),
        ([(0.99, True)] * 9 + [(0.6, False)], 0.6),  # 9 / 10 right at 0.6
    ],
)
def test_confirm_score_is_the_least_score_with_target_precision(sightings, cut):
    assert _confirm_score(sightings) == cut


def test_a_weaker_prior_correction_is_chosen_when_full_calibration_loses_the_piles():
    """Calibrated probabilities under-call a pile: the decision takes part of the shift back."""
    truth = np.zeros((1, 20, 20), np.int32)
    truth[0, 5:11, 5:11] = 1
    probs = np.zeros((1, 20, 20, 3), np.float32)
    probs[..., 0] = 1.0
    probs[0, 5:11, 5:11] = (0.6, 0.4, 0.0)  # background wins as served
    scenes = ValidationScenes.mosaic(probs, truth, ["s"], [0], [0], {"s": TRANSFORM}, {"s": CRS})
    served = choose_operating_points(scenes, CLASSES, ["stockpile"])
    assert served["prior_strength"] == 1.0 and served["kinds"]["stockpile"]["validation"]["f1"] == 0
    adjust = [1.0, -1.0, 0.0]  # calibration moved mass from stockpile to background
    points = choose_operating_points(scenes, CLASSES, ["stockpile"], adjust)
    assert points["prior_strength"] < 1.0
    assert points["kinds"]["stockpile"]["validation"]["f1"] == 1.0
    t = points["prior_strength"]
    np.testing.assert_allclose(points["class_weights"], np.exp((t - 1.0) * np.array(adjust)))
