import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import rasterio
import rasterio.features
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from pyproj import Transformer
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely import affinity
from shapely.geometry import Point, Polygon, box, shape

from minewatch.errors import ConfigError
from minewatch.synth import make_ground_truth
from minewatch.tables import stockpile_series_schema
from minewatch.volumes import (
    VOLUME_METHODS,
    DsmIndex,
    height_from_shadow,
    measure_volume,
    shadow,
    sun_from_tags,
    volume_from_dsm,
)
from minewatch.volumes.grid import coverages
from minewatch.volumes.shadow import _shadow_entry, _ShadowScan, _subpixel_centres
from pipelines.infer.quicklook import plot_stockpile_volumes

#: Shadow heights must be within this fraction of the truth ...
SHADOW_TOLERANCE = 0.15
#: ... and within this many of their own stated sigmas.
SHADOW_SIGMAS = 2.5


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    """Natural sun: 27 deg on 2024-01-15, 55 deg on 2024-04-15."""
    return make_ground_truth(tmp_path_factory.mktemp("vol"), size="tiny", seed=0, frames=False)


@pytest.fixture(scope="module")
def sun20(tmp_path_factory):
    """Sun at 20 deg, DSMs written in EPSG:4326."""
    out = tmp_path_factory.mktemp("sun20")
    return make_ground_truth(
        out, size="tiny", seed=0, sun=(150.0, 20.0), dsm_crs="EPSG:4326", frames=False
    )


@pytest.fixture(scope="module", params=[15.0, 20.0, 25.0])
def low_sun(request, tmp_path_factory):
    """Sun at a fixed elevation."""
    el = request.param
    if el == 20.0:
        return el, request.getfixturevalue("sun20")
    out = tmp_path_factory.mktemp(f"sun{int(el)}")
    return el, make_ground_truth(out, size="tiny", seed=0, sun=(150.0, el), frames=False)


def _stockpiles(result):
    manifest = json.loads(result.manifest.read_text())
    for acq, truth, scene, dsm in zip(
        manifest["acquisitions"], result.truth, result.scenes, result.dsms, strict=True
    ):
        for f in json.loads(Path(truth).read_text())["features"]:
            if f["properties"]["class"] == "stockpile":
                yield manifest["crs"], acq, scene, dsm, shape(f["geometry"]), f["properties"]


def test_dsm_volume_within_5_percent_of_truth(gt):
    checked = 0
    for crs, _, _, dsm, geom, p in _stockpiles(gt):
        assert p["dsm_covered"]
        r = volume_from_dsm(geom, crs, dsm)
        assert r.method == "dsm", r.reason
        assert r.volume_m3 == pytest.approx(p["volume_m3"], rel=0.05), p["id"]
        assert abs(r.volume_m3 - p["volume_m3"]) <= 3 * r.uncertainty_m3
        assert r.height_m == pytest.approx(p["height_m"], abs=1.0)
        checked += 1
    assert checked >= 10


def test_dsm_in_other_crs(gt, sun20, tmp_path):
    """A geographic DSM (synth) and a Web Mercator one (warped here) give the truth too."""
    result = sun20
    with rasterio.open(result.dsms[0]) as src:
        assert src.crs.to_epsg() == 4326
    # Web Mercator: 1 m of CRS is 1/cos(lat) m on the ground, so the areal scale matters.
    with rasterio.open(gt.dsms[0]) as src:
        tf, w, h = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        merc = np.full((h, w), -9999.0, dtype=np.float32)
        reproject(
            rasterio.band(src, 1), merc, dst_transform=tf, dst_crs="EPSG:3857",
            resampling=Resampling.bilinear, dst_nodata=-9999.0,
        )  # fmt: skip
        profile = src.profile | {"crs": "EPSG:3857", "transform": tf, "width": w, "height": h}
    merc_path = tmp_path / "dsm_3857.tif"
    with rasterio.open(merc_path, "w", **profile) as dst:
        dst.write(merc, 1)
    first = [s for s in _stockpiles(gt) if s[1]["date"] == "2024-01-15"]
    for (crs, _, _, _, geom, p), (_, _, _, geo_dsm, _, _) in zip(
        first, [s for s in _stockpiles(result) if s[1]["date"] == "2024-01-15"], strict=True
    ):
        for path in (geo_dsm, merc_path):
            r = volume_from_dsm(geom, crs, path)
            assert r.method == "dsm", r.reason
            assert r.volume_m3 == pytest.approx(p["volume_m3"], rel=0.05), (p["id"], str(path))


def test_shadow_height_within_tolerance(low_sun):
    el, result = low_sun
    measured = 0
    for crs, acq, scene, _, geom, p in _stockpiles(result):
        assert acq["sun_elevation_deg"] == el
        if acq["date"] != "2024-01-15":
            continue  # the second date repeats the sun; one date keeps the test short
        r = height_from_shadow(geom, crs, scene, acq["sun_azimuth_deg"], el)
        if r.method == "none":
            assert "no shadow found" in r.reason
            continue
        assert r.method == "shadow"
        error = r.height_m - p["height_m"]
        assert abs(error) <= SHADOW_TOLERANCE * p["height_m"], (p["id"], r.height_m, p["height_m"])
        assert abs(error) <= SHADOW_SIGMAS * r.height_uncertainty_m
        assert r.volume_m3 == pytest.approx(r.height_m * geom.area / 3)
        measured += 1
    assert measured >= 3  # of 6 piles; the others' shadows fall on dark or busy ground


def test_refuses_when_sun_too_high(gt):
    refused = 0
    for crs, acq, scene, _, geom, _ in _stockpiles(gt):
        if acq["sun_elevation_deg"] < 50:
            continue
        # no DSM: the sun comes from the scene's SUN_* tags
        r = measure_volume(geom, crs, str(scene), dt.date.fromisoformat(acq["date"]))
        assert r.method == "none" and r.volume_m3 is None
        assert "sun too high" in r.reason
        assert r.row()["volume_method"] == "none"
        refused += 1
    assert refused >= 5


def test_refuses_when_dsm_misses_the_pile(gt):
    crs, _, _, dsm, geom, _ = next(_stockpiles(gt))
    far = affinity.translate(geom, 20_000, 0)
    r = volume_from_dsm(far, crs, dsm)
    assert r.method == "none"
    assert "does not cover the stockpile" in r.reason
    # inside the DSM's bounds but outside the surveyed area: nodata
    with rasterio.open(dsm) as src:
        left, _, _, top = src.bounds
        corner = Point(left + 45, top - 45)
        assert next(src.sample([(corner.x, corner.y)]))[0] == src.nodata
    r = volume_from_dsm(corner.buffer(20), crs, dsm)
    assert r.method == "none"
    assert "DSM has data for only 0 % of the stockpile" in r.reason


def test_measure_volume_uses_dsm_then_shadow(gt, tmp_path):
    index = DsmIndex.from_glob(str(gt.out_dir / "dsm" / "*.tif"))
    crs, acq, scene, _, geom, p = next(_stockpiles(gt))
    when = dt.date.fromisoformat(acq["date"])
    r = measure_volume(geom, crs, str(scene), when, index)
    assert r.method == "dsm" and r.reason is None
    assert r.volume_m3 == pytest.approx(p["volume_m3"], rel=0.05)
    # Only the other date's DSM: no DSM for this scene, so the shadow is tried.
    other = DsmIndex([e for e in index.entries if e.date != when])
    r = measure_volume(geom, crs, str(scene), when, other, sun=(150.0, 15.0))
    assert "no DSM for this acquisition" in r.reason
    assert r.method in ("shadow", "none")
    r = measure_volume(geom, crs, str(scene), when, other, sun=(150.0, 80.0))
    assert r.method == "none"
    assert "no DSM" in r.reason and "sun too high" in r.reason


def test_dsm_index_matches_by_date_then_stem(gt, tmp_path):
    index = DsmIndex.from_glob(str(gt.out_dir / "dsm" / "*.tif"))
    assert [e.date.isoformat() for e in index.entries] == ["2024-01-15", "2024-04-15"]
    got = index.candidates("x/scene_2024-04-15.tif", dt.datetime(2024, 4, 15, 10, 30))
    assert [Path(e.path).name for e in got] == ["dsm_2024-04-15.tif"]
    assert index.candidates("scene_2024-04-16.tif", None) == []
    assert len(DsmIndex(index.entries, max_days=1).candidates("s.tif", dt.date(2024, 4, 16))) == 1
    undated = [e.__class__(e.path, None, "dsm_pit7", e.crs, e.bounds) for e in index.entries[:1]]
    assert DsmIndex(undated).candidates("scene_pit7.tif", None) == undated
    with pytest.raises(ConfigError, match="--dsm"):
        DsmIndex.from_glob(str(tmp_path / "none" / "*.tif"))


def test_sun_from_tags():
    assert sun_from_tags({"SUN_AZIMUTH": "150.5", "SUN_ELEVATION": "25"}) == (150.5, 25.0)
    assert sun_from_tags({"view:sun_azimuth": "-10", "view:sun_elevation": "30"}) == (350.0, 30.0)
    az, el = sun_from_tags({"s2:mean_solar_azimuth": "160", "s2:mean_solar_zenith": "62.5"})
    assert (az, el) == (160.0, 27.5)
    assert sun_from_tags({"MEAN_SUN_ZENITH_ANGLE": "40"}) is None
    assert sun_from_tags({"SUN_AZIMUTH": "x", "SUN_ELEVATION": "25"}) is None


def test_shadow_refuses_bad_sun_and_bad_bands(gt):
    crs, _, scene, _, geom, _ = next(_stockpiles(gt))
    assert "not above the horizon" in height_from_shadow(geom, crs, scene, 150, -3).reason
    with pytest.raises(ConfigError, match="no band"):
        height_from_shadow(geom, crs, scene, 150, 20, bands=["B99"])


def test_series_rows_with_volumes_fit_the_schema_and_plot(gt, tmp_path):
    schema = stockpile_series_schema()
    for column in ("volume_m3", "volume_method", "volume_uncertainty_m3", "volume_reason"):
        assert column in schema.names
    rows = []
    for crs, acq, scene, dsm, geom, p in _stockpiles(gt):
        r = volume_from_dsm(geom, crs, dsm)
        when = dt.datetime.fromisoformat(acq["date"]).replace(tzinfo=dt.UTC)
        rows.append({"site_id": p["id"], "acquired": when, "scene_id": scene.stem,
                     "area_m2": p["area_m2"], **r.row()})  # fmt: skip
    rows.append({"site_id": "sp-x", "acquired": when, "area_m2": 1.0, "volume_method": "none",
                 "volume_reason": "sun too high"})  # fmt: skip
    rows.append({"site_id": "old", "acquired": when, "area_m2": 2.0})  # a writer not yet wired
    table = pa.Table.from_pylist(rows, schema=schema)
    assert set(table.column("volume_method").to_pylist()) <= set(VOLUME_METHODS) | {None}
    assert table.column("volume_m3").null_count == 2
    png = tmp_path / "volumes.png"
    assert plot_stockpile_volumes(rows, str(png)) == len(rows) - 2
    with Image.open(png) as img:
        assert img.format == "PNG" and img.size == (900, 500)
    assert plot_stockpile_volumes(rows[-2:], str(tmp_path / "empty.png")) == 0
    assert (tmp_path / "empty.png").stat().st_size > 0


def test_volume_of_a_cone_on_a_tilted_plane(tmp_path):
    """Hand-made DSM: a 20 m cone of 50 m radius on a 2 % slope, 1 m pixels."""
    n = 200
    rows, cols = np.mgrid[0:n, 0:n] + 0.5
    x, y = 500_000 + cols, 4_000_100 - rows
    z = (
        100
        + 0.02 * (x - 500_000)
        + 20 * np.clip(1 - np.hypot(x - 500_100, y - 4_000_000) / 50, 0, None)
    )
    origin = rasterio.transform.from_origin(500_000, 4_000_100, 1, 1)
    profile = {"driver": "GTiff", "width": n, "height": n, "count": 1, "dtype": "float32",
               "crs": "EPSG:32633", "transform": origin}  # fmt: skip
    path = tmp_path / "cone.tif"
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(z.astype(np.float32), 1)
    truth = math.pi * 50**2 * 20 / 3
    r = volume_from_dsm(Point(500_100, 4_000_000).buffer(50, 64), "EPSG:32633", path)
    assert r.volume_m3 == pytest.approx(truth, rel=0.01)
    assert r.height_m == pytest.approx(20, abs=0.5)  # pixel centres miss the apex
    assert r.uncertainty_m3 < 0.01 * truth  # a noiseless plane fits the rim exactly


def _star(cx, cy, radii, phase):
    angles = phase + np.linspace(0, 2 * np.pi, len(radii), endpoint=False)
    return Polygon(np.column_stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)]))


def _staircase(cx, cy, radius):
    """A disc as the model's polygonizer gives it: whole 10 m pixels of the grid."""
    cells = [
        box(x, y, x + 10, y + 10)
        for x in range(int(cx - radius) // 10 * 10, int(cx + radius) + 10, 10)
        for y in range(int(cy - radius) // 10 * 10, int(cy + radius) + 10, 10)
        if math.hypot(x + 5 - cx, y + 5 - cy) <= radius
    ]
    return shapely.union_all(cells)


@settings(max_examples=40, deadline=None)
@given(
    centre=st.tuples(st.floats(-30, 30), st.floats(-30, 30)),
    radii=st.lists(st.floats(12, 60), min_size=5, max_size=12),
    phase=st.floats(0, 6.3),
    staircase=st.booleans(),
    azimuth=st.floats(0, 360),
    tip=st.floats(1, 90),
)
def test_shadow_entry_gives_the_rasterised_cast_shadow(
    centre, radii, phase, staircase, azimuth, tip
):
    """One entry distance per sub-pixel is GDAL's rasterised shadow, sub-pixel for sub-pixel."""
    cx, cy = 500_000 + centre[0], 4_000_000 + centre[1]
    foot = _staircase(cx, cy, radii[0]) if staircase else _star(cx, cy, np.array(radii), phase)
    az = math.radians(azimuth)
    away = np.array([-math.sin(az), -math.cos(az)])
    origin = np.array(foot.centroid.coords[0])
    transform = rasterio.transform.from_origin(499_850, 4_000_150, 10, 10)
    shape_, k = (30, 30), 5
    rows, cols = (a.ravel() for a in np.mgrid[0 : shape_[0], 0 : shape_[1]])
    x, y = _subpixel_centres(rows, cols, transform, k)
    enter = _shadow_entry(foot, origin, away, tip + 1.0, x, y)
    ours = (enter <= tip).reshape(*shape_, k, k).transpose(0, 2, 1, 3).reshape(30 * k, 30 * k)
    hull = shapely.convex_hull(shapely.union(foot, Point(*(origin + away * tip))))
    cast = hull.difference(foot)
    fine = transform @ Affine.scale(1 / k)
    gdal = np.zeros(ours.shape, dtype="uint8")
    if not cast.is_empty:
        gdal = rasterio.features.rasterize([cast], out_shape=ours.shape, transform=fine)
    # Equal but where a sub-pixel centre lies on the shadow's very edge (within
    # 20 um: a pixel-aligned pile under an axis-aligned sun, or a tip exactly
    # where a tangent grazes a centre), where two exact computations can part.
    rows, cols = np.nonzero(gdal != ours)
    ties = shapely.points(np.column_stack(fine @ (cols + 0.5, rows + 0.5)))
    assert (shapely.distance(ties, cast.boundary) < 2e-5).all()
    assert rows.size <= 4
    (coverage,) = coverages([cast], shape_, transform, k)
    assert np.array_equal(coverage, gdal.reshape(30, k, 30, k).mean(axis=(1, 3)))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    darkening=st.floats(0.0, 0.6),
    shadable=st.floats(0.02, 0.5),
    outliers=st.integers(0, 10),
)
def test_shadow_gain_bound_is_above_every_scanned_gain(seed, darkening, shadable, outliers):
    """The early refusal's bound holds for any shadow family, pile or no pile."""
    rng = np.random.default_rng(seed)
    n, k = 160, 5
    cols, rows = rng.random(n), rng.random(n)
    edge = (rng.random(n) < 0.2).astype(float)
    design = np.column_stack([np.ones(n), cols - 0.5, rows - 0.5, edge])
    enter = np.where(rng.random((n, k * k)) < shadable, rng.uniform(0, 40, (n, k * k)), np.inf)
    truth = (enter <= rng.uniform(5, 40)).mean(axis=1)
    y = 1 + 0.03 * (cols - 0.5) + 0.05 * rng.standard_normal(n) - darkening * truth
    y[rng.choice(n, outliers, replace=False)] += rng.choice([-0.6, 0.6], outliers)  # roads, roofs
    scan = _ShadowScan(design, y, 0.05, enter)
    loss, depth = scan.evaluate(np.arange(0.1, 41.0, 0.1))
    gains = scan.loss0 - loss[np.isfinite(loss) & (depth > 0)]
    assert gains.max(initial=0.0) <= scan.gain_bound() + 1e-9


def _first_scene_polygons(result):
    manifest = json.loads(result.manifest.read_text())
    acq = manifest["acquisitions"][0]
    feats = json.loads(Path(result.truth[0]).read_text())["features"]
    polys = [(f["properties"]["class"], shape(f["geometry"])) for f in feats]
    with rasterio.open(result.scenes[0]) as src:
        left, bottom, right, top = src.bounds
    # bare ground, fields, forest: whatever lies on a grid of 40 x 60 m boxes
    polys += [
        ("box", box(x, y, x + 40, y + 60))
        for x in np.linspace(left + 200, right - 200, 5)
        for y in np.linspace(bottom + 200, top - 200, 5)
    ]
    return manifest["crs"], acq, result.scenes[0], polys


def test_shadow_early_refusal_changes_no_outcome(sun20, monkeypatch):
    """Piles, roads, scars, water and bare ground, with and without the early refusal."""
    crs, acq, scene, polys = _first_scene_polygons(sun20)
    runs = {}
    with rasterio.open(scene) as src:
        # the scan with and without the early refusal, and one tip at a time
        for early, chunk in ((False, shadow._CHUNK), (True, shadow._CHUNK), (True, 1)):
            monkeypatch.setattr(shadow, "_PRESCREEN", early)
            monkeypatch.setattr(shadow, "_CHUNK", chunk)
            runs[early, chunk > 1] = [
                height_from_shadow(g, crs, src, acq["sun_azimuth_deg"], 20.0) for _, g in polys
            ]
    for one, batch in zip(runs[True, False], runs[True, True], strict=True):
        assert (one.method, one.reason) == (batch.method, batch.reason)
        assert one.height_m == (batch.height_m and pytest.approx(batch.height_m, rel=1e-9))
    for (cls, _), full, fast in zip(polys, runs[False, True], runs[True, True], strict=True):
        assert fast.method == full.method, (cls, full.reason, fast.reason)
        assert fast.height_m == full.height_m
        assert fast.height_uncertainty_m == full.height_uncertainty_m
        if full.method == "none" and full.reason.startswith("no shadow found"):
            assert fast.reason.startswith("no shadow found")
        elif full.method == "none":
            assert fast.reason == full.reason
    fast_runs = runs[True, True]
    early = [r for r in fast_runs if "no shadow fit can beat no shadow" in (r.reason or "")]
    assert len(early) >= 5, [r.reason for r in fast_runs]
    assert sum(r.method == "shadow" for r in fast_runs) >= 3


def test_shadow_of_a_geographic_footprint(sun20):
    """A footprint in EPSG:4326 over a UTM scene: the same heights within a sigma."""
    crs, acq, scene, polys = _first_scene_polygons(sun20)
    to_geo = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    measured = 0
    for cls, g in polys:
        if cls != "stockpile":
            continue
        geo = shapely.transform(g, lambda xy: np.column_stack(to_geo.transform(*xy.T)))
        utm = height_from_shadow(g, crs, scene, acq["sun_azimuth_deg"], 20.0)
        r = height_from_shadow(geo, "EPSG:4326", scene, acq["sun_azimuth_deg"], 20.0)
        assert r.method == utm.method, (r.reason, utm.reason)
        if r.method == "shadow":
            assert abs(r.height_m - utm.height_m) <= utm.height_uncertainty_m
            measured += 1
    assert measured >= 3
