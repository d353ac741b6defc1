"""Class counts over a split, and the class weights made from them.

One pass over the records, pixels not decoded (:func:`count_classes`, which also
checks every record), gives tiles and pixels per class, apart for pure and mixed
tiles (:class:`ClassCounts`), so the counts after ``data.majority_keep``
resampling need no second pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.spec import IMAGE_RAW
from nsl_models.configs import ClassWeighting, DataConfig
from nsl_models.data.checks import checked_pass
from nsl_models.data.labels import LabelBudget, hiding_cuts, in_split, pixel_label, tile_label
from nsl_models.data.records import interleaved_records, tile_features
from nsl_models.data.spec import Split, TileSpec

__all__ = [
    "ClassCounts",
    "class_weights",
    "count_classes",
    "count_labels",
    "count_pixels",
    "pure_class",
]


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
        budget: The training split's :func:`~nsl_models.data.label_budget`; counted from
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

    Pixels are counted as :func:`~nsl_models.data.make_dataset` hands them to the loss with
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

    feats = {k: v for k, v in tile_features(spec, 0).items() if k != IMAGE_RAW}
    k = spec.num_classes
    cuts = hiding_cuts(files, spec, config, split, budget)

    def parse(record: Any) -> Any:
        ex = tf.io.parse_single_example(record, feats)
        keep = in_split(ex, spec, config, split)
        pixels = pixel_label(ex, tile_label(ex, config, split, cuts), spec)
        pixels = tf.where(keep, pixels, -1)
        return tf.math.bincount(
            tf.reshape(pixels + 1, [-1]), minlength=k + 1, maxlength=k + 1, dtype=tf.int64
        )[1:]

    counts = np.zeros(k, np.int64)
    ds = interleaved_records(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    for c in ds.batch(1024).map(lambda c: tf.reduce_sum(c, 0)):
        counts += c.numpy()
    return counts


def pure_class(label: Any, pixels: Any | None) -> Any:
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

    def expected(
        self, keep: float = 1.0, always_tiles: int = 0, always_pixels: int = 0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Counts when pure majority tiles are kept with probability ``keep``.

        Args:
            keep: ``data.majority_keep``.
            always_tiles: Pure majority tiles kept every pass whatever ``keep``
                (hard negatives, :mod:`nsl_models.hard_negatives`).
            always_pixels: Labelled pixels of those tiles.

        Returns:
            ``(labels[K + 1], pixels[K])`` float64, expected per pass.
        """
        m = self.majority
        labels = self.labels_mixed.astype(np.float64)
        labels[:-1] += self.labels_pure
        pixels = (self.pixels_mixed + self.pixels_pure).astype(np.float64)
        labels[m] -= (1.0 - keep) * (self.labels_pure[m] - always_tiles)
        pixels[m] -= (1.0 - keep) * (self.pixels_pure[m] - always_pixels)
        return labels, pixels


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

    feats = {k: v for k, v in tile_features(spec, 0).items() if k != IMAGE_RAW}
    k = spec.num_classes
    cuts = hiding_cuts(files, spec, config, split, budget)

    def count(ex: dict[str, Any]) -> Any:
        # Batched: every op below is elementwise over the records of the batch.
        label = tile_label(ex, config, split, cuts)
        keep = tf.broadcast_to(in_split(ex, spec, config, split), tf.shape(label))
        pixels = pixel_label(ex, label, spec) if pixel_labels else None
        is_pure = (pure_class(label, pixels) >= 0)[:, None]
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

    total = checked_pass(files, spec, feats, count, 4 * k + 1, 1024)
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
