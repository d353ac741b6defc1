"""The trainer's input pipeline (``nsl_models.data``) on real tile records.

Two sources: the tile and graph jobs' output of the session's ``tile_data``, and
a few 4 x 4 x 2 tiles written here with the project's own encoder, packer and
TFRecord writer (known pixels, labels and neighbours; broken copies of them).
"""

import dataclasses
import glob
import json
import os
import pathlib
import re
from types import SimpleNamespace

import numpy as np
import pytest

from minewatch.errors import ConfigError, InputError
from minewatch.spec import IMAGE_RAW, IMAGE_SHAPE, Tile, encode_tiles
from minewatch.tfrecord import write_record
from nsl_models import data as datalib
from nsl_models.configs import ClassWeighting, DataConfig, SplitKey
from pipelines.graph.packing import pack_example
from tests.factories import read_stats, read_tiles
from tests.nsl_models.conftest import tiny_config

tf = pytest.importorskip("tensorflow")

BANDS = ("a", "b")
CLASSES = ("rock", "water", "road")
SHAPE = (4, 4, 2)


# -- tiles made here ------------------------------------------------------------------


def _tile(i, label=-1, source="none", shape=SHAPE):
    """Tile ``s:0:{4 i}``; uint16 pixels above 255, so the byte order matters."""
    image = (np.arange(np.prod(shape), dtype=np.uint16).reshape(shape) * 7 + 300 * (i + 1)).astype(
        np.uint16
    )
    return Tile(
        scene_id="s",
        kind="frame",
        row_off=0,
        col_off=4 * i,
        image=image,
        valid=np.ones(shape[:2], bool),
        bands=BANDS[: shape[2]],
        label=label,
        label_name=CLASSES[label] if label >= 0 else "",
        label_source=source,
    )


def _write(path, records):
    with open(path, "wb") as f:
        for record in records:
            write_record(f, record)
    return str(path)


def _edit(tile, change):
    """The tile's record after ``change(example)``: a tile the tile job would not write."""
    example = tf.train.Example.FromString(encode_tiles([tile])[0])
    change(example.features.feature)
    return example.SerializeToString()


def _cut_raw(feature):
    raw = feature[IMAGE_RAW].bytes_list.value
    raw[0] = raw[0][:-1]


def _declare_three_bands(feature):
    shape = feature[IMAGE_SHAPE].int64_list.value
    del shape[:]
    shape.extend([4, 4, 3])


def _drop_raw(feature):
    del feature[IMAGE_RAW]


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """Three tiles (class 0, weak class 1, unlabelled), plain and packed, with a stats.json."""
    root = tmp_path_factory.mktemp("small_tiles")
    # Bands in another order than the records': the spec follows the records.
    stats = {
        "classes": list(CLASSES),
        "bands": {"b": {"mean": 7.0, "std": 0.0}, "a": {"mean": 100.0, "std": 5.0}},
    }
    (root / "stats.json").write_text(json.dumps(stats))
    tiles = [_tile(0, 0, "vector"), _tile(1, 1, "weak"), _tile(2)]
    records = encode_tiles(tiles)
    ids = [t.tile_id for t in tiles]
    # pack_example orders neighbours by weight, decreasing: t1 gets t0 first, then t2.
    neighbours = [
        [(0.75, ids[1], records[1])],
        [(0.25, ids[2], records[2]), (0.5, ids[0], records[0])],
        [],
    ]
    packed = [pack_example(r, n) for r, n in zip(records, neighbours, strict=True)]
    return SimpleNamespace(
        root=str(root),
        tiles=tiles,
        records=records,
        plain=_write(root / "plain.tfrecord", records),
        packed=_write(root / "packed.tfrecord", packed),
        config=DataConfig(tiles=str(root), batch_size=3),
    )


@pytest.fixture(scope="module")
def small_spec(small):
    return datalib.read_tile_spec(small.root, [small.plain])


def _plain(tile_data):
    files = sorted(glob.glob(os.path.join(tile_data, "tiles", "*.tfrecord")))
    return files, datalib.read_tile_spec(tile_data, files)


# -- resolve_files, read_tile_spec ----------------------------------------------------------


def test_resolve_files_picks_packed_then_plain_records_and_rejects_empty_globs(tile_data, tmp_path):
    cfg = tiny_config(tile_data).data
    packed = sorted(glob.glob(os.path.join(tile_data + "_graph", "packed", "*.tfrecord")))
    plain = sorted(glob.glob(os.path.join(tile_data, "tiles", "*.tfrecord")))
    assert packed and plain
    assert datalib.resolve_files(cfg) == (packed, [])
    no_graph = dataclasses.replace(cfg, graph="")
    assert datalib.resolve_files(no_graph) == (plain, [])
    held_out = dataclasses.replace(no_graph, validation=os.path.join(tile_data, "tiles", "*"))
    assert datalib.resolve_files(held_out) == (plain, plain)
    nothing = str(tmp_path / "none-*.tfrecord")
    with pytest.raises(ConfigError, match=r"data\.train: no TFRecord matches"):
        datalib.resolve_files(dataclasses.replace(no_graph, train=nothing))
    with pytest.raises(ConfigError, match=r"data\.validation: no TFRecord matches"):
        datalib.resolve_files(dataclasses.replace(no_graph, validation=nothing))
    with pytest.raises(ConfigError, match=r"data\.tiles: required"):
        datalib.resolve_files(DataConfig())


def test_read_tile_spec_matches_the_tile_jobs_records_and_stats(tile_data):
    _, spec = _plain(tile_data)
    stats = read_stats(tile_data)
    tile = next(iter(read_tiles(tile_data).values()))
    assert spec.shape == tile.image.shape == (16, 16, 5)
    assert spec.dtype == tile.image.dtype.name == "uint16"
    assert spec.bands == tile.bands == ("B02", "B03", "B04", "B08", "B11")
    assert spec.classes == tuple(stats["classes"]) and spec.num_classes == 5
    assert spec.mean == tuple(stats["bands"][b]["mean"] for b in spec.bands)
    assert spec.std == tuple(stats["bands"][b]["std"] for b in spec.bands)
    assert all(s > 0 for s in spec.std)


def test_read_tile_spec_orders_stats_by_the_records_bands_and_skips_empty_files(small, tmp_path):
    empty = _write(tmp_path / "empty.tfrecord", [])
    spec = datalib.read_tile_spec(small.root, [empty, small.plain])
    assert spec == datalib.TileSpec(4, 4, 2, "uint16", BANDS, CLASSES, (100.0, 7.0), (5.0, 1.0))
    with pytest.raises(InputError, match=r"stats\.json not found"):
        datalib.read_tile_spec(str(tmp_path), [small.plain])
    (tmp_path / "stats.json").write_text(json.dumps({"bands": {"a": {"mean": 1, "std": 1}}}))
    with pytest.raises(InputError, match=r"no statistics for band\(s\) \['b'\]"):
        datalib.read_tile_spec(str(tmp_path), [small.plain])
    with pytest.raises(InputError, match="no record in"):
        datalib.read_tile_spec(small.root, [empty])


# -- make_dataset -----------------------------------------------------------------------


def test_packed_training_batches_have_the_documented_shapes_and_weights(tile_data):
    cfg = tiny_config(tile_data).data
    files, _ = datalib.resolve_files(cfg)  # the graph job's packed records, k = 2
    spec = datalib.read_tile_spec(tile_data, files)
    cw = np.array([0.5, 2.0, 3.0, 4.0, 5.0], np.float32)
    pcw = np.array([1.0, 6.0, 7.0, 8.0, 9.0], np.float32)
    ds = datalib.make_dataset(
        files,
        spec,
        cfg,
        split=datalib.Split.TRAIN,
        training=True,
        class_weight=cw,
        max_neighbors=2,
        batch_size=8,
        pixel_labels=True,
        pixel_class_weight=pcw,
    )
    expected = {
        "image": ([8, 16, 16, 5], tf.float32),
        "label": ([8], tf.int32),
        "weight": ([8], tf.float32),
        "nbr_image": ([8, 2, 16, 16, 5], tf.float32),
        "nbr_weight": ([8, 2], tf.float32),
        "pixel_label": ([8, 16, 16], tf.int32),
        "pixel_weight": ([8, 16, 16], tf.float32),
    }
    # Static shapes (drop_remainder), as XLA needs them.
    assert {k: (s.shape.as_list(), s.dtype) for k, s in ds.element_spec.items()} == expected
    batches = list(ds.take(4).as_numpy_iterator())
    got = {k: np.concatenate([b[k] for b in batches]) for k in expected}
    assert got["image"].min() > 0  # synthetic reflectances: no zero pixel
    labels = got["label"]
    assert np.all((labels >= 0) & (labels < 5))  # every tile of tile_data is labelled
    np.testing.assert_array_equal(got["weight"], cw[labels])  # vector labels: not weak
    pixels = got["pixel_label"]
    assert np.all((pixels >= -1) & (pixels < 5))
    np.testing.assert_array_equal(
        got["pixel_weight"], np.where(pixels >= 0, pcw[np.maximum(pixels, 0)], 0.0)
    )
    # The graph job's edges reach the batch; each edge's neighbour has pixels.
    edges = got["nbr_weight"] > 0
    assert edges.any() and np.all(got["nbr_weight"] >= 0)
    assert np.all(got["nbr_image"][edges].reshape(edges.sum(), -1).max(axis=1) > 0)


def test_train_and_validation_split_the_labelled_tiles_by_location(tile_data):
    files, spec = _plain(tile_data)
    cfg = tiny_config(tile_data).data
    assert cfg.split_by is SplitKey.LOCATION and cfg.validation_fraction == 0.2
    ids, blocks = {}, {}
    for split in (datalib.Split.TRAIN, datalib.Split.VALIDATION, datalib.Split.ALL):
        *_, places = datalib.load_pixel_tiles(files, spec, cfg, split)
        ids[split] = {
            f"{s}:{r}:{c}"
            for s, r, c in zip(places.scene_ids, places.rows, places.cols, strict=True)
        }
        assert len(ids[split]) == len(places.scene_ids)  # no tile twice
        side = cfg.split_block * spec.height
        blocks[split] = {
            (r // side, c // side) for r, c in zip(places.rows, places.cols, strict=True)
        }
        # make_dataset sees the same labelled tiles as load_arrays and count_labels.
        images, _ = datalib.load_arrays(files, spec, cfg, split)
        ds = datalib.make_dataset(files, spec, cfg, split=split, training=False, batch_size=1)
        batches = list(ds.as_numpy_iterator())
        labelled = np.concatenate([b["image"] for b in batches if b["label"][0] >= 0])
        np.testing.assert_array_equal(labelled, images.astype(np.float32))
        assert len(labelled) == datalib.count_labels(files, spec, cfg, split)[:-1].sum()
    train, val, every = ids["train"], ids["validation"], ids["all"]
    assert train and val and not train & val
    assert train | val == every == set(read_tiles(tile_data))
    # A place seen on two dates is on one side only.
    assert not blocks["train"] & blocks["validation"]


def test_a_validation_glob_leaves_every_training_record_to_train(tile_data):
    files, spec = _plain(tile_data)
    cfg = tiny_config(tile_data).data
    with_glob = dataclasses.replace(cfg, validation=os.path.join(tile_data, "tiles", "*"))
    every = datalib.count_labels(files, spec, cfg, datalib.Split.ALL)
    held = datalib.count_labels(files, spec, cfg, datalib.Split.TRAIN)
    assert held.sum() < every.sum()  # without the glob a share is held out
    np.testing.assert_array_equal(
        datalib.count_labels(files, spec, with_glob, datalib.Split.TRAIN), every
    )


def test_plain_batches_decode_pixels_and_weigh_weak_and_unlabelled_tiles(small, small_spec):
    cw = np.array([2.0, 3.0, 4.0], np.float32)
    ds = datalib.make_dataset(
        [small.plain], small_spec, small.config, split="all", training=False, class_weight=cw
    )
    (batch,) = list(ds.as_numpy_iterator())
    assert set(batch) == {"image", "label", "weight"}  # no nbr_* keys without max_neighbors
    np.testing.assert_array_equal(batch["image"], np.stack([t.image for t in small.tiles]))
    np.testing.assert_array_equal(batch["label"], [0, 1, -1])
    # class weight x weak-label weight (0.5); 0 unlabelled
    np.testing.assert_array_equal(batch["weight"], [2.0, 1.5, 0.0])
    # The remainder is dropped: 3 tiles make one batch of 2.
    two = datalib.make_dataset(
        [small.plain], small_spec, small.config, split="all", training=False, batch_size=2
    )
    assert [b["label"].shape for b in two.as_numpy_iterator()] == [(2,)]


# -- neighbours ---------------------------------------------------------------------------


def test_packed_neighbours_fill_the_batch_and_missing_ones_are_zero(small, small_spec):
    ds = datalib.make_dataset(
        [small.packed], small_spec, small.config, split="all", training=False, max_neighbors=2
    )
    (batch,) = list(ds.as_numpy_iterator())
    t0, t1, t2 = (t.image.astype(np.float32) for t in small.tiles)
    zero = np.zeros(SHAPE, np.float32)
    np.testing.assert_array_equal(batch["image"], np.stack([t0, t1, t2]))
    np.testing.assert_array_equal(
        batch["nbr_image"], np.stack([[t1, zero], [t0, t2], [zero, zero]])
    )
    np.testing.assert_array_equal(batch["nbr_weight"], [[0.75, 0.0], [0.5, 0.25], [0.0, 0.0]])
    assert f"{datalib.NBR_PREFIX}0_{IMAGE_RAW}" == "NL_nbr_0_image/raw"  # what NSL packs
    # Plain records read with neighbours: no edge, zero pixels; the labels do not change.
    plain = datalib.make_dataset(
        [small.plain], small_spec, small.config, split="all", training=False, max_neighbors=2
    )
    (same,) = list(plain.as_numpy_iterator())
    assert not same["nbr_weight"].any() and not same["nbr_image"].any()
    np.testing.assert_array_equal(same["label"], batch["label"])
    np.testing.assert_array_equal(same["weight"], batch["weight"])


# -- class_weights --------------------------------------------------------------------------


def test_class_weights_by_hand_for_each_mode():
    counts = np.array([60, 30, 10, 0])  # n = 100 over 3 present classes
    balanced = [100 / 180, 100 / 90, 100 / 30]
    expected = {
        ClassWeighting.NONE: [1.0, 1.0, 1.0, 1.0],
        ClassWeighting.BALANCED: [*balanced, 10.0],  # the absent class gets the cap
        ClassWeighting.SQRT: [*np.sqrt(balanced)],  # the absent class: see below
    }
    for mode, weights in expected.items():
        got = datalib.class_weights(counts, mode, 10.0)
        assert got.dtype == np.float32 and got.shape == (4,)
        np.testing.assert_allclose(got[: len(weights)], weights, rtol=1e-6, err_msg=mode.value)
    # The cap binds: 1001 / (2 x 1) = 500.5 and its root 22.4 are both cut to 3.
    np.testing.assert_allclose(
        datalib.class_weights(np.array([1000, 1]), ClassWeighting.BALANCED, 3.0),
        [1001 / 2000, 3.0],
        rtol=1e-6,
    )
    np.testing.assert_allclose(
        datalib.class_weights(np.array([1000, 1]), ClassWeighting.SQRT, 3.0),
        [np.sqrt(1001 / 2000), 3.0],
        rtol=1e-6,
    )
    # No label at all: every class weighs 1.
    for mode in ClassWeighting:
        np.testing.assert_array_equal(datalib.class_weights(np.zeros(3), mode, 10.0), [1, 1, 1])


def test_a_class_absent_from_training_weighs_the_cap_or_its_root():
    counts = np.array([60, 40, 0])
    balanced = datalib.class_weights(counts, ClassWeighting.BALANCED, 10.0)
    root = datalib.class_weights(counts, ClassWeighting.SQRT, 10.0)
    np.testing.assert_allclose([balanced[2], root[2]], [10.0, np.sqrt(10.0)], rtol=1e-6)


# -- malformed records ------------------------------------------------------------------------

BAD = [
    pytest.param(
        lambda t: _edit(t, _cut_raw),
        "image/raw holds 63 bytes and image/shape [4, 4, 2] of uint16 needs 64: they do not match",
        id="truncated-raw",
    ),
    pytest.param(
        lambda t: _edit(t, _declare_three_bands),
        "image/raw holds 64 bytes and image/shape [4, 4, 3] of uint16 needs 96: they do not match",
        id="wrong-shape",
    ),
    pytest.param(lambda t: _edit(t, _drop_raw), "missing features ['image/raw']", id="missing-raw"),
    pytest.param(
        lambda t: encode_tiles([_tile(t.col_off // 4, shape=(2, 2, 2))])[0],
        "image/shape [2, 2, 2] and the first record's [4, 4, 2] do not match",
        id="other-tile-size",
    ),
]


@pytest.mark.parametrize(("make_bad", "problem"), BAD)
def test_a_bad_record_is_named_by_file_record_and_tile(
    small, small_spec, tmp_path, make_bad, problem
):
    bad = _write(tmp_path / "bad.tfrecord", [*small.records[:2], make_bad(small.tiles[2])])
    for count in (datalib.count_classes, datalib.count_labels, datalib.label_budget):
        with pytest.raises(InputError) as err:
            count([small.plain, bad], small_spec, small.config)
        message = str(err.value)
        assert message.startswith("1 training record(s) in 1 file(s) are not tiles"), count
        assert f"{bad} record 2 (tile/id 's:0:8'): {problem}" in message, count
        assert small.plain not in message


@pytest.mark.parametrize(("make_bad", "problem"), BAD[:3])
def test_read_tile_spec_names_a_bad_first_record(small, tmp_path, make_bad, problem):
    bad = _write(tmp_path / "bad.tfrecord", [make_bad(small.tiles[0]), small.records[1]])
    with pytest.raises(InputError) as err:
        datalib.read_tile_spec(small.root, [bad])
    assert str(err.value) == f"{bad} record 0 (tile/id 's:0:0'): {problem}"


def test_many_bad_records_are_counted_and_the_first_five_named(small, small_spec, tmp_path):
    bad = [_edit(_tile(i), _cut_raw) for i in range(7)]
    path = _write(tmp_path / "bad.tfrecord", [small.records[0], *bad])
    with pytest.raises(InputError) as err:
        datalib.count_classes([path], small_spec, small.config)
    message = str(err.value)
    assert message.startswith("7 training record(s) in 1 file(s)")
    named = re.findall(rf"{re.escape(path)} record (\d+) \(tile/id 's:0:(\d+)'\)", message)
    assert named == [(str(i + 1), str(4 * i)) for i in range(5)]
    assert message.endswith("... and 2 more")


def test_a_truncated_file_is_named(small, small_spec, tmp_path):
    whole = pathlib.Path(small.plain).read_bytes()
    cut = tmp_path / "cut.tfrecord"
    cut.write_bytes(whole[:-10])  # the last record loses its tail
    with pytest.raises(InputError, match=rf"^{re.escape(str(cut))}: corrupt or truncated"):
        datalib.count_classes([small.plain, str(cut)], small_spec, small.config)
    first = tmp_path / "first.tfrecord"
    first.write_bytes(whole[:40])  # inside the first record
    with pytest.raises(InputError, match=rf"^{re.escape(str(first))}: corrupt or truncated"):
        datalib.read_tile_spec(small.root, [str(first)])
    garbage = _write(tmp_path / "garbage.tfrecord", [b"\xff not an Example"])
    with pytest.raises(InputError, match=rf"^{re.escape(garbage)}: a record is not a tf.train"):
        datalib.count_classes([small.plain, garbage], small_spec, small.config)
