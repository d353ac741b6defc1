"""Nearest neighbours by cosine similarity: partition trees, exact top-k, top-k merge.

Pure numpy, no Beam: :mod:`pipelines.graph.job` calls these inside its
DoFns, the tests check them against brute force, and ``bench/graph.py`` times them.

The similarity graph keeps, for every node, its ``k`` most similar other nodes
whose cosine similarity is at least ``threshold``. Candidates come from leaf
cells of a :class:`PartitionTree` (:func:`build_tree`, :func:`assign_leaves`):
2-means cuts fitted to a sample, so that cells follow the data's own clusters
rather than cutting through them, as random hyperplanes (LSH) do. A vector near
a cut also goes to the other side (spill), within a margin set by how far the
sample's near-neighbour pairs lie across that cut (:func:`sample_pairs`), so that
crowded data (tile descriptors) spills more than clustered data. Within a cell the
similarities are exact (:func:`topk_within`, blocked matrix products). The
random-hyperplane helpers (:func:`hyperplanes`, :func:`bucket_codes`,
:func:`split_bucket`) cut cells that turn out much bigger than the sample predicted.

Why trees and not LSH rounds: on 1,000,000 clustered 64-d vectors (64 clusters)
a node's 10th neighbour is at cosine ~0.95 while its cluster-mates are at
~0.92, so random hyperplanes separate neighbours almost as often as strangers:
recall 0.99 took 13 to 30 LSH rounds (each a full copy of the vectors through
the shuffle, 256 MB a round) and 35,000 to 65,000 comparisons per node; one
tree with 16,384-vector cells took 1.4 copies and ~30,000 comparisons.

Ties: among equally similar candidates the one with the larger 64-bit key
(:func:`node_keys`) is kept, so merging does not depend on arrival order.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "Candidates",
    "PartitionTree",
    "assign_leaves",
    "bucket_codes",
    "build_tree",
    "choose_bits",
    "exact_topk",
    "hyperplanes",
    "iter_groups",
    "merge_topk",
    "node_keys",
    "normalize",
    "sample_pairs",
    "split_bucket",
    "topk_within",
]

#: Most hyperplanes drawn per round: the bits of a bucket key plus those used to
#: split oversized buckets.
MAX_BITS = 48


@dataclass
class Candidates:
    """Directed candidate edges ``src -> dst`` with their cosine similarity.

    Attributes:
        src_keys: int64 ``[M]`` keys of the sources (:func:`node_keys`).
        src_ids: object ``[M]`` source ids.
        dst_keys: int64 ``[M]`` keys of the targets.
        dst_ids: object ``[M]`` target ids.
        sims: float32 ``[M]`` cosine similarities.
    """

    src_keys: np.ndarray
    src_ids: np.ndarray
    dst_keys: np.ndarray
    dst_ids: np.ndarray
    sims: np.ndarray

    def __len__(self) -> int:
        return int(self.sims.shape[0])

    @classmethod
    def empty(cls) -> Candidates:
        """No edge."""
        i64, obj = np.zeros(0, np.int64), np.zeros(0, object)
        return cls(i64, obj, i64.copy(), obj.copy(), np.zeros(0, np.float32))

    @classmethod
    def concat(cls, parts: Sequence[Candidates]) -> Candidates:
        """Concatenate candidate sets."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(
            np.concatenate([p.src_keys for p in parts]),
            np.concatenate([p.src_ids for p in parts]),
            np.concatenate([p.dst_keys for p in parts]),
            np.concatenate([p.dst_ids for p in parts]),
            np.concatenate([p.sims for p in parts]),
        )

    def take(self, index: np.ndarray) -> Candidates:
        """The candidates at ``index`` (an integer or boolean array)."""
        return Candidates(
            self.src_keys[index],
            self.src_ids[index],
            self.dst_keys[index],
            self.dst_ids[index],
            self.sims[index],
        )


def node_keys(ids: Sequence[str]) -> np.ndarray:
    """Stable 64-bit keys of node ids (BLAKE2b), used to sort, dedupe and shard.

    Two ids collide with probability about ``N**2 / 2**65`` (3e-8 for a million
    nodes); a collision would merge their neighbour lists.

    Args:
        ids: Node ids.

    Returns:
        int64 ``[len(ids)]``.
    """
    out = np.empty(len(ids), np.int64)
    for i, s in enumerate(ids):
        out[i] = int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") - (
            1 << 63
        )
    return out


def normalize(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalise rows; return ``(unit float32 rows, norms)``.

    Rows whose norm is zero or not finite are returned unchanged; callers check
    ``norms`` (``> 0`` and finite) and dead-letter them.
    """
    x = np.asarray(vectors, np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", x.astype(np.float64), x.astype(np.float64)))
    good = np.isfinite(norms) & (norms > 0)
    out = x.copy()
    out[good] /= norms[good, None].astype(np.float32)
    return out, norms


def hyperplanes(dim: int, rounds: int, seed: int = 0, bits: int = MAX_BITS) -> np.ndarray:
    """Random hyperplane normals, ``[rounds, bits, dim]`` float32, Gaussian.

    Deterministic in ``(seed, dim)``, so every worker draws the same planes
    without them being shipped.
    """
    rng = np.random.default_rng([seed, dim, rounds, bits])
    return rng.standard_normal((rounds, bits, dim)).astype(np.float32)


def bucket_codes(vectors: np.ndarray, planes: np.ndarray) -> np.ndarray:
    """Sign pattern of ``vectors`` against ``planes`` as integer codes.

    Args:
        vectors: ``[N, D]``.
        planes: ``[B, D]`` hyperplane normals, ``B <= 62``.

    Returns:
        int64 ``[N]``; bit ``i`` is set where the projection on plane ``i`` is > 0.
    """
    if planes.shape[0] == 0:
        return np.zeros(vectors.shape[0], np.int64)
    signs = (vectors @ planes.T) > 0
    weights = np.left_shift(np.int64(1), np.arange(planes.shape[0], dtype=np.int64))
    return signs.astype(np.int64) @ weights


def choose_bits(n: int, bucket_size: int) -> int:
    """Bits of a bucket key so that buckets hold about ``bucket_size`` vectors.

    ``ceil(log2(n / bucket_size))``, at least 0 (one bucket: exact all-pairs).
    """
    if n <= bucket_size:
        return 0
    return min(MAX_BITS // 2, math.ceil(math.log2(n / bucket_size)))


def split_bucket(vectors: np.ndarray, extra_planes: np.ndarray, cap: int) -> list[np.ndarray]:
    """Split an oversized bucket into parts of at most ``cap`` rows.

    Sub-hashes with one more hyperplane at a time (from ``extra_planes``) the parts
    that are still too big; a part that no plane splits (identical or nearly
    identical vectors) is cut into consecutive chunks of ``cap`` rows: any
    neighbours among identical vectors are equally good.

    Args:
        vectors: ``[N, D]`` unit rows.
        extra_planes: ``[B, D]`` hyperplanes not used by the bucket key.
        cap: Most rows per part.

    Returns:
        Row indices of each part; together a partition of ``range(N)``.
    """
    parts: list[np.ndarray] = []
    todo: list[tuple[np.ndarray, int]] = [(np.arange(vectors.shape[0]), 0)]
    while todo:
        index, depth = todo.pop()
        if index.size <= cap:
            parts.append(index)
            continue
        if depth >= extra_planes.shape[0]:
            parts.extend(np.array_split(index, math.ceil(index.size / cap)))
            continue
        side = (vectors[index] @ extra_planes[depth]) > 0
        left, right = index[~side], index[side]
        if left.size == 0 or right.size == 0:
            todo.append((index, depth + 1))
        else:
            todo.append((left, depth + 1))
            todo.append((right, depth + 1))
    return parts


def topk_within(
    vectors: np.ndarray, k: int, threshold: float, block: int = 1024
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` most similar other rows with similarity >= ``threshold``.

    Exact, by blocked matrix products (``block`` rows at a time). A full sort or
    ``argpartition`` of every ``[block, N]`` similarity row costs several times
    the matrix product, so each row first gets a cheap lower bound of its
    ``k``-th best similarity: the columns are cut into ``g`` interleaved groups,
    and the ``k``-th largest of the group maxima is an actual similarity with at
    least ``k`` values at or above it. Only the entries at or above
    ``max(bound, threshold)`` (about ``k`` to ``2k`` per row) are extracted and
    sorted. Among equal similarities at the ``k``-th place an arbitrary one is
    kept; :func:`exact_topk` asks for one more to break such ties by key.

    Args:
        vectors: ``[N, D]`` unit rows.
        k: Most neighbours per row.
        threshold: Least cosine similarity of an edge.
        block: Rows per matrix product. Default 1024.

    Returns:
        ``(rows, cols, sims)``: the edges ``rows -> cols``, grouped by row and by
        decreasing similarity within a row.
    """
    x = np.ascontiguousarray(vectors, np.float32)
    n = x.shape[0]
    kk = min(k, n - 1)
    if kk <= 0:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0, np.float32)
    # Group maxima need groups of >= 2 columns to be cheaper than the row itself,
    # and >= 4k groups so that the bound is tight.
    groups = n // 32 if n >= 32 * 4 * kk else 0
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    for start in range(0, n, block):
        stop = min(n, start + block)
        b = stop - start
        s = x[start:stop] @ x.T  # [b, n]
        s[np.arange(b), np.arange(start, stop)] = -np.inf  # no self edge
        cut = np.full(b, threshold, np.float32)
        if groups:
            maxima = s[:, : groups * 32].reshape(b, 32, groups).max(axis=1)
            bound = np.partition(maxima, groups - kk, axis=1)[:, groups - kk]
            np.maximum(cut, bound, out=cut)
        flat = np.flatnonzero(s >= cut[:, None])
        r, c = np.divmod(flat, n)
        v = s.ravel()[flat]
        # Best first within each row, then the first kk of every row.
        order = np.lexsort((-v, r))
        r, c, v = r[order], c[order], v[order]
        first = np.searchsorted(r, r)
        keep = np.arange(r.size) - first < kk
        rows.append(r[keep] + start)
        cols.append(c[keep])
        sims.append(v[keep].astype(np.float32))
    return (
        np.concatenate(rows).astype(np.int64),
        np.concatenate(cols).astype(np.int64),
        np.concatenate(sims),
    )


@dataclass(frozen=True)
class PartitionTree:
    """A binary tree of 2-means splits that routes unit vectors to leaf cells.

    Internal node ``i`` sends a vector ``x`` to ``children[i, 1]`` when
    ``x @ normals[i] > offsets[i]`` (``x`` is nearer the second centroid), else to
    ``children[i, 0]``; a vector within ``margins[i]`` of that hyperplane goes to
    both (spill), so near neighbours on either side of a cut still meet in a leaf.
    A child ``c < 0`` is leaf ``-1 - c``. ``leaf_parts[j] > 1`` marks a leaf that
    no split could divide (identical or nearly identical vectors): its vectors are
    spread over that many parts by node key.

    Attributes:
        normals: float32 ``[I, D]`` unit normals of the internal nodes.
        offsets: float32 ``[I]``.
        margins: float32 ``[I]`` spill half-widths (distance units).
        children: int64 ``[I, 2]``.
        leaf_parts: int64 ``[L]``.
    """

    normals: np.ndarray
    offsets: np.ndarray
    margins: np.ndarray
    children: np.ndarray
    leaf_parts: np.ndarray

    @property
    def leaves(self) -> int:
        """Number of leaf cells."""
        return int(self.leaf_parts.size)


def _two_means(
    x: np.ndarray, rng: np.random.Generator, iterations: int
) -> tuple[np.ndarray, float, np.ndarray] | None:
    """Split rows in two by 2-means; return ``(unit normal, offset, distances)`` or None.

    Seeds are farthest-first from a random row, so well separated groups are found
    from the start; Lloyd iterations then move the cut to the gap between them.
    """
    a = x[rng.integers(x.shape[0])]
    c0 = x[np.argmin(x @ a)]
    c1 = x[np.argmin(x @ c0)]
    dist = np.zeros(0, np.float32)
    normal, offset = np.zeros(0, np.float32), 0.0
    for _ in range(iterations):
        w = c1 - c0
        norm = float(np.linalg.norm(w))
        if not norm > 1e-6:
            return None
        normal = (w / norm).astype(np.float32)
        # |x - c1| < |x - c0|  <=>  x @ (c1 - c0) > (|c1|^2 - |c0|^2) / 2
        offset = float((c1 @ c1 - c0 @ c0) / (2 * norm))
        dist = x @ normal - np.float32(offset)
        right = dist > 0
        if right.all() or not right.any():
            return None
        new0, new1 = x[~right].mean(axis=0), x[right].mean(axis=0)
        if np.allclose(new0, c0, atol=1e-6) and np.allclose(new1, c1, atol=1e-6):
            break
        c0, c1 = new0, new1
    return normal, offset, dist


#: Most sample rows whose near-neighbour pairs set the spill margins (one exact
#: top-k over them per tree: about 2 s for 32,768 rows of 33 dimensions).
PAIR_ROWS = 32768

#: A node with fewer sample pairs than this inherits its parent's margin.
MIN_PAIRS = 32


def sample_pairs(sample: np.ndarray, n: int, k: int, rows: int = PAIR_ROWS) -> np.ndarray:
    """Near-neighbour pairs of a sample, standing in for the ``k``-NN pairs of all ``n``.

    A uniform sample of ``S`` of the ``n`` vectors is ``S / n`` as dense, so each
    row's ``k x S / n`` nearest sample rows (at least 1) lie about as far as its
    ``k`` nearest of all ``n``. No threshold: pairs below it still say how far
    neighbours lie across a cut.

    Args:
        sample: ``[S, D]`` unit rows.
        n: Number of vectors the sample stands for.
        k: Neighbours per vector of the graph.
        rows: Only the first ``rows`` sample rows are paired. Default :data:`PAIR_ROWS`.

    Returns:
        int64 ``[P, 2]`` row pairs ``(i, j)`` into ``sample``.
    """
    x = np.asarray(sample, np.float32)[:rows]
    if x.ndim != 2 or x.shape[0] < 2:
        return np.zeros((0, 2), np.int64)
    kk = int(min(k, max(1, round(k * x.shape[0] / max(1, n)))))
    r, c, _ = topk_within(x, kk, -1.0)
    return np.stack([r, c], axis=1)


def build_tree(
    sample: np.ndarray,
    n: int,
    leaf_size: int,
    threshold: float,
    spill: float = 0.0,
    seed: int = 0,
    iterations: int = 10,
    max_depth: int = 40,
    k: int = 10,
    spill_pairs: float = 0.9,
    max_spill: float = 0.5,
) -> PartitionTree:
    """Fit a :class:`PartitionTree` to a sample so that leaves hold ~``leaf_size`` of ``n``.

    A node is split while its estimated size (sample rows times ``n / len(sample)``)
    is over ``leaf_size``. Its spill margin is set by how far near neighbours lie
    across the cut: the ``spill_pairs`` quantile, over the sample's near-neighbour
    pairs inside the node (:func:`sample_pairs`), of ``|(x - y) . normal|``. A pair
    whose gap along the normal is under the margin is never separated: whichever
    of the two lies nearer the cut goes to both sides. Data in clusters with
    cuts in the gaps gets thin margins; crowded data, where every cut runs through
    neighbourhoods, gets wide ones. The margin is then kept between the ``spill``
    and ``max_spill`` quantiles of the node's distances to the cut (fractions of
    its vectors that spill), and never more than half the distance of two unit
    vectors at cosine ``threshold``: a pair farther apart is never an edge.
    ``spill_pairs=0`` gives the fraction rule alone, which loses neighbours the
    pairs keep (``spill=0.1``: recall 0.972 on the demo's 16,384 whitened tile
    descriptors in 2048-vector cells, 0.999 with the pairs; ``docs/graph.md``).

    Args:
        sample: ``[S, D]`` unit rows (a uniform sample of the ``n`` vectors).
        n: Number of vectors the tree will route.
        leaf_size: Most vectors per leaf (estimated).
        threshold: Least cosine similarity of an edge.
        spill: Least fraction of each node's vectors that also go to the other
            side. Default 0.
        seed: Seed of the 2-means starts. Default 0.
        iterations: Most Lloyd iterations per split. Default 10.
        max_depth: Deeper nodes are not split further. Default 40.
        k: Neighbours per vector of the graph (for the sample's pairs). Default 10.
        spill_pairs: Quantile of the pairs' gaps the margin covers; 0 to spill by
            ``spill`` only. Default 0.9.
        max_spill: Most fraction of a node's vectors that spill. Default 0.5.

    Returns:
        The tree; a single leaf when ``n <= leaf_size``.
    """
    x = np.asarray(sample, np.float32)
    rng = np.random.default_rng([seed, x.shape[1] if x.ndim == 2 else 0])
    scale = n / max(1, x.shape[0])
    chord = math.sqrt(max(0.0, 2.0 * (1.0 - max(-1.0, min(1.0, threshold)))))
    normals: list[np.ndarray] = []
    offsets: list[float] = []
    margins: list[float] = []
    children: list[list[int]] = []
    parts: list[int] = []
    use_pairs = spill_pairs > 0 and x.ndim == 2 and n > leaf_size
    pairs = sample_pairs(x, n, k) if use_pairs else np.zeros((0, 2), np.int64)

    def leaf(size: float) -> int:
        parts.append(max(1, math.ceil(size / leaf_size)))
        return -len(parts)  # leaf j is stored as -1 - j

    def margin(
        dist: np.ndarray, normal: np.ndarray, node_pairs: np.ndarray, inherited: float
    ) -> float:
        near = np.abs(dist)
        if not use_pairs:
            return min(chord / 2, float(np.quantile(near, spill)))
        if node_pairs.shape[0] >= MIN_PAIRS:
            gaps = np.abs((x[node_pairs[:, 0]] - x[node_pairs[:, 1]]) @ normal)
            wanted = float(np.quantile(gaps, spill_pairs))
        else:
            wanted = inherited
        low, high = np.quantile(near, [spill, max_spill])
        return min(chord / 2, max(float(low), min(wanted, float(high))))

    def grow(index: np.ndarray, depth: int, node_pairs: np.ndarray, inherited: float) -> int:
        size = index.size * scale
        if size <= leaf_size or index.size < 2 or depth >= max_depth:
            return leaf(size)
        split = _two_means(x[index], rng, iterations)
        if split is None:
            return leaf(size)
        normal, offset, dist = split
        node = len(children)
        m = margin(dist, normal, node_pairs, inherited)
        normals.append(normal)
        offsets.append(offset)
        margins.append(m)
        children.append([0, 0])
        side = np.zeros(x.shape[0], np.int8)
        side[index] = np.where(dist > 0, 2, 1)
        for child, s in ((0, 1), (1, 2)):
            keep = (side[node_pairs[:, 0]] == s) & (side[node_pairs[:, 1]] == s)
            sub = index[dist > 0] if s == 2 else index[dist <= 0]
            children[node][child] = grow(sub, depth + 1, node_pairs[keep], m)
        return node

    root = np.arange(x.shape[0]) if x.ndim == 2 else np.zeros(0, np.int64)
    grow(root, 0, pairs, math.inf)
    dim = x.shape[1] if x.ndim == 2 else 0
    return PartitionTree(
        np.asarray(normals, np.float32).reshape(-1, dim),
        np.asarray(offsets, np.float32),
        np.asarray(margins, np.float32),
        np.asarray(children, np.int64).reshape(-1, 2),
        np.asarray(parts, np.int64),
    )


def assign_leaves(
    tree: PartitionTree, vectors: np.ndarray, keys: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Route rows through ``tree``, spilling near the cuts.

    Args:
        tree: The partition.
        vectors: ``[N, D]`` unit rows.
        keys: int64 ``[N]`` node keys (spread unsplittable leaves over parts).

    Returns:
        ``(rows, cells)``: row ``rows[i]`` belongs to cell ``cells[i]``, a cell
        being ``(leaf, part)`` numbered ``leaf * 2**20 + part``; every row is in
        at least one cell, and at most once per cell.
    """
    rows = np.arange(vectors.shape[0])
    nodes = np.zeros(rows.size, np.int64)
    if tree.children.shape[0] == 0:
        nodes = np.full(rows.size, -1, np.int64)
    # A spilled copy is a stranger in the other subtree: the cuts there were fitted
    # to other vectors, so letting it spill again would multiply copies for little
    # gain. Only the original row spills, at most once per level.
    copy = np.zeros(rows.size, bool)
    out_rows: list[np.ndarray] = []
    out_leaves: list[np.ndarray] = []
    while rows.size:
        internal = nodes >= 0
        done = ~internal
        out_rows.append(rows[done])
        out_leaves.append(-1 - nodes[done])
        rows, nodes, copy = rows[internal], nodes[internal], copy[internal]
        if not rows.size:
            break
        dist = np.einsum("ij,ij->i", vectors[rows], tree.normals[nodes]) - tree.offsets[nodes]
        side = (dist > 0).astype(np.int64)
        near = (np.abs(dist) <= tree.margins[nodes]) & ~copy
        rows = np.concatenate([rows, rows[near]])
        nodes = np.concatenate(
            [tree.children[nodes, side], tree.children[nodes[near], 1 - side[near]]]
        )
        copy = np.concatenate([copy, np.ones(int(near.sum()), bool)])
    r = np.concatenate(out_rows)
    leaves = np.concatenate(out_leaves)
    parts = tree.leaf_parts[leaves]
    part = np.where(parts > 1, np.mod(keys[r], parts), 0)
    return r, leaves * (1 << 20) + part


def merge_topk(cands: Candidates, k: int) -> Candidates:
    """Deduplicate ``(src, dst)`` pairs and keep each source's ``k`` best targets.

    A pair found in several LSH rounds is kept once (its similarities agree to
    float rounding). Ties are broken by the larger ``dst_key``. Sorting uses the
    int64 keys only; the id arrays are gathered once at the end.

    Args:
        cands: Candidate edges, in any order, possibly repeated.
        k: Most targets per source.

    Returns:
        At most ``k`` edges per source, grouped by source key, by decreasing
        similarity within a source.
    """
    if not len(cands):
        return cands
    src, dst, sims = cands.src_keys, cands.dst_keys, cands.sims
    # One int64 per pair (a mix of both keys) finds the repeats with a single sort.
    pair = src * np.int64(-7046029254386353131) + dst
    _, first = np.unique(pair, return_index=True)
    # Rank within each source by (-sim, -dst) and keep the first k.
    order = first[np.lexsort((-dst[first], -sims[first], src[first]))]
    s = src[order]
    starts = np.ones(order.size, bool)
    starts[1:] = s[1:] != s[:-1]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(order.size), 0))
    rank = np.arange(order.size) - group_start
    return cands.take(order[rank < k])


def exact_topk(
    ids: Sequence[str], vectors: np.ndarray, k: int, threshold: float, block: int = 2048
) -> Candidates:
    """Brute-force top-k graph over all pairs, blocked; the reference for tests and bench.

    Args:
        ids: Node ids, one per row.
        vectors: ``[N, D]`` (normalised here).
        k: Most neighbours per node.
        threshold: Least cosine similarity.
        block: Rows per matrix product.

    Returns:
        The edges, with the tie rule of :func:`merge_topk`.
    """
    unit, _ = normalize(vectors)
    id_arr = np.asarray(list(ids), object)
    keys = node_keys(list(ids))
    # One extra candidate per row so that ties at the k-th place resolve by key.
    rows, cols, sims = topk_within(unit, k + 1, threshold, block)
    return merge_topk(Candidates(keys[rows], id_arr[rows], keys[cols], id_arr[cols], sims), k)


def iter_groups(keys: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(key, row indices)`` for each distinct value of ``keys``."""
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    bounds = np.flatnonzero(np.diff(sorted_keys)) + 1
    for index in np.split(order, bounds):
        if index.size:
            yield int(keys[index[0]]), index
