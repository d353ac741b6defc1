"""``tf.data`` input pipeline over tile TFRecords, plain or packed with neighbours.

Reads what ``minewatch tile`` writes (``docs/tiles.md``) and what the graph job
writes in NSL's packed format (each tile plus ``NL_nbr_{i}_{feature}`` and
``NL_nbr_{i}_weight`` for its neighbours, as ``nsl.tools.pack_nbrs`` makes).
Each batch is a dict of tensors with static shapes:

==============  =====================  ==============================================
key             shape / dtype          meaning
==============  =====================  ==============================================
``image``       ``[B, H, W, C]`` f32   raw pixels cast to float32 (invalid pixels 0)
``label``       ``[B]`` int32          class index; -1 unlabelled (or hidden)
``weight``      ``[B]`` f32            supervised sample weight: 0 when unlabelled,
                                       class weight x weak-label weight otherwise
``nbr_image``   ``[B, k, H, W, C]``    neighbours' raw pixels (zeros where missing);
                                       only with ``max_neighbors > 0``
``nbr_weight``  ``[B, k]`` f32         edge weights; 0 for a missing neighbour
``pixel_label`` ``[B, H, W]`` int32    ``label/mask`` class per pixel; -1 where the
                                       loss ignores it (255 unknown, invalid pixel,
                                       unlabelled or hidden tile); only with
                                       ``pixel_labels=True``
``pixel_weight`` ``[B, H, W]`` f32     per-pixel class weight x weak-label weight;
                                       0 where ``pixel_label`` is -1
``aug_image``   ``[B, H, W, C]`` f32   the image under a random corruption (training
                                       with ``corruptions`` only)
``views``       ``[B, V, H, W, C]``    ``V`` copies under random faults (training
                f32                    with ``fault_views`` only; ``augment``)
==============  =====================  ==============================================

Plain tile records read with ``max_neighbors > 0`` give all-zero neighbour
weights, so the graph term is 0 and the same model trains on either input.
Batches drop the remainder, so every shape is static (TPU, XLA).
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.errors import ConfigError, InputError
from minewatch.spec import (
    GEO_CRS,
    GEO_TRANSFORM,
    IMAGE_BANDS,
    IMAGE_DTYPE,
    IMAGE_RAW,
    IMAGE_SHAPE,
    LABEL_CLASS,
    LABEL_MASK,
    LABEL_WEAK,
    SCENE_ID,
    TILE_ID,
    UNKNOWN_CLASS,
    VALID_MASK,
    WINDOW_COL,
    WINDOW_ROW,
)
from nsl_models.configs import ClassWeighting, DataConfig, SplitKey

__all__ = [
    "NBR_PREFIX",
    "ClassCounts",
    "LabelBudget",
    "Split",
    "TilePlaces",
    "TileSpec",
    "class_weights",
    "count_classes",
    "count_labels",
    "count_pixels",
    "label_budget",
    "load_arrays",
    "load_pixel_arrays",
    "load_pixel_tiles",
    "make_dataset",
    "read_tile_spec",
    "resolve_files",
]

#: Prefix of neighbour features in NSL's packed format.
NBR_PREFIX = "NL_nbr_"

_HASH_BUCKETS = 10_000


class Split:
    """Which part of the hash split a dataset reads."""

    TRAIN = "train"
    VALIDATION = "validation"
    ALL = "all"


@dataclass(frozen=True)
class TileSpec:
    """Shape, dtype, bands, classes and normalisation of a tile set.

    Attributes:
        height: Tile rows.
        width: Tile columns.
        channels: Bands.
        dtype: numpy dtype name of ``image/raw`` (``uint16``, ``uint8``, ...).
        bands: Band names in channel order.
        classes: Class names in label index order (``stats.json`` ``classes``).
        mean: Per-band mean over valid pixels, channel order.
        std: Per-band standard deviation (1 where 0), channel order.
    """

    height: int
    width: int
    channels: int
    dtype: str
    bands: tuple[str, ...]
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(H, W, C)``."""
        return (self.height, self.width, self.channels)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


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

    Only the first record is read here; :func:`count_classes` and
    :func:`count_labels` check every other record against the spec.

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
            f"{source}: corrupt or truncated TFRecord file ({_first_line(err)})"
        ) from None
    if first is None:
        raise InputError(f"no record in {list(files)[:3]}")
    try:
        ex = tf.io.parse_single_example(first, _check_features())
    except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as err:
        raise InputError(
            f"{source} record 0: not a tf.train.Example with the tile features' types "
            f"({_first_line(err)})"
        ) from None
    tile, problem = _record_problem(ex, None)
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


def _features(spec: TileSpec, max_neighbors: int) -> dict[str, Any]:
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


def _decode(raw: Any, spec: TileSpec) -> Any:
    import tensorflow as tf

    pixels = tf.io.decode_raw(raw, tf.dtypes.as_dtype(spec.dtype), little_endian=True)
    return tf.reshape(tf.cast(pixels, tf.float32), spec.shape)


def _plane(raw: Any, spec: TileSpec, fill: int) -> Any:
    """An ``[H, W]`` uint8 plane from its bytes; ``fill`` everywhere when they are absent."""
    import tensorflow as tf

    n = spec.height * spec.width
    # Records labelled from a CSV (or not at all) store an empty mask: no pixel extent.
    raw = tf.where(tf.strings.length(raw) == n, raw, tf.constant(bytes([fill]) * n))
    # One record ([] -> [H, W]) or a batch of them ([N] -> [N, H, W]).
    shape = tf.concat([tf.shape(raw), [spec.height, spec.width]], 0)
    return tf.reshape(tf.io.decode_raw(raw, tf.uint8), shape)


def _pixel_label(ex: dict[str, Any], label: Any, spec: TileSpec) -> Any:
    """``label/mask`` as int32 with -1 where the pixel loss must ignore the pixel.

    Ignored: class 255 (unknown), a class index out of range, a pixel that is not
    valid data, and every pixel of a tile whose label is -1 (unlabelled, or hidden
    by ``label_fraction``: hidden tiles must not leak their label through pixels).
    """
    import tensorflow as tf

    mask = tf.cast(_plane(ex[LABEL_MASK], spec, UNKNOWN_CLASS), tf.int32)
    valid = _plane(ex[VALID_MASK], spec, 1) > 0
    keep = valid & (mask < spec.num_classes) & (label[..., None, None] >= 0)
    return tf.where(keep, mask, -1)


def _in_split(ex: dict[str, Any], spec: TileSpec, config: DataConfig, split: str) -> Any:
    import tensorflow as tf

    if split == Split.ALL or config.validation_fraction == 0.0 or config.validation:
        # With a validation glob, its files are the validation set (read whole)
        # and every training record trains.
        return tf.constant(split != Split.VALIDATION)
    if config.split_by is SplitKey.TILE:  # AUTO only reaches here outside a TrainerConfig
        key = ex[TILE_ID]
    elif config.split_by in (SplitKey.SCENE, SplitKey.AUTO):
        key = ex[SCENE_ID]
    else:
        block_r = config.split_block * spec.height
        block_c = config.split_block * spec.width
        key = tf.strings.join(
            [
                tf.strings.as_string(ex[WINDOW_ROW] // block_r),
                tf.strings.as_string(ex[WINDOW_COL] // block_c),
            ],
            ":",
        )
    cut = round(config.validation_fraction * _HASH_BUCKETS)
    held_out = tf.strings.to_hash_bucket_fast(key, _HASH_BUCKETS) < cut
    return held_out if split == Split.VALIDATION else tf.logical_not(held_out)


def _label_bucket(ex: dict[str, Any]) -> Any:
    """The tile's label-hiding hash bucket in ``[0, _HASH_BUCKETS)`` (elementwise)."""
    import tensorflow as tf

    # Salted so the kept labels are independent of the train/validation split.
    return tf.strings.to_hash_bucket_fast(tf.strings.join([ex[TILE_ID], "#label"]), _HASH_BUCKETS)


def _label(ex: dict[str, Any], config: DataConfig, split: str, cuts: Any = None) -> Any:
    """The tile's class, or -1 when unlabelled or hidden (``cuts``, training split only).

    ``cuts`` is :attr:`LabelBudget.cuts` as an int64 tensor: a tile of class
    ``c`` keeps its label when its bucket is below ``cuts[c]``.
    """
    import tensorflow as tf

    label = tf.cast(ex[LABEL_CLASS], tf.int32)
    if split == Split.TRAIN and cuts is not None:
        cut = tf.gather(cuts, tf.clip_by_value(label, 0, cuts.shape[0] - 1))
        keep = (label < 0) | (_label_bucket(ex) < cut)
        label = tf.where(keep, label, -1)
    return label


@dataclass(frozen=True, eq=False)  # arrays: compare their fields, not the budgets
class LabelBudget:
    """Which labelled training tiles keep their label: ``data.label_fraction`` per class.

    Stratified: class ``c``, with ``n_c`` labelled tiles in the training split,
    keeps ``max(round(label_fraction * n_c), min(label_floor, n_c))`` of them
    (rounded half up), so a rare class is not left with a handful of labels by
    chance. Which ones is decided by the salted hash bucket of ``tile/id``: the
    tiles of the lowest buckets of their class, so the choice is deterministic,
    independent of the train/validation split and of the file order, and a
    larger budget keeps a superset of a smaller one's tiles. Ties (tiles of one
    class in the same of the 10,000 buckets) are kept or hidden together, so a
    class can keep a few more than its target; never fewer.

    Attributes:
        fraction: ``data.label_fraction``.
        floor: ``data.label_floor``.
        tiles: ``int64[K]`` labelled training-split tiles per class (before hiding).
        labelled: ``int64[K]`` of those that keep their label.
        cuts: ``int64[K]``: a training tile of class ``c`` keeps its label when
            its bucket is below ``cuts[c]`` (``_HASH_BUCKETS``: all of them).
    """

    fraction: float
    floor: int
    tiles: np.ndarray
    labelled: np.ndarray
    cuts: np.ndarray

    def to_metadata(self, classes: Sequence[str]) -> dict[str, Any]:
        """The budget as ``metadata.json`` records it.

        Args:
            classes: Class names in label index order.

        Returns:
            ``{"fraction", "floor", "tiles": {class: n}, "labelled": {class: n}}``.
        """
        return {
            "fraction": self.fraction,
            "floor": self.floor,
            "tiles": {name: int(n) for name, n in zip(classes, self.tiles, strict=True)},
            "labelled": {name: int(n) for name, n in zip(classes, self.labelled, strict=True)},
        }


def _label_target(n: int, fraction: float, floor: int) -> int:
    """Labels class ``n`` keeps: ``max(round(fraction * n), min(floor, n))``, half up."""
    return max(int(np.floor(fraction * n + 0.5)), min(floor, n))


def label_budget(files: Sequence[str], spec: TileSpec, config: DataConfig) -> LabelBudget:
    """Count the training split's labelled tiles and choose the ones that keep their label.

    One pass over the records without decoding pixels: per class, a histogram
    of the tiles' label-hiding hash buckets (``K x 10,000`` counts, whatever
    the number of tiles); each class's cut is then the lowest bucket at which
    its running count reaches the target (see :class:`LabelBudget`). Only
    tiles of the training part of the hash split count; validation tiles keep
    their labels. The pass also checks every record, as :func:`count_classes`.

    Args:
        files: The training TFRecord files.
        spec: The tile spec.
        config: The data section (``label_fraction``, ``label_floor``, the split).

    Returns:
        The budget; with ``label_fraction`` 1 every tile keeps its label.

    Raises:
        InputError: A bad record or file, named (see :func:`count_classes`).
    """
    use_legacy_keras()
    import tensorflow as tf

    feats = {k: v for k, v in _features(spec, 0).items() if k != IMAGE_RAW}
    k, size = spec.num_classes, spec.num_classes * _HASH_BUCKETS

    def count(ex: dict[str, Any]) -> Any:
        label = ex[LABEL_CLASS]
        train = tf.broadcast_to(_in_split(ex, spec, config, Split.TRAIN), tf.shape(label))
        index = tf.boolean_mask(
            label * _HASH_BUCKETS + _label_bucket(ex), train & (label >= 0) & (label < k)
        )
        return tf.math.bincount(
            tf.cast(index, tf.int32), minlength=size, maxlength=size, dtype=tf.int64
        )

    hist = _checked_pass(files, spec, feats, count, size, 1024).reshape(k, _HASH_BUCKETS)
    tiles = hist.sum(axis=1)
    labelled, cuts = tiles.copy(), np.full(k, _HASH_BUCKETS, np.int64)
    if config.label_fraction < 1.0:
        for c in range(k):
            target = _label_target(int(tiles[c]), config.label_fraction, config.label_floor)
            running = np.cumsum(hist[c])
            # The first bucket whose running count reaches the target; none when 0.
            last = int(np.searchsorted(running, target)) if target else -1
            cuts[c] = last + 1
            labelled[c] = running[last] if target else 0
    return LabelBudget(config.label_fraction, config.label_floor, tiles, labelled, cuts)


def _hiding_cuts(
    files: Sequence[str],
    spec: TileSpec,
    config: DataConfig,
    split: str,
    budget: LabelBudget | None,
) -> Any:
    """The cuts :func:`_label` hides labels with in ``split``; None when none are hidden.

    Without a ``budget``, it is counted from ``files`` (:func:`label_budget`).
    """
    import tensorflow as tf

    if split != Split.TRAIN or config.label_fraction >= 1.0:
        return None
    if budget is None:
        budget = label_budget(files, spec, config)
    elif (budget.fraction, budget.floor) != (config.label_fraction, config.label_floor):
        raise ValueError(
            f"the label budget was made for label_fraction {budget.fraction} and label_floor "
            f"{budget.floor}, the data config says {config.label_fraction} and "
            f"{config.label_floor}: make it from this config"
        )
    return tf.constant(budget.cuts, tf.int64)


#: Files read at once, each giving the next record in turn. A constant: the
#: cycle length decides the record order, and ``num_parallel_reads=AUTOTUNE``
#: sets it from the machine's cores, so the order would change with the machine.
_READ_CYCLE = 8


def _records(files: Sequence[str]) -> Any:
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


# -- record checks -------------------------------------------------------------------

#: Bad records named in full in the error; the rest are counted.
_SHOWN = 5


def _check_features(batched: bool = False) -> dict[str, Any]:
    """The features every tile record must hold, parsed so that a bad one cannot fail a batch.

    Ragged: a missing feature gives an empty row and a repeated one a longer
    row, both reported by :func:`_problem` instead of failing ``parse_example``.
    ``batched`` (the pass over every record) reads ``image/raw`` as one string,
    missing as empty: a ragged row of large strings costs more to build, and a
    record holding two of them (which no writer makes) fails its batch, which
    :func:`_unreadable` then names by file.
    """
    import tensorflow as tf

    raw = tf.io.FixedLenFeature([], tf.string, default_value="") if batched else None
    return {
        TILE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        IMAGE_RAW: raw or tf.io.RaggedFeature(tf.string),
        IMAGE_SHAPE: tf.io.RaggedFeature(tf.int64),
        IMAGE_DTYPE: tf.io.RaggedFeature(tf.string),
        IMAGE_BANDS: tf.io.RaggedFeature(tf.string),
    }


def _problem(
    raw_values: int,
    raw_bytes: int,
    shape: list[int],
    dtype: str,
    dtype_values: int,
    bands: Sequence[str],
    spec: TileSpec | None = None,
) -> str:
    """What is wrong with one record's image features, in words; ``""`` when nothing is.

    Args:
        raw_values: Values of ``image/raw`` (1 in a tile record).
        raw_bytes: Their total length.
        shape: ``image/shape``.
        dtype: ``image/dtype`` (its values joined).
        dtype_values: Values of ``image/dtype`` (1).
        bands: ``image/bands``.
        spec: The spec every record must match; None checks only that the
            record agrees with itself.
    """
    present = {
        IMAGE_RAW: raw_values,
        IMAGE_SHAPE: len(shape),
        IMAGE_DTYPE: dtype_values,
        IMAGE_BANDS: len(bands),
    }
    missing = [name for name, n in present.items() if n == 0]
    if missing:
        return f"missing features {missing}"
    if raw_values != 1 or dtype_values != 1:
        return f"image/raw holds {raw_values} values and image/dtype {dtype_values}, not 1 each"
    if len(shape) != 3 or min(shape) <= 0:
        return f"image/shape {shape} is not [height, width, bands]"
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        return f"image/dtype {dtype!r} is not a numpy dtype name"
    need = shape[0] * shape[1] * shape[2] * itemsize
    if raw_bytes != need:
        return (
            f"image/raw holds {raw_bytes} bytes and image/shape {shape} of {dtype} needs "
            f"{need}: they do not match"
        )
    if len(bands) != shape[2]:
        return f"image/bands {list(bands)} and image/shape {shape} do not match"
    if spec is None:
        return ""
    for name, mine, theirs in (
        (IMAGE_SHAPE, shape, list(spec.shape)),
        (IMAGE_DTYPE, dtype, spec.dtype),
        (IMAGE_BANDS, list(bands), list(spec.bands)),
    ):
        if mine != theirs:
            return f"{name} {mine} and the first record's {theirs} do not match"
    return ""


def _bad_records(ex: dict[str, Any], spec: TileSpec) -> Any:
    """``bool[N]``: records of a parsed batch that do not fit ``spec`` (see :func:`_problem`)."""
    import tensorflow as tf

    raw, shape, dtype = ex[IMAGE_RAW], ex[IMAGE_SHAPE], ex[IMAGE_DTYPE]
    bands = ex[IMAGE_BANDS]
    nbytes = spec.height * spec.width * spec.channels * np.dtype(spec.dtype).itemsize
    fixed_shape = shape.to_tensor(default_value=-1, shape=[None, 3])
    ok = tf.strings.length(raw) == nbytes  # [N] strings, see _check_features(batched=True)
    ok &= (shape.row_lengths() == 3) & tf.reduce_all(fixed_shape == list(spec.shape), 1)
    ok &= (dtype.row_lengths() == 1) & (tf.strings.reduce_join(dtype, 1) == spec.dtype)
    ok &= (bands.row_lengths() == spec.channels) & (
        tf.strings.reduce_join(bands, 1, separator="\n") == "\n".join(spec.bands)
    )
    return tf.logical_not(ok)


def _first_line(err: Exception) -> str:
    """TensorFlow's error message without its op and function names, cut to one line."""
    if isinstance(err, UnicodeDecodeError):
        # TensorFlow fails to decode its own message when it quotes the record's bytes.
        return "TensorFlow's message quotes undecodable bytes of the record"
    text = getattr(err, "message", None) or str(err)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*", "", text).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 300 else line[:300] + "..."


def _checked_pass(
    files: Sequence[str],
    spec: TileSpec,
    feats: dict[str, Any],
    count: Any,
    size: int,
    batch_size: int,
) -> np.ndarray:
    """Sum ``count(batch)`` over every record and check each record against ``spec``.

    One batched pass. Batches are cut per file (files are read in parallel) so
    that a bad record is named by its file and index. Every record is counted
    before the error is raised, so the error gives the full number of bad ones;
    only the few records it describes are read again.

    Args:
        files: TFRecord files.
        spec: The tile spec.
        feats: Features ``count`` needs (parsed with the checked ones).
        count: Parsed batch -> ``int64[size]``, summed over the batch.
        size: Length of the count vector.
        batch_size: Records per batch.

    Returns:
        ``int64[size]``, the sum.

    Raises:
        InputError: A record that does not fit ``spec`` (missing ``image/*``
            features, pixel bytes that do not match ``image/shape``, another
            shape, dtype or bands than the first record's), a record that is not
            a ``tf.train.Example`` of the right feature types, or a corrupt or
            truncated file; the message names the file (and the record and its
            ``tile/id`` where the record parses).
    """
    import tensorflow as tf

    feats = {**feats, **_check_features(batched=True)}

    def per_file(path: Any) -> Any:
        batches = tf.data.TFRecordDataset(path).batch(batch_size).enumerate()
        return batches.map(lambda i, batch: (path, i * batch_size, batch))

    def run(path: Any, first: Any, batch: Any) -> Any:
        ex = tf.io.parse_example(batch, feats)
        return count(ex), path, first + tf.where(_bad_records(ex, spec))[:, 0]

    # The sums do not depend on the order; no step of the input pipeline trades
    # order for speed, so that op determinism (on CPU) changes nothing here.
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(files), tf.string)).interleave(
        per_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    ds = ds.map(run, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    total = np.zeros(size, np.int64)
    first_bad: list[tuple[str, int]] = []  # the first _SHOWN, by file and index
    n_bad, bad_files = 0, set[str]()
    try:
        for counts, path, index in ds.as_numpy_iterator():
            total += counts
            if len(index):
                n_bad += len(index)
                bad_files.add(path.decode())
                first_bad = sorted(first_bad + [(path.decode(), int(i)) for i in index])
                del first_bad[_SHOWN:]
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError, UnicodeDecodeError) as err:
        raise InputError(_unreadable(files, feats, err)) from None
    if n_bad:
        shown = "\n".join(
            f"  {path} record {i} {_describe(path, i, spec)}" for path, i in first_bad
        )
        more = f"\n  ... and {n_bad - len(first_bad)} more" if n_bad > len(first_bad) else ""
        raise InputError(
            f"{n_bad} training record(s) in {len(bad_files)} file(s) are not "
            f"tiles of the first record's spec ({list(spec.shape)} {spec.dtype}, bands "
            f"{list(spec.bands)}); the tile and graph jobs dead-letter such records, so these "
            "files were altered or come from elsewhere: rebuild them with `minewatch tile` / "
            f"`minewatch graph` or leave them out of data.train:\n{shown}{more}"
        )
    return total


def _describe(path: str, index: int, spec: TileSpec) -> str:
    """``(tile/id ...): <problem>`` of record ``index`` of ``path`` (read again: error path)."""
    import tensorflow as tf

    record = next(iter(tf.data.TFRecordDataset(path).skip(index).take(1)))
    tile, problem = _record_problem(tf.io.parse_single_example(record, _check_features()), spec)
    return f"(tile/id {tile!r}): {problem}"


def _record_problem(ex: dict[str, Any], spec: TileSpec | None) -> tuple[str, str]:
    """``(tile id, problem)`` of one record parsed with :func:`_check_features`."""
    raw = [len(r) for r in ex[IMAGE_RAW].numpy()]
    dtype = [d.decode(errors="replace") for d in ex[IMAGE_DTYPE].numpy()]
    problem = _problem(
        len(raw),
        sum(raw),
        [int(v) for v in ex[IMAGE_SHAPE].numpy()],
        "".join(dtype),
        len(dtype),
        [b.decode(errors="replace") for b in ex[IMAGE_BANDS].numpy()],
        spec,
    )
    return ex[TILE_ID].numpy().decode(errors="replace"), problem


def _unreadable(files: Sequence[str], feats: dict[str, Any], err: Exception) -> str:
    """Name the file behind a batch that failed to read or parse (the error path only)."""
    import tensorflow as tf

    for path in files:
        try:
            for batch in tf.data.TFRecordDataset(path).batch(256):
                tf.io.parse_example(batch, feats)
        except tf.errors.DataLossError as e:
            return f"{path}: corrupt or truncated TFRecord file ({_first_line(e)})"
        except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as e:
            return (
                f"{path}: a record is not a tf.train.Example with the tile features' types "
                f"({_first_line(e)})"
            )
    return f"{list(files)[:3]}: {_first_line(err)}"


def count_labels(
    files: Sequence[str],
    spec: TileSpec,
    config: DataConfig,
    split: str = Split.TRAIN,
    budget: LabelBudget | None = None,
) -> np.ndarray:
    """Count examples per class in one split, after ``label_fraction`` hiding.

    The tile counts of :func:`count_classes`, pure and mixed added up (the same
    pass, so every record is checked).

    Args:
        files: TFRecord files.
        spec: The tile spec.
        config: The data section (split and label hiding).
        split: ``train``, ``validation`` or ``all``.
        budget: The training split's :func:`label_budget`; counted from
            ``files`` when needed and not given.

    Returns:
        ``int64[K + 1]``: counts of classes ``0..K-1``, then of unlabelled examples.

    Raises:
        InputError: A bad record or file, named (see :func:`count_classes`).
    """
    # Without pixel labels every labelled tile is pure, so the pure and mixed
    # label counts add up to the per-class counts (float64 holds them exactly).
    labels, _ = count_classes(files, spec, config, split, budget=budget).expected()
    return labels.astype(np.int64)


def count_pixels(
    files: Sequence[str],
    spec: TileSpec,
    config: DataConfig,
    split: str = Split.TRAIN,
    budget: LabelBudget | None = None,
) -> np.ndarray:
    """Count the pixels of each class that the per-pixel loss sees in one split.

    Pixels are counted as :func:`make_dataset` hands them to the loss with
    ``pixel_labels=True`` (unknown, invalid and hidden-tile pixels left out).

    Args:
        files: TFRecord files.
        spec: The tile spec.
        config: The data section (split and label hiding).
        split: ``train``, ``validation`` or ``all``.
        budget: As for :func:`count_labels`.

    Returns:
        ``int64[K]`` pixels per class.
    """
    use_legacy_keras()
    import tensorflow as tf

    feats = {k: v for k, v in _features(spec, 0).items() if k != IMAGE_RAW}
    k = spec.num_classes
    cuts = _hiding_cuts(files, spec, config, split, budget)

    def parse(record: Any) -> Any:
        ex = tf.io.parse_single_example(record, feats)
        keep = _in_split(ex, spec, config, split)
        pixels = _pixel_label(ex, _label(ex, config, split, cuts), spec)
        pixels = tf.where(keep, pixels, -1)
        return tf.math.bincount(
            tf.reshape(pixels + 1, [-1]), minlength=k + 1, maxlength=k + 1, dtype=tf.int64
        )[1:]

    counts = np.zeros(k, np.int64)
    ds = _records(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    for c in ds.batch(1024).map(lambda c: tf.reduce_sum(c, 0)):
        counts += c.numpy()
    return counts


def _pure_class(label: Any, pixels: Any | None) -> Any:
    """The tile's label when the tile is *pure* (every labelled pixel has it), else -1.

    Works elementwise on ``[...]`` labels with ``[..., H, W]`` pixels.
    """
    import tensorflow as tf

    pure = label >= 0
    if pixels is not None:
        same = (pixels < 0) | (pixels == label[..., None, None])
        pure &= tf.reduce_all(same, axis=[-2, -1])
    return tf.where(pure, label, -1)


@dataclass(frozen=True)
class ClassCounts:
    """Labels and pixels per class in one split, apart for pure and mixed tiles.

    A tile is *pure* when it is labelled and all its labelled pixels are of its
    label's class (a background tile with no pile, road or scar pixel); the
    others (mixed or unlabelled) are *mixed*. The split lets
    :meth:`expected` give the counts after ``data.majority_keep`` resampling
    without another pass over the records.

    Attributes:
        labels_pure: ``[K]`` pure tiles per class.
        labels_mixed: ``[K + 1]`` other tiles per label, last entry unlabelled.
        pixels_pure: ``[K]`` pixels of pure tiles per class.
        pixels_mixed: ``[K]`` pixels of the other tiles per class.
    """

    labels_pure: np.ndarray
    labels_mixed: np.ndarray
    pixels_pure: np.ndarray
    pixels_mixed: np.ndarray

    @property
    def majority(self) -> int:
        """The most frequent tile class (ties: the lowest index)."""
        return int(np.argmax(self.labels_pure + self.labels_mixed[:-1]))

    def expected(self, keep: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Counts when pure majority tiles are kept with probability ``keep``.

        Args:
            keep: ``data.majority_keep``.

        Returns:
            ``(labels[K + 1], pixels[K])`` float64, expected per pass.
        """
        scale = np.ones(len(self.labels_pure))
        scale[self.majority] = keep
        labels = self.labels_mixed.astype(np.float64)
        labels[:-1] += self.labels_pure * scale
        return labels, self.pixels_mixed + self.pixels_pure * scale


def count_classes(
    files: Sequence[str],
    spec: TileSpec,
    config: DataConfig,
    split: str = Split.TRAIN,
    pixel_labels: bool = False,
    budget: LabelBudget | None = None,
) -> ClassCounts:
    """Count tiles and pixels per class in one pass (see :class:`ClassCounts`).

    Args:
        files: TFRecord files.
        spec: The tile spec.
        config: The data section (split and label hiding).
        split: ``train``, ``validation`` or ``all``.
        pixel_labels: Also count pixels (as :func:`count_pixels`) and use them
            to tell pure from mixed tiles; else every labelled tile is pure and
            the pixel counts are 0.
        budget: As for :func:`count_labels`.

    Returns:
        The counts.

    Raises:
        InputError: A record that does not fit ``spec`` (no ``image/raw`` or
            ``image/shape``, pixel bytes that do not match ``image/shape``, or
            another shape, dtype or bands than the first record's), a record
            that does not parse, or a corrupt file; before any training step,
            naming the file, the record and its ``tile/id``, with the number of
            bad records. The check rides on this pass, which reads every record
            anyway: the pixels are not decoded, only their length is compared.
    """
    use_legacy_keras()
    import tensorflow as tf

    feats = {k: v for k, v in _features(spec, 0).items() if k != IMAGE_RAW}
    k = spec.num_classes
    cuts = _hiding_cuts(files, spec, config, split, budget)

    def count(ex: dict[str, Any]) -> Any:
        # Batched: every op below is elementwise over the records of the batch.
        label = _label(ex, config, split, cuts)
        keep = tf.broadcast_to(_in_split(ex, spec, config, split), tf.shape(label))
        pixels = _pixel_label(ex, label, spec) if pixel_labels else None
        is_pure = (_pure_class(label, pixels) >= 0)[:, None]
        one = tf.one_hot(tf.where(label < 0, k, label), k + 1, dtype=tf.int64)  # [N, K + 1]
        if pixels is None:
            pix = tf.zeros([tf.shape(label)[0], k], tf.int64)
        else:
            flat = tf.reshape(pixels, [tf.shape(label)[0], -1])
            pix = tf.reduce_sum(tf.one_hot(flat, k, dtype=tf.int64), 1)  # -1 -> all zeros
        pure_one, mixed_one = tf.where(is_pure, one, 0 * one), tf.where(is_pure, 0 * one, one)
        pure_pix, mixed_pix = tf.where(is_pure, pix, 0 * pix), tf.where(is_pure, 0 * pix, pix)
        rows = tf.concat([pure_one[:, :k], mixed_one, pure_pix, mixed_pix], 1)
        return tf.reduce_sum(tf.where(keep[:, None], rows, 0 * rows), 0)

    total = _checked_pass(files, spec, feats, count, 4 * k + 1, 1024)
    return ClassCounts(
        labels_pure=total[:k],
        labels_mixed=total[k : 2 * k + 1],
        pixels_pure=total[2 * k + 1 : 3 * k + 1],
        pixels_mixed=total[3 * k + 1 :],
    )


def class_weights(counts: np.ndarray, weighting: ClassWeighting, cap: float) -> np.ndarray:
    """Per-class loss weights from label counts.

    Args:
        counts: ``[K]`` examples per class (drop the unlabelled entry of
            :func:`count_labels`' ``[K + 1]`` first).
        weighting: ``none``, ``balanced`` (``n / (K n_k)``) or ``sqrt`` of it.
        cap: Largest weight. A class absent from training weighs ``cap`` under
            ``balanced`` and ``sqrt(cap)`` under ``sqrt`` (the root of what
            ``balanced`` gives it).

    Returns:
        ``float32[K]``.
    """
    counts = np.asarray(counts, np.float64)
    if weighting is ClassWeighting.NONE:
        return np.ones(len(counts), np.float32)
    present = counts[counts > 0]
    if present.size == 0:
        return np.ones(len(counts), np.float32)
    w = np.where(counts > 0, counts.sum() / (len(present) * np.maximum(counts, 1)), cap)
    if weighting is ClassWeighting.SQRT:
        w = np.sqrt(w)
    return np.minimum(w, cap).astype(np.float32)


def _kept(x: dict[str, Any]) -> Any:
    return x["_keep"]


def _drop_keep(x: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in x.items() if k != "_keep"}


def _undersample(
    ds: Any,
    spec: TileSpec,
    config: DataConfig,
    split: str,
    pixel_labels: bool,
    majority: int,
    seed: int,
    cuts: Any,
) -> Any:
    """Drop pure ``majority`` tiles with probability ``1 - majority_keep`` (records in, out).

    The decision parses only the small label features (the pixels and the
    neighbours stay serialized), so a dropped record costs little.
    """
    import tensorflow as tf

    small = {k: v for k, v in _features(spec, 0).items() if k != IMAGE_RAW}
    keep = tf.constant(config.majority_keep, tf.float32)

    def kept(record: Any, draw: Any) -> Any:
        ex = tf.io.parse_single_example(record, small)
        label = _label(ex, config, split, cuts)
        pixels = _pixel_label(ex, label, spec) if pixel_labels else None
        prob = tf.where(_pure_class(label, pixels) == majority, keep, 1.0)
        # Dataset.random gives int64; its low 24 bits make a uniform float in [0, 1).
        u = tf.cast(draw % (1 << 24), tf.float32) / float(1 << 24)
        return u < prob

    draws = tf.data.Dataset.random(seed=seed)
    return tf.data.Dataset.zip((ds, draws)).filter(kept).map(lambda record, _: record)


def _with_corrupted_view(
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


def _with_fault_views(
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


def make_dataset(
    files: Sequence[str],
    spec: TileSpec,
    config: DataConfig,
    *,
    split: str,
    training: bool,
    class_weight: np.ndarray | None = None,
    max_neighbors: int = 0,
    seed: int = 0,
    batch_size: int | None = None,
    pixel_labels: bool = False,
    pixel_class_weight: np.ndarray | None = None,
    majority_class: int = -1,
    corruptions: Sequence[str] = (),
    max_severity: int = 3,
    fault_views: int = 0,
    view_faults: Sequence[str] = (),
    view_severities: tuple[int, int] = (1, 5),
    budget: LabelBudget | None = None,
) -> Any:
    """Batches of parsed tiles (see the module docstring for the keys).

    Args:
        files: TFRecord files (plain tiles or packed with neighbours).
        spec: The tile spec.
        config: The data section.
        split: ``train``, ``validation`` or ``all`` (of the hash split).
        training: Shuffle (seeded) and repeat forever; else one ordered pass.
        class_weight: ``float32[K]`` weights multiplied into ``weight``;
            default all 1.
        max_neighbors: Neighbours to read (0: no ``nbr_*`` keys).
        seed: Shuffle seed.
        batch_size: Batch size; default ``config.batch_size``.
        pixel_labels: Add ``pixel_label`` and ``pixel_weight`` (per-pixel head).
            Default False.
        pixel_class_weight: ``float32[K]`` per-class weights of the pixel loss
            (e.g. :func:`class_weights` of :func:`count_pixels`); default all 1.
        majority_class: With ``training`` and ``config.majority_keep < 1``, pure
            tiles of this class (:class:`ClassCounts`) are kept with probability
            ``majority_keep`` (a seeded ``tf.data.Dataset.random`` stream, so
            the data iterator checkpoints and resumes). Default -1: no
            resampling.
        corruptions: With ``training``, add ``aug_image``: each image under one
            of these :mod:`minewatch.corruptions` (drawn per example, severity
            uniform in ``1..max_severity``, seeded by a ``Dataset.random``
            stream), computed on the host with ``tf.numpy_function``. Default
            ``()``: no ``aug_image``.
        max_severity: Highest severity drawn. Default 3.
        fault_views: With ``training``, add ``views`` (``[B, V, H, W, C]``
            float32): ``V = fault_views`` copies of each image, each under one
            of ``view_faults`` (drawn per view) at a severity uniform in
            ``view_severities`` (inclusive), from a seeded ``Dataset.random``
            stream (``augment`` section of the trainer config). Default 0.
        view_faults: Names from :data:`minewatch.corruptions.CORRUPTIONS`.
        view_severities: ``(lowest, highest)`` severity of the views.
        budget: With ``split="train"`` and ``label_fraction < 1``, which labels
            are hidden (:func:`label_budget`, which the trainer counts once);
            default: counted from ``files`` here (one more pass).

    Returns:
        A ``tf.data.Dataset`` of dicts, batches of exactly ``batch_size``.
    """
    use_legacy_keras()
    import tensorflow as tf

    feats = _features(spec, max_neighbors)
    cw = tf.constant(
        np.ones(spec.num_classes, np.float32) if class_weight is None else class_weight,
        tf.float32,
    )
    pcw = tf.constant(
        np.ones(spec.num_classes, np.float32) if pixel_class_weight is None else pixel_class_weight,
        tf.float32,
    )
    weak_w = tf.constant(config.weak_label_weight, tf.float32)
    cuts = _hiding_cuts(files, spec, config, split, budget)

    def parse(record: Any) -> Any:
        ex = tf.io.parse_single_example(record, feats)
        label = _label(ex, config, split, cuts)
        labelled = label >= 0
        weak = tf.where(ex[LABEL_WEAK] > 0, weak_w, 1.0)
        weight = tf.where(labelled, tf.gather(cw, tf.maximum(label, 0)), 0.0) * weak
        out = {
            "image": _decode(ex[IMAGE_RAW], spec),
            "label": label,
            "weight": weight,
            "_keep": _in_split(ex, spec, config, split),
        }
        if pixel_labels:
            pixels = _pixel_label(ex, label, spec)
            out["pixel_label"] = pixels
            out["pixel_weight"] = tf.where(
                pixels >= 0, tf.gather(pcw, tf.maximum(pixels, 0)) * weak, 0.0
            )
        if max_neighbors:
            out["nbr_image"] = tf.stack(
                [_decode(ex[f"{NBR_PREFIX}{i}_{IMAGE_RAW}"], spec) for i in range(max_neighbors)]
            )
            out["nbr_weight"] = tf.stack(
                [ex[f"{NBR_PREFIX}{i}_weight"] for i in range(max_neighbors)]
            )
        return out

    ds = _records(files)
    if training:
        # Shuffle serialized records (smaller than decoded pixels) before parsing.
        ds = ds.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        if majority_class >= 0 and config.majority_keep < 1.0:
            ds = _undersample(ds, spec, config, split, pixel_labels, majority_class, seed, cuts)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(_kept).map(_drop_keep)
    if training and corruptions:
        ds = _with_corrupted_view(ds, spec, tuple(corruptions), max_severity, seed)
    if training and fault_views:
        ds = _with_fault_views(
            ds, spec, tuple(view_faults), fault_views, tuple(view_severities), seed
        )
    ds = ds.batch(batch_size or config.batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)


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
        **_features(spec, 0),
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
            _pixel_label(ex, label, spec),
            _in_split(ex, spec, config, split),
            ex[SCENE_ID],
            ex[WINDOW_ROW],
            ex[WINDOW_COL],
            ex[GEO_CRS],
            ex[GEO_TRANSFORM],
        )

    images, labels, masks, scenes, rows, cols = [], [], [], [], [], []
    transforms: dict[str, tuple[float, ...]] = {}
    crs: dict[str, str] = {}
    ds = _records(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
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
