"""Real short runs on the tiny synthetic tiles: loss, resume, export, promotion, data."""

import json
import os

import numpy as np
import pytest

from nsl_models import data as datalib
from tests.nsl_models.conftest import (
    assert_iterator_resumes,
    pure_and_mixed_records,
    tiny_config,
)

tf = pytest.importorskip("tensorflow")


class Killed(RuntimeError):
    pass


def test_dataset_plain_and_packed_static_shapes(tile_data):
    cfg = tiny_config(tile_data)
    packed, _ = datalib.resolve_files(cfg.data)
    assert "packed" in packed[0]
    plain = sorted(
        str(p) for p in __import__("pathlib").Path(tile_data, "tiles").glob("*.tfrecord")
    )
    spec = datalib.read_tile_spec(tile_data, plain)
    assert spec.shape == (16, 16, 5) and spec.dtype == "uint16"
    for files in (plain, packed):
        ds = datalib.make_dataset(
            files, spec, cfg.data, split="train", training=True, max_neighbors=2
        )
        assert ds.element_spec["image"].shape == (16, 16, 16, 5)
        assert ds.element_spec["nbr_image"].shape == (16, 2, 16, 16, 5)
        batch = next(iter(ds))
        if files is plain:
            assert float(tf.reduce_sum(batch["nbr_weight"])) == 0.0
        else:
            assert float(tf.reduce_sum(batch["nbr_weight"])) > 0.0


def test_split_is_disjoint_and_label_fraction_hides_labels(tile_data):
    cfg = tiny_config(tile_data)
    files = sorted(
        str(p) for p in __import__("pathlib").Path(tile_data, "tiles").glob("*.tfrecord")
    )
    spec = datalib.read_tile_spec(tile_data, files)
    train = datalib.count_labels(files, spec, cfg.data, "train")
    val = datalib.count_labels(files, spec, cfg.data, "validation")
    every = datalib.count_labels(files, spec, cfg.data, "all")
    np.testing.assert_array_equal(train + val, every)
    assert val.sum() > 0
    few = tiny_config(tile_data, data={"label_fraction": 0.1})
    hidden = datalib.count_labels(files, spec, few.data, "train")
    assert hidden.sum() == train.sum() and hidden[-1] > 0.8 * train.sum()
    w = datalib.class_weights(np.array([90, 10, 0]), few.data.class_weighting, 10.0)
    np.testing.assert_allclose(w, [100 / 180, 5.0, 10.0], rtol=1e-6)


def _fixed_batch_loss(trainer):
    ds = datalib.make_dataset(
        trainer.train_files,
        trainer.spec,
        trainer.config.data,
        split="train",
        training=False,
        batch_size=64,
    )
    batch = next(iter(ds))
    return float(trainer.model.test_step(batch)["supervised_loss"])


def test_short_run_lowers_loss_and_exports(tile_data, tmp_path):
    from nsl_models.train import Trainer

    cfg = tiny_config(
        tile_data,
        train={"epochs": 2, "steps_per_epoch": 15, "learning_rate": 0.01},
        graph={"enabled": True},
        adversarial={"enabled": True},
    )
    trainer = Trainer(cfg, str(tmp_path / "m"))
    before = _fixed_batch_loss(trainer)
    trainer.model.reset_metrics()
    result = trainer.fit()
    assert _fixed_batch_loss(trainer) < before
    assert result.global_step == 30
    assert all(np.isfinite(v) for h in result.history for v in h.values())
    assert result.history[-1]["graph_loss"] > 0
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["task"] == "tile" and meta["tile_size"] == 16 and meta["input_dtype"] == "uint16"
    assert meta["bands"] == ["B02", "B03", "B04", "B08", "B11"]
    assert len(meta["normalization"]["mean"]) == 5 and "accuracy" in meta["metrics"]
    assert os.listdir(tmp_path / "m" / "logs" / "train")  # TensorBoard events

    # Export -> reload -> identical predictions, through the contract's signatures.
    loaded = tf.saved_model.load(str(tmp_path / "m" / "saved_model"))
    serve = loaded.signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["image"]
    x = np.random.default_rng(0).uniform(0, 3000, (5, 16, 16, 5)).astype(np.float32)
    x[0, :4] = 0.0  # invalid pixels
    out = serve(image=tf.constant(x))
    assert out["probabilities"].dtype == tf.float32 and out["probabilities"].shape == (5, 5)
    # The serving signature adds the calibration offsets (train.calibrate) to the logits.
    adjust = np.asarray(meta["calibration"]["logit_adjustment"]["probabilities"], np.float32)
    assert adjust.shape == (5,) and np.ptp(adjust) > 0  # undersampled, weighted: a real shift
    expected = tf.nn.softmax(trainer.base_model(x) + adjust).numpy()
    np.testing.assert_allclose(out["probabilities"].numpy(), expected, atol=1e-6)
    emb = loaded.signatures["embedding"](image=tf.constant(x))
    assert list(emb) == ["embedding"] and emb["embedding"].shape == (5, 16)
    np.testing.assert_allclose(emb["embedding"].numpy(), out["embedding"].numpy(), atol=1e-6)


def test_kill_and_resume_continues_from_checkpoint(tile_data, tmp_path):
    from nsl_models.train import Trainer

    cfg = tiny_config(tile_data, train={"epochs": 2, "steps_per_epoch": 5, "checkpoint_every": 3})

    def kill(step, logs):
        if step == 7:
            raise Killed

    first = Trainer(cfg, str(tmp_path / "m"), hooks=[kill])
    with pytest.raises(Killed):
        first.fit(export=False)
    assert first.global_step == 7
    steps_seen = []
    second = Trainer(cfg, str(tmp_path / "m"), hooks=[lambda s, logs: steps_seen.append(s)])
    assert second.restore() == 6  # last checkpoint: every 3 steps
    result = second.fit(export=False)
    assert result.resumed_from == 6
    assert steps_seen == [7, 8, 9, 10]  # the rest of epoch 2, nothing repeated
    assert result.global_step == 10 and result.epochs == 2


def test_frame_model_trains(frame_data, tmp_path):
    from nsl_models.train import Trainer

    cfg = tiny_config(
        frame_data,
        task="frame",
        model={"architecture": "frame_cnn"},
        adversarial={"enabled": True, "method": "pgd", "pgd_iterations": 2},
    )
    result = Trainer(cfg, str(tmp_path / "f")).fit()
    assert result.metadata["classes"] == ["high", "low", "medium", "waste"]
    assert result.metadata["bands"] == ["red", "green", "blue"]


def test_pixel_labels_ignore_unknown_invalid_and_unlabelled_pixels(tmp_path):
    """The mask-ignore rule, by hand on three 2 x 2 tiles."""
    from minewatch.spec import Tile, encode_tiles
    from minewatch.tfrecord import write_record
    from nsl_models.configs import DataConfig

    def tile(col, label, mask, valid, source="vector"):
        image = np.full((2, 2, 1), 7, np.uint16)
        image[~valid] = 0
        return Tile(
            "s",
            "scene",
            0,
            col,
            image,
            valid,
            ("b",),
            label=label,
            label_source=source,
            label_mask=None if mask is None else np.asarray(mask, np.uint8),
        )

    ok = np.ones((2, 2), bool)
    holes = np.array([[True, False], [True, True]])
    tiles = [
        tile(0, 1, [[1, 255], [0, 2]], ok),  # 255: unknown
        tile(2, 0, [[0, 0], [1, 9]], holes),  # (0, 1) invalid, 9: no such class
        tile(4, -1, [[2, 2], [2, 2]], ok, "none"),  # unlabelled tile: nothing counts
        tile(6, 2, None, ok, "csv"),  # no pixel extent: nothing counts
        tile(8, 2, [[2, 2], [2, 2]], ok, "weak"),  # weak: weak_label_weight
    ]
    path = tmp_path / "t.tfrecord"
    with open(path, "wb") as f:
        for record in encode_tiles(tiles):
            write_record(f, record)
    spec = datalib.TileSpec(2, 2, 1, "uint16", ("b",), ("bg", "a", "b"), (0.0,), (1.0,))
    config = DataConfig(tiles=str(tmp_path), validation_fraction=0.0, weak_label_weight=0.5)
    counts = datalib.count_pixels([str(path)], spec, config, "all")
    np.testing.assert_array_equal(counts, [2, 2, 5])
    ds = datalib.make_dataset(
        [str(path)],
        spec,
        config,
        split="all",
        training=False,
        batch_size=5,
        pixel_labels=True,
        pixel_class_weight=np.array([1.0, 2.0, 4.0], np.float32),
    )
    batch = next(iter(ds))
    expected = [
        [[1, -1], [0, 2]],
        [[0, -1], [1, -1]],
        [[-1, -1], [-1, -1]],
        [[-1, -1], [-1, -1]],
        [[2, 2], [2, 2]],
    ]
    np.testing.assert_array_equal(batch["pixel_label"].numpy(), expected)
    np.testing.assert_allclose(
        batch["pixel_weight"].numpy(),
        [[[2, 0], [1, 4]], [[1, 0], [2, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]], [[2, 2], [2, 2]]],
    )


def test_count_classes_splits_pure_and_mixed_tiles_and_expected_counts(tmp_path):
    from nsl_models.configs import DataConfig

    path, spec = pure_and_mixed_records(tmp_path)
    config = DataConfig(tiles=str(tmp_path), validation_fraction=0.0)
    counts = datalib.count_classes([path], spec, config, "all", pixel_labels=True)
    np.testing.assert_array_equal(counts.labels_pure, [40, 0])
    np.testing.assert_array_equal(counts.labels_mixed, [8, 0, 0])
    np.testing.assert_array_equal(counts.pixels_pure, [160, 0])
    np.testing.assert_array_equal(counts.pixels_mixed, [24, 8])
    assert counts.majority == 0
    labels, pixels = counts.expected(0.25)
    np.testing.assert_allclose(labels, [8 + 10, 0, 0])
    np.testing.assert_allclose(pixels, [24 + 40, 8])
    # Without pixels every labelled tile is pure (the tile label decides).
    tiles_only = datalib.count_classes([path], spec, config, "all")
    np.testing.assert_array_equal(tiles_only.labels_pure, [48, 0])
    np.testing.assert_array_equal(tiles_only.pixels_mixed, [0, 0])


def test_majority_undersampling_drops_only_pure_majority_tiles_reproducibly(tmp_path):
    from nsl_models.configs import DataConfig

    path, spec = pure_and_mixed_records(tmp_path)
    config = DataConfig(
        tiles=str(tmp_path), validation_fraction=0.0, majority_keep=0.25, shuffle_buffer=64
    )

    def mixed_share(seed, majority=0):
        ds = datalib.make_dataset(
            [path], spec, config, split="all", training=True, batch_size=48,
            pixel_labels=True, seed=seed, majority_class=majority,
        )  # fmt: skip
        labels = np.concatenate([b["pixel_label"].numpy() for b in ds.take(10)])
        return float(np.mean((labels == 1).any(axis=(1, 2)))), labels

    share, labels = mixed_share(seed=3)
    # 8 mixed of 8 + 40 * 0.25 = 18 expected tiles per pass: 44 %, not 8 / 48 = 17 %.
    assert 0.35 < share < 0.55
    np.testing.assert_array_equal(mixed_share(seed=3)[1], labels)  # seeded: same stream
    assert mixed_share(seed=3, majority=-1)[0] < 0.25  # off: the raw 17 %
    # The sampling stream is part of the iterator state: a restored checkpoint
    # continues with the same batches (resume after a kill).
    ds = datalib.make_dataset(
        [path], spec, config, split="all", training=True, batch_size=8, pixel_labels=True,
        seed=3, majority_class=0,
    )  # fmt: skip
    assert_iterator_resumes(ds, tmp_path, "pixel_label")


def test_pixel_head_trains_exports_and_reloads(tile_data, tmp_path):
    from nsl_models.train import Trainer

    cfg = tiny_config(
        tile_data,
        model={"pixel_head": True, "pixel_width": 8},
        train={"epochs": 1, "steps_per_epoch": 8, "learning_rate": 0.01},
        graph={"enabled": True},
        adversarial={"enabled": True},
    )
    trainer = Trainer(cfg, str(tmp_path / "p"))
    assert trainer.pixel_class_weight is not None and trainer.pixel_counts.sum() > 0
    ds = datalib.make_dataset(
        trainer.train_files,
        trainer.spec,
        cfg.data,
        split="train",
        training=False,
        batch_size=64,
        pixel_labels=True,
        pixel_class_weight=trainer.pixel_class_weight,
    )
    batch = next(iter(ds))
    before = float(trainer.model.test_step(batch)["pixel_loss"])
    trainer.model.reset_metrics()
    result = trainer.fit()
    assert float(trainer.model.test_step(batch)["pixel_loss"]) < before
    assert result.history[-1]["pixel_loss"] > 0
    pixels = result.metrics["pixels"]
    assert pixels["pixels"] > 0 and 0.0 <= pixels["mean_iou"] <= 1.0
    assert result.metadata["outputs"] == ["probabilities", "embedding", "pixel_probabilities"]

    loaded = tf.saved_model.load(str(tmp_path / "p" / "saved_model"))
    serve = loaded.signatures["serving_default"]
    x = np.random.default_rng(0).uniform(0, 3000, (5, 16, 16, 5)).astype(np.float32)
    out = serve(image=tf.constant(x))
    logits, pixel = trainer.base_model(x)
    adjust = result.metadata["calibration"]["logit_adjustment"]
    assert out["pixel_probabilities"].shape == (5, 16, 16, 5)
    np.testing.assert_allclose(
        out["pixel_probabilities"].numpy(),
        tf.nn.softmax(pixel + np.float32(adjust["pixel_probabilities"])).numpy(),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        out["probabilities"].numpy(),
        tf.nn.softmax(logits + np.float32(adjust["probabilities"])),
        atol=1e-6,
    )
    # calibrated pixel scores and per-kind operating points from the validation split
    assert result.metrics["pixels_calibrated"]["pixels"] == pixels["pixels"]
    points = result.metadata["operating_points"]
    assert points["smooth"] in (1, 3) and set(points["kinds"]) <= {
        "stockpile",
        "mining_scar",
        "haul_road",
        "pit_water",
    }
    # `minewatch evaluate` adds per-pixel scores for a model that serves them
    from nsl_models.evaluate import evaluate_models

    report = evaluate_models([str(tmp_path / "p")], tile_data)
    pixels = report["models"][0]["pixels"]
    files = sorted(
        str(p) for p in __import__("pathlib").Path(tile_data, "tiles").glob("*.tfrecord")
    )
    _, _, masks = datalib.load_pixel_arrays(files, trainer.spec, cfg.data, "all")
    assert pixels["pixels"] == int((masks >= 0).sum()) > 0
    assert set(pixels["per_class"]) == set(trainer.spec.classes)
    assert all(
        0.0 <= c["iou"] <= min(c["precision"], c["recall"]) or c["iou"] == 0.0
        for c in pixels["per_class"].values()
    )


def test_training_batches_carry_a_seeded_corrupted_view(tmp_path):
    from minewatch.spec import Tile, encode_tiles
    from minewatch.tfrecord import write_record
    from nsl_models.configs import DataConfig

    rng = np.random.default_rng(0)
    ok = np.ones((8, 8), bool)
    tiles = [
        Tile("s", "scene", 0, 8 * i, rng.integers(1, 255, (8, 8, 3)).astype(np.uint8), ok,
             ("r", "g", "b"), label=i % 2, label_source="csv")
        for i in range(6)
    ]  # fmt: skip
    path = tmp_path / "f.tfrecord"
    with open(path, "wb") as f:
        for record in encode_tiles(tiles):
            write_record(f, record)
    spec = datalib.TileSpec(8, 8, 3, "uint8", ("r", "g", "b"), ("a", "b"), (0.0,) * 3, (1.0,) * 3)
    config = DataConfig(tiles=str(tmp_path), validation_fraction=0.0, shuffle_buffer=8)

    def batch(seed):
        ds = datalib.make_dataset(
            [str(path)], spec, config, split="all", training=True, batch_size=6, seed=seed,
            corruptions=("shift", "motion_blur"), max_severity=2,
        )  # fmt: skip
        return next(iter(ds))

    b = batch(4)
    image, aug = b["image"].numpy(), b["aug_image"].numpy()
    assert aug.shape == image.shape and aug.dtype == np.float32
    np.testing.assert_array_equal(aug, np.round(aug))  # stored dtype, cast back exactly
    assert all(not np.array_equal(a, x) for a, x in zip(aug, image, strict=True))
    np.testing.assert_array_equal(batch(4)["aug_image"].numpy(), aug)  # seeded
    eval_ds = datalib.make_dataset(
        [str(path)], spec, config, split="all", training=False, batch_size=6,
        corruptions=("shift",),
    )  # fmt: skip
    assert "aug_image" not in next(iter(eval_ds))  # never at evaluation
