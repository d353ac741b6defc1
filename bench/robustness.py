"""Belt-camera robustness: ore grade per frame under camera faults, arms with paired seeds.

    .venv/bin/python bench/robustness.py [--seeds N] [--frames N] [--test-frames N]
        [--epochs N] [--views V] [--arms a,b,c,d,e] [--out DIR]
    .venv/bin/python bench/robustness.py --calibrate      # once, before any arm
    .venv/bin/python bench/robustness.py --study unit     # 32 / 64 px tiles vs whole frames
    .venv/bin/python bench/robustness.py --study curve    # 100 / 500 / 2,000 frames

Protocol (fixed before the arms were trained; docs/results.md, "Belt robustness"):

* **Frames.** Synthetic belt frames (``minewatch synth --belt-frames``; ground
  truth drawn, not measured: no labelled belt dataset exists offline), 128 px,
  four grades balanced. Training world: seed 11, ``--frames`` frames (default
  2,000) from 8 cameras; the trainer holds out 20 % of them (hash split by
  frame) to choose the checkpoint. Test world: seed 12, ``--test-frames``
  (default 1,000) from 4 other cameras, never looked at before scoring.
  Calibration world: seed 13, 500 frames from 4 more cameras.
* **Unit.** The model sees the whole frame (tile size = frame size), so the
  frame grade the product reports (``frame_labels``) is the model's output;
  ``--study unit`` measures 32 and 64 px tiles (frame = mean of tile
  probabilities) against it.
* **Faults** (:mod:`minewatch.camera_faults`): applied to whole frames;
  severity 3 ("medium") of each single fault was calibrated once
  (``--calibrate``: the smallest magnitude of the fault's grid at which a plain
  model, trained without faults on the training world, seed 1000, loses at least
  5 points on the calibration world), severities 1, 2, 4, 5 are 1/3, 2/3, 1.5
  and 2 times it. The medium suite is the nine faults and the two combinations
  (``combo2``, ``combo3``) at severity 3; its score is their mean accuracy.
* **Arms**, the same frames, the same fault views and the same budget
  (``--epochs`` epochs, batch 32, ``frame_cnn`` width 16 depth 2, checkpoint of
  best validation balanced accuracy): every arm trains with ``--views`` fault
  views per frame (any of the nine faults, severity 1..5) and cross-entropy on
  the frame and its views (``augment``). (a) plain; (b) consistency: NSL's graph
  term with the views as neighbours, Jensen-Shannon between predicted
  distributions, multiplier 4; (c) fault adversary: cross-entropy of the worst
  view, multiplier 1; (d) NSL's L-inf adversarial term (PGD, 3 steps, eps
  0.05); (e) (b) and (c) in one step. Multipliers were set before any arm ran
  and not tuned.
* **Statistics.** Seeds 0..N-1 (``train.seed``: initialisation, shuffle and
  views), the same for every arm; per arm the mean and 95 % t-interval, and
  per regularized arm the mean paired difference from (a) with its interval.

Writes ``OUT/robustness.json`` (every model's report and the summary),
``OUT/robustness.md`` and ``OUT/robustness.png`` (accuracy vs severity, one
line per arm, the seed mean; drawn by :func:`nsl_models.evaluate.plot_report`).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from quality import interval  # noqa: E402  (the 95 % t-interval of the quality bench)

TRAIN_SEED, TEST_SEED, CALIB_SEED = 11, 12, 13
CALIB_MODEL_SEED = 1000
SEVERITIES = (1, 3, 5)
MEDIUM = 3
#: The arms: trainer overrides on top of the shared base.
ARMS: dict[str, list[str]] = {
    "a": [],
    "b": ["consistency.enabled=true"],
    "c": ["fault_adversary.enabled=true"],
    "d": [
        "adversarial.enabled=true",
        "adversarial.method=pgd",
        "adversarial.epsilon=0.05",
        "adversarial.pgd_iterations=3",
    ],
    "e": ["consistency.enabled=true", "fault_adversary.enabled=true"],
}
ARM_NAMES = {
    "a": "(a) plain + fault augmentation",
    "b": "(b) consistency (NSL graph, views as neighbours)",
    "c": "(c) fault adversary (worst of views)",
    "d": "(d) NSL L-inf adversarial",
    "e": "(e) consistency + fault adversary",
}


def frames(root: str, name: str, n: int, cameras: int, seed: int) -> str:
    """Write (once) a set of belt frames; returns the folder holding labels.csv."""
    from minewatch.synth.frames import write_belt_set

    folder = os.path.join(root, f"frames_{name}_{n}_s{seed}")
    if not os.path.exists(os.path.join(folder, "labels.csv")):
        write_belt_set(folder, frames=n, cameras=cameras, seed=seed)
    return folder


def tiles(root: str, frames_dir: str, size: int) -> str:
    """Tile a frames folder (once) with the tile job."""
    from pipelines.tile import run as tile_job

    out = os.path.join(root, f"tiles_{os.path.basename(frames_dir)}_{size}")
    if not os.path.exists(os.path.join(out, "stats.json")):
        tile_job(
            [
                frames_dir, "--out", out, "--labels", os.path.join(frames_dir, "labels.csv"),
                "--tile-size", str(size), "--overwrite",
            ]
        )  # fmt: skip
    return out


def base_sets(tiles_dir: str, epochs: int, seed: int, views: int) -> list[str]:
    """The overrides every arm shares."""
    sets = [
        f"data.tiles={tiles_dir}",
        # Every term off unless the arm turns it on (frames.yaml's defaults may change).
        "adversarial.enabled=false",
        "consistency.enabled=false",
        "fault_adversary.enabled=false",
        "augment.views=0",
        f"train.epochs={epochs}",
        "train.early_stopping_patience=0",
        f"train.seed={seed}",
    ]
    if views:
        sets += ["augment.faults=belt", f"augment.views={views}"]
    return sets


def train(out: str, sets: list[str]) -> str:
    """Train (once) with the frames config and the overrides; returns the model folder."""
    import nsl_models
    from nsl_models.configs import load_config
    from nsl_models.train import train_from_config

    if not os.path.exists(os.path.join(out, "metadata.json")):
        config = load_config(
            os.path.join(os.path.dirname(nsl_models.__file__), "configs", "frames.yaml"), sets
        )
        t0 = time.process_time()
        train_from_config(config, out)
        with open(os.path.join(out, "bench_cpu_seconds.txt"), "w") as f:
            f.write(f"{time.process_time() - t0:.1f}\n")
    return out


def evaluate(models: list[str], frames_dir: str, corruptions: tuple[str, ...]) -> dict[str, Any]:
    from nsl_models.evaluate import evaluate_models

    return evaluate_models(models, frames_dir, corruptions=corruptions, severities=SEVERITIES)


def medium_score(model_report: dict[str, Any], suite: tuple[str, ...]) -> float:
    """Mean frame accuracy over the medium suite."""
    return statistics.fmean(
        model_report["corruptions"][name][str(MEDIUM)]["accuracy"] for name in suite
    )


# -- calibration -----------------------------------------------------------------


def _load_frames(frames_dir: str, classes: list[str]) -> tuple[Any, Any]:
    import csv

    import numpy as np
    from PIL import Image

    with open(os.path.join(frames_dir, "labels.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    images = np.stack(
        [np.asarray(Image.open(os.path.join(frames_dir, r["path"])).convert("RGB")) for r in rows]
    )
    labels = np.array([classes.index(r["label"]) for r in rows])
    return images, labels


def calibrate(root: str, train_tiles: str, epochs: int) -> dict[str, Any]:
    """Find each fault's medium magnitude on the calibration world (see the protocol)."""
    import numpy as np

    from minewatch.camera_faults import BELT_FAULTS, FAULTS, apply_fault
    from minewatch.compat import use_legacy_keras
    from nsl_models.registry import read_metadata

    use_legacy_keras()
    import tensorflow as tf

    model = train(
        os.path.join(root, "calibration_model"),
        base_sets(train_tiles, epochs, CALIB_MODEL_SEED, views=0),
    )
    calib = frames(root, "calib", 500, 4, CALIB_SEED)
    classes = read_metadata(model)["classes"]
    images, labels = _load_frames(calib, classes)
    fn = tf.saved_model.load(os.path.join(model, "saved_model")).signatures["serving_default"]

    def accuracy(x: Any) -> float:
        probs = np.concatenate(
            [
                fn(image=tf.constant(x[i : i + 128], tf.float32))["probabilities"].numpy()
                for i in range(0, len(x), 128)
            ]
        )
        return float(np.mean(np.argmax(probs, -1) == labels))

    clean = accuracy(images)
    out: dict[str, Any] = {"clean": clean, "frames": len(labels), "faults": {}}
    for fi, name in enumerate(BELT_FAULTS):
        curve = []
        for gi, mag in enumerate(FAULTS[name].grid):
            rng = np.random.default_rng(np.random.SeedSequence([CALIB_SEED, fi, gi]))
            hit = np.stack([apply_fault(im, name, mag, rng) for im in images])
            curve.append((mag, accuracy(hit)))
        medium = next((m for m, a in curve if clean - a >= 0.05), None)
        out["faults"][name] = {
            "grid": [m for m, _ in curve],
            "accuracy": [a for _, a in curve],
            "medium": medium if medium is not None else curve[-1][0],
            "reaches_5_points": medium is not None,
            "unit": FAULTS[name].unit,
        }
        print(f"{name:14s} " + " ".join(f"{m:g}:{a:.3f}" for m, a in curve), flush=True)
    return out


# -- studies ---------------------------------------------------------------------


def study_unit(root: str, train_dir: str, test_dir: str, epochs: int, seeds: int) -> list[str]:
    lines = ["| unit | seed | frame accuracy | tile accuracy |", "|---|---:|---:|---:|"]
    for size in (32, 64, 128):
        t = tiles(root, train_dir, size)
        models = [
            train(os.path.join(root, f"unit_{size}_s{s}"), base_sets(t, epochs, s, views=0))
            for s in range(seeds)
        ]
        rep = evaluate(models, test_dir, ())
        for s, m in enumerate(rep["models"]):
            tile_acc = m["clean"].get("tiles", m["clean"])["accuracy"]
            lines.append(f"| {size} px | {s} | {m['clean']['accuracy']:.3f} | {tile_acc:.3f} |")
            print(lines[-1], flush=True)
    return lines


def study_curve(root: str, test_dir: str, epochs: int, seeds: int) -> list[str]:
    lines = ["| training frames | seed | frame accuracy |", "|---:|---:|---:|"]
    for n in (100, 500, 2000):
        d = frames(root, "train", n, 8, TRAIN_SEED)
        t = tiles(root, d, 128)
        # 2,000 frames at 128 px is the unit study's whole-frame run: the same config.
        name = "unit_128" if n == 2000 else f"curve_{n}"
        models = [
            train(os.path.join(root, f"{name}_s{s}"), base_sets(t, epochs, s, views=0))
            for s in range(seeds)
        ]
        rep = evaluate(models, test_dir, ())
        for s, m in enumerate(rep["models"]):
            lines.append(f"| {n} | {s} | {m['clean']['accuracy']:.3f} |")
            print(lines[-1], flush=True)
    return lines


# -- the arms --------------------------------------------------------------------


def summarize(reports: dict[str, list[dict[str, Any]]], suite: tuple[str, ...]) -> dict[str, Any]:
    """Per arm: clean and medium-suite means with intervals; paired differences from (a)."""
    out: dict[str, Any] = {"arms": {}, "paired": {}}
    for arm, models in reports.items():
        clean = [m["clean"]["accuracy"] for m in models]
        medium = [medium_score(m, suite) for m in models]
        per_fault = {
            name: {
                str(sev): interval([m["corruptions"][name][str(sev)]["accuracy"] for m in models])
                for sev in SEVERITIES
            }
            for name in suite
        }
        out["arms"][arm] = {
            "clean": interval(clean),
            "medium_suite": interval(medium),
            "per_fault": per_fault,
            "seeds": len(models),
            "clean_values": clean,
            "medium_values": medium,
        }
    base = out["arms"].get("a")
    for arm, stats in out["arms"].items():
        if arm == "a" or base is None:
            continue
        n = min(len(stats["clean_values"]), len(base["clean_values"]))
        out["paired"][arm] = {
            "clean": interval(
                [stats["clean_values"][i] - base["clean_values"][i] for i in range(n)]
            ),
            "medium_suite": interval(
                [stats["medium_values"][i] - base["medium_values"][i] for i in range(n)]
            ),
        }
    return out


def _pm(pair: tuple[float, float], scale: float = 1.0) -> str:
    mean, half = pair
    return f"{scale * mean:.3f} ± {scale * half:.3f}" if not math.isnan(half) else f"{mean:.3f}"


def markdown(summary: dict[str, Any], suite: tuple[str, ...]) -> str:
    lines = [
        "| arm | seeds | clean | medium suite | Δ clean vs (a), points | Δ medium vs (a), points |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for arm, s in summary["arms"].items():
        p = summary["paired"].get(arm)
        dc = _pm(p["clean"], 100) if p else "—"
        dm = _pm(p["medium_suite"], 100) if p else "—"
        lines.append(
            f"| {ARM_NAMES[arm]} | {s['seeds']} | {_pm(s['clean'])} | "
            f"{_pm(s['medium_suite'])} | {dc} | {dm} |"
        )
    lines += [
        "",
        "Frame accuracy per fault (mean over seeds), severities "
        + "/".join(map(str, SEVERITIES))
        + ":",
        "",
    ]
    arms = list(summary["arms"])
    lines.append("| fault | " + " | ".join(arms) + " |")
    lines.append("|---|" + "---:|" * len(arms))
    for name in suite:
        cells = [
            "/".join(f"{summary['arms'][a]['per_fault'][name][str(v)][0]:.2f}" for v in SEVERITIES)
            for a in arms
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves_report(reports: dict[str, list[dict[str, Any]]], suite: tuple[str, ...]) -> dict:
    """A report shaped like ``evaluate_models``' with one model per arm (the seed mean)."""
    models = []
    for arm, reps in reports.items():
        models.append(
            {
                "model": ARM_NAMES[arm],
                "version": arm,
                "clean": {"accuracy": statistics.fmean(m["clean"]["accuracy"] for m in reps)},
                "corruptions": {
                    name: {
                        str(sev): {
                            "accuracy": statistics.fmean(
                                m["corruptions"][name][str(sev)]["accuracy"] for m in reps
                            )
                        }
                        for sev in SEVERITIES
                    }
                    for name in suite
                },
                "adversarial": {},
            }
        )
    return {"models": models, "unit": "frame"}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--test-frames", type=int, default=1000)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--arms", default="a,b,c,d,e")
    ap.add_argument("--out", default=os.path.join(REPO, "out", "robustness"))
    ap.add_argument("--calibrate", action="store_true")
    ap.add_argument("--study", choices=("arms", "unit", "curve"), default="arms")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    train_dir = frames(args.out, "train", args.frames, 8, TRAIN_SEED)
    test_dir = frames(args.out, "test", args.test_frames, 4, TEST_SEED)
    if args.calibrate:
        result = calibrate(args.out, tiles(args.out, train_dir, 128), args.epochs)
        with open(os.path.join(args.out, "calibration.json"), "w") as f:
            json.dump(result, f, indent=2)
        print("MEDIUM = " + json.dumps({k: v["medium"] for k, v in result["faults"].items()}))
        return result
    if args.study != "arms":
        study = study_unit if args.study == "unit" else None
        lines = (
            study_unit(args.out, train_dir, test_dir, args.epochs, args.seeds)
            if study
            else study_curve(args.out, test_dir, args.epochs, args.seeds)
        )
        text = "\n".join(lines)
        with open(os.path.join(args.out, f"{args.study}.md"), "w") as f:
            f.write(text + "\n")
        print(text)
        return {"lines": lines}

    from minewatch.corruptions import BELT_SUITE
    from nsl_models.evaluate import plot_report

    suite = tuple(BELT_SUITE)
    train_tiles = tiles(args.out, train_dir, 128)
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    models: dict[str, list[str]] = {a: [] for a in arms}
    # Seed-major: after every seed each arm has the same number of runs (paired).
    for seed in range(args.seeds):
        for arm in arms:
            out = os.path.join(args.out, f"arm_{arm}_v{args.views}_e{args.epochs}_s{seed}")
            t0 = time.time()
            train(out, base_sets(train_tiles, args.epochs, seed, args.views) + ARMS[arm])
            models[arm].append(out)
            print(f"trained arm {arm} seed {seed} in {time.time() - t0:.0f} s", flush=True)
    flat = [m for a in arms for m in models[a]]
    report = evaluate(flat, test_dir, suite)
    by_model = {m["model"]: m for m in report["models"]}
    reports = {a: [by_model[m] for m in models[a]] for a in arms}
    summary = summarize(reports, suite)
    text = markdown(summary, suite)
    result = {"summary": summary, "report": report, "args": vars(args)}
    with open(os.path.join(args.out, "robustness.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(args.out, "robustness.md"), "w") as f:
        f.write(text + "\n")
    plot_report(curves_report(reports, suite), os.path.join(args.out, "robustness.png"))
    print(text)
    return result


if __name__ == "__main__":
    main()
