"""minewatch retrain: the real nightly cycle on tiny synthetic scenes, run three times.

Night 1 tiles one scene, builds the graph, trains, evaluates and promotes the
first model. The same night again finds nothing new and records a no-op. Night
2 brings a second scene: only it is tiled, the graph covers both, the model
starts from the current weights and is compared with the current model.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import UTC, datetime

import pytest
import yaml

from minewatch.errors import ConfigError
from minewatch.workflows.retrain import (
    RetrainLocked,
    load_retrain_config,
    merge_band_stats,
    read_ledger,
    read_training_runs,
    retrain,
    retrain_config_from_dict,
    robustness_refusal,
)
from minewatch.workflows.retrain.cycle import retrain_lock

TILE_ARGS = ["--tile-size", "16", "--bands", "B02,B03,B04,B08,B11"]
TRAINER = {
    "task": "tile",
    "data": {"batch_size": 16, "shuffle_buffer": 64},
    "model": {"width": 8, "depth": 1, "embedding_dim": 8, "dropout": 0.0},
    "graph": {"enabled": True, "max_neighbors": 2},
    "train": {"epochs": 1, "steps_per_epoch": 3, "checkpoint_every": 3, "seed": 1},
}


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    from minewatch.synth import make_ground_truth

    root = tmp_path_factory.mktemp("retrain_gt")
    make_ground_truth(root / "gt", size="tiny", seed=0)
    return root / "gt"


def write_config(root, trainer=None, **extra):
    (root / "trainer.yaml").write_text(yaml.safe_dump(trainer or TRAINER))
    data = {
        "scenes": "incoming",
        "labels": str(root / "truth" / "scene_*.geojson"),
        "work": "work",
        "registry": "registry",
        "tile_args": TILE_ARGS,
        "graph_args": ["--k", "2"],
        "training": {"config": "trainer.yaml", "init": "current"},
        "evaluation": {"severities": [2], "epsilons": [0.05], "corruptions": ["shift", "haze"]},
        **extra,
    }
    path = root / "retrain.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_nightly_cycle_twice_then_new_data(truth, tmp_path):
    shutil.copytree(truth / "truth", tmp_path / "truth")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    scenes = sorted((truth / "scenes").glob("*.tif"))
    shutil.copy2(scenes[0], incoming)
    config = load_retrain_config(write_config(tmp_path))
    tables = tmp_path / "work" / "tables"

    first = retrain(config, now=datetime(2024, 1, 16, 2, tzinfo=UTC))
    assert first["status"] == "promoted", first["reason"]
    assert first["promoted"] and "first model in the registry" in first["reason"]
    assert first["scenes_new"] == 1 == first["scenes_tiled"] + first["scenes_dead_lettered"]
    assert first["tiles_new"] == first["tiles_total"] > 0
    assert first["graph_edges"] > 0
    assert first["init"].startswith("scratch")
    assert first["window_start"].date().isoformat() == "2024-01-15"
    current = json.loads((tmp_path / "registry" / "current.json").read_text())
    assert current["version"] == first["model_version"]
    report = json.loads(open(first["report"]).read())
    (model,) = report["models"]  # nothing to compare with yet
    assert set(model["corruptions"]) == {"shift", "haze"}
    assert set(model["adversarial"]) == {"fgsm", "pgd"}
    assert 0.0 <= first["corrupted_accuracy"] <= 1.0

    ledger = read_ledger(str(tables))
    assert [(r["path"], r["run_id"]) for r in ledger] == [
        (str(incoming / scenes[0].name), first["run_id"])
    ]

    # The same night again: nothing new, no training, a no-op row.
    again = retrain(config, now=datetime(2024, 1, 16, 3, tzinfo=UTC))
    assert again["status"] == "noop" and not again["promoted"]
    assert again["scenes_new"] == 0 and again["tiles_new"] == 0
    assert first["run_id"] in again["reason"] and again["global_step"] is None
    assert len(read_ledger(str(tables))) == 1
    assert json.loads((tmp_path / "registry" / "current.json").read_text()) == current

    # Night 2: a second scene; only it is tiled, training starts from the current model.
    shutil.copy2(scenes[1], incoming)
    second = retrain(config, now=datetime(2024, 1, 17, 2, tzinfo=UTC))
    assert second["status"] in ("promoted", "not_promoted"), second["reason"]
    assert second["scenes_new"] == 1 and second["batches"] == 2
    assert second["tiles_total"] == first["tiles_total"] + second["tiles_new"]
    assert second["init"] == f"current {first['model_version']}"
    assert second["current_version"] == first["model_version"]
    assert second["window_end"].date().isoformat() == "2024-04-15"
    stats = json.loads((tmp_path / "work" / "dataset" / "stats.json").read_text())
    assert stats["tiles"]["written"] == second["tiles_total"]
    assert len(os.listdir(tmp_path / "work" / "dataset" / "tiles")) >= 2
    if second["promoted"]:
        assert "beats current" in second["reason"]
    else:
        assert "does not beat" in second["reason"] or "refused" in second["reason"]

    runs = read_training_runs(str(tables))
    assert [r["status"] for r in runs] == ["promoted", "noop", second["status"]]
    from minewatch.query import open_tables, run_query

    con, names = open_tables(str(tables))
    assert {"training_runs", "retrain_ledger"} <= set(names)
    rows = run_query(con, "select status, count(*) n from training_runs group by 1").to_pylist()
    assert sum(r["n"] for r in rows) == 3


def test_overlapping_run_is_refused(tmp_path):
    (tmp_path / "incoming").mkdir()
    config = load_retrain_config(write_config(tmp_path))
    with (
        retrain_lock(config.work_dir),
        pytest.raises(RetrainLocked, match="another minewatch retrain"),
    ):
        retrain(config)
    assert read_training_runs(config.tables_dir) == []


def test_no_scene_yet_is_a_noop(tmp_path):
    (tmp_path / "incoming").mkdir()
    config = load_retrain_config(write_config(tmp_path))
    record = retrain(config)
    assert record["status"] == "noop" and "nothing to train on" in record["reason"]
    assert [r["status"] for r in read_training_runs(config.tables_dir)] == ["noop"]


def test_failure_is_recorded(tmp_path, truth):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy2(sorted((truth / "scenes").glob("*.tif"))[0], incoming)
    # Labels that do not exist: found only when the tile job starts.
    config = load_retrain_config(write_config(tmp_path, labels="missing/*.geojson"))
    with pytest.raises(ConfigError, match="labels"):
        retrain(config)
    (row,) = read_training_runs(config.tables_dir)
    assert row["status"] == "failed" and "missing" in row["reason"]
    # Nothing was committed: the scene is still new for the next run.
    assert read_ledger(config.tables_dir) == []


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"work": "w", "registry": "r", "training": {"config": "t.yaml"}}, "scenes: required"),
        ({"scenes": "s", "work": "w", "registry": "r"}, "training: required"),
        (
            {"scenes": "s", "work": "w", "registry": "r", "training": {"config": "t", "x": 1}},
            "unknown key training.x",
        ),
        (
            {"scenes": "s", "work": "w", "registry": "r", "training": {"config": "t", "init": "x"}},
            "training.init: 'x' is not one of scratch, current",
        ),
        (
            {
                "scenes": "s",
                "work": "w",
                "registry": "r",
                "training": {"config": "t", "overrides": ["data.tiles=x"]},
            },
            "data.tiles is set by retrain",
        ),
        (
            {
                "scenes": "s",
                "work": "w",
                "registry": "r",
                "tile_args": ["--out", "x"],
                "training": {"config": "t"},
            },
            "tile_args: --out is set by retrain",
        ),
        (
            {
                "scenes": "s",
                "work": "w",
                "registry": "r",
                "training": {"config": "t"},
                "evaluation": {"severities": [9]},
            },
            "evaluation.severities: must be in 1..5",
        ),
        (
            {
                "scenes": "s",
                "work": "w",
                "registry": "r",
                "training": {"config": "t"},
                "evaluation": {"epsilons": {"eps": 0.1}},
            },
            "evaluation.epsilons: expected a list",
        ),
    ],
)
def test_config_errors_name_the_key(mapping, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        retrain_config_from_dict(mapping)


@pytest.mark.parametrize(
    ("key", "args", "message"),
    [
        ("tile_args", ["--tile-size", "3"], "tile_args: .*--tile-size"),
        ("graph_args", ["--k", "zero"], "graph_args: .*--k"),
    ],
)
def test_job_args_are_parsed_when_the_config_loads(tmp_path, key, args, message):
    with pytest.raises(ConfigError, match=message):
        load_retrain_config(write_config(tmp_path, **{key: args}))


def test_relative_paths_resolve_against_the_config_file(tmp_path):
    config = load_retrain_config(write_config(tmp_path))
    assert config.work_dir == str(tmp_path / "work")
    assert config.tables_dir == str(tmp_path / "work" / "tables")
    assert config.path(config.training.config) == str(tmp_path / "trainer.yaml")
    assert config.path("gs://b/x") == "gs://b/x"


def test_example_config_is_valid():
    root = os.path.join(os.path.dirname(__file__), "..", "..", "..", "deploy", "retrain")
    config = load_retrain_config(os.path.join(root, "retrain.yaml"))
    from nsl_models.configs import load_config

    trainer = load_config(config.path(config.training.config), config.training.overrides)
    assert trainer.train.epochs == 5 and config.training.init.value == "current"


def test_merge_band_stats_is_exact():
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 2, 100), rng.normal(9, 1, 50)

    def stats(x):
        return {
            "B": {"count": x.size, "mean": x.mean(), "std": x.std(), "min": x.min(), "max": x.max()}
        }

    merged = merge_band_stats([stats(a), stats(b)])["B"]
    both = np.concatenate([a, b])
    assert merged["count"] == 150
    assert merged["mean"] == pytest.approx(both.mean())
    assert merged["std"] == pytest.approx(both.std())
    assert (merged["min"], merged["max"]) == (both.min(), both.max())


def test_robustness_gate():
    cand = {"corrupted_accuracy": 0.5}
    assert robustness_refusal(cand, None, 0.05) == ""
    assert robustness_refusal(cand, {"corrupted_accuracy": 0.52}, 0.05) == ""
    assert "more than 0.05 below" in robustness_refusal(cand, {"corrupted_accuracy": 0.6}, 0.05)
    assert robustness_refusal(cand, {"corrupted_accuracy": 0.9}, 1.0) == ""


def test_cli_refuses_a_bad_config(tmp_path):
    from click.testing import CliRunner

    from minewatch.cli.retrain import retrain as command

    path = tmp_path / "r.yaml"
    path.write_text("scenes: s\nwork: w\nregistry: r\ntraining: {config: t, init: warm}\n")
    result = CliRunner().invoke(command, ["--config", str(path)])
    assert result.exit_code == 2
    assert "--config" in result.output and "training.init" in result.output


def test_cli_exits_75_while_another_run_holds_the_lock(tmp_path):
    from click.testing import CliRunner

    from minewatch.cli.retrain import retrain as command

    (tmp_path / "incoming").mkdir()
    path = write_config(tmp_path)
    config = load_retrain_config(path)
    with retrain_lock(config.work_dir):
        result = CliRunner().invoke(command, ["--config", str(path)])
    assert result.exit_code == 75
    assert "another minewatch retrain is running" in result.output


def test_retrain_runs_both_hard_negative_rounds(truth, tmp_path):
    """With ``train.hard_negatives`` the cycle trains round 1, mines it (tile head) and round 2."""
    shutil.copytree(truth / "truth", tmp_path / "truth")
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy2(sorted((truth / "scenes").glob("*.tif"))[0], incoming)
    trainer = {**TRAINER, "data": {**TRAINER["data"], "majority_keep": 0.5}}
    trainer["train"] = {**TRAINER["train"], "hard_negatives": 0.25}
    config = load_retrain_config(write_config(tmp_path, trainer))
    record = retrain(config, now=datetime(2024, 1, 16, 2, tzinfo=UTC))
    assert record["status"] == "promoted", record["reason"]
    model_dir = record["model_dir"]
    assert os.path.exists(os.path.join(model_dir, "round1", "metadata.json"))
    mined = json.loads(open(os.path.join(model_dir, "hard_negatives.json")).read())
    meta = json.loads(open(os.path.join(model_dir, "metadata.json")).read())
    assert meta["hard_negatives"]["tiles"] == len(mined["tile_ids"]) > 0
    assert meta["hard_negatives"]["tiles"] == round(0.25 * meta["hard_negatives"]["pool"])
