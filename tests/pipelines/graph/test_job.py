"""The Graph job on the DirectRunner: similarity against brute force, spatial and
temporal edges on real tile-job output, packing against NSL's pack_nbrs, and
NSL training on the packed examples."""

from __future__ import annotations

import glob
import importlib
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from affine import Affine
from apache_beam.ml.inference.base import PredictionResult
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import BeamAssertException, assert_that, equal_to
from click.testing import CliRunner

from minewatch.cli.graph import graph
from minewatch.embeddings import BandNorm, describe, fit_whitening
from minewatch.errors import ConfigError
from minewatch.spec import Tile, decode_tiles
from minewatch.tfrecord import read_records, write_record
from pipelines.graph import run as graph_run
from pipelines.graph.descriptors import CheckEmbedding, ParsedTile, WhitenVectors
from pipelines.graph.edges import CompareInCell, SimilarityEdges, TopKPerNode, VectorBatch
from pipelines.graph.neighbours import Candidates, exact_topk, merge_topk, node_keys, normalize
from pipelines.graph.packing import _int64_feature, example_bytes
from pipelines.tile import run as tile_job
from tests.factories import ORIGIN, box_geometry, feature, write_geojson, write_raster

K = 3


# -- SimilarityEdges on vectors given directly -------------------------------------


def edge_dict(tables):
    table = pa.concat_tables(tables) if tables else None
    if table is None or not table.num_rows:
        return {}
    rows = table.to_pylist()
    assert {r["kind"] for r in rows} == {"similarity"}
    return {(r["src"], r["dst"]): r["weight"] for r in rows}


def matches_exact(expected):
    def check(tables):
        got = edge_dict(tables)
        if set(got) != set(expected):
            raise BeamAssertException(f"edges differ: {set(got) ^ set(expected)}")
        for pair, w in expected.items():
            if abs(got[pair] - w) > 1e-5:
                raise BeamAssertException(f"{pair}: {got[pair]} != {w}")

    return check


def recall_at_least(expected, minimum):
    def check(tables):
        got = edge_dict(tables)
        recall = len(set(got) & set(expected)) / len(expected)
        if recall < minimum:
            raise BeamAssertException(f"recall {recall:.4f} < {minimum}")

    return check


def each_node_has(k, ids):
    def check(tables):
        got = edge_dict(tables)
        out = {}
        for (s, _), w in got.items():
            out.setdefault(s, []).append(w)
        if set(out) != set(ids) or any(len(v) != k for v in out.values()):
            raise BeamAssertException(f"degrees {sorted(len(v) for v in out.values())}")
        if not all(abs(w - 1) < 1e-5 for v in out.values() for w in v):
            raise BeamAssertException("identical vectors must have similarity 1")

    return check


def dead_reasons(expected):
    def check(rows):
        got = sorted((r["tile_id"], r["reason"]) for r in rows)
        if got != expected:
            raise BeamAssertException(f"{got} != {expected}")

    return check


def exact_dict(ids, vectors, k, threshold):
    c = exact_topk(ids, vectors, k, threshold)
    return {(s, d): float(w) for s, d, w in zip(c.src_ids, c.dst_ids, c.sims, strict=True)}


def clustered(n, dim, clusters, spread, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim))
    return [f"n{i}" for i in range(n)], x.astype(np.float32)


def test_small_input_is_exact():
    ids, x = clustered(200, 8, 5, 0.5, seed=0)
    expected = exact_dict(ids, x, 5, 0.3)
    with BeamTestPipeline() as p:
        out = p | beam.Create(list(zip(ids, x, strict=True))) | SimilarityEdges(5, 0.3)
        assert_that(out["edges"], matches_exact(expected))


def test_lsh_recall_on_clustered_data():
    ids, x = clustered(3000, 32, 40, 0.3, seed=1)
    expected = exact_dict(ids, x, 10, 0.9)
    assert len(expected) > 20_000
    with BeamTestPipeline() as p:
        # Cells of ~128 vectors (dozens of leaves per tree), 10 trees, merged per node.
        edges = (
            p
            | beam.Create(list(zip(ids, x, strict=True)))
            | SimilarityEdges(10, 0.9, trees=10, cell_size=128, batch_size=512)
        )["edges"]
        assert_that(edges, recall_at_least(expected, 0.99))


def test_one_tree_with_small_cells_keeps_recall():
    ids, x = clustered(2000, 16, 16, 0.3, seed=5)
    expected = exact_dict(ids, x, 8, 0.9)
    with BeamTestPipeline() as p:
        edges = (
            p
            | beam.Create(list(zip(ids, x, strict=True)))
            | SimilarityEdges(8, 0.9, trees=1, cell_size=256, batch_size=500)
        )["edges"]
        assert_that(edges, recall_at_least(expected, 0.99))


def test_batched_input_is_exact_and_dead_letters_bad_rows():
    ids, x = clustered(300, 8, 4, 0.5, seed=3)
    x[7] = 0
    x[150, 2] = np.inf
    good = [i for i in range(300) if i not in (7, 150)]
    expected = exact_dict([ids[i] for i in good], x[good], 4, 0.5)
    batches = [(ids[:128], x[:128]), (ids[128:], x[128:])]
    with BeamTestPipeline() as p:
        out = p | beam.Create(batches) | SimilarityEdges(4, 0.5, batched=True)
        assert_that(out["edges"], matches_exact(expected), label="edges")
        expected_dead = [
            ("n150", "vector is zero or not finite"),
            ("n7", "vector is zero or not finite"),
        ]
        assert_that(out["dead_letter"], dead_reasons(expected_dead), label="dead")


def test_oversized_cell_is_cut_under_the_cap():
    rng = np.random.default_rng(0)
    unit, _ = normalize(rng.standard_normal((200, 6)).astype(np.float32))
    ids = np.array([f"v{i}" for i in range(200)], object)
    keys = node_keys(list(ids))
    fn = CompareInCell(k=3, threshold=-1.0, leaf_size=10, seed=0, shard_nodes=50)
    parts = [
        VectorBatch(ids[:120], keys[:120], unit[:120]),
        VectorBatch(ids[120:], keys[120:], unit[120:]),
    ]
    out = list(fn.process(((6, 0, 0), parts), {6: 200}))
    shards = {shard for shard, _ in out}
    assert shards <= set(range(4)) and len(shards) > 1
    cands = Candidates.concat([c for _, c in out])
    for shard, c in out:
        assert np.all(np.mod(c.src_keys, 4) == shard)
    # Every row still gets 3 neighbours, from its own part of at most 4 x 10 rows.
    assert np.bincount(np.searchsorted(np.sort(keys), cands.src_keys)).tolist() == [3] * 200
    pos = {k: i for i, k in enumerate(keys.tolist())}
    src = np.array([pos[k] for k in cands.src_keys.tolist()])
    dst = np.array([pos[k] for k in cands.dst_keys.tolist()])
    assert np.allclose(cands.sims, np.einsum("ij,ij->i", unit[src], unit[dst]), atol=1e-6)
    assert len(merge_topk(cands, 3)) == 600  # no pair is emitted twice


def test_topk_merge_of_shards_is_order_independent_with_ties():
    ids = np.array(["s", "t", "a", "b", "c"], object)
    keys = node_keys(list(ids))
    src = np.array([0, 0, 0, 1, 1])
    dst = np.array([2, 3, 4, 2, 3])
    sims = np.array([0.7, 0.7, 0.7, 0.9, 0.8], np.float32)
    cands = Candidates(keys[src], ids[src], keys[dst], ids[dst], sims)
    combine = TopKPerNode(2)
    results = set()
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0], [2, 0, 4, 1, 3]):
        accs = []
        for i in order:  # one accumulator per candidate, merged as shards would be
            acc = combine.add_input(combine.create_accumulator(), cands.take(np.array([i])))
            accs.append(acc)
        out = combine.extract_output(combine.merge_accumulators(accs))
        results.add(tuple(sorted(zip(out.src_ids, out.dst_ids, strict=True))))
    assert len(results) == 1
    (edges,) = results
    best_two = sorted(["a", "b", "c"], key=lambda n: keys[list(ids).index(n)])[-2:]
    assert edges == tuple(sorted([("s", n) for n in best_two] + [("t", "a"), ("t", "b")]))


def test_one_vector_has_no_edge():
    with BeamTestPipeline() as p:
        out = p | beam.Create([("only", np.ones(4, np.float32))]) | SimilarityEdges(5, 0.0)
        assert_that(out["edges"], matches_exact({}))


def test_identical_vectors_split_and_each_gets_k():
    ids = [f"same{i}" for i in range(100)]
    with BeamTestPipeline() as p:
        pairs = p | beam.Create([(i, np.full(6, 0.5, np.float32)) for i in ids])
        out = pairs | SimilarityEdges(4, 0.9, cell_size=16)
        assert_that(out["edges"], each_node_has(4, ids))


def test_zero_and_nan_vectors_are_dead_lettered():
    good = [("a", np.array([1, 0, 0], np.float32)), ("b", np.array([0.9, 0.1, 0], np.float32))]
    bad = [("zero", np.zeros(3, np.float32)), ("nan", np.array([np.nan, 1, 0], np.float32))]
    with BeamTestPipeline() as p:
        out = p | beam.Create(good + bad) | SimilarityEdges(5, 0.5)
        assert_that(
            out["edges"],
            matches_exact(exact_dict(["a", "b"], np.stack([v for _, v in good]), 5, 0.5)),
            label="edges",
        )
        expected_dead = [
            ("nan", "vector is zero or not finite"),
            ("zero", "vector is zero or not finite"),
        ]
        assert_that(out["dead_letter"], dead_reasons(expected_dead), label="dead")


def whitened_as_expected(expected):
    def check(pairs):
        got = dict(pairs)
        if set(got) != set(expected):
            raise BeamAssertException(f"ids differ: {set(got) ^ set(expected)}")
        for i, v in expected.items():
            if got[i].dtype != np.float32 or not np.array_equal(got[i], v):
                raise BeamAssertException(f"{i}: {got[i]} != {v}")

    return check


def test_whiten_vectors_per_dimension():
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((300, 4)) * [5, 1, 0.1, 1] + [9, 0, 1, -2]).astype(np.float32)
    ids = [f"w{i}" for i in range(300)]
    # The whitening is fitted to the vectors in key order: the same array, bit for bit,
    # whatever order the runner merged the sample's parts in.
    whitening = fit_whitening(x[np.argsort(node_keys(ids), kind="stable")])
    expected = {i: whitening.apply(v) for i, v in zip(ids, x, strict=True)}
    expected["alone"] = np.array([1, 2, 3], np.float32)  # one 3-d vector: nothing to fit
    pairs = [*zip(ids, x, strict=True), ("alone", np.array([1, 2, 3], np.float32))]
    with BeamTestPipeline() as p:
        out = p | beam.Create(pairs) | WhitenVectors()
        assert_that(out["vectors"], whitened_as_expected(expected), label="vectors")
        fitted = out["whitening"] | beam.MapTuple(lambda d, w: (d, None if w is None else w.rows))
        assert_that(fitted, equal_to([(3, None), (4, 300)]), label="fitted")


@pytest.mark.parametrize(
    ("vec", "valid", "reason"),
    [
        ([np.nan, 1.0], True, "not finite"),
        ([0.0, 0.0], True, "all zeros"),
        ([np.nan, np.nan], False, "no valid pixel"),
    ],
)
def test_check_embedding_dead_letters(vec, valid, reason):
    tile = Tile(
        "s", "scene", 0, 0, np.zeros((2, 2, 1), np.uint16), np.full((2, 2), valid), ("B02",)
    )
    result = PredictionResult(ParsedTile(tile, b"", "f.tfrecord"), np.array(vec, np.float32))
    (out,) = CheckEmbedding(2).process(("s:0:0", result))
    assert out.tag == "dead" and reason in out.value["reason"]
    assert out.value["tile_id"] == "s:0:0" and out.value["stage"] == "embed"


# -- the job on tile-job output ----------------------------------------------------


def _scene(path, seed, transform=ORIGIN):
    rng = np.random.default_rng(seed)
    data = rng.integers(500, 3000, (4, 48, 64)).astype(np.uint16)
    data[:, :, :32] //= 3  # two kinds of ground, so similarity means something
    return write_raster(path, data, transform=transform, descriptions=["B02", "B03", "B04", "B08"])


@pytest.fixture(scope="module")
def tiles_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("graph")
    scenes = root / "scenes"
    scenes.mkdir()
    _scene(scenes / "a_2024-01-01.tif", 0)
    _scene(scenes / "a_2024-02-01.tif", 1)
    # Another footprint (shifted by 5 pixels): no temporal edge with scene a.
    _scene(scenes / "b_2024-01-01.tif", 2, Affine(10, 0, ORIGIN.c + 50, 0, -10, ORIGIN.f))
    left, top = ORIGIN.c, ORIGIN.f
    labels = write_geojson(
        root / "labels.geojson",
        [feature(box_geometry(left, top - 480, left + 300, top), **{"class": "pile"})],
        crs="EPSG:32633",
    )
    out = root / "tiles"
    tile_job(
        [str(scenes), "--out", str(out), "--tile-size", "16", "--labels", labels, "--sparse-labels"]
    )
    # A file that breaks: a record that is an Example but not a tile, one that is no
    # proto at all, then a truncated record.
    with open(out / "tiles" / "zz-bad.tfrecord", "wb") as f:
        write_record(f, example_bytes([("foo", _int64_feature(1))]))
        write_record(f, b"\xff\xff garbage")
        f.write(b"\x40\x00\x00")
    return out


@pytest.fixture(scope="module", params=[False, True], ids=["directed", "undirected"])
def graph_job(request, tiles_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "graph"
    # Every neighbour feature, as NSL's pack_nbrs copies them (the default is lean).
    args = [str(tiles_dir), "--out", str(out), "--k", str(K), "--threshold", "0.5"]
    args += ["--pack-k", str(K), "--nbr-features", "all"]
    if request.param:
        args.append("--undirected")
    stats = graph_run(args)
    return out, stats, request.param


def edges_of(out, kind):
    rows = pq.read_table(os.path.join(out, "edges")).to_pylist()
    return {(r["src"], r["dst"]): r["weight"] for r in rows if r["kind"] == kind}


def good_tiles(tiles_dir):
    """The tile job's tiles (not the deliberately broken file)."""
    tiles = {}
    for path in sorted(glob.glob(os.path.join(tiles_dir, "tiles", "tiles-*.tfrecord"))):
        with open(path, "rb") as f:
            tiles.update({t.tile_id: t for t in decode_tiles(list(read_records(f)))})
    return tiles


def test_accounting_and_dead_letters(graph_job, tiles_dir):
    out, stats, _ = graph_job
    n = len(good_tiles(tiles_dir))
    assert n == 36
    tiles = stats["tiles"]
    assert tiles["read"] == n + 2
    assert tiles["read"] == tiles["embedded"] + sum(tiles["dead_lettered"].values())
    assert tiles["dead_lettered"] == {"parse": 2}
    assert stats["files_corrupt"] == 1
    dead = pq.read_table(os.path.join(out, "dead_letter")).to_pylist()
    reasons = sorted((d["stage"], d["reason"].split(":")[0]) for d in dead)
    assert reasons == [
        ("parse", "not a tile record"),
        ("parse", "not a tile record"),
        ("read", "unreadable TFRecord"),
    ]
    assert all(d["input"].endswith("zz-bad.tfrecord") for d in dead)
    assert stats["edges"]["total"] == sum(
        len(edges_of(out, k)) for k in ("similarity", "spatial", "temporal")
    )


def whitened_descriptors(tiles, norm):
    """Ids and built-in descriptors, whitened as the job does (fitted to all, by key order)."""
    ids = sorted(tiles)
    x = np.stack([describe(tiles[i].image, tiles[i].valid, tiles[i].bands, norm) for i in ids])
    whitening = fit_whitening(x[np.argsort(node_keys(ids), kind="stable")].astype(np.float32))
    return ids, x, whitening.apply(x)


def test_similarity_edges_equal_brute_force(graph_job, tiles_dir):
    out, stats, _ = graph_job
    tiles = good_tiles(tiles_dir)
    with open(os.path.join(tiles_dir, "stats.json")) as f:
        norm = BandNorm.from_json(f.read())
    ids, x, white = whitened_descriptors(tiles, norm)
    assert stats["embedding"]["whiten"] is True
    assert stats["embedding"]["whitening"] == {
        str(x.shape[1]): {"sample": 36, "shrinkage": round(x.shape[1] / 36, 6)}
    }
    expected = exact_dict(ids, white, K, 0.5)
    got = edges_of(out, "similarity")
    assert set(got) == set(expected)
    assert all(abs(got[p] - w) < 1e-5 for p, w in expected.items())


def test_spatial_edges(graph_job, tiles_dir):
    out, _, _ = graph_job
    tiles = good_tiles(tiles_dir)
    expected = set()
    for a in tiles.values():
        for b in tiles.values():
            if a is b or a.scene_id != b.scene_id:
                continue
            if abs(a.row_off - b.row_off) <= 16 and abs(a.col_off - b.col_off) <= 16:
                expected.add((a.tile_id, b.tile_id))
    got = edges_of(out, "spatial")
    assert set(got) == expected and set(got.values()) == {0.5}
    assert len(expected) == 3 * 2 * 29  # 3 scenes of 3 x 4 tiles, 8-neighbourhood


def test_temporal_edges(graph_job, tiles_dir):
    out, _, _ = graph_job
    got = edges_of(out, "temporal")
    tiles = good_tiles(tiles_dir)
    expected = set()
    for t in tiles.values():
        if t.scene_id.startswith("a_2024-01"):
            other = t.tile_id.replace("a_2024-01-01", "a_2024-02-01")
            assert other in tiles
            expected |= {(t.tile_id, other), (other, t.tile_id)}
    assert set(got) == expected and len(expected) == 24


def test_graph_tsv_is_the_deduplicated_edges(graph_job):
    out, stats, _ = graph_job
    with open(os.path.join(out, "graph.tsv")) as f:
        lines = [line.rstrip("\n").split("\t") for line in f]
    graph_edges = {(s, d): float(w) for s, d, w in lines}
    assert len(lines) == len(graph_edges) == stats["graph_lines"]
    rows = pq.read_table(os.path.join(out, "edges")).to_pylist()
    best = {}
    for r in rows:
        best[(r["src"], r["dst"])] = max(best.get((r["src"], r["dst"]), -1), r["weight"])
    assert graph_edges == best


@pytest.fixture(scope="module")
def nsl():
    from minewatch.compat import import_nsl

    return import_nsl()


def test_packed_equals_nsl_pack_nbrs(graph_job, tiles_dir, nsl, tmp_path):
    import tensorflow as tf

    out, stats, undirected = graph_job
    pack_nbrs = importlib.import_module("neural_structured_learning.tools.pack_nbrs")
    labelled, unlabelled = str(tmp_path / "l.tfrecord"), str(tmp_path / "u.tfrecord")
    with tf.io.TFRecordWriter(labelled) as lw, tf.io.TFRecordWriter(unlabelled) as uw:
        for path in sorted(glob.glob(os.path.join(tiles_dir, "tiles", "tiles-*.tfrecord"))):
            for raw in tf.data.TFRecordDataset(path):
                ex = tf.train.Example.FromString(raw.numpy())
                is_labelled = ex.features.feature["label/class"].int64_list.value[0] >= 0
                (lw if is_labelled else uw).write(raw.numpy())
    # pack_nbrs.pack_nbrs itself cannot run on Python 3.11: graph_utils.read_tsv_graph
    # opens the TSV with mode 'rU'. Run its body with NSL's own pieces instead.
    graph_utils = importlib.import_module("neural_structured_learning.tools.graph_utils")
    graph = {}
    with open(os.path.join(out, "graph.tsv")) as f:
        for line in f:
            graph_utils.add_edge(graph, line.rstrip("\n").split("\t"))
    if undirected:
        graph_utils.add_undirected_edges(graph)
    seeds = pack_nbrs._read_tfrecord_examples(labelled, "tile/id")
    nbrs = pack_nbrs._read_tfrecord_examples(unlabelled, "tile/id")
    expected_path = str(tmp_path / "nsl.tfrecord")
    with tf.io.TFRecordWriter(expected_path) as writer:
        for merged in pack_nbrs._join_examples(seeds, nbrs, graph, K):
            writer.write(merged.SerializeToString())

    def by_id(paths):
        exs = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(paths)]
        return {e.features.feature["tile/id"].bytes_list.value[0]: e for e in exs}

    expected = by_id([expected_path])
    got = by_id(sorted(glob.glob(os.path.join(out, "packed", "*.tfrecord"))))
    assert 0 < len(got) < 36 and stats["packed"] == len(got)  # labelled tiles only
    assert got.keys() == expected.keys()
    for key, ex in expected.items():
        assert got[key] == ex, key
    nums = [e.features.feature["NL_num_nbrs"].int64_list.value[0] for e in got.values()]
    assert max(nums) == K


def test_graph_regularization_trains_on_packed(graph_job, nsl):
    import tensorflow as tf

    out, _, undirected = graph_job
    if undirected:
        pytest.skip("one training run is enough")
    size = 16 * 16 * 4 * 2
    spec = {
        "image/raw": tf.io.FixedLenFeature([], tf.string),
        "label/class": tf.io.FixedLenFeature([], tf.int64),
    }
    for i in range(K):
        spec[f"NL_nbr_{i}_image/raw"] = tf.io.FixedLenFeature([], tf.string, b"\0" * size)
        spec[f"NL_nbr_{i}_weight"] = tf.io.FixedLenFeature([1], tf.float32, [0.0])

    def parse(raw):
        f = tf.io.parse_single_example(raw, spec)

        def pixels(key):
            return tf.cast(tf.io.decode_raw(f[key], tf.uint16), tf.float32) / 3000.0

        x = {"image": pixels("image/raw")}
        for i in range(K):
            x[f"NL_nbr_{i}_image"] = pixels(f"NL_nbr_{i}_image/raw")
            x[f"NL_nbr_{i}_weight"] = f[f"NL_nbr_{i}_weight"]
        return x, f["label/class"]

    files = sorted(glob.glob(os.path.join(out, "packed", "*.tfrecord")))
    data = tf.data.TFRecordDataset(files).map(parse).batch(4).repeat()
    inputs = tf.keras.Input((1024,), name="image")
    base = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(tf.keras.layers.Dense(8)(inputs)))
    model = nsl.keras.GraphRegularization(
        base, nsl.configs.make_graph_reg_config(max_neighbors=K, multiplier=0.1)
    )
    model.compile(
        optimizer="adam",
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(data, epochs=1, steps_per_epoch=5, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert "scaled_graph_loss" in history.history or "graph_loss" in history.history


# -- a labelled world: whitening, homophily, pack-k, neighbour mix --------------------


@pytest.fixture(scope="module")
def world_tiles(tmp_path_factory):
    """The tiny synthetic world through the tile job: 512 labelled 16-px tiles, 2 dates."""
    from minewatch.synth import make_ground_truth

    root = tmp_path_factory.mktemp("world")
    gt = make_ground_truth(root / "gt", size="tiny", seed=0, frames=False)
    out = root / "tiles"
    labels = str(gt.out_dir / "truth" / "scene_*.geojson")
    bands = "B02,B03,B04,B08,B11"
    tile_job([str(gt.out_dir / "scenes"), "--out", str(out), "--labels", labels,
                 "--tile-size", "16", "--bands", bands])  # fmt: skip
    return out


@pytest.fixture(scope="module")
def world_job(world_tiles, tmp_path_factory):
    """The job with its defaults: builtin whitened, pack_k 3, lean neighbour features."""
    out = tmp_path_factory.mktemp("world_graph") / "graph"
    return out, graph_run([str(world_tiles), "--out", str(out)])


@pytest.fixture(scope="module")
def world_raw(world_tiles, tmp_path_factory):
    """Unwhitened, one neighbour per example, every neighbour feature."""
    out = tmp_path_factory.mktemp("world_raw") / "graph"
    args = ["--no-whiten", "--pack-k", "1", "--nbr-features", "all"]
    return out, graph_run([str(world_tiles), "--out", str(out), *args])


def packed_examples(out):
    import tensorflow as tf

    files = sorted(glob.glob(os.path.join(out, "packed", "*.tfrecord")))
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def value_of(ex, name):
    f = ex.features.feature[name]
    return (f.bytes_list.value or f.int64_list.value or f.float_list.value)[0]


def best_kind(out):
    """``(src, dst) -> kind`` of the edge that gives the pair's packed weight."""
    best = {}
    for r in pq.read_table(os.path.join(out, "edges")).to_pylist():
        key = (r["src"], r["dst"])
        best[key] = max(best.get(key, (-2.0, "")), (r["weight"], r["kind"]))
    return {pair: kind for pair, (_, kind) in best.items()}


def test_homophily_equals_a_count_of_the_packed_records(world_job, world_tiles):
    out, stats = world_job
    with open(os.path.join(world_tiles, "stats.json")) as f:
        classes = json.load(f)["classes"]
    kinds = best_kind(out)
    expected = {}
    for ex in packed_examples(out):
        seed, label = value_of(ex, "tile/id").decode(), value_of(ex, "label/class")
        for name in (classes[label], "all"):
            row = expected.setdefault(name, {"seeds": 0})
            row["seeds"] += 1
            for i in range(value_of(ex, "NL_num_nbrs")):
                nbr = value_of(ex, f"NL_nbr_{i}_tile/id").decode()
                nbr_label = value_of(ex, f"NL_nbr_{i}_label/class")
                for kind in (kinds[(seed, nbr)], "all"):
                    c = row.setdefault(kind, {"neighbours": 0, "labelled": 0, "same": 0})
                    c["neighbours"] += 1
                    c["labelled"] += nbr_label >= 0
                    c["same"] += nbr_label == label
    got = {"all": stats["homophily"]["all"], **stats["homophily"]["by_class"]}
    assert set(got) == set(expected) and len(got) >= 4  # background and some objects
    for name, row in expected.items():
        assert got[name]["seeds"] == row["seeds"]
        for kind in ("similarity", "spatial", "temporal", "all"):
            c = row.get(kind, {"neighbours": 0, "labelled": 0, "same": 0})
            share = round(c["same"] / c["labelled"], 4) if c["labelled"] else None
            assert got[name][kind] == {**c, "share": share}, (name, kind)
    # The packed neighbours mix the kinds: temporal and spatial edges compete by weight.
    assert all(got["all"][k]["neighbours"] > 0 for k in ("similarity", "spatial", "temporal"))


def test_packed_neighbours_are_the_best_by_weight_over_every_kind(world_job):
    out, stats = world_job
    adjacency = {}
    with open(os.path.join(out, "graph.tsv")) as f:
        for line in f:
            src, dst, w = line.rstrip("\n").split("\t")
            adjacency.setdefault(src, []).append((np.float32(w), dst))
    examples = packed_examples(out)
    assert len(examples) == stats["packed"] == 512
    for ex in examples:
        seed = value_of(ex, "tile/id").decode()
        best = sorted(adjacency.get(seed, []), reverse=True)[:3]
        n = value_of(ex, "NL_num_nbrs")
        got = [
            (
                np.float32(value_of(ex, f"NL_nbr_{i}_weight")),
                value_of(ex, f"NL_nbr_{i}_tile/id").decode(),
            )
            for i in range(n)
        ]
        assert got == best, seed


def test_pack_k_and_lean_features_bound_the_packed_bytes(world_job, world_raw, world_tiles):
    plain = {}
    labelled = {}
    for path in sorted(glob.glob(os.path.join(world_tiles, "tiles", "*.tfrecord"))):
        with open(path, "rb") as f:
            records = list(read_records(f))
        for t, r in zip(decode_tiles(records), records, strict=True):
            plain[t.tile_id] = len(r)
            labelled[t.tile_id] = t.label >= 0
    for (out, stats), pack_k in ((world_job, 3), (world_raw, 1)):
        files = sorted(glob.glob(os.path.join(out, "packed", "*.tfrecord")))
        sizes = []
        for path in files:
            with open(path, "rb") as f:
                sizes.extend(len(r) for r in read_records(f))
        size = stats["packed_size"]
        assert size["records"] == len(sizes) == stats["packed"]
        assert size["bytes"] == sum(sizes)
        assert size["plain_bytes"] == sum(n for i, n in plain.items() if labelled[i])
        assert size["tiles_bytes"] == sum(plain.values())
        assert size["ratio"] == round(size["bytes"] / size["plain_bytes"], 4)
        assert size["target_ratio"] == 1 + pack_k
        nums = [value_of(ex, "NL_num_nbrs") for ex in packed_examples(out)]
        assert max(nums) == pack_k
    # Lean neighbours: under (1 + pack_k) x the plain bytes; all features: over it.
    lean, full = world_job[1]["packed_size"], world_raw[1]["packed_size"]
    assert lean["ratio"] <= lean["target_ratio"] < 1 + 3 * full["ratio"] - 3
    (ex, *_) = packed_examples(world_job[0])
    names = {n for n in ex.features.feature if n.startswith("NL_nbr_0_")}
    assert names == {
        "NL_nbr_0_weight", "NL_nbr_0_image/raw", "NL_nbr_0_mask/valid", "NL_nbr_0_tile/id",
        "NL_nbr_0_label/class",
    }  # fmt: skip


def test_whitened_cosines_spread(world_job, world_raw):
    white, raw = world_job[1]["similarity_cosine"], world_raw[1]["similarity_cosine"]
    assert raw["quantiles"]["0.5"] > 0.98 and raw["quantiles"]["0.01"] > 0.9
    assert white["quantiles"]["0.5"] < 0.95
    # The 0.8 threshold filters whitened edges; it filtered no raw one.
    assert white["edges"] < raw["edges"] == world_raw[1]["edges"]["similarity"] == 10 * 512
    assert white["min"] >= 0.8 and white["edges"] == world_job[1]["edges"]["similarity"]
    assert world_raw[1]["embedding"] == {"name": "builtin", "whiten": False, "whitening": {}}


def tie_aware_recall(expected, white, ids, minimum):
    pos = {n: i for i, n in enumerate(ids)}
    unit, _ = normalize(white)
    kth, want = {}, {}
    for (s, _), w in expected.items():
        kth[s] = min(kth.get(s, 2.0), w)
        want[s] = want.get(s, 0) + 1

    def check(tables):
        hits = {}
        for s, d in edge_dict(tables):
            if float(unit[pos[s]] @ unit[pos[d]]) >= kth.get(s, 2.0) - 1e-5:
                hits[s] = hits.get(s, 0) + 1
        recall = sum(min(hits.get(s, 0), n) for s, n in want.items()) / sum(want.values())
        if recall < minimum:
            raise BeamAssertException(f"recall {recall:.4f} < {minimum}")

    return check


def test_similarity_recall_with_spill_on_tile_descriptors(world_tiles):
    tiles = good_tiles(world_tiles)
    with open(os.path.join(world_tiles, "stats.json")) as f:
        norm = BandNorm.from_json(f.read())
    ids, _, white = whitened_descriptors(tiles, norm)
    expected = exact_dict(ids, white, 10, 0.8)
    assert len(expected) > 1000
    with BeamTestPipeline() as p:
        # 32-tile cells: 16 or more of them for 512 tiles, one tree.
        edges = (
            p
            | beam.Create(list(zip(ids, white, strict=True)))
            | SimilarityEdges(10, 0.8, cell_size=32, batch_size=128)
        )["edges"]
        assert_that(edges, tie_aware_recall(expected, white, ids, 0.99))


# -- the command ----------------------------------------------------------------------


def test_cli_refuses_a_folder_without_tiles(tmp_path):
    result = CliRunner().invoke(graph, [str(tmp_path), "--out", str(tmp_path / "g")])
    assert result.exit_code == 2
    assert "TILES_DIR" in result.output and "matches no file" in result.output


def test_cli_refuses_a_bad_model(tiles_dir, tmp_path):
    result = CliRunner().invoke(
        graph, [str(tiles_dir), "--out", str(tmp_path / "g"), "--embedding", str(tmp_path)]
    )
    assert result.exit_code == 2 and "--embedding" in result.output


def test_cli_refuses_unknown_neighbour_features(tiles_dir, tmp_path):
    args = [str(tiles_dir), "--out", str(tmp_path / "g"), "--nbr-features", "image/raw,pixels"]
    result = CliRunner().invoke(graph, args)
    assert result.exit_code == 2
    assert "--nbr-features" in result.output and "pixels: not tile features" in result.output


def test_config_checks_its_values():
    from pipelines.graph import GraphConfig

    with pytest.raises(ConfigError, match="pack_k = 0 must be at least 1"):
        GraphConfig("t", "o", pack_k=0)
    with pytest.raises(ConfigError, match=r"spill_pairs = 1.5 must be a quantile"):
        GraphConfig("t", "o", spill_pairs=1.5)
    with pytest.raises(ConfigError, match=r"\['pixels'\] are not tile features"):
        GraphConfig("t", "o", nbr_features=("pixels",))
    assert GraphConfig("t", "o").whitens and not GraphConfig("t", "o", embedding="m").whitens
    assert GraphConfig("t", "o", embedding="m", whiten=True).whitens


def test_cli_refuses_to_overwrite(graph_job, tiles_dir):

    out, _, _ = graph_job
    result = CliRunner().invoke(graph, [str(tiles_dir), "--out", str(out)])
    assert result.exit_code == 2
    assert "--out" in result.output and "add --overwrite" in result.output
    with pytest.raises(ConfigError, match="add --overwrite") as refused:
        graph_run([str(tiles_dir), "--out", str(out)])
    assert refused.value.option == "--out"


def test_the_job_refuses_contrastive_and_stray_arguments(tiles_dir, tmp_path):

    out = str(tmp_path / "g")
    with pytest.raises(ConfigError, match="minewatch encoder") as refused:
        graph_run([str(tiles_dir), "--out", out, "--embedding", "contrastive"])
    assert refused.value.option == "--embedding"
    with pytest.raises(ConfigError, match=r"unexpected arguments \['extra'\]"):
        graph_run([str(tiles_dir), "extra", "--out", out])
    with pytest.raises(ConfigError, match="give one TILES_DIR"):
        graph_run(["--out", out])
    assert not os.path.exists(out)


def _trained_model_folder(path, bands):
    """A model folder as ``minewatch train`` exports it: raw pixels in, normalised inside."""
    from minewatch.compat import use_legacy_keras

    use_legacy_keras()
    import tensorflow as tf

    class Trained(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, len(bands)], tf.float32)])
        def embed(self, image):
            # Centred on raw values (z-scored input would give about -1000 in every band),
            # and weighted per band, so that the band order matters.
            weights = tf.range(1.0, len(bands) + 1.0)
            return {"embedding": tf.reduce_mean(image, axis=[1, 2]) * weights - 1000.0}

    module = Trained()
    tf.saved_model.save(module, str(path / "saved_model"), signatures={"embedding": module.embed})
    meta = {"bands": list(bands), "normalization": {"mean": [0.0] * len(bands)}}
    (path / "metadata.json").write_text(json.dumps(meta))
    return path


def test_a_trained_model_folder_gets_raw_pixels(tiles_dir, tmp_path):
    tiles = good_tiles(tiles_dir)
    bands = tuple(reversed(next(iter(tiles.values())).bands))  # another order than the tiles'
    model = _trained_model_folder(tmp_path / "model", bands)
    out = tmp_path / "g"
    stats = graph_run([str(tiles_dir), "--out", str(out), "--k", "3", "--threshold", "-1",
                       "--embedding", str(model), "--spatial-weight", "0",
                       "--temporal-weight", "0"])  # fmt: skip
    assert stats["embedding"]["name"] == str(model / "saved_model")
    ids = sorted(tiles)
    raw = [np.where(tiles[i].valid[..., None], tiles[i].image, 0).astype(np.float32) for i in ids]
    weights = np.arange(1.0, len(bands) + 1.0)
    vectors = np.stack([r[..., ::-1].mean(axis=(0, 1)) * weights - 1000.0 for r in raw])
    expected = exact_dict(ids, vectors, 3, -1.0)
    got = edges_of(out, "similarity")
    assert set(got) == set(expected)
    assert all(abs(got[p] - w) < 1e-4 for p, w in expected.items())


def test_a_trained_model_needs_the_tiles_bands(tiles_dir, tmp_path):
    model = _trained_model_folder(tmp_path / "model", ("B02", "B03", "B04", "B12"))
    with pytest.raises(ConfigError, match="lack") as refused:
        graph_run([str(tiles_dir), "--out", str(tmp_path / "g"), "--embedding", str(model)])
    assert refused.value.option == "--embedding"
