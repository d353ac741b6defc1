"""pipelines.dask_runner.DaskRunner on a local dask.distributed cluster (two worker
processes): tagged outputs, finish_bundle outputs, several sinks and side inputs, and
the tile, graph and infer jobs giving the DirectRunner's outputs."""

from __future__ import annotations

import glob
import json
import os

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from tests.factories import save_oracle, write_raster

distributed = pytest.importorskip("distributed")

RUNNER = "--runner=pipelines.dask_runner.DaskRunner"


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        host="127.0.0.1",
        dashboard_address=None,
    ) as c:
        yield c


@pytest.fixture(scope="module")
def dask_args(cluster):
    return [RUNNER, f"--dask_client_address={cluster.scheduler_address}"]


class SplitThrees(beam.DoFn):
    def process(self, x):
        beam.metrics.Metrics.counter("test", "seen").inc()
        yield beam.pvalue.TaggedOutput("dead", x) if x % 3 == 0 else x


class CountBundle(beam.DoFn):
    """Outputs only in finish_bundle, as Beam's file sinks and BatchElements do."""

    def start_bundle(self):
        self.n = 0

    def process(self, x):
        self.n += 1

    def finish_bundle(self):
        yield WindowedValue(("seen", self.n), 0, [GlobalWindow()])


def _dump(path):
    def write(values):
        with open(path, "w") as f:
            json.dump(sorted(values), f)

    return write


def _load(path):
    with open(path) as f:
        return json.load(f)


def test_beam_create_runner_takes_the_dotted_path():
    from apache_beam.runners.runner import create_runner

    from pipelines.dask_runner import DaskRunner

    assert type(create_runner("pipelines.dask_runner.DaskRunner")) is DaskRunner


def test_tagged_outputs_finish_bundle_sinks_and_side_inputs(dask_args, tmp_path):
    p = beam.Pipeline(options=PipelineOptions(dask_args))
    nums = p | "Nums" >> beam.Create(range(20))
    split = nums | "Split" >> beam.ParDo(SplitThrees()).with_outputs("dead", main="ok")
    for name, pcoll in [("ok", split.ok), ("dead", split.dead)]:
        _ = (
            pcoll
            | f"List{name}" >> beam.combiners.ToList()
            | f"Dump{name}" >> beam.Map(_dump(tmp_path / f"{name}.json"))
        )
    seen = nums | "Count" >> beam.ParDo(CountBundle()) | "Sum" >> beam.CombinePerKey(sum)
    _ = seen | "DumpSeen" >> beam.Map(lambda kv: _dump(tmp_path / "seen.json")([list(kv)]))
    total = split.ok | "Total" >> beam.CombineGlobally(sum)
    table = p | "Table" >> beam.Create([("a", 1), ("b", 2)])
    _ = (
        p
        | "One" >> beam.Create([None])
        | "Sides"
        >> beam.Map(
            lambda _, t, d: [t, d], t=beam.pvalue.AsSingleton(total), d=beam.pvalue.AsDict(table)
        )
        | "DumpSides" >> beam.Map(lambda x: _dump(tmp_path / "sides.json")([x]))
    )
    _ = (
        split.ok
        | "Spread" >> beam.Reshuffle()
        | "Text" >> beam.io.WriteToText(str(tmp_path / "ok"), num_shards=1)
    )
    assert_that(split.dead, equal_to([0, 3, 6, 9, 12, 15, 18]), label="CheckDead")
    result = p.run()
    result.wait_until_finish()

    (counter,) = result.metrics().query()["counters"]
    assert counter.key.metric.name == "seen" and counter.committed == 20
    ok = [x for x in range(20) if x % 3]
    assert _load(tmp_path / "ok.json") == ok
    assert _load(tmp_path / "dead.json") == [0, 3, 6, 9, 12, 15, 18]
    assert _load(tmp_path / "seen.json") == [["seen", 20]]  # every bundle's finish_bundle
    assert _load(tmp_path / "sides.json") == [[sum(ok), {"a": 1, "b": 2}]]
    (text,) = glob.glob(str(tmp_path / "ok-*"))  # a second sink, written by finish_bundle
    assert sorted(int(line) for line in open(text)) == ok


def test_a_failing_assert_that_fails_the_run(dask_args):
    p = beam.Pipeline(options=PipelineOptions(dask_args))
    assert_that(p | beam.Create([1, 2]), equal_to([1, 2, 3]))
    with pytest.raises(Exception, match="missing elements"):
        p.run().wait_until_finish()


# --- the jobs, DirectRunner against DaskRunner, on camera frames with CSV labels ---


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    import skimage.data

    frames = tmp_path_factory.mktemp("dask_frames")
    gravel = skimage.data.gravel()
    rows = ["path,camera_id,timestamp,label"]
    for i, (camera, grade) in enumerate([("belt1", "high"), ("belt1", "low"), ("belt2", "waste")]):
        os.makedirs(frames / camera, exist_ok=True)
        rgb = np.stack([gravel[:96, i * 96 : (i + 1) * 96]] * 3).astype(np.uint8)
        name = f"2024011{i}T08000{i}.png"
        write_raster(frames / camera / name, rgb, crs=None, driver="PNG")
        rows.append(f"{camera}/{name},{camera},2024-01-1{i}T08:00:0{i}+00:00,{grade}")
    (frames / "belt2" / "20240120T000000.png").write_bytes(b"\x89PNG not really")
    rows.append("belt9/missing.png,belt9,,high")
    rows.append("too,many,fields,here,really")
    (frames / "labels.csv").write_text("\n".join(rows) + "\n")
    return [str(frames), "--labels", str(frames / "labels.csv"), "--tile-size", "48"]


@pytest.fixture(scope="module")
def tile_runs(frames, dask_args, tmp_path_factory):
    from pipelines.tile import run

    root = tmp_path_factory.mktemp("dask_tile")
    runs = {}
    for name, extra in [("direct", []), ("dask", dask_args)]:
        out = root / name
        runs[name] = out, run([frames[0], "--out", str(out), *frames[1:], *extra])
    return runs


def _examples(folder):
    """Parsed tf.train.Example features of every record in ``folder``, by tile id."""
    from tfx_bsl.coders import example_coder

    from minewatch.tfrecord import read_records

    records = []
    for path in sorted(glob.glob(os.path.join(folder, "*.tfrecord"))):
        with open(path, "rb") as f:
            records.extend(read_records(f))
    rows = example_coder.ExamplesToRecordBatchDecoder().DecodeBatch(records).to_pylist()
    by_id = {row["tile/id"][0]: row for row in rows}
    assert len(by_id) == len(rows)
    return by_id


def _rows(folder, drop=()):
    """A folder (partitions too) of Parquet files as sorted rows, less ``drop``'s columns."""
    rows = []
    for path in glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True):
        part = os.path.dirname(os.path.relpath(path, folder))  # hive partition, e.g. date=...
        for row in pq.read_table(path).to_pylist():
            rows.append(repr((part, sorted((k, v) for k, v in row.items() if k not in drop))))
    return sorted(rows)


def _stats(stats, drop):
    return {k: v for k, v in stats.items() if k not in drop}


def test_tile_job_on_dask_writes_the_direct_runners_tiles(tile_runs):
    (direct, d_stats), (dask, k_stats) = tile_runs["direct"], tile_runs["dask"]
    tiles = _examples(direct / "tiles")
    assert len(tiles) == 12
    assert _examples(dask / "tiles") == tiles
    assert _rows(dask / "manifest") == _rows(direct / "manifest")
    dead = _rows(direct / "dead_letter")
    assert len(dead) == 4 and _rows(dask / "dead_letter") == dead
    assert d_stats["beam_counters"]["tiles_written"] == 12  # Beam metrics, committed per bundle
    drop = ("created",)
    assert _stats(k_stats, drop) == _stats(d_stats, drop)


def test_graph_job_on_dask_gives_the_direct_runners_graph(tile_runs, dask_args, tmp_path):
    from pipelines.graph import run

    tiles, _ = tile_runs["direct"]
    direct, dask = tmp_path / "direct", tmp_path / "dask"
    d_stats = run([str(tiles), "--out", str(direct)])
    k_stats = run([str(tiles), "--out", str(dask), *dask_args])
    assert d_stats["edges"]["total"] > 0
    drop = ("created", "options")
    assert _stats(k_stats, drop) == _stats(d_stats, drop)
    assert _rows(dask / "edges") == _rows(direct / "edges")
    assert _rows(dask / "dead_letter") == _rows(direct / "dead_letter")
    lines = sorted((direct / "graph.tsv").read_text().splitlines())
    assert sorted((dask / "graph.tsv").read_text().splitlines()) == lines
    assert _examples(dask / "packed") == _examples(direct / "packed")


def test_infer_job_on_dask_gives_the_direct_runners_tables(frames, dask_args, tmp_path):
    from pipelines.infer import run

    model = save_oracle(
        tmp_path / "model",
        bands=("red", "green", "blue"),
        task="frame",
        classes=("low", "high"),
        threshold=124.0,
    )
    direct, dask = tmp_path / "direct", tmp_path / "dask"
    d_stats = run([frames[0], "--model", model, "--out", str(direct)])
    k_stats = run([frames[0], "--model", model, "--out", str(dask), *dask_args])
    assert d_stats["counts"]["frames_labelled"] == 3 and d_stats["inputs"]["dead_lettered"] == 2
    drop = ("run_id", "created")
    assert _stats(k_stats, drop) == _stats(d_stats, drop)
    tables = sorted(os.listdir(direct))
    assert sorted(os.listdir(dask)) == tables
    compared = {}
    for table in tables:
        if (direct / table).is_dir():
            rows = _rows(direct / table, drop)
            assert _rows(dask / table, drop) == rows, table
            compared[table] = len(rows)
    assert compared["frame_labels"] == 3 and compared["tile_labels"] == 363, compared
