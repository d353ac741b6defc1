"""The trainer's ``tf.data`` pipeline: :func:`make_dataset`.

Reads, shuffles, undersamples the majority class, parses, splits, adds the
corrupted views and batches; the keys of its batches are listed in
:mod:`nsl_models.data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.spec import IMAGE_RAW, LABEL_WEAK, TILE_ID
from nsl_models.configs import DataConfig
from nsl_models.data.counts import pure_class
from nsl_models.data.labels import LabelBudget, hiding_cuts, in_split, pixel_label, tile_label
from nsl_models.data.records import NBR_PREFIX, decode_image, interleaved_records, tile_features
from nsl_models.data.spec import TileSpec
from nsl_models.data.views import with_corrupted_view, with_fault_views

__all__ = ["make_dataset"]


#: Buckets of the ``always_keep`` fingerprints (the largest int64).
_FINGERPRINTS = (1 << 63) - 1


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
    always_keep: Sequence[str] = (),
) -> Any:
    """Drop pure ``majority`` tiles with probability ``1 - majority_keep`` (records in, out).

    The decision parses only the small label features (the pixels and the
    neighbours stay serialized), so a dropped record costs little. Tiles whose
    ``tile/id`` is in ``always_keep`` (hard negatives) are never dropped; the
    ids are compared as 64-bit fingerprints held in a constant, so the iterator
    stays checkpointable.
    """
    import tensorflow as tf

    small = {k: v for k, v in tile_features(spec, 0).items() if k != IMAGE_RAW}
    keep = tf.constant(config.majority_keep, tf.float32)
    hard = tf.strings.to_hash_bucket_fast(tf.constant(list(always_keep), tf.string), _FINGERPRINTS)

    def kept(record: Any, draw: Any) -> Any:
        ex = tf.io.parse_single_example(record, small)
        label = tile_label(ex, config, split, cuts)
        pixels = pixel_label(ex, label, spec) if pixel_labels else None
        prob = tf.where(pure_class(label, pixels) == majority, keep, 1.0)
        if always_keep:
            mined = tf.reduce_any(
                tf.equal(hard, tf.strings.to_hash_bucket_fast(ex[TILE_ID], _FINGERPRINTS))
            )
            prob = tf.where(mined, 1.0, prob)
        # Dataset.random gives int64; its low 24 bits make a uniform float in [0, 1).
        u = tf.cast(draw % (1 << 24), tf.float32) / float(1 << 24)
        return u < prob

    draws = tf.data.Dataset.random(seed=seed)
    return tf.data.Dataset.zip((ds, draws)).filter(kept).map(lambda record, _: record)


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
    always_keep: Sequence[str] = (),
) -> Any:
    """Batches of parsed tiles (see :mod:`nsl_models.data` for the keys).

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
            (e.g. :func:`~nsl_models.data.class_weights` of
            :func:`~nsl_models.data.count_pixels`); default all 1.
        majority_class: With ``training`` and ``config.majority_keep < 1``, pure
            tiles of this class (:class:`~nsl_models.data.ClassCounts`) are kept
            with probability ``majority_keep`` (a seeded ``tf.data.Dataset.random``
            stream, so the data iterator checkpoints and resumes). Default -1:
            no resampling.
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
            are hidden (:func:`~nsl_models.data.label_budget`, which the trainer
            counts once);
            default: counted from ``files`` here (one more pass).
        always_keep: ``tile/id`` of pure majority tiles that undersampling keeps
            every pass (:mod:`nsl_models.hard_negatives`). Default none.

    Returns:
        A ``tf.data.Dataset`` of dicts, batches of exactly ``batch_size``.
    """
    use_legacy_keras()
    import tensorflow as tf

    feats = tile_features(spec, max_neighbors)
    cw = tf.constant(
        np.ones(spec.num_classes, np.float32) if class_weight is None else class_weight,
        tf.float32,
    )
    pcw = tf.constant(
        np.ones(spec.num_classes, np.float32) if pixel_class_weight is None else pixel_class_weight,
        tf.float32,
    )
    weak_w = tf.constant(config.weak_label_weight, tf.float32)
    cuts = hiding_cuts(files, spec, config, split, budget)

    def parse(record: Any) -> Any:
        ex = tf.io.parse_single_example(record, feats)
        label = tile_label(ex, config, split, cuts)
        labelled = label >= 0
        weak = tf.where(ex[LABEL_WEAK] > 0, weak_w, 1.0)
        weight = tf.where(labelled, tf.gather(cw, tf.maximum(label, 0)), 0.0) * weak
        out = {
            "image": decode_image(ex[IMAGE_RAW], spec),
            "label": label,
            "weight": weight,
            "_keep": in_split(ex, spec, config, split),
        }
        if pixel_labels:
            pixels = pixel_label(ex, label, spec)
            out["pixel_label"] = pixels
            out["pixel_weight"] = tf.where(
                pixels >= 0, tf.gather(pcw, tf.maximum(pixels, 0)) * weak, 0.0
            )
        if max_neighbors:
            out["nbr_image"] = tf.stack(
                [
                    decode_image(ex[f"{NBR_PREFIX}{i}_{IMAGE_RAW}"], spec)
                    for i in range(max_neighbors)
                ]
            )
            out["nbr_weight"] = tf.stack(
                [ex[f"{NBR_PREFIX}{i}_weight"] for i in range(max_neighbors)]
            )
        return out

    ds = interleaved_records(files)
    if training:
        # Shuffle serialized records (smaller than decoded pixels) before parsing.
        ds = ds.shuffle(config.shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        if majority_class >= 0 and config.majority_keep < 1.0:
            ds = _undersample(
                ds, spec, config, split, pixel_labels, majority_class, seed, cuts, always_keep
            )
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.filter(_kept).map(_drop_keep)
    if training and corruptions:
        ds = with_corrupted_view(ds, spec, tuple(corruptions), max_severity, seed)
    if training and fault_views:
        lowest, highest = view_severities
        ds = with_fault_views(ds, spec, tuple(view_faults), fault_views, (lowest, highest), seed)
    ds = ds.batch(batch_size or config.batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)
