import numpy as np
import pytest
import shapely
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st

from minewatch.sites import (
    assess_legality,
    link_series,
    match_sites,
    pixel_raster,
    polygonize,
    probability_raster,
)

T = Affine(10, 0, 500_000, 0, -10, 4_000_000)
CLASSES = ("background", "stockpile", "mining_scar")


def _tiles(hits, tile=8, stride=4, height=64, width=64):
    """Tiles of a 64 x 64 px scene; tiles whose top-left is in ``hits`` are stockpile."""
    out = []
    for r in range(0, height - tile + 1, stride):
        for c in range(0, width - tile + 1, stride):
            p = [0.05, 0.9, 0.05] if (r, c) in hits else [0.9, 0.05, 0.05]
            out.append((r, c, p))
    return out


def test_overlapping_positive_tiles_merge_into_one_site_across_tile_borders():
    hits = {(r, c) for r in (8, 12, 16) for c in (8, 12, 16)}  # 3 x 3 overlapping tiles
    probs, count, grid = probability_raster(_tiles(hits), 64, 64, T, 8, 4, 3)
    assert grid.cell == 4 and probs.shape == (3, 16, 16)
    assert count[4, 4] == 4 and count[0, 0] == 1 and count[15, 15] == 1
    sites = polygonize(probs, count, grid, "EPSG:32633", CLASSES, ["stockpile", "mining_scar"])
    (site,) = sites
    assert site.kind == "stockpile"
    # the cells that only stockpile tiles cover: rows and columns 3..4 (a tie is background)
    assert site.area_m2 == pytest.approx(2 * 2 * 40 * 40)
    assert site.geometry.bounds == (500_120, 3_999_800, 500_200, 3_999_880)
    assert site.score > 0.5


def test_separate_regions_and_min_area():
    hits = {(0, 0), (40, 40)}
    probs, count, grid = probability_raster(_tiles(hits, stride=8), 64, 64, T, 8, 8, 3)
    sites = polygonize(probs, count, grid, "EPSG:32633", CLASSES, ["stockpile"])
    assert len(sites) == 2 and all(s.area_m2 == pytest.approx(6400) for s in sites)
    assert (
        polygonize(probs, count, grid, "EPSG:32633", CLASSES, ["stockpile"], min_area_m2=7000) == []
    )


def test_smoothing_and_min_score_drop_speckles_and_keep_the_pile():
    """A 10 x 10 px pile among one-pixel speckles and a weak blob, on a per-pixel grid."""
    from minewatch.sites import CellGrid, smooth_probabilities

    probs = np.zeros((3, 40, 40), np.float32)
    probs[0] = 1.0
    winner = np.zeros((40, 40), int)
    winner[5:15, 5:15] = 1  # the pile
    for r, c in [(25, 5), (30, 30), (5, 30), (35, 12)]:
        winner[r, c] = 1  # speckles
    probs[:, winner == 1] = np.array([[0.1], [0.9], [0.0]])
    probs[:, 22:28, 20:26] = np.array([[0.45], [0.55], [0.0]])[:, :, None]  # a weak blob
    covered = np.ones((40, 40), np.int32)
    covered[:, 38:] = 0  # uncovered edge: neither counts nor changes
    grid = CellGrid(1, 40, 40, T)
    args = (probs, covered, grid, "EPSG:32633", CLASSES, ["stockpile"])
    assert len(polygonize(*args)) == 6  # pile, 4 speckles, blob
    smoothed = polygonize(*args, smooth=3)
    assert len(smoothed) == 2  # speckles gone
    (pile,) = polygonize(*args, smooth=3, min_score=0.6)  # and the weak blob
    # the box filter rounds the corners only: area within a few pixels of 10 x 10
    assert pile.area_m2 == pytest.approx(100 * 100, rel=0.05)
    s = smooth_probabilities(probs, covered > 0, 3)
    np.testing.assert_allclose(s.sum(axis=0)[covered > 0], 1.0, atol=1e-5)
    np.testing.assert_array_equal(s[:, :, 38:], probs[:, :, 38:])


def test_areas_in_a_geographic_crs_use_an_equal_area_projection():
    lonlat = Affine(0.001, 0, 10.0, 0, -0.001, 0.0005)  # about 111 m per cell at the equator
    probs = np.zeros((3, 4, 4), np.float32)
    probs[1] = 1.0
    from minewatch.sites import CellGrid

    sites = polygonize(
        probs, np.ones((4, 4)), CellGrid(1, 4, 4, lonlat), "EPSG:4326", CLASSES, ["stockpile"]
    )
    assert sites[0].area_m2 == pytest.approx(16 * 111_195**2 * 1e-6, rel=0.01)


def test_legality_rule():
    site = shapely.box(0, 0, 10, 10)
    inside = [("L1", shapely.box(-5, -5, 20, 20))]
    half = [("L2", shapely.box(0, 0, 4, 10))]
    park = [("park", shapely.box(9, 9, 30, 30))]
    assert assess_legality(site, inside, []) == (False, None, "L1")
    assert assess_legality(site, half, []) == (True, "outside_concession", "L2")
    assert assess_legality(site, inside, park) == (True, "protected_area", "L1")
    assert assess_legality(site, [], []) == (True, "outside_concession", None)


def test_series_follow_overlapping_sites():
    a1, b1 = shapely.box(0, 0, 10, 10), shapely.box(100, 100, 110, 110)
    a2, c2 = shapely.box(1, 1, 12, 12), shapely.box(300, 300, 310, 310)
    a3 = shapely.box(2, 2, 14, 14)
    series = link_series([("t1", [a1, b1]), ("t2", [c2, a2]), ("t3", [a3])])
    assert series == [[("t1", 0), ("t2", 1), ("t3", 0)], [("t1", 1)], [("t2", 0)]]


def _pixel_tiles(truth, tile=8, stride=4):
    """Per-pixel one-hot tiles cut from a ``[H, W]`` class raster, stride ``stride``."""
    h, w = truth.shape
    onehot = np.eye(3, dtype=np.float32)[truth]
    return [
        (r, c, onehot[r : r + tile, c : c + tile])
        for r in range(0, h - tile + 1, stride)
        for c in range(0, w - tile + 1, stride)
    ]


def test_pixel_raster_averages_overlaps_and_skips_invalid_pixels():
    a = np.zeros((4, 4, 3), np.float32)
    a[..., 1] = 1.0
    b = np.zeros((4, 4, 3), np.float32)
    b[..., 0] = 1.0
    b[0, 0] = 0.0  # invalid input pixel: all zero, does not count
    probs, count, grid = pixel_raster([(0, 0, a), (0, 2, b), (4, 4, a)], 6, 6, T, 3)
    assert probs.shape == (3, 6, 6) and grid.cell == 1 and grid.transform == T
    assert count[0, 0] == 1 and count[0, 2] == 1 and count[1, 2] == 2 and count[5, 5] == 1
    np.testing.assert_allclose(probs[:, 1, 3], [0.5, 0.5, 0.0])  # two tiles agree half-half
    np.testing.assert_allclose(probs[:, 0, 2], [0.0, 1.0, 0.0])  # b's invalid pixel left out
    assert count[4, 0] == 0 and probs[:, 4, 0].sum() == 0  # no tile there
    # (4, 4, a) reaches past the 6 x 6 scene: cut off, not an error
    np.testing.assert_allclose(probs[:, 5, 5], [0.0, 1.0, 0.0])


@given(
    st.lists(
        st.tuples(st.integers(-3, 30), st.integers(-3, 30), st.sampled_from([4, 8])),
        min_size=1,
        max_size=40,
    ),
    st.integers(0, 2**31 - 1),
)
@settings(max_examples=40, deadline=None)
def test_pixel_raster_block_copies_equal_adding_tile_by_tile(placed, seed):
    """Any mix of sizes, phases, repeats, edges and byte values: the one-by-one sum."""
    rng = np.random.default_rng(seed)
    tiles = []
    for row, col, size in placed:
        values = rng.integers(0, 251, (size, size, 3)).astype(np.uint8)
        values[rng.random((size, size)) < 0.2] = 0  # invalid pixels
        tiles.append((row, col, values))
    total = np.zeros((3, 24, 20), np.float64)
    count = np.zeros((24, 20), np.int64)
    for row, col, values in tiles:  # the reference: tile by tile, cut to the scene
        for r, c in np.ndindex(values.shape[:2]):
            if 0 <= row + r < 24 and 0 <= col + c < 20 and values[r, c].any():
                total[:, row + r, col + c] += values[r, c] / 250
                count[row + r, col + c] += 1
    probs, got, _ = pixel_raster(tiles, 24, 20, T, 3, scale=1 / 250)
    np.testing.assert_array_equal(got, count)
    np.testing.assert_allclose(probs, total / np.maximum(count, 1), atol=1e-6)


def test_pixel_sites_merge_across_tile_borders_with_exact_areas():
    truth = np.zeros((32, 32), np.int64)
    truth[5:19, 6:13] = 1  # a 14 x 7 px stockpile over several 8 px tiles
    truth[25:28, 20:30] = 2
    probs, count, grid = pixel_raster(_pixel_tiles(truth), 32, 32, T, 3)
    sites = polygonize(probs, count, grid, "EPSG:32633", CLASSES, ["stockpile", "mining_scar"])
    assert [s.kind for s in sites] == ["stockpile", "mining_scar"]
    assert sites[0].area_m2 == pytest.approx(14 * 7 * 100) and sites[0].score == 1.0
    assert sites[1].area_m2 == pytest.approx(3 * 10 * 100)
    assert sites[0].geometry.bounds == (500_060, 3_999_810, 500_130, 3_999_950)


@given(
    st.integers(0, 20),
    st.integers(0, 20),
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from([2, 4, 8]),
)
@settings(max_examples=25, deadline=None)
def test_pixel_site_area_is_its_pixel_count(row, col, h, w, stride):
    truth = np.zeros((32, 32), np.int64)
    truth[row : row + h, col : col + w] = 1
    probs, count, grid = pixel_raster(_pixel_tiles(truth, 8, stride), 32, 32, T, 3)
    (site,) = polygonize(probs, count, grid, "EPSG:32633", CLASSES, ["stockpile"])
    assert site.area_m2 == pytest.approx(h * w * 100)
    assert site.geometry.area == pytest.approx(h * w * 100)


def test_match_sites_is_one_to_one_by_best_iou():
    truth = [shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10), shapely.box(50, 50, 60, 60)]
    found = [
        shapely.box(1, 0, 11, 10),  # IoU 9/11 with truth 0
        shapely.box(0, 0, 10, 10),  # IoU 1 with truth 0: wins it
        shapely.box(20, 0, 24, 10),  # IoU 0.4 with truth 1
        shapely.box(100, 100, 110, 110),  # nothing
    ]
    pairs = match_sites(found, truth, min_iou=0.3)
    assert sorted((i, j) for i, j, _ in pairs) == [(1, 0), (2, 1)]
    assert match_sites(found, truth, min_iou=0.5) == [(1, 0, 1.0)]
    assert match_sites([], truth) == [] and match_sites(found, []) == []
