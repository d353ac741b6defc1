"""The stream's options: what a scene's predictions become is infer's options, checked alike."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner

from minewatch.cli.stream import stream as stream_cmd
from minewatch.errors import ConfigError
from minewatch.registry import resolve_model
from pipelines.infer.options import InferConfig, SiteOptions
from pipelines.stream import StreamConfig, run, stream_config
from pipelines.stream.options import SHARED_WITH_INFER
from tests.factories import feature, save_oracle, write_geojson, write_raster


@pytest.fixture
def base(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    model = save_oracle(registry / "versions" / "v1", classes=("background", "stockpile", "vessel"))
    (registry / "current.json").write_text(f'{{"version": "v1", "path": "{model}"}}')
    out = tmp_path / "t"
    return [
        "--watch",
        str(tmp_path),
        "--model",
        str(registry),
        "--out",
        str(out),
        "--max-polls",
        "1",
    ]


def test_every_option_the_batch_job_has_for_a_scene_the_stream_has_too():
    # Only what names one batch run is the batch job's own; a new InferConfig field
    # that says what a scene becomes must reach the stream too (or be listed here).
    own = {"inputs", "model", "area_cell_m"}
    infer = {f.name for f in dataclasses.fields(InferConfig)}
    assert infer - set(SHARED_WITH_INFER) == own
    assert {f.name for f in dataclasses.fields(StreamConfig)} >= set(SHARED_WITH_INFER)


def test_scene_options_reach_each_scenes_batch_config(base, tmp_path):
    (tmp_path / "dsm").mkdir()
    write_raster(tmp_path / "dsm" / "dsm_20240101.tif", np.ones((8, 8), np.float32))
    ports = write_geojson(
        tmp_path / "ports.geojson", [feature({"type": "Point", "coordinates": [15.0, 0.0]})]
    )
    args = [
        *base,
        *("--dsm", str(tmp_path / "dsm" / "*.tif"), "--licensed-ports", ports),
        *("--sun-azimuth", "150", "--sun-elevation", "30", "--no-volumes"),
        *("--site-classes", "stockpile", "--min-score", "0.6"),
        *("--bigquery", "bq://minewatch-prod.mining.live"),
    ]
    config, _ = stream_config(stream_cmd.make_context("stream", args).params)
    model = resolve_model(base[3])
    infer = config.infer_config(model, str(tmp_path / "a.tif"))
    assert infer.dsm == str(tmp_path / "dsm" / "*.tif") and infer.licensed_ports == ports
    assert infer.sun == (150.0, 30.0) and infer.volumes is False
    assert infer.site_classes == ("stockpile",) and infer.positive == ("stockpile",)
    assert infer.sites == SiteOptions(min_score=0.6)
    assert infer.bigquery == "bq://minewatch-prod.mining.live"
    assert infer.inputs == (str(tmp_path / "a.tif"),) and infer.model is model
    assert config.sites == SiteOptions(min_score=0.6)


@pytest.mark.parametrize(
    ("extra", "hint", "message"),
    [
        (["--sun-azimuth", "150"], "--sun-elevation", "give both sun angles"),
        (["--dsm", "/nowhere/*.tif"], "--dsm", "matched no file"),
        (["--bigquery", "bq://p.d"], "--bigquery", r"bq://PROJECT.DATASET[.PREFIX]"),
        (["--site-classes", "road"], "--site-classes", "not classes of the model"),
    ],
)
def test_the_cli_refuses_scene_options_that_cannot_work(base, extra, hint, message):
    result = CliRunner().invoke(stream_cmd, [*base, *extra])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert hint in text and message in text, text


def test_a_model_without_vessels_cannot_judge_berths(tmp_path):
    registry = tmp_path / "registry"
    registry.mkdir()
    model = save_oracle(registry / "versions" / "v1")
    (registry / "current.json").write_text(f'{{"version": "v1", "path": "{model}"}}')
    ports = write_geojson(
        tmp_path / "ports.geojson", [feature({"type": "Point", "coordinates": [15.0, 0.0]})]
    )
    argv = ["--watch", str(tmp_path), "--model", str(registry), "--out", str(tmp_path / "t")]
    with pytest.raises(ConfigError, match="no 'vessel' class") as err:
        run([*argv, "--max-polls", "1", "--licensed-ports", ports])
    assert err.value.option == "--licensed-ports"
