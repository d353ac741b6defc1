"""The README's first command, minus the setup: the demo runs every stage end to end."""

import json

from click.testing import CliRunner

from minewatch.cli.main import cli
from minewatch.query import open_tables, run_query
from tests.factories import assert_accounting, read_stats


def test_demo_runs_every_stage(tmp_path):
    result = CliRunner().invoke(
        cli, ["demo", "--out", str(tmp_path), "--size", "tiny", "--epochs", "1"]
    )
    assert result.exit_code == 0, result.output
    steps = (
        "[synth]",
        "[tile]",
        "[graph]",
        "[train]",
        "[promote]",
        "[infer]",
        "[query]",
        "[score]",
    )
    for step in steps:
        assert step in result.output
    assert_accounting(read_stats(tmp_path / "tiles"))
    con, names = open_tables(str(tmp_path / "tables"))
    assert {"tile_labels", "sites"} <= set(names)
    (row,) = run_query(con, "select count(*) as n from tile_labels").to_pylist()
    assert row["n"] > 0
    assert (tmp_path / "tables" / "quicklooks").is_dir()
    # the per-pixel head is on in the demo's config: the served model has it
    (version,) = [p for p in (tmp_path / "registry" / "versions").iterdir() if p.is_dir()]
    meta = json.loads((version / "metadata.json").read_text())
    assert "pixel_probabilities" in meta["outputs"] and "pixels" in meta["metrics"]
    assert "stockpile" in result.output and "recall" in result.output
    assert "visible unit (objects more than 50% under cloud ignored)" in result.output
    # volumes from the DSMs synth wrote; the tiny crop has no ship, so no vessel class
    assert "stockpile volumes:" in result.output
    assert "no vessel class in the model" in result.output
    (row,) = run_query(
        con, "select count(*) n from stockpile_series where volume_method is not null"
    ).to_pylist()
    assert row["n"] > 0
