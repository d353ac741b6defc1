import os

import numpy as np
import pytest
import rasterio
from hypothesis import given
from hypothesis import strategies as st

from minewatch.errors import SceneError
from minewatch.rasters import CloudMask, SceneReader, plan_blocks, tile_starts
from minewatch.scenes import SceneRef
from tests.factories import ORIGIN, gradient, write_raster


@given(
    length=st.integers(0, 500),
    tile=st.integers(1, 64),
    stride=st.integers(1, 80),
    edge=st.sampled_from(["shift", "pad", "drop"]),
)
def test_tile_starts_cover_the_axis_as_the_edge_mode_says(length, tile, stride, edge):
    starts = tile_starts(length, tile, stride, edge)
    assert starts == sorted(set(starts))
    if length == 0 or (edge == "drop" and length < tile):
        assert starts == []
        return
    if length >= tile and edge != "pad":
        assert all(s + tile <= length for s in starts)  # shift and drop never run past
    if edge != "drop" and stride <= tile:
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + tile] = True
        assert covered.all()
    if edge == "pad":
        assert all(s < length for s in starts)


def test_tile_starts_examples():
    assert tile_starts(100, 32, 32, "shift") == [0, 32, 64, 68]
    assert tile_starts(100, 32, 32, "pad") == [0, 32, 64, 96]
    assert tile_starts(100, 32, 32, "drop") == [0, 32, 64]
    assert tile_starts(20, 32, 32, "shift") == [0]
    with pytest.raises(ValueError, match="edge must be one of"):
        tile_starts(10, 4, 4, "wrap")


def test_blocks_hold_every_tile_once():
    blocks = list(plan_blocks(300, 200, 32, 24, "shift", block_tiles=3))
    tiles = [(r, c) for b in blocks for r in b.row_starts for c in b.col_starts]
    expected = [(r, c) for r in tile_starts(300, 32, 24) for c in tile_starts(200, 32, 24)]
    assert sorted(tiles) == sorted(expected) and len(tiles) == len(set(tiles))
    assert max(b.num_tiles for b in blocks) == 9


def _ref(path, kind="scene"):
    return SceneRef(os.path.basename(str(path)), kind, str(path), (str(path),))


def test_read_beyond_the_edge_is_invalid_and_nodata_masked(tmp_path):
    data = gradient(50, 40)
    data[:, 0, 0] = 7
    path = write_raster(tmp_path / "a.tif", data, nodata=7)
    with SceneReader(_ref(path)) as reader:
        assert reader.band_names == ("b1", "b2", "b3")
        out, valid = reader.read(40, 30, 16, 16)
        assert valid[:10, :10].all() and not valid[10:].any() and not valid[:, 10:].any()
        np.testing.assert_array_equal(out[:, :10, :10], data[:, 40:50, 30:40])
        assert (out[:, 10:] == 0).all()
        _, valid = reader.read(0, 0, 4, 4)
        assert not valid[0, 0] and valid.sum() == 15


def test_cloud_mask_values_and_bits(tmp_path):
    qa = np.zeros((1, 20, 20), np.uint16)
    qa[0, :5] = 16  # bit 4
    qa[0, 5:10] = 9  # a class value
    path = write_raster(
        tmp_path / "c.tif", np.concatenate([gradient(20, 20, 2), qa]), descriptions=("r", "g", "QA")
    )
    cloud = CloudMask("QA", values=(9,), bits=(4,))
    with SceneReader(_ref(path), bands=["r", "g"], cloud=cloud) as reader:
        data, valid = reader.read(0, 0, 20, 20)
    assert data.shape == (2, 20, 20)
    assert not valid[:10].any() and valid[10:].all()


def test_resolution_option_resamples_onto_a_coarser_grid(tmp_path):
    path = write_raster(tmp_path / "r.tif", gradient(40, 40, 1))
    with SceneReader(_ref(path), resolution=20.0, resampling="average") as reader:
        assert reader.grid.width == reader.grid.height == 20
        data, valid = reader.read(0, 0, 20, 20)
    assert valid.all()
    expected = gradient(40, 40, 1)[0].reshape(20, 2, 20, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(data[0], expected, atol=1)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello"), "not a readable raster"),
        (lambda p: write_raster(p, gradient(8, 8), crs=None), "no CRS"),
        (
            lambda p: write_raster(
                p, gradient(8, 8), transform=ORIGIN @ rasterio.Affine.rotation(10)
            ),
            "rotated",
        ),
    ],
)
def test_bad_rasters_raise_scene_errors(tmp_path, make, message):
    path = tmp_path / "bad.tif"
    make(path)
    with pytest.raises(SceneError, match=message):
        SceneReader(_ref(path)).open()


def test_missing_band_and_size_limit(tmp_path):
    path = write_raster(tmp_path / "a.tif", gradient(30, 30), descriptions=("B02", "B03", "B04"))
    with pytest.raises(SceneError, match=r"missing band\(s\) B08 \(has: B02, B03, B04\)"):
        SceneReader(_ref(path), bands=["B02", "B08"]).open()
    with pytest.raises(SceneError, match="exceeds the limit of 100 px"):
        SceneReader(_ref(path), max_pixels=100).open()


def test_frames_need_no_crs_and_use_alpha_as_mask(tmp_path):
    rgba = np.full((4, 10, 12), 200, np.uint8)
    rgba[3, :, :6] = 0
    path = write_raster(tmp_path / "f.png", rgba, crs=None, driver="PNG")
    with SceneReader(_ref(path, "frame")) as reader:
        assert reader.band_names == ("red", "green", "blue") and reader.grid.crs == ""
        data, valid = reader.read(0, 0, 10, 12)
    assert data.shape == (3, 10, 12)
    assert valid[:, 6:].all() and not valid[:, :6].any()
