"""Neighbour packing on serialized bytes equals NSL's pack_nbrs merge."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.graph.packing import feature_entries, pack_example, select_neighbours


@pytest.fixture(scope="module")
def tf():
    from minewatch.compat import import_nsl

    import_nsl()
    import tensorflow as tf

    return tf


def example(tf, node_id, label, values):
    ex = tf.train.Example()
    f = ex.features.feature
    f["id"].bytes_list.value.append(node_id.encode())
    f["label"].int64_list.value.append(label)
    f["x"].float_list.value.extend(values)
    f["neg"].int64_list.value.extend([-1, -(2**40)])
    f["weight"].float_list.value.append(7.0)  # a neighbour feature named like NSL's weight
    return ex


def test_feature_entries_roundtrip(tf):
    ex = example(tf, "a", 1, [0.5, 1.5])
    entries = dict(feature_entries(ex.SerializeToString()))
    assert set(entries) == {"id", "label", "x", "neg", "weight"}
    assert tf.train.Feature.FromString(entries["neg"]).int64_list.value == [-1, -(2**40)]


@pytest.mark.parametrize("max_nbrs", [None, 2, 0])
def test_pack_example_equals_nsl(tf, max_nbrs):
    from minewatch.compat import import_nsl

    import_nsl()
    import importlib

    pack_nbrs = importlib.import_module("neural_structured_learning.tools.pack_nbrs")

    seeds = {"s": example(tf, "s", 1, [1.0])}
    nbr_exs = {n: example(tf, n, -1, list(np.arange(3.0) + i)) for i, n in enumerate("abcd")}
    # 'd' and 'b' tie on weight: NSL prefers the larger id.
    graph = {"s": {"a": 0.25, "b": 0.75, "d": 0.75, "c": 0.5, "missing": 1.0}}
    (expected,) = pack_nbrs._join_examples(seeds, nbr_exs, graph, max_nbrs)
    nbrs = [(w, n, nbr_exs[n].SerializeToString()) for n, w in graph["s"].items() if n in nbr_exs]
    got = tf.train.Example.FromString(pack_example(seeds["s"].SerializeToString(), nbrs, max_nbrs))
    assert got == expected
    if max_nbrs != 0:
        assert got.features.feature["NL_nbr_0_id"].bytes_list.value == [b"d"]


def test_select_neighbours_order():
    got = select_neighbours([(0.5, "a", b""), (0.9, "b", b""), (0.9, "c", b"")], 2)
    assert [n for _, n, _ in got] == ["c", "b"]


def test_bad_bytes_raise():
    with pytest.raises(ValueError, match="truncated"):
        feature_entries(b"\x0a\x10abc")


def _record(node_id, label, x):
    import struct

    from pipelines.graph.packing import _ld, example_bytes

    return example_bytes(
        [
            ("tile/id", _ld(1, _ld(1, node_id.encode()))),
            ("label/class", _ld(3, _ld(1, bytes([label])))),
            ("x", _ld(2, _ld(1, struct.pack("<f", x)))),
        ]
    )


def test_pack_seeds_chooses_among_existing_targets_before_moving_records(tmp_path):
    """Plans hold ids, labels, sizes and places only; a target without an Example is
    dropped before the choice (as pack_nbrs does), so the next best is packed; the
    writer reads the records from the tile file at their places."""
    import apache_beam as beam

    from minewatch.tfrecord import read_records, write_record
    from pipelines.graph.pack import WritePackedShards, pack_seeds

    records = {"s": (1, _record("s", 1, 0.0)), "u": (-1, _record("u", 0, 9.0))}
    records.update((n, (0, _record(n, 0, float(i)))) for i, n in enumerate("abcd"))
    tiles = str(tmp_path / "tiles.tfrecord")
    examples, offset = [], 0
    with open(tiles, "wb") as f:
        for node_id, (label, record) in records.items():
            write_record(f, record)
            examples.append((node_id, (label, record, (tiles, offset))))
            offset += 16 + len(record)
    adjacency = [
        ("s", [("a", 0.25, "similarity"), ("b", 0.75, "spatial"), ("d", 0.75, "similarity"),
               ("c", 0.5, "temporal"), ("missing", 1.0, "similarity")]),
        ("u", [("s", 0.9, "similarity")]),  # an unlabelled tile is never a seed
        ("a", [("missing", 0.9, "similarity")]),
    ]  # fmt: skip
    nbrs = [(w, n, records[n][1]) for n, w, _ in adjacency[0][1] if n in records]
    expected = [pack_example(records["s"][1], nbrs, 2)]
    expected += [pack_example(records[n][1], []) for n in "abcd"]
    temp = tmp_path / "tmp"
    with beam.Pipeline() as p:
        plans = pack_seeds(
            p | "Examples" >> beam.Create(examples),
            p | "Adjacency" >> beam.Create(adjacency),
            2,
            None,
        )
        _ = plans | WritePackedShards(str(temp), records_per_shard=100)
    (path,) = temp.glob("packed/*/packed-00000-of-00001.tfrecord")
    with open(path, "rb") as f:
        got = list(read_records(f))
    assert sorted(got) == sorted(expected) and len(got) == 5
    assert got[-1] == expected[0]  # sorted by tile id: a, b, c, d, s


def test_packed_size_is_the_packed_length():
    from pipelines.graph.packing import packed_size

    seed = _record("s", 1, 0.0)
    nbrs = [_record(n * (i + 1), 0, float(i)) for i, n in enumerate("abcdefghijkl")]
    for k in range(len(nbrs) + 1):
        chosen = [(1.0 - i / 100, str(i), r) for i, r in enumerate(nbrs[:k])]
        sizes = [[(n, len(v)) for n, v in feature_entries(r)] for _, _, r in chosen]
        assert packed_size(len(seed), sizes) == len(pack_example(seed, chosen))
