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
