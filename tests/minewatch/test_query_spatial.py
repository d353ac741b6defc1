"""Spatial SQL over real infer tables, vector layers joined as tables, and GIS exports."""

from __future__ import annotations

import json

import geopandas
import pytest
import shapely
from click.testing import CliRunner

from minewatch.cli.query import query
from minewatch.errors import ConfigError
from minewatch.export import to_geojson, write_result
from minewatch.query import QueryError, open_tables, run_query
from pipelines.infer import run as infer
from tests.factories import ORIGIN, box_geometry, feature, save_oracle, squares_scene, write_geojson

LEFT, TOP = ORIGIN.c, ORIGIN.f
#: Metres, as ST_Transform gives them: the scenes' UTM zone.
TO_UTM = "ST_Transform(%s, 'EPSG:4326', 'EPSG:32633', always_xy := true)"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two stockpiles: one inside concession L-1 (licensed), one outside it (flagged),
    500 m from a protected area."""
    root = tmp_path_factory.mktemp("spatial")
    scenes = root / "scenes"
    scenes.mkdir()
    squares_scene(scenes, [(16, 16, 32), (64, 64, 16)], "2024-01-01")
    conc = write_geojson(
        root / "concessions.geojson",
        [feature(box_geometry(LEFT, TOP - 600, LEFT + 600, TOP), licence_id="L-1")],
        crs="EPSG:32633",
    )
    # the flagged square spans x 640..800 m, y -800..-640 m; this box starts 500 m east
    protected = write_geojson(
        root / "protected.geojson",
        [feature(box_geometry(LEFT + 1300, TOP - 900, LEFT + 1500, TOP - 600), name="reserve")],
        crs="EPSG:32633",
    )
    tables = root / "tables"
    infer(
        [
            str(scenes),
            "--model",
            save_oracle(root / "model"),
            "--out",
            str(tables),
            "--concessions",
            conc,
            "--site-classes",
            "stockpile",
            "--mining-classes",
            "stockpile",
            "--stride",
            "8",
        ]
    )
    return tables, conc, protected, root


def test_geometry_columns_are_geometries_and_spatial_functions_work(world):
    tables, *_ = world
    con, names = open_tables(str(tables))
    assert "sites" in names
    types = {
        r["column_name"]: r["column_type"]
        for r in con.sql("describe sites").to_arrow_table().to_pylist()
    }
    assert types["geometry"] == types["geometry_source"] == "GEOMETRY"
    rows = run_query(
        con,
        f"select area_m2, ST_Area({TO_UTM % 'geometry'}) utm_m2, ST_AsGeoJSON(geometry) gj "
        "from sites order by area_m2",
    ).to_pylist()
    assert len(rows) == 2
    for row in rows:
        assert row["utm_m2"] == pytest.approx(row["area_m2"], rel=1e-3)
        assert json.loads(row["gj"])["type"] in ("Polygon", "MultiPolygon")


def test_sites_per_concession_and_flagged_sites_near_a_protected_area(world):
    tables, conc, protected, _ = world
    con, names = open_tables(
        str(tables), layers={"concessions": conc, "protected_areas": protected}
    )
    assert {"concessions", "protected_areas"} <= set(names)
    per_concession = run_query(
        con,
        "select c.licence_id, count(*) n, sum(s.area_m2) m2 from sites s "
        "join concessions c on ST_Intersects(s.geometry, c.geometry) group by 1",
    ).to_pylist()
    assert [(r["licence_id"], r["n"]) for r in per_concession] == [("L-1", 1)]
    assert per_concession[0]["m2"] == pytest.approx(320 * 320, rel=0.3)
    near = run_query(
        con,
        "select s.site_id, p.name, "
        f"ST_Distance({TO_UTM % 's.geometry'}, {TO_UTM % 'p.geometry'}) d from sites s, "
        "protected_areas p where s.flagged and "
        f"ST_DWithin({TO_UTM % 's.geometry'}, {TO_UTM % 'p.geometry'}, 1000)",
    ).to_pylist()
    assert len(near) == 1 and near[0]["name"] == "reserve"
    # tile-level outlines blur the square by up to one 80 m cell
    assert 400 <= near[0]["d"] <= 600
    outside = run_query(
        con,
        "select count(*) n from sites s where not exists (select 1 from concessions c "
        "where ST_Intersects(s.geometry, c.geometry))",
    ).to_pylist()
    flagged = run_query(con, "select count(*) n from sites where flagged").to_pylist()
    assert outside == flagged == [{"n": 1}]


def test_the_sandbox_holds_with_the_spatial_extension(world):
    tables, conc, _, root = world
    shp = root / "conc.shp"
    geopandas.read_file(conc).to_file(shp)
    con, _ = open_tables(str(tables))
    for sql in (
        f"select * from ST_Read('{conc}')",
        f"select * from ST_ReadSHP('{shp}')",
        f"select * from ST_Read_Meta('{conc}')",
        "select * from ST_Read('/vsicurl/https://example.com/x.geojson')",
    ):
        with pytest.raises(QueryError, match=r"Permission|disabled|open"):
            run_query(con, sql)
    for sql in ("load spatial", "install spatial"):
        with pytest.raises(QueryError, match="only SELECT"):
            run_query(con, sql)
    with pytest.raises(Exception, match="configuration"):
        con.execute("SET autoinstall_known_extensions = true")


def test_a_spatial_package_for_another_duckdb_is_refused(monkeypatch, tmp_path):
    import duckdb

    monkeypatch.setattr(duckdb, "__version__", "0.0.1")
    (tmp_path / "t").mkdir()
    with pytest.raises(ConfigError, match=r"built for DuckDB v.*not 0\.0\.1"):
        open_tables(str(tmp_path))


def test_layer_names_and_files_are_checked(world):
    tables, conc, _, root = world
    with pytest.raises(ConfigError, match="not one of the tables"):
        open_tables(str(tables), layers={"sites": conc})
    with pytest.raises(ConfigError, match="identifier"):
        open_tables(str(tables), layers={"bad-name": conc})
    (root / "broken.geojson").write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        open_tables(str(tables), layers={"x": str(root / "broken.geojson")})


def test_exports_read_back_with_geopandas(world, tmp_path):
    tables, *_ = world
    con, _ = open_tables(str(tables))
    sql = "select site_id, flagged, area_m2, first_seen, geometry, geometry_source from sites"
    result = run_query(con, sql)
    truth = {r["site_id"]: shapely.from_wkb(r["geometry"]) for r in result.to_pylist()}
    for fmt in ("geojson", "geoparquet"):
        out = tmp_path / f"sites.{fmt}"
        write_result(result, fmt, str(out))
        frame = geopandas.read_parquet(out) if fmt == "geoparquet" else geopandas.read_file(out)
        assert frame.crs.to_epsg() == 4326 or frame.crs.to_string() == "OGC:CRS84"
        assert sorted(frame["site_id"]) == sorted(truth)
        for _, row in frame.iterrows():
            assert row.geometry.equals_exact(truth[row["site_id"]], 1e-9)
        assert set(frame["flagged"]) == {True, False}
    csv_out = tmp_path / "sites.csv"
    write_result(result, "csv", str(csv_out))
    header, *lines = csv_out.read_text().splitlines()
    assert header.split(",")[:3] == ["site_id", "flagged", "area_m2"] and len(lines) == 2
    assert "POLYGON" in csv_out.read_text()


def test_exports_refuse_what_they_cannot_hold(world, tmp_path):
    tables, *_ = world
    con, _ = open_tables(str(tables))
    no_geometry = run_query(con, "select site_id from sites")
    with pytest.raises(ConfigError, match="geometry column"):
        to_geojson(no_geometry)
    metres = run_query(con, f"select site_id, {TO_UTM % 'geometry'} geometry from sites")
    with pytest.raises(ConfigError, match="not lon/lat"):
        write_result(metres, "geoparquet", str(tmp_path / "x.parquet"))


def test_cli_formats_layers_and_out(world, tmp_path):
    tables, conc, _, _ = world
    runner = CliRunner()
    out = tmp_path / "flagged.geojson"
    ok = runner.invoke(
        query,
        [
            "select s.site_id, s.geometry from sites s join concessions c "
            "on not ST_Intersects(s.geometry, c.geometry)",
            "--tables",
            str(tables),
            "--concessions",
            conc,
            "--format",
            "geojson",
            "--out",
            str(out),
        ],
    )
    assert ok.exit_code == 0, ok.output
    assert len(json.loads(out.read_text())["features"]) == 1
    shown = runner.invoke(query, ["select geometry from sites limit 1", "--tables", str(tables)])
    assert shown.exit_code == 0 and "POLYGON ((" in shown.output
    no_out = runner.invoke(query, ["select 1", "--tables", str(tables), "--format", "geojson"])
    assert no_out.exit_code == 2 and "--out" in no_out.output
    bad = runner.invoke(query, ["select 1", "--tables", str(tables), "--layer", "nofile"])
    assert bad.exit_code == 2 and "NAME=FILE" in bad.output
