"""Examples/s of one train step: plain, NSL GraphRegularization, NSL AdversarialRegularization
and minewatch's combined step (graph + adversarial), without and with the per-pixel head, same
data, batch and base model.

    .venv/bin/python bench/train.py [--size tiny|demo] [--batch 64] [--steps 40] [--rounds 5]
        [--pixel-width 16] [--data TILES] [--json FILE]

Method. Every variant is built, compiled and traced (3 warm-up steps through ``fit``, which
builds and keeps its ``train_function``; later ``fit`` calls reuse it, no retracing) before
any clock starts. Then ``--rounds`` rounds each time every variant for ``--steps`` steps on
the same in-memory batches, the order rotated each round so that none always goes first.
Reported: per variant the median ms/step (and examples/s) with its min-max over rounds; each
overhead as a ratio within a round (the same machine state), ``step_time(variant) /
step_time(baseline) - 1``, then its median and min-max over rounds; and the target, per
pixel head off/on: the combined step's median overhead against NSL's two wrappers' median
overheads added (also counted round by round). Baselines: pixel head off, the plain model;
pixel head on, the plain model with the head (both losses). NSL's wrappers cannot train the
pixel head's loss, so their overheads (over the plain model without the head) are the
reference for both.

Data: the synthetic ground truth tiled at 16 px (5 bands) and packed by the graph job with 2
neighbours. ``--json FILE`` writes every round's ms/step and overheads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

from minewatch.compat import import_nsl

nsl = import_nsl()
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from minewatch.synth import make_ground_truth  # noqa: E402
from nsl_models import data as datalib  # noqa: E402
from nsl_models.configs import (  # noqa: E402
    ModelConfig,
    make_adversarial_config,
    make_graph_config,
    make_trainer_config,
)
from nsl_models.models import RegularizedModel, build_base_model  # noqa: E402
from pipelines.graph import run as graph  # noqa: E402
from pipelines.tile import run as tile  # noqa: E402

K = 2


def make_data(root, size):
    gt = os.path.join(root, "gt")
    make_ground_truth(gt, size=size, seed=0)
    out = os.path.join(root, "tiles")
    tile(
        [
            os.path.join(gt, "scenes"),
            "--out",
            out,
            "--labels",
            os.path.join(gt, "truth", "scene_*.geojson"),
            "--tile-size",
            "16",
            "--bands",
            "B02,B03,B04,B08,B11",
        ]
    )
    graph([out, "--out", os.path.join(root, "graph"), "--k", str(K)])
    return out


def median(values):
    return float(np.median(values))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40, help="steps per variant per round")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--json", default=None, help="write every round's ms/step here")
    p.add_argument(
        "--pixel-width", type=int, default=16, help="decoder filters (model.pixel_width)"
    )
    p.add_argument(
        "--data",
        default=None,
        help="existing tile dir, with the graph job's output beside it in graph/",
    )
    args = p.parse_args()
    tiles = args.data or make_data(tempfile.mkdtemp(), args.size)
    graph_dir = os.path.join(os.path.dirname(tiles), "graph")
    cfg = make_trainer_config(data={"tiles": tiles, "graph": graph_dir, "batch_size": args.batch})
    files, _ = datalib.resolve_files(cfg.data)
    spec = datalib.read_tile_spec(tiles, files)
    ds = datalib.make_dataset(
        files, spec, cfg.data, split="all", training=True, max_neighbors=K, pixel_labels=True
    )
    batches = list(ds.take(8))  # in memory: time the step, not the input pipeline
    mcfg = ModelConfig()

    def keras_xy(b):
        return b["image"], b["label"], b["weight"]

    def graph_dict(b):
        feats = {"image": b["image"]}
        for i in range(K):
            feats[f"NL_nbr_{i}_image"] = b["nbr_image"][:, i]
            feats[f"NL_nbr_{i}_weight"] = b["nbr_weight"][:, i : i + 1]
        return feats, b["label"], b["weight"]

    def adv_dict(b):
        # NSL's wrapper multiplies [B, 1] adversarial weights into the sample weights.
        return {"image": b["image"], "label": b["label"][:, None], "weight": b["weight"][:, None]}

    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def run(model, convert):
        """``fit`` for ``n`` steps on the in-memory batches, cycled (one epoch per call)."""
        order = [0]

        def batches_from(n):
            for _ in range(n):
                yield convert(batches[order[0] % len(batches)])
                order[0] += 1

        spec = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), convert(batches[0]))

        def fit(n):
            feed = tf.data.Dataset.from_generator(lambda: batches_from(n), output_signature=spec)
            model.fit(feed, epochs=1, steps_per_epoch=n, verbose=0)

        # fit keeps the train_function it built on the first call; this counts its traces.
        fit.traces = lambda: model.train_function.experimental_get_tracing_count()
        return fit

    variants = {}  # name -> (label, fit)
    tf.keras.utils.set_random_seed(0)
    plain = build_base_model(spec, mcfg)
    plain.compile("adam", loss=loss)
    variants["plain"] = ("plain Keras model", run(plain, keras_xy))

    def keras_xy_head(b):
        # -1 pixel labels carry weight 0; clamp them so the loss op accepts them.
        y = (b["label"], tf.maximum(b["pixel_label"], 0))
        return b["image"], y, (b["weight"], b["pixel_weight"])

    head_cfg = dataclasses.replace(mcfg, pixel_head=True, pixel_width=args.pixel_width)
    tf.keras.utils.set_random_seed(0)
    plain_head = build_base_model(spec, head_cfg)
    plain_head.compile("adam", loss=[loss, loss])
    variants["plain_head"] = ("plain Keras model + pixel head", run(plain_head, keras_xy_head))

    tf.keras.utils.set_random_seed(0)
    g = nsl.keras.GraphRegularization(
        build_base_model(spec, mcfg),
        nsl.configs.make_graph_reg_config(max_neighbors=K, multiplier=0.1),
    )
    g.compile("adam", loss=loss)
    variants["graph"] = ("NSL GraphRegularization", run(g, graph_dict))

    tf.keras.utils.set_random_seed(0)
    a = nsl.keras.AdversarialRegularization(
        build_base_model(spec, mcfg),
        label_keys=["label"],
        sample_weight_key="weight",
        adv_config=nsl.configs.make_adv_reg_config(
            multiplier=0.2, adv_step_size=0.05, adv_grad_norm="infinity"
        ),
    )
    a.compile("adam", loss=loss)
    variants["adv"] = ("NSL AdversarialRegularization", run(a, adv_dict))

    tf.keras.utils.set_random_seed(0)
    c = RegularizedModel(
        build_base_model(spec, mcfg),
        make_graph_config(multiplier=0.1, max_neighbors=K),
        make_adversarial_config(multiplier=0.2, epsilon=0.05),
    )
    c.compile("adam")
    variants["combined"] = ("minewatch combined (graph + FGSM)", run(c, lambda b: b))

    tf.keras.utils.set_random_seed(0)
    head = RegularizedModel(
        build_base_model(spec, head_cfg),
        make_graph_config(multiplier=0.1, max_neighbors=K),
        make_adversarial_config(multiplier=0.2, epsilon=0.05),
    )
    head.compile("adam")
    variants["pixel_head"] = ("combined + pixel head", run(head, lambda b: b))

    for _, fit in variants.values():  # trace and warm up every variant before any clock
        fit(3)
    traced = {name: fit.traces() for name, (_, fit) in variants.items()}
    names = list(variants)
    ms = {name: [] for name in names}  # ms per step, per round
    for r in range(args.rounds):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            t = time.perf_counter()
            variants[name][1](args.steps)
            ms[name].append(1000 * (time.perf_counter() - t) / args.steps)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {ms[n][-1]:.1f}" for n in names))

    retraced = [n for n in names if variants[n][1].traces() != traced[n]]
    if retraced:
        print(f"warning: retraced during the timed rounds: {', '.join(retraced)}")
    span = f"(min-max over {args.rounds} rounds)"
    print(f"\n{'variant':34s} {'examples/s':>10s} {'ms/step':>8s}  {span}")
    for name in names:
        label, values = variants[name][0], ms[name]
        rate = 1000 * args.batch / median(values)
        print(
            f"{label:34s} {rate:10.1f} {median(values):8.1f}  ({min(values):.1f}-{max(values):.1f})"
        )

    # Overheads per round (same round, same machine state) as step-time ratios, then median.
    rounds = range(args.rounds)

    def over(name, base):
        return [ms[name][i] / ms[base][i] - 1 for i in rounds]

    overheads = {
        "graph": over("graph", "plain"),
        "adv": over("adv", "plain"),
        "combined": over("combined", "plain"),
        "pixel_head": over("pixel_head", "plain_head"),
        "head_on_combined": over("pixel_head", "combined"),
    }
    nsl_sum = [overheads["graph"][i] + overheads["adv"][i] for i in rounds]

    def line(name, values):
        lo, hi = 100 * min(values), 100 * max(values)
        return f"{name:52s} {100 * median(values):+7.1f} %  ({lo:+.1f} to {hi:+.1f})"

    print(f"\n{'overhead (step time / baseline - 1)':52s} {'median':>9s}  (min to max)")
    print(line("NSL graph wrapper vs plain", overheads["graph"]))
    print(line("NSL adversarial wrapper vs plain", overheads["adv"]))
    print(line("NSL overheads added (per round)", nsl_sum))
    print(line("combined vs plain (pixel head off)", overheads["combined"]))
    print(line("combined + head vs plain + head (pixel head on)", overheads["pixel_head"]))
    print(line("pixel head on top of the combined step", overheads["head_on_combined"]))
    target = median(overheads["graph"]) + median(overheads["adv"])
    checks = {}
    for head, key in (("off", "combined"), ("on", "pixel_head")):
        got = median(overheads[key])
        met = sum(overheads[key][i] <= nsl_sum[i] for i in rounds)
        checks[head] = {"combined": got, "nsl_added": target, "met": got <= target}
        print(
            f"target, pixel head {head} (combined overhead <= graph + adversarial): "
            f"{'met' if got <= target else 'missed'} on the medians "
            f"({100 * got:+.1f} % vs {100 * target:+.1f} %); met in {met} of {args.rounds} rounds"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "batch": args.batch,
                    "steps": args.steps,
                    "rounds": args.rounds,
                    "ms_per_step": ms,
                    "overheads": overheads,
                    "nsl_added": nsl_sum,
                    "target": checks,
                },
                f,
                indent=1,
            )


if __name__ == "__main__":
    main()
