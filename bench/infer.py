"""Benchmark of ``minewatch infer``: RunInference vs a bare predict loop, and site accuracy.

Two measurements, in one run (numbers go to ``docs/benchmarks.md``, section Infer):

1. **Throughput**: the Infer job (Beam DirectRunner) over tile TFRecords, against
   a bare loop that reads the same TFRecords, decodes the tiles with the same
   decoder and calls the same SavedModel's serving signature in batches of the
   same size (the reference: ``model.predict`` without Beam). The tiles are the
   demo's inference tiling: the demo's four ground-truth scenes cut every 8 px
   (``minewatch.workflows.demo.SITE_OPTIONS``; 64,516 tiles of 16 px), written once by
   ``minewatch tile`` into ``DEMO/tiles_infer``. The job runs with the demo's
   site options and writes every table, raster and picture; the bare loop only
   keeps the probabilities in memory. Runs are interleaved (bare, job, job
   variants, then again) so that a machine that slows down or speeds up during
   the benchmark weighs on all of them alike; each row reports its best and
   median wall clock and the ratios of bare to job for both.
2. **Sites against the ground truth** of the demo's training world (the
   scenes timed here; a check that the job still answers, not a quality
   claim: ``bench/quality.py`` scores held-out worlds):
   :func:`minewatch.scoring.truth_report`, confirmed sites per (object, date)
   matched one to one at IoU >= 0.3, the flagged set, area and volume errors.

The data is ``minewatch demo``'s output folder (``--demo``; the demo is run first
when it is missing): its ground-truth scenes and promoted model.

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
import shutil
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


def infer_tiles(demo: str) -> str:
    """The demo's scenes cut as the demo's infer step cuts them; written once."""
    from minewatch.workflows.demo import BANDS, SITE_OPTIONS

    out = os.path.join(demo, "tiles_infer")
    if not glob.glob(os.path.join(out, "tiles", "*.tfrecord")):
        gt = os.path.join(demo, "gt")
        stride = SITE_OPTIONS[SITE_OPTIONS.index("--stride") + 1]
        argv = ["tile", os.path.join(gt, "scenes"), "--out", out, "--bands", BANDS]
        argv += ["--tile-size", "16", "--stride", stride, "--overwrite"]
        argv += ["--labels", os.path.join(gt, "truth", "scene_*.geojson")]
        print(f"cutting the inference tiles: minewatch {' '.join(argv)}", flush=True)
        subprocess.run([sys.executable, "-m", "minewatch.cli.main", *argv], check=True)
    return out


def job(demo: str, tiles: str, out: str, batch: int, extra: list[str]) -> dict[str, Any]:
    from minewatch.workflows.demo import SITE_OPTIONS
    from pipelines.infer import run

    gt = os.path.join(demo, "gt")
    argv = [tiles, "--model", os.path.join(demo, "registry"), *SITE_OPTIONS]
    argv += ["--out", out, "--batch-size", str(batch)]
    argv += ["--concessions", os.path.join(gt, "concessions.geojson")]
    argv += ["--protected", os.path.join(gt, "protected_areas.geojson")]
    stats = run(argv + extra, save_main_session=False)
    assert stats is not None
    return stats


def interleaved(repeat: int, runs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run each of ``runs`` once per round, ``repeat`` rounds; wall clocks per run."""
    out: dict[str, dict[str, Any]] = {name: {"s": []} for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            start = time.perf_counter()
            out[name]["result"] = fn()
            out[name]["s"].append(time.perf_counter() - start)
    return out


def site_accuracy(demo: str, tables: str) -> dict[str, Any]:
    """The tables scored against the demo's training-world truth (a check, not a claim).

    :func:`minewatch.scoring.truth_report` (confirmed sites per (object, date),
    one-to-one IoU matching); the demo itself scores its held-out world.
    """
    from minewatch.scoring import truth_report

    report = truth_report(tables, os.path.join(demo, "gt"), min_iou=IOU)
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
    tiles = infer_tiles(args.demo)
    tables = os.path.join(args.out, "infer_tables")
    for stale in glob.glob(tables + "*"):  # tables of earlier runs (other code, other models)
        shutil.rmtree(stale)

    import tensorflow  # noqa: F401  (imported before timing: the job's process has it too)

    threads = ["--direct_num_workers", "2", "--direct_running_mode", "multi_threading"]
    runs = {
        "bare predict loop": lambda: bare_loop(
            tiles, model.saved_model, list(model.bands), args.batch
        ),
        "minewatch infer (RunInference)": lambda: job(args.demo, tiles, tables, args.batch, []),
        "  same, --no-pictures": lambda: job(
            args.demo, tiles, tables + "_np", args.batch, ["--no-pictures"]
        ),
        "  same, 2 worker threads": lambda: job(
            args.demo, tiles, tables + "_mt", args.batch, threads
        ),
    }
    timed = interleaved(args.repeat, runs)
    count = timed["bare predict loop"]["result"]
    stats = timed["minewatch infer (RunInference)"]["result"]
    assert stats["counts"]["tiles_labelled"] == count, (stats["counts"], count)
    bare = timed["bare predict loop"]["s"]
    print(f"\nThroughput over {count} tiles of {tiles}, batch {args.batch}, {args.repeat} rounds")
    print(
        f"{'run':32s} {'best s':>7s} {'median':>7s} {'tiles/s':>8s} {'x bare':>7s} {'(median)':>8s}"
    )
    rows = []
    for name, t in timed.items():
        best, median = min(t["s"]), float(np.median(t["s"]))
        ratio, ratio_median = min(bare) / best, float(np.median(bare)) / median
        rows.append({"run": name, "s": t["s"], "ratio": ratio, "ratio_median": ratio_median})
        print(
            f"{name:32s} {best:7.2f} {median:7.2f} {count / best:8.0f} {ratio:7.2f} "
            f"{ratio_median:8.2f}"
        )
    ratio = rows[1]["ratio"]
    print(
        f"target >= 0.8x bare: {'MET' if ratio >= 0.8 else 'MISSED'} ({ratio:.2f}x, best of each)"
    )
    print(f"load average at the end: {os.getloadavg()}")

    accuracy = site_accuracy(args.demo, tables)
    from minewatch.scoring import format_truth_report

    print(f"\nSites against the truth of the scenes the model trained on (world 7), IoU >= {IOU}")
    print(format_truth_report(accuracy))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "infer.json"), "w") as fh:
        json.dump(
            {
                "throughput": {
                    "tiles": count,
                    "batch": args.batch,
                    "rounds": args.repeat,
                    "runs": rows,
                    "ratio": ratio,
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
