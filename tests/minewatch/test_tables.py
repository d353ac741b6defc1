"""The table schemas and the GeoParquet writer, on hand-made rows."""

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import shapely

from minewatch.tables import (
    GEOMETRY_COLUMNS,
    INFER_TABLES,
    dead_letter_schema,
    sites_schema,
    write_geoparquet,
)


def site_row(**over):
    row = {f.name: None for f in sites_schema()}
    row.update(
        site_id="s1",
        kind="stockpile",
        geometry=shapely.box(-75.0, 40.0, -74.99, 40.01).wkb,
        geometry_source=shapely.box(500000, 4400000, 500100, 4400100).wkb,
    )
    row.update(over)
    return row


def test_every_table_with_geometry_has_a_schema_with_those_binary_columns():
    for table, columns in GEOMETRY_COLUMNS.items():
        schema = INFER_TABLES[table]()
        for name in columns:
            assert pa.types.is_binary(schema.field(name).type), (table, name)


def test_geoparquet_metadata_names_the_primary_column_and_leaves_per_row_crs_open(tmp_path):
    path = str(tmp_path / "sites" / "part.parquet")
    write_geoparquet(path, [site_row()], "sites", sites_schema())
    table = pq.read_table(path)
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["version"] == "1.1.0"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    assert "crs" not in geo["columns"]["geometry"]  # default CRS84
    assert geo["columns"]["geometry_source"]["crs"] is None  # named per row in source_crs
    assert shapely.from_wkb(table["geometry"][0].as_py()).bounds[0] == pytest.approx(-75.0)


def test_a_table_without_geometry_gets_no_geo_metadata_and_rewrites_replace(tmp_path):
    path = str(tmp_path / "dead_letter.parquet")
    row = {f.name: "x" for f in dead_letter_schema()}
    write_geoparquet(path, [row, row], "dead_letter", dead_letter_schema())
    write_geoparquet(path, [row], "dead_letter", dead_letter_schema())
    table = pq.read_table(path)
    assert table.num_rows == 1 and b"geo" not in (table.schema.metadata or {})
    assert os.listdir(tmp_path) == ["dead_letter.parquet"]  # no temporary file left


def test_rows_that_do_not_fit_the_schema_are_refused_and_the_old_file_stays(tmp_path):
    path = str(tmp_path / "sites.parquet")
    write_geoparquet(path, [site_row()], "sites", sites_schema())
    with pytest.raises((pa.ArrowInvalid, pa.ArrowTypeError)):
        write_geoparquet(path, [site_row(site_id=5)], "sites", sites_schema())
    assert pq.read_table(path)["site_id"].to_pylist() == ["s1"]


def test_an_arrow_table_is_cast_to_the_schema_in_its_column_order(tmp_path):
    schema = dead_letter_schema()
    data = pa.table({name: ["v"] for name in reversed(schema.names)})
    path = str(tmp_path / "d.parquet")
    write_geoparquet(path, data, "dead_letter", schema)
    assert pq.read_table(path).schema.names == schema.names
