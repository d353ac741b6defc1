"""The served SavedModel against its own signature."""

from __future__ import annotations

import os

import numpy as np

from tests.factories import ORACLE_TILE, save_oracle


def test_served_model_runs_batches_in_one_call_like_the_signature(tmp_path):
    """Padding to whole batches, byte rounding and masking equal per-batch signature calls."""
    import tensorflow as tf

    from pipelines.infer.serving import PROBABILITY_STEPS, ServedModel

    bands, side = ("B02", "B03", "B04"), ORACLE_TILE
    model = save_oracle(tmp_path / "m", bands=bands, pixels=True)
    loaded = tf.saved_model.load(os.path.join(model, "saved_model"))
    served = ServedModel(loaded, batch_size=16)
    rng = np.random.default_rng(3)
    images = np.zeros((37, side, side, 3), np.float32)  # 37: two whole batches and 5 over
    images[..., 0] = rng.integers(1, 3, size=(37, side, side))
    images[..., 1:] = 7.0
    images[5, :4, :4] = 0.0  # invalid pixels (all bands 0)
    probabilities, pixels = served(images)
    signature = loaded.signatures["serving_default"]
    want = signature(image=tf.constant(images))
    np.testing.assert_allclose(probabilities, want["probabilities"].numpy(), rtol=1e-6)
    expected = np.rint(np.clip(want["pixel_probabilities"].numpy(), 0, 1) * PROBABILITY_STEPS)
    expected[5, :4, :4] = 0
    assert pixels is not None and pixels.dtype == np.uint8 and pixels.shape == (37, side, side, 2)
    np.testing.assert_array_equal(pixels, expected.astype(np.uint8))
