"""The ground truth says which pits are illegal by construction, independently of
the inference job's rule; the two must agree on every pit of every date."""

import ast
import json
from pathlib import Path

import pytest
from shapely.geometry import shape

from minewatch.sites import assess_legality
from minewatch.synth import make_ground_truth

SYNTH = Path(__file__).parents[2] / "minewatch" / "synth"


def _features(path):
    return json.loads(Path(path).read_text())["features"]


def _check(result):
    """Compare the written truth with assess_legality; return the reasons seen."""
    conc = [(f["properties"]["licence_id"], shape(f["geometry"])) for f in _features(
        result.concessions)]  # fmt: skip
    prot = [(f["properties"]["name"], shape(f["geometry"])) for f in _features(
        result.protected_areas)]  # fmt: skip
    by_licence, by_name = dict(conc), dict(prot)
    status: dict[str, tuple] = {}
    pits = 0
    for truth, illegal in zip(result.truth, result.illegal, strict=True):
        flagged = {}
        for f in _features(truth):
            p = f["properties"]
            if p["class"] != "mining_scar":
                continue
            geom = shape(f["geometry"])
            by_rule = assess_legality(geom, conc, prot)
            by_construction = (p["illegal"], p["reason"], p["licence_id"])
            assert by_construction == by_rule, (truth.name, p["id"])
            # A pit keeps its status as it widens: still inside its own concession,
            # still clear of every area, or still inside its protected area.
            assert status.setdefault(p["id"], by_construction) == by_construction, p["id"]
            if not p["illegal"]:
                assert geom.within(by_licence[p["licence_id"]]), p["id"]
            elif p["reason"] == "outside_concession":
                assert not any(geom.intersects(g) for g in by_licence.values()), p["id"]
                assert not any(geom.intersects(g) for g in by_name.values()), p["id"]
            else:
                assert any(geom.within(g) for g in by_name.values()), p["id"]
            if p["illegal"]:
                flagged[p["id"]] = p["reason"]
            pits += 1
        got = {f["properties"]["id"]: f["properties"]["reason"] for f in _features(illegal)}
        assert got == flagged
    assert pits
    return {reason for _, reason, _ in status.values()}


@pytest.mark.parametrize("world", ["flat", "realistic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tiny_truth_agrees_with_the_rule(tmp_path, seed, world):
    result = make_ground_truth(tmp_path, size="tiny", seed=seed, frames=False, world=world)
    reasons = _check(result)
    assert None in reasons and "outside_concession" in reasons


@pytest.mark.slow
@pytest.mark.parametrize("world", ["flat", "realistic"])
@pytest.mark.parametrize("seed", [7, 8])
def test_demo_truth_agrees_with_the_rule(tmp_path, seed, world):
    """Demo size: 12 pits over 4 dates (about 10 s a world on one core)."""
    result = make_ground_truth(tmp_path, size="demo", seed=seed, frames=False, world=world)
    assert _check(result) == {None, "outside_concession", "protected_area"}


def test_synth_does_not_use_the_inference_rule():
    """No module of minewatch.synth imports minewatch.sites or names assess_legality."""
    for path in SYNTH.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert node.module != "minewatch.sites", path.name
                assert all(a.name != "assess_legality" for a in node.names), path.name
            elif isinstance(node, ast.Import):
                assert all(not a.name.startswith("minewatch.sites") for a in node.names)
            elif isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                assert name != "assess_legality", path.name
