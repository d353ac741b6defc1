"""Two CPU replicas (``train.cpu_replicas``) train exactly what one replica trains.

Each run happens in a fresh process (``replica_run.py``): logical CPU devices
must be configured before TensorFlow initialises, which pytest's process did
long ago. The combined step (supervised + per-pixel + graph + PGD adversarial)
runs a few steps on one replica and on two, same global batch, seed and data
order; the logged losses and the final weights must agree.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minewatch.errors import ConfigError
from tests.nsl_models.conftest import tiny_config

tf = pytest.importorskip("tensorflow")

HELPER = os.path.join(os.path.dirname(__file__), "replica_run.py")
#: Measured: float32 1- vs 2-replica differences <= ~6e-7 (reduction order).
F32_TOL = 1e-5
#: Measured with mixed_bfloat16: losses 2.5e-4, weights 3.0e-3 (docs/training.md).
BF16_TOL = 2e-2


@pytest.fixture(scope="module")
def runs(tile_data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("replicas"))
    args = json.dumps({"tiles": tile_data, "out": out, "steps": 4})
    proc = subprocess.run(
        [sys.executable, HELPER, args], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _max_diff(one, two, skip=()):
    assert [r["step"] for r in one["logs"]] == [1, 2, 3, 4]
    pairs = zip(one["logs"], two["logs"], strict=True)
    logs = max(abs(a[k] - b[k]) for a, b in pairs for k in a if k not in skip)
    weights = np.abs(np.asarray(one["weights"]) - np.asarray(two["weights"])).max()
    return logs, weights


def test_two_replicas_match_one_in_float32(runs):
    one, two = runs["float32_1"], runs["float32_2"]
    assert runs["devices"] == 2 and (one["replicas"], two["replicas"]) == (1, 2)
    assert one["precision"] == two["precision"] == "float32"
    assert all(one["logs"][-1][k] > 0 for k in ("graph_loss", "adversarial_loss", "pixel_loss"))
    logs, weights = _max_diff(one, two)
    print(f"float32: max log diff {logs:.3g}, max weight diff {weights:.3g}")
    assert logs < F32_TOL and weights < F32_TOL


def test_two_replicas_match_one_in_bfloat16(runs):
    one, two = runs["bfloat16_1"], runs["bfloat16_2"]
    assert one["precision"] == two["precision"] == "mixed_bfloat16"
    # bfloat16 rounding can flip one tile's argmax: accuracy within one tile of 16.
    accuracy = max(
        abs(a["accuracy"] - b["accuracy"]) for a, b in zip(one["logs"], two["logs"], strict=True)
    )
    logs, weights = _max_diff(one, two, skip=("accuracy",))
    print(f"bfloat16: max loss diff {logs:.3g}, weight diff {weights:.3g}, accuracy {accuracy}")
    assert logs < BF16_TOL and weights < BF16_TOL and accuracy <= 1 / 16 + 1e-6


def test_two_replica_run_checkpoints_resumes_and_exports(runs):
    r = runs["resume"]
    assert r["replicas"] == 2 and r["resumed_from"] == 4
    assert r["steps_after_resume"] == [5, 6] and r["global_step"] == 6
    assert "ckpt-4.index" in r["checkpoints"]
    assert r["served_max_diff"] < 1e-5
    # The SavedModel of the 2-replica run also loads and serves here (one CPU device).
    served = tf.saved_model.load(os.path.join(r["model_dir"], "saved_model"))
    probs = served.signatures["serving_default"](image=tf.constant(r["x"], tf.float32))
    np.testing.assert_allclose(probs["probabilities"].numpy(), r["probabilities"], atol=1e-6)


def test_late_split_and_xla_with_replicas_are_refused(runs, tile_data):
    assert "set train.cpu_replicas at process start" in runs["late_split_error"]
    with pytest.raises(ConfigError, match="jit_compile"):
        tiny_config(tile_data, train={"cpu_replicas": 2, "jit_compile": True})
