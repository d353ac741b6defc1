"""A scene's written outputs: tile footprints and the probability COG."""

from __future__ import annotations

import numpy as np
import shapely

from tests.factories import ORIGIN


def test_tile_footprints_are_the_wkb_shapely_writes_and_null_without_bounds():
    from pipelines.infer.scene_outputs import boxes_wkb

    bounds = np.array([[1.0, 2.0, 3.0, 4.0], [np.nan, 0, 1, 1], [-75.5, 40.25, -75.4, 40.3]])
    got = boxes_wkb(bounds).to_pylist()
    assert got[1] is None
    for wkb, row in zip([got[0], got[2]], bounds[[0, 2]], strict=True):
        assert wkb == shapely.to_wkb(shapely.box(*row))


def test_probability_cog_overviews_keep_class_and_probabilities_together(tmp_path):
    import rasterio

    from pipelines.infer.scene_outputs import write_probability_cog

    rng = np.random.default_rng(7)
    probs = rng.dirichlet(np.ones(3), size=(96, 80)).transpose(2, 0, 1).astype(np.float32)
    count = np.ones((96, 80), np.int32)
    count[:10, :] = 0  # an uncovered strip
    path = str(tmp_path / "scene__v1.tif")
    write_probability_cog(path, probs, count, ORIGIN, "EPSG:32633", ("a", "b", "c"), blocksize=16)
    with rasterio.open(path) as src:
        assert src.overviews(1), "expected overviews at a 16 px block size"
        assert src.profile["compress"].lower() == "zstd"
        full = src.read()
        for factor in src.overviews(1):
            shape = (src.count, src.height // factor, src.width // factor)
            small = src.read(out_shape=shape)
            covered = small[0] != 255
            assert covered.any() and (~covered).any()
            # nearest neighbour: the class pixel is a real pixel's class, the
            # highest of that same pixel's probabilities; no blended indices
            assert set(np.unique(small[0][covered])) <= {0, 1, 2}
            best = small[1:, covered].max(axis=0)
            chosen = np.take_along_axis(small[1:, covered], small[0][covered][None], 0)[0]
            np.testing.assert_array_equal(chosen, best)
            assert (small[1:, ~covered] == 255).all()
    covered = count > 0
    np.testing.assert_array_equal(full[0, covered], probs[:, covered].argmax(axis=0))
    assert (full[:, ~covered] == 255).all()
