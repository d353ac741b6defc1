"""The label-free contrastive encoder: real training steps on the tiny world, export, graph job."""

from __future__ import annotations

import json
import math
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

tf = pytest.importorskip("tensorflow")

from minewatch.cli.encoder import encoder as encoder_cmd  # noqa: E402
from minewatch.cli.graph import graph as graph_cmd  # noqa: E402
from minewatch.embeddings import BandNorm, load_saved_model, normalized_pixels  # noqa: E402
from minewatch.errors import ConfigError, InputError  # noqa: E402
from minewatch.spec import decode_tiles  # noqa: E402
from minewatch.tfrecord import read_records  # noqa: E402
from nsl_models.encoder import (  # noqa: E402
    METADATA_NAME,
    EncoderConfig,
    nt_xent_loss,
    read_encoder_metadata,
    train_encoder,
)
from pipelines.graph import run as graph_job  # noqa: E402

#: A few real steps of a tiny encoder: seconds, not minutes.
TINY = {"steps": 3, "batch_size": 16, "width": 4, "dim": 8}
TINY_ARGS = ["--steps", "3", "--batch-size", "16", "--width", "4", "--dim", "8"]


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    """The tiny synthetic world through the tile job: 512 labelled 16-px tiles, 5 bands."""
    from minewatch.synth import make_ground_truth
    from pipelines.tile import run as tile_job

    root = tmp_path_factory.mktemp("encoder_world")
    gt = make_ground_truth(root / "gt", size="tiny", seed=0, frames=False)
    out = root / "tiles"
    labels = str(gt.out_dir / "truth" / "scene_*.geojson")
    tile_job([str(gt.out_dir / "scenes"), "--out", str(out), "--labels", labels,
            "--tile-size", "16", "--bands", "B02,B03,B04,B08,B11"])  # fmt: skip
    return str(out)


@pytest.fixture(scope="module")
def trained(tiles, tmp_path_factory):
    """The tiny encoder trained once through the command."""
    out = str(tmp_path_factory.mktemp("encoder") / "enc")
    result = CliRunner().invoke(encoder_cmd, [tiles, "--out", out, *TINY_ARGS])
    assert result.exit_code == 0, result.output
    assert "3 steps" in result.output
    return out


def first_tiles(tiles_dir, n=40):
    """z-scored pixels ``[n, 16, 16, 5]`` of the first records, as the graph job makes them."""
    with open(os.path.join(tiles_dir, "stats.json")) as f:
        norm = BandNorm.from_stats(json.load(f))
    path = sorted(os.listdir(os.path.join(tiles_dir, "tiles")))[0]
    with open(os.path.join(tiles_dir, "tiles", path), "rb") as f:
        records = [r for _, r in zip(range(n), read_records(f), strict=False)]
    return np.stack(
        [normalized_pixels(t.image, t.valid, norm, t.bands) for t in decode_tiles(records)]
    )


def embeddings(folder, images):
    return load_saved_model(folder)(images)


def test_nt_xent_by_hand():
    # One tile: each view's only candidate is its partner, so the loss is 0.
    z = tf.constant([[1.0, 0.0]])
    assert float(nt_xent_loss(z, z, 0.5)) == pytest.approx(0.0, abs=1e-6)
    # All views equal: the partner is one of 2B - 1 equally likely candidates.
    ones = tf.ones([3, 4])
    assert float(nt_xent_loss(ones, ones, 0.1)) == pytest.approx(math.log(5), rel=1e-5)
    # Two tiles, views equal within a tile and orthogonal across: with temperature t
    # each view sees its partner at cos 1, its own tile's... none, the other tile's
    # two views at cos 0: loss = -log(e^(1/t) / (e^(1/t) + 2)).
    a, b = [1.0, 0.0], [0.0, 1.0]
    z = tf.constant([a, b])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert float(nt_xent_loss(z, z, t)) == pytest.approx(expected, rel=1e-5)


def test_export_is_a_savedmodel_the_graph_job_reads(trained, tiles, tmp_path):
    meta = read_encoder_metadata(trained)
    assert meta is not None
    assert meta["steps"] == 3 and meta["seconds"] > 0 and len(meta["loss"]) == 1
    assert meta["bands"] == ["B02", "B03", "B04", "B08", "B11"]
    assert meta["signature"]["output"]["shape"] == [None, 8]
    assert all(math.isfinite(v) for _, v in meta["loss"])
    # The graph job's loader: z-scored [B, H, W, C] -> [B, dim], any tile side.
    images = first_tiles(tiles)
    vectors = embeddings(trained, images)
    assert vectors.shape == (len(images), 8) and vectors.dtype == np.float32
    assert np.isfinite(vectors).all() and np.ptp(vectors, axis=0).max() > 0
    assert embeddings(trained, images[:, :8, :8]).shape == (len(images), 8)
    # The graph job with --embedding pointing at it.
    out = tmp_path / "graph"
    stats = graph_job([tiles, "--out", str(out), "--embedding", trained, "--k", "3"])
    assert stats["tiles"]["embedded"] == stats["tiles"]["read"] == 512
    assert stats["embedding"]["name"] == trained and stats["embedding"]["whiten"] is False
    assert stats["edges"]["similarity"] > 0


def graph_command(args):
    """``minewatch graph ARGS``; its ``stats.json``."""
    result = CliRunner().invoke(graph_cmd, args)
    assert result.exit_code == 0, result.output
    with open(os.path.join(args[args.index("--out") + 1], "stats.json")) as f:
        return json.load(f)


def test_graph_trains_the_encoder_then_reuses_it(tiles, tmp_path, monkeypatch):
    import minewatch.cli.graph as graph_cli

    monkeypatch.setattr(graph_cli, "CONTRASTIVE_OPTIONS", TINY)
    out = tmp_path / "graph"
    args = [tiles, "--out", str(out), "--embedding", "contrastive", "--k", "3"]
    stats = graph_command(args)
    folder = str(out / "encoder")
    assert stats["embedding"]["name"] == folder and stats["embedding"]["whiten"] is True
    assert stats["tiles"]["embedded"] == 512 and stats["homophily"]["all"]["seeds"] > 0
    meta = read_encoder_metadata(folder)
    assert meta is not None and meta["options"]["steps"] == 3
    weights = os.path.getmtime(os.path.join(folder, "saved_model.pb"))
    # Same tiles, same options: the encoder is kept, the graph rebuilt.
    again = graph_command([*args, "--overwrite"])
    assert os.path.getmtime(os.path.join(folder, "saved_model.pb")) == weights
    assert again["edges"] == stats["edges"]
    # Other options: an encoder of other options is not replaced without --overwrite.
    monkeypatch.setattr(graph_cli, "CONTRASTIVE_OPTIONS", {**TINY, "seed": 1})
    shutil.copytree(folder, tmp_path / "other" / "encoder")
    other = [tiles, "--out", str(tmp_path / "other"), "--embedding", "contrastive"]
    result = CliRunner().invoke(graph_cmd, other)
    assert result.exit_code == 2 and "--embedding" in result.output
    assert "other tiles or options" in result.output
    # The stage itself reads an encoder and never trains one.
    with pytest.raises(ConfigError, match="minewatch encoder") as refused:
        graph_job(other)
    assert refused.value.option == "--embedding"


def test_same_seed_same_embeddings_other_seed_others(trained, tiles, tmp_path):
    images = first_tiles(tiles)
    again = train_encoder(tiles, str(tmp_path / "again"), EncoderConfig(**TINY))
    assert again["reused"] is False
    assert again["weights_sha256"] == read_encoder_metadata(trained)["weights_sha256"]
    assert again["loss"] == read_encoder_metadata(trained)["loss"]
    np.testing.assert_array_equal(
        embeddings(str(tmp_path / "again"), images), embeddings(trained, images)
    )
    other = train_encoder(tiles, str(tmp_path / "other"), EncoderConfig(**TINY, seed=1))
    assert other["weights_sha256"] != again["weights_sha256"]


def test_the_command_keeps_an_encoder_of_the_same_tiles_and_options(trained, tiles):
    result = CliRunner().invoke(encoder_cmd, [tiles, "--out", trained, *TINY_ARGS])
    assert result.exit_code == 0 and "kept" in result.output
    result = CliRunner().invoke(encoder_cmd, [tiles, "--out", trained, *TINY_ARGS, "--seed", "2"])
    assert result.exit_code == 1 and "--overwrite" in result.output


def test_bad_options_are_refused():
    result = CliRunner().invoke(encoder_cmd, ["x", "--out", "y", "--corruptions", "smudge"])
    assert result.exit_code == 2 and "--corruptions" in result.output
    assert "unknown ['smudge']" in result.output
    result = CliRunner().invoke(encoder_cmd, ["x", "--out", "y", "--batch-size", "1"])
    assert result.exit_code == 2 and "--batch-size" in result.output
    with pytest.raises(ConfigError, match="max_severity"):
        EncoderConfig(max_severity=6)
    with pytest.raises(ConfigError, match="unknown option"):
        EncoderConfig.from_dict({"epochs": 3})


def test_bad_inputs_say_what_to_do(tiles, tmp_path):
    with pytest.raises(InputError, match="matches no file: give the --out folder"):
        train_encoder(str(tmp_path), str(tmp_path / "enc"), EncoderConfig(**TINY))
    no_stats = tmp_path / "no_stats"
    shutil.copytree(os.path.join(tiles, "tiles"), no_stats / "tiles")
    with pytest.raises(InputError, match=r"stats\.json is missing"):
        train_encoder(str(no_stats), str(tmp_path / "enc"), EncoderConfig(**TINY))
    # A truncated shard: read until it breaks, then a message naming the tiles.
    broken = tmp_path / "broken"
    shutil.copytree(tiles, broken)
    for name in os.listdir(broken / "tiles"):
        path = broken / "tiles" / name
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2 + 100])  # ends inside a record
    with pytest.raises(InputError, match="could not be read"):
        train_encoder(str(broken), str(tmp_path / "enc"), EncoderConfig(**TINY))
    assert not os.path.exists(tmp_path / "enc")
    # An output folder holding something else is not replaced.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an encoder"):
        train_encoder(tiles, str(other), EncoderConfig(**TINY))
    assert (other / "notes.txt").exists() and not (other / METADATA_NAME).exists()
