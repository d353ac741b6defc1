"""Examples/s of one train step: plain, NSL GraphRegularization, NSL AdversarialRegularization
and minewatch's combined step (graph + adversarial), without and with the per-pixel head, same
data, batch and base model.

    .venv/bin/python bench/train.py [--size tiny|demo] [--batch 64] [--steps 40] [--pixel-width 16]

Data: the synthetic ground truth tiled at 16 px (5 bands) and packed by the graph job with 2
neighbours. Each variant is warmed up (tracing) before timing.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile
import time

from minewatch.compat import import_nsl

nsl = import_nsl()
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


def timed(name, fit, batch, steps):
    fit(3)  # trace + warm up
    t = time.perf_counter()
    fit(steps)
    dt = time.perf_counter() - t
    rate = steps * batch / dt
    print(f"{name:34s} {rate:9.1f} examples/s  ({1000 * dt / steps:6.1f} ms/step)")
    return rate


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="tiny")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=40)
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

    def cycle():
        while True:
            yield from batches

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

    gen = cycle()
    loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = {}

    def run(model, convert):
        def fit(n):
            feed = tf.data.Dataset.from_generator(
                lambda: (convert(next(gen)) for _ in range(n)),
                output_signature=tf.nest.map_structure(
                    lambda t: tf.TensorSpec(t.shape, t.dtype), convert(batches[0])
                ),
            )
            model.fit(feed, epochs=1, steps_per_epoch=n, verbose=0)

        return fit

    tf.keras.utils.set_random_seed(0)
    plain = build_base_model(spec, mcfg)
    plain.compile("adam", loss=loss)
    results["plain"] = timed("plain Keras model", run(plain, keras_xy), args.batch, args.steps)

    tf.keras.utils.set_random_seed(0)
    g = nsl.keras.GraphRegularization(
        build_base_model(spec, mcfg),
        nsl.configs.make_graph_reg_config(max_neighbors=K, multiplier=0.1),
    )
    g.compile("adam", loss=loss)
    results["graph"] = timed("NSL GraphRegularization", run(g, graph_dict), args.batch, args.steps)

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
    results["adv"] = timed(
        "NSL AdversarialRegularization", run(a, adv_dict), args.batch, args.steps
    )

    tf.keras.utils.set_random_seed(0)
    c = RegularizedModel(
        build_base_model(spec, mcfg),
        make_graph_config(multiplier=0.1, max_neighbors=K),
        make_adversarial_config(multiplier=0.2, epsilon=0.05),
    )
    c.compile("adam")
    results["combined"] = timed(
        "minewatch combined (graph + FGSM)", run(c, lambda b: b), args.batch, args.steps
    )

    tf.keras.utils.set_random_seed(0)
    head = RegularizedModel(
        build_base_model(
            spec, dataclasses.replace(mcfg, pixel_head=True, pixel_width=args.pixel_width)
        ),
        make_graph_config(multiplier=0.1, max_neighbors=K),
        make_adversarial_config(multiplier=0.2, epsilon=0.05),
    )
    head.compile("adam")
    results["pixel_head"] = timed(
        "combined + pixel head", run(head, lambda b: b), args.batch, args.steps
    )

    ms = {k: 1000 * args.batch / v for k, v in results.items()}  # ms per batch
    overhead = (ms["graph"] - ms["plain"]) + (ms["adv"] - ms["plain"])
    print(
        f"\nNSL overheads added: {overhead:.1f} ms/step; combined overhead: "
        f"{ms['combined'] - ms['plain']:.1f} ms/step; pixel head: "
        f"{ms['pixel_head'] - ms['combined']:.1f} ms/step"
    )


if __name__ == "__main__":
    main()
