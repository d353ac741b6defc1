"""Benchmark of ``minewatch infer``: RunInference vs a bare predict loop, and site accuracy.

Two measurements, in one run (numbers go to ``docs/benchmarks.md``, section Infer):

1. **Throughput**: the Infer job (Beam DirectRunner, one in-process worker) over a
   tile job's output, against a bare loop that reads the same TFRecords, decodes
   the tiles and calls the same SavedModel's serving signature in batches of the
   same size (the reference: ``model.predict`` without Beam). Wall clock, best of
   ``--repeat``; tiles/s and the ratio. The job also writes every table, raster and
   picture; the bare loop only keeps the probabilities in memory.
2. **Sites against the ground truth**: for each site class, the sites of the last
   acquisition matched to the truth polygons of that acquisition at IoU >= 0.3
   (precision, recall), the stockpile area error of matched sites, and the
   flagged set against the truth's illegal sites.

The data is ``minewatch demo``'s output folder (``--demo``; the demo is run first
when it is missing): its tiles, ground truth and promoted model.

Target (from the issue): the job reaches >= 0.8x the bare loop's tiles/s.

Usage::

    .venv/bin/python bench/infer.py --demo out/demo [--repeat 3] [--batch 64]

Writes ``bench/out/infer.json`` and prints tables.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

IOU = 0.3


def bare_loop(tiles_dir: str, saved_model: str, bands: list[str], batch: int) -> int:
    """Read, decode and predict every tile of a tile job; return the tile count."""
    import tensorflow as tf

    from minewatch.spec import decode_tiles
    from minewatch.tfrecord import read_records

    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    done, pending = 0, []

    def flush() -> None:
        nonlocal done, pending
        if pending:
            serve(image=tf.constant(np.stack(pending).astype(np.float32)))["probabilities"].numpy()
            done += len(pending)
            pending = []

    for shard in sorted(glob.glob(os.path.join(tiles_dir, "tiles", "*.tfrecord"))):
        with open(shard, "rb") as f:
            for tile in decode_tiles(list(read_records(f))):
                image = tile.image[..., [tile.bands.index(b) for b in bands]]
                pending.append(image)
                if len(pending) == batch:
                    flush()
    flush()
    return done


def job(demo: str, out: str, batch: int, pictures: bool = True) -> dict[str, Any]:
    from minewatch.cli.infer import launch

    gt = os.path.join(demo, "gt")
    argv = [os.path.join(demo, "tiles"), "--model", os.path.join(demo, "registry")]
    argv += ["--out", out, "--batch-size", str(batch)]
    argv += ["--concessions", os.path.join(gt, "concessions.geojson")]
    argv += ["--protected", os.path.join(gt, "protected_areas.geojson")]
    argv += [] if pictures else ["--no-pictures"]
    stats = launch(argv, save_main_session=False)
    assert stats is not None
    return stats


def best_of(repeat: int, fn: Any) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return min(times), result


def _match(pred: list[Any], truth: list[Any]) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matches (pred index, truth index, IoU) with IoU >= IOU."""
    pairs = []
    for i, p in enumerate(pred):
        for j, t in enumerate(truth):
            inter = p.intersection(t).area
            if inter > 0:
                iou = inter / p.union(t).area
                if iou >= IOU:
                    pairs.append((iou, i, j))
    used_p, used_t, out = set(), set(), []
    for iou, i, j in sorted(pairs, reverse=True):
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            out.append((i, j, iou))
    return out


def site_accuracy(demo: str, tables: str) -> dict[str, Any]:
    """Sites of the last acquisition against its truth polygons."""
    import shapely
    from shapely.geometry import shape

    from minewatch.query import open_tables, run_query

    con, _ = open_tables(tables)
    last = run_query(con, "select max(last_seen) as t from sites").to_pylist()[0]["t"]
    day = last.date().isoformat()
    sites = run_query(
        con,
        "select kind, geometry_source, area_m2, flagged from sites "
        f"where last_seen = timestamp '{last.isoformat()}'",
    ).to_pylist()

    def truth(name: str) -> list[dict[str, Any]]:
        with open(os.path.join(demo, "gt", "truth", f"{name}_{day}.geojson")) as f:
            return json.load(f)["features"]

    objects = truth("scene")
    out: dict[str, Any] = {"acquisition": day, "iou": IOU, "classes": {}}
    for kind in ("stockpile", "mining_scar", "haul_road"):
        pred = [shapely.from_wkb(s["geometry_source"]) for s in sites if s["kind"] == kind]
        areas = [s["area_m2"] for s in sites if s["kind"] == kind]
        true = [o for o in objects if o["properties"]["class"] == kind]
        true_geoms = [shape(o["geometry"]) for o in true]
        matches = _match(pred, true_geoms)
        errors = [
            abs(areas[i] - true[j]["properties"]["area_m2"]) / true[j]["properties"]["area_m2"]
            for i, j, _ in matches
        ]
        out["classes"][kind] = {
            "predicted": len(pred),
            "truth": len(true),
            "matched": len(matches),
            "precision": len(matches) / len(pred) if pred else None,
            "recall": len(matches) / len(true) if true else None,
            "median_area_error": float(np.median(errors)) if errors else None,
        }
    flagged = [shapely.from_wkb(s["geometry_source"]) for s in sites if s["flagged"]]
    illegal = [shape(o["geometry"]) for o in truth("illegal")]
    matches = _match(flagged, illegal)
    out["flagged"] = {"predicted": len(flagged), "truth": len(illegal), "matched": len(matches)}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--demo", default="bench/out/demo", help="minewatch demo output folder")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--out", default="bench/out")
    args = p.parse_args()

    if not os.path.exists(os.path.join(args.demo, "registry", "current.json")):
        print(f"running minewatch demo --out {args.demo} first ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "minewatch.cli.main", "demo", "--out", args.demo], check=True
        )
    from minewatch.compat import use_legacy_keras
    from minewatch.registry import resolve_model

    use_legacy_keras()
    model = resolve_model(os.path.join(args.demo, "registry"))
    tiles = os.path.join(args.demo, "tiles")
    tables = os.path.join(args.out, "infer_tables")

    bare_s, count = best_of(
        args.repeat, lambda: bare_loop(tiles, model.saved_model, list(model.bands), args.batch)
    )
    job_s, stats = best_of(args.repeat, lambda: job(args.demo, tables, args.batch))
    nopic_s, _ = best_of(args.repeat, lambda: job(args.demo, tables + "_np", args.batch, False))
    assert stats["counts"]["tiles_labelled"] == count, (stats["counts"], count)
    rows = [
        ("bare predict loop", bare_s, count / bare_s, 1.0),
        ("minewatch infer (RunInference)", job_s, count / job_s, bare_s / job_s),
        ("  same, --no-pictures", nopic_s, count / nopic_s, bare_s / nopic_s),
    ]
    print(f"\nThroughput over {count} tiles of {tiles}, batch {args.batch}, best of {args.repeat}")
    print(f"{'run':32s} {'s':>7s} {'tiles/s':>9s} {'x bare':>7s}")
    for name, s, rate, ratio in rows:
        print(f"{name:32s} {s:7.2f} {rate:9.1f} {ratio:7.2f}")
    ratio = bare_s / job_s
    print(f"target >= 0.8x bare: {'MET' if ratio >= 0.8 else 'MISSED'} ({ratio:.2f}x)")

    accuracy = site_accuracy(args.demo, tables)
    print(f"\nSites of {accuracy['acquisition']} against the truth, IoU >= {IOU}")
    print(
        f"{'class':12s} {'pred':>5s} {'truth':>5s} {'match':>5s} {'precision':>9s} "
        f"{'recall':>7s} {'area err':>8s}"
    )
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for kind, c in accuracy["classes"].items():
        print(
            f"{kind:12s} {c['predicted']:5d} {c['truth']:5d} {c['matched']:5d} "
            f"{fmt(c['precision']):>9s} {fmt(c['recall']):>7s} {fmt(c['median_area_error']):>8s}"
        )
    f = accuracy["flagged"]
    print(
        f"flagged: {f['predicted']} predicted, {f['truth']} illegal in the truth, "
        f"{f['matched']} matched"
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "infer.json"), "w") as fh:
        json.dump(
            {
                "throughput": {
                    "tiles": count,
                    "bare_s": bare_s,
                    "job_s": job_s,
                    "job_no_pictures_s": nopic_s,
                    "ratio": ratio,
                    "batch": args.batch,
                },
                "sites": accuracy,
                "model": model.version,
                "load": os.getloadavg(),
            },
            fh,
            indent=2,
            default=str,
        )


if __name__ == "__main__":
    main()
