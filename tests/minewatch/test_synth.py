import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.features
from click.testing import CliRunner
from PIL import Image
from shapely.geometry import Point, shape
from shapely.ops import unary_union

from minewatch.cli.synth import synth
from minewatch.errors import ConfigError, SceneError
from minewatch.synth import BAND_NAMES, CLASSES, GRADES, make_ground_truth, signature
from minewatch.synth.materials import MATERIALS
from minewatch.synth.relief import DSM_NODATA, REPOSE_DEG, Cone
from minewatch.synth.render import cone_shadow


@pytest.fixture(scope="module")
def gt(tmp_path_factory):
    return make_ground_truth(tmp_path_factory.mktemp("gt"), size="tiny", seed=0)


def _features(path):
    return json.loads(Path(path).read_text())["features"]


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(Path(root).rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_layout(gt):
    root = gt.out_dir
    assert [p.name for p in gt.scenes] == ["scene_2024-01-15.tif", "scene_2024-04-15.tif"]
    for p in gt.scenes + gt.truth + gt.clouds + gt.illegal + gt.dsms:
        assert p.is_file()
    assert [p.name for p in gt.dsms] == ["dsm_2024-01-15.tif", "dsm_2024-04-15.tif"]
    assert (root / "concessions.geojson").is_file()
    ports = json.loads(gt.licensed_ports.read_text())
    assert gt.licensed_ports == root / "licensed_ports.geojson"
    assert ports == {"type": "FeatureCollection", "features": []}  # no water, no port
    assert (root / "frames" / "labels.csv").is_file()
    assert (root / "frames_corrupted" / "motion_blur" / "5" / "labels.csv").is_file()


def test_scene_georeferencing_and_tags(gt):
    manifest = json.loads(gt.manifest.read_text())
    for path, acq in zip(gt.scenes, manifest["acquisitions"], strict=True):
        with rasterio.open(path) as src:
            assert float(src.tags()["SUN_AZIMUTH"]) == pytest.approx(acq["sun_azimuth_deg"])
            assert float(src.tags()["SUN_ELEVATION"]) == pytest.approx(acq["sun_elevation_deg"])
    for path in gt.scenes:
        date = re.search(r"(\d{4})-(\d\d)-(\d\d)", path.name).groups()
        with rasterio.open(path) as src:
            assert src.descriptions == BAND_NAMES
            assert src.crs.to_epsg() == 32618
            assert src.dtypes[0] == "uint16"
            assert src.res == (10.0, 10.0)
            assert src.tags()["TIFFTAG_DATETIME"] == ":".join(date) + " 10:30:00"
            assert src.profile["compress"] == "deflate"
            assert (src.width, src.height) == (256, 256)


def test_truth_properties(gt):
    for path, scene in zip(gt.truth, gt.scenes, strict=True):
        date = scene.stem.removeprefix("scene_")
        feats = _features(path)
        assert feats
        for f in feats:
            p = f["properties"]
            assert p["class"] in CLASSES
            assert p["acquisition"] == date
            assert p["commodity"] in {"coal", "iron_ore", "bauxite", "sand", None}
            assert (p["commodity"] is not None) == (p["class"] == "stockpile")
            assert p["area_m2"] > 0 and p["id"]
        # the tiny crop has no water body a ship fits in: no vessel (see test_synth_vessels)
        assert {f["properties"]["class"] for f in feats} == set(CLASSES) - {"vessel"}


def test_objects_land_at_stated_coordinates(gt):
    manifest = json.loads(gt.manifest.read_text())
    path = np.array(manifest["path_radiance"])
    keep = [i for i, b in enumerate(BAND_NAMES) if b != "B10"]
    bands = [BAND_NAMES[i] for i in keep]
    library = {m: signature(m, bands) for m in MATERIALS if m != "cloud"}
    checked = 0
    for acq, truth, scene in zip(manifest["acquisitions"], gt.truth, gt.scenes, strict=True):
        with rasterio.open(scene) as src:
            for f in _features(truth):
                p = f["properties"]
                if p["occluded"] > 0 or p["class"] == "haul_road":
                    continue
                geom = shape(f["geometry"])
                inner = geom.buffer(-15.0)
                point = (inner if not inner.is_empty else geom).representative_point()
                dn = next(src.sample([(point.x, point.y)])).astype(float)
                rho = (dn / acq["gain"] - path)[keep] / 10000.0

                def angle(ref, rho=rho):
                    cos = rho @ ref / (np.linalg.norm(rho) * np.linalg.norm(ref))
                    return np.arccos(np.clip(cos, -1, 1))

                best = min(library, key=lambda m: angle(library[m]))
                assert best == p["material"], (p["id"], best)
                assert angle(library[p["material"]]) < 0.03
                checked += 1
    assert checked >= 10


def test_polygon_area_matches_rasterised_pixels(gt):
    for scene, truth, clouds in zip(gt.scenes, gt.truth, gt.clouds, strict=True):
        with rasterio.open(scene) as src:
            shape_, transform = (src.height, src.width), src.transform
        pixel = abs(transform.a * transform.e)
        for f in _features(truth) + _features(clouds):
            mask = rasterio.features.rasterize(
                [f["geometry"]], out_shape=shape_, transform=transform
            )
            assert abs(mask.sum() * pixel - f["properties"]["area_m2"]) <= pixel
            assert abs(shape(f["geometry"]).area - f["properties"]["area_m2"]) <= pixel


def test_time_series_changes(gt):
    first, second = (
        {f["properties"]["id"]: f["properties"] for f in _features(p)} for p in gt.truth
    )
    stock = [k for k, v in second.items() if v["class"] == "stockpile"]
    changes = [second[k]["area_change_m2"] for k in stock]
    assert any(c > 0 for c in changes) and any(c < 0 for c in changes)
    for k in stock:
        assert second[k]["area_change_m2"] == pytest.approx(
            second[k]["area_m2"] - first[k]["area_m2"]
        )
    new_pits = {k for k, v in second.items() if v["class"] == "mining_scar"} - set(first)
    assert new_pits
    assert not _features(gt.clouds[0])  # first date is clear
    assert _features(gt.clouds[1])


def test_clouds_are_bright(gt):
    with rasterio.open(gt.scenes[1]) as src:
        b02 = BAND_NAMES.index("B02")
        for f in _features(gt.clouds[1]):
            inner = shape(f["geometry"]).buffer(-30.0)
            if inner.is_empty:
                continue
            pt = inner.representative_point()
            assert next(src.sample([(pt.x, pt.y)]))[b02] > 4000


def test_illegal_sites_match_concessions(gt):
    conc = [shape(f["geometry"]) for f in _features(gt.concessions)]
    prot = [shape(f["geometry"]) for f in _features(gt.protected_areas)]
    union = unary_union(conc)
    reasons_seen = set()
    for truth, illegal in zip(gt.truth, gt.illegal, strict=True):
        expected = {}
        for f in _features(truth):
            if f["properties"]["class"] != "mining_scar":
                continue
            g = shape(f["geometry"])
            if any(g.intersection(p).area > 0 for p in prot):
                expected[f["properties"]["id"]] = "protected_area"
            elif g.difference(union).area > 0.5 * g.area:
                expected[f["properties"]["id"]] = "outside_concession"
        got = {f["properties"]["id"]: f["properties"]["reason"] for f in _features(illegal)}
        assert got == expected
        reasons_seen |= set(got.values())
        legal = [f for f in _features(truth) if f["properties"]["class"] == "mining_scar"]
        assert any(not f["properties"]["illegal"] for f in legal)
    assert reasons_seen == {"protected_area", "outside_concession"}
    assert all(f["properties"]["licence_id"] for f in _features(gt.concessions))


def test_frames_and_labels(gt):
    labels = gt.frames_labels
    with labels.open() as fh:
        assert fh.readline().strip() == "path,camera_id,timestamp,label"
    rows = list(csv.DictReader(labels.open()))
    assert len(rows) == 12
    assert {r["label"] for r in rows} == set(GRADES)
    for r in rows:
        assert re.fullmatch(rf"{r['camera_id']}/\d{{8}}T\d{{6}}\.png", r["path"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", r["timestamp"])
        img = np.asarray(Image.open(labels.parent / r["path"]))
        assert img.shape == (128, 128, 3) and img.dtype == np.uint8
    corrupted = sorted(gt.corrupted_dir.glob("*/*/labels.csv"))
    assert len(corrupted) == 7 * 5
    for csv_path in corrupted:
        sub = list(csv.DictReader(csv_path.open()))
        assert sub == rows
        assert all((csv_path.parent / r["path"]).is_file() for r in sub)


def test_high_grade_is_redder_than_waste(gt):
    rows = list(csv.DictReader(gt.frames_labels.open()))

    def redness(grade):
        imgs = [
            np.asarray(Image.open(gt.frames_labels.parent / r["path"])).astype(float)
            for r in rows
            if r["label"] == grade
        ]
        return np.mean([(i[..., 0] - i[..., 2]).mean() for i in imgs])

    assert redness("high") > redness("medium") > redness("low") > redness("waste")


def test_same_seed_same_bytes_different_seed_differs(gt, tmp_path):
    again = make_ground_truth(tmp_path / "again", size="tiny", seed=0)
    assert _digest(again.out_dir) == _digest(gt.out_dir)
    other = make_ground_truth(tmp_path / "other", size="tiny", seed=1)
    assert other.scenes[0].read_bytes() != gt.scenes[0].read_bytes()
    assert other.truth[0].read_bytes() != gt.truth[0].read_bytes()
    assert other.frames_labels.read_bytes() != gt.frames_labels.read_bytes()


def test_user_background_multiband_geotiff(gt, tmp_path):
    result = make_ground_truth(tmp_path / "user", size="tiny", seed=3, background=gt.scenes[0])
    with rasterio.open(result.scenes[0]) as src:
        assert src.descriptions == BAND_NAMES
        assert src.bounds == rasterio.open(gt.scenes[0]).bounds


def test_bad_inputs(tmp_path):
    with pytest.raises(ConfigError, match="unknown size 'huge'"):
        make_ground_truth(tmp_path, size="huge")
    with pytest.raises(ConfigError, match="sun elevation"):
        make_ground_truth(tmp_path, sun=(150.0, 0.0))
    with pytest.raises(ConfigError, match="dsm_crs"):
        make_ground_truth(tmp_path, dsm_crs="EPSG:nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SceneError, match="no band files"):
        make_ground_truth(tmp_path / "o", background=tmp_path / "empty")


def test_cli(tmp_path):
    runner = CliRunner()
    sun = ["--sun-azimuth", "150", "--sun-elevation", "20"]
    args = ["--out", str(tmp_path / "cli"), "--size", "tiny", "--seed", "2", *sun]
    result = runner.invoke(synth, args)
    assert result.exit_code == 0, result.output
    with rasterio.open(tmp_path / "cli" / "scenes" / "scene_2024-01-15.tif") as src:
        assert (src.tags()["SUN_AZIMUTH"], src.tags()["SUN_ELEVATION"]) == ("150.000", "20.000")
    assert (tmp_path / "cli" / "frames" / "labels.csv").is_file()
    assert (tmp_path / "cli" / "licensed_ports.geojson").is_file()
    bad = runner.invoke(synth, ["--out", str(tmp_path / "x"), "--size", "huge"])
    assert bad.exit_code == 2
    assert "--size" in bad.output
    half = runner.invoke(synth, ["--out", str(tmp_path / "x"), "--sun-azimuth", "150"])
    assert half.exit_code == 2 and "--sun-elevation" in half.output
    crs = runner.invoke(synth, ["--out", str(tmp_path / "x"), "--dsm-crs", "EPSG:nope"])
    assert crs.exit_code == 2 and "--dsm-crs" in crs.output


def test_stockpiles_are_cones_with_truth_height_and_volume(gt):
    previous = {}
    for truth in gt.truth:
        for f in _features(truth):
            p = f["properties"]
            if p["class"] != "stockpile":
                assert "volume_m3" not in p
                continue
            assert p["shape"] == "cone"
            assert p["side_slope_deg"] == REPOSE_DEG[p["commodity"]]
            # height = tan(repose) x nominal radius; the footprint is star-shaped around it
            radius = p["height_m"] / np.tan(np.radians(p["side_slope_deg"]))
            assert 0.7 < np.sqrt(p["area_m2"] / np.pi) / radius < 1.3
            # volume = height x continuous area / 3; the pixel area differs by edge pixels
            assert p["volume_m3"] == pytest.approx(p["height_m"] * p["area_m2"] / 3, rel=0.1)
            if p["id"] in previous:
                assert p["volume_change_m3"] == pytest.approx(
                    p["volume_m3"] - previous[p["id"]], abs=0.2
                )
            else:
                assert p["volume_change_m3"] is None
            previous[p["id"]] = p["volume_m3"]
            assert shape(f["geometry"]).contains(Point(p["apex_x"], p["apex_y"]))


def test_dsm_files(gt):
    manifest = json.loads(gt.manifest.read_text())
    with rasterio.open(gt.scenes[0]) as scene:
        scene_bounds = scene.bounds
    for dsm, truth, acq in zip(gt.dsms, gt.truth, manifest["acquisitions"], strict=True):
        with rasterio.open(dsm) as src:
            assert src.crs.to_epsg() == 32618 and src.res == (2.0, 2.0)
            assert src.nodata == DSM_NODATA and src.dtypes[0] == "float32"
            assert src.tags()["ACQUISITION"] == acq["date"] and acq["dsm"] == f"dsm/{dsm.name}"
            z = src.read(1, masked=True)
            assert 0.1 < z.mask.mean() < 0.9  # the survey covers the concessions only
            assert (
                src.bounds.left >= scene_bounds.left - 2 and src.bounds.top <= scene_bounds.top + 2
            )
            for f in _features(truth):
                p = f["properties"]
                if p["class"] != "stockpile" or not p["dsm_covered"]:
                    continue
                apex = next(src.sample([(p["apex_x"], p["apex_y"])]))[0]
                ring = shape(f["geometry"]).buffer(30).exterior
                ground = [v[0] for v in src.sample(
                    [ring.interpolate(t, normalized=True).coords[0] for t in np.linspace(0, 1, 24)]
                )]  # fmt: skip
                # the apex stands height_m above the surrounding terrain (a few m of relief)
                assert apex - np.median(ground) == pytest.approx(p["height_m"], abs=3.0)


def test_cone_shadow_follows_the_sun():
    """A round 40 deg cone: shadow tip at height / tan(elevation); none above 40 deg."""
    cone = Cone(50.0, 50.0, 5.0, np.zeros(3), np.zeros(3), 5.0 * 10 * np.tan(np.radians(40)))
    for elevation in (15.0, 25.0, 35.0):
        row0, col0, frac = cone_shadow(cone, 200, 200, (180.0, elevation), 10.0, 0.0)
        # sun in the south: the shadow runs north (up), along the apex's column
        rows = np.nonzero(frac[:, int(50 - col0)] > 0)[0] + row0
        tip = 50.0 - rows.min()  # pixels from the apex to the farthest shadowed pixel's edge
        expected = cone.height_m / np.tan(np.radians(elevation)) / 10.0
        assert tip == pytest.approx(expected, abs=1.0)
        # shadow area beyond the base: hull of circle and tip point minus the circle
        d, r = expected, 5.0
        area = r * np.sqrt(d * d - r * r) - r * r * np.arccos(r / d)
        assert frac.sum() == pytest.approx(area, rel=0.15)
    row0, col0, frac = cone_shadow(cone, 200, 200, (180.0, 45.0), 10.0, 0.0)
    assert frac.max() == 0.0
