"""Fault views in the trainer: augmentation, the consistency term and the fault adversary."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest

from minewatch.errors import ConfigError
from tests.nsl_models.conftest import tiny_config


def test_views_need_faults_and_regularizers_need_views(frame_data):
    with pytest.raises(ConfigError, match=r"consistency\.enabled needs fault views"):
        tiny_config(frame_data, consistency={"enabled": True})
    with pytest.raises(ConfigError, match=r"fault_adversary\.enabled needs fault views"):
        tiny_config(frame_data, fault_adversary={"enabled": True})
    with pytest.raises(ConfigError, match=r"augment\.faults: views need at least one fault"):
        tiny_config(frame_data, augment={"views": 2})
    with pytest.raises(ConfigError, match=r"augment\.faults: unknown \['shake'\]"):
        tiny_config(frame_data, augment={"faults": ["shake"], "views": 1})
    with pytest.raises(ConfigError, match=r"augment\.max_severity"):
        tiny_config(frame_data, augment={"faults": ["shift"], "views": 1, "min_severity": 4,
                                         "max_severity": 2})  # fmt: skip


def test_belt_stands_for_the_nine_belt_faults(frame_data):
    from minewatch.corruptions import BELT_FAULTS

    cfg = tiny_config(frame_data, augment={"faults": ["belt", "shift"], "views": 2})
    assert cfg.augment.faults == (*BELT_FAULTS, "shift")


def test_dataset_views_are_seeded_faulted_copies(frame_data):
    from nsl_models import data as datalib

    cfg = tiny_config(frame_data)
    files = sorted(glob.glob(os.path.join(frame_data, "tiles", "*.tfrecord")))
    spec = datalib.read_tile_spec(frame_data, files)

    def first_batch(seed):
        ds = datalib.make_dataset(
            files, spec, cfg.data, split=datalib.Split.TRAIN, training=True, seed=seed,
            fault_views=3, view_faults=("shift", "exposure"), view_severities=(3, 5),
        )  # fmt: skip
        return next(iter(ds))

    a, b, c = first_batch(0), first_batch(0), first_batch(1)
    views, image = a["views"].numpy(), a["image"].numpy()
    assert views.shape == (image.shape[0], 3, *image.shape[1:])
    # every view differs from its image (severity >= 3 moves or rescales the pixels)
    assert np.all(np.abs(views - image[:, None]).reshape(*views.shape[:2], -1).max(-1) > 0)
    np.testing.assert_array_equal(views, b["views"].numpy())
    assert not np.array_equal(views, c["views"].numpy())


@pytest.mark.parametrize(
    ("sections", "on", "off"),
    [
        ({}, [], ["consistency_loss", "fault_adversarial_loss"]),
        ({"consistency": {"enabled": True}}, ["consistency_loss"], ["fault_adversarial_loss"]),
        ({"fault_adversary": {"enabled": True}}, ["fault_adversarial_loss"], ["consistency_loss"]),
    ],
)
def test_each_term_trains_only_when_switched_on(frame_data, tmp_path, sections, on, off):
    from nsl_models.train import Trainer

    cfg = tiny_config(
        frame_data,
        augment={"faults": ["shift", "exposure"], "views": 2},
        train={"epochs": 1, "steps_per_epoch": 3},
        **sections,
    )
    result = Trainer(cfg, str(tmp_path / "m")).fit(export=False)
    logs = result.history[-1]
    assert result.global_step == 3
    for name in on:
        assert logs[name] > 0.0, logs
    for name in off:
        assert logs[name] == 0.0, logs
    if "fault_adversarial_loss" in on:
        # the worst view's cross-entropy is at least the mean over image and views
        assert logs["fault_adversarial_loss"] >= 0.5 * logs["supervised_loss"]
    assert all(np.isfinite(v) for v in logs.values())
