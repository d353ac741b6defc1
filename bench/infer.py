"""Benchmark of ``minewatch infer``: RunInference vs a bare predict loop, and site accuracy.

Two measurements, in one run (numbers go to ``docs/benchmarks.md``, section Infer):

1. **Throughput**: the Infer job (Beam DirectRunner, one in-process worker) over a
   tile job's output, against a bare loop that reads the same TFRecords, decodes
   the tiles and calls the same SavedModel's serving signature in batches of the
   same size (the reference: ``model.predict`` without Beam). Wall clock, best of
   ``--repeat``; tiles/s and the ratio. The job also writes every table, raster and
   picture; the bare loop only keeps the probabilities in memory.
2. **Sites against the ground truth**: ``minewatch demo``'s own scoring
   (:func:`minewatch.cli.demo.truth_report`: each site at its last sighting
   matched one to one to the truth polygons of that date at IoU >= 0.3 with
   :func:`minewatch.sites.match_sites`): precision and recall per class, the
   stockpile area error of matched sightings, and the flagged sites against the
   truth's illegal ones.

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


def site_accuracy(demo: str, tables: str) -> dict[str, Any]:
    """The demo's own scoring of the tables against its ground truth.

    :func:`minewatch.cli.demo.truth_report` (one-to-one IoU matching with
    :func:`minewatch.sites.match_sites`, each site at its ``last_seen`` date), so
    these numbers are the ones ``minewatch demo`` prints for the same tables.
    """
    from minewatch.cli.demo import truth_report

    report = truth_report(tables, os.path.join(demo, "gt"), min_iou=IOU)
    errors = [abs(a["error"]) for a in report["stockpile_areas"]]
    report["stockpile_median_area_error"] = float(np.median(errors)) if errors else None
    return report


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

    import tensorflow  # noqa: F401  (imported before timing: the job's process has it too)

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
    print(f"\nSites against the truth (minewatch demo's truth_report), IoU >= {IOU}")
    print(
        f"{'class':12s} {'sites':>6s} {'truth':>5s} {'match':>5s} {'precision':>9s} {'recall':>7s}"
    )
    fmt = lambda v: "-" if v is None or v != v else f"{v:.2f}"  # noqa: E731
    for kind, c in accuracy["kinds"].items():
        print(
            f"{kind:12s} {c['sites']:6d} {c['truth']:5d} {c['matched']:5d} "
            f"{fmt(c['precision']):>9s} {fmt(c['recall']):>7s}"
        )
    print(
        f"stockpile area, median |found/true - 1| over {len(accuracy['stockpile_areas'])} "
        f"matched sightings: {fmt(accuracy['stockpile_median_area_error'])}"
    )
    f = accuracy["flagged"]
    print(
        f"flagged: {len(f['truth'])} illegal in the truth, {len(f['found'])} of them found, "
        f"{f['unmatched']} flagged sites matching nothing"
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
