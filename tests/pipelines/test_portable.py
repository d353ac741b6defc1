"""Tile, graph and infer over Beam's portable API, their SDK workers in processes of their own.

A job service and an EXTERNAL worker pool run on 127.0.0.1 (the way Flink on
Kubernetes runs Python workers); each job's outputs must equal the DirectRunner's.
"""

from __future__ import annotations

import glob
import json
import os
import sys
import venv

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minewatch.errors import ConfigError
from minewatch.profiles import load_profile
from minewatch.spec import TILE_ID
from pipelines.graph import run as graph_job
from pipelines.infer import run as infer_job
from pipelines.options import with_profile
from pipelines.portable import (
    check_endpoints,
    check_worker_python,
    free_port,
    local_portable,
    portable_args,
    worker_env,
)
from pipelines.tile import run as tile_job
from tests.factories import (
    ORIGIN,
    box_geometry,
    feature,
    read_tiles,
    save_oracle,
    squares_scene,
    write_geojson,
)

#: Tables whose rows must match, by job.
TABLES = {
    "tiles": ("manifest", "dead_letter"),
    "graph": ("edges", "dead_letter"),
    "tables": (
        "tile_labels",
        "sites",
        "site_observations",
        "stockpile_series",
        "dead_letter",
    ),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("portable")
    scenes = root / "scenes"
    scenes.mkdir()
    # many identical background tiles: ties among neighbours must resolve the same way
    squares_scene(scenes, [(16, 16, 32), (64, 64, 16)], "2024-01-01")
    squares_scene(scenes, [(16, 16, 48), (64, 64, 16)], "2024-02-01")
    left, top = ORIGIN.c, ORIGIN.f
    labels = write_geojson(
        root / "labels.geojson",
        [feature(box_geometry(left + 160, top - 640, left + 640, top - 160), **{"class": "pile"})],
        crs="EPSG:32633",
    )
    return root, scenes, save_oracle(root / "model"), labels


def run_jobs(root, scenes, model, labels, beam_args):
    tiles = ["--tile-size", "16", "--labels", labels]
    tile_job([str(scenes), "--out", str(root / "tiles"), *tiles, *beam_args])
    graph_job([str(root / "tiles"), "--out", str(root / "graph"), *beam_args])
    infer_job(
        [
            str(scenes),
            "--model",
            model,
            "--out",
            str(root / "tables"),
            "--site-classes",
            "stockpile",
            "--stride",
            "8",
            *beam_args,
        ]
    )


@pytest.fixture(scope="module")
def both(inputs, tmp_path_factory):
    _, scenes, model, labels = inputs
    direct = tmp_path_factory.mktemp("direct")
    run_jobs(direct, scenes, model, labels, [])
    portable = tmp_path_factory.mktemp("portable_out")
    logs = tmp_path_factory.mktemp("logs")
    with local_portable(parallelism=2, log_dir=str(logs)) as services:
        run_jobs(portable, scenes, model, labels, services.args())
    return direct, portable, logs


def rows(folder):
    files = sorted(glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True))
    if not files:
        return []
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="default")
    return sorted(json.dumps(r, sort_keys=True, default=str) for r in table.to_pylist())


def packed(out):
    """The graph job's packed examples by tile id, each as its features' sorted items."""
    import tensorflow as tf

    examples = {}
    for path in sorted(glob.glob(os.path.join(out, "graph", "packed", "*.tfrecord"))):
        for record in tf.data.TFRecordDataset(path):
            example = tf.train.Example.FromString(record.numpy())
            features = sorted(
                (name, feature.SerializeToString(deterministic=True))
                for name, feature in example.features.feature.items()
            )
            examples[example.features.feature[TILE_ID].bytes_list.value[0]] = features
    assert examples
    return examples


#: Stats entries that name the run (time, run id) or its folders.
RUN_SPECIFIC = {"created", "run_id", "tiles_dir", "options", "graph_lines", "plot"}


def stats(path):
    return {k: v for k, v in json.loads(path.read_text()).items() if k not in RUN_SPECIFIC}


def test_outputs_equal_the_direct_runners(both):
    direct, portable, _ = both
    for job, tables in TABLES.items():
        for table in tables:
            a, b = rows(direct / job / table), rows(portable / job / table)
            assert a == b, f"{job}/{table} differs"
    assert rows(direct / "tables" / "sites"), "the comparison needs sites"
    tiles_a, tiles_b = read_tiles(direct / "tiles"), read_tiles(portable / "tiles")
    assert sorted(tiles_a) == sorted(tiles_b) and len(tiles_a) == 72
    for key, tile in tiles_a.items():
        assert tile.image.tobytes() == tiles_b[key].image.tobytes()
    lines_a = sorted((direct / "graph" / "graph.tsv").read_text().splitlines())
    assert lines_a == sorted((portable / "graph" / "graph.tsv").read_text().splitlines())
    assert packed(direct) == packed(portable)
    for name in ("tiles/stats.json", "graph/stats.json", "tables/infer_stats.json"):
        a, b = stats(direct / name), stats(portable / name)
        assert a == b and len(a) > 3, name


def test_the_workers_ran_in_their_own_processes(both):
    _, _, logs = both
    pool_log = (logs / "worker_pool.log").read_text()
    # three jobs, two SDK worker processes each (--sdk_worker_parallelism=2)
    assert pool_log.count("Starting worker with command") == 6


def test_a_pool_whose_python_lacks_beam_fails_fast(tmp_path):
    bare = tmp_path / "bare"
    venv.create(bare, with_pip=False, symlinks=True)
    env = worker_env(str(bare / "bin" / "python"))
    with pytest.raises(ConfigError, match=r"No module named 'apache_beam'.*worker-pool"):
        check_worker_python(env)
    ours = os.path.join(os.path.dirname(sys.executable), "python")
    assert check_worker_python(worker_env()) == ours


def test_endpoints_that_do_not_answer_are_refused_before_the_job(tmp_path):
    args = portable_args(f"localhost:{free_port()}", f"localhost:{free_port()}")
    with pytest.raises(ConfigError, match="job service does not answer") as refused:
        check_endpoints(args, timeout=0.5)
    assert refused.value.option == "--job_endpoint"
    with pytest.raises(ConfigError) as refused:
        check_endpoints(["--runner=PortableRunner"], timeout=0.5)
    assert refused.value.option == "--job_endpoint"
    check_endpoints(["--runner=DirectRunner"])  # not a portable job: nothing to check


def test_profile_portable_reads_its_endpoints_from_the_environment():
    env = {"MINEWATCH_JOB_ENDPOINT": "jobs:8099", "MINEWATCH_WORKER_POOL": "pool:50000"}
    args = load_profile("portable", "tile", env=env)
    assert args[:5] == portable_args("jobs:8099", "pool:50000")
    with pytest.raises(ConfigError, match="MINEWATCH_JOB_ENDPOINT"):
        load_profile("portable", "graph", env={})


def test_profile_portable_without_services_fails_fast(monkeypatch):
    monkeypatch.setattr("pipelines.portable.ENDPOINT_TIMEOUT", 0.5)
    monkeypatch.setenv("MINEWATCH_JOB_ENDPOINT", f"localhost:{free_port()}")
    monkeypatch.setenv("MINEWATCH_WORKER_POOL", f"localhost:{free_port()}")
    with pytest.raises(ConfigError, match=r"python -m pipelines\.portable job-service"):
        with_profile("portable", "tile", [])
