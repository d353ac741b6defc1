"""Scoring per (object, date) on hand-made cases (minewatch.scoring)."""

from __future__ import annotations

import math

import pytest
import shapely

from minewatch.scoring import KindScore, score_kind, score_sites, summarize
from minewatch.sites import KindRule, SiteRules


def box(x: float, y: float, side: float = 10.0) -> shapely.Polygon:
    return shapely.box(x, y, x + side, y + side)


def truth_obj(oid: str, cls: str, geom: shapely.Polygon, **props: object) -> dict:
    return {"id": oid, "class": cls, "geometry": geom, "area_m2": geom.area, **props}


def obs(site: str, kind: str, date: str, geom: shapely.Polygon, **props: object) -> dict:
    return {
        "site_id": site,
        "kind": kind,
        "date": date,
        "geometry": geom,
        "flagged": False,
        "status": "confirmed",
        "area_m2": geom.area,
        **props,
    }


def test_kind_score_rates_and_empty_cases():
    k = KindScore(truth=4, found=5, matched=3)
    assert k.precision == pytest.approx(0.6) and k.recall == pytest.approx(0.75)
    assert k.f1 == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert math.isnan(KindScore(truth=3).precision) and KindScore(truth=3).recall == 0.0
    assert math.isnan(KindScore(truth=3).f1)
    assert KindScore(truth=2, found=2, matched=0).f1 == 0.0


def test_a_pile_found_on_one_date_of_two_has_recall_one_half():
    """The unit is (object, date): finding a pile once is not finding it every time."""
    truth = {d: [truth_obj("p1", "stockpile", box(0, 0))] for d in ("2024-01-01", "2024-02-01")}
    found = [obs("s1", "stockpile", "2024-01-01", box(1, 0))]
    report = score_sites(found, truth)
    k = report["kinds"]["stockpile"]
    assert (k["truth"], k["found"], k["matched"]) == (2, 1, 1)
    assert k["recall"] == 0.5 and k["precision"] == 1.0


def test_iou_threshold_and_one_to_one_matching():
    truth = {"2024-01-01": [truth_obj("p1", "stockpile", box(0, 0))]}
    # IoU of box(6, 0) with box(0, 0): 40 / 160 = 0.25 < 0.3; box(2, 0): 80 / 120
    far = obs("far", "stockpile", "2024-01-01", box(6, 0))
    near = obs("near", "stockpile", "2024-01-01", box(2, 0))
    twin = obs("twin", "stockpile", "2024-01-01", box(3, 0))
    k = score_sites([far], truth)["kinds"]["stockpile"]
    assert k["matched"] == 0 and k["precision"] == 0.0
    assert score_sites([far], truth, min_iou=0.2)["kinds"]["stockpile"]["matched"] == 1
    # two sites on one pile: one matches, the other is a false site
    k = score_sites([near, twin], truth)["kinds"]["stockpile"]
    assert (k["matched"], k["found"], k["precision"]) == (1, 2, 0.5)


def test_kinds_do_not_match_each_other_and_dates_do_not_mix():
    truth = {
        "2024-01-01": [truth_obj("p1", "stockpile", box(0, 0))],
        "2024-02-01": [truth_obj("pit1", "mining_scar", box(50, 50))],
    }
    found = [
        obs("a", "mining_scar", "2024-01-01", box(0, 0)),  # right place, wrong kind
        obs("b", "mining_scar", "2024-01-01", box(50, 50)),  # right kind, wrong date
    ]
    report = score_sites(found, truth)
    assert report["kinds"]["stockpile"]["recall"] == 0.0
    assert report["kinds"]["mining_scar"]["matched"] == 0
    assert report["kinds"]["mining_scar"]["found"] == 2


def test_candidates_are_not_scored_unless_asked():
    truth = {"2024-01-01": [truth_obj("p1", "stockpile", box(0, 0))]}
    found = [
        obs("s1", "stockpile", "2024-01-01", box(0, 0)),
        obs("s2", "stockpile", "2024-01-01", box(100, 100), status="candidate"),
    ]
    assert score_sites(found, truth)["kinds"]["stockpile"]["precision"] == 1.0
    assert score_sites(found, truth, statuses=None)["kinds"]["stockpile"]["precision"] == 0.5


def test_flagged_set_precision_and_recall():
    legal = truth_obj("pit1", "mining_scar", box(0, 0), illegal=False)
    bad = truth_obj("pit2", "mining_scar", box(50, 0), illegal=True)
    bad2 = truth_obj("pit3", "mining_scar", box(100, 0), illegal=True)
    truth = {"2024-01-01": [legal, bad, bad2]}
    found = [
        obs("a", "mining_scar", "2024-01-01", box(0, 0), flagged=True),  # flags a legal pit
        obs("b", "mining_scar", "2024-01-01", box(50, 0), flagged=True),  # right
        obs("c", "mining_scar", "2024-01-01", box(100, 0), flagged=False),  # found, not flagged
        obs("d", "mining_scar", "2024-01-01", box(300, 0), flagged=True),  # nothing there
    ]
    f = score_sites(found, truth)["flagged"]
    assert f["truth"] == ["pit2", "pit3"] and f["found"] == ["pit2"]
    assert (f["flagged_pairs"], f["truth_pairs"], f["unmatched"]) == (3, 2, 2)
    assert f["precision"] == pytest.approx(1 / 3) and f["recall"] == 0.5


def test_the_visible_unit_ignores_objects_mostly_under_cloud():
    """An object more than half under cloud counts neither as truth nor, matched, as found."""
    d = "2024-01-01"
    truth = {
        d: [
            truth_obj("p1", "stockpile", box(0, 0), occluded=0.0),
            truth_obj("p2", "stockpile", box(50, 0), occluded=0.9),  # seen through cloud
            truth_obj("p3", "stockpile", box(100, 0), occluded=0.6),  # missed under cloud
            truth_obj("p4", "stockpile", box(150, 0), occluded=0.5),  # half: still counts
            truth_obj("pit", "mining_scar", box(0, 50), occluded=1.0, illegal=True),
            truth_obj("pit2", "mining_scar", box(50, 50), occluded=0.0, illegal=True),
        ]
    }
    found = [
        obs("a", "stockpile", d, box(0, 0)),
        obs("b", "stockpile", d, box(50, 0)),
        obs("c", "stockpile", d, box(300, 0)),  # nothing there: false either way
        obs("e", "mining_scar", d, box(0, 50), flagged=True),
        obs("f", "mining_scar", d, box(50, 50), flagged=True),
    ]
    every = score_sites(found, truth)
    k = every["kinds"]["stockpile"]
    assert (k["truth"], k["found"], k["matched"]) == (4, 3, 2)
    visible = score_sites(found, truth, max_occluded=0.5)
    k = visible["kinds"]["stockpile"]
    assert (k["truth"], k["found"], k["matched"]) == (2, 2, 1)
    assert k["precision"] == 0.5 and k["recall"] == 0.5
    pits = visible["kinds"]["mining_scar"]
    assert (pits["truth"], pits["found"], pits["matched"]) == (1, 1, 1)
    f = visible["flagged"]
    assert (f["truth_pairs"], f["flagged_pairs"], f["unmatched"]) == (1, 1, 0)
    assert f["precision"] == 1.0 and f["recall"] == 1.0
    assert every["flagged"]["truth_pairs"] == 2 and every["flagged"]["flagged_pairs"] == 2
    assert ("b", d) not in visible["matched"] and visible["matched"][("a", d)] == "p1"
    flat = summarize(
        {
            **every,
            "kinds_visible": visible["kinds"],
            "flagged_visible": visible["flagged"],
            "stockpile_areas": [],
            "stockpile_volumes": [],
        }
    )
    assert flat["stockpile_recall"] == 0.5 and flat["stockpile_recall_visible"] == 0.5
    assert flat["stockpile_precision_visible"] == 0.5 and flat["flagged_recall_visible"] == 1.0


def test_score_kind_pairs_index_found_and_truth():
    score, pairs = score_kind({"d": [box(100, 0), box(0, 0)]}, {"d": [box(0, 0)]})
    assert pairs == {("d", 1): 0} and score.matched == 1


def test_summarize_flattens_and_takes_median_errors():
    report = {
        "kinds": {"stockpile": KindScore(2, 2, 1).as_dict()},
        "flagged": {"precision": 1.0, "recall": 0.5},
        "stockpile_areas": [{"error": 0.1}, {"error": -0.3}, {"error": 0.05}],
        "stockpile_volumes": [{"error": None}, {"error": 0.02}],
        "vessels": None,
    }
    s = summarize(report)
    assert s["stockpile_precision"] == 0.5 and s["stockpile_recall"] == 0.5
    assert s["stockpile_area_median_error"] == pytest.approx(0.1)
    assert s["stockpile_volume_median_error"] == pytest.approx(0.02)
    assert math.isnan(s["vessel_recall"])


def test_site_rules_take_the_models_points_and_options_win():
    points = {
        "threshold": 0.4,
        "smooth": 3,
        "kinds": {"stockpile": {"min_score": 0.7, "min_area_m2": 300.0, "confirm_score": 0.9}},
    }
    rules = SiteRules.from_operating_points(points)
    assert (rules.threshold, rules.smooth) == (0.4, 3)
    assert rules.rule("stockpile") == KindRule(0.7, 300.0, 0.9)
    assert rules.rule("haul_road") == KindRule()  # not chosen: built-in defaults
    given = SiteRules.from_operating_points(points, min_score=0.5, smooth=1)
    assert given.rule("stockpile") == KindRule(0.5, 300.0, 0.9) and given.smooth == 1
    assert given.rule("haul_road").min_score == 0.5
    plain = SiteRules.from_operating_points(None)
    assert (plain.threshold, plain.smooth, plain.rule("x")) == (0.5, 1, KindRule())


def test_status_one_sighting_with_a_modest_score_is_a_candidate():
    rules = SiteRules.from_operating_points({"kinds": {"stockpile": {"confirm_score": 0.9}}})
    assert rules.status("stockpile", 1, 0.85) == "candidate"
    assert rules.status("stockpile", 1, 0.95) == "confirmed"
    assert rules.status("stockpile", 2, 0.1) == "confirmed"
    assert rules.status("haul_road", 1, 0.79) == "candidate"  # default 0.8


def test_class_weights_move_the_winner_and_leave_uncovered_cells():
    import numpy as np

    from minewatch.sites import reweight

    probs = np.zeros((2, 1, 2), np.float32)
    probs[:, 0, 0] = (0.6, 0.4)  # column 1 uncovered: all zero
    out = reweight(probs, (1.0, 3.0))
    np.testing.assert_allclose(out[:, 0, 0], (0.6 / 1.8, 1.2 / 1.8), rtol=1e-6)
    assert out[:, 0, 1].tolist() == [0.0, 0.0]
    rules = SiteRules.from_operating_points({"class_weights": [1.0, 3.0]})
    assert rules.class_weights == (1.0, 3.0)


def test_class_weights_that_do_not_fit_the_model_are_refused():
    from minewatch.errors import ConfigError

    with pytest.raises(ConfigError, match="2 values for the model's 3 classes"):
        SiteRules.from_operating_points({"class_weights": [1.0, 2.0]}, classes=("a", "b", "c"))
