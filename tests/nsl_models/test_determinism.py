"""Reproducible training: the same command on the same inputs trains the same model (CPU).

Tile -> graph -> train twice, into two folders: the same tile shards and packed
files, each with the same records in the same order, and byte-identical best
weights. And the tile and graph jobs' files do not change when Beam cuts its
bundles differently (two worker threads instead of one).

Records are compared parsed: protobuf writes a map's entries (an Example's
features) in hash order, which changes between encodings of the same record.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re

import numpy as np
import pytest

from minewatch.tfrecord import read_records
from tests.factories import read_table
from tests.nsl_models.conftest import tiny_config

tf = pytest.importorskip("tensorflow")

# Blocks of 2 x 2 tiles dealt into shards of at most 48 tiles: 128 blocks in 14 shards.
TILE_ARGS = ["--tile-size", "16", "--bands", "B02,B03,B04,B08,B11", "--block-tiles", "2"]
TILE_ARGS += ["--records-per-shard", "48"]
PACKED_PER_SHARD = 64  # 512 labelled tiles: 8 packed files


@pytest.fixture(scope="module")
def ground_truth(tmp_path_factory):
    from minewatch.synth import make_ground_truth

    gt = tmp_path_factory.mktemp("determinism") / "gt"
    make_ground_truth(gt, size="tiny", seed=0, frames=False)
    return gt


def tile_and_graph(gt, root, *beam_args):
    """The tile and graph jobs as the CLI runs them; returns the tiles folder."""
    from minewatch.arguments import parse
    from pipelines.graph import GRAPH_ARGS, graph_config, run_graph
    from pipelines.tile import run as tile_job

    tiles = os.path.join(root, "tiles")
    labels = os.path.join(gt, "truth", "scene_*.geojson")
    tile_job(
        [os.path.join(gt, "scenes"), "--out", tiles, "--labels", labels, *TILE_ARGS, *beam_args]
    )
    # TILES_graph: where tiny_config looks for the packed records
    argv = [tiles, "--out", tiles + "_graph", "--k", "2", *beam_args]
    params, rest = parse(GRAPH_ARGS, argv, "minewatch graph")
    config, beam_options, header = graph_config(params, rest)
    config = dataclasses.replace(config, records_per_shard=PACKED_PER_SHARD)
    run_graph(config, beam_options, header=header)
    return tiles


def examples(folder, pattern):
    """``{file name: [tf.train.Example, ...]}`` of the TFRecord files matching ``pattern``."""
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, pattern))):
        with open(path, "rb") as f:
            out[os.path.basename(path)] = [tf.train.Example.FromString(r) for r in read_records(f)]
    return out


def tile_ids(records):
    return [r.features.feature["tile/id"].bytes_list.value[0].decode() for r in records]


def best_weights(model_dir):
    """``{variable: bytes}`` of the best checkpoint."""
    reader = tf.train.load_checkpoint(os.path.join(model_dir, "best", "weights"))
    names = [n for n, _ in tf.train.list_variables(os.path.join(model_dir, "best", "weights"))]
    return {n: reader.get_tensor(n).tobytes() for n in names if "OBJECT_GRAPH" not in n}


def test_two_runs_give_the_same_files_and_byte_identical_best_weights(ground_truth, tmp_path):
    from nsl_models.train import Trainer

    runs = []
    for name in ("a", "b"):
        tiles = tile_and_graph(ground_truth, tmp_path / name)
        cfg = tiny_config(
            tiles,
            # every random draw of a run: shuffle, dropout, undersampling, corruptions
            model={"dropout": 0.3},
            data={"majority_keep": 0.5},
            graph={"enabled": True},
            adversarial={"enabled": True, "corruptions": ("shift", "gaussian_noise")},
            train={"epochs": 2, "steps_per_epoch": 5},
        )
        result = Trainer(cfg, str(tmp_path / name / "model")).fit(export=False)
        assert result.global_step == 10
        runs.append((tiles, best_weights(str(tmp_path / name / "model"))))
    (tiles_a, weights_a), (tiles_b, weights_b) = runs
    assert len(weights_a) > 4 and weights_a.keys() == weights_b.keys()
    different = [n for n in weights_a if weights_a[n] != weights_b[n]]
    assert not different, f"best weights differ: {different[:5]}"
    shards = examples(tiles_a, "tiles/*.tfrecord")
    # 14 shards; one that reached 48 tiles rolled over into a part file (-1)
    assert {re.sub(r"(-of-\d{5})-\d+\.tfrecord$", r"\1.tfrecord", n) for n in shards} == {
        f"tiles-{i:05d}-of-00014.tfrecord" for i in range(14)
    }
    assert 0 < max(len(r) for r in shards.values()) <= 48
    assert sum(len(r) for r in shards.values()) == 512
    assert shards == examples(tiles_b, "tiles/*.tfrecord")  # same records, same order
    packed = examples(tiles_a + "_graph", "packed/*.tfrecord")
    assert list(packed) == [f"packed-{i:05d}-of-00008.tfrecord" for i in range(8)]
    assert all(tile_ids(r) == sorted(tile_ids(r)) and len(r) > 30 for r in packed.values())
    assert packed == examples(tiles_b + "_graph", "packed/*.tfrecord")


def test_shards_do_not_depend_on_bundles(ground_truth, tmp_path):
    # One bundle writes all 128 blocks; with two threads two bundles write 64 each.
    one = tile_and_graph(ground_truth, tmp_path / "one")
    two = tile_and_graph(
        ground_truth,
        tmp_path / "two",
        "--direct_num_workers=2",
        "--direct_running_mode=multi_threading",
    )
    assert examples(one, "tiles/*.tfrecord") == examples(two, "tiles/*.tfrecord")
    packed_one = examples(one + "_graph", "packed/*.tfrecord")
    packed_two = examples(two + "_graph", "packed/*.tfrecord")
    assert list(packed_one) == list(packed_two)
    # The records' order; their neighbour weights are cosine similarities computed
    # on other batches of vectors, so only the order is asserted here.
    assert [tile_ids(r) for r in packed_one.values()] == [tile_ids(r) for r in packed_two.values()]
    # the manifest names the same file for every tile
    shard_of = [
        sorted((r["tile_id"], r["shard"]) for r in read_table(t, "manifest")) for t in (one, two)
    ]
    assert shard_of[0] == shard_of[1] and len(shard_of[0]) == 512


def test_op_determinism_is_on_for_cpu_and_opt_in_on_gpu(monkeypatch):
    from tensorflow.python.framework import config as tf_config

    from nsl_models import hardware

    monkeypatch.delenv("TF_DETERMINISTIC_OPS", raising=False)
    assert hardware.make_deterministic(3) is True  # no GPU here
    assert tf_config.is_op_determinism_enabled()
    drawn = (np.random.rand(), tf.random.uniform([]).numpy())
    hardware.make_deterministic(3)
    assert (np.random.rand(), tf.random.uniform([]).numpy()) == drawn
    # With a GPU it is the user's choice: TensorFlow's own TF_DETERMINISTIC_OPS.
    gpu = tf.config.PhysicalDevice("/physical_device:GPU:0", "GPU")
    monkeypatch.setattr(tf.config, "list_physical_devices", lambda kind=None: [gpu])
    assert hardware.make_deterministic(3) is False
    monkeypatch.setenv("TF_DETERMINISTIC_OPS", "1")
    assert hardware.make_deterministic(3) is True
