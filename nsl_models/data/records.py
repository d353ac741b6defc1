"""Finding tile TFRecords and reading them: the files, the spec, the features, the pixels.

:func:`resolve_files` and :func:`read_tile_spec` turn the data config into files
and a :class:`~nsl_models.data.spec.TileSpec`; :func:`tile_features`,
:func:`decode_image` and :func:`decode_plane` parse one record (plain, or packed
with ``NL_nbr_*`` neighbours); :func:`interleaved_records` reads the files in an
order that depends only on their list. The other modules (and the encoder's
input pipeline) build on these.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.errors import ConfigError, InputError
from minewatch.spec import (
    IMAGE_BANDS,
    IMAGE_DTYPE,
    IMAGE_RAW,
    IMAGE_SHAPE,
    LABEL_CLASS,
    LABEL_MASK,
    LABEL_WEAK,
    SCENE_ID,
    TILE_ID,
    VALID_MASK,
    WINDOW_COL,
    WINDOW_ROW,
)
from nsl_models.configs import DataConfig
from nsl_models.data.checks import check_features, first_line, record_problem
from nsl_models.data.spec import TileSpec

__all__ = [
    "NBR_PREFIX",
    "decode_image",
    "decode_plane",
    "interleaved_records",
    "read_tile_spec",
    "resolve_files",
    "tile_features",
]


#: Prefix of neighbour features in NSL's packed format.
NBR_PREFIX = "NL_nbr_"


def resolve_files(config: DataConfig) -> tuple[list[str], list[str]]:
    """Training and validation TFRecord files of a data config.

    Args:
        config: The data section.

    Returns:
        ``(train_files, validation_files)``; the second is empty when the
        validation set is the hash split of the training files.

    Raises:
        ConfigError: ``data.tiles`` unset, or a glob that matches nothing.
    """
    if not config.tiles:
        raise ConfigError("data.tiles: required (the output folder of `minewatch tile`)")
    train_glob = config.train
    if not train_glob and config.graph:
        train_glob = os.path.join(config.graph, "packed", "*.tfrecord")
        if not glob.glob(train_glob):
            raise ConfigError(f"data.graph: no {train_glob}; run `minewatch graph`")
    if not train_glob:
        train_glob = os.path.join(config.tiles, "tiles", "*.tfrecord")
    train = sorted(glob.glob(train_glob))
    if not train:
        raise ConfigError(f"data.train: no TFRecord matches {train_glob!r}; run `minewatch tile`")
    validation = sorted(glob.glob(config.validation)) if config.validation else []
    if config.validation and not validation:
        raise ConfigError(f"data.validation: no TFRecord matches {config.validation!r}")
    return train, validation


def read_tile_spec(tiles_dir: str, files: Sequence[str]) -> TileSpec:
    """Read shape, dtype and bands from the first record, classes and stats from stats.json.

    Only the first record is read here; :func:`~nsl_models.data.count_classes` and
    :func:`~nsl_models.data.count_labels` check every other record against the spec.

    Args:
        tiles_dir: The tile job's output folder (holds ``stats.json``).
        files: TFRecord files; the first record of the first non-empty one is read.

    Returns:
        The spec.

    Raises:
        InputError: No ``stats.json``, no record, a first record that is not a
            tile (missing or inconsistent ``image/*`` features), or a band
            without statistics.
    """
    use_legacy_keras()
    import tensorflow as tf

    path = os.path.join(tiles_dir, "stats.json")
    try:
        with open(path) as f:
            stats = json.load(f)
    except OSError:
        raise InputError(
            f"{path} not found: point data.tiles at a `minewatch tile` output"
        ) from None
    first, source = None, ""
    try:
        for source in files:
            first = next(iter(tf.data.TFRecordDataset(source).take(1)), None)
            if first is not None:
                break
    except tf.errors.DataLossError as err:
        raise InputError(
            f"{source}: corrupt or truncated TFRecord file ({first_line(err)})"
        ) from None
    if first is None:
        raise InputError(f"no record in {list(files)[:3]}")
    try:
        ex = tf.io.parse_single_example(first, check_features())
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as err:
        raise InputError(
            f"{source} record 0: not a tf.train.Example with the tile features' types "
            f"({first_line(err)})"
        ) from None
    tile, problem = record_problem(ex, None)
    if problem:
        raise InputError(f"{source} record 0 (tile/id {tile!r}): {problem}")
    shape = [int(v) for v in ex[IMAGE_SHAPE].numpy()]
    dtype = ex[IMAGE_DTYPE].numpy()[0].decode()
    bands = tuple(b.decode() for b in ex[IMAGE_BANDS].numpy())
    h, w, c = shape
    band_stats = stats.get("bands") or {}
    missing = [b for b in bands if b not in band_stats]
    if missing:
        raise InputError(f"{path}: no statistics for band(s) {missing}")
    mean = tuple(float(band_stats[b]["mean"]) for b in bands)
    std = tuple(float(band_stats[b]["std"]) or 1.0 for b in bands)
    return TileSpec(
        height=h,
        width=w,
        channels=c,
        dtype=dtype,
        bands=bands,
        classes=tuple(stats.get("classes") or ()),
        mean=mean,
        std=std,
    )


def tile_features(spec: TileSpec, max_neighbors: int) -> dict[str, Any]:
    """The ``parse_single_example`` features of a tile record and its neighbours.

    Args:
        spec: The tile spec (the size of a missing neighbour's zero pixels).
        max_neighbors: ``NL_nbr_{i}_*`` neighbours to read.

    Returns:
        Feature name -> ``tf.io.FixedLenFeature``; every feature but
        ``image/raw`` has a default, so plain and packed records both parse.
    """
    import tensorflow as tf

    nbytes = spec.height * spec.width * spec.channels * np.dtype(spec.dtype).itemsize
    feats: dict[str, Any] = {
        IMAGE_RAW: tf.io.FixedLenFeature([], tf.string),
        TILE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        SCENE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        WINDOW_ROW: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        WINDOW_COL: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        LABEL_CLASS: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
        LABEL_WEAK: tf.io.FixedLenFeature([], tf.int64, default_value=0),
        LABEL_MASK: tf.io.FixedLenFeature([], tf.string, default_value=""),
        VALID_MASK: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }
    for i in range(max_neighbors):
        # A record with fewer neighbours gets zero pixels and weight 0 (no edge).
        feats[f"{NBR_PREFIX}{i}_{IMAGE_RAW}"] = tf.io.FixedLenFeature(
            [], tf.string, default_value=b"\0" * nbytes
        )
        feats[f"{NBR_PREFIX}{i}_weight"] = tf.io.FixedLenFeature([], tf.float32, default_value=0.0)
    return feats


def decode_image(raw: Any, spec: TileSpec) -> Any:
    """``image/raw`` bytes as a ``float32[H, W, C]`` tensor of the stored values."""
    import tensorflow as tf

    pixels = tf.io.decode_raw(raw, tf.dtypes.as_dtype(spec.dtype), little_endian=True)
    return tf.reshape(tf.cast(pixels, tf.float32), spec.shape)


def decode_plane(raw: Any, spec: TileSpec, fill: int) -> Any:
    """An ``[H, W]`` uint8 plane from its bytes; ``fill`` everywhere when they are absent."""
    import tensorflow as tf

    n = spec.height * spec.width
    # Records labelled from a CSV (or not at all) store an empty mask: no pixel extent.
    raw = tf.where(tf.strings.length(raw) == n, raw, tf.constant(bytes([fill]) * n))
    # One record ([] -> [H, W]) or a batch of them ([N] -> [N, H, W]).
    shape = tf.concat([tf.shape(raw), [spec.height, spec.width]], 0)
    return tf.reshape(tf.io.decode_raw(raw, tf.uint8), shape)


#: Files read at once, each giving the next record in turn. A constant: the
#: cycle length decides the record order, and ``num_parallel_reads=AUTOTUNE``
#: sets it from the machine's cores, so the order would change with the machine.
_READ_CYCLE = 8


def interleaved_records(files: Sequence[str]) -> Any:
    """The records of ``files``, interleaved in an order that depends only on the list."""
    import tensorflow as tf

    files = list(files)
    return tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.string)).interleave(
        tf.data.TFRecordDataset,
        cycle_length=max(1, min(_READ_CYCLE, len(files))),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
