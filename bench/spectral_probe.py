"""How far pixel spectra alone separate each commodity's piles from the background.

    .venv/bin/python bench/spectral_probe.py [--world GT_DIR] [--negatives N] [--epochs N]

A diagnostic, not a model: a small per-pixel MLP (two ReLU layers of 64) on the log
of five bands (B02, B03, B04, B08, B11), z-scored, trained on the left half of a
``minewatch synth`` world's scenes (all four dates) and scored on the right half,
pile pixels (less than 10 % under cloud) against a random sample of object-free
pixels (``--negatives`` per date; the AP against every object-free pixel would be
lower still). Per commodity it prints the average precision on the right half: the
ranking spectra alone allow, to compare with what the tile model reaches
(``bench/pile_ap.py``; docs/results.md, "Why the detector misses piles"). Ground
truth synthesized into the real scene.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from typing import Any

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

BANDS = ("B02", "B03", "B04", "B08", "B11")


def pixels(gt: str, negatives: int, seed: int) -> dict[str, np.ndarray]:
    """Pile pixels and sampled object-free pixels of every date: features, labels, places."""
    import rasterio
    from rasterio.features import rasterize
    from shapely.geometry import shape

    rng = np.random.default_rng(seed)
    xs, ys, commodities, cols = [], [], [], []
    for path in sorted(glob.glob(os.path.join(gt, "truth", "scene_*.geojson"))):
        date = os.path.basename(path)[len("scene_") : -len(".geojson")]
        with rasterio.open(os.path.join(gt, "scenes", f"scene_{date}.tif")) as ds:
            names = list(ds.descriptions)
            image = ds.read([names.index(b) + 1 for b in BANDS]).astype(np.float64)
            transform, size = ds.transform, (ds.height, ds.width)
        with open(path) as f:
            features = json.load(f)["features"]
        anything = np.zeros(size, bool)
        commodity = np.full(size, "", object)
        for feat in features:
            mask = rasterize([shape(feat["geometry"])], out_shape=size, transform=transform)
            mask = mask.astype(bool)
            anything |= mask
            p = feat["properties"]
            if p["class"] == "stockpile" and float(p.get("occluded") or 0.0) < 0.1:
                commodity[mask] = p["commodity"]
        pos = np.flatnonzero(commodity.ravel() != "")
        free = np.flatnonzero(~anything.ravel())
        neg = rng.choice(free, min(negatives, len(free)), replace=False)
        idx = np.concatenate([pos, neg])
        xs.append(image.reshape(len(BANDS), -1)[:, idx].T)
        ys.append(np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]))
        commodities.append(commodity.ravel()[idx])
        cols.append(idx % size[1])
    x = np.log(np.maximum(np.concatenate(xs), 1.0))
    return {
        "x": (x - x.mean(0)) / x.std(0),
        "y": np.concatenate(ys),
        "commodity": np.concatenate(commodities),
        "col": np.concatenate(cols),
        "width": np.array(size[1]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="out/quality/gt_flat_demo_7")
    parser.add_argument("--negatives", type=int, default=100_000, help="Per date.")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    from minewatch.compat import use_legacy_keras

    use_legacy_keras()
    import tensorflow as tf

    from bench.pile_ap import average_precision

    data = pixels(args.world, args.negatives, args.seed)
    left = data["col"] < int(data["width"]) // 2
    tf.keras.utils.set_random_seed(args.seed)
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Dense(64, activation="relu"),
            tf.keras.layers.Dense(64, activation="relu"),
            tf.keras.layers.Dense(1),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(3e-3),
        loss=tf.keras.losses.BinaryCrossentropy(from_logits=True),
    )
    y = data["y"][left]
    model.fit(
        data["x"][left],
        y,
        sample_weight=np.where(y == 1, 20.0, 1.0),
        batch_size=1024,
        epochs=args.epochs,
        verbose=0,
    )
    right = ~left
    scores = model.predict(data["x"][right], batch_size=8192, verbose=0)[:, 0]
    truth, commodity = data["y"][right], data["commodity"][right]
    out = {}
    for name in sorted(set(commodity[truth == 1])):
        pile = (commodity == name) & (truth == 1)
        out[name] = average_precision(scores[pile], scores[truth == 0])
        print(f"{name}: {int(pile.sum())} pixels, spectral AP {out[name]:.3f}", flush=True)
    return out


if __name__ == "__main__":
    main()
