"""`minewatch evaluate` on a frames folder: one grade per frame, from a real trained model."""

from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from minewatch.errors import ConfigError, InputError
from nsl_models.evaluate import cut_frames, decide, evaluate_models, is_frames_dir
from tests.nsl_models.conftest import tiny_config

tf = pytest.importorskip("tensorflow")


@pytest.fixture(scope="module")
def frames_dir(tile_data) -> str:
    """The tiny synthetic belt frames (``minewatch synth`` layout, 128 px RGB PNGs)."""
    return os.path.join(os.path.dirname(tile_data), "gt", "frames")


@pytest.fixture(scope="module")
def frame_model(frame_data, tmp_path_factory) -> str:
    """A frame model (32 px tiles) trained for a few steps on the tiled frames."""
    from nsl_models.train import Trainer

    out = str(tmp_path_factory.mktemp("frame_model") / "m")
    cfg = tiny_config(frame_data, task="frame", model={"architecture": "frame_cnn"})
    Trainer(cfg, out).fit()
    return out


def _rows(frames_dir):
    with open(os.path.join(frames_dir, "labels.csv"), newline="") as f:
        return list(csv.DictReader(f))


def test_cut_frames_follows_the_tile_jobs_offsets():
    frames = np.arange(2 * 40 * 40 * 3).reshape(2, 40, 40, 3)
    tiles, per_frame = cut_frames(frames, 16)
    # rasters.tile_starts(40, 16, 16, "shift") == [0, 16, 24]: a last tile flush with the edge
    assert per_frame == 9 and tiles.shape == (18, 16, 16, 3)
    np.testing.assert_array_equal(tiles[9 + 5], frames[1, 16:32, 24:40])
    tiles, per_frame = cut_frames(frames[:, :10, :10], 16)
    assert per_frame == 1 and (tiles[:, 10:] == 0).all()  # a small frame is padded


def test_frames_mode_grades_each_frame_from_the_mean_of_its_tiles(frame_model, frames_dir):
    rows = _rows(frames_dir)
    assert is_frames_dir(frames_dir)
    report = evaluate_models(
        [frame_model], frames_dir, corruptions=["exposure"], severities=[5], epsilons=[0.05]
    )
    assert report["unit"] == "frame" and report["frames"] == report["examples"] == len(rows)
    m = report["models"][0]
    width, height = Image.open(os.path.join(frames_dir, rows[0]["path"])).size
    per_frame = (height // 32) * (width // 32)
    assert m["tiling"] == {
        "tile_size": 32,
        "stride": 32,
        "edge": "shift",
        "tiles_per_frame": per_frame,
        "tiles": len(rows) * per_frame,
    }
    clean = m["clean"]
    assert clean["examples"] == len(rows) and clean["tiles"]["examples"] == len(rows) * per_frame
    classes = json.loads(open(os.path.join(frame_model, "metadata.json")).read())["classes"]
    support = {c: sum(r["label"] == c for r in rows) for c in classes}
    assert {c: v["support"] for c, v in clean["per_class"].items()} == support

    # The frame grade by hand: cut the 4 x 4 grid, serve, average, argmax.
    fn = tf.saved_model.load(os.path.join(frame_model, "saved_model")).signatures["serving_default"]
    hits, nll = [], []
    for row in rows:
        frame = np.asarray(Image.open(os.path.join(frames_dir, row["path"])).convert("RGB"))
        tiles = [
            frame[r : r + 32, c : c + 32] for r in range(0, height, 32) for c in range(0, width, 32)
        ]
        probs = fn(image=tf.constant(np.stack(tiles), tf.float32))["probabilities"].numpy()
        mean = probs.mean(axis=0)
        hits.append(int(np.argmax(mean)) == classes.index(row["label"]))
        nll.append(-np.log(max(mean[classes.index(row["label"])], 1e-7)))
    assert clean["accuracy"] == pytest.approx(np.mean(hits))
    assert clean["log_loss"] == pytest.approx(np.mean(nll), rel=1e-4)

    for scores in (clean, m["corruptions"]["exposure"]["5"], *m["adversarial"]["pgd"].values()):
        for level in (scores, scores["tiles"]):
            assert 0.0 <= level["accuracy"] <= 1.0 and 0.0 <= level["macro_f1"] <= 1.0
    # Exposure acts on the whole frame before it is cut, so every tile's input changes.
    dark = m["corruptions"]["exposure"]["5"]
    assert dark["tiles"]["log_loss"] != pytest.approx(clean["tiles"]["log_loss"], rel=1e-4)
    assert m["adversarial"]["pgd"]["0.05"]["log_loss"] > clean["log_loss"]


def test_frames_folder_is_the_held_out_set(frame_model, frames_dir):
    with pytest.raises(ConfigError, match=r"split 'validation' applies to tile folders only"):
        evaluate_models([frame_model], frames_dir, split="validation")


def test_frames_are_graded_from_the_served_probabilities_only(frame_model, frames_dir):
    with pytest.raises(ConfigError, match=r"decision 'trained' applies to tile folders only"):
        evaluate_models([frame_model], frames_dir, decision="trained")
    with pytest.raises(ConfigError, match=r"decision 'raw': choose one of served, trained"):
        evaluate_models([frame_model], frames_dir, decision="raw")


def test_the_trained_decision_takes_the_logit_adjustment_back_out():
    # Served: log p = trained logits + adjustment (then softmax); background wins by the prior.
    trained = np.log(np.array([[0.3, 0.7], [0.9, 0.1], [0.6, 0.4]]))
    adjust = np.array([1.5, -1.5])
    served = np.exp(trained + adjust)
    served /= served.sum(1, keepdims=True)
    meta = {"calibration": {"logit_adjustment": {"probabilities": adjust.tolist()}}}
    assert decide(served, meta).tolist() == [0, 0, 0]
    assert decide(served, meta, "trained").tolist() == [1, 0, 0]
    assert decide(served, {}, "trained").tolist() == [0, 0, 0]  # nothing to take out
    with pytest.raises(ValueError, match="choose one of"):
        decide(served, meta, "balanced")


def test_a_label_outside_the_models_classes_is_named(frame_model, frames_dir, tmp_path):
    row = _rows(frames_dir)[0]
    shutil.copy(os.path.join(frames_dir, row["path"]), tmp_path / "a.png")
    (tmp_path / "labels.csv").write_text(
        "path,camera_id,timestamp,label\na.png,belt1,2024-01-15T08:00:00,gold\n"
    )
    with pytest.raises(InputError, match=r"label\(s\) 'gold' in .*labels.csv are not among"):
        evaluate_models([frame_model], str(tmp_path))


def test_tile_folders_keep_tile_mode(frame_model, frame_data):
    report = evaluate_models([frame_model], frame_data, max_examples=8)
    assert report["unit"] == "tile" and report["examples"] == 8
    assert "tiles" not in report["models"][0]["clean"]
    assert report["models"][0]["decision"] == "served"


def test_evaluate_cli_scores_the_trained_decision(frame_model, frame_data, tmp_path):
    from minewatch.cli.main import cli

    out = tmp_path / "REPORT.json"
    args = ["evaluate", frame_model, "--data", frame_data, "--out", str(out), "--decision"]
    args += ["trained", "--corruptions", "shift", "--severities", "1", "--epsilons", "0.02"]
    res = CliRunner().invoke(cli, [*args, "--max-examples", "8"])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["models"][0]["decision"] == "trained"


def test_evaluate_cli_on_frames_defaults_to_the_belt_suite(frame_model, frames_dir, tmp_path):
    from minewatch.cli.main import cli
    from minewatch.corruptions import BELT_SUITE

    out = tmp_path / "REPORT.json"
    args = ["evaluate", frame_model, "--data", frames_dir, "--out", str(out)]
    res = CliRunner().invoke(cli, [*args, "--severities", "2", "--epsilons", "0.05"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    m = report["models"][0]
    assert report["unit"] == "frame" and list(m["corruptions"]) == list(BELT_SUITE)
    assert (tmp_path / "REPORT.png").stat().st_size > 0
    line = next(x for x in res.output.splitlines() if x.startswith(frame_model))
    assert line.index("frame accuracy") < line.index("tile accuracy")
    res = CliRunner().invoke(cli, [*args, "--split", "validation"])
    assert res.exit_code == 1 and "frames folder" in res.output
