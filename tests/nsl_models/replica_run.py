"""Helper of ``test_replicas.py``: train on N logical CPU replicas in a fresh process.

Logical CPU devices can only be configured before TensorFlow initialises its
devices, and pytest's process has done that long before, so this runs in a new
process: ``python replica_run.py '<json>'`` with ``{"tiles", "out", "steps"}``;
the last line printed is the JSON result. It splits the CPU in two, then trains
each configuration twice from the same seed and data order: on one replica
(the default strategy, on ``CPU:0``) and on two (``MirroredStrategy``).

For float32 and for ``mixed_bfloat16`` it trains the combined step
(supervised + per-pixel + graph + PGD adversarial) for ``steps`` steps and
records each step's logged losses and the final weights. With ``resume`` it
also kills a run after a checkpoint, resumes it in a new Trainer, exports,
and serves the SavedModel.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


class Killed(RuntimeError):
    """Raised by the hook that simulates a killed run."""


def _config(tiles: str, replicas: int, steps: int, mixed: bool, **train):
    from tests.nsl_models.conftest import tiny_config

    return tiny_config(
        tiles,
        model={"pixel_head": True, "pixel_width": 4},
        graph={"enabled": True, "multiplier": 0.5},
        adversarial={"enabled": True, "method": "pgd", "pgd_iterations": 2, "epsilon": 0.1},
        train={
            "epochs": 1,
            "steps_per_epoch": steps,
            "checkpoint_every": 100,
            "learning_rate": 0.01,
            "calibrate": False,
            "cpu_replicas": replicas,
            "mixed_precision": mixed,
            **train,
        },
    )


def _train(tiles: str, out: str, replicas: int, steps: int, mixed: bool) -> dict:
    import numpy as np
    import tensorflow as tf

    from nsl_models.hardware import Hardware
    from nsl_models.train import Trainer

    logs: list[dict[str, float]] = []
    trainer = Trainer(
        _config(tiles, replicas, steps, mixed),
        out,
        hardware=None if replicas > 1 else Hardware(tf.distribute.get_strategy(), "cpu"),
        hooks=[lambda step, values: logs.append(dict(values, step=step))],
    )
    trainer.fit(export=False)
    weights = np.concatenate([np.ravel(w) for w in trainer.base_model.get_weights()])
    return {
        "replicas": trainer.hardware.replicas,
        "precision": trainer.precision,
        "logs": logs,
        "weights": weights.astype(float).tolist(),
    }


def _resume_export(tiles: str, out: str, replicas: int) -> dict:
    import numpy as np
    import tensorflow as tf

    from nsl_models.train import Trainer

    cfg = _config(tiles, replicas, 3, False, epochs=2, checkpoint_every=2)

    def kill(step: int, logs: dict[str, float]) -> None:
        if step == 4:
            raise Killed

    first = Trainer(cfg, out, hooks=[kill])
    try:
        first.fit(export=False)
    except Killed:
        pass
    seen: list[int] = []
    second = Trainer(cfg, out, hooks=[lambda step, logs: seen.append(step)])
    result = second.fit()
    x = np.random.default_rng(0).uniform(0, 3000, (3, 16, 16, 5)).astype(np.float32)
    served = tf.saved_model.load(os.path.join(out, "saved_model")).signatures["serving_default"]
    probs = served(image=tf.constant(x))["probabilities"].numpy()
    expected = tf.nn.softmax(second.base_model(x)[0]).numpy()
    return {
        "replicas": second.hardware.replicas,
        "resumed_from": result.resumed_from,
        "steps_after_resume": seen,
        "global_step": result.global_step,
        "checkpoints": sorted(os.listdir(os.path.join(out, "checkpoints"))),
        "model_dir": out,
        "served_max_diff": float(np.abs(probs - expected).max()),
        "x": x.tolist(),
        "probabilities": probs.tolist(),
    }


def main(args: dict) -> dict:
    """Run what ``args`` asks for; see the module docstring."""
    from minewatch.errors import ConfigError
    from nsl_models.hardware import configure_cpu_replicas

    out = args["out"]
    # First TensorFlow work of the process: the split must come before it.
    devices = configure_cpu_replicas(2)
    result: dict = {"devices": len(devices)}
    for name, mixed in (("float32", False), ("bfloat16", True)):
        for n in (1, 2):
            result[f"{name}_{n}"] = _train(
                args["tiles"], f"{out}/{name}_{n}", n, args["steps"], mixed
            )
    result["resume"] = _resume_export(args["tiles"], f"{out}/resume", 2)
    try:  # now initialised: another count must be refused, clearly
        configure_cpu_replicas(3)
        result["late_split_error"] = ""
    except ConfigError as err:
        result["late_split_error"] = str(err)
    return result


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
