"""Training: Keras models with NSL graph and adversarial regularization.

Import Neural Structured Learning through :func:`minewatch.compat.import_nsl`.
Configs are importable without TensorFlow; the other names load their module
(and TensorFlow, with Keras 2 selected) on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from nsl_models.configs import (
    AdversarialConfig,
    AdversarialMethod,
    Architecture,
    ClassWeighting,
    DataConfig,
    DistanceType,
    GraphConfig,
    ModelConfig,
    NormType,
    OptimizerName,
    SelectionMetric,
    SplitKey,
    Task,
    TrainConfig,
    TrainerConfig,
    config_from_dict,
    load_config,
    make_adversarial_config,
    make_graph_config,
    make_trainer_config,
)

_LAZY = {
    "RegularizedModel": "nsl_models.models",
    "build_base_model": "nsl_models.models",
    "TileSpec": "nsl_models.data",
    "make_dataset": "nsl_models.data",
    "read_tile_spec": "nsl_models.data",
    "Trainer": "nsl_models.train",
    "TrainResult": "nsl_models.train",
    "train_from_config": "nsl_models.train",
    "evaluate_models": "nsl_models.evaluate",
    "export_model": "nsl_models.registry",
    "load_current": "nsl_models.registry",
    "promote": "nsl_models.registry",
}

__all__ = [
    "AdversarialConfig",
    "AdversarialMethod",
    "Architecture",
    "ClassWeighting",
    "DataConfig",
    "DistanceType",
    "GraphConfig",
    "ModelConfig",
    "NormType",
    "OptimizerName",
    "RegularizedModel",
    "SelectionMetric",
    "SplitKey",
    "Task",
    "TileSpec",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainerConfig",
    "build_base_model",
    "config_from_dict",
    "evaluate_models",
    "export_model",
    "load_config",
    "load_current",
    "make_adversarial_config",
    "make_dataset",
    "make_graph_config",
    "make_trainer_config",
    "promote",
    "read_tile_spec",
    "train_from_config",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'nsl_models' has no attribute {name!r}")
