"""The built-in descriptor and the SavedModel embedding loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minewatch.embeddings import BandNorm, describe, descriptor_names, load_saved_model

BANDS = ("B02", "B03", "B04", "B08")
NORM = BandNorm({b: 1000.0 for b in BANDS}, {b: 100.0 for b in BANDS})


def test_band_norm_from_tile_stats():
    stats = {"bands": {"B02": {"mean": 5.0, "std": 2.0, "count": 3}, "B03": {"mean": 1, "std": 0}}}
    norm = BandNorm.from_json(json.dumps(stats))
    mean, std = norm.arrays(["B02", "B03", "X"])
    assert mean.tolist() == [5, 1, 0] and std.tolist() == [2, 1, 1]


def test_names_and_dimension():
    names = descriptor_names(BANDS)
    assert len(names) == 6 * 4 + 2  # ndvi and ndwi; no swir1 for the bare-soil index
    assert names[0] == "mean/B02" and names[-1] == "index/ndwi"
    image = np.full((8, 8, 4), 1000, np.uint16)
    assert describe(image, np.ones((8, 8), bool), BANDS, NORM).shape == (26,)


def test_mean_image_is_centred_and_flat():
    image = np.full((8, 8, 4), 1000, np.uint16)
    d = dict(
        zip(
            descriptor_names(BANDS),
            describe(image, np.ones((8, 8), bool), BANDS, NORM),
            strict=True,
        )
    )
    assert d["mean/B02"] == 0 and d["q90/B08"] == 0 and d["index/ndvi"] == 0
    assert d["texture/B02"] == pytest.approx(np.log(1e-3))


def test_only_valid_pixels_count():
    image = np.full((8, 8, 4), 1100, np.uint16)
    image[:, :4] = 60000  # garbage outside the valid area
    valid = np.zeros((8, 8), bool)
    valid[:, 4:] = True
    d = dict(zip(descriptor_names(BANDS), describe(image, valid, BANDS, NORM), strict=True))
    assert d["mean/B03"] == pytest.approx(1.0) and d["q10/B03"] == pytest.approx(1.0)


def test_texture_separates_stripes_from_flat():
    flat = np.full((16, 16, 4), 1000, np.uint16)
    stripes = flat.copy()
    stripes[::2] += 200
    stripes[1::2] -= 200
    ones = np.ones((16, 16), bool)
    a, b = describe(flat, ones, BANDS, NORM), describe(stripes, ones, BANDS, NORM)
    names = descriptor_names(BANDS)
    t = names.index("texture/B02")
    assert b[t] > a[t] + 5
    assert a[names.index("mean/B02")] == pytest.approx(b[names.index("mean/B02")])


def test_no_valid_pixel_gives_nan():
    out = describe(np.zeros((4, 4, 4), np.uint16), np.zeros((4, 4), bool), BANDS, NORM)
    assert np.isnan(out).all()


def test_nan_pixels_give_non_finite():
    image = np.full((4, 4, 4), 1000.0, np.float32)
    image[0, 0, 0] = np.nan
    assert not np.isfinite(describe(image, np.ones((4, 4), bool), BANDS, NORM)).all()


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from minewatch.compat import use_legacy_keras

    use_legacy_keras()
    import tensorflow as tf

    class Embedder(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 4], tf.float32)])
        def embed(self, images):
            return {"embedding": tf.reduce_mean(images, axis=[1, 2]) * 2.0}

    path = str(tmp_path_factory.mktemp("model") / "embedder")
    module = Embedder()
    tf.saved_model.save(module, path, signatures={"embedding": module.embed})
    return path


def test_saved_model_embedding(saved_model):
    embed = load_saved_model(saved_model)
    images = np.arange(2 * 3 * 3 * 4, dtype=np.float32).reshape(2, 3, 3, 4)
    np.testing.assert_allclose(embed(images), images.mean(axis=(1, 2)) * 2, rtol=1e-6)


def test_saved_model_without_signature(saved_model):
    with pytest.raises(ValueError, match="no signature 'penultimate'"):
        load_saved_model(saved_model, "penultimate")
