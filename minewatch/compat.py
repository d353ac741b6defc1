"""The one place that makes Neural Structured Learning import on TensorFlow 2.21.

NSL 1.4.0 needs Keras 2 (``tf-keras``), selected by ``TF_USE_LEGACY_KERAS=1``
before TensorFlow is first imported, and its package ``__init__`` imports
``tensorflow.estimator``, which TensorFlow removed in 2.16 (upstream, NSL is
in maintenance and will not change it:
https://github.com/tensorflow/neural-structured-learning/issues/130). NSL's estimator
wrappers are never used here; its keras, lib, configs and tools modules work
once a placeholder module answers that import. Nothing else in minewatch
patches TensorFlow or NSL: import NSL through :func:`import_nsl`.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any

__all__ = ["import_nsl", "use_legacy_keras"]

_PLACEHOLDER = "tensorflow.estimator"


def use_legacy_keras() -> None:
    """Select Keras 2 for this process and any subprocess it starts.

    Raises:
        RuntimeError: TensorFlow was already imported with Keras 3 selected, so
            the choice can no longer take effect in this process.
    """
    if os.environ.get("TF_USE_LEGACY_KERAS") != "1" and "tensorflow" in sys.modules:
        raise RuntimeError(
            "TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set; import "
            "minewatch.compat (or set the variable) before anything imports TensorFlow."
        )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


def import_nsl() -> Any:
    """Import ``neural_structured_learning`` with Keras 2 on TensorFlow 2.21.

    Returns:
        The ``neural_structured_learning`` module.
    """
    use_legacy_keras()
    import tensorflow  # noqa: F401  (the placeholder is a submodule of it)

    if _PLACEHOLDER not in sys.modules:
        placeholder = types.ModuleType(_PLACEHOLDER)
        placeholder.__doc__ = "Placeholder: tf.estimator was removed in TF 2.16 (minewatch.compat)."
        sys.modules[_PLACEHOLDER] = placeholder
    import neural_structured_learning as nsl

    return nsl
