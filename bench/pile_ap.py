"""Per-commodity pixel average precision of a model's stockpile probabilities on one world.

    .venv/bin/python bench/pile_ap.py MODEL_DIR [MODEL_DIR ...] --world GT_DIR [--out DIR]

Runs ``minewatch infer`` (as ``bench/quality.py`` does) on the world's scenes, then
reads the served ``p_stockpile`` band of each date's raster and scores it per
commodity: the pixels of that commodity's piles (less than 10 % under cloud on
the date) against the pixels of no object, pooled over the dates, as average
precision (threshold-free: the ranking, before any operating point). A diagnostic
of *which* piles a detector learns (docs/results.md, "Why the detector misses
piles"); ground truth synthesized into the real scene.
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

#: A pile more than this share under cloud on a date is left out of that date.
MAX_OCCLUDED = 0.1


def average_precision(positive: np.ndarray, negative: np.ndarray) -> float:
    """Average precision of scores ``positive`` (label 1) against ``negative`` (label 0).

    Ties are broken against the positives (a stable sort puts negatives first),
    so a constant score gives the base rate, not more.
    """
    scores = np.concatenate([negative, positive])
    labels = np.concatenate([np.zeros(len(negative)), np.ones(len(positive))])
    order = np.argsort(-scores, kind="stable")
    hits = labels[order]
    if not hits.sum():
        return float("nan")
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def pile_ap(tables: str, gt: str) -> dict[str, Any]:
    """``{"ap": {commodity: AP}, "pixels": {commodity: n}}`` of one infer run's rasters."""
    import rasterio
    from rasterio.features import rasterize
    from shapely.geometry import shape

    positives: dict[str, list[np.ndarray]] = {}
    negatives: list[np.ndarray] = []
    for path in sorted(glob.glob(os.path.join(gt, "truth", "scene_*.geojson"))):
        date = os.path.basename(path)[len("scene_") : -len(".geojson")]
        (raster,) = glob.glob(os.path.join(tables, "rasters", f"scene_{date}__*.tif"))
        with rasterio.open(raster) as ds:
            band = list(ds.descriptions).index("p_stockpile") + 1
            prob = ds.read(band).astype(np.float64)
            transform, shape_ = ds.transform, (ds.height, ds.width)
        with open(path) as f:
            features = json.load(f)["features"]
        anything = np.zeros(shape_, bool)
        for feat in features:
            mask = rasterize([shape(feat["geometry"])], out_shape=shape_, transform=transform)
            anything |= mask.astype(bool)
            p = feat["properties"]
            if p["class"] == "stockpile" and float(p.get("occluded") or 0.0) < MAX_OCCLUDED:
                positives.setdefault(p["commodity"], []).append(prob[mask.astype(bool)])
        negatives.append(prob[~anything])
    neg = np.concatenate(negatives)
    pos = {c: np.concatenate(v) for c, v in sorted(positives.items())}
    return {
        "ap": {c: average_precision(v, neg) for c, v in pos.items()},
        "pixels": {c: len(v) for c, v in pos.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="Model folders (minewatch train outputs).")
    parser.add_argument("--world", required=True, help="A `minewatch synth` folder.")
    parser.add_argument("--out", default="out/pile_ap", help="Work folder for the tables.")
    args = parser.parse_args(argv)
    from bench.quality import infer

    results = {}
    for model in args.models:
        tables = os.path.join(args.out, os.path.basename(os.path.normpath(model)))
        if not glob.glob(os.path.join(tables, "rasters", "*.tif")):
            infer(model, args.world, tables)
        results[model] = pile_ap(tables, args.world)
        aps = ", ".join(f"{c} {v:.3f}" for c, v in results[model]["ap"].items())
        print(f"{model}: {aps}", flush=True)
    return results


if __name__ == "__main__":
    main()
