import numpy as np
import pytest
from affine import Affine

from minewatch.errors import LabelError
from minewatch.labels import (
    WEAK_CLASSES,
    FrameLabels,
    VectorLabels,
    band_roles,
    tile_label,
    weak_label_mask,
)
from tests.factories import box_geometry, feature, write_geojson

UTM_T = Affine(10, 0, 500_000, 0, -10, 4_000_000)


def test_rasterize_in_the_scene_crs_from_labels_in_another_crs(tmp_path):
    from pyproj import Transformer

    # a 100 m x 50 m box in UTM 33N, written in WGS84
    to_ll = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
    ll = to_ll.transform_bounds(500_100, 3_999_850, 500_200, 3_999_900)
    path = write_geojson(tmp_path / "l.geojson", [feature(box_geometry(*ll), **{"class": "pile"})])
    labels = VectorLabels.load(path)
    assert labels.classes == ("background", "pile")
    mask = labels.rasterize("EPSG:32633", UTM_T, (30, 30))
    assert (mask == 1).sum() == pytest.approx(50, abs=6)  # 10 x 5 px, edges reprojected
    assert mask[12:14, 11:19].all() and mask[0, 0] == 0
    sparse = VectorLabels.load(path, sparse=True)
    assert sparse.rasterize("EPSG:32633", UTM_T, (30, 30))[0, 0] == 255


def test_smaller_objects_are_drawn_over_larger_ones(tmp_path):
    big = box_geometry(500_000, 3_999_800, 500_200, 4_000_000)
    small = box_geometry(500_050, 3_999_900, 500_100, 3_999_950)
    path = write_geojson(
        tmp_path / "l.geojson",
        [feature(small, **{"class": "pile"}), feature(big, **{"class": "pit"})],
        crs="EPSG:32633",
    )
    labels = VectorLabels.load(path, classes=["pit", "pile"])
    assert labels.classes == ("background", "pit", "pile")
    mask = labels.rasterize("EPSG:32633", UTM_T, (20, 20))
    assert (mask == 2).sum() == 25 and (mask == 1).sum() == 400 - 25


def test_label_file_errors(tmp_path):
    with pytest.raises(LabelError, match="cannot read labels"):
        VectorLabels.load(str(tmp_path / "missing.geojson"))
    path = write_geojson(tmp_path / "k.geojson", [feature(box_geometry(0, 0, 1, 1), kind="x")])
    with pytest.raises(LabelError, match="no attribute 'class'"):
        VectorLabels.load(path)
    path = write_geojson(tmp_path / "e.geojson", [feature(None, **{"class": "x"})])
    with pytest.raises(LabelError, match="no usable polygon"):
        VectorLabels.load(path)
    path = write_geojson(
        tmp_path / "u.geojson",
        [
            feature(box_geometry(0, 0, 1, 1), **{"class": "x"}),
            feature(box_geometry(0, 0, 1, 1), **{"class": "y"}),
        ],
    )
    labels = VectorLabels.load(path, classes=["x"])
    assert labels.rejected == [(f"{path}#1", "class 'y' is not in --classes")]


def test_tile_label_rules():
    valid = np.ones((10, 10), bool)
    mask = np.zeros((10, 10), np.uint8)
    mask[:1, :3] = 2  # 3 % stockpile
    assert tile_label(mask, valid, 3, 0.05)[0] == 0
    label, fractions = tile_label(mask, valid, 3, 0.02)
    assert label == 2 and fractions.tolist() == pytest.approx([0.97, 0, 0.03])
    unknown = np.full((10, 10), 255, np.uint8)
    assert tile_label(unknown, valid, 3, 0.05)[0] == -1
    assert tile_label(mask, np.zeros_like(valid), 3, 0.05)[0] == -1


def test_weak_labels_from_indices():
    bands = ["B02", "B03", "B04", "B08", "B11"]
    assert band_roles(bands) == {"blue": 0, "green": 1, "red": 2, "nir": 3, "swir1": 4}
    water = [300, 600, 400, 200, 100]
    vegetation = [300, 600, 400, 3000, 1500]
    bare = [900, 1200, 1800, 2200, 3200]
    image = np.array([water, vegetation, bare], np.float32).T[:, None, :]  # [C, 1, 3]
    classes = weak_label_mask(image, bands)
    assert [WEAK_CLASSES[i] for i in classes[0]] == ["water", "vegetation", "bare_soil"]
    assert weak_label_mask(image[:2], ["B02", "B03"]) is None


def test_frames_csv_rows(tmp_path):
    cols = FrameLabels.check_header("path,camera_id,timestamp,label", "f.csv")
    row = FrameLabels.parse_line("belt1/a.png,belt1,2024-01-01T00:00:00,high", cols, "/data/frames")
    assert row.path == "/data/frames/belt1/a.png" and row.label == "high"
    with pytest.raises(LabelError, match="expected 4 fields"):
        FrameLabels.parse_line("a.png,b", cols, "/x")
    with pytest.raises(LabelError, match="lack column"):
        FrameLabels.check_header("file,label", "f.csv")
