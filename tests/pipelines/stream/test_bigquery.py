"""``minewatch stream --bigquery``: each unit's rows reach BigQuery as upserts, stale sites go.

No network. The stream runs for real on the DirectRunner and hands its rows to
:class:`pipelines.bigquery.UpsertRows`, whose client is a recorder (Beam's
``test_client`` idiom): it keeps every load and statement in a folder.
Replaying the loads by key gives the rows BigQuery would hold, which must be
the stream's own Parquet tables; the statements are checked apart.
"""

from __future__ import annotations

import os
import shutil
import threading

from pipelines.bigquery import DELETE_FLAG, BigQueryTarget, UpsertRows, upsert_sql
from pipelines.stream import StreamConfig, run_stream
from tests.pipelines.stream.recorder import TARGET, RecordingClient, recorded_calls, replay
from tests.pipelines.stream.test_job import _promote, _query, _scene, _wait_for


def test_stream_upserts_every_table_and_deletes_the_site_an_earlier_scene_renames(tmp_path):
    watch, out, registry, src, calls = (
        tmp_path / n for n in ("watch", "tables", "registry", "src", "calls")
    )
    for d in (watch, registry, src, calls):
        d.mkdir()
    _promote(registry, "v1")
    # The later acquisition lands first; the earlier one then becomes the site's first
    # sighting, which renames the site (its id comes from the first sighting).
    late, early = _scene(src / "scene_20240103.tif", True), _scene(src / "scene_20240101.tif", True)
    errors = []

    def drop():
        try:
            shutil.copy(late, watch)
            _wait_for(out, ["scene_20240103.tif"])
            shutil.copy(early, watch)
            _wait_for(out, ["scene_20240101.tif"])
        except Exception as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    config = StreamConfig(
        watch=str(watch),
        registry=str(registry),
        out=str(out),
        poll_seconds=1.0,
        max_polls=14,
        pictures=False,
        bigquery=TARGET,
    )
    thread = threading.Thread(target=drop, daemon=True)
    thread.start()
    result = run_stream(
        config,
        ["--direct_num_workers=1"],
        save_main_session=False,
        bigquery_client=RecordingClient(calls),
    )
    thread.join(5)
    assert not errors, errors
    assert result["labelled"] == 2
    recorded = recorded_calls(calls)
    held, deleted = replay(recorded)

    tiles = _query(out, "select tile_id, model_version from tile_labels")
    assert len(tiles) == 2 * 25
    assert set(held["tile_labels"]) == {(r["tile_id"], r["model_version"]) for r in tiles}
    sites = _query(out, "select site_id, model_version, acquisitions from sites")
    assert len(sites) == 1 and sites[0]["acquisitions"] == 2
    assert set(held["sites"]) == {(s["site_id"], s["model_version"]) for s in sites}
    assert {r["acquisitions"] for r in held["sites"].values()} == {2}
    # the name the site had after the first scene was deleted, not left beside the new one
    assert len(deleted["sites"]) == 1 and deleted["sites"][0] not in held["sites"]
    for table in ("site_observations", "stockpile_series"):
        rows = _query(out, f"select site_id, scene_id, model_version from {table}")
        assert len(rows) == 2
        assert set(held[table]) == {(r["site_id"], r["scene_id"], r["model_version"]) for r in rows}
    # every load is merged into its table and dropped, in that order
    for i, call in enumerate(recorded):
        if "load" in call:
            staging = "`" + call["load"] + "`"
            create, merge, drop = (c["query"] for c in recorded[i + 1 : i + 4])
            assert create.startswith("CREATE TABLE IF NOT EXISTS `minewatch-test.mining.")
            assert merge.startswith("MERGE `minewatch-test.mining.") and staging in merge
            assert drop == f"DROP TABLE IF EXISTS {staging}"
            assert call["fields"][-1] == DELETE_FLAG


def test_upsert_sql_deletes_flagged_keys_and_never_inserts_them():
    target = BigQueryTarget("minewatch-prod", "mining", "live")
    create, merge, drop = upsert_sql(target, "sites", "minewatch-prod:mining.s1")
    assert create.startswith("CREATE TABLE IF NOT EXISTS `minewatch-prod.mining.live_sites`")
    assert DELETE_FLAG not in create  # the target has the table's columns only
    assert f"WHEN MATCHED AND S.{DELETE_FLAG} THEN DELETE" in merge
    assert f"WHEN NOT MATCHED AND NOT S.{DELETE_FLAG} THEN INSERT" in merge
    assert merge.index("THEN DELETE") < merge.index("THEN UPDATE")
    assert drop == "DROP TABLE IF EXISTS `minewatch-prod.mining.s1`"


def test_an_empty_unit_loads_nothing(tmp_path):
    upsert = UpsertRows(TARGET, "r1", test_client=RecordingClient(tmp_path))
    upsert.setup()
    assert list(upsert.process(("sites", [], []))) == []
    assert os.listdir(tmp_path) == []
