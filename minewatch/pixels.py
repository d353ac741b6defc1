"""Pixel-value conventions shared by the image corruptions and the belt-camera faults."""

from __future__ import annotations

import numpy as np

__all__ = ["finish", "full_scale", "random_sign"]


def full_scale(dtype: np.dtype | type) -> float:
    """Value that stands for "full signal" in images of a dtype.

    Args:
        dtype: The image dtype.

    Returns:
        255 for uint8, 10000 for uint16 (Sentinel-2 reflectance x 10000), the
        maximum for other integer types, 1.0 for floating-point types.
    """
    dt = np.dtype(dtype)
    if dt == np.uint8:
        return 255.0
    if dt == np.uint16:
        return 10000.0
    if np.issubdtype(dt, np.integer):
        return float(np.iinfo(dt).max)
    return 1.0


def finish(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Cast float results back to ``dtype``, rounding and clipping integers.

    Args:
        values: Float results.
        dtype: The input image's dtype.

    Returns:
        ``values`` as ``dtype``.
    """
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def random_sign(rng: np.random.Generator) -> int:
    """+1 or -1 with equal odds, one draw from ``rng``."""
    return 1 if rng.integers(2) else -1
