import pathlib

import pytest

from minewatch.errors import ConfigError
from nsl_models.configs import (
    AdversarialMethod,
    SplitKey,
    Task,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    load_config,
    make_adversarial_config,
    make_trainer_config,
)

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "nsl_models" / "configs"


def test_defaults_round_trip():
    cfg = make_trainer_config(data={"tiles": "x"})
    assert config_from_dict(config_to_dict(cfg)) == cfg
    assert cfg.data.split_by is SplitKey.LOCATION  # auto resolved for tiles
    assert make_trainer_config(task="frame").data.split_by is SplitKey.SCENE


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"train": {"epoch": 3}}, r"unknown key train\.epoch"),
        ({"trian": {}}, r"unknown key trian"),
        ({"train": {"epochs": 0}}, r"train\.epochs: must be >= 1"),
        ({"train": {"epochs": "3"}}, r"train\.epochs: expected an integer"),
        ({"train": {"epochs": True}}, r"train\.epochs: expected an integer"),
        ({"data": {"label_fraction": 1.5}}, r"data\.label_fraction: must be in \(0, 1\]"),
        ({"adversarial": {"method": "cw"}}, r"adversarial\.method: 'cw' is not one of fgsm, pgd"),
        ({"graph": {"enabled": "yes"}}, r"graph\.enabled: expected true or false"),
        ({"task": "video"}, r"task: 'video' is not one of tile, frame"),
        ({"model": 3}, r"model: expected a mapping"),
        ({"data": {"majority_keep": 0}}, r"data\.majority_keep: must be in \(0, 1\]"),
        ({"data": {"max_pixel_class_weight": 0.5}}, r"data\.max_pixel_class_weight: must be 0"),
        ({"data": {"pixel_class_weighting": "log"}}, r"data\.pixel_class_weighting: 'log'"),
        ({"model": {"pixel_dilation": 5}}, r"model\.pixel_dilation: must be in 1\.\.4"),
        ({"adversarial": {"corruptions": ["shake"]}}, r"adversarial\.corruptions: unknown"),
        ({"adversarial": {"corruptions": 3}}, r"adversarial\.corruptions: expected a list"),
        ({"adversarial": {"max_severity": 6}}, r"adversarial\.max_severity: must be in 1\.\.5"),
    ],
)
def test_rejects_bad_input_naming_the_key(mapping, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(mapping)


def test_overrides_parse_yaml_scalars():
    out = apply_overrides({"train": {"epochs": 1}}, ["train.epochs=3", "adversarial.method=pgd"])
    cfg = config_from_dict(out)
    assert cfg.train.epochs == 3
    assert cfg.adversarial.method is AdversarialMethod.PGD
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        apply_overrides({}, ["train.epochs"])


def test_load_yaml_and_toml(tmp_path):
    (tmp_path / "c.toml").write_text('task = "frame"\n[train]\nepochs = 2\n')
    cfg = load_config(tmp_path / "c.toml", ["train.seed=5"])
    assert (cfg.task, cfg.train.epochs, cfg.train.seed) == (Task.FRAME, 2, 5)
    (tmp_path / "c.yaml").write_text("train: {epochs: 2, bogus: 1}\n")
    with pytest.raises(ConfigError, match=r"unknown key train\.bogus"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"use a \.yaml"):
        load_config(tmp_path / "c.json")


@pytest.mark.parametrize("name", ["tiles.yaml", "frames.yaml"])
def test_example_configs_are_valid(name):
    load_config(EXAMPLES / name)


def test_make_helpers_take_class_defaults():
    adv = make_adversarial_config(method="pgd")
    assert adv.enabled and adv.epsilon == 0.05 and adv.method is AdversarialMethod.PGD


def test_corruption_list_from_yaml_or_comma_string_round_trips():
    one = config_from_dict(
        apply_overrides({}, ["adversarial.corruptions=shift,rotation,motion_blur"])
    )
    two = config_from_dict({"adversarial": {"corruptions": ["shift", "rotation", "motion_blur"]}})
    assert one.adversarial.corruptions == ("shift", "rotation", "motion_blur")
    assert one == two
    assert config_to_dict(one)["adversarial"]["corruptions"] == ["shift", "rotation", "motion_blur"]
    assert config_from_dict(config_to_dict(one)) == one
