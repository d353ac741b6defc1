"""The README's first command, minus the setup: the demo runs every stage end to end."""

from click.testing import CliRunner

from minewatch.cli.main import cli
from minewatch.query import open_tables, run_query
from tests.factories import assert_accounting, read_stats


def test_demo_runs_every_stage(tmp_path):
    result = CliRunner().invoke(
        cli, ["demo", "--out", str(tmp_path), "--size", "tiny", "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    for step in ("[synth]", "[tile]", "[graph]", "[train]", "[promote]", "[infer]", "[query]"):
        assert step in result.output
    assert_accounting(read_stats(tmp_path / "tiles"))
    con, names = open_tables(str(tmp_path / "tables"))
    assert {"tile_labels", "sites"} <= set(names)
    (row,) = run_query(con, "select count(*) as n from tile_labels").to_pylist()
    assert row["n"] > 0
    assert (tmp_path / "tables" / "quicklooks").is_dir()
