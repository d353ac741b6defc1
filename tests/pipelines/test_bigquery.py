"""BigQuery output of the inference tables, without network.

Rows come from a real inference job (the oracle model of tests/factories.py on
tiny scenes; frame rows are built as the job builds them), converted to
BigQuery JSON rows and checked against the BigQuery schema; the write itself
is built on the real DataflowRunner with ``--dry_run=True`` (nothing is
submitted, nothing reaches Google).
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import numpy as np
import pyarrow.dataset as ds
import pytest
import shapely

from minewatch.errors import ConfigError
from minewatch.tables import INFER_TABLES
from pipelines.bigquery import (
    BIGQUERY_TABLES,
    KEYS,
    PARTITION_FIELDS,
    BigQueryTarget,
    WriteTablesToBigQuery,
    merge_sql,
    parse_target,
    table_fields,
    to_bigquery_row,
)
from tests.deploy.conftest import no_network  # noqa: F401 (a fixture, used by name)
from tests.deploy.test_dataflow_graphs import dataflow_pipeline, names
from tests.factories import save_oracle, squares_scene


def frame_rows():
    """frame_labels rows as the infer job makes them for two belt-camera frames."""
    return [
        {
            "frame_id": f"belt1_2024011{i}T08000{i}",
            "source": f"/data/frames/belt1/2024011{i}T08000{i}.png",
            "camera_id": "belt1",
            "acquired": datetime(2024, 1, 10 + i, 8, 0, i, tzinfo=UTC),
            "grade": grade,
            "label": i,
            "score": np.float32(0.9),
            "probabilities": [np.float32(0.9), np.float32(0.1)][:: 1 - 2 * i],
            "tiles": np.int32(9),
            "model_version": "20240101T000000Z-0123abcd",
        }
        for i, grade in enumerate(("low", "high"))
    ]


def frame_summary_rows():
    """frame_summaries rows as the stream makes them, over the frames of frame_rows."""
    from pipelines.stream.frames import window_summary

    start = datetime(2024, 1, 10, 8, 0, tzinfo=UTC).timestamp()
    return [window_summary("belt1", start, start + 60.0, frame_rows(), ("low", "high"))]


def vessel_rows():
    """vessels rows as the infer job makes them (minewatch.vessels.judge_vessels), one flagged."""
    from minewatch.vessels import Detection, Port, PortRegistry, judge_vessels

    detections = [
        Detection(
            x=x, y=4_100_000.0, length_m=180.0, width_m=30.0, heading_deg=45.0, area_m2=5400.0,
            pixels=54, score=0.9, rectangle=shapely.box(x - 90, 4_099_985, x + 90, 4_100_015),
            gap_m=gap, shore_x=x if gap is not None else None,
            shore_y=4_100_030.0 if gap is not None else None,
            shore_distance_m=30.0 if gap is not None else None, berthed=gap == 0.0,
        )
        for x, gap in ((500_000.0, 0.0), (503_000.0, None))
    ]  # fmt: skip
    ports = PortRegistry(
        [Port("port-01", "Jetty", "EXP-1", 500.0, shapely.Point(506_000, 4_100_000))],
        "EPSG:32633",
    )
    rows = judge_vessels(
        detections,
        "EPSG:32633",
        scene_id="scene_2024-01-01",
        acquired="2024-01-01T10:30:00Z",
        model_version="v1",
        ports=ports,
    )
    assert [r["flagged"] for r in rows] == [True, False]
    return rows


@pytest.fixture(scope="module")
def real_rows(tmp_path_factory):
    """Each table's rows as the infer job writes them (frames: see frame_rows and
    frame_summary_rows)."""
    from pipelines.infer import run

    root = tmp_path_factory.mktemp("bq")
    scenes = root / "scenes"
    scenes.mkdir()
    squares_scene(scenes, [(16, 16, 32)], "2024-01-01")
    squares_scene(scenes, [(16, 16, 48)], "2024-02-01")
    out = root / "tables"
    args = ["--site-classes", "stockpile", "--mining-classes", "stockpile", "--stride", "8"]
    run([str(scenes), "--model", save_oracle(root / "model"), "--out", str(out), *args])
    rows = {"frame_summaries": frame_summary_rows()}
    for table in INFER_TABLES:
        schema = INFER_TABLES[table]
        if table == "frame_labels":  # scenes make no frame rows: see frame_rows
            rows[table] = frame_rows()
            continue
        if table == "vessels":  # the oracle has no vessel class: see vessel_rows
            rows[table] = vessel_rows()
            continue
        data = ds.dataset(out / table, format="parquet", partitioning="hive", schema=schema())
        rows[table] = data.to_table(columns=schema().names).to_pylist()
    return rows


def test_every_inference_table_has_a_bigquery_key():
    """A new inference or stream table needs its MERGE key and partition column here."""
    from pipelines.stream.job import STREAM_TABLES

    assert set(KEYS) == set(BIGQUERY_TABLES) == set(PARTITION_FIELDS) == set(STREAM_TABLES)
    assert set(INFER_TABLES) <= set(BIGQUERY_TABLES)


@pytest.mark.parametrize("table", sorted(KEYS))
def test_real_rows_convert_to_the_bigquery_schema(real_rows, table):
    rows = real_rows[table]
    assert rows, f"the infer job wrote no {table} row"
    fields = {f["name"]: f for f in table_fields(table)}
    for row in rows:
        bq = to_bigquery_row(table, row)
        assert list(bq) == list(fields)
        json.dumps(bq, allow_nan=False)  # what the load file holds
        for name, value in bq.items():
            kind, mode = fields[name]["type"], fields[name]["mode"]
            values = value if mode == "REPEATED" else [value]
            if mode == "REPEATED":
                assert isinstance(value, list)
            for v in values:
                if v is None:
                    continue
                if kind == "GEOGRAPHY":
                    geom = shapely.from_wkt(v)
                    assert geom.equals_exact(shapely.from_wkb(row[name]), 1e-9)
                    lon, lat = geom.centroid.x, geom.centroid.y
                    assert -180 <= lon <= 180 and -90 <= lat <= 90
                elif kind == "TIMESTAMP":
                    assert datetime.fromisoformat(v) == row[name]
                else:
                    expected = {"STRING": str, "INT64": int, "FLOAT64": float, "BOOL": bool}[kind]
                    assert isinstance(v, expected), (name, v)
        for key in KEYS[table]:
            assert bq[key] is not None, key
        assert bq[PARTITION_FIELDS[table]] is not None


@pytest.mark.parametrize("table", ["sites", "vessels"])
def test_projected_geometry_is_wkt_text(real_rows, table):
    row = real_rows[table][0]
    fields = {f["name"]: f["type"] for f in table_fields(table)}
    assert fields["geometry"] == "GEOGRAPHY" and fields["geometry_source"] == "STRING"
    bq = to_bigquery_row(table, row)
    assert shapely.from_wkt(bq["geometry_source"]).equals(shapely.from_wkb(row["geometry_source"]))
    # the projected outline keeps its metres: far outside any longitude or latitude
    assert shapely.from_wkt(bq["geometry_source"]).centroid.y > 1000
    if table == "sites":
        assert bq["scene_ids"] == row["scene_ids"] and len(bq["scene_ids"]) >= 1


def test_bigquery_schema_maps_geometry_by_its_crs():
    from minewatch.tables import GEOMETRY_COLUMNS, bigquery_schema

    for table, columns in GEOMETRY_COLUMNS.items():
        fields = {f["name"]: f["type"] for f in bigquery_schema(table, INFER_TABLES[table]())}
        for column, crs in columns.items():
            assert fields[column] == ("GEOGRAPHY" if crs else "STRING"), (table, column)


def test_special_values():
    row = {f.name: None for f in INFER_TABLES["tile_labels"]()}
    row.update(
        tile_id="t1",
        model_version="v1",
        acquired=datetime(2024, 1, 1, 10, 30),
        score=float("nan"),
        probabilities=None,
        label=np.int32(3),
    )
    bq = to_bigquery_row("tile_labels", row)
    assert bq["acquired"] == "2024-01-01T10:30:00+00:00"
    assert bq["score"] is None and bq["probabilities"] == [] and bq["label"] == 3
    assert isinstance(bq["label"], int)
    del row["geometry"]
    with pytest.raises(ValueError, match="no column 'geometry'"):
        to_bigquery_row("tile_labels", row)


def test_bytes_are_base64():
    # No inference table has a plain BYTES column today; the mapping is still there.
    from pipelines.bigquery import _scalar

    assert base64.b64decode(_scalar("BYTES", b"\x00\xff")) == b"\x00\xff"


@pytest.mark.parametrize(
    ("out", "target"),
    [
        (
            "bq://minewatch-prod.mining.nightly",
            BigQueryTarget("minewatch-prod", "mining", "nightly"),
        ),
        ("bq://minewatch-prod.mining", BigQueryTarget("minewatch-prod", "mining", "")),
    ],
)
def test_parse_target(out, target):
    assert parse_target(out) == target


@pytest.mark.parametrize(
    "out", ["bq://p.d", "bq://minewatch-prod", "gs://b/x", "bq://minewatch-prod.da-sh.x"]
)
def test_bad_target_is_refused(out):
    with pytest.raises(ConfigError, match=r"bq://PROJECT\.DATASET\[\.PREFIX\]"):
        parse_target(out)


def test_merge_sql_keys_partitions_and_columns():
    target = BigQueryTarget("minewatch-prod", "mining", "nightly")
    create, merge, drop = merge_sql(target, "stockpile_series", "minewatch-prod:mining.s1")
    assert create.startswith("CREATE TABLE IF NOT EXISTS `minewatch-prod.mining.nightly_stockpile")
    assert "PARTITION BY DATE(acquired)" in create
    on = merge.split(" ON ", 1)[1].split(" WHEN ", 1)[0]
    assert on.count("IS NOT DISTINCT FROM") == 3
    for key in ("site_id", "scene_id", "model_version"):
        assert f"T.{key} IS NOT DISTINCT FROM S.{key}" in on
        assert f"{key} = S.{key}" not in merge  # keys are matched, never updated
    assert "area_m2 = S.area_m2" in merge and "change_m2 = S.change_m2" in merge
    assert drop == "DROP TABLE IF EXISTS `minewatch-prod.mining.s1`"


def _rows_like(real_rows):
    """Rows with the tables' columns and JSON-picklable values (for beam.Create)."""
    return {table: rows[:3] for table, rows in real_rows.items()}


@pytest.mark.dataflow
@pytest.mark.usefixtures("no_network")
def test_dataflow_job_graph_has_the_bigquery_writes(real_rows):
    import apache_beam as beam

    pipeline = dataflow_pipeline()
    tables = {
        table: pipeline | f"Rows/{table}" >> beam.Create(rows)
        for table, rows in _rows_like(real_rows).items()
    }
    write = WriteTablesToBigQuery("bq://minewatch-prod.mining.nightly", run_id="r1")
    merged = tables | "BigQuery" >> write
    assert set(merged) == set(KEYS)
    result = pipeline.run()
    steps = names(result.job)
    for table in KEYS:
        for step in ("ToJson", "Load", "Merge"):
            assert f"BigQuery/{table}/{step}" in steps, (table, step)
        loads = [s for s in steps if s.startswith(f"BigQuery/{table}/Load/")]
        assert any("TriggerLoadJobs" in s for s in loads), loads
    assert write.staging_id("sites") == "minewatch-prod:mining.nightly_sites__staging_r1"


def test_unknown_table_is_refused():
    import apache_beam as beam

    p = beam.Pipeline()
    with pytest.raises(ValueError, match="no BigQuery mapping"):
        _ = {"manifest": p | beam.Create([{}])} | WriteTablesToBigQuery("bq://minewatch-prod.d")


def test_timestamps_in_utc():
    from datetime import timedelta, timezone

    row = {f.name: None for f in INFER_TABLES["stockpile_series"]()}
    row.update(
        site_id="s",
        scene_id="x",
        model_version="v",
        acquired=datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))),
    )
    assert (
        to_bigquery_row("stockpile_series", row)["acquired"]
        == datetime(2024, 1, 1, 10, tzinfo=UTC).isoformat()
    )
