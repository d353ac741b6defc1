"""Hard negatives: background tiles a first model mistakes for objects, kept every pass.

``data.majority_keep`` thins the pure background tiles (96 % of the demo's tiles)
to a tenth per pass, drawn at random: most of them are plain fields the model
gets right anyway, and the few that look like a pile or a pit are rarely seen.
With ``train.hard_negatives: F`` (> 0) :func:`nsl_models.train.train_from_config`
trains twice:

1. **Round 1**: the same config with ``hard_negatives: 0``, into
   ``MODEL_DIR/round1`` (a complete model folder).
2. **Mining** (:func:`mine`): round 1 scores every *pure majority* tile of the
   training split, the tiles that undersampling thins; a tile's hardness is the
   largest probability, over its valid pixels, of any class other than the
   majority (the pixel head's served probabilities; the tile probabilities without
   a pixel head). The hardest ``F`` of them (ties broken by tile id) are written to
   ``MODEL_DIR/hard_negatives.json``.
3. **Round 2**: from scratch, the same seed and data, except that the mined tiles
   are kept every pass (probability 1 instead of ``majority_keep``). The class
   weights, the epoch length and the calibration's logit adjustment follow the
   counts this sampling gives (:meth:`nsl_models.data.ClassCounts.expected`).

Mining reads the training split only: the validation split still chooses the
checkpoint, the calibration and the operating points on tiles that neither round
trained on (mining on validation would fit those choices to it).

Example:
    >>> hard = mine(files, spec, config.data, budget, majority=0,
    ...             predict=lambda images: probs, fraction=0.1)  # doctest: +SKIP
    >>> hard.tiles, hard.pixels  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.spec import IMAGE_RAW, TILE_ID
from nsl_models.configs import DataConfig
from nsl_models.data.counts import pure_class
from nsl_models.data.labels import LabelBudget, hiding_cuts, in_split, pixel_label, tile_label
from nsl_models.data.records import decode_image, interleaved_records, tile_features
from nsl_models.data.spec import Split, TileSpec

__all__ = ["FILE", "HardNegatives", "mine", "read", "write"]

#: Name of the mined set in a model folder.
FILE = "hard_negatives.json"

#: ``predict(float32[B, H, W, C]) -> float[B, H, W, K] or float[B, K]``: served probabilities.
Predict = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class HardNegatives:
    """The mined tiles (what ``hard_negatives.json`` holds).

    Attributes:
        tile_ids: ``tile/id`` of each mined tile, hardest first.
        pixels: Labelled pixels of those tiles (all of the majority class), for
            the expected pixel counts.
        fraction: ``train.hard_negatives``: the share of the pool mined.
        pool: Pure majority tiles of the training split that were scored.
        least_hardness: Hardness of the last tile mined (0 when none).
        median_hardness: Median hardness over the whole pool.
    """

    tile_ids: tuple[str, ...]
    pixels: int
    fraction: float
    pool: int
    least_hardness: float
    median_hardness: float

    @property
    def tiles(self) -> int:
        """How many tiles were mined."""
        return len(self.tile_ids)

    def summary(self) -> dict[str, Any]:
        """What ``metadata.json`` records (everything but the ids)."""
        out = asdict(self)
        del out["tile_ids"]
        out["tiles"] = self.tiles
        return out


def write(hard: HardNegatives, model_dir: str) -> str:
    """Write ``hard`` as ``MODEL_DIR/hard_negatives.json``; returns the path."""
    path = os.path.join(model_dir, FILE)
    os.makedirs(model_dir, exist_ok=True)
    with open(path, "w") as f:
        json.dump({**asdict(hard), "tile_ids": list(hard.tile_ids)}, f, indent=1)
    return path


def read(path: str) -> HardNegatives:
    """Read a ``hard_negatives.json`` written by :func:`write`."""
    with open(path) as f:
        raw = json.load(f)
    return HardNegatives(**{**raw, "tile_ids": tuple(raw["tile_ids"])})


def mine(
    files: Sequence[str],
    spec: TileSpec,
    config: DataConfig,
    budget: LabelBudget | None,
    majority: int,
    predict: Predict,
    fraction: float,
    batch_size: int = 256,
) -> HardNegatives:
    """Score the training split's pure ``majority`` tiles and keep the hardest ``fraction``.

    Streams the records in batches: only ids, hardness and pixel counts are held.

    Args:
        files: The training TFRecords (plain or packed; neighbours are not read).
        spec: The tile spec.
        config: The data section (split and label hiding, as in training).
        budget: The trainer's label budget (hidden labels are not pure tiles).
        majority: The majority class (:attr:`nsl_models.data.ClassCounts.majority`).
        predict: Served probabilities of a batch of raw images.
        fraction: Share of the pool to keep, in ``(0, 1]``.
        batch_size: Tiles per ``predict`` call.

    Returns:
        The :class:`HardNegatives` (empty when the pool is).

    Raises:
        ValueError: ``fraction`` outside ``(0, 1]``.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    use_legacy_keras()
    import tensorflow as tf

    feats = tile_features(spec, 0)
    cuts = hiding_cuts(files, spec, config, Split.TRAIN, budget)

    def parse(record: Any) -> Any:
        ex = tf.io.parse_single_example(record, feats)
        label = tile_label(ex, config, Split.TRAIN, cuts)
        pixels = pixel_label(ex, label, spec)
        pool = in_split(ex, spec, config, Split.TRAIN) & (pure_class(label, pixels) == majority)
        return ex[TILE_ID], decode_image(ex[IMAGE_RAW], spec), pixels >= 0, pool

    ids: list[str] = []
    hardness: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    ds = interleaved_records(files).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.filter(lambda _i, _x, _v, pool: pool).batch(batch_size)
    for tid, image, valid, _ in ds.as_numpy_iterator():
        probs = np.asarray(predict(image.astype(np.float32)), np.float64)
        other = 1.0 - probs[..., majority]
        if other.ndim == 3:  # pixel probabilities: the worst valid pixel
            other = np.where(valid, other, 0.0).max(axis=(1, 2))
        ids.extend(t.decode() for t in tid)
        hardness.append(other)
        counts.append(valid.sum(axis=(1, 2)))
    if not ids:
        return HardNegatives((), 0, fraction, 0, 0.0, 0.0)
    score = np.concatenate(hardness)
    npix = np.concatenate(counts)
    n = max(1, round(fraction * len(ids)))
    order = sorted(range(len(ids)), key=lambda i: (-score[i], ids[i]))[:n]
    return HardNegatives(
        tile_ids=tuple(ids[i] for i in order),
        pixels=int(npix[order].sum()),
        fraction=fraction,
        pool=len(ids),
        least_hardness=float(score[order[-1]]),
        median_hardness=float(np.median(score)),
    )
