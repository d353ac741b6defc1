"""Equal similarities resolve the same way whatever order a cell's vectors arrive in."""

from __future__ import annotations

import numpy as np

from pipelines.graph.edges import CompareInCell, VectorBatch
from pipelines.graph.neighbours import Candidates, node_keys, normalize


def edges(parts):
    fn = CompareInCell(k=3, threshold=-1.0, leaf_size=100, seed=0, shard_nodes=1000)
    cands = Candidates.concat([c for _, c in fn.process(((4, 0, 0), parts), {4: 40})])
    return sorted(zip(cands.src_ids, cands.dst_ids, cands.sims.tolist(), strict=True))


def test_a_cell_of_identical_vectors_gives_the_same_edges_in_any_order():
    # 30 identical vectors (every pair ties at 1.0) and 10 others
    rng = np.random.default_rng(0)
    vectors = np.vstack([np.ones((30, 4)), rng.standard_normal((10, 4))]).astype(np.float32)
    unit, _ = normalize(vectors)
    ids = np.array([f"t{i}" for i in range(40)], object)
    keys = node_keys(list(ids))
    reference = edges([VectorBatch(ids, keys, unit)])
    assert len(reference) == 3 * 40
    for seed in range(5):
        order = np.random.default_rng(seed).permutation(40)
        halves = np.array_split(order, 2)
        parts = [VectorBatch(ids[h], keys[h], unit[h]) for h in reversed(halves)]
        assert edges(parts) == reference
