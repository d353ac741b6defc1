"""Stratified label budgets (``data.label_fraction`` per class, ``data.label_floor``)."""

import dataclasses
import json
import math
import os
import pathlib

import numpy as np
import pytest

from minewatch.errors import ConfigError
from nsl_models import data as datalib
from nsl_models.configs import config_from_dict
from tests.nsl_models.conftest import tiny_config

tf = pytest.importorskip("tensorflow")


def _plain(tile_data):
    files = sorted(str(p) for p in pathlib.Path(tile_data, "tiles").glob("*.tfrecord"))
    return files, datalib.read_tile_spec(tile_data, files)


def _buckets_by_class(files, k):
    """Each class's label-hiding buckets, computed here from ``tile/id`` (the documented salt)."""
    feats = {
        "tile/id": tf.io.FixedLenFeature([], tf.string),
        "label/class": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    }
    out = [[] for _ in range(k)]
    for record in tf.data.TFRecordDataset(files):
        ex = tf.io.parse_single_example(record, feats)
        label = int(ex["label/class"])
        if label >= 0:
            key = tf.strings.join([ex["tile/id"], "#label"])
            out[label].append(int(tf.strings.to_hash_bucket_fast(key, 10_000)))
    return [np.sort(np.array(b, np.int64)) for b in out]


def _target(n, fraction, floor):
    return max(math.floor(fraction * n + 0.5), min(floor, n))


@pytest.mark.parametrize(("fraction", "floor"), [(0.05, 10), (0.05, 0), (0.3, 2)])
def test_kept_count_per_class_follows_the_formula(tile_data, fraction, floor):
    files, spec = _plain(tile_data)
    # Every tile in the training split, so the buckets computed here cover the same tiles.
    cfg = tiny_config(
        tile_data,
        data={"label_fraction": fraction, "label_floor": floor, "validation_fraction": 0.0},
    )
    budget = datalib.label_budget(files, spec, cfg.data)
    buckets = _buckets_by_class(files, spec.num_classes)
    np.testing.assert_array_equal(budget.tiles, [len(b) for b in buckets])
    for c, b in enumerate(buckets):
        target = _target(len(b), fraction, floor)
        # The target lowest buckets, plus any tile tied with the last of them.
        expected = int((b <= b[target - 1]).sum()) if target else 0
        assert budget.labelled[c] == expected, spec.classes[c]
        ties = np.bincount(b).max() - 1 if len(b) else 0
        assert target <= budget.labelled[c] <= target + ties
    # What the counts and the batches see is what the budget says.
    counts = datalib.count_labels(files, spec, cfg.data, "train", budget=budget)
    np.testing.assert_array_equal(counts[:-1], budget.labelled)
    assert counts[-1] == budget.tiles.sum() - budget.labelled.sum()
    ds = datalib.make_dataset(
        files, spec, cfg.data, split="train", training=False, batch_size=1, budget=budget
    )
    labels = np.concatenate([b["label"] for b in ds.as_numpy_iterator()])
    kept = np.bincount(labels[labels >= 0], minlength=spec.num_classes)
    np.testing.assert_array_equal(kept, budget.labelled)


def test_floor_lifts_a_rare_class(tile_data):
    files, spec = _plain(tile_data)
    stockpile = spec.classes.index("stockpile")
    no_floor = tiny_config(tile_data, data={"label_fraction": 0.05, "label_floor": 0})
    floored = tiny_config(tile_data, data={"label_fraction": 0.05})  # default floor 10
    assert floored.data.label_floor == 10
    few = datalib.label_budget(files, spec, no_floor.data)
    lifted = datalib.label_budget(files, spec, floored.data)
    n = int(lifted.tiles[stockpile])
    assert 10 < n < 100  # a rare class: 5 % of it is one or two tiles
    assert few.labelled[stockpile] <= 2
    assert lifted.labelled[stockpile] == 10
    # A class with fewer tiles than the floor keeps all of them; the floor
    # never lowers a class's share.
    small = lifted.tiles <= 10
    np.testing.assert_array_equal(lifted.labelled[small], lifted.tiles[small])
    assert np.all(lifted.labelled >= few.labelled)


def test_budget_is_deterministic_and_independent_of_file_order(tile_data):
    files, spec = _plain(tile_data)
    cfg = tiny_config(tile_data, data={"label_fraction": 0.1})
    first = datalib.label_budget(files, spec, cfg.data)
    again = datalib.label_budget(list(reversed(files)), spec, cfg.data)
    for name in ("tiles", "labelled", "cuts"):
        np.testing.assert_array_equal(getattr(first, name), getattr(again, name))


def test_only_training_tiles_count_and_validation_keeps_its_labels(tile_data):
    files, spec = _plain(tile_data)
    full = tiny_config(tile_data)
    few = tiny_config(tile_data, data={"label_fraction": 0.05})
    budget = datalib.label_budget(files, spec, few.data)
    train = datalib.count_labels(files, spec, full.data, "train")
    np.testing.assert_array_equal(budget.tiles, train[:-1])
    for split in ("validation", "all"):
        np.testing.assert_array_equal(
            datalib.count_labels(files, spec, few.data, split),
            datalib.count_labels(files, spec, full.data, split),
        )
    # label_fraction 1: nothing hidden, every cut above every bucket.
    everything = datalib.label_budget(files, spec, full.data)
    np.testing.assert_array_equal(everything.labelled, everything.tiles)
    assert np.all(everything.cuts == 10_000)
    # Without a budget the functions count one themselves: the same labels.
    np.testing.assert_array_equal(
        datalib.count_labels(files, spec, few.data, "train"),
        datalib.count_labels(files, spec, few.data, "train", budget=budget),
    )
    with pytest.raises(ValueError, match=r"made for label_fraction 0\.05"):
        other = dataclasses.replace(few.data, label_fraction=0.1)
        datalib.count_labels(files, spec, other, "train", budget=budget)


def test_label_floor_must_not_be_negative():
    with pytest.raises(ConfigError, match=r"data\.label_floor: must be >= 0, got -1"):
        config_from_dict({"data": {"label_floor": -1}})


def test_metadata_records_tiles_and_labelled_per_class(tile_data, tmp_path):
    from nsl_models.train import Trainer

    cfg = tiny_config(
        tile_data,
        data={"label_fraction": 0.05, "graph": ""},
        train={"epochs": 1, "steps_per_epoch": 1, "calibrate": False},
    )
    trainer = Trainer(cfg, str(tmp_path / "m"))
    result = trainer.fit()
    with open(os.path.join(tmp_path, "m", "metadata.json")) as f:
        labels = json.load(f)["labels"]
    assert result.metadata["labels"] == labels
    budget = trainer.label_budget
    assert labels == {
        "fraction": 0.05,
        "floor": 10,
        "tiles": {c: int(n) for c, n in zip(trainer.spec.classes, budget.tiles, strict=True)},
        "labelled": {c: int(n) for c, n in zip(trainer.spec.classes, budget.labelled, strict=True)},
    }
    # The trainer's class counts (and so its class weights) see the same budget.
    np.testing.assert_array_equal(trainer.label_counts[:-1], budget.labelled)
    assert labels["labelled"]["stockpile"] == 10
    # label_fraction 1: no budget pass, every training tile keeps its label.
    full = Trainer(
        dataclasses.replace(cfg, data=cfg.data.__class__(tiles=tile_data)), str(tmp_path)
    )
    assert full.label_budget is None
    assert full.labels()["labelled"] == full.labels()["tiles"] == labels["tiles"]
    assert full.labels()["fraction"] == 1.0
