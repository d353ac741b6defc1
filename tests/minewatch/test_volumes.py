import datetime as dt
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import rasterio
from PIL import Image
from rasterio.warp import Resampling, calculate_default_transform, reproject
from shapely import affinity
from shapely.geometry import Point, shape

from minewatch.errors import ConfigError
from minewatch.quicklook import plot_stockpile_volumes
from minewatch.synth import make_ground_truth
from minewatch.tables import stockpile_series_schema
from minewatch.volumes import (
    VOLUME_METHODS,
    DsmIndex,
    height_from_shadow,
    measure_volume,
    sun_from_tags,
    volume_from_dsm,
)

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
        assert img.format == "PNG" and img.size == (800, 450)
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
