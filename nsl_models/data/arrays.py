"""A split's labelled tiles as numpy arrays, with where they lie (for evaluation)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.spec import (
    GEO_CRS,
    GEO_TRANSFORM,
    IMAGE_RAW,
    LABEL_CLASS,
    SCENE_ID,
    WINDOW_COL,
    WINDOW_ROW,
)
from nsl_models.configs import DataConfig
from nsl_models.data.labels import in_split, pixel_label
from nsl_models.data.records import interleaved_records, tile_features
from nsl_models.data.spec import Split, TileSpec

__all__ = ["TilePlaces", "load_arrays", "load_pixel_arrays", "load_pixel_tiles"]


def load_arrays(
    files: Sequence[str], spec: TileSpec, config: DataConfig, split: str = Split.ALL
) -> tuple[np.ndarray, np.ndarray]:
    """All labelled tiles of a split as arrays in their stored dtype (for evaluation).

    Args:
        files: TFRecord files.
        spec: The tile spec.
        config: The data section (for the split).
        split: ``train``, ``validation`` or ``all``.

    Returns:
        ``(images[N, H, W, C]`` in ``spec.dtype``, ``labels[N]`` int64); tiles
        without a label are left out.
    """
    images, labels, _ = load_pixel_arrays(files, spec, config, split)
    return images, labels


def load_pixel_arrays(
    files: Sequence[str], spec: TileSpec, config: DataConfig, split: str = Split.ALL
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`load_arrays`, plus each tile's per-pixel labels.

    Args:
        files: TFRecord files.
        spec: The tile spec.
        config: The data section (for the split).
        split: ``train``, ``validation`` or ``all``.

    Returns:
        ``(images, labels, pixel_labels[N, H, W]`` int32, -1 where unknown or
        invalid, as the pixel loss ignores them).
    """
    images, labels, masks, _ = load_pixel_tiles(files, spec, config, split)
    return images, labels, masks


@dataclass
class TilePlaces:
    """Where tiles lie: per tile its scene and pixel offsets; per scene its grid.

    Attributes:
        scene_ids: Per tile.
        rows: Per tile, ``window/row``.
        cols: Per tile, ``window/col``.
        transforms: Per scene, the affine ``(a, b, c, d, e, f)`` of its grid.
        crs: Per scene, its CRS.
    """

    scene_ids: list[str]
    rows: np.ndarray
    cols: np.ndarray
    transforms: dict[str, tuple[float, ...]]
    crs: dict[str, str]


def load_pixel_tiles(
    files: Sequence[str], spec: TileSpec, config: DataConfig, split: str = Split.ALL
) -> tuple[np.ndarray, np.ndarray, np.ndarray, TilePlaces]:
    """:func:`load_pixel_arrays` plus where each tile lies (:class:`TilePlaces`).

    The scene grid of a tile is its ``geo/transform`` moved back by its window
    offsets, so tiles of one scene can be laid back onto it.
    """
    use_legacy_keras()
    import tensorflow as tf

    feats = {
        **tile_features(spec, 0),
        GEO_CRS: tf.io.FixedLenFeature([], tf.string, default_value=""),
        GEO_TRANSFORM: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }

    def parse(record: Any) -> Any:
        ex = tf.io.parse_single_example(record, feats)
        pixels = tf.io.decode_raw(ex[IMAGE_RAW], tf.dtypes.as_dtype(spec.dtype))
        label = tf.cast(ex[LABEL_CLASS], tf.int32)
        return (
            tf.reshape(pixels, spec.shape),
            ex[LABEL_CLASS],
            pixel_label(ex, label, spec),
            in_split(ex, spec, config, split),
            ex[SCENE_ID],
            ex[WINDOW_ROW],
            ex[WINDOW_COL],
            ex[GEO_CRS],
            ex[GEO_TRANSFORM],
        )

    images, labels, masks, scenes, rows, cols = [], [], [], [], [], []
    transforms: dict[str, tuple[float, ...]] = {}
    crs: dict[str, str] = {}
    ds = interleaved_records(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    for image, label, mask, keep, sid, row, col, crs_b, tr_b in ds.batch(1024).as_numpy_iterator():
        sel = keep & (label >= 0)
        images.append(image[sel])
        labels.append(label[sel])
        masks.append(mask[sel])
        rows.append(row[sel])
        cols.append(col[sel])
        for i in np.flatnonzero(sel):
            name = sid[i].decode()
            scenes.append(name)
            if name not in transforms and len(tr_b[i]) == 48:
                a, b, c, d, e, f = np.frombuffer(tr_b[i], "<f8").tolist()
                # back from the tile's corner to the scene's
                c -= a * float(col[i]) + b * float(row[i])
                f -= d * float(col[i]) + e * float(row[i])
                transforms[name] = (a, b, c, d, e, f)
                crs[name] = crs_b[i].decode()
    for name in set(scenes) - set(transforms):  # frames: pixel grid, no CRS
        transforms[name], crs[name] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0), ""
    places = TilePlaces(
        scenes,
        np.concatenate(rows) if rows else np.zeros(0, np.int64),
        np.concatenate(cols) if cols else np.zeros(0, np.int64),
        transforms,
        crs,
    )
    if not images:
        return (
            np.zeros((0, *spec.shape), spec.dtype),
            np.zeros(0, np.int64),
            np.zeros((0, spec.height, spec.width), np.int32),
            places,
        )
    return np.concatenate(images), np.concatenate(labels), np.concatenate(masks), places
