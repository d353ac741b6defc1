"""Hard negatives: mining the hardest background tiles, keeping them every pass, two rounds."""

import json
import os

import numpy as np
import pytest

from nsl_models import data as datalib
from nsl_models import hard_negatives
from tests.nsl_models.conftest import (
    assert_iterator_resumes,
    pure_and_mixed_records,
    tiny_config,
)

tf = pytest.importorskip("tensorflow")

N_PURE, N_MIXED = 40, 8


def _records(tmp_path):
    """Tile ``i`` has value ``i``; tile 5 is pure with one invalid pixel of value 1000."""
    return pure_and_mixed_records(tmp_path, N_PURE, N_MIXED, numbered=True, dim=(5,))


def _id(i):
    return f"s:0:{2 * i}"  # tile/id: scene, row, column


def _by_value(images):
    """Pixel probabilities whose non-background share is the pixel value / 1000."""
    other = np.clip(images[..., 0] / 1000.0, 0.0, 1.0)
    return np.stack([1.0 - other, other], -1)


def test_mine_keeps_the_hardest_pure_majority_tiles_by_their_worst_valid_pixel(tmp_path):
    from nsl_models.configs import DataConfig

    path, spec = _records(tmp_path)
    config = DataConfig(tiles=str(tmp_path), validation_fraction=0.0)
    hard = hard_negatives.mine([path], spec, config, None, 0, _by_value, 0.25, batch_size=7)
    # The pool is the 40 pure tiles (the mixed ones never are); the hardest 10
    # are the highest values, 30..39; tile 5's bright pixel is invalid.
    assert hard.pool == N_PURE and hard.tiles == 10
    assert hard.tile_ids == tuple(_id(i) for i in range(39, 29, -1))
    assert hard.pixels == 40
    assert hard.least_hardness == pytest.approx(0.030)
    assert hard.median_hardness == pytest.approx(0.0195)
    # Tile probabilities ([B, K]) work too; ties break by tile id.
    flat = hard_negatives.mine(
        [path], spec, config, None, 0, lambda x: np.tile([[0.5, 0.5]], (len(x), 1)), 0.1
    )
    assert flat.tile_ids == tuple(sorted(_id(i) for i in range(N_PURE))[:4])  # as strings
    with pytest.raises(ValueError, match="fraction"):
        hard_negatives.mine([path], spec, config, None, 0, _by_value, 0.0)
    # The file round-trips.
    hard_negatives.write(hard, str(tmp_path / "m"))
    assert hard_negatives.read(str(tmp_path / "m" / hard_negatives.FILE)) == hard
    assert "tile_ids" not in hard.summary() and hard.summary()["tiles"] == 10


def test_always_kept_tiles_come_every_pass_and_the_expected_counts_follow(tmp_path):
    from nsl_models.configs import DataConfig

    path, spec = _records(tmp_path)
    config = DataConfig(
        tiles=str(tmp_path), validation_fraction=0.0, majority_keep=0.05, shuffle_buffer=64
    )
    hard = tuple(_id(i) for i in range(10, 14))

    def seen(always, batches=40):
        ds = datalib.make_dataset(
            [path], spec, config, split="all", training=True, batch_size=8,
            pixel_labels=True, seed=2, majority_class=0, always_keep=always,
        )  # fmt: skip
        values = np.concatenate([b["image"].numpy()[:, 1, 1, 0] for b in ds.take(batches)])
        return np.bincount(values.astype(int), minlength=N_PURE + N_MIXED)

    counts = seen(hard)
    mixed = counts[N_PURE:].mean()  # kept every pass: one per pass each
    assert mixed > 15
    np.testing.assert_allclose(counts[10:14], mixed, atol=2)  # like the mixed tiles
    others = np.delete(counts[:N_PURE], [10, 11, 12, 13])
    assert others.mean() < 0.2 * mixed  # the rest at majority_keep
    without = seen(())
    assert without[10:14].mean() < 0.2 * without[N_PURE:].mean()
    # The sampling stream with the mined set still checkpoints.
    ds = datalib.make_dataset(
        [path], spec, config, split="all", training=True, batch_size=8, pixel_labels=True,
        seed=2, majority_class=0, always_keep=hard,
    )  # fmt: skip
    assert_iterator_resumes(ds, tmp_path, "image")

    totals = datalib.count_classes([path], spec, config, "all", pixel_labels=True)
    labels, pixels = totals.expected(0.05, always_tiles=4, always_pixels=16)
    np.testing.assert_allclose(labels, [8 + 4 + 0.05 * 36, 0, 0])
    np.testing.assert_allclose(pixels, [24 + 16 + 0.05 * 143, 8])  # tile 5 has 3 valid


def test_train_from_config_trains_twice_and_records_the_mined_tiles(tile_data, tmp_path):
    from nsl_models.train import train_from_config

    cfg = tiny_config(
        tile_data,
        data={"majority_keep": 0.3},
        model={"pixel_head": True, "pixel_width": 8},
        train={"epochs": 1, "steps_per_epoch": 4, "hard_negatives": 0.2},
    )
    out = str(tmp_path / "m")
    result = train_from_config(cfg, out)
    first = json.load(open(os.path.join(out, "round1", "metadata.json")))
    assert "hard_negatives" not in first
    assert first["config"]["train"]["hard_negatives"] == 0.0
    mined = hard_negatives.read(os.path.join(out, hard_negatives.FILE))
    assert mined.tiles == round(0.2 * mined.pool) > 0
    assert result.metadata["hard_negatives"] == json.loads(json.dumps(mined.summary()))
    assert result.metadata["config"]["train"]["hard_negatives"] == 0.2
    # The hardest fifth of the pool: none easier than the pool's median.
    assert mined.median_hardness <= mined.least_hardness <= 1.0
    assert len(set(mined.tile_ids)) == mined.tiles


def test_a_trainer_without_the_mined_tiles_refuses_hard_negatives(tile_data, tmp_path):
    from minewatch.errors import ConfigError
    from nsl_models.train import Trainer

    cfg = tiny_config(tile_data, train={"hard_negatives": 0.1})
    with pytest.raises(ConfigError, match=r"train\.hard_negatives"):
        Trainer(cfg, str(tmp_path / "m"))
