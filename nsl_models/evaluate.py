"""Held-out evaluation of exported models: clean, corrupted and adversarial.

Models are loaded through their SavedModel serving signature only (the
registry contract), so any exported model can be evaluated without the code
that trained it. The data is one of two kinds:

* a tile folder (``minewatch tile`` output): each tile is scored (``unit``
  ``tile``) and the corruptions act on the stored tiles;
* a frames folder (a ``labels.csv`` with header ``path,camera_id,timestamp,label``,
  as ``minewatch synth`` writes in ``DIR/frames/``): each belt frame is scored
  (``unit`` ``frame``), the unit the product reports. A camera fault acts on the
  whole frame, so each corruption is applied to the frames, which are then cut
  into the model's tiles as the tile job cuts them; the frame's grade is the
  argmax of the mean of its tiles' probabilities, as in the ``frame_labels``
  table of ``minewatch infer``. See :func:`evaluate_frames`.

For each model the report holds:

* ``clean``: accuracy, macro F1 and per-class precision/recall/F1/support;
* ``pixels`` (models that serve ``pixel_probabilities``): pixel accuracy, mean
  IoU and per-class pixel IoU/precision/recall/support against ``label/mask``
  (unknown and invalid pixels left out), on the same tiles;
* ``corruptions[name][severity]``: the same after
  :func:`minewatch.corruptions.corrupt_batch` (seeded) on the stored pixels;
* ``adversarial[method][epsilon]``: the same under FGSM / PGD (L-inf) attacks.
  ``epsilon`` is in units of each band's standard deviation (the model's
  normalisation, from ``metadata.json``): the raw perturbation of band ``c`` is
  ``epsilon * std[c]``, which is the L-inf ball the trainer's adversarial term
  uses. Gradients come from the loaded SavedModel.

:func:`plot_report` draws accuracy against severity (and epsilon), one line
per model, into a PNG (matplotlib, Agg backend).
"""

from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.corruptions import corrupt_batch
from minewatch.errors import ConfigError, InputError
from minewatch.rasters import tile_starts
from nsl_models import data as datalib
from nsl_models.configs import DataConfig, config_from_dict
from nsl_models.registry import read_metadata

__all__ = [
    "FRAMES_HEADER",
    "adversarial_examples",
    "classification_report",
    "cut_frames",
    "evaluate_frames",
    "evaluate_model",
    "evaluate_models",
    "is_frames_dir",
    "load_frames",
    "pixel_report",
    "plot_report",
    "write_report",
]


def classification_report(
    labels: np.ndarray, predictions: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Accuracy, macro F1 and per-class precision, recall, F1 and support.

    Args:
        labels: ``int[N]`` true classes.
        predictions: ``int[N]`` predicted classes.
        classes: Class names in index order.

    Returns:
        ``{"accuracy", "macro_f1", "balanced_accuracy", "examples", "per_class":
        {name: {"precision", "recall", "f1", "support"}}}``; a class that is
        never predicted has precision 0; macro averages use classes with support.
    """
    labels = np.asarray(labels, np.int64)
    predictions = np.asarray(predictions, np.int64)
    per_class: dict[str, dict[str, float]] = {}
    f1s, recalls = [], []
    for k, name in enumerate(classes):
        tp = int(np.sum((predictions == k) & (labels == k)))
        predicted = int(np.sum(predictions == k))
        support = int(np.sum(labels == k))
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
        if support:
            f1s.append(f1)
            recalls.append(recall)
    n = len(labels)
    return {
        "accuracy": float(np.mean(labels == predictions)) if n else float("nan"),
        "balanced_accuracy": float(np.mean(recalls)) if recalls else float("nan"),
        "macro_f1": float(np.mean(f1s)) if f1s else float("nan"),
        "examples": n,
        "per_class": per_class,
    }


def pixel_report(
    labels: np.ndarray, predictions: np.ndarray, classes: Sequence[str]
) -> dict[str, Any]:
    """Per-pixel accuracy, mean IoU and per-class IoU, precision, recall and support.

    Args:
        labels: ``int[N, H, W]`` true class per pixel; negative where unknown
            (those pixels are left out).
        predictions: ``int[N, H, W]`` predicted class per pixel.
        classes: Class names in index order.

    Returns:
        ``{"pixel_accuracy", "mean_iou", "pixels", "per_class": {name: {"iou",
        "precision", "recall", "support"}}}``; the mean IoU is over classes with
        support; a class never predicted has precision 0.
    """
    labels = np.asarray(labels).reshape(-1)
    predictions = np.asarray(predictions).reshape(-1)
    keep = labels >= 0
    labels, predictions = labels[keep].astype(np.int64), predictions[keep].astype(np.int64)
    per_class: dict[str, dict[str, float]] = {}
    ious = []
    for k, name in enumerate(classes):
        tp = int(np.sum((predictions == k) & (labels == k)))
        predicted = int(np.sum(predictions == k))
        support = int(np.sum(labels == k))
        union = predicted + support - tp
        per_class[name] = {
            "iou": tp / union if union else 0.0,
            "precision": tp / predicted if predicted else 0.0,
            "recall": tp / support if support else 0.0,
            "support": support,
        }
        if support:
            ious.append(per_class[name]["iou"])
    n = len(labels)
    return {
        "pixel_accuracy": float(np.mean(labels == predictions)) if n else float("nan"),
        "mean_iou": float(np.mean(ious)) if ious else float("nan"),
        "pixels": n,
        "per_class": per_class,
    }


def _predict(fn: Any, images: np.ndarray, batch: int = 256) -> np.ndarray:
    import tensorflow as tf

    out = [
        fn(image=tf.constant(images[i : i + batch], tf.float32))["probabilities"].numpy()
        for i in range(0, len(images), batch)
    ]
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


#: How a tile's class is read from the served probabilities (:func:`decide`).
DECISIONS = ("served", "trained")


def decide(probabilities: np.ndarray, meta: dict[str, Any], decision: str = "served") -> np.ndarray:
    """Class index per row of served tile probabilities.

    Args:
        probabilities: ``float[N, K]`` from the ``probabilities`` output.
        meta: The model's ``metadata.json``.
        decision: ``served``: the argmax of the served probabilities, which carry
            the export's logit adjustment (:mod:`nsl_models.calibration`): the
            class prior of the training data, right for accuracy and for site
            scores. ``trained``: the argmax after taking that adjustment back out,
            the head as trained (undersampled, class-weighted): the decision the
            checkpoint was selected by on validation, and the one balanced accuracy
            rewards (it leans far less on the prior). Equal for a model without
            ``calibration`` in its metadata.

    Raises:
        ValueError: ``decision`` is not one of :data:`DECISIONS`.
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision {decision!r}: choose one of {DECISIONS}")
    if decision == "served" or probabilities.size == 0:
        return np.argmax(probabilities, -1)
    adjust = (meta.get("calibration") or {}).get("logit_adjustment", {}).get("probabilities")
    if adjust is None:
        return np.argmax(probabilities, -1)
    logp = np.log(np.maximum(probabilities.astype(np.float64), np.finfo(np.float64).tiny))
    return np.argmax(logp - np.asarray(adjust, np.float64), -1)


def adversarial_examples(
    loaded: Any,
    images: np.ndarray,
    labels: np.ndarray,
    std: Sequence[float],
    epsilon: float,
    method: str = "fgsm",
    iterations: int = 10,
    batch: int = 256,
) -> np.ndarray:
    """L-inf FGSM / PGD examples against a loaded SavedModel.

    Args:
        loaded: ``tf.saved_model.load(...)`` of a model folder's ``saved_model``.
        images: Raw pixels ``[N, H, W, C]`` (any dtype; used as float32).
        labels: ``int[N]``.
        std: Per-band std; the raw radius of band ``c`` is ``epsilon * std[c]``.
        epsilon: Radius in normalised units.
        method: ``fgsm`` (one step of ``epsilon``) or ``pgd`` (``iterations``
            steps of ``2.5 epsilon / iterations``, projected, no random start).
        iterations: PGD steps. Default 10.
        batch: Batch size.

    Returns:
        float32 adversarial images, same shape.
    """
    import tensorflow as tf

    fn = loaded.signatures["serving_default"]
    radius = tf.constant(np.asarray(std, np.float32) * epsilon)
    steps, step = (1, radius) if method == "fgsm" else (iterations, radius * 2.5 / iterations)
    out = []
    for i in range(0, len(images), batch):
        x0 = tf.constant(images[i : i + batch], tf.float32)
        y = tf.constant(labels[i : i + batch], tf.int64)
        x = x0
        for _ in range(steps):
            with tf.GradientTape() as tape:
                tape.watch(x)
                probs = fn(image=x)["probabilities"]
                loss = tf.keras.losses.sparse_categorical_crossentropy(y, probs)
            grad = tape.gradient(loss, x)
            x = x + step * tf.sign(grad)
            x = tf.clip_by_value(x, x0 - radius, x0 + radius)
        out.append(x.numpy())
    return np.concatenate(out) if out else images.astype(np.float32)


def evaluate_model(
    model_dir: str,
    images: np.ndarray,
    labels: np.ndarray,
    corruptions: Sequence[str] = (),
    severities: Sequence[int] = (1, 3, 5),
    epsilons: Sequence[float] = (),
    attacks: Sequence[str] = ("fgsm", "pgd"),
    seed: int = 0,
    pixel_labels: np.ndarray | None = None,
    decision: str = "served",
) -> dict[str, Any]:
    """Evaluate one model folder on given tiles.

    Args:
        model_dir: Folder with ``saved_model/`` and ``metadata.json``.
        images: Stored pixels ``[N, H, W, C]`` in their stored dtype (the
            corruptions clip to its range).
        labels: ``int[N]``.
        corruptions: Names from :data:`minewatch.corruptions.CORRUPTIONS`.
        severities: Severities 1..5.
        epsilons: Attack radii in normalised units (empty: no attack).
        attacks: ``fgsm`` and/or ``pgd``.
        seed: Seed of the corruption generator (the same for every model).
        pixel_labels: ``int[N, H, W]`` per-pixel labels (-1 unknown); with a
            model that serves ``pixel_probabilities``, adds ``pixels``.
        decision: How a tile's class is read (:func:`decide`). Default ``served``.

    Returns:
        ``{"model", "version", "decision", "clean", "corruptions", "adversarial"}`` and
        ``pixels`` (:func:`pixel_report`) when both the model and the labels
        have pixels.
    """
    use_legacy_keras()
    import tensorflow as tf

    meta = read_metadata(model_dir)
    classes = meta["classes"]
    loaded = tf.saved_model.load(os.path.join(model_dir, "saved_model"))
    fn = loaded.signatures["serving_default"]

    def score(x: np.ndarray) -> dict[str, Any]:
        return classification_report(labels, decide(_predict(fn, x), meta, decision), classes)

    report: dict[str, Any] = {
        "model": model_dir,
        "version": meta["version"],
        "decision": decision,
        "clean": score(images.astype(np.float32)),
        "corruptions": {},
        "adversarial": {},
    }
    if pixel_labels is not None and "pixel_probabilities" in fn.structured_outputs:
        pred = np.concatenate(
            [
                np.argmax(
                    fn(image=tf.constant(images[i : i + 256], tf.float32))[
                        "pixel_probabilities"
                    ].numpy(),
                    -1,
                )
                for i in range(0, len(images), 256)
            ]
        )
        report["pixels"] = pixel_report(pixel_labels, pred, classes)
    for name in corruptions:
        report["corruptions"][name] = {}
        for sev in severities:
            corrupted = corrupt_batch(images, name, int(sev), np.random.default_rng(seed))
            report["corruptions"][name][str(sev)] = score(corrupted.astype(np.float32))
    std = meta["normalization"]["std"]
    for method in attacks if epsilons else ():
        report["adversarial"][method] = {
            str(eps): score(adversarial_examples(loaded, images, labels, std, eps, method))
            for eps in epsilons
        }
    return report


#: Header of a frames folder's ``labels.csv`` (what ``minewatch synth`` writes).
FRAMES_HEADER: tuple[str, ...] = ("path", "camera_id", "timestamp", "label")
#: How the tile job cuts a frame when ``--stride`` and ``--edge`` are not given
#: (``pipelines.options.TileConfig``): tiles side by side, and a last row and
#: column flush with the frame's edge.
FRAME_EDGE = "shift"


def is_frames_dir(data_dir: str) -> bool:
    """Whether ``data_dir`` holds a frames ``labels.csv`` (header :data:`FRAMES_HEADER`).

    Args:
        data_dir: A folder.

    Returns:
        True for a frames folder, False otherwise (a tile folder, say).
    """
    path = os.path.join(data_dir, "labels.csv")
    if not os.path.isfile(path):
        return False
    with open(path, newline="") as f:
        header = next(csv.reader(f), [])
    return tuple(h.strip() for h in header) == FRAMES_HEADER


def load_frames(
    data_dir: str, classes: Sequence[str], max_examples: int = 0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a frames folder: the frames as RGB ``uint8`` and their labels.

    Args:
        data_dir: Folder with ``labels.csv`` (:data:`FRAMES_HEADER`; ``path``
            relative to the folder) and the PNG/JPEG frames it names.
        classes: Class names in index order (the model's).
        max_examples: Read at most this many frames (0: all), a seeded sample
            drawn as in tile mode.
        seed: Seed of the sample.

    Returns:
        ``(frames uint8[N, H, W, 3], labels int64[N], paths)`` in CSV order.

    Raises:
        InputError: No frame, a label that is not one of ``classes``, a frame
            that cannot be read, or frames of different sizes.
    """
    from PIL import Image

    csv_path = os.path.join(data_dir, "labels.csv")
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if any((v or "").strip() for v in r.values())]
    if not rows:
        raise InputError(f"no frame listed in {csv_path}")
    names = [(r.get("label") or "").strip() for r in rows]
    unknown = sorted(set(names) - set(classes))
    if unknown:
        raise InputError(
            f"label(s) {', '.join(repr(u) for u in unknown)} in {csv_path} are not among "
            f"the model's classes ({', '.join(classes)}); evaluate a model trained on "
            "these grades or fix the labels"
        )
    if max_examples and len(rows) > max_examples:
        pick = np.sort(np.random.default_rng(seed).choice(len(rows), max_examples, replace=False))
        rows, names = [rows[i] for i in pick], [names[i] for i in pick]
    paths = [os.path.join(data_dir, (r.get("path") or "").strip()) for r in rows]
    frames: list[np.ndarray] = []
    for path in paths:
        try:
            with Image.open(path) as image:
                frame = np.asarray(image.convert("RGB"), np.uint8)
        except (OSError, ValueError) as exc:
            raise InputError(f"cannot read frame {path} (listed in {csv_path}): {exc}") from None
        if frames and frame.shape != frames[0].shape:
            raise InputError(
                f"frame {path} is {frame.shape[1]} x {frame.shape[0]} px but {paths[0]} is "
                f"{frames[0].shape[1]} x {frames[0].shape[0]}; evaluate one frame size at a time"
            )
        frames.append(frame)
    labels = np.array([classes.index(n) for n in names], np.int64)
    return np.stack(frames), labels, paths


def cut_frames(
    frames: np.ndarray, size: int, stride: int | None = None, edge: str = FRAME_EDGE
) -> tuple[np.ndarray, int]:
    """Cut frames into square tiles the way the tile job cuts a frame.

    Tile offsets come from :func:`minewatch.rasters.tile_starts` on each axis;
    tiles that run past the frame (``edge="pad"``, or a frame smaller than a
    tile) are filled with zeros there.

    Args:
        frames: ``[N, H, W, C]``.
        size: Tile side (the model's ``tile_size``).
        stride: Step between tiles; ``size`` (the tile job's default) when None.
        edge: ``shift`` (default, as the tile job), ``pad`` or ``drop``.

    Returns:
        ``(tiles [N * T, size, size, C], T)``: frame-major (frame ``i`` owns
        tiles ``i * T`` to ``(i + 1) * T - 1``), rows of tiles top to bottom.

    Raises:
        InputError: The frames yield no tile (``edge="drop"`` on a small frame).
    """
    n, height, width, channels = frames.shape
    step = stride or size
    rows = tile_starts(height, size, step, edge)
    cols = tile_starts(width, size, step, edge)
    if not rows or not cols:
        raise InputError(f"{width} x {height} px frames hold no {size} px tile (edge {edge!r})")
    pad_h, pad_w = max(0, rows[-1] + size - height), max(0, cols[-1] + size - width)
    if pad_h or pad_w:
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    tiles = np.stack([frames[:, r : r + size, c : c + size] for r in rows for c in cols], axis=1)
    per_frame = len(rows) * len(cols)
    return tiles.reshape(n * per_frame, size, size, channels), per_frame


def _frame_scores(
    probs: np.ndarray, labels: np.ndarray, per_frame: int, classes: Sequence[str]
) -> dict[str, Any]:
    """Frame report (mean of the tile probabilities), the tile report under ``tiles``."""
    frame_probs = probs.reshape(len(labels), per_frame, -1).mean(axis=1)
    tile_labels = np.repeat(labels, per_frame)
    report = classification_report(labels, np.argmax(frame_probs, -1), classes)
    report["log_loss"] = _log_loss(frame_probs, labels)
    report["tiles"] = classification_report(tile_labels, np.argmax(probs, -1), classes)
    report["tiles"]["log_loss"] = _log_loss(probs, tile_labels)
    return report


def _log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean negative log probability of the true class (probabilities floored at 1e-7)."""
    if not len(labels):
        return float("nan")
    true = probs[np.arange(len(labels)), labels]
    return float(np.mean(-np.log(np.maximum(true, 1e-7))))


def evaluate_frames(
    model_dirs: Sequence[str],
    data_dir: str,
    *,
    corruptions: Sequence[str] = (),
    severities: Sequence[int] = (1, 3, 5),
    epsilons: Sequence[float] = (),
    attacks: Sequence[str] = ("fgsm", "pgd"),
    max_examples: int = 0,
    seed: int = 0,
    stride: int | None = None,
    batch: int = 256,
) -> dict[str, Any]:
    """Evaluate models on a frames folder, one grade per frame.

    Each condition (clean, then every corruption at every severity) corrupts the
    whole frames once with :func:`minewatch.corruptions.corrupt_batch` and a
    generator seeded with ``seed``, so every model sees the same frames; one
    condition is held in memory at a time. Each model then cuts the frames into
    its own tiles (:func:`cut_frames` at its ``tile_size``), predicts them
    through its serving signature (each SavedModel is loaded once) and averages
    the tile probabilities per frame. Attacks perturb the tiles (labelled with
    their frame's label) and are scored the same way.

    Args:
        model_dirs: Model folders; every label of ``labels.csv`` must be one of
            each model's classes and the models must take 3 bands (RGB).
        data_dir: Frames folder (see :func:`load_frames`).
        corruptions: Corruption names.
        severities: Corruption severities.
        epsilons: Attack radii (normalised units).
        attacks: ``fgsm`` and/or ``pgd``.
        max_examples: Evaluate at most this many frames (0: all), a seeded sample.
        seed: Seed of the sample and the corruptions.
        stride: Step between tiles; the model's tile size when None, as the tile
            job cuts frames (``minewatch infer`` on raw frames steps half a tile).
        batch: Tiles per model call. Default 256.

    Returns:
        ``{"data", "split": "all", "unit": "frame", "frames", "examples" (= frames),
        "models": [...]}``; each model has ``"tiling"`` (``tile_size``, ``stride``,
        ``edge``, ``tiles_per_frame``, ``tiles``) and ``clean``,
        ``corruptions[name][severity]`` and ``adversarial[method][epsilon]``, each a
        frame-level :func:`classification_report` plus ``log_loss`` and
        ``tiles`` (the tile-level report, each tile labelled with its frame's label).

    Raises:
        InputError: A folder is not a model folder, a model does not take RGB
            tiles, or the frames folder is bad (see :func:`load_frames`).
    """
    use_legacy_keras()
    import tensorflow as tf

    metas = [read_metadata(d) for d in model_dirs]
    for d, meta in zip(model_dirs, metas, strict=True):
        if len(meta.get("bands") or ()) != 3:
            raise InputError(
                f"{d} takes bands {meta.get('bands')}, not RGB frames; evaluate it on a tile folder"
            )
    frames, labels, _ = load_frames(data_dir, metas[0]["classes"], max_examples, seed)
    # Each model's own class indices, checked before any model is loaded.
    model_labels = [
        _relabel(labels, metas[0]["classes"], meta["classes"], d)
        for d, meta in zip(model_dirs, metas, strict=True)
    ]
    cuts = [(int(meta["tile_size"]), stride or int(meta["tile_size"])) for meta in metas]
    loaded = [tf.saved_model.load(os.path.join(d, "saved_model")) for d in model_dirs]
    fns = [m.signatures["serving_default"] for m in loaded]
    reports: list[dict[str, Any]] = []
    for d, meta, (size, step) in zip(model_dirs, metas, cuts, strict=True):
        per_frame = cut_frames(frames[:1], size, step)[1]
        reports.append(
            {
                "model": d,
                "version": meta["version"],
                "tiling": {
                    "tile_size": size,
                    "stride": step,
                    "edge": FRAME_EDGE,
                    "tiles_per_frame": per_frame,
                    "tiles": per_frame * len(frames),
                },
                "clean": {},
                "corruptions": {name: {} for name in corruptions},
                "adversarial": {},
            }
        )

    def score(k: int, tiles: np.ndarray, per_frame: int) -> dict[str, Any]:
        probs = _predict(fns[k], tiles, batch)
        return _frame_scores(probs, model_labels[k], per_frame, metas[k]["classes"])

    conditions: list[tuple[str, int]] = [("", 0)]
    conditions += [(name, int(sev)) for name in corruptions for sev in severities]
    for name, sev in conditions:
        # One condition in memory at a time; models of one tile size share its tiles.
        x = corrupt_batch(frames, name, sev, np.random.default_rng(seed)) if name else frames
        tiled: dict[tuple[int, int], tuple[np.ndarray, int]] = {}
        for k, report in enumerate(reports):
            if cuts[k] not in tiled:
                tiled[cuts[k]] = cut_frames(x, *cuts[k])
            scores = score(k, *tiled[cuts[k]])
            if name:
                report["corruptions"][name][str(sev)] = scores
            else:
                report["clean"] = scores
        del x, tiled
    for k, report in enumerate(reports if epsilons else ()):
        tiles, per_frame = cut_frames(frames, *cuts[k])
        tile_labels = np.repeat(model_labels[k], per_frame)
        std = metas[k]["normalization"]["std"]
        for method in attacks:
            report["adversarial"][method] = {
                str(eps): score(
                    k,
                    adversarial_examples(
                        loaded[k], tiles, tile_labels, std, eps, method, batch=batch
                    ),
                    per_frame,
                )
                for eps in epsilons
            }
    return {
        "data": data_dir,
        "split": datalib.Split.ALL,
        "unit": "frame",
        "frames": len(frames),
        "examples": len(frames),
        "models": reports,
    }


def _relabel(
    labels: np.ndarray, classes: Sequence[str], target: Sequence[str], model_dir: str
) -> np.ndarray:
    """Re-index labels from ``classes`` to ``target`` (another model's class order)."""
    missing = sorted({classes[i] for i in labels} - set(target))
    if missing:
        raise InputError(
            f"label(s) {', '.join(repr(m) for m in missing)} are not among the classes of "
            f"{model_dir} ({', '.join(target)}); evaluate models of the same grades together"
        )
    return np.array([list(target).index(classes[i]) for i in labels], np.int64)


def evaluate_models(
    model_dirs: Sequence[str],
    data_dir: str,
    *,
    split: str = datalib.Split.ALL,
    corruptions: Sequence[str] = (),
    severities: Sequence[int] = (1, 3, 5),
    epsilons: Sequence[float] = (),
    attacks: Sequence[str] = ("fgsm", "pgd"),
    max_examples: int = 0,
    seed: int = 0,
    stride: int | None = None,
    decision: str = "served",
) -> dict[str, Any]:
    """Evaluate one or more models on the same held-out tiles or belt frames.

    A frames folder (:func:`is_frames_dir`) is scored per frame by
    :func:`evaluate_frames`; any other folder is read as tile-job output and
    scored per tile.

    Args:
        model_dirs: Model folders (e.g. plain and regularized).
        data_dir: ``minewatch tile`` output (``tiles/*.tfrecord``, ``stats.json``),
            or a frames folder (``labels.csv`` with header :data:`FRAMES_HEADER`).
        split: ``all`` tiles of ``data_dir``, or the ``validation`` part of the
            hash split recorded in the first model's config. Tile folders only:
            a frames folder is itself the held-out set.
        corruptions: Corruption names.
        severities: Corruption severities.
        epsilons: Attack radii (normalised units).
        attacks: ``fgsm`` and/or ``pgd``.
        max_examples: Evaluate at most this many tiles, or frames (0: all), a
            seeded sample.
        seed: Seed of the sample and the corruptions.
        stride: Frames only: step between a frame's tiles (see
            :func:`evaluate_frames`); default the model's tile size.
        decision: Tiles only: how a tile's class is read (:func:`decide`):
            ``served`` (default) or ``trained``.

    Returns:
        Tiles: ``{"data", "split", "unit": "tile", "examples", "models": [...]}``;
        frames: see :func:`evaluate_frames`.

    Raises:
        ConfigError: ``split`` is not ``all``, or ``decision`` not ``served``, for a
            frames folder; ``decision`` is unknown.
        InputError: A folder is not a model folder or the data has no labelled
            tile (or frame).
    """
    if decision not in DECISIONS:
        raise ConfigError(f"decision {decision!r}: choose one of {', '.join(DECISIONS)}")
    if is_frames_dir(data_dir):
        if decision != "served":
            raise ConfigError(
                f"decision {decision!r} applies to tile folders only; a frame's grade is "
                "the argmax of its mean served tile probability"
            )
        if split != datalib.Split.ALL:
            raise ConfigError(
                f"split {split!r} applies to tile folders only; {data_dir} is a frames folder "
                "(labels.csv), itself the held-out set: use split 'all'"
            )
        return evaluate_frames(
            model_dirs,
            data_dir,
            corruptions=corruptions,
            severities=severities,
            epsilons=epsilons,
            attacks=attacks,
            max_examples=max_examples,
            seed=seed,
            stride=stride,
        )
    metas = [read_metadata(d) for d in model_dirs]
    data_cfg = DataConfig(tiles=data_dir)
    if split == datalib.Split.VALIDATION:
        trained = config_from_dict(metas[0]["config"]).data
        data_cfg = DataConfig(
            tiles=data_dir,
            validation_fraction=trained.validation_fraction,
            split_by=trained.split_by,
            split_block=trained.split_block,
        )
    files = sorted(glob.glob(os.path.join(data_dir, "tiles", "*.tfrecord")))
    if not files:
        raise InputError(
            f"no tiles/*.tfrecord in {data_dir}: run `minewatch tile`, or point at a "
            "frames folder with labels.csv"
        )
    spec = datalib.read_tile_spec(data_dir, files)
    images, labels, masks = datalib.load_pixel_arrays(files, spec, data_cfg, split)
    if not len(labels):
        raise InputError(f"no labelled tile in {data_dir} ({split})")
    if max_examples and len(labels) > max_examples:
        pick = np.sort(np.random.default_rng(seed).choice(len(labels), max_examples, replace=False))
        images, labels, masks = images[pick], labels[pick], masks[pick]
    models = [
        evaluate_model(
            d,
            images,
            labels,
            corruptions,
            severities,
            epsilons,
            attacks,
            seed,
            pixel_labels=masks,
            decision=decision,
        )
        for d in model_dirs
    ]
    return {
        "data": data_dir,
        "split": split,
        "unit": "tile",
        "examples": len(labels),
        "models": models,
    }


def plot_report(report: dict[str, Any], path: str) -> None:
    """Plot accuracy vs corruption severity (and vs attack epsilon), one line per model.

    One panel per corruption and per attack, four to a row; the accuracy is of
    the report's ``unit`` (frames for a frames folder).

    Args:
        report: From :func:`evaluate_models`.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = report["models"][0]
    unit = report.get("unit", "tile")
    panels = [("corruption", n) for n in first["corruptions"]]
    panels += [("attack", m) for m in first["adversarial"]]
    panels = panels or [("clean", "clean")]
    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax, (kind, name) in zip(axes.flat, panels, strict=False):
        for m in report["models"]:
            label = os.path.basename(os.path.normpath(m["model"]))
            clean = m["clean"]["accuracy"]
            if kind == "clean":
                ax.bar(label, clean)
                continue
            table = m["corruptions"][name] if kind == "corruption" else m["adversarial"][name]
            xs = [0.0] + [float(k) for k in table]
            ys = [clean] + [v["accuracy"] for v in table.values()]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(name)
        ax.set_xlabel("severity" if kind == "corruption" else "epsilon (std units)")
        ax.set_ylabel(f"{unit} accuracy")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        if kind != "clean":
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_report(report: dict[str, Any], path: str) -> None:
    """Write the report as JSON (NaN as null).

    Args:
        report: From :func:`evaluate_models`.
        path: Output path.
    """
    from nsl_models.registry import _jsonable

    with open(path, "w") as f:
        json.dump(_jsonable(report), f, indent=2)
        f.write("\n")
