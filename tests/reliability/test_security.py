"""Security of the whole system: models only from the registry, query sandbox, output paths,
secrets never logged. (The AST scan for eval/pickle/unsafe YAML is ``tests/test_security.py``.)
"""

from __future__ import annotations

import json
import logging
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from minewatch.query import QueryError, open_tables, run_query
from tests.factories import gradient, write_raster

SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-=")


# -- models come from the configured registry only ---------------------------------------


@pytest.fixture
def registry(tmp_path, oracle):
    reg = tmp_path / "registry"
    shutil.copytree(oracle, reg / "versions" / "v1")
    (reg / "current.json").write_text(json.dumps({"version": "v1", "path": "versions/v1"}))
    return reg


@pytest.mark.parametrize("pointer", ["absolute", "dotdot"])
def test_infer_refuses_a_registry_pointing_outside_itself(registry, tmp_path, oracle, pointer):
    from minewatch.cli.infer import infer

    path = oracle if pointer == "absolute" else os.path.relpath(oracle, registry)
    (registry / "current.json").write_text(json.dumps({"version": "v1", "path": path}))
    src = write_raster(tmp_path / "s.tif", gradient(32, 32), descriptions=("B02", "B03", "B04"))
    result = CliRunner().invoke(
        infer, [src, "--model", str(registry), "--out", str(tmp_path / "t")]
    )
    assert result.exit_code == 2, result.output
    assert "--model" in result.output and "points outside" in result.output
    assert not (tmp_path / "t").exists()


def test_infer_serves_the_registry_s_own_copy(registry, tmp_path):
    from pipelines.infer.options import check_model_and_areas

    model = check_model_and_areas({"model": str(registry), "concessions": None, "protected": None})
    assert model.path == str(registry / "versions" / "v1") and model.version == "v1"


def test_resolve_model_itself_stays_inside_the_registry(registry, oracle):
    from minewatch.errors import ConfigError
    from minewatch.registry import resolve_model

    (registry / "current.json").write_text(json.dumps({"version": "v1", "path": oracle}))
    with pytest.raises(ConfigError):
        resolve_model(str(registry))


# -- minewatch query ----------------------------------------------------------------------


@pytest.fixture
def tables(tmp_path):
    root = tmp_path / "tables"
    (root / "sites").mkdir(parents=True)
    pq.write_table(pa.table({"site_id": ["a"]}), root / "sites" / "part.parquet")
    secret = tmp_path / "secret"
    secret.mkdir()
    pq.write_table(pa.table({"password": ["hunter2"]}), secret / "part.parquet")
    return root, secret


def test_query_does_not_follow_links_out_of_the_tables(tables):
    root, secret = tables
    os.symlink(secret, root / "stolen")  # a whole table folder linked elsewhere
    os.symlink(secret / "part.parquet", root / "sites" / "z.parquet")  # one part file
    con, names = open_tables(str(root))
    assert names == ["sites"]
    assert run_query(con, "select * from sites").to_pylist() == [{"site_id": "a"}]
    with pytest.raises(QueryError):
        run_query(con, "select * from stolen")


@pytest.mark.parametrize(
    "sql",
    [
        "select * from read_parquet('{secret}/part.parquet')",
        "select * from read_text('/etc/hostname')",
        "select * from glob('/*')",
        "select * from read_json('http://169.254.169.254/latest/meta-data')",
        "attach '{secret}/x.db' as x",
        "copy (select 1) to '{secret}/out.csv'",
        "pragma enable_external_access",
        "select 1; drop table sites",
        "set enable_external_access = true",
    ],
)
def test_query_cannot_read_outside_write_or_reach_the_network(tables, sql):
    root, secret = tables
    con, _ = open_tables(str(root))
    with pytest.raises((QueryError, Exception)):
        run_query(con, sql.format(secret=secret))
    assert sorted(os.listdir(secret)) == ["part.parquet"]
    assert sorted(os.listdir(root)) == ["sites"]


# -- output paths ----------------------------------------------------------------------


def test_hostile_model_version_and_scene_names_stay_inside_the_output(tmp_path):
    from pipelines.infer import run
    from tests.factories import save_oracle

    model = save_oracle(tmp_path / "m", version="../../../escaped v1;rm -rf ~")
    scenes = tmp_path / "in"
    scenes.mkdir()
    data = gradient(32, 32) * 10
    write_raster(scenes / "x..%2f..;$(x) scène.tif", data, descriptions=("B02", "B03", "B04"))
    out = tmp_path / "nested" / "tables"
    run([str(scenes), "--model", model, "--out", str(out), "--stride", "16"])
    assert sorted(os.listdir(tmp_path)) == ["in", "m", "nested"]  # nothing escaped
    assert os.listdir(tmp_path / "nested") == ["tables"]
    real = os.path.realpath(out)
    written = []
    for folder, dirs, files in os.walk(out):
        for name in dirs + files:
            path = os.path.join(folder, name)
            assert os.path.realpath(path).startswith(real + os.sep)
            assert set(name) <= SAFE, name
            written.append(name)
    assert any(n.endswith(".parquet") and "escaped" in n for n in written)


# -- secrets -----------------------------------------------------------------------------


def test_cloud_credentials_are_never_logged_or_written(tmp_path, monkeypatch, caplog, capsys):
    from pipelines.tile import run as tile_job

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "SENTINEL-ENV-SECRET")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "SENTINEL-KEYFILE.json"))
    caplog.set_level(logging.DEBUG)
    src = write_raster(tmp_path / "g.tif", gradient(32, 32))
    out = tmp_path / "out"
    tile_job(
        [
            src,
            "--out",
            str(out),
            "--tile-size",
            "16",
            "--s3_access_key_id=SENTINEL-ID",
            "--s3_secret_access_key=SENTINEL-OPTION-SECRET",
        ]
    )
    captured = capsys.readouterr()
    text = caplog.text + captured.out + captured.err
    for folder, _, files in os.walk(out):
        for name in files:
            with open(os.path.join(folder, name), "rb") as f:
                text += f.read().decode("latin-1")
    assert "stats.json" in os.listdir(out)  # the job ran
    assert "SENTINEL" not in text
