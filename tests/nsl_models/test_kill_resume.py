"""The trainer killed with SIGKILL in a real subprocess, then resumed (issues 6 and 10).

A child process trains (and promotes) while the test kills it: between steps,
at random moments (often inside a checkpoint write, one is written every step),
while the SavedModel is exported, and while it is copied into the registry.
After every kill: the latest checkpoint is readable, the registry is either
empty or serves a complete model, and a resumed run ends with a valid model.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

ROOT = Path(__file__).resolve().parents[2]
EPOCHS, STEPS = 2, 6
SECTIONS = {"train": {"epochs": EPOCHS, "steps_per_epoch": STEPS, "checkpoint_every": 1}}

CHILD = """
import json, os, sys, time
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from nsl_models.registry import promote
from nsl_models.train import train_from_config
from tests.nsl_models.conftest import tiny_config

tiles, model_dir, registry, sections, pause_at = json.loads(sys.argv[1])

def hook(step, logs):
    print(f"STEP {step}", flush=True)
    if step == pause_at:
        time.sleep(600)  # the parent kills it here

train_from_config(tiny_config(tiles, **sections), model_dir, hooks=[hook])
print("EXPORTED", flush=True)
print("PROMOTED", promote(model_dir, registry).promoted, flush=True)
"""


def _child(tile_data, model_dir, registry, pause_at=-1):
    args = json.dumps([tile_data, str(model_dir), str(registry), SECTIONS, pause_at])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _kill_after_line(proc, prefix, delay=0.0):
    """SIGKILL ``proc`` ``delay`` s after it prints a line starting with ``prefix``."""
    for line in proc.stdout:
        if line.startswith(prefix):
            time.sleep(delay)
            break
    else:
        pytest.fail(f"the child ended before printing {prefix!r} (rc {proc.wait()})")
    _kill(proc)


def _kill_when(proc, ready, timeout=300.0):
    """SIGKILL ``proc`` as soon as ``ready()`` is true."""
    end = time.time() + timeout
    while not ready():
        assert proc.poll() is None, "the child ended before the kill point"
        assert time.time() < end, "kill point not reached"
        time.sleep(0.005)
    _kill(proc)


def _kill(proc):
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    proc.stdout.close()


def _latest_checkpoint_is_readable(model_dir):
    latest = tf.train.latest_checkpoint(str(model_dir / "checkpoints"))
    if latest is None:
        return 0
    reader = tf.train.load_checkpoint(latest)
    names = reader.get_variable_to_shape_map()
    assert any("optimizer" in n for n in names)
    return int(latest.rsplit("-", 1)[1])


def _registry_is_whole(registry):
    """Nothing or a complete model: current.json resolves, every version is whole."""
    from minewatch.registry import resolve_model

    if (registry / "current.json").exists():
        model = resolve_model(str(registry))
        _serves(model.saved_model)
    for version in (registry / "versions").glob("[!.]*"):
        assert (version / "saved_model" / "saved_model.pb").exists(), version
        assert (version / "metadata.json").exists(), version


def _serves(saved_model):
    serve = tf.saved_model.load(str(saved_model)).signatures["serving_default"]
    x = np.random.default_rng(0).uniform(0, 3000, (3, 16, 16, 5)).astype(np.float32)
    probs = serve(image=tf.constant(x))["probabilities"].numpy()
    assert probs.shape == (3, 5) and np.isfinite(probs).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def _resume_to_the_end(tile_data, model_dir):
    from nsl_models.train import Trainer
    from tests.nsl_models.conftest import tiny_config

    steps = []
    trainer = Trainer(
        tiny_config(tile_data, **SECTIONS), str(model_dir), hooks=[lambda s, logs: steps.append(s)]
    )
    result = trainer.fit()
    assert result.global_step == EPOCHS * STEPS and result.epochs == EPOCHS
    assert steps == list(range(result.resumed_from + 1, EPOCHS * STEPS + 1))
    assert json.loads((model_dir / "metadata.json").read_text())["tile_size"] == 16
    _serves(model_dir / "saved_model")
    return result


def test_sigkill_between_steps_then_resume(tile_data, tmp_path):
    model_dir, registry = tmp_path / "m", tmp_path / "registry"
    proc = _child(tile_data, model_dir, registry, pause_at=4)
    _kill_after_line(proc, "STEP 4")
    assert _latest_checkpoint_is_readable(model_dir) == 4  # saved before the hook ran
    assert not (model_dir / "saved_model").exists() and not registry.exists()
    result = _resume_to_the_end(tile_data, model_dir)
    assert result.resumed_from == 4


@pytest.mark.slow
def test_sigkill_at_random_points_during_training(tile_data, tmp_path):
    model_dir, registry = tmp_path / "m", tmp_path / "registry"
    rng = random.Random(7)
    for _ in range(3):
        proc = _child(tile_data, model_dir, registry)
        # a checkpoint is written every step: a kill a few ms after a step
        # often lands inside the write of the next one
        step = _latest_checkpoint_is_readable(model_dir) + 1
        _kill_after_line(proc, f"STEP {min(step, EPOCHS * STEPS - 1)}", rng.uniform(0, 0.3))
        _latest_checkpoint_is_readable(model_dir)
        assert not registry.exists()
    _resume_to_the_end(tile_data, model_dir)


@pytest.mark.slow
def test_sigkill_during_export_and_promotion(tile_data, tmp_path):
    model_dir, registry = tmp_path / "m", tmp_path / "registry"
    # 1. killed while the SavedModel is written (into .exporting-*, renamed to
    #    saved_model/ when whole): no saved_model/, no metadata.json, nothing promoted
    proc = _child(tile_data, model_dir, registry)
    _kill_when(proc, lambda: any(model_dir.glob(".exporting-*")))
    assert not (model_dir / "saved_model").exists()
    assert not (model_dir / "metadata.json").exists()
    assert not registry.exists()
    # 2. killed at a random moment of the promotion that follows the export
    proc = _child(tile_data, model_dir, registry)
    _kill_after_line(proc, "EXPORTED", random.Random(3).uniform(0.0, 0.4))
    _registry_is_whole(registry)
    assert (
        not [p for p in (registry / "versions").glob("*") if not p.name.startswith(".")]
        or (registry / "current.json").exists()
    )
    # 3. a run that completes: exports again and promotes, unless the promotion
    #    of step 2 finished before the kill (then the same score is refused)
    proc = _child(tile_data, model_dir, registry)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "PROMOTED" in out
    assert (registry / "current.json").exists()
    _registry_is_whole(registry)
    current = json.loads((registry / "current.json").read_text())
    # 4. the finished run exports again (a rerun): killed while the new SavedModel
    #    is written, the model folder still holds the previous whole model and the
    #    registry still serves its own whole copy ...
    before = json.loads((model_dir / "metadata.json").read_text())
    proc = _child(tile_data, model_dir, registry)
    _kill_when(proc, lambda: any(model_dir.glob(".exporting-*")))
    _registry_is_whole(registry)
    assert json.loads((registry / "current.json").read_text()) == current
    assert json.loads((model_dir / "metadata.json").read_text()) == before
    _serves(model_dir / "saved_model")
    # ... and promoting that folder again changes nothing
    from nsl_models.registry import promote

    try:
        decision = promote(str(model_dir), str(registry))
    except Exception as exc:  # refused with an error: fine, as long as nothing changed
        decision = exc
    assert getattr(decision, "promoted", False) is False, decision
    _registry_is_whole(registry)
