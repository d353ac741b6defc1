"""The built-in descriptor and the SavedModel embedding loader."""

from __future__ import annotations

import json

import numpy as np
import pytest

from minewatch.embeddings import (
    BandNorm,
    describe,
    descriptor_names,
    fit_whitening,
    load_saved_model,
)

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


def test_whitening_gives_unit_covariance():
    rng = np.random.default_rng(0)
    # Rotated components of very different scales, offset from zero (as the
    # descriptor's percentiles, log spreads and textures are), one almost constant.
    rotation, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    x = (rng.standard_normal((20_000, 4)) * [3.0, 1.0, 0.3, 0.002]) @ rotation + [5, -3, -7, 0]
    w = fit_whitening(x)
    assert w is not None and w.dim == 4 and w.rows == 20_000
    z = w.apply(x)
    assert z.dtype == np.float32 and z.shape == x.shape
    assert np.allclose(z.mean(axis=0), 0, atol=1e-5)
    assert np.allclose(w.matrix, w.matrix.T)
    # Shrinkage (1e-3 of the mean eigenvalue): three directions whitened, the
    # near-constant one not blown up into noise.
    eig = np.linalg.eigvalsh(np.cov(z.T))
    assert eig[0] < 0.01 and np.allclose(eig[1:], 1, atol=0.05)


def test_whitening_spreads_cosines_of_offset_vectors():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 6)) * [1, 1, 0.1, 0.1, 0.1, 0.1] + [10, -8, 3, 3, -2, 1]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    w = fit_whitening(x)
    assert w is not None
    z = w.apply(x)
    zu = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert np.median(unit @ unit.T) > 0.95  # every pair looks alike
    assert abs(np.median(zu @ zu.T)) < 0.1  # whitened: no common direction left


def test_whitening_needs_two_distinct_rows():
    assert fit_whitening(np.ones((1, 3))) is None
    assert fit_whitening(np.ones((10, 3))) is None  # centring would leave zero vectors
    with pytest.raises(ValueError, match="NaN or inf"):
        fit_whitening(np.array([[1.0, np.nan], [0.0, 1.0]]))
    with pytest.raises(ValueError, match=r"\[rows, D\]"):
        fit_whitening(np.ones(3))


def test_whitening_shrinks_more_with_few_rows():
    rng = np.random.default_rng(2)
    few = fit_whitening(rng.standard_normal((20, 10)))
    many = fit_whitening(rng.standard_normal((20_000, 10)))
    assert few is not None and many is not None
    assert few.shrinkage == pytest.approx(0.5) and many.shrinkage == pytest.approx(1e-3)


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
