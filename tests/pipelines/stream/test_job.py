"""Streaming mode on the DirectRunner: real polls, files dropped while it runs, a restart."""

from __future__ import annotations

import collections
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest

from minewatch.query import open_tables, run_query
from pipelines.stream import StreamConfig, bound_local_metrics, ledger_entries, run_stream
from tests.factories import save_oracle, write_raster
from tests.pipelines.stream.recorder import TARGET, RecordingClient, recorded_calls, replay

POLL = 1.0


def _scene(path, bright, size=48):
    data = np.full((3, size, size), 100, np.uint16)
    data[:, :16, :16] = 1000 if bright else 100
    return write_raster(path, data, descriptions=("B02", "B03", "B04"))


def _band(path, bright, size=48):
    data = np.full((size, size), 100, np.uint16)
    data[:16, :16] = 1000 if bright else 100
    return write_raster(path, data)


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
        watch=str(watch),
        registry=str(registry),
        out=str(out),
        poll_seconds=POLL,
        max_polls=18,
        pictures=False,
        compact_every=3,
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
            # A band folder filled one band at a time, each pause longer than a poll.
            band_dir = watch / "s2_20240106"
            band_dir.mkdir()
            for band in ("B02", "B03", "B04"):
                _band(band_dir / f"s2_{band}.tif", bright=band == "B02")
                time.sleep(1.6 * POLL)
            _wait_for(
                out, ["scene_20240101.tif", "scene_20240102.tif", "corrupt.tif", "s2_20240106"]
            )
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
        StreamConfig(**{**config.__dict__, "max_polls": 6}),
        ["--direct_num_workers=1"],
        save_main_session=False,
    )
    return {"out": out, "first": first, "second": second}


def test_counters_of_a_long_local_stream_are_read_back(stream):
    # Beam's FnApiRunner nests one lazy generator per bundle over the metrics (thousands
    # in an 18-poll stream): unbounded memory, and reading them raised RecursionError.
    first = stream["first"]
    assert first["polls"] == 18
    assert first["counters"]["units_labelled"] == first["labelled"] > 0
    assert first["counters"]["units_dead_lettered"] == first["dead_lettered"] > 0


def test_local_runner_merges_each_bundles_metrics_at_once():
    import apache_beam as beam
    from apache_beam.metrics import Metrics
    from apache_beam.metrics import monitoring_infos as mi
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.transforms.periodicsequence import PeriodicImpulse

    assert bound_local_metrics() and bound_local_metrics()  # idempotent
    merged = fn_runner.consolidate_monitoring_infos(
        iter([mi.int64_user_counter("ns", "c", 2), mi.int64_user_counter("ns", "c", 3)])
    )
    assert isinstance(merged, list) and [mi.extract_counter_value(m) for m in merged] == [5]
    # A real idle stream: its busy-looping impulse runs many bundles, all merged.
    options = PipelineOptions(["--streaming", "--direct_num_workers=1"])
    start = time.time() + 0.5
    pipeline = beam.Pipeline(options=options)
    _ = (
        pipeline
        | PeriodicImpulse(start_timestamp=start, stop_timestamp=start + 1.4, fire_interval=0.5)
        | beam.Map(lambda t: Metrics.counter("test", "ticks").inc())
    )
    result = pipeline.run()
    result.wait_until_finish()
    ticks = result.metrics().query(beam.metrics.MetricsFilter().with_name("ticks"))["counters"]
    assert [c.committed for c in ticks] == [3]


def test_each_good_scene_once_in_tile_labels(stream):
    rows = _query(
        stream["out"],
        "select scene_id, count(*) n, count(distinct model_version) v, min(model_version) mv "
        "from tile_labels group by scene_id order by scene_id",
    )
    # 48 px scenes, 16 px tiles, stride 8: 5 x 5 tiles each.
    assert rows == [
        {"scene_id": "s2_20240106", "n": 25, "v": 1, "mv": "v1"},
        {"scene_id": "scene_20240101", "n": 25, "v": 1, "mv": "v1"},
        {"scene_id": "scene_20240102", "n": 25, "v": 1, "mv": "v1"},
        {"scene_id": "scene_20240103", "n": 25, "v": 1, "mv": "v2"},
        {"scene_id": "scene_20240104", "n": 25, "v": 1, "mv": "v2"},
    ]


def test_band_folder_waited_for_until_complete(stream):
    entries = {os.path.basename(e["path"]): e for e in ledger_entries(str(stream["out"]))}
    folder = entries["s2_20240106"]
    assert folder["status"] == "labelled"
    assert [os.path.basename(f) for f in folder["files"]] == [
        "s2_B02.tif",
        "s2_B03.tif",
        "s2_B04.tif",
    ]
    # Never labelled (or dead-lettered) as a lone band while it was being filled.
    assert not any(name.startswith("s2_B0") for name in entries)


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
    assert first["labelled"] == 4 and first["dead_lettered"] == 1
    assert first["model_versions"] == ["v1", "v2"]
    # The re-touched and re-copied files were recognised by their bytes: their
    # entries are the first ones (the stat before the touch and the copy).
    entries = {os.path.basename(e["path"]): e for e in ledger_entries(str(stream["out"]))}
    for name in ("scene_20240101.tif", "scene_20240102.tif"):
        assert entries[name]["mtime"] < os.path.getmtime(stream["out"].parent / "watch" / name)
    # The restart skipped the five units done before and labelled only the new one.
    assert second["labelled"] == 1 and second["dead_lettered"] == 0
    assert [os.path.basename(e["path"]) for e in second["entries"]] == ["scene_20240104.tif"]
    assert second["model_versions"] == ["v2"]


def test_sites_linked_per_area_and_version_across_the_restart(stream):
    rows = _query(
        stream["out"],
        "select model_version, scene_ids from sites where kind = 'stockpile' order by 1, 2",
    )
    # v1: the dark scene_20240102 between scene_20240101 and the band folder
    # breaks the series; v2: scene_20240103, then, after the restart,
    # scene_20240104, linked through the area's durable record.
    assert rows == [
        {"model_version": "v1", "scene_ids": ["s2_20240106"]},
        {"model_version": "v1", "scene_ids": ["scene_20240101"]},
        {"model_version": "v2", "scene_ids": ["scene_20240103", "scene_20240104"]},
    ]


def test_ledger_compacted_into_buckets(stream):
    ledger = stream["out"] / "_ledger"
    buckets = list((ledger / "index").glob("*.jsonl"))
    loose = list(ledger.glob("*.json"))
    assert buckets and len(buckets) <= 256
    # Two keys per unit (stat and bytes): most were merged into the buckets.
    assert len(loose) < 2 * len(ledger_entries(str(stream["out"])))
    assert not (ledger / "runs").exists()
    assert len({e["key"] for e in ledger_entries(str(stream["out"]))}) == 6


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
    sub = ["--subscription", "projects/p/subscriptions/s", "--max-polls", "1"]
    result = CliRunner().invoke(stream_cmd, [*args, *sub])
    assert result.exit_code == 2
    assert "--subscription" in result.output and "DataflowRunner" in result.output


def test_cli_labels_files_present_at_start(tmp_path):
    from click.testing import CliRunner

    from minewatch.cli.stream import stream as stream_cmd

    registry, watch, out = tmp_path / "registry", tmp_path / "watch", tmp_path / "tables"
    registry.mkdir()
    watch.mkdir()
    _promote(registry, "v1")
    _scene(watch / "scene_20240201.tif", True)
    args = ["--watch", str(watch), "--model", str(registry), "--out", str(out)]
    args += ["--poll-seconds", "0.5", "--max-polls", "6", "--no-pictures"]
    result = CliRunner().invoke(stream_cmd, [*args, "--direct_num_workers=1"])
    assert result.exit_code == 0, result.output
    assert "labelled" in result.output and "scene_20240201.tif" in result.output
    rows = _query(out, "select count(*) n from tile_labels where model_version = 'v1'")
    assert rows == [{"n": 25}]


def test_cli_site_options_reach_the_per_scene_step(tmp_path):
    from minewatch.cli.stream import stream as stream_cmd
    from minewatch.registry import resolve_model
    from pipelines.stream import stream_config

    registry = tmp_path / "registry"
    registry.mkdir()
    _promote(registry, "v1")
    args = ["--watch", str(tmp_path), "--model", str(registry), "--out", str(tmp_path / "t")]
    args += ["--max-polls", "1", "--smooth", "3", "--min-score", "0.6", "--min-area", "500"]
    config, _ = stream_config(stream_cmd.make_context("stream", args).params)
    infer = config.infer_config(resolve_model(str(registry)), str(tmp_path / "a.tif"))
    assert (infer.sites.smooth, infer.sites.min_score, infer.sites.min_area_m2) == (3, 0.6, 500.0)


# -- camera frames -----------------------------------------------------------------


def _frame(folder, when, level):
    rgb = np.full((3, 32, 32), level, np.uint8)
    name = f"{when:%Y%m%dT%H%M%S}.png"
    return write_raster(folder / name, rgb, crs=None, driver="PNG")


def _minute(when):
    return when.replace(second=0, microsecond=0)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    from datetime import UTC, datetime, timedelta

    root = tmp_path_factory.mktemp("frames")
    cams, out, registry = root / "cams", root / "tables", root / "registry"
    (cams / "belt1").mkdir(parents=True)
    registry.mkdir()
    calls = root / "bigquery"
    calls.mkdir()
    model = save_oracle(
        registry / "versions" / "f1",
        version="f1",
        bands=("red", "green", "blue"),
        task="frame",
        classes=("low", "high"),
        threshold=128.0,
    )
    (registry / "current.json").write_text(json.dumps({"version": "f1", "path": model}))
    now = datetime.now(UTC).replace(microsecond=0)
    recent = [now - timedelta(seconds=s) for s in (30, 29, 28)]
    for when, level in zip(recent, (40, 220, 230), strict=True):
        _frame(cams / "belt1", when, level)
    _frame(cams / "belt1", now - timedelta(hours=2), 220)  # far later than allowed
    config = StreamConfig(
        watch=str(cams),
        registry=str(registry),
        out=str(out),
        poll_seconds=0.5,
        max_polls=8,
        pictures=False,
        frame_window=60.0,
        allowed_lateness=600.0,
        bigquery=TARGET,  # rows also go to BigQuery (a recorder: no network)
    )
    client = RecordingClient(calls)
    args = ["--direct_num_workers=1"]
    first = run_stream(config, args, save_main_session=False, bigquery_client=client)
    # A restart inside the same windows: one more frame, the earlier rows kept.
    extra = now - timedelta(seconds=27)
    _frame(cams / "belt1", extra, 235)
    second = run_stream(config, args, save_main_session=False, bigquery_client=client)
    return {
        "out": out,
        "first": first,
        "second": second,
        "recent": [*recent, extra],
        "bigquery": recorded_calls(calls),
    }


def test_frames_get_rows_and_windowed_summaries(frames):
    rows = _query(
        frames["out"], "select camera_id, grade, model_version from frame_labels order by acquired"
    )
    assert [r["grade"] for r in rows] == ["low", "high", "high", "high"]
    assert {(r["camera_id"], r["model_version"]) for r in rows} == {("belt1", "f1")}
    summaries = _query(
        frames["out"],
        "select window_start, window_end, frames, grade, grade_counts, classes "
        "from frame_summaries order by window_start",
    )
    expected = collections.Counter(_minute(t) for t in frames["recent"])
    assert [(s["window_start"], s["frames"]) for s in summaries] == sorted(expected.items())
    assert sum(s["grade_counts"][1] for s in summaries) == 3
    assert all(s["classes"] == ["low", "high"] for s in summaries)
    assert all((s["window_end"] - s["window_start"]).total_seconds() == 60 for s in summaries)


def test_frame_rows_and_summaries_reach_bigquery_as_upserts(frames):
    held, deleted = replay(frames["bigquery"])
    assert not deleted
    rows = _query(frames["out"], "select frame_id, model_version, grade from frame_labels")
    assert {k: r["grade"] for k, r in held["frame_labels"].items()} == {
        (r["frame_id"], r["model_version"]): r["grade"] for r in rows
    }
    summaries = _query(frames["out"], "select camera_id, window_start, frames from frame_summaries")
    # the restart's frame updated its window's summary row in place (same key)
    assert len(held["frame_summaries"]) == len(summaries)
    assert sorted(r["frames"] for r in held["frame_summaries"].values()) == sorted(
        s["frames"] for s in summaries
    )
    assert "tile_labels" in held and "sites" not in held  # frames make no sites


def test_late_frame_dead_lettered_once_and_counts_add_up(frames):
    dead = _query(frames["out"], "select kind, stage, reason from dead_letter")
    assert len(dead) == 1 and dead[0]["kind"] == "frame" and dead[0]["stage"] == "window"
    assert "allowed lateness 600 s" in dead[0]["reason"]
    first, second = frames["first"], frames["second"]
    assert (first["labelled"], first["late"], first["dead_lettered"]) == (3, 1, 0)
    assert (second["labelled"], second["late"]) == (1, 0) and len(second["entries"]) == 1
    # Every frame has its tile rows; 4 frames summarised + 1 late = 5 inputs.
    tiles = _query(frames["out"], "select count(distinct scene_id) n from tile_labels")
    assert tiles == [{"n": 5}]


# -- notifications, ledger, model handler, units -----------------------------------


def _notification(bucket, name, size=1000, event="OBJECT_FINALIZE", data=None):
    from apache_beam.io.gcp.pubsub import PubsubMessage

    resource = {
        "kind": "storage#object",
        "id": f"{bucket}/{name}/1700000000000000",
        "name": name,
        "bucket": bucket,
        "generation": "1700000000000000",
        "contentType": "image/tiff",
        "size": str(size),
        "updated": "2024-03-01T10:00:00.000Z",
        "md5Hash": "1B2M2Y8AsgTpgAmY7PhCfg==",
    }
    attributes = {
        "bucketId": bucket,
        "objectId": name,
        "objectGeneration": "1700000000000000",
        "eventType": event,
        "payloadFormat": "JSON_API_V1",
        "notificationConfig": f"projects/_/buckets/{bucket}/notificationConfigs/1",
        "eventTime": "2024-03-01T10:00:00.000000Z",
    }
    return PubsubMessage(data if data is not None else json.dumps(resource).encode(), attributes)


def _unit_names(unit):
    return unit.source, tuple(os.path.basename(p) for p, _, _ in unit.files)


def test_gcs_notifications_become_the_same_units(tmp_path):
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline
    from apache_beam.testing.util import assert_that, equal_to

    from pipelines.stream.sources import GcsNotifications

    registry = tmp_path / "registry"
    registry.mkdir()
    _promote(registry, "v1")  # bands B02, B03, B04
    config = StreamConfig(watch="gs://bkt/in/**", registry=str(registry), out=str(tmp_path))
    messages = [
        _notification("bkt", "in/scene_20240101.tif"),
        _notification("bkt", "in/s2_20240102/s2_B02.tif"),
        _notification("bkt", "in/s2_20240102/s2_B03.tif"),
        _notification("bkt", "in/s2_20240102/s2_B04.tif"),
        _notification("bkt", "in/cam1/20240301T100000.png"),
        _notification("bkt", "in/old.tif", event="OBJECT_DELETE"),
        _notification("other", "in/x.tif"),
        _notification("bkt", "in/broken.tif", data=b"{not json"),
    ]
    with TestPipeline() as p:
        found = p | beam.Create(messages) | GcsNotifications(config)
        assert_that(
            found["units"] | beam.Map(_unit_names),
            equal_to(
                [
                    ("gs://bkt/in/scene_20240101.tif", ("scene_20240101.tif",)),
                    ("gs://bkt/in/s2_20240102", ("s2_B02.tif", "s2_B03.tif", "s2_B04.tif")),
                    ("gs://bkt/in/cam1/20240301T100000.png", ("20240301T100000.png",)),
                ]
            ),
        )
        assert_that(
            found["dead"] | beam.Map(lambda d: (d["input"], d["stage"])),
            equal_to([("gs://bkt/in/broken.tif", "notify")]),
            label="Dead",
        )


def test_compaction_keeps_every_key_findable(tmp_path):
    from minewatch.paths import write_json
    from pipelines.stream.ledger import LedgerIndex, compact_ledger, ledger_path

    out = str(tmp_path)
    keys = [f"{i:040x}" for i in range(0, 2**160, 2**160 // 40)][:40]
    for k in keys:
        write_json(ledger_path(out, k), {"key": k, "path": f"/in/{k}.tif", "status": "labelled"})
        write_json(ledger_path(out, "c-" + k[::-1]), {"key": k})
    assert compact_ledger(out) == 80
    assert not list((tmp_path / "_ledger").glob("*.json"))
    index = LedgerIndex(out, buckets=2)
    assert all(index.has(k) and index.has("c-" + k[::-1]) for k in keys)
    assert not index.has("f" * 40)
    # New entries land loose, then merge into the existing buckets.
    write_json(ledger_path(out, "ab" * 20), {"key": "ab" * 20, "path": "/in/x.tif"})
    assert index.has("ab" * 20) and compact_ledger(out) == 1
    assert index.has("ab" * 20) and len(ledger_entries(out)) == 41
    assert len(list((tmp_path / "_ledger" / "index").glob("*.jsonl"))) <= 256


def test_handler_labels_each_stack_with_the_model_it_was_cut_for(tmp_path):
    from pipelines.stream.models import StreamModelHandler

    low = save_oracle(tmp_path / "low", version="low", threshold=100.0)
    high = save_oracle(tmp_path / "high", version="high", threshold=5000.0)
    handler = StreamModelHandler(os.path.join(low, "saved_model"), batch_size=4)
    models = handler.load_model()
    stack = np.full((3, 16, 16, 3), 1000.0, np.float32)
    paths = [os.path.join(m, "saved_model") for m in (low, high, low)]
    results = list(handler.run_inference([(p, stack) for p in paths], models))
    assert [r.model_id for r in results] == paths
    # Bright tiles: 'stockpile' for the low threshold, 'background' for the high one.
    assert [int(np.argmax(r.inference[0])) for r in results] == [1, 0, 1]
    handler.update_model_path(os.path.join(high, "saved_model"))
    (plain,) = handler.run_inference([stack], models)
    assert plain.model_id.startswith(high)


def test_units_group_band_folders_and_wait_for_the_models_bands():
    from pipelines.stream.sources import list_units

    bands = ("B02", "B03", "B04")
    stat = lambda p: (p, 10, 1.0)  # noqa: E731
    lone = list_units([stat("/w/s2_x/s2_B02.tif")], bands)
    assert lone == [("/w/s2_x", (stat("/w/s2_x/s2_B02.tif"),), False)]
    two = list_units([stat("/w/s2_x/s2_B02.tif"), stat("/w/s2_x/s2_B03.tif")], bands)
    assert [(u[0], len(u[1]), u[2]) for u in two] == [("/w/s2_x", 2, False)]
    files = [stat(f"/w/s2_x/s2_{b}.tif") for b in bands]
    files += [stat("/w/a.tif"), stat("/w/notes.txt"), stat("/w/cam/20240101T000000.png")]
    units = sorted((u[0], len(u[1]), u[2]) for u in list_units(files, bands))
    assert units == [
        ("/w/a.tif", 1, True),
        ("/w/cam/20240101T000000.png", 1, True),
        ("/w/notes.txt", 1, True),
        ("/w/s2_x", 3, True),
    ]
    # A model without a band list: any band folder is complete.
    assert list_units([stat("/w/s2_x/s2_B02.tif")], ()) == [
        ("/w/s2_x/s2_B02.tif", (stat("/w/s2_x/s2_B02.tif"),), True)
    ]
