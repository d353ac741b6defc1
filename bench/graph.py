"""Similarity-graph benchmark: NSL build_graph (brute force, LSH), exact numpy, faiss, minewatch.

Vectors (``--data``): clustered unit vectors (``--dim`` dimensions, ``--clusters``
Gaussian clusters), or real-shaped ones: the built-in descriptors of a tile job's
tiles (``--data TILES_DIR``, e.g. the demo's ``out/demo/tiles``) or of a synthetic
world cut into tiles (``--data synth``, ``--synth-size``), whitened as the graph
job does (``--no-whiten`` for the raw descriptors). Tile descriptors crowd
together far more than clustered vectors. Every method builds the cosine graph
with ``--threshold``; top-k methods keep ``--k`` neighbours per node. Recall is
measured against exact blocked numpy:

- NSL (a threshold graph, no top-k): found pairs / exact pairs at the threshold;
- top-k methods: found edges / exact top-k edges (a found edge whose similarity
  ties the exact k-th one counts as found).

Each method runs in its own subprocess so that its peak RSS is its own. minewatch
runs ``SimilarityEdges`` on the DirectRunner (Beam options pass through, e.g.
``--direct_num_workers=2 --direct_running_mode=multi_processing``), reading the
vectors from ``--shard-rows`` ``.npy`` files written before its clock starts.
``minewatch_ref`` is the same with the spill rule that was the default before
``spill_pairs`` (``spill=0.1, spill_pairs=0``): the reference. With
``--repeats R`` the two run interleaved (new, ref, new, ref, ...) and a ratio line
gives new / ref of the median seconds, process CPU and pairs compared (the work,
independent of the machine's load) and both recalls.

    .venv/bin/python bench/graph.py                      # N = 5k, 20k, 50k
    .venv/bin/python bench/graph.py --n 1000000 --only minewatch          # sampled recall
    .venv/bin/python bench/graph.py --n 50000 100000 200000 500000 1000000 --only minewatch \
        --exact-max-n 50000                                               # the scaling curve
    .venv/bin/python bench/graph.py --data out/demo/tiles --cell-size 2048 \
        --only minewatch,minewatch_ref --repeats 3 --threshold 0.8      # real-shaped, 8 cells
    .venv/bin/python bench/graph.py --data synth --cell-size 128 --threshold 0.8 \
        --only minewatch,minewatch_ref                                    # quick check

The whole job (``--job N [N ...]``): ``minewatch graph`` end to end (read, parse,
embed, whiten, similarity, spatial and temporal edges, graph file, packing,
stats) with its default options, in a subprocess whose process tree (it and all
its children) has its resident memory sampled every 0.1 s by psutil; the peak of
the tree's summed RSS is reported with the seconds, tiles read, edges and packed
records (from the job's ``stats.json``). Beam options pass through to the job
(DirectRunner by default, which runs in one process).

Its tiles are real-shaped: a tile job's output (``--tiles-from``, default the
demo's ``out/demo/tiles``: 16,384 tiles of 16 px, 5 bands, labelled; without it,
a synthetic world of ``--synth-size`` is made and tiled as ``minewatch demo``
does). For N above the source's count the records are replicated, record by
record, into copies 1, 2, ... until N: each copy is a new world beside the
first, so every field the graph job reads stays valid and distinct: ``tile/id``
and ``scene/id`` get a ``~cC`` suffix on the scene id, ``geo/bounds`` and ``geo/transform`` move
east by ``C x 100 km`` (so temporal edges join acquisitions of the copy only),
and ``image/raw`` gets a copy-seeded gain (within 1%) and noise (a few DN) on
every pixel, so that vectors are not exact duplicates of the first world's.
Labels, masks, bands and acquisition times are kept.

    .venv/bin/python bench/graph.py --job 16384 100000                # demo tiles, replicated
    .venv/bin/python bench/graph.py --job 100000 --keep-job out/bench_graph  # keep the output
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

METHODS = ("nsl_brute", "nsl_lsh", "numpy", "faiss", "minewatch", "minewatch_ref")
#: Bands of the real-shaped descriptors (the demo's).
BANDS = ("B02", "B03", "B04", "B08", "B11")


def make_data(n, dim, clusters, spread, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(
        dim
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def tile_descriptors(args):
    """Built-in descriptors of real tiles: a tile job's output, or a synthetic world cut up."""
    from minewatch.embeddings import BandNorm, describe

    if args.data == "synth":
        import rasterio

        from minewatch.synth import make_ground_truth

        with tempfile.TemporaryDirectory() as tmp:
            gt = make_ground_truth(tmp, size=args.synth_size, seed=0, frames=False)
            images = []
            for path in gt.scenes:
                with rasterio.open(path) as src:
                    index = [src.descriptions.index(b) + 1 for b in BANDS]
                    images.append(np.moveaxis(src.read(index), 0, -1))
        pixels = np.concatenate([im.reshape(-1, len(BANDS)) for im in images]).astype(np.float64)
        norm = BandNorm(
            dict(zip(BANDS, pixels.mean(0), strict=True)),
            dict(zip(BANDS, pixels.std(0), strict=True)),
        )
        t = args.tile_px
        valid = np.ones((t, t), bool)
        return np.stack(
            [
                describe(im[r : r + t, c : c + t], valid, BANDS, norm)
                for im in images
                for r in range(0, im.shape[0] - t + 1, t)
                for c in range(0, im.shape[1] - t + 1, t)
            ]
        )
    import glob

    from minewatch.spec import decode_tiles
    from minewatch.tfrecord import read_records

    with open(os.path.join(args.data, "stats.json")) as f:
        norm = BandNorm.from_json(f.read())
    out = []
    for path in sorted(glob.glob(os.path.join(args.data, "tiles", "*.tfrecord"))):
        with open(path, "rb") as f:
            for tile in decode_tiles(list(read_records(f))):
                if tile.valid.any():
                    out.append(describe(tile.image, tile.valid, tile.bands, norm))
    if not out:
        raise SystemExit(f"{args.data}/tiles/*.tfrecord holds no tile: give a tile job's --out")
    return np.stack(out)


def load_vectors(args):
    """``(all vectors [N, D] unit float32, a note)`` of ``--data``."""
    from minewatch.embeddings import fit_whitening
    from pipelines.graph.neighbours import normalize

    x = tile_descriptors(args)
    x = x[np.all(np.isfinite(x), axis=1)]
    note = f"{x.shape[0]} tile descriptors of {x.shape[1]} dims"
    if args.whiten:
        whitening = fit_whitening(x)
        if whitening is not None:
            x = whitening.apply(x)
            note += ", whitened"
    return normalize(x)[0], note


def exact_numpy(x, k, threshold):
    from pipelines.graph.neighbours import topk_within

    return topk_within(x, k, threshold, block=1024)


def run_method(method, args, x, workdir):
    """Return (seconds, result) for one method; result is (rows, cols) or pair set."""
    k, thr = args.k, args.threshold
    n = x.shape[0]
    if method == "numpy":
        t = time.perf_counter()
        rows, cols, _ = exact_numpy(x, k, thr)
        return time.perf_counter() - t, (rows, cols)
    if method == "faiss":
        import faiss

        faiss.omp_set_num_threads(os.cpu_count() or 1)
        t = time.perf_counter()
        index = faiss.IndexFlatIP(x.shape[1])
        index.add(x)
        sims, idx = index.search(x, k + 1)
        keep = (idx != np.arange(n)[:, None]) & (sims >= thr) & (idx >= 0)
        rows = np.broadcast_to(np.arange(n)[:, None], idx.shape)[keep]
        cols = idx[keep]
        # Keep k per row (self may be absent when duplicates exist).
        order = np.lexsort((-sims[keep], rows))
        rows, cols = rows[order], cols[order]
        first = np.searchsorted(rows, rows)
        mask = np.arange(rows.size) - first < k
        return time.perf_counter() - t, (rows[mask], cols[mask])
    if method.startswith("nsl"):
        from minewatch.compat import import_nsl

        nsl = import_nsl()
        from neural_structured_learning.tools import build_graph as bg  # noqa: F401

        build_graph = sys.modules["neural_structured_learning.tools.build_graph"]
        if method == "nsl_brute":
            config = nsl.configs.GraphBuilderConfig(similarity_threshold=thr, random_seed=0)
        else:
            config = nsl.configs.GraphBuilderConfig(
                similarity_threshold=thr, lsh_splits=args.nsl_splits, lsh_rounds=args.nsl_rounds,
                random_seed=0,
            )  # fmt: skip
        embeddings = {str(i): x[i].astype(np.float64) for i in range(n)}
        builder = build_graph.GraphBuilder(config)
        np.random.seed(0)
        out = os.path.join(workdir, "nsl.tsv")
        t = time.perf_counter()
        pairs = set()
        with open(out, "w") as f:
            for s, d, w in builder._generate_edges(embeddings):
                f.write(f"{s}\t{d}\t{w:f}\n{d}\t{s}\t{w:f}\n")
                pairs.add((min(int(s), int(d)), max(int(s), int(d))))
        return time.perf_counter() - t, pairs
    if method.startswith("minewatch"):
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions

        from pipelines.graph.edges import SimilarityEdges

        # The pipeline reads the vectors from .npy shards (written before the clock
        # starts, as the embedding step would have): no process holds them all,
        # and beam.Create does not pickle the whole data set into the job graph.
        shards = []
        for i, start in enumerate(range(0, n, args.shard_rows)):
            path = os.path.join(workdir, f"vectors-{i:05d}.npy")
            np.save(path, x[start : start + args.shard_rows])
            shards.append((start, path))
        out = os.path.join(workdir, "edges")
        options = PipelineOptions(args.beam_args)
        # The reference: the spill rule that was the default before spill_pairs.
        spill = {"spill": 0.1, "spill_pairs": 0.0} if method == "minewatch_ref" else {}
        t = time.perf_counter()
        p = beam.Pipeline(options=options)
        edges = (
            p
            | "Shards" >> beam.Create(shards)
            | "Reshuffle" >> beam.Reshuffle()
            | "ReadShards" >> beam.MapTuple(_read_shard)
            | "Similarity"
            >> SimilarityEdges(
                k, thr, trees=args.trees, cell_size=args.cell_size, batched=True, **spill
            )
        )["edges"]
        edges | "Write" >> beam.io.WriteToParquetBatched(
            out, _schema(), file_name_suffix=".parquet"
        )
        result = p.run()
        result.wait_until_finish()
        seconds = time.perf_counter() - t
        from apache_beam.metrics.metric import MetricsFilter

        query = result.metrics().query(MetricsFilter().with_name("pairs_compared"))
        PAIRS[0] = sum(c.committed or 0 for c in query["counters"])
        import pyarrow.parquet as pq

        table = pq.read_table(
            [os.path.join(workdir, f) for f in os.listdir(workdir) if f.startswith("edges")]
        )
        rows = np.asarray(table.column("src").to_pylist(), np.int64)
        cols = np.asarray(table.column("dst").to_pylist(), np.int64)
        return seconds, (rows, cols)
    raise ValueError(method)


#: Pairs compared by the last minewatch run (its Beam counter), for the child's meta.json.
PAIRS = [0]


def _read_shard(start, path):
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        x = np.load(f)
    return np.array([str(i) for i in range(start, start + x.shape[0])], object), x


def _schema():
    from pipelines.graph.edges import edges_schema

    return edges_schema()


def recall_topk(x, rows, cols, exact, k, sample=None):
    """Found edges / exact edges; an edge tying the exact k-th similarity counts."""
    e_rows, _, e_sims = exact
    n = x.shape[0]
    kth = np.full(n, np.inf, np.float32)
    counts = np.bincount(e_rows, minlength=n)
    np.minimum.at(kth, e_rows, e_sims)
    sims = np.einsum("ij,ij->i", x[rows], x[cols])
    ok = sims >= kth[rows] - 1e-6
    found = np.minimum(np.bincount(rows[ok], minlength=n), counts)
    if sample is not None:
        return found[sample].sum() / max(1, counts[sample].sum())
    return found.sum() / max(1, counts.sum())


def _peak_rss_mb():
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the forking parent.
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args):
    x = np.load(args.vectors)
    with tempfile.TemporaryDirectory() as workdir:
        seconds, result = run_method(args.method, args, x, workdir)
        rss = _peak_rss_mb()
        if args.method.startswith("nsl"):
            np.save(
                os.path.join(args.result, "pairs.npy"),
                np.array(sorted(result), np.int64).reshape(-1, 2),
            )
        else:
            rows, cols = result
            np.save(os.path.join(args.result, "rows.npy"), rows)
            np.save(os.path.join(args.result, "cols.npy"), cols)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    cpu = sum(u.ru_utime + u.ru_stime for u in usage)  # whole child, data making included
    with open(os.path.join(args.result, "meta.json"), "w") as f:
        json.dump({"seconds": seconds, "rss_mb": rss, "cpu_s": cpu, "pairs": PAIRS[0]}, f)


def measure(args, method, x):
    with tempfile.TemporaryDirectory() as data, tempfile.TemporaryDirectory() as result:
        vectors = os.path.join(data, "vectors.npy")
        np.save(vectors, x)
        cmd = [
            sys.executable, __file__, "--child", method, "--n", str(x.shape[0]),
            "--result", result, "--vectors", vectors,
            "--k", str(args.k), "--threshold", str(args.threshold), "--trees", str(args.trees),
            "--cell-size", str(args.cell_size), "--shard-rows", str(args.shard_rows),
            "--nsl-splits", str(args.nsl_splits), "--nsl-rounds", str(args.nsl_rounds),
            *args.beam_args,
        ]  # fmt: skip
        env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
        subprocess.run(cmd, check=True, env=env, stderr=subprocess.DEVNULL)
        with open(os.path.join(result, "meta.json")) as f:
            meta = json.load(f)
        files = {
            name: np.load(os.path.join(result, name))
            for name in os.listdir(result)
            if name.endswith(".npy")
        }
    return meta, files


def exact_reference(x, args):
    """Exact top-k of every node, or of 2,000 sampled nodes above ``--exact-max-n``."""
    n = x.shape[0]
    if n <= args.exact_max_n:
        return exact_numpy(x, args.k, args.threshold), None
    rng = np.random.default_rng(1)
    sample = np.sort(rng.choice(n, 2000, replace=False))
    tops, tss = [], []
    for part in np.array_split(sample, 20):  # 100 rows x N at a time
        sims = x[part] @ x.T
        sims[np.arange(part.size), part] = -np.inf
        top = np.argpartition(-sims, args.k, axis=1)[:, : args.k].copy()
        tops.append(top)
        tss.append(np.take_along_axis(sims, top, axis=1))
    top, ts = np.concatenate(tops), np.concatenate(tss)
    keep = ts >= args.threshold
    return (np.broadcast_to(sample[:, None], top.shape)[keep], top[keep], ts[keep]), sample


# -- the whole job (--job) --------------------------------------------------------------

#: How far east each replicated copy of the tiles' world moves (CRS units, metres).
COPY_SHIFT = 100_000.0


def _bytes_feature(values):
    from pipelines.graph.packing import _ld

    return _ld(1, b"".join(_ld(1, v) for v in values))


def _replicate(record, copy):
    """A tile record of copy ``copy`` (>= 1) of the world: new ids, place and pixels."""
    from minewatch.spec import decode_tiles
    from pipelines.graph.packing import example_bytes, feature_entries

    (tile,) = decode_tiles([record])
    rng = np.random.default_rng([copy, int.from_bytes(tile.tile_id.encode()[-8:], "little")])
    shift = copy * COPY_SHIFT
    scene = f"{tile.scene_id}~c{copy}"
    image = tile.image.astype(np.float64)
    gain = 1.0 + rng.uniform(-0.01, 0.01, (1, 1, image.shape[-1]))
    image = image * gain + rng.integers(-3, 4, image.shape)
    info = np.iinfo(tile.image.dtype) if tile.image.dtype.kind in "iu" else None
    if info is not None:
        image = np.clip(np.rint(image), info.min, info.max)
    raw = image.astype(tile.image.dtype.newbyteorder("<")).tobytes()
    x0, y0, x1, y1 = tile.bounds
    transform = list(tile.transform)
    if len(transform) >= 3:
        transform[2] += shift
    replace = {
        "tile/id": _bytes_feature([f"{scene}:{tile.row_off}:{tile.col_off}".encode()]),
        "scene/id": _bytes_feature([scene.encode()]),
        "image/raw": _bytes_feature([raw]),
        "geo/bounds": _bytes_feature([np.array([x0 + shift, y0, x1 + shift, y1], "<f8").tobytes()]),
        "geo/transform": _bytes_feature([np.array(transform, "<f8").tobytes()]),
    }
    return example_bytes([(n, replace.get(n, v)) for n, v in feature_entries(record)])


def make_job_tiles(source, n, dest):
    """A tile job's folder of ``n`` real-shaped tiles under ``dest``: ``source``'s, replicated."""
    import glob
    import shutil

    from minewatch.tfrecord import read_records, write_record

    shards = sorted(glob.glob(os.path.join(source, "tiles", "*.tfrecord")))
    if not shards:
        raise SystemExit(f"{source}/tiles/*.tfrecord: no tiles (give a tile job's --out)")
    os.makedirs(os.path.join(dest, "tiles"))
    shutil.copy(os.path.join(source, "stats.json"), os.path.join(dest, "stats.json"))
    written, copy = 0, 0
    while written < n:
        for i, path in enumerate(shards):
            if written >= n:
                break
            out = os.path.join(dest, "tiles", f"tiles-c{copy:03d}-{i:05d}.tfrecord")
            with open(path, "rb") as f, open(out, "wb") as g:
                for record in read_records(f):
                    if written >= n:
                        break
                    write_record(g, record if copy == 0 else _replicate(record, copy))
                    written += 1
        copy += 1
    return written


def synth_tiles(size, dest):
    """Tile a synthetic world of ``size`` as ``minewatch demo`` does; return the tile folder."""
    from minewatch.synth import make_ground_truth
    from pipelines.tile import run as tile

    gt = os.path.join(dest, "gt")
    make_ground_truth(gt, size=size, seed=0)
    out = os.path.join(dest, "tiles")
    tile(
        [
            os.path.join(gt, "scenes"), "--out", out,
            "--labels", os.path.join(gt, "truth", "scene_*.geojson"),
            "--tile-size", "16", "--bands", ",".join(BANDS),
        ]
    )  # fmt: skip
    return out


def job_child(tiles, out, beam_args):
    """Run ``minewatch graph`` (this process is the one measured, with its children)."""
    from pipelines.graph import run

    run([tiles, "--out", out, "--overwrite", *beam_args])


def run_job(tiles, out, beam_args, interval=0.1):
    """``(seconds, peak tree RSS MB, peak one-process RSS MB, processes)`` of one graph job."""
    import psutil

    cmd = [sys.executable, __file__, "--job-child", tiles, "--result", out, *beam_args]
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    root = psutil.Process(proc.pid)
    peak = peak_one = 0
    seen = set()
    while proc.poll() is None:
        total = 0
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for q in procs:
            try:
                rss = q.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            seen.add(q.pid)
            total += rss
            peak_one = max(peak_one, rss)
        peak = max(peak, total)
        time.sleep(interval)
    seconds = time.perf_counter() - t
    if proc.wait():
        raise SystemExit(f"graph job failed ({proc.returncode}): {' '.join(cmd)}")
    return seconds, peak / 2**20, peak_one / 2**20, len(seen)


def main_job(args):
    """``--job``: the whole graph job on N real-shaped tiles, its seconds and peak RSS."""
    print(f"{'N':>9} {'tiles read':>10} {'edges':>9} {'packed':>7} {'seconds':>9} "
          f"{'peak RSS MB':>12} {'largest proc MB':>15} {'procs':>5}  options")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        source = args.tiles_from
        if source is None:
            source = synth_tiles(args.synth_size, os.path.join(tmp, "world"))
        for n in args.job:
            tiles = os.path.join(tmp, f"tiles-{n}")
            make_job_tiles(source, n, tiles)
            out = args.keep_job or os.path.join(tmp, f"graph-{n}")
            seconds, peak, one, procs = run_job(tiles, out, args.beam_args)
            with open(os.path.join(out, "stats.json")) as f:
                stats = json.load(f)
            print(
                f"{n:>9} {stats['tiles']['read']:>10} {stats['edges']['total']:>9} "
                f"{stats['packed']:>7} "
                f"{seconds:>9.1f} {peak:>12.0f} {one:>15.0f} {procs:>5}  "
                f"{' '.join(args.beam_args) or 'defaults, DirectRunner'}",
                flush=True,
            )
            import shutil

            shutil.rmtree(tiles)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--n", type=int, nargs="+", default=None,
        help="sizes; default 5k, 20k, 50k clustered vectors, or all of --data's tiles "
        "(smaller N: the first N of a fixed shuffle)",
    )  # fmt: skip
    parser.add_argument(
        "--data", default="clustered", help="clustered, synth, or a tile job's --out folder"
    )
    parser.add_argument("--synth-size", default="tiny", help="synthetic world size (--data synth)")
    parser.add_argument("--tile-px", type=int, default=16, help="tile size (--data synth)")
    parser.add_argument(
        "--whiten", action=argparse.BooleanOptionalAction, default=True,
        help="whiten tile descriptors as the graph job does",
    )  # fmt: skip
    parser.add_argument("--repeats", type=int, default=1, help="interleaved runs per method")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--spread", type=float, default=0.3, help="noise norm relative to a centre")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument(
        "--trees", "--rounds", type=int, default=1, help="minewatch partition trees"
    )
    parser.add_argument(
        "--cell-size", "--bucket-size", type=int, default=16384, help="minewatch cell size"
    )
    parser.add_argument("--shard-rows", type=int, default=65536, help="vectors per input file")
    parser.add_argument("--nsl-splits", type=int, default=10)
    parser.add_argument("--nsl-rounds", type=int, default=18)
    parser.add_argument("--nsl-max-n", type=int, default=20000, help="skip NSL LSH above this N")
    parser.add_argument(
        "--nsl-brute-max-n", type=int, default=20000, help="skip NSL brute force above this N"
    )
    parser.add_argument(
        "--exact-max-n", type=int, default=200_000, help="above: recall on 2,000 sampled nodes"
    )
    parser.add_argument("--only", default=",".join(METHODS))
    parser.add_argument(
        "--job", type=int, nargs="+", default=None, metavar="N",
        help="run the whole graph job on N real-shaped tiles (see the docstring)",
    )  # fmt: skip
    parser.add_argument(
        "--tiles-from", default=os.path.join(ROOT, "out", "demo", "tiles"),
        help="tile job folder the --job tiles are replicated from ('' for a synthetic world "
        "of --synth-size, tiled as the demo does)",
    )  # fmt: skip
    parser.add_argument("--keep-job", default=None, help="--job: write the job's output here")
    parser.add_argument("--job-child", help=argparse.SUPPRESS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--vectors", help=argparse.SUPPRESS)
    args, beam_args = parser.parse_known_args()
    args.beam_args = beam_args
    if args.job_child:
        return job_child(args.job_child, args.result, beam_args)
    if args.job:
        if not args.tiles_from or not os.path.isdir(args.tiles_from):
            args.tiles_from = None
        return main_job(args)
    if args.child:
        args.method, args.n = args.child, args.n[0]
        return child(args)

    methods = args.only.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--only: unknown methods {unknown}; choose from {', '.join(METHODS)}")
    real = None
    if args.data == "clustered":
        data_note = f"dim={args.dim} clusters={args.clusters} spread={args.spread}"
    else:
        real, data_note = load_vectors(args)
        real = real[np.random.default_rng(2).permutation(real.shape[0])]
    sizes = args.n or ([5000, 20000, 50000] if real is None else [real.shape[0]])
    print(f"{data_note} k={args.k} threshold={args.threshold} cell_size={args.cell_size} "
          f"trees={args.trees} cpus={os.cpu_count()}")  # fmt: skip
    print(f"{'N':>9} {'method':<13} {'seconds':>9} {'recall':>7} {'peak RSS MB':>12}  note")
    for n in sizes:
        if real is None:
            x = make_data(n, args.dim, args.clusters, args.spread)
        else:
            if n > real.shape[0]:
                parser.error(f"--n {n}: --data has only {real.shape[0]} tiles")
            x = real[:n]
        exact, sample = exact_reference(x, args)
        pairs_exact = None
        runs = {}
        # Interleaved (a, b, a, b, ...): a load change on the machine hits both alike.
        for _ in range(args.repeats):
            for method in methods:
                limit = args.nsl_brute_max_n if method == "nsl_brute" else args.nsl_max_n
                if method.startswith("nsl") and n > limit:
                    print(f"{n:>9} {method:<13} {'skipped':>9} {'':>7} {'':>12}  O(N^2) Python")
                    continue
                meta, files = measure(args, method, x)
                if method.startswith("nsl"):
                    if pairs_exact is None:
                        s = x @ x.T
                        iu = np.triu_indices(n, 1)
                        pairs_exact = int((s[iu] >= args.threshold).sum())
                        del s
                    recall = len(files["pairs.npy"]) / max(1, pairs_exact)
                    note = f"threshold graph: {len(files['pairs.npy'])} of {pairs_exact} pairs"
                else:
                    rows, cols = files["rows.npy"], files["cols.npy"]
                    recall = recall_topk(x, rows, cols, exact, args.k, sample)
                    note = f"{rows.size} edges" + (
                        " (sampled recall)" if sample is not None else ""
                    )
                    if method.startswith("minewatch"):
                        per = meta["seconds"] / (n * np.log2(n)) * 1e6
                        note += f"; {per:.3f} us per N log2 N; {meta['pairs'] / n:.0f} pairs/node"
                if "cpu_s" in meta:  # less sensitive than wall clock to a shared machine
                    note += f"; process CPU {meta['cpu_s']:.1f} s"
                runs.setdefault(method, []).append((meta, recall))
                print(
                    f"{n:>9} {method:<13} {meta['seconds']:>9.2f} {recall:>7.4f} "
                    f"{meta['rss_mb']:>12.0f}  {note}",
                    flush=True,
                )
        if "minewatch" in runs and "minewatch_ref" in runs:
            print(ratio_line(n, runs["minewatch"], runs["minewatch_ref"]), flush=True)


def ratio_line(n, new, ref):
    """new / ref of the medians: seconds, process CPU, pairs compared; both recalls."""

    def median(runs, key):
        return float(np.median([meta[key] for meta, _ in runs]))

    ratios = "  ".join(
        f"{key} x{median(new, key) / max(1e-9, median(ref, key)):.2f}"
        for key in ("seconds", "cpu_s", "pairs")
    )
    return (
        f"{n:>9} {'new / ref':<13} {ratios}  recall {np.median([r for _, r in new]):.4f} "
        f"vs {np.median([r for _, r in ref]):.4f} (median of {len(new)} interleaved runs each)"
    )


if __name__ == "__main__":
    main()
