"""The tile record: our encoder, our TFRecord framing, and TensorFlow reading both."""

import io
from datetime import UTC, datetime

import numpy as np
import pytest

from minewatch.spec import FEATURES, Tile, decode_tiles, encode_tiles
from minewatch.tfrecord import read_records, write_record


def _tile(**kw):
    rng = np.random.default_rng(0)
    base = dict(
        scene_id="s",
        kind="scene",
        row_off=64,
        col_off=128,
        image=rng.integers(0, 10000, (8, 8, 3)).astype(np.uint16),
        valid=rng.random((8, 8)) > 0.2,
        bands=("B02", "B03", "B04"),
        crs="EPSG:32618",
        transform=(10.0, 0.0, 435730.123456, 0.0, -10.0, 4179460.987654),
        bounds=(1.0, 2.0, 3.0, 4.0),
        bounds_wgs84=(-75.1, 37.1, -75.0, 37.2),
        acquired=datetime(2024, 1, 15, 10, 30, tzinfo=UTC),
        label=2,
        label_name="water",
        label_source="weak",
        class_fractions=np.array([0.1, 0.2, 0.7, 0.0], np.float32),
        label_mask=rng.integers(0, 4, (8, 8)).astype(np.uint8),
    )
    base.update(kw)
    return Tile(**base)


def test_round_trip_keeps_every_field_exactly():
    tiles = [
        _tile(),
        _tile(
            kind="frame",
            crs="",
            label=-1,
            label_name="",
            label_mask=None,
            acquired=None,
            camera_id="belt1",
            image=np.ones((8, 8, 3), np.uint8),
        ),
    ]
    back = decode_tiles(encode_tiles(tiles))
    for a, b in zip(tiles, back, strict=True):
        assert b.tile_id == a.tile_id and b.transform == a.transform and b.bounds == a.bounds
        np.testing.assert_array_equal(b.image, a.image)
        assert b.image.dtype == a.image.dtype
        np.testing.assert_array_equal(b.valid, a.valid)
        assert (b.label, b.label_name, b.label_source, b.weak) == (
            a.label,
            a.label_name,
            a.label_source,
            a.weak,
        )
        assert b.acquired == a.acquired and b.camera_id == a.camera_id
        np.testing.assert_array_equal(b.class_fractions, a.class_fractions)
        if a.label_mask is None:
            assert b.label_mask is None
        else:
            np.testing.assert_array_equal(b.label_mask, a.label_mask)


def test_tfrecord_framing_checks_crcs():
    buf = io.BytesIO()
    for payload in (b"a", b"", b"x" * 1000):
        write_record(buf, payload)
    assert list(read_records(io.BytesIO(buf.getvalue()))) == [b"a", b"", b"x" * 1000]
    corrupt = bytearray(buf.getvalue())
    corrupt[-3] ^= 1
    with pytest.raises(ValueError, match="checksum"):
        list(read_records(io.BytesIO(bytes(corrupt))))
    with pytest.raises(ValueError, match="truncated"):
        list(read_records(io.BytesIO(buf.getvalue()[:-2])))


def test_tensorflow_reads_our_records(tmp_path):
    from minewatch.compat import use_legacy_keras

    use_legacy_keras()
    import tensorflow as tf

    tile = _tile()
    path = tmp_path / "t.tfrecord"
    with open(path, "wb") as f:
        for record in encode_tiles([tile, tile]):
            write_record(f, record)
    kinds = {"bytes": tf.string, "int64": tf.int64, "float": tf.float32}
    spec = {name: tf.io.VarLenFeature(kinds[kind]) for name, kind in FEATURES.items()}
    records = list(tf.data.TFRecordDataset(str(path)))  # TF checks the CRCs
    assert len(records) == 2
    parsed = tf.io.parse_single_example(records[0], spec)
    raw = tf.sparse.to_dense(parsed["image/raw"])[0]
    shape = tf.sparse.to_dense(parsed["image/shape"])
    image = tf.reshape(tf.io.decode_raw(raw, tf.uint16), shape).numpy()
    np.testing.assert_array_equal(image, tile.image)
    transform = tf.io.decode_raw(tf.sparse.to_dense(parsed["geo/transform"])[0], tf.float64)
    assert tuple(transform.numpy()) == tile.transform
    assert tf.sparse.to_dense(parsed["label/class"]).numpy().tolist() == [2]


def test_in_band_order_reorders_and_names_what_is_missing():
    tile = _tile()
    same, missing = tile.in_band_order(("B02", "B03", "B04"))
    assert same is tile.image and missing == []
    picked, missing = tile.in_band_order(("B04", "B02"))
    assert missing == [] and np.array_equal(picked, tile.image[..., [2, 0]])
    kept, missing = tile.in_band_order(("B04", "B08", "B11"))
    assert missing == ["B08", "B11"] and kept is tile.image
