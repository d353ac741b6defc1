"""Streaming mode on the DirectRunner: real polls, files dropped while it runs, a restart."""

from __future__ import annotations

import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from minewatch.query import open_tables, run_query
from pipelines.streaming import StreamConfig, ledger_entries, run_stream
from tests.factories import write_raster
from tests.pipelines.test_batch_inference import save_oracle

POLL = 1.0


def _scene(path, bright, size=48):
    data = np.full((3, size, size), 100, np.uint16)
    data[:, :16, :16] = 1000 if bright else 100
    return write_raster(path, data, descriptions=("B02", "B03", "B04"))


def _promote(registry, version):
    model = save_oracle(registry / "versions" / version, version=version)
    tmp = registry / ".current.tmp"
    tmp.write_text(json.dumps({"version": version, "path": model}))
    os.replace(tmp, registry / "current.json")


def _wait_for(out, names, timeout=60.0):
    """Block until every file name has a ledger entry (labelled or dead)."""
    end = time.time() + timeout
    while time.time() < end:
        done = {os.path.basename(e["path"]) for e in ledger_entries(str(out))}
        if set(names) <= done:
            return
        time.sleep(0.1)
    raise AssertionError(f"{names} not processed in {timeout} s")


def _query(out, sql):
    con, _ = open_tables(str(out))
    return run_query(con, sql).to_pylist()


@pytest.fixture(scope="module")
def stream(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream")
    src, watch, out, registry = (root / n for n in ("src", "watch", "tables", "registry"))
    for d in (src, watch, registry):
        d.mkdir()
    _promote(registry, "v1")
    for name, bright in (
        ("scene_20240101.tif", True),
        ("scene_20240102.tif", False),
        ("scene_20240103.tif", True),
        ("scene_20240104.tif", True),
        ("scene_20240105.tif", False),
    ):
        _scene(src / name, bright)
    config = StreamConfig(
        watch=str(watch / "*.tif"),
        registry=str(registry),
        out=str(out),
        poll_seconds=POLL,
        max_polls=14,
        pictures=False,
    )
    errors = []

    def drop_files():
        try:
            shutil.copy(src / "scene_20240101.tif", watch)
            (watch / "corrupt.tif").write_bytes(b"II*\x00" + os.urandom(3000))
            # A slow writer: half the bytes, a pause of most of a poll, the rest.
            data = (src / "scene_20240102.tif").read_bytes()
            with open(watch / "scene_20240102.tif", "wb") as f:
                f.write(data[: len(data) // 2])
                f.flush()
                time.sleep(0.9 * POLL)
                f.write(data[len(data) // 2 :])
            _wait_for(out, ["scene_20240101.tif", "scene_20240102.tif", "corrupt.tif"])
            # Duplicates: the same file touched again and copied again.
            os.utime(watch / "scene_20240101.tif")
            shutil.copy(src / "scene_20240102.tif", watch)
            _promote(registry, "v2")
            shutil.copy(src / "scene_20240103.tif", watch)
            _wait_for(out, ["scene_20240103.tif"])
        except Exception as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=drop_files, daemon=True)
    thread.start()
    first = run_stream(config, ["--direct_num_workers=1"], save_main_session=False)
    thread.join(timeout=5)
    assert not errors, errors
    # Restart: the old files are skipped, a new one is labelled by the current model.
    shutil.copy(src / "scene_20240104.tif", watch)
    second = run_stream(
        StreamConfig(**{**config.__dict__, "max_polls": 4}),
        ["--direct_num_workers=1"],
        save_main_session=False,
    )
    return {"out": out, "first": first, "second": second}


def test_each_good_scene_once_in_tile_labels(stream):
    rows = _query(
        stream["out"],
        "select scene_id, count(*) n, count(distinct model_version) v, min(model_version) mv "
        "from tile_labels group by scene_id order by scene_id",
    )
    # 48 px scenes, 16 px tiles, stride 8: 5 x 5 tiles each.
    assert rows == [
        {"scene_id": "scene_20240101", "n": 25, "v": 1, "mv": "v1"},
        {"scene_id": "scene_20240102", "n": 25, "v": 1, "mv": "v1"},
        {"scene_id": "scene_20240103", "n": 25, "v": 1, "mv": "v2"},
        {"scene_id": "scene_20240104", "n": 25, "v": 1, "mv": "v2"},
    ]


def test_partial_write_waited_for_and_corrupt_file_dead_lettered_once(stream):
    dead = _query(stream["out"], "select input, stage from dead_letter")
    assert [os.path.basename(d["input"]) for d in dead] == ["corrupt.tif"]
    entries = {os.path.basename(e["path"]): e for e in ledger_entries(str(stream["out"]))}
    assert entries["corrupt.tif"]["status"] == "dead"
    assert entries["scene_20240102.tif"]["status"] == "labelled"
    assert entries["scene_20240102.tif"]["size"] == os.path.getsize(
        stream["out"].parent / "src" / "scene_20240102.tif"
    )


def test_model_promoted_mid_stream_and_restart(stream):
    first, second = stream["first"], stream["second"]
    assert first["labelled"] == 3 and first["dead_lettered"] == 1
    assert first["model_versions"] == ["v1", "v2"]
    # The re-touched and re-copied files were recognised by their bytes.
    assert first["skipped"] >= 2
    assert second["labelled"] == 1 and second["dead_lettered"] == 0
    assert second["skipped"] >= 4
    assert second["model_versions"] == ["v2"]
    sites = _query(stream["out"], "select kind, model_version from sites")
    assert {s["model_version"] for s in sites} <= {"v1", "v2"}


def test_cli_refuses_an_endless_local_stream(tmp_path):
    from click.testing import CliRunner

    from minewatch.cli.stream import stream as stream_cmd

    registry = tmp_path / "registry"
    registry.mkdir()
    _promote(registry, "v1")
    args = ["--watch", str(tmp_path / "*.tif"), "--model", str(registry), "--out", str(tmp_path)]
    result = CliRunner().invoke(stream_cmd, args)
    assert result.exit_code == 2
    assert "--max-polls" in result.output


def test_cli_labels_files_present_at_start(tmp_path):
    from click.testing import CliRunner

    from minewatch.cli.stream import stream as stream_cmd

    registry, watch, out = tmp_path / "registry", tmp_path / "watch", tmp_path / "tables"
    registry.mkdir()
    watch.mkdir()
    _promote(registry, "v1")
    _scene(watch / "scene_20240201.tif", True)
    args = ["--watch", str(watch), "--model", str(registry), "--out", str(out)]
    args += ["--poll-seconds", "0.5", "--max-polls", "4", "--no-pictures"]
    result = CliRunner().invoke(stream_cmd, [*args, "--direct_num_workers=1"])
    assert result.exit_code == 0, result.output
    assert "labelled" in result.output and "scene_20240201.tif" in result.output
    rows = _query(out, "select count(*) n from tile_labels where model_version = 'v1'")
    assert rows == [{"n": 25}]
