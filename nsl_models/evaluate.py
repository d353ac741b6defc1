"""Held-out evaluation of exported models: clean, corrupted and adversarial.

Models are loaded through their SavedModel serving signature only (the
registry contract), so any exported model can be evaluated without the code
that trained it. For each model the report holds:

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

import glob
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.corruptions import corrupt_batch
from nsl_models import data as datalib
from nsl_models.configs import DataConfig, config_from_dict
from nsl_models.registry import read_metadata

__all__ = [
    "adversarial_examples",
    "classification_report",
    "evaluate_model",
    "evaluate_models",
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

    Returns:
        ``{"model", "version", "clean", "corruptions", "adversarial"}`` and
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
        return classification_report(labels, np.argmax(_predict(fn, x), -1), classes)

    report: dict[str, Any] = {
        "model": model_dir,
        "version": meta["version"],
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
) -> dict[str, Any]:
    """Evaluate one or more models on the same held-out tiles.

    Args:
        model_dirs: Model folders (e.g. plain and regularized).
        data_dir: ``minewatch tile`` output (``tiles/*.tfrecord``, ``stats.json``).
        split: ``all`` tiles of ``data_dir``, or the ``validation`` part of the
            hash split recorded in the first model's config.
        corruptions: Corruption names.
        severities: Corruption severities.
        epsilons: Attack radii (normalised units).
        attacks: ``fgsm`` and/or ``pgd``.
        max_examples: Evaluate at most this many tiles (0: all), a seeded sample.
        seed: Seed of the sample and the corruptions.

    Returns:
        ``{"data", "split", "examples", "models": [...]}``.

    Raises:
        InputError: A folder is not a model folder or the data has no labelled tile.
    """
    from minewatch.errors import InputError

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
        raise InputError(f"no tiles/*.tfrecord in {data_dir}: run `minewatch tile`")
    spec = datalib.read_tile_spec(data_dir, files)
    images, labels, masks = datalib.load_pixel_arrays(files, spec, data_cfg, split)
    if not len(labels):
        raise InputError(f"no labelled tile in {data_dir} ({split})")
    if max_examples and len(labels) > max_examples:
        pick = np.sort(np.random.default_rng(seed).choice(len(labels), max_examples, replace=False))
        images, labels, masks = images[pick], labels[pick], masks[pick]
    models = [
        evaluate_model(
            d, images, labels, corruptions, severities, epsilons, attacks, seed, pixel_labels=masks
        )
        for d in model_dirs
    ]
    return {"data": data_dir, "split": split, "examples": len(labels), "models": models}


def plot_report(report: dict[str, Any], path: str) -> None:
    """Plot accuracy vs corruption severity (and vs attack epsilon), one line per model.

    Args:
        report: From :func:`evaluate_models`.
        path: PNG to write.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = report["models"][0]
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
        ax.set_ylabel("accuracy")
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
