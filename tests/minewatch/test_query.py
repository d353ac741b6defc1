import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from minewatch.cli.query import query
from minewatch.errors import ConfigError
from minewatch.query import QueryError, format_table, open_tables, run_query


@pytest.fixture
def tables(tmp_path):
    root = tmp_path / "tables"
    sites = pa.table(
        {"site_id": ["a", "b", "c"], "area_m2": [10.0, 250.5, 40.0], "flagged": [False, True, True]}
    )
    for date, idx in (("2024-01-01", [0, 1]), ("2024-02-01", [2])):
        folder = root / "sites" / f"date={date}"
        folder.mkdir(parents=True)
        pq.write_table(sites.take(idx), folder / "part-0.parquet")
    (root / "empty_dir").mkdir()
    secret = tmp_path / "secret.csv"
    secret.write_text("password\nhunter2\n")
    return root, secret


def test_tables_by_folder_with_partitions(tables):
    root, _ = tables
    con, names = open_tables(str(root))
    assert names == ["sites"]
    result = run_query(con, "select site_id, date from sites where flagged order by area_m2 desc")
    assert result.to_pylist() == [
        {"site_id": "b", "date": "2024-01-01"},
        {"site_id": "c", "date": "2024-02-01"},
    ]


@pytest.mark.parametrize(
    ("sql", "message"),
    [
        ("create table x as select 1", "only SELECT"),
        ("copy sites to 'out.csv'", "only SELECT"),
        ("select 1; select 2", "exactly one statement"),
        ("install httpfs", "only SELECT"),
        ("select * from nowhere", "nowhere"),
    ],
)
def test_read_only_and_nothing_else(tables, sql, message):
    con, _ = open_tables(str(tables[0]))
    with pytest.raises(QueryError, match=message):
        run_query(con, sql)


def test_no_files_outside_the_tables_and_no_network(tables):
    root, secret = tables
    con, _ = open_tables(str(root))
    for sql in (
        f"select * from read_csv('{secret}')",
        f"select * from read_parquet('{root}/sites/*/*.parquet')",
        "select * from read_csv('https://example.com/x.csv')",
    ):
        with pytest.raises(QueryError, match=r"Permission|disabled|external"):
            run_query(con, sql)
    with pytest.raises(Exception, match="configuration"):
        con.execute("SET enable_external_access = true")


def test_formats():
    t = pa.table({"a": [1, 2], "b": ["x", None]})
    assert format_table(t, "csv") == "a,b\n1,x\n2,"
    assert json.loads(format_table(t, "json")) == [{"a": 1, "b": "x"}, {"a": 2, "b": None}]
    text = format_table(t, "table")
    assert text.splitlines()[0].split() == ["a", "b"] and text.endswith("(2 rows)")


def test_cli(tables, tmp_path):
    root, _ = tables
    runner = CliRunner()
    ok = runner.invoke(
        query, ["select count(*) as n from sites", "--tables", str(root), "--format", "json"]
    )
    assert ok.exit_code == 0 and json.loads(ok.output) == [{"n": 3}]
    bad = runner.invoke(query, ["delete from sites", "--tables", str(root)])
    assert bad.exit_code == 1 and "only SELECT" in bad.output
    missing = runner.invoke(query, ["select 1", "--tables", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "--tables" in missing.output
    with pytest.raises(ConfigError):
        open_tables(str(tmp_path / "nope"))
    assert sorted(os.listdir(root)) == ["empty_dir", "sites"]  # the query wrote nothing


def test_bigquery_schema_mapping():
    from minewatch.tables import INFER_TABLES, bigquery_schema

    sites = {f["name"]: f for f in bigquery_schema("sites", INFER_TABLES["sites"]())}
    assert sites["geometry"] == {"name": "geometry", "type": "GEOGRAPHY", "mode": "NULLABLE"}
    assert sites["scene_ids"] == {"name": "scene_ids", "type": "STRING", "mode": "REPEATED"}
    assert sites["first_seen"]["type"] == "TIMESTAMP" and sites["flagged"]["type"] == "BOOL"
    assert sites["area_m2"]["type"] == "FLOAT64" and sites["acquisitions"]["type"] == "INT64"
    for name, schema in INFER_TABLES.items():
        fields = bigquery_schema(name, schema())
        assert [f["name"] for f in fields] == schema().names
    with pytest.raises(TypeError, match="no BigQuery type"):
        bigquery_schema("x", pa.schema([("m", pa.map_(pa.string(), pa.int32()))]))
