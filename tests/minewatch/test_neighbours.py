"""LSH and top-k helpers against brute force."""

from __future__ import annotations

import numpy as np
import pytest

from minewatch.neighbours import (
    Candidates,
    bucket_codes,
    choose_bits,
    exact_topk,
    hyperplanes,
    merge_topk,
    node_keys,
    normalize,
    split_bucket,
    topk_within,
)


def brute(vectors, k, threshold):
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    s = unit @ unit.T
    np.fill_diagonal(s, -np.inf)
    out = {}
    for i, row in enumerate(s):
        order = np.argsort(-row, kind="stable")[:k]
        out[i] = {int(j): float(row[j]) for j in order if row[j] >= threshold}
    return out


def test_topk_within_matches_brute_force():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    unit, _ = normalize(x)
    rows, cols, sims = topk_within(unit, 7, 0.2, block=64)
    expected = brute(x.astype(np.float64), 7, 0.2)
    got: dict[int, dict[int, float]] = {}
    for r, c, s in zip(rows, cols, sims, strict=True):
        got.setdefault(int(r), {})[int(c)] = float(s)
    assert {i: set(v) for i, v in got.items()} == {i: set(v) for i, v in expected.items() if v}
    for i, nbrs in got.items():
        for j, s in nbrs.items():
            assert s == pytest.approx(expected[i][j], abs=1e-5)
    assert not np.any(rows == cols)


def test_topk_within_small_inputs():
    assert [a.size for a in topk_within(np.ones((1, 3), np.float32), 5, 0.0)] == [0, 0, 0]
    rows, _, _ = topk_within(normalize(np.eye(3, dtype=np.float32) + 1)[0], 5, -1.0)
    assert len(rows) == 6  # everyone is the others' neighbour


def test_merge_topk_dedupes_and_keeps_best():
    ids = np.array(["a", "b", "c", "d"], object)
    keys = node_keys(list(ids))
    src = np.array([0, 0, 0, 0, 1])
    dst = np.array([1, 1, 2, 3, 0])
    sims = np.array([0.9, 0.9, 0.8, 0.95, 0.9], np.float32)
    c = Candidates(keys[src], ids[src], keys[dst], ids[dst], sims)
    top = merge_topk(c, 2)
    pairs = sorted(zip(top.src_ids, top.dst_ids, top.sims.round(3), strict=True))
    assert pairs == [("a", "b", 0.9), ("a", "d", 0.95), ("b", "a", 0.9)]


def test_merge_topk_is_order_independent():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((60, 4))
    c = exact_topk([f"n{i}" for i in range(60)], x, 5, -1.0)
    perm = rng.permutation(len(c))
    again = merge_topk(Candidates.concat([c.take(perm), c.take(perm[:10])]), 5)
    assert sorted(zip(c.src_ids, c.dst_ids, strict=True)) == sorted(
        zip(again.src_ids, again.dst_ids, strict=True)
    )


def test_bucket_codes_are_sign_patterns():
    planes = hyperplanes(8, 2, seed=5)[0, :3]
    x = np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)
    codes = bucket_codes(x, planes)
    signs = (x @ planes.T) > 0
    assert np.array_equal(codes, signs[:, 0] + 2 * signs[:, 1] + 4 * signs[:, 2])
    assert np.array_equal(hyperplanes(8, 2, seed=5), hyperplanes(8, 2, seed=5))
    assert bucket_codes(x, planes[:0]).tolist() == [0] * 50


def test_choose_bits():
    assert choose_bits(100, 2048) == 0
    assert choose_bits(50_000, 2048) == 5
    assert choose_bits(1_000_000, 2048) == 9


def test_split_bucket_partitions_under_cap():
    rng = np.random.default_rng(2)
    x, _ = normalize(rng.standard_normal((1000, 8)))
    parts = split_bucket(x, hyperplanes(8, 1)[0], cap=100)
    assert all(p.size <= 100 for p in parts)
    assert sorted(np.concatenate(parts).tolist()) == list(range(1000))


def test_split_bucket_chunks_identical_vectors():
    x = np.ones((250, 4), np.float32) / 2
    parts = split_bucket(x, hyperplanes(4, 1)[0], cap=100)
    assert [p.size for p in parts] == [84, 83, 83]


def test_normalize_flags_zero_and_nan():
    unit, norms = normalize(np.array([[3, 4], [0, 0], [np.nan, 1]], np.float32))
    assert unit[0].tolist() == pytest.approx([0.6, 0.8])
    assert norms[1] == 0 and np.isnan(norms[2])


def test_node_keys_stable_and_distinct():
    keys = node_keys([f"s:{i}:0" for i in range(10_000)])
    assert len(set(keys.tolist())) == 10_000
    assert node_keys(["a"])[0] == node_keys(["a"])[0]
