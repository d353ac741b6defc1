"""Nearest neighbours by cosine similarity: LSH buckets, exact top-k, top-k merge.

Pure numpy, no Beam: :mod:`pipelines.similarity_graph` calls these inside its
DoFns, the tests check them against brute force, and ``bench/graph.py`` times them.

The similarity graph keeps, for every node, its ``k`` most similar other nodes
whose cosine similarity is at least ``threshold``. Candidates come from
random-hyperplane LSH (SimHash): each round draws ``bits`` random hyperplanes
and a vector's bucket is the sign pattern of its projections, so two vectors at
angle ``θ`` share a bucket with probability ``(1 - θ/π) ** bits``; over
``rounds`` independent rounds a pair is missed with probability
``(1 - (1 - θ/π) ** bits) ** rounds``. Within a bucket the similarities are
exact (a matrix product).

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
    "bucket_codes",
    "choose_bits",
    "exact_topk",
    "hyperplanes",
    "iter_groups",
    "merge_topk",
    "node_keys",
    "normalize",
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
    vectors: np.ndarray, k: int, threshold: float, block: int = 2048
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's ``k`` most similar other rows with similarity >= ``threshold``.

    Exact, by blocked matrix products (``block`` rows at a time). Rows with at
    most ``k`` similarities over the threshold take them all from the sparse
    mask; only rows with more pay for a partial sort.

    Args:
        vectors: ``[N, D]`` unit rows.
        k: Most neighbours per row.
        threshold: Least cosine similarity of an edge.
        block: Rows per matrix product.

    Returns:
        ``(rows, cols, sims)``: the edges ``rows -> cols``, in no particular order.
    """
    n = vectors.shape[0]
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    sims: list[np.ndarray] = []
    kk = min(k, n - 1)
    if kk <= 0:
        empty = np.zeros(0, np.int64)
        return empty, empty.copy(), np.zeros(0, np.float32)
    for start in range(0, n, block):
        stop = min(n, start + block)
        s = vectors[start:stop] @ vectors.T  # [b, n]
        local = np.arange(stop - start)
        s[local, local + start] = -np.inf  # no self edge
        mask = s >= threshold
        counts = np.count_nonzero(mask, axis=1)
        big = counts > kk
        r, c = np.nonzero(mask)
        few = ~big[r]
        r, c = r[few], c[few]
        rows.append(r + start)
        cols.append(c)
        sims.append(s[r, c].astype(np.float32))
        many = np.flatnonzero(big)
        if many.size:
            sub = s[many]
            top = np.argpartition(sub, n - kk, axis=1)[:, n - kk :]
            rows.append(np.repeat(many + start, kk))
            cols.append(top.ravel())
            sims.append(np.take_along_axis(sub, top, axis=1).ravel().astype(np.float32))
    return np.concatenate(rows), np.concatenate(cols).astype(np.int64), np.concatenate(sims)


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
