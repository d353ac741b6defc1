"""The trainer's data reader on bad TFRecords: a clear error before training starts."""

from __future__ import annotations

import numpy as np
import pytest

from minewatch.errors import InputError
from tests.reliability.corpus import cases_of

tf = pytest.importorskip("tensorflow")


def _trainer(tiles, train_file, tmp_path):
    from nsl_models.train import Trainer
    from tests.nsl_models.conftest import tiny_config

    cfg = tiny_config(
        tiles,
        data={"train": train_file, "batch_size": 2, "validation_fraction": 0.0},
        train={"epochs": 1, "steps_per_epoch": 2},
    )
    return Trainer(cfg, str(tmp_path / "m"))


def test_good_records_train(corpus, tmp_path):
    root, cases = corpus
    (good,) = cases_of(cases, "records", "ok")
    result = _trainer(str(root / "tiles"), good.path, tmp_path).fit(export=False)
    assert result.global_step == 2


@pytest.mark.parametrize("name", ["missing-image", "missing-shape", "short-pixels", "wrong-shape"])
def test_a_bad_record_is_refused_before_training(corpus, tmp_path, name):
    root, cases = corpus
    (case,) = [c for c in cases_of(cases, "records") if c.name == f"train-{name}"]
    with pytest.raises(InputError, match=case.reason):
        trainer = _trainer(str(root / "tiles"), case.path, tmp_path)
        trainer.fit(export=False)  # past this point the error came too late


def test_a_record_that_is_not_an_example_stops_before_training(corpus, tmp_path):
    root, cases = corpus
    (case,) = [c for c in cases_of(cases, "records") if c.name == "train-not-an-example"]
    with pytest.raises(InputError, match=r"not a tf\.train\.Example") as info:
        _trainer(str(root / "tiles"), case.path, tmp_path)
    assert case.path in str(info.value)
    assert not (tmp_path / "m" / "checkpoints").exists()


def test_every_bad_record_is_counted_and_named_by_file_record_and_tile(corpus, tmp_path):
    root, _ = corpus
    # the four bad kinds that parse, each the 5th record (index 4) of its own file
    files = str(root / "records" / "bad-[msw]*.tfrecord")
    with pytest.raises(InputError, match=r"^4 training record\(s\) in 4 file\(s\)") as info:
        _trainer(str(root / "tiles"), files, tmp_path)
    for name in ("missing-image", "missing-shape", "short-pixels", "wrong-shape"):
        path = root / "records" / f"bad-{name}.tfrecord"
        assert f"{path} record 4 (tile/id 'bad:{name}')" in str(info.value)


def test_many_bad_records_are_counted_and_the_first_five_named(corpus, tmp_path):
    from minewatch.spec import encode_tiles
    from tests.reliability.corpus import _write_shard, bad_records, good_tiles

    root, _ = corpus
    short, _ = bad_records()["short-pixels"]
    path = tmp_path / "many.tfrecord"
    _write_shard(path, [*encode_tiles(good_tiles(2)), *[short] * 7])
    with pytest.raises(InputError, match=r"^7 training record\(s\) in 1 file\(s\)") as info:
        _trainer(str(root / "tiles"), str(path), tmp_path)
    named = [line for line in str(info.value).splitlines() if line.startswith(f"  {path}")]
    assert [line.split()[2] for line in named] == ["2", "3", "4", "5", "6"]
    assert str(info.value).endswith("... and 2 more")


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"image": np.full((16, 16, 3), 7, np.uint8)}, "image/dtype uint8 and the first record's"),
        ({"image": np.full((8, 8, 3), 7, np.uint16)}, r"image/shape \[8, 8, 3\] and the first"),
        ({"bands": ("B02", "B03", "B08")}, "image/bands .*'B08'.* and the first record's"),
    ],
    ids=["dtype", "shape", "bands"],
)
def test_a_whole_record_of_another_spec_is_refused(corpus, tmp_path, change, reason):
    from minewatch.spec import encode_tiles
    from tests.reliability.corpus import _write_shard, good_tiles

    root, _ = corpus
    tiles = good_tiles(4)
    for key, value in change.items():
        setattr(tiles[-1], key, value)
    tiles[-1].valid = np.ones(tiles[-1].image.shape[:2], bool)
    path = tmp_path / "mixed.tfrecord"
    _write_shard(path, encode_tiles(tiles))
    with pytest.raises(InputError, match=reason):
        _trainer(str(root / "tiles"), str(path), tmp_path)


def test_a_corrupt_shard_is_named_before_training(corpus, tmp_path):
    root, cases = corpus
    (case,) = [c for c in cases_of(cases, "tiles") if c.name == "shard-truncated"]
    files = str(root / "tiles" / "tiles" / "tiles-[gt]*.tfrecord")  # good + truncated
    with pytest.raises(InputError, match="corrupt or truncated") as info:
        _trainer(str(root / "tiles"), files, tmp_path)
    assert case.path in str(info.value)
