"""Runner profiles parse, fill their placeholders, and Beam knows every option."""

from __future__ import annotations

import logging

import pytest

from minewatch.errors import ConfigError
from minewatch.profiles import JOBS, load_profile, profile_names

ENV = {
    "MINEWATCH_PROJECT": "minewatch-prod",
    "MINEWATCH_REGION": "europe-west1",
    "MINEWATCH_BUCKET": "minewatch-prod-dataflow",
    "MINEWATCH_SUBNET": "dataflow",
    "MINEWATCH_IMAGE": "europe-docker.pkg.dev/minewatch-prod/minewatch/worker:0.1.0",
    "FLINK_MASTER": "flink-jobmanager:8081",
    "SPARK_MASTER_URL": "spark://spark-master:7077",
}
RUNNERS = {
    "dataflow": "DataflowRunner",
    "flink": "FlinkRunner",
    "flink-k8s": "FlinkRunner",
    "spark": "SparkRunner",
}


def test_the_profiles_are_there():
    assert set(RUNNERS) <= set(profile_names())


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_every_option_is_a_beam_option(name, job, caplog):
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args = load_profile(name, job, env=ENV)
    assert not any("${" in a for a in args)
    with caplog.at_level(logging.WARNING, logger="apache_beam.options.pipeline_options"):
        options = PipelineOptions(args)
        options.get_all_options()  # parses, and logs the arguments it does not know
    assert "Discarding unparseable args" not in caplog.text
    assert options.view_as(StandardOptions).runner == RUNNERS[name]


def test_portable_profiles_run_the_minewatch_image():
    from apache_beam.options.pipeline_options import PortableOptions

    for name in ("flink", "spark"):
        options = PortableOptions(load_profile(name, "tile", env=ENV))
        assert options.environment_type == "DOCKER"
        assert options.environment_config == ENV["MINEWATCH_IMAGE"]
    k8s = PortableOptions(load_profile("flink-k8s", "tile", env=ENV))
    assert (k8s.environment_type, k8s.environment_config) == ("EXTERNAL", "localhost:50000")


@pytest.mark.parametrize("job", JOBS)
def test_dataflow_profile_passes_dataflow_validation_offline(job, no_network):
    from apache_beam.options.pipeline_options import (
        GoogleCloudOptions,
        PipelineOptions,
        WorkerOptions,
    )
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    # dry_run: the soft-delete check on the buckets would otherwise call GCS.
    options = PipelineOptions([*load_profile("dataflow", job, env=ENV), "--dry_run=True"])
    assert PipelineOptionsValidator(options, DataflowRunner()).validate() == []
    worker = options.view_as(WorkerOptions)
    assert worker.sdk_container_image == ENV["MINEWATCH_IMAGE"]
    assert worker.machine_type.startswith("n2-")
    assert worker.max_num_workers > 0
    assert options.view_as(GoogleCloudOptions).temp_location.startswith("gs://minewatch-prod")


def test_job_options_come_after_common_ones():
    args = load_profile("dataflow", "graph", env=ENV)
    assert args[0] == "--runner=DataflowRunner"
    assert args[-1] == "--labels=job=graph"


def test_a_yaml_path_is_a_profile(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("jobs:\n  tile: ['--runner=DirectRunner', '--direct_num_workers=${N}']\n")
    assert load_profile(str(path), "tile", env={"N": "2"}) == [
        "--runner=DirectRunner",
        "--direct_num_workers=2",
    ]


@pytest.mark.parametrize(
    ("text", "job", "env", "match"),
    [
        (None, "tile", ENV, "no runner profile 'nope'"),
        ("jobs: {tile: []}", "train", ENV, "unknown job 'train'"),
        ("common: []", "tile", ENV, "needs a 'jobs' mapping"),
        ("jobs: {graph: []}", "tile", ENV, "no options for job 'tile'"),
        ("jobs: {tile: [runner=x]}", "tile", ENV, "is not a --option"),
        ("jobs: {tile: --runner=x}", "tile", ENV, "must be a list of strings"),
        ("jobs: {tile: ['--project=${NOPE}']}", "tile", ENV, "environment variable NOPE"),
        ("jobs: [", "tile", ENV, "not valid YAML"),
    ],
)
def test_bad_profiles_say_what_is_wrong(tmp_path, text, job, env, match):
    name = "nope"
    if text is not None:
        (tmp_path / "p.yaml").write_text(text)
        name = str(tmp_path / "p.yaml")
    with pytest.raises(ConfigError, match=match):
        load_profile(name, job, env=env, directory=tmp_path)


def test_profile_option_puts_the_profile_first_and_the_command_line_last(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARK_MASTER_URL", "spark://localhost:7077")
    monkeypatch.setenv("MINEWATCH_IMAGE", "example.org/minewatch:1")
    from minewatch.arguments import parse
    from minewatch.cli.tile import tile
    from pipelines.tile import TILE_ARGS, tile_config

    src = tmp_path / "a.tif"
    from tests.factories import gradient, write_raster

    write_raster(src, gradient(20, 20))
    params, rest = parse(
        TILE_ARGS,
        [str(src), "--out", str(tmp_path / "o"), "--profile", "spark", "--runner=DirectRunner"],
        "minewatch tile",
    )
    _, beam_args, _, _ = tile_config(params, rest)
    assert beam_args[-1] == "--runner=DirectRunner"
    assert any(a.startswith("--runner") and "Spark" in a for a in beam_args[:-1])
    from click.testing import CliRunner

    bad = CliRunner().invoke(tile, [str(src), "--out", str(tmp_path / "p"), "--profile", "nope"])
    assert bad.exit_code == 2 and "--profile" in bad.output
