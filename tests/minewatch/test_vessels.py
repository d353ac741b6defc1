"""Vessel footprints, berths and licences from a class raster, scored against the truth."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from rasterio.crs import CRS
from scipy import ndimage
from shapely.geometry import Point

from minewatch.errors import ConfigError, InputError
from minewatch.synth.vessels import (
    VesselSpec,
    VesselTruth,
    coverage,
    paint_vessels,
    place_vessels,
    plan_berths,
    write_licensed_ports,
)
from minewatch.tables import sites_schema, vessels_schema, write_geoparquet
from minewatch.vessels import (
    Port,
    PortRegistry,
    VesselConfig,
    detect_vessels,
    find_vessels,
    judge_vessels,
    match_vessels,
    ndwi_water,
)
from tests.minewatch.test_synth_vessels import PIXEL, TRANSFORM, coast_and_river

EPSG = "EPSG:32633"
CLASSES = ("background", "water", "vessel")
SPEC = VesselSpec(spacing_m=1200.0)
TOLERANCE_M = 50.0


def class_raster(water: np.ndarray, vessels: list[VesselTruth], seed: int) -> np.ndarray:
    """Probabilities a good per-pixel model could give: blurred hull coverage plus noise."""
    rng = np.random.default_rng(seed)
    hull = coverage([v.polygon for v in vessels], TRANSFORM, water.shape)
    p_vessel = np.clip(ndimage.gaussian_filter(hull, 0.5) + rng.normal(0, 0.05, hull.shape), 0, 1)
    p_water = (1 - p_vessel) * np.clip(water + rng.normal(0, 0.05, hull.shape), 0, 1)
    return np.stack([1 - p_vessel - p_water, p_water, p_vessel]).astype(np.float32)


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    water = coast_and_river()
    crs = CRS.from_epsg(32633)
    berths = plan_berths(water, TRANSFORM, crs, np.random.default_rng(7), SPEC)
    path = write_licensed_ports(tmp_path_factory.mktemp("ports") / "licensed_ports.geojson", berths)
    out = []
    for t in range(4):
        vessels, _ = place_vessels(
            water, TRANSFORM, crs, np.random.default_rng(50 + t), t, berths, SPEC
        )
        out.append((vessels, class_raster(water, vessels, t)))
    return water, berths, path, out


def test_recall_precision_length_and_flags_against_truth(scenes):
    _, _, path, dated = scenes
    ports = PortRegistry.from_file(path)
    total = flagged_total = 0
    for t, (truth, probs) in enumerate(dated):
        rows, sites = find_vessels(
            probs, CLASSES, TRANSFORM, EPSG,
            scene_id=f"scene-{t}", acquired=f"2024-0{t + 1}-15T10:30:00Z",
            model_version="v1", ports=ports,
        )  # fmt: skip
        score = match_vessels(rows, truth, tolerance_m=TOLERANCE_M)
        assert score.recall == 1.0 and score.precision == 1.0, (score.missed, score.false)
        assert max(abs(e) for e in score.length_errors.values()) <= 0.20
        assert max(score.heading_errors.values()) <= 10.0
        assert score.flags_agree, (score.flagged_truth, score.flagged_found, score.false_flags)
        assert score.flagged_truth  # every date has a vessel at an unlicensed point
        by_id = {v.id: v for v in truth}
        for tid, j, _ in score.pairs:
            assert rows[j]["berthed"] is by_id[tid].berthed
            assert rows[j]["licensed"] is by_id[tid].licensed
        assert sorted(s["site_id"] for s in sites) == sorted(
            r["vessel_id"] for r in rows if r["flagged"]
        )
        for s in sites:
            assert s["kind"] == "vessel" and s["flagged"]
            assert "berthed at an unlicensed shore point" in s["reason"]
            assert "km from the nearest licensed port port-0" in s["reason"]
        total += len(truth)
        flagged_total += len(sites)
    assert total >= 12 and flagged_total >= 4


def test_rows_fit_the_schemas_and_write_as_geoparquet(scenes, tmp_path):
    _, _, path, dated = scenes
    truth, probs = dated[0]
    rows, sites = find_vessels(
        probs, CLASSES, TRANSFORM, EPSG, scene_id="s0", acquired="2024-01-15",
        model_version="v1", ports=PortRegistry.from_file(path),
    )  # fmt: skip
    target = tmp_path / "vessels" / "date=2024-01-15" / "s0__v1.parquet"
    write_geoparquet(str(target), rows, "vessels", vessels_schema())
    table = pq.read_table(target)
    assert table.num_rows == len(truth)
    assert table.schema.names == vessels_schema().names
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry"
    write_geoparquet(str(tmp_path / "sites" / "x.parquet"), sites, "sites", sites_schema())
    assert pq.read_table(tmp_path / "sites" / "x.parquet").num_rows == len(sites) >= 1
    for r in rows:
        assert 0 <= r["heading_deg"] < 180 and r["acquired"].tzinfo is not None
        assert -180 <= r["lon"] <= 180 and r["model_version"] == "v1"
        if r["berthed"]:
            assert r["shore_gap_m"] <= 20.0 and r["licensed"] is not None
        else:
            assert r["licensed"] is None and not r["flagged"]


def rectangle_raster(
    shape: tuple[int, int], rows: slice, cols: slice, value: float = 1.0
) -> np.ndarray:
    p = np.zeros(shape, np.float32)
    p[rows, cols] = value
    return p


@pytest.mark.parametrize("measure", ["moments", "rectangle"])
def test_axis_aligned_block_measures_exactly(measure):
    # 20 x 3 pixels, fully covered: 200 m by 30 m, heading north-south (0).
    p = rectangle_raster((40, 40), slice(10, 30), slice(18, 21))
    water = np.ones((40, 40), bool)
    (d,) = detect_vessels(p, water, TRANSFORM, EPSG, VesselConfig(measure=measure))
    assert d.length_m == pytest.approx(200.0, abs=1e-6)
    assert d.width_m == pytest.approx(30.0, abs=1e-6)
    assert d.heading_deg == pytest.approx(0.0, abs=1e-6) or d.heading_deg == pytest.approx(180.0)
    x, y = TRANSFORM @ (19.5, 20.0)
    assert (d.x, d.y) == pytest.approx((x, y))
    assert d.pixels == 60 and d.area_m2 == pytest.approx(6000.0)
    assert d.gap_m is None and not d.berthed  # no land anywhere


@pytest.mark.parametrize("heading", [0.0, 30.0, 45.0, 90.0, 135.0, 160.0])
def test_heading_from_north_clockwise(heading):
    from minewatch.synth.vessels import KINDS, hull_polygon

    cx, cy = TRANSFORM @ (40, 40)
    hull = hull_polygon(cx, cy, 250.0, 40.0, heading, KINDS["barge"])
    p = coverage([hull], TRANSFORM, (80, 80))
    (d,) = detect_vessels(p, np.ones((80, 80), bool), TRANSFORM, EPSG)
    err = abs(d.heading_deg - heading % 180) % 180
    assert min(err, 180 - err) < 2.0
    assert d.length_m == pytest.approx(250.0, rel=0.05)


@pytest.mark.parametrize(("water_px", "berthed"), [(0, True), (2, True), (3, False)])
def test_berthed_when_at_most_20_m_of_water_to_land(water_px, berthed):
    # Land in columns 0-9; a hull of 3 columns starting ``water_px`` columns off the shore.
    shape = (60, 40)
    water = np.ones(shape, bool)
    water[:, :10] = False
    c0 = 10 + water_px
    p = rectangle_raster(shape, slice(20, 40), slice(c0, c0 + 3))
    (d,) = detect_vessels(p, water, TRANSFORM, EPSG)
    assert d.gap_m == pytest.approx(water_px * PIXEL)
    assert d.berthed is berthed
    # Nearest shore point: on the land's edge, level with the hull centre.
    sx, sy = TRANSFORM @ (10, 30)
    assert (d.shore_x, d.shore_y) == pytest.approx((sx, sy), abs=PIXEL / 2 + 1e-6)
    assert d.shore_distance_m == pytest.approx((water_px + 1.5) * PIXEL, abs=PIXEL / 2 + 1e-6)


def test_ndwi_water_of_painted_scene_keeps_moving_ships_at_sea(scenes):
    # Hulls are NIR-bright (NDWI < 0): without joining them to the water each
    # ship would be its own "land", a moving ship would read as berthed.
    water, _, _, dated = scenes
    truth, probs = dated[1]
    bands = {
        "B03": np.where(water, 700.0, 900.0).astype(np.float32),
        "B08": np.where(water, 150.0, 2500.0).astype(np.float32),
    }
    paint_vessels(bands, truth, TRANSFORM)
    wet = ndwi_water(bands["B03"], bands["B08"])
    hull = coverage([v.polygon for v in truth], TRANSFORM, water.shape) > 0.9
    hull &= coverage([v.bridge for v in truth], TRANSFORM, water.shape) == 0
    assert not wet[hull].any()
    found = detect_vessels(probs[2], wet, TRANSFORM, EPSG)
    score = match_vessels(found, truth)
    assert score.recall == 1.0 and score.precision == 1.0
    for tid, j, _ in score.pairs:
        assert found[j].berthed is next(v.berthed for v in truth if v.id == tid)


def test_min_pixels_and_hysteresis():
    shape = (30, 30)
    water = np.ones(shape, bool)
    p = np.zeros(shape, np.float32)
    p[5, 5:7] = 0.9  # a 2-pixel boat: below min_pixels
    p[15, 5:20] = 0.3  # a thin barge, faint ...
    p[15, 12] = 0.6  # ... with one confident pixel
    p[25, 5:20] = 0.3  # faint everywhere: no core, not a vessel
    found = detect_vessels(p, water, TRANSFORM, EPSG)
    assert len(found) == 1 and found[0].pixels == 15
    plain = detect_vessels(p, water, TRANSFORM, EPSG, VesselConfig(grow_threshold=0.5))
    assert [d.pixels for d in plain] == []  # one pixel < min_pixels
    assert detect_vessels(p, water, TRANSFORM, EPSG, VesselConfig(min_pixels=1, grow_threshold=0.5))


def test_licence_check_any_crs_and_radius(tmp_path):
    shape = (60, 40)
    water = np.ones(shape, bool)
    water[:, :10] = False
    p = rectangle_raster(shape, slice(20, 40), slice(10, 13))
    (d,) = detect_vessels(p, water, TRANSFORM, EPSG)
    # A port 300 m north of the shore point, written in Web Mercator.
    from pyproj import Transformer

    assert d.shore_x is not None and d.shore_y is not None
    x, y = d.shore_x, d.shore_y + 300.0
    mx, my = Transformer.from_crs(EPSG, "EPSG:3857", always_xy=True).transform(x, y)
    doc = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}},
        "features": [
            {"type": "Feature", "properties": {"id": "jetty-A", "radius_m": 400},
             "geometry": {"type": "Point", "coordinates": [mx, my]}},
        ],
    }  # fmt: skip
    path = tmp_path / "ports.geojson"
    path.write_text(json.dumps(doc))
    ports = PortRegistry.from_file(path)
    (row,) = judge_vessels([d], EPSG, scene_id="s", acquired=None, model_version="v", ports=ports)
    assert row["licensed"] is True and not row["flagged"] and row["port_id"] == "jetty-A"
    assert row["port_distance_m"] == pytest.approx(300.0, abs=0.5)
    tight = PortRegistry([Port("jetty-A", None, None, 200.0, Point(x, y))], EPSG)
    (row,) = judge_vessels([d], EPSG, scene_id="s", acquired=None, model_version="v", ports=tight)
    assert row["flagged"] and row["licensed"] is False
    assert row["reason"] == (
        "berthed at an unlicensed shore point 0.3 km from the nearest licensed port jetty-A"
    )
    empty = PortRegistry([], EPSG)
    (row,) = judge_vessels([d], EPSG, scene_id="s", acquired=None, model_version="v", ports=empty)
    assert row["flagged"] and "no licensed port" in row["reason"]
    (row,) = judge_vessels([d], EPSG, scene_id="s", acquired=None, model_version="v")
    assert row["licensed"] is None and not row["flagged"] and row["port_id"] is None


def test_match_vessels_tolerance_cloud_and_false_flags():
    truth = [
        {"id": "a", "x": 0.0, "y": 0.0, "length_m": 100.0, "heading_deg": 10.0,
         "berthed": True, "licensed": False},
        {"id": "b", "x": 1000.0, "y": 0.0, "length_m": 200.0, "heading_deg": 170.0,
         "berthed": False, "licensed": None},
        {"id": "c", "x": 5000.0, "y": 0.0, "length_m": 200.0, "heading_deg": 0.0,
         "berthed": False, "licensed": None, "occluded": 0.8},
    ]  # fmt: skip
    found = [
        {"x": 30.0, "y": 40.0, "length_m": 110.0, "heading_deg": 175.0, "flagged": True},
        {"x": 1000.0, "y": 51.0, "length_m": 200.0, "heading_deg": 0.0, "flagged": True},
        {"x": 5000.0, "y": 0.0, "length_m": 200.0, "heading_deg": 0.0, "flagged": False},
    ]
    score = match_vessels(found, truth, tolerance_m=50.0)
    assert score.pairs == [("a", 0, 50.0)]  # exactly at the tolerance
    assert score.missed == ["b"] and score.false == [1] and score.ignored == ["c"]
    assert score.recall == 0.5 and score.precision == 0.5
    assert score.length_errors["a"] == pytest.approx(0.1)
    assert score.heading_errors["a"] == pytest.approx(15.0)  # axial: 10 vs 175
    assert score.flagged_truth == {"a"} == score.flagged_found
    assert score.false_flags == [1] and not score.flags_agree


def test_errors_name_the_problem(tmp_path):
    p = np.zeros((3, 10, 10), np.float32)
    with pytest.raises(ConfigError, match="no 'vessel' class"):
        find_vessels(p, ("a", "b", "c"), TRANSFORM, EPSG, scene_id="s", acquired=None,
                     model_version="v")  # fmt: skip
    with pytest.raises(ConfigError, match="no water class"):
        find_vessels(p, ("background", "land", "vessel"), TRANSFORM, EPSG, scene_id="s",
                     acquired=None, model_version="v")  # fmt: skip
    with pytest.raises(InputError, match="projected in metres"):
        detect_vessels(p[0], np.ones((10, 10), bool), TRANSFORM, "EPSG:4326")
    with pytest.raises(ValueError, match="same 2-D shape"):
        detect_vessels(p[0], np.ones((9, 10), bool), TRANSFORM, EPSG)
    with pytest.raises(ConfigError, match="grow_threshold"):
        VesselConfig(threshold=0.4, grow_threshold=0.5)
    with pytest.raises(ConfigError, match="measure"):
        VesselConfig(measure="pca")
    with pytest.raises(InputError, match="cannot read the licensed-ports file"):
        PortRegistry.from_file(tmp_path / "missing.geojson")
    bad = tmp_path / "bad.geojson"
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"port_id": "x", "radius_m": -5},
         "geometry": {"type": "Point", "coordinates": [15.0, 38.0]}}]}))  # fmt: skip
    with pytest.raises(InputError, match="radius_m=-5"):
        PortRegistry.from_file(bad)
    bad.write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"port_id": "x"}, "geometry": None}]}))  # fmt: skip
    with pytest.raises(InputError, match="feature 0 has no geometry"):
        PortRegistry.from_file(bad)
    with pytest.raises(InputError, match="acquisition time"):
        judge_vessels([], EPSG, scene_id="s", acquired="yesterday", model_version="v")
