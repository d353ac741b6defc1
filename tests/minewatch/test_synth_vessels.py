"""Synthetic vessels: berths on the shore, hulls on water, sizes, wakes, ports file, paint."""

import json
import math

import numpy as np
import pytest
import rasterio.features
from affine import Affine
from pyproj import Transformer
from rasterio.crs import CRS
from shapely.geometry import Point, box, shape
from shapely.ops import unary_union

from minewatch.errors import SceneError
from minewatch.synth.vessels import (
    KINDS,
    VesselSpec,
    coverage,
    occlusion,
    paint_vessels,
    place_vessels,
    plan_berths,
    write_licensed_ports,
)
from minewatch.vessels import PortRegistry

CRS_UTM = CRS.from_epsg(32633)
PIXEL = 10.0
TRANSFORM = Affine(PIXEL, 0, 500000, 0, -PIXEL, 4200000)
SPEC = VesselSpec(spacing_m=1200.0)


def coast_and_river(n: int = 320) -> np.ndarray:
    """Sea to the east behind a wavy coast, and a winding river 440 m wide joining it."""
    rr, cc = np.mgrid[0:n, 0:n]
    coast = 0.7 * n + 10 * np.sin(rr / 35.0)
    sea = cc > coast
    centre = 0.4 * n + 25 * np.sin(cc / 60.0)
    river = (np.abs(rr - centre) < 22) & (cc < coast + 5)
    return sea | river


@pytest.fixture(scope="module")
def water():
    return coast_and_river()


@pytest.fixture(scope="module")
def geometry(water):
    """Water polygon and land of the fixture mask, map coordinates."""
    wet = unary_union(
        [
            shape(g)
            for g, v in rasterio.features.shapes(
                water.astype(np.uint8), mask=water, transform=TRANSFORM
            )
        ]
    )
    h, w = water.shape
    frame = box(*(TRANSFORM @ (0, h)), *(TRANSFORM @ (w, 0)))
    return wet, frame.difference(wet)


@pytest.fixture(scope="module")
def series(water):
    berths = plan_berths(water, TRANSFORM, CRS_UTM, np.random.default_rng(3), SPEC)
    dates = [
        place_vessels(water, TRANSFORM, CRS_UTM, np.random.default_rng(100 + t), t, berths, SPEC)[0]
        for t in range(4)
    ]
    return berths, dates


def test_berths_licensed_and_unlicensed_apart(series):
    berths, _ = series
    licensed = [b for b in berths if b.licensed]
    unlicensed = [b for b in berths if not b.licensed]
    assert [b.id for b in licensed] == ["port-01", "port-02"]
    assert unlicensed and all(
        b.id.startswith("shore-") and b.licence_id is None for b in unlicensed
    )
    for i, a in enumerate(berths):
        for b in berths[i + 1 :]:
            assert math.hypot(a.x - b.x, a.y - b.y) >= SPEC.spacing_m
        assert a.kind in KINDS and 0 <= a.axis_deg < 180
        assert math.hypot(*a.normal) == pytest.approx(1.0)


def test_hulls_on_water_berthed_touch_shore_moving_offshore(series, geometry):
    wet, land = geometry
    _, dates = series
    berthed = moving = 0
    for vessels in dates:
        for v in vessels:
            assert v.polygon.is_valid
            assert wet.intersection(v.polygon).area / v.polygon.area >= 0.97, v.id
            if v.berthed:
                berthed += 1
                assert v.polygon.distance(land) <= PIXEL, v.id  # alongside the shore
                assert v.speed_kn == 0 and v.wake is None
            else:
                moving += 1
                assert v.polygon.distance(land) >= SPEC.offshore_m, v.id
        hulls = [v.polygon for v in vessels]
        for i, a in enumerate(hulls):
            assert all(not a.intersects(b) for b in hulls[i + 1 :])
    assert berthed >= 4 and moving >= 4


def test_sizes_and_headings_as_recorded(series):
    berths, dates = series
    by_id = {b.id: b for b in berths}
    for vessels in dates:
        for v in vessels:
            kind = KINDS[v.kind]
            assert kind.length_m[0] <= v.length_m <= kind.length_m[1]
            assert kind.width_m[0] <= v.width_m <= kind.width_m[1]
            rect = v.polygon.minimum_rotated_rectangle
            xy = np.asarray(rect.exterior.coords)
            sides = sorted(np.hypot(*np.diff(xy[:3], axis=0).T))
            assert sides[1] == pytest.approx(v.length_m, abs=0.01)
            assert sides[0] == pytest.approx(v.width_m, abs=0.01)
            # The bow tip lies half a length ahead along the heading.
            h = math.radians(v.heading_deg)
            bow = Point(v.x + math.sin(h) * v.length_m / 2, v.y + math.cos(h) * v.length_m / 2)
            assert v.polygon.distance(bow) < 1e-6
            assert v.polygon.centroid.distance(Point(v.x, v.y)) < 0.1 * v.length_m
            if v.berthed:
                berth = by_id[v.berth_id]
                assert v.length_m <= berth.max_length_m + 1e-9
                axial = abs(v.heading_deg - berth.axis_deg) % 180
                assert min(axial, 180 - axial) < 1e-6  # alongside: parallel to the shore
                assert v.licensed is berth.licensed
                assert v.port_id == (berth.id if berth.licensed else None)
            else:
                assert v.licensed is None and v.berth_id is None


def test_every_date_has_a_vessel_at_an_unlicensed_point(series):
    _, dates = series
    for vessels in dates:
        assert any(v.flagged for v in vessels)
        assert {v.id for v in vessels} == {
            f"vessel-{vessels[0].acquisition:02d}-{i + 1:02d}" for i in range(len(vessels))
        }


def test_wakes_trail_behind_moving_vessels(series, geometry):
    wet, _ = geometry
    _, dates = series
    wakes = [v for vessels in dates for v in vessels if not v.berthed]
    assert wakes
    for v in wakes:
        assert v.wake is not None and not v.wake.is_empty
        assert v.wake.difference(wet).area < 1.0  # clipped to water
        assert v.wake.intersection(v.polygon).area < 1.0
        h = math.radians(v.heading_deg)
        c = v.wake.centroid
        assert (c.x - v.x) * math.sin(h) + (c.y - v.y) * math.cos(h) < -v.length_m / 2


def test_same_seed_same_vessels(water, series):
    berths, dates = series
    again = plan_berths(water, TRANSFORM, CRS_UTM, np.random.default_rng(3), SPEC)
    assert again == berths
    vs, _ = place_vessels(water, TRANSFORM, CRS_UTM, np.random.default_rng(100), 0, again, SPEC)
    assert [v.properties() for v in vs] == [v.properties() for v in dates[0]]


def test_ports_file_is_geojson_in_wgs84(series, tmp_path):
    berths, _ = series
    path = write_licensed_ports(tmp_path / "licensed_ports.geojson", berths)
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection" and "crs" not in doc  # RFC 7946: EPSG:4326
    to_geo = Transformer.from_crs(CRS_UTM.to_wkt(), "EPSG:4326", always_xy=True)
    licensed = [b for b in berths if b.licensed]
    assert len(doc["features"]) == len(licensed)
    for feature, berth in zip(doc["features"], licensed, strict=True):
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Point"
        lon, lat = feature["geometry"]["coordinates"]
        assert (lon, lat) == pytest.approx(to_geo.transform(berth.x, berth.y), abs=1e-6)
        assert -180 <= lon <= 180 and -90 <= lat <= 90
        props = feature["properties"]
        assert props["port_id"] == berth.id and props["licence_id"].startswith("EXP-")
        assert props["radius_m"] == SPEC.licence_radius_m and props["name"]
    # The registry the inference side uses reads it back (GDAL: EPSG:4326).
    registry = PortRegistry.from_file(path)
    assert [p.port_id for p in registry.ports] == [b.id for b in licensed]
    near = registry.in_crs("EPSG:32633")
    for port, berth in zip(near, licensed, strict=True):
        assert port.geometry.distance(Point(berth.x, berth.y)) < 0.05


def test_paint_hulls_bright_wakes_foam_b10_untouched(water, series):
    _, dates = series
    vessels = dates[1]
    bands = {b: np.where(water, 300.0, 2200.0).astype(np.float32) for b in ("B03", "B08", "B10")}
    before = {b: a.copy() for b, a in bands.items()}
    paint_vessels(bands, vessels, TRANSFORM)
    assert np.array_equal(bands["B10"], before["B10"])
    for v in vessels:
        hull = coverage([v.polygon], TRANSFORM, water.shape) >= 0.99
        hull &= coverage([v.bridge], TRANSFORM, water.shape) == 0  # white paint: NDWI ~ 0
        assert hull.any()
        assert (bands["B08"][hull] > 1500).all()  # NIR: steel on dark water
        ndwi = (bands["B03"] - bands["B08"]) / (bands["B03"] + bands["B08"])
        assert (ndwi[hull] < 0).all()
        if v.wake is not None:
            foam = (coverage([v.wake], TRANSFORM, water.shape) >= 0.99) & water
            near_stern = foam & (bands["B03"] > before["B03"] + 100)
            assert near_stern.any()
            assert (ndwi[foam] >= 0).all()  # foam stays water to NDWI


def test_paint_by_row_blocks_equals_whole(water, series):
    _, dates = series
    vessels = dates[2]
    whole = {"B04": np.full(water.shape, 500.0, np.float32)}
    paint_vessels(whole, vessels, TRANSFORM, path={"B04": 120.0})
    blocks = np.full(water.shape, 500.0, np.float32)
    for row in range(0, water.shape[0], 77):
        view = blocks[row : row + 77]
        paint_vessels(
            {"B04": view}, vessels, TRANSFORM @ Affine.translation(0, row), {"B04": 120.0}
        )
    np.testing.assert_allclose(blocks, whole["B04"], rtol=0, atol=1e-3)
    assert (whole["B04"] != 500.0).any()


def test_occlusion_fraction(water, series):
    _, dates = series
    vessels = dates[0]
    cloud = np.zeros(water.shape, np.float32)
    first = vessels[0]
    cloud[coverage([first.polygon], TRANSFORM, water.shape) > 0] = 1.0
    out = occlusion(vessels, cloud, TRANSFORM)
    assert out[0].occluded == 1.0
    assert all(
        v.occluded == 0.0 for v in out[1:] if not v.polygon.intersects(first.polygon.buffer(20))
    )


def test_no_water_no_vessels():
    land = np.zeros((64, 64), bool)
    berths = plan_berths(land, TRANSFORM, CRS_UTM, np.random.default_rng(0))
    vessels, _ = place_vessels(land, TRANSFORM, CRS_UTM, np.random.default_rng(0), 0, berths)
    assert berths == [] and vessels == []


def test_errors_name_the_problem(water):
    with pytest.raises(SceneError, match="projected in metres"):
        plan_berths(
            water,
            Affine(0.0001, 0, 10, 0, -0.0001, 50),
            CRS.from_epsg(4326),
            np.random.default_rng(0),
        )
    with pytest.raises(SceneError, match="2-D"):
        plan_berths(np.zeros(5, bool), TRANSFORM, CRS_UTM, np.random.default_rng(0))
    with pytest.raises(KeyError, match="unknown Sentinel-2 band"):
        paint_vessels(
            {"RED": np.zeros(water.shape, np.float32)},
            place_vessels(water, TRANSFORM, CRS_UTM, np.random.default_rng(1), 0, None, SPEC)[0],
            TRANSFORM,
        )
    with pytest.raises(ValueError, match="differ in shape"):
        paint_vessels({"B02": np.zeros((2, 2)), "B03": np.zeros((3, 3))}, [], TRANSFORM)


def test_ground_truth_on_a_coast_has_ships_ports_and_their_truth(tmp_path):
    """make_ground_truth places berths and ships on the real scene's water and paints them."""
    from minewatch.synth import make_ground_truth
    from minewatch.vessels import ndwi_water

    gt = make_ground_truth(tmp_path / "gt", size="coast", seed=0, frames=False)
    ports = json.loads(gt.licensed_ports.read_text())
    assert [f["properties"]["port_id"] for f in ports["features"]] == ["port-01", "port-02"]
    manifest = json.loads(gt.manifest.read_text())
    assert [b["id"] for b in manifest["berths"]][:2] == ["port-01", "port-02"]
    assert any(b["id"].startswith("shore-") for b in manifest["berths"])
    for acq, truth, scene in zip(manifest["acquisitions"], gt.truth, gt.scenes, strict=True):
        vessels = [
            f["properties"] | {"geometry": shape(f["geometry"])}
            for f in json.loads(truth.read_text())["features"]
            if f["properties"]["class"] == "vessel"
        ]
        assert len(vessels) == acq["vessels"] >= 3
        assert sum(v["flagged"] for v in vessels) == acq["vessels_flagged"] >= 1
        with rasterio.open(scene) as src:
            names = list(src.descriptions)
            green = src.read(names.index("B03") + 1)
            nir = src.read(names.index("B08") + 1)
            wet = ndwi_water(green, nir)
            for v in vessels:
                assert v["acquisition"] == acq["date"] and v["area_m2"] > 0
                assert v["geometry"].area == pytest.approx(v["area_m2"], rel=1e-3)
                if v["occluded"] > 0:
                    continue
                hull = coverage([v["geometry"]], src.transform, src.shape) >= 0.99
                ring = coverage([v["geometry"].buffer(60.0)], src.transform, src.shape) > 0
                ring &= coverage([v["geometry"].buffer(10.0)], src.transform, src.shape) == 0
                # painted: steel is bright in the NIR next to dark water
                assert hull.any() and nir[hull].mean() > nir[ring & wet].mean() + 500, v["id"]
                if not v["berthed"]:
                    assert wet[ring].mean() > 0.9, v["id"]  # open water around a moving ship
