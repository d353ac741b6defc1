"""Corrupted copies of the training images: ``aug_image`` and ``views``.

``aug_image`` (one random corruption per example, ``adversarial.corruptions``)
is where the adversarial arm searches its perturbation; ``views`` (``V`` random
faults per example, the ``augment`` section) feed the fault-consistency term and
the fault adversary (:mod:`nsl_models.models`). Both run
:mod:`minewatch.corruptions` on the host through ``tf.numpy_function``, seeded
per example by a ``tf.data.Dataset.random`` stream zipped onto the examples, so
the draws checkpoint and resume with the data iterator.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nsl_models.data.spec import TileSpec

__all__ = ["with_corrupted_view", "with_fault_views"]


def with_corrupted_view(
    ds: Any, spec: TileSpec, names: tuple[str, ...], max_severity: int, seed: int
) -> Any:
    """Add ``aug_image``: the example's pixels under one random named corruption."""
    import tensorflow as tf

    from minewatch.corruptions import corrupt

    dtype = np.dtype(spec.dtype)

    def corrupt_one(image: np.ndarray, draw: np.int64) -> np.ndarray:
        rng = np.random.default_rng(int(draw) & 0x7FFFFFFF)
        name = names[int(rng.integers(len(names)))]
        severity = int(rng.integers(1, max_severity + 1))
        # Decoded pixels are the stored integers as float32: the cast back is exact.
        return corrupt(image.astype(dtype), name, severity, rng).astype(np.float32)

    def add(x: dict[str, Any], draw: Any) -> dict[str, Any]:
        aug = tf.numpy_function(corrupt_one, [x["image"], draw], tf.float32, stateful=False)
        aug.set_shape(spec.shape)
        return {**x, "aug_image": aug}

    draws = tf.data.Dataset.random(seed=seed + 1)
    return tf.data.Dataset.zip((ds, draws)).map(add, num_parallel_calls=tf.data.AUTOTUNE)


def with_fault_views(
    ds: Any,
    spec: TileSpec,
    names: tuple[str, ...],
    views: int,
    severities: tuple[int, int],
    seed: int,
) -> Any:
    """Add ``views``: ``[V, H, W, C]`` copies of the example's pixels under random faults."""
    import tensorflow as tf

    from minewatch.corruptions import corrupt

    dtype = np.dtype(spec.dtype)
    low, high = severities

    def make_views(image: np.ndarray, draw: np.int64) -> np.ndarray:
        rng = np.random.default_rng(int(draw) & 0x7FFFFFFF)
        stored = image.astype(dtype)  # decoded pixels are the stored integers: exact
        out = np.empty((views, *image.shape), np.float32)
        for v in range(views):
            name = names[int(rng.integers(len(names)))]
            severity = int(rng.integers(low, high + 1))
            out[v] = corrupt(stored, name, severity, rng)
        return out

    def add(x: dict[str, Any], draw: Any) -> dict[str, Any]:
        made = tf.numpy_function(make_views, [x["image"], draw], tf.float32, stateful=False)
        made.set_shape((views, *spec.shape))
        return {**x, "views": made}

    draws = tf.data.Dataset.random(seed=seed + 2)
    return tf.data.Dataset.zip((ds, draws)).map(add, num_parallel_calls=tf.data.AUTOTUNE)
