"""Labels per tile and per pixel, the train/validation hash split, and label hiding.

:func:`in_split` puts a tile in the training or validation part of the hash
split; :func:`tile_label` and :func:`pixel_label` give the labels the losses see,
after ``data.label_fraction`` hides some (:class:`LabelBudget`, chosen by
:func:`label_budget` from a salted hash of ``tile/id``). All work elementwise on
one parsed record or a batch of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.spec import (
    IMAGE_RAW,
    LABEL_CLASS,
    LABEL_MASK,
    SCENE_ID,
    TILE_ID,
    UNKNOWN_CLASS,
    VALID_MASK,
    WINDOW_COL,
    WINDOW_ROW,
)
from nsl_models.configs import DataConfig, SplitKey
from nsl_models.data.checks import checked_pass
from nsl_models.data.records import decode_plane, tile_features
from nsl_models.data.spec import Split, TileSpec

__all__ = [
    "LabelBudget",
    "hiding_cuts",
    "in_split",
    "label_budget",
    "pixel_label",
    "tile_label",
]


#: Buckets of the hash split and of label hiding: fractions are cut at 1 / 10,000.
_HASH_BUCKETS = 10_000


def in_split(ex: dict[str, Any], spec: TileSpec, config: DataConfig, split: str) -> Any:
    """Whether the tile is in ``split`` of the hash split (elementwise).

    Args:
        ex: One parsed record, or a batch of them.
        spec: The tile spec (block size of ``split_by: block``).
        config: The data section (``validation_fraction``, ``split_by``, ...).
        split: ``train``, ``validation`` or ``all``.

    Returns:
        A bool tensor: scalar, or ``[N]`` for a batch; a scalar constant when
        no record is held out (``all``, no fraction, or a validation glob).
    """
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


def tile_label(ex: dict[str, Any], config: DataConfig, split: str, cuts: Any = None) -> Any:
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


def pixel_label(ex: dict[str, Any], label: Any, spec: TileSpec) -> Any:
    """``label/mask`` as int32 with -1 where the pixel loss must ignore the pixel.

    Ignored: class 255 (unknown), a class index out of range, a pixel that is not
    valid data, and every pixel of a tile whose label is -1 (unlabelled, or hidden
    by ``label_fraction``: hidden tiles must not leak their label through pixels).
    """
    import tensorflow as tf

    mask = tf.cast(decode_plane(ex[LABEL_MASK], spec, UNKNOWN_CLASS), tf.int32)
    valid = decode_plane(ex[VALID_MASK], spec, 1) > 0
    keep = valid & (mask < spec.num_classes) & (label[..., None, None] >= 0)
    return tf.where(keep, mask, -1)


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
    their labels. The pass also checks every record, as
    :func:`~nsl_models.data.count_classes`.

    Args:
        files: The training TFRecord files.
        spec: The tile spec.
        config: The data section (``label_fraction``, ``label_floor``, the split).

    Returns:
        The budget; with ``label_fraction`` 1 every tile keeps its label.

    Raises:
        InputError: A bad record or file, named (see :func:`~nsl_models.data.count_classes`).
    """
    use_legacy_keras()
    import tensorflow as tf

    feats = {k: v for k, v in tile_features(spec, 0).items() if k != IMAGE_RAW}
    k, size = spec.num_classes, spec.num_classes * _HASH_BUCKETS

    def count(ex: dict[str, Any]) -> Any:
        label = ex[LABEL_CLASS]
        train = tf.broadcast_to(in_split(ex, spec, config, Split.TRAIN), tf.shape(label))
        index = tf.boolean_mask(
            label * _HASH_BUCKETS + _label_bucket(ex), train & (label >= 0) & (label < k)
        )
        return tf.math.bincount(
            tf.cast(index, tf.int32), minlength=size, maxlength=size, dtype=tf.int64
        )

    hist = checked_pass(files, spec, feats, count, size, 1024).reshape(k, _HASH_BUCKETS)
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


def hiding_cuts(
    files: Sequence[str],
    spec: TileSpec,
    config: DataConfig,
    split: str,
    budget: LabelBudget | None,
) -> Any:
    """The cuts :func:`tile_label` hides labels with in ``split``; None when none are hidden.

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
