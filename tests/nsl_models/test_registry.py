"""Export contract, promotion and the current-model lookup, with untrained tiny models."""

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from minewatch.errors import InputError
from nsl_models import data as datalib
from nsl_models.configs import ModelConfig
from nsl_models.models import build_base_model
from nsl_models.registry import export_model, load_current, promote, read_metadata

tf = pytest.importorskip("tensorflow")

SPEC = datalib.TileSpec(
    8,
    8,
    3,
    "uint8",
    ("red", "green", "blue"),
    ("high", "low"),
    (100.0, 90.0, 80.0),
    (50.0, 40.0, 30.0),
)


def _export(path, accuracy, nan=False, seed=0):
    tf.keras.utils.set_random_seed(seed)
    base = build_base_model(SPEC, ModelConfig(width=4, depth=1, embedding_dim=4))
    if nan:
        base.set_weights([np.full_like(w, np.nan) for w in base.get_weights()])
    metrics = {"accuracy": accuracy, "selection_metric": "accuracy"}
    return export_model(
        base,
        SPEC,
        str(path),
        task="frame",
        config={"seed": seed},
        metrics=metrics,
        data_hash="sha256:0",
    )


def _variant(src, dst, version, accuracy):
    # Another version of the same weights with another held-out score (saves an export).
    shutil.copytree(src, dst)
    meta = json.loads((dst / "metadata.json").read_text())
    meta.update(version=version, metrics={"accuracy": accuracy, "selection_metric": "accuracy"})
    (dst / "metadata.json").write_text(json.dumps(meta))
    return meta


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    a = _export(root / "a", 0.6, seed=1)
    return {
        "a": (root / "a", a),
        "worse": (root / "worse", _variant(root / "a", root / "worse", "v-worse", 0.5)),
        "better": (root / "better", _variant(root / "a", root / "better", "v-better", 0.7)),
        "nan_m": (root / "nan_m", _variant(root / "a", root / "nan_m", "v-nan", None)),
        "nan_w": (root / "nan_w", _export(root / "nan_w", 0.9, nan=True, seed=4)),
    }


def test_metadata_contract(models):
    path, meta = models["a"]
    on_disk = json.loads((path / "metadata.json").read_text())
    assert on_disk == meta
    assert set(meta) == {
        "version",
        "task",
        "classes",
        "bands",
        "tile_size",
        "input_dtype",
        "normalization",
        "outputs",
        "data_manifest_hash",
        "config",
        "metrics",
        "created",
    }
    assert meta["outputs"] == ["probabilities", "embedding"]  # no pixel head here
    assert meta["normalization"] == {"mean": [100.0, 90.0, 80.0], "std": [50.0, 40.0, 30.0]}
    sig = tf.saved_model.load(str(path / "saved_model")).signatures["serving_default"]
    spec = sig.structured_input_signature[1]["image"]
    assert spec.dtype == tf.float32 and spec.shape.as_list() == [None, 8, 8, 3]
    assert set(sig.structured_outputs) == {"probabilities", "embedding"}


def test_promotion_rules(models, tmp_path):
    reg = str(tmp_path / "reg")
    with pytest.raises(InputError, match="nothing promoted yet"):
        load_current(reg)
    first = promote(str(models["a"][0]), reg)
    assert first.promoted and "first model" in first.reason
    worse = promote(str(models["worse"][0]), reg)
    assert not worse.promoted and "does not beat" in worse.reason
    nan_w = promote(str(models["nan_w"][0]), reg)
    assert not nan_w.promoted and "NaN" in nan_w.reason
    nan_m = promote(str(models["nan_m"][0]), reg)
    assert not nan_m.promoted and "nan" in nan_m.reason
    assert load_current(reg)[1]["version"] == models["a"][1]["version"]
    better = promote(str(models["better"][0]), reg)
    assert better.promoted and "beats" in better.reason
    path, meta = load_current(reg)
    assert meta["version"] == models["better"][1]["version"]
    assert (tmp_path / "reg" / "versions" / models["a"][1]["version"] / "saved_model").is_dir()
    x = tf.constant(np.ones((1, 8, 8, 3), np.float32))
    probs = tf.saved_model.load(f"{path}/saved_model").signatures["serving_default"](image=x)
    np.testing.assert_allclose(probs["probabilities"].numpy().sum(), 1.0, rtol=1e-5)


def test_promote_cli_exit_codes(models, tmp_path):
    from minewatch.cli.main import cli

    runner = CliRunner()
    reg = str(tmp_path / "reg")
    ok = runner.invoke(cli, ["promote", str(models["a"][0]), "--registry", reg])
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(cli, ["promote", str(models["worse"][0]), "--registry", reg])
    assert refused.exit_code == 1 and "does not beat" in refused.output


def test_a_rerun_export_swaps_in_a_whole_model_and_writes_metadata_last(models, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(models["a"][0], path)
    (path / ".exporting-killed").mkdir()  # what an export killed mid-write leaves
    (path / ".exporting-killed" / "fingerprint.pb").write_bytes(b"partial")
    meta = _export(path, 0.8, seed=2)
    assert meta["version"] != models["a"][1]["version"]
    assert json.loads((path / "metadata.json").read_text()) == meta
    assert sorted(p.name for p in path.iterdir()) == ["metadata.json", "saved_model"]
    serve = tf.saved_model.load(str(path / "saved_model")).signatures["serving_default"]
    probs = serve(image=tf.constant(np.ones((2, 8, 8, 3), np.float32)))["probabilities"]
    np.testing.assert_allclose(probs.numpy().sum(axis=1), 1.0, rtol=1e-5)


def test_an_export_killed_before_the_swap_leaves_the_previous_model_whole(models, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(models["a"][0], path)
    # killed while the new SavedModel was written: only the side folder is new
    shutil.copytree(models["a"][0] / "saved_model", path / ".exporting-x1")
    (path / ".exporting-x1" / "saved_model.pb").unlink()
    assert read_metadata(str(path)) == models["a"][1]
    decision = promote(str(path), str(tmp_path / "reg"))
    assert decision.promoted and decision.version == models["a"][1]["version"]


@pytest.mark.parametrize(
    "gone",
    [
        "saved_model/saved_model.pb",
        "saved_model/variables/variables.index",
        "metadata.json",
    ],
)
def test_a_model_folder_missing_a_part_is_refused_and_never_promoted(models, tmp_path, gone):
    path = tmp_path / "m"
    shutil.copytree(models["better"][0], path)
    (path / gone).unlink()
    with pytest.raises(InputError, match=f"not a whole model folder: no {gone}"):
        read_metadata(str(path))
    reg = tmp_path / "reg"
    assert promote(str(models["a"][0]), str(reg)).promoted
    before = (reg / "current.json").read_text()
    with pytest.raises(InputError, match="export it again"):
        promote(str(path), str(reg))
    assert (reg / "current.json").read_text() == before
    assert sorted(p.name for p in (reg / "versions").iterdir()) == [models["a"][1]["version"]]
    with pytest.raises(InputError, match="is not a model folder"):
        read_metadata(str(tmp_path / "nothing"))


def test_unreadable_weights_are_refused(models, tmp_path):
    path = tmp_path / "m"
    shutil.copytree(models["better"][0], path)
    (data,) = (path / "saved_model" / "variables").glob("variables.data-*")
    data.write_bytes(data.read_bytes()[:16])  # cut short, as by a full disk
    decision = promote(str(path), str(tmp_path / "reg"))
    assert not decision.promoted and "the weights cannot be read" in decision.reason
    assert not (tmp_path / "reg" / "current.json").exists()


def test_train_cli_rejects_bad_config(tmp_path):
    from minewatch.cli.main import cli

    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {epochs: 1}\n")
    res = CliRunner().invoke(
        cli,
        ["train", "--config", str(cfg), "--out", str(tmp_path / "m"), "--set", "train.epochz=2"],
    )
    assert res.exit_code == 2 and "train.epochz" in res.output
    res = CliRunner().invoke(
        cli,
        [
            "train",
            "--config",
            str(cfg),
            "--out",
            str(tmp_path / "m"),
            "--set",
            "adversarial.epsilon=-1",
        ],
    )
    assert res.exit_code == 2 and "adversarial.epsilon: must be > 0" in res.output


def test_evaluate_cli_report_and_plot(models, frame_data, tmp_path):
    from minewatch.cli.main import cli

    out = tmp_path / "r.json"
    # Frame tiles are 32 px; re-tile-free check on the 8-px models is impossible, so
    # export a 32-px model from the real spec.
    files = sorted(__import__("glob").glob(f"{frame_data}/tiles/*.tfrecord"))
    spec = datalib.read_tile_spec(frame_data, files)
    base = build_base_model(spec, ModelConfig(width=4, depth=1, embedding_dim=4))
    export_model(
        base,
        spec,
        str(tmp_path / "m32"),
        task="frame",
        config={},
        metrics={"accuracy": 0.1},
        data_hash="x",
    )
    res = CliRunner().invoke(
        cli,
        [
            "evaluate",
            str(tmp_path / "m32"),
            "--data",
            frame_data,
            "--out",
            str(out),
            "--corruptions",
            "shift,motion_blur",
            "--severities",
            "1,3",
            "--epsilons",
            "0.05",
            "--max-examples",
            "32",
        ],
    )
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    m = report["models"][0]
    assert report["examples"] == 32
    assert set(m["corruptions"]) == {"shift", "motion_blur"} and set(m["corruptions"]["shift"]) == {
        "1",
        "3",
    }
    assert set(m["adversarial"]) == {"fgsm", "pgd"}
    assert set(m["clean"]["per_class"]) == {"high", "low", "medium", "waste"}
    assert (tmp_path / "r.png").stat().st_size > 1000
