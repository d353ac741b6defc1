"""Similarity-graph benchmark: NSL build_graph (brute force, LSH), exact numpy, faiss, minewatch.

Clustered unit vectors (``--dim`` dimensions, ``--clusters`` Gaussian clusters);
every method builds the cosine graph with ``--threshold``; top-k methods keep
``--k`` neighbours per node. Recall is measured against exact blocked numpy:

- NSL (a threshold graph, no top-k): found pairs / exact pairs at the threshold;
- top-k methods: found edges / exact top-k edges (a found edge whose similarity
  ties the exact k-th one counts as found).

Each method runs in its own subprocess so that its peak RSS is its own. minewatch
runs ``SimilarityEdges`` on the DirectRunner (Beam options pass through, e.g.
``--direct_num_workers=2 --direct_running_mode=multi_processing``), reading the
vectors from ``--shard-rows`` ``.npy`` files written before its clock starts.

    .venv/bin/python bench/graph.py                      # N = 5k, 20k, 50k
    .venv/bin/python bench/graph.py --n 1000000 --only minewatch          # sampled recall
    .venv/bin/python bench/graph.py --n 50000 100000 200000 500000 1000000 --only minewatch \
        --exact-max-n 50000                                               # the scaling curve
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

METHODS = ("nsl_brute", "nsl_lsh", "numpy", "faiss", "minewatch")


def make_data(n, dim, clusters, spread, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[rng.integers(0, clusters, n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(
        dim
    )
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def exact_numpy(x, k, threshold):
    from minewatch.neighbours import topk_within

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
    if method == "minewatch":
        import apache_beam as beam
        from apache_beam.options.pipeline_options import PipelineOptions

        from pipelines.similarity_graph import SimilarityEdges

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
        t = time.perf_counter()
        with beam.Pipeline(options=options) as p:
            edges = (
                p
                | "Shards" >> beam.Create(shards)
                | "Reshuffle" >> beam.Reshuffle()
                | "ReadShards" >> beam.MapTuple(_read_shard)
                | "Similarity"
                >> SimilarityEdges(
                    k, thr, rounds=args.rounds, bucket_size=args.bucket_size, batched=True
                )
            )["edges"]
            edges | "Write" >> beam.io.WriteToParquetBatched(
                out, _schema(), file_name_suffix=".parquet"
            )
        seconds = time.perf_counter() - t
        import pyarrow.parquet as pq

        table = pq.read_table(
            [os.path.join(workdir, f) for f in os.listdir(workdir) if f.startswith("edges")]
        )
        rows = np.asarray(table.column("src").to_pylist(), np.int64)
        cols = np.asarray(table.column("dst").to_pylist(), np.int64)
        return seconds, (rows, cols)
    raise ValueError(method)


def _read_shard(start, path):
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        x = np.load(f)
    return np.array([str(i) for i in range(start, start + x.shape[0])], object), x


def _schema():
    from pipelines.similarity_graph import edges_schema

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
    x = make_data(args.n, args.dim, args.clusters, args.spread)
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
        json.dump({"seconds": seconds, "rss_mb": rss, "cpu_s": cpu}, f)


def measure(args, method, n):
    with tempfile.TemporaryDirectory() as result:
        cmd = [
            sys.executable, __file__, "--child", method, "--n", str(n), "--result", result,
            "--dim", str(args.dim), "--clusters", str(args.clusters), "--spread", str(args.spread),
            "--k", str(args.k), "--threshold", str(args.threshold), "--rounds", str(args.rounds),
            "--bucket-size", str(args.bucket_size), "--shard-rows", str(args.shard_rows),
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[5000, 20000, 50000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--spread", type=float, default=0.3, help="noise norm relative to a centre")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.9)
    parser.add_argument("--rounds", type=int, default=1, help="minewatch partition trees")
    parser.add_argument("--bucket-size", type=int, default=16384, help="minewatch cell size")
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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args, beam_args = parser.parse_known_args()
    args.beam_args = beam_args
    if args.child:
        args.method, args.n = args.child, args.n[0]
        return child(args)

    methods = args.only.split(",")
    print(f"dim={args.dim} clusters={args.clusters} spread={args.spread} k={args.k} "
          f"threshold={args.threshold} cpus={os.cpu_count()}")  # fmt: skip
    print(f"{'N':>9} {'method':<11} {'seconds':>9} {'recall':>7} {'peak RSS MB':>12}  note")
    for n in args.n:
        x = make_data(n, args.dim, args.clusters, args.spread)
        exact = exact_numpy(x, args.k, args.threshold) if n <= args.exact_max_n else None
        sample = None
        if exact is None:  # a sampled check: exact top-k of 2,000 nodes against all
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
            exact = (np.broadcast_to(sample[:, None], top.shape)[keep], top[keep], ts[keep])
        pairs_exact = None
        for method in methods:
            limit = args.nsl_brute_max_n if method == "nsl_brute" else args.nsl_max_n
            if method.startswith("nsl") and n > limit:
                print(f"{n:>9} {method:<11} {'skipped':>9} {'':>7} {'':>12}  O(N^2) pure Python")
                continue
            meta, files = measure(args, method, n)
            if method.startswith("nsl"):
                if pairs_exact is None:
                    s = x @ x.T
                    iu = np.triu_indices(n, 1)
                    pairs_exact = int((s[iu] >= args.threshold).sum())
                    del s
                recall = len(files["pairs.npy"]) / max(1, pairs_exact)
                note = f"threshold graph: {len(files['pairs.npy'])} of {pairs_exact} pairs"
            else:
                recall = recall_topk(x, files["rows.npy"], files["cols.npy"], exact, args.k, sample)
                note = f"{files['rows.npy'].size} edges" + (
                    " (sampled recall)" if sample is not None else ""
                )
                if method == "minewatch":
                    per = meta["seconds"] / (n * np.log2(n)) * 1e6
                    note += f"; {per:.3f} us per N log2 N"
            if "cpu_s" in meta:  # less sensitive than wall clock to a shared machine
                note += f"; process CPU {meta['cpu_s']:.1f} s"
            print(
                f"{n:>9} {method:<11} {meta['seconds']:>9.2f} {recall:>7.4f} "
                f"{meta['rss_mb']:>12.0f}  {note}",
                flush=True,
            )


if __name__ == "__main__":
    main()
