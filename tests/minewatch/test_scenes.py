from datetime import UTC, datetime

from minewatch.scenes import group_files, parse_time


def test_band_folder_is_one_scene_and_other_rasters_there_are_rejected():
    files = [f"/d/s2/s2_{b}.jp2" for b in ("B02", "B8A", "B11")] + ["/d/s2/preview.jp2"]
    refs, rejected = group_files(files)
    (ref,) = refs
    assert ref.scene_id == "s2" and ref.kind == "scene" and ref.source == "/d/s2"
    assert ref.band_names == ("B02", "B11", "B8A")
    assert ref.files == ("/d/s2/s2_B02.jp2", "/d/s2/s2_B11.jp2", "/d/s2/s2_B8A.jp2")
    (rej,) = rejected
    assert rej.input == "/d/s2/preview.jp2" and "not a band file" in rej.reason


def test_dated_names_are_scenes_not_bands():
    refs, rejected = group_files(["/x/scene_2024-01-15.tif", "/x/scene_2024-04-15.tif"])
    assert not rejected
    assert [r.scene_id for r in refs] == ["scene_2024-01-15", "scene_2024-04-15"]
    assert refs[0].acquired == "2024-01-15T00:00:00+00:00"
    assert all(r.band_names == () for r in refs)


def test_frames_get_camera_and_time_from_the_path():
    refs, _ = group_files(["/f/belt3/20240115T080910.png", "/f/loose.jpg"])
    belt, loose = sorted(refs, key=lambda r: r.source)
    assert belt.kind == "frame" and belt.camera_id == "belt3"
    assert belt.acquired == "2024-01-15T08:09:10+00:00"
    assert belt.scene_id == "belt3_20240115T080910"
    assert loose.camera_id == "" and loose.kind == "frame"


def test_colliding_ids_are_made_unique_and_sidecars_skipped():
    refs, rejected = group_files(
        ["/a/x.tif", "/b/x.tif", "/a/x.tif.aux.xml", "/a/notes.txt", "/a/x.tif"]
    )
    assert len(refs) == 2 and len({r.scene_id for r in refs}) == 2
    assert all(r.scene_id.startswith("x-") for r in refs)
    assert [r.input for r in rejected] == ["/a/notes.txt"]


def test_parse_time():
    assert parse_time("S2A_20170105T154912_B02") == datetime(2017, 1, 5, 15, 49, 12, tzinfo=UTC)
    assert parse_time("2019:03:04 10:30:00") == datetime(2019, 3, 4, 10, 30, tzinfo=UTC)
    assert parse_time("LC08_20190304_x") == datetime(2019, 3, 4, tzinfo=UTC)
    assert parse_time("scene_99999999") is None
    assert parse_time("no date") is None
