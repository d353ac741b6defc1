"""Faults: a bundle that fails once, killed jobs rerun, interrupted table writes, two writers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from minewatch.query import open_tables, run_query
from minewatch.tables import write_geoparquet
from tests.factories import assert_accounting, gradient, read_table, read_tiles, write_raster

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}


def _cli(*args):
    return [sys.executable, "-m", "minewatch.cli.main", *args]


def _kill_when(proc, ready, timeout=240.0):
    end = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"ended before the kill point (rc {proc.returncode})"
        assert time.time() < end, "kill point not reached"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


# -- Beam retries ----------------------------------------------------------------------


def test_a_bundle_that_fails_once_is_retried_without_duplicate_rows(tmp_path, monkeypatch):
    """The BundleBasedDirectRunner retries a failed bundle; the Python FnApiRunner does not."""
    import pipelines.tile.write as tiling
    from pipelines.tile import run as tile_job

    src = write_raster(tmp_path / "g.tif", gradient(128, 128), descriptions=("B02", "B03", "B04"))
    calls = []
    real = tiling.write_record

    def fails_once(stream, data):
        calls.append(1)
        if len(calls) == 20:  # mid-bundle, after 19 tiles went to the bundle's shard
            raise OSError("injected: the disk went away")
        return real(stream, data)

    monkeypatch.setattr(tiling, "write_record", fails_once)
    out = tmp_path / "out"
    args = [src, "--out", str(out), "--tile-size", "16", "--block-tiles", "2"]
    stats = tile_job([*args, "--runner=BundleBasedDirectRunner"])
    assert len(calls) > 64  # the failed attempt's writes, then the retry's
    assert_accounting(stats)
    manifest = read_table(out, "manifest")
    assert len(manifest) == len({r["tile_id"] for r in manifest}) == 64
    assert len(read_tiles(out)) == 64  # read_tiles fails on a duplicate tile id
    assert sorted(os.listdir(out / "tiles")) == sorted(stats["shards"])


def test_the_default_direct_runner_fails_the_job_instead(tmp_path, monkeypatch):
    import pipelines.tile.write as tiling
    from pipelines.tile import run as tile_job

    src = write_raster(tmp_path / "g.tif", gradient(64, 64), descriptions=("B02", "B03", "B04"))

    def broken(stream, data):
        raise OSError("injected: the disk went away")

    monkeypatch.setattr(tiling, "write_record", broken)
    out = tmp_path / "out"
    with pytest.raises(Exception, match="the disk went away"):
        tile_job([src, "--out", str(out), "--tile-size", "16"])
    assert not (out / "stats.json").exists() and not (out / "tiles").exists()


# -- a job killed and run again ----------------------------------------------------------


def test_tile_job_killed_mid_run_then_rerun_has_no_duplicates(tmp_path):
    src = write_raster(
        tmp_path / "big.tif",
        (gradient(1024, 1024) % 50000).astype(np.uint16),
        descriptions=("B02", "B03", "B04"),
    )
    out = tmp_path / "out"
    args = ["tile", src, "--out", str(out), "--tile-size", "16", "--block-tiles", "4"]
    args += ["--records-per-shard", "64"]
    proc = subprocess.Popen(_cli(*args), cwd=ROOT, env=ENV, stderr=subprocess.DEVNULL)

    def shards_being_written():
        return (
            any(
                p.name.startswith(".tmp-") and any((p / "tiles").glob("*"))
                for p in out.glob(".tmp-*")
            )
            if out.exists()
            else False
        )

    _kill_when(proc, shards_being_written)
    assert not (out / "stats.json").exists()  # killed before it committed anything
    assert not (out / "tiles").exists()
    # The rerun needs no --overwrite (nothing was committed) and leaves one copy of each tile.
    from pipelines.tile import run as tile_job

    stats = tile_job(args[1:])
    assert_accounting(stats)
    manifest = read_table(out, "manifest")
    assert len(manifest) == len({r["tile_id"] for r in manifest}) == 64 * 64
    assert len(read_tiles(out)) == 64 * 64
    # The killed run's temporary folder is left behind (never read); --overwrite clears it.
    assert [p.name for p in out.glob(".tmp-*")]
    tile_job([*args[1:], "--overwrite"])
    assert not list(out.glob(".tmp-*"))


# -- table writes ----------------------------------------------------------------------

WRITER = """
import sys
import pyarrow as pa
from minewatch.tables import write_geoparquet, dead_letter_schema

path = sys.argv[1]
i = 0
while True:
    n = 20_000 if i % 2 else 5_000
    rows = [{"input": f"v{i % 2}", "reason": "x" * 50, "kind": "tile", "scene_id": "s",
             "tile_id": str(k), "stage": "t"} for k in range(n)]
    write_geoparquet(path, rows, "dead_letter", dead_letter_schema())
    print(i, flush=True)
    i += 1
"""


def _versions(tables):
    """The (input, count) groups the table holds, read the way 'minewatch query' reads it."""
    con, _ = open_tables(str(tables))
    rows = run_query(con, "select input, count(*) n from dead_letter group by 1").to_pylist()
    return sorted((r["input"], r["n"]) for r in rows)


def test_a_table_write_killed_at_random_moments_leaves_the_old_or_the_new_file(tmp_path):
    tables = tmp_path / "tables"
    path = tables / "dead_letter" / "part.parquet"
    whole = ([("v0", 5_000)], [("v1", 20_000)])
    seen, stop, errors = [], threading.Event(), []

    def read_while_writing():
        while not stop.is_set():
            try:
                if path.exists():
                    seen.append(_versions(tables))
            except Exception as exc:  # a torn file would land here
                errors.append(exc)

    reader = threading.Thread(target=read_while_writing, daemon=True)
    reader.start()
    rng = np.random.default_rng(5)
    try:
        for _ in range(2):
            proc = subprocess.Popen(
                [sys.executable, "-c", WRITER, str(path)],
                cwd=ROOT,
                env=ENV,
                stdout=subprocess.PIPE,
                text=True,
            )
            proc.stdout.readline()  # one write done: the next ones overwrite it
            time.sleep(rng.uniform(0.0, 0.5))
            proc.send_signal(signal.SIGKILL)
            assert proc.wait(timeout=30) == -signal.SIGKILL
            proc.stdout.close()
            assert _versions(tables) in whole
    finally:
        stop.set()
        reader.join(timeout=10)
    assert not errors, errors[:3]
    assert seen and all(v in whole for v in seen)
    # the killed writes' temporary files are hidden from readers (leading '.')
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".")] == ["part.parquet"]


def test_a_write_that_fails_leaves_the_old_file(tmp_path):
    from minewatch.tables import dead_letter_schema

    path = str(tmp_path / "t" / "part.parquet")
    row = {"input": "old", "reason": "", "kind": "", "scene_id": "", "tile_id": "", "stage": ""}
    write_geoparquet(path, [row], "dead_letter", dead_letter_schema())
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError, TypeError)):
        write_geoparquet(path, [{**row, "input": 5}], "dead_letter", dead_letter_schema())
    assert pa.parquet.read_table(path).to_pylist() == [row]


# -- two infer runs on one output -------------------------------------------------------


@pytest.mark.slow  # two processes that each load TensorFlow: ~60 s on 2 busy cores
def test_two_infer_runs_writing_the_same_tables_at_once(tmp_path, oracle):
    from tests.factories import squares_scene

    scenes = tmp_path / "scenes"
    scenes.mkdir()
    for i in range(4):
        squares_scene(scenes, [(16, 16, 32)], f"2024-01-0{i + 1}", size=64)
    out = tmp_path / "tables"
    args = ["infer", str(scenes), "--model", oracle, "--out", str(out), "--stride", "16"]
    procs = [
        subprocess.Popen(
            _cli(*args),
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    con, _ = open_tables(str(out))
    rows = run_query(
        con, "select scene_id, count(*) n, count(distinct tile_id) d from tile_labels group by 1"
    ).to_pylist()
    # each scene's file was written twice, atomically, under one name: 16 rows, not 32
    assert sorted(rows, key=lambda r: r["scene_id"]) == [
        {"scene_id": f"scene_2024-01-0{i + 1}", "n": 16, "d": 16} for i in range(4)
    ]
    sites = run_query(con, "select site_id, count(*) n from sites group by 1").to_pylist()
    assert sites and all(r["n"] == 1 for r in sites)
    stats = json.loads((out / "infer_stats.json").read_text())  # one run's, whole
    assert stats["counts"]["tiles_labelled"] == 64
    assert not [p for p in out.rglob(".tmp-*")]


# -- the registry -----------------------------------------------------------------------


def test_a_half_exported_model_is_never_promoted(tmp_path, oracle):
    import shutil

    from minewatch.errors import InputError
    from nsl_models.registry import promote

    half = tmp_path / "half"
    shutil.copytree(oracle, half)
    meta = json.loads((half / "metadata.json").read_text())
    (half / "metadata.json").write_text(json.dumps({**meta, "metrics": {"accuracy": 0.9}}))
    os.remove(half / "saved_model" / "saved_model.pb")  # killed between variables and graph
    registry = tmp_path / "registry"
    with pytest.raises(
        InputError, match=r"not a whole model folder: no saved_model/saved_model\.pb"
    ):
        promote(str(half), str(registry))
    assert not registry.exists()  # nothing copied, no current.json
