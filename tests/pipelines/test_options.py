"""What every job shares on its command line: inputs against Beam options, the runner check."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from minewatch.cli.tile import tile
from minewatch.errors import ConfigError
from pipelines.options import check_runner, runner_name, split_beam_args, with_profile
from tests.factories import write_raster


def test_inputs_and_beam_options_split_where_beam_takes_a_value():
    tokens = ["a.tif", "--runner", "DirectRunner", "b/", "--direct_num_workers=2", "--streaming"]
    inputs, beam = split_beam_args(tokens)
    assert inputs == ["a.tif", "b/"]
    assert beam == ["--runner", "DirectRunner", "--direct_num_workers=2", "--streaming"]


@pytest.mark.parametrize(
    ("args", "name"),
    [
        ([], None),
        (["--runner", "DirectRunner"], "DirectRunner"),
        (["--runner=FlinkRunner", "--runner", "SparkRunner"], "SparkRunner"),
    ],
)
def test_the_last_runner_named_is_the_one(args, name):
    assert runner_name(args) == name


@pytest.mark.parametrize(
    ("runner", "message"),
    [
        ("DaskRunner", "--runner pipelines.dask_runner.DaskRunner"),
        ("apache_beam.runners.dask.dask_runner.DaskRunner", "mis-routes tagged outputs"),
        ("NopeRunner", "Beam has no runner named 'NopeRunner'"),
        ("no_such_package.Runner", "cannot be loaded"),
    ],
)
def test_a_runner_beam_cannot_make_is_refused_before_the_job(runner, message):
    with pytest.raises(ConfigError, match="runner") as err:
        check_runner(["--runner", runner])
    assert message in str(err.value) and err.value.option == "--runner"
    check_runner(["--runner", "DirectRunner"])  # known runners pass
    check_runner(["--runner=PortableRunner"])
    check_runner(["--runner=pipelines.dask_runner.DaskRunner"])


def test_the_cli_says_so_with_exit_status_2_not_a_traceback(tmp_path):
    scene = write_raster(tmp_path / "s.tif", np.ones((3, 16, 16), np.uint16))
    args = [scene, "--out", str(tmp_path / "t"), "--runner", "DaskRunner"]
    result = CliRunner().invoke(tile, args)
    assert result.exit_code == 2, result.output
    assert "--runner" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "t").exists()


def test_a_profile_is_checked_with_the_options_it_adds():
    with pytest.raises(ConfigError) as err:
        with_profile("no-such-profile", "tile", [])
    assert err.value.option == "--profile"
