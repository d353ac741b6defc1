"""The tile, graph and infer jobs built on the real DataflowRunner, offline.

``--dry_run=True`` makes ``DataflowRunner.run_pipeline`` stop right before it
creates its API client, so nothing is staged or submitted. What used to reach
the network was option validation, not the runner: a bucket or project id that
does not match Beam's patterns (``gs://b/t``: bucket names have 3 to 63
characters; ``--project=p``: ids too) makes ``GoogleCloudOptions.validate``
fall back to ``get_or_create_default_gcs_bucket``, which looks for credentials
(GCE metadata server) and calls storage.googleapis.com. With well-formed names
the whole build is offline; the ``no_network`` fixture fails the test on any
connection attempt to prove it.

The job description Dataflow receives (worker pool, container image, options)
is built from the dry-run job with ``apiclient.Environment``, the constructor
``DataflowApplicationClient.create_job_description`` calls after staging.
"""

from __future__ import annotations

import json

import pytest

from tests.factories import write_raster

pytestmark = pytest.mark.dataflow

IMAGE = "europe-docker.pkg.dev/minewatch-prod/minewatch/worker:0.1.0"
DATAFLOW_ARGS = [
    "--runner=DataflowRunner",
    "--dry_run=True",
    "--project=minewatch-dry-run",
    "--region=europe-west1",
    "--temp_location=gs://minewatch-dry-run/tmp",
    "--staging_location=gs://minewatch-dry-run/staging",
    f"--sdk_container_image={IMAGE}",
    "--sdk_location=container",
    "--machine_type=n2-standard-4",
    "--max_num_workers=7",
    "--experiments=use_runner_v2",
]


def dataflow_pipeline(args=DATAFLOW_ARGS):
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    return beam.Pipeline(runner=DataflowRunner(), options=PipelineOptions(list(args)))


def dry_run(launch, argv):
    """Build a job on the DataflowRunner and dry-run it; return Dataflow's job."""
    from apache_beam.runners.dataflow.internal import apiclient

    pipeline = dataflow_pipeline()
    assert launch(argv, save_main_session=False, test_pipeline=pipeline) is None
    result = pipeline.run()
    job = result.job
    job.proto.environment = apiclient.Environment(
        packages=[],
        options=job.options,
        environment_version=apiclient._FNAPI_ENVIRONMENT_MAJOR_VERSION,
        proto_pipeline_staged_url=job.google_cloud_options.staging_location + "/pipeline.pb",
        proto_pipeline=job.proto_pipeline,
    ).proto
    return job


def names(job):
    return {t.unique_name for t in job.proto_pipeline.components.transforms.values()}


def check_job(job, steps):
    """The checks every job shares: its steps, one Docker environment, the worker pool."""
    from apache_beam.portability import common_urns

    missing = set(steps) - names(job)
    assert not missing, f"steps missing from the job graph: {sorted(missing)}"
    envs = job.proto_pipeline.components.environments.values()
    assert {e.urn for e in envs} == {common_urns.environments.DOCKER.urn}
    (pool,) = job.proto.environment.worker_pools
    assert pool.worker_harness_container_image == IMAGE
    assert pool.machine_type == "n2-standard-4"
    assert pool.autoscaling_settings.max_num_workers == 7
    assert "use_runner_v2" in job.proto.environment.experiments
    assert job.proto.environment.temp_storage_prefix.startswith(
        "storage.googleapis.com/minewatch-dry-run/tmp/"
    )
    # The job description serialises as the REST request body does.
    body = json.loads(str(job))
    assert body["environment"]["workerPools"][0]["machineType"] == "n2-standard-4"


def scene(folder, name):
    import numpy as np

    data = np.full((3, 64, 64), 100, np.uint16)
    data[:, 8:24, 8:24] = 1000
    return write_raster(folder / name, data, descriptions=("B02", "B03", "B04"))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    root = tmp_path_factory.mktemp("scenes")
    scene(root, "scene_2024-01-01.tif")
    scene(root, "scene_2024-02-01.tif")
    return root


@pytest.fixture(scope="module")
def tiles_dir(scenes, tmp_path_factory):
    """A real tile job's output (DirectRunner): the graph job reads its stats at launch."""
    from pipelines.tile import run

    out = tmp_path_factory.mktemp("tiles") / "out"
    run([str(scenes), "--out", str(out), "--tile-size", "16"], save_main_session=False)
    return out


def test_tile_job_graph(scenes, tmp_path, no_network):
    from pipelines.tile import run

    job = dry_run(run, [str(scenes), "--out", str(tmp_path / "out"), "--tile-size", "16"])
    check_job(job, {"Tile"})
    tile_steps = {n for n in names(job) if n.startswith("Tile/")}
    assert len(tile_steps) > 10, sorted(tile_steps)
    assert job.proto.type_.name == "JOB_TYPE_BATCH"


def test_graph_job_graph(tiles_dir, tmp_path, no_network):
    from pipelines.graph import run

    job = dry_run(run, [str(tiles_dir), "--out", str(tmp_path / "graph"), "--k", "2"])
    check_job(
        job,
        {
            "Graph",
            "Graph/MatchTiles",
            "Graph/ReadTiles",
            "Graph/Embed",
            "Graph/Similarity",
            "Graph/Similarity/TopKPerNode",
            "Graph/Spatial",
            "Graph/Temporal",
            "Graph/WriteEdges",
        },
    )


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.factories import save_oracle

    return save_oracle(tmp_path_factory.mktemp("model") / "model")


def test_infer_job_graph(scenes, model, tmp_path, no_network):
    from pipelines.infer import run

    job = dry_run(run, [str(scenes), "--model", model, "--out", str(tmp_path / "tables")])
    check_job(
        job,
        {
            "Infer",
            "Infer/Cut",
            "Infer/Examples",
            "Infer/RunInference",
            "Infer/GroupScene",
            "Infer/LinkSites",
            "Infer/WriteDeadLetter",
        },
    )


@pytest.mark.parametrize(
    ("option", "value"),
    [("temp_location", "gs://b/t"), ("project", "p")],
)
def test_short_names_fail_validation(option, value):
    """Why ``--project=p --temp_location=gs://b/t`` went online: both fail Beam's patterns.

    With both temp and staging locations invalid, ``GoogleCloudOptions`` asks GCS
    for a default bucket (credentials, then storage.googleapis.com, with retries).
    """
    from apache_beam.options.pipeline_options import GoogleCloudOptions, PipelineOptions
    from apache_beam.options.pipeline_options_validator import PipelineOptionsValidator
    from apache_beam.runners.dataflow.dataflow_runner import DataflowRunner

    options = PipelineOptions([*DATAFLOW_ARGS, f"--{option}={value}"])
    validator = PipelineOptionsValidator(options, DataflowRunner())
    view = options.view_as(GoogleCloudOptions)
    if option == "project":
        assert any("Invalid Project ID" in e for e in validator.validate_cloud_options(view))
    else:
        assert validator.validate_gcs_path(view, option)
        assert not validator.validate_gcs_path(view, "staging_location")


def test_infer_job_graph_with_bigquery_output(scenes, model, tmp_path, no_network):
    from minewatch.tables import INFER_TABLES
    from pipelines.infer import run

    bq = ["--bigquery", "bq://minewatch-dry-run.mining.nightly"]
    job = dry_run(run, [str(scenes), "--model", model, "--out", str(tmp_path / "tables"), *bq])
    steps = {"Infer", "Infer/RunInference"}
    assert set(INFER_TABLES) == {
        "tile_labels", "frame_labels", "sites", "site_observations", "stockpile_series", "vessels"
    }  # fmt: skip
    for table in INFER_TABLES:
        steps |= {f"Infer/BigQuery/{table}/{s}" for s in ("ToJson", "Load", "Merge")}
    check_job(job, steps)
    # Parquet still goes to --out: the per-scene and linking steps are the same
    assert {"Infer/PerScene", "Infer/LinkSites", "Infer/Finish"} <= names(job)
