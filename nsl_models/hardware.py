"""Pick the ``tf.distribute`` strategy and the mixed-precision policy for this machine.

=========================  ===========================  ==================
hardware                   strategy                     mixed precision
=========================  ===========================  ==================
TPU (resolver answers)     ``TPUStrategy``              ``mixed_bfloat16``
more than one GPU          ``MirroredStrategy``         ``mixed_float16``
one GPU                    ``OneDeviceStrategy(gpu:0)`` ``mixed_float16``
CPU only, ``cpu_replicas`` ``MirroredStrategy`` over     ``mixed_bfloat16``
  N > 1                    N logical CPU devices
CPU only                   default strategy             ``mixed_bfloat16``
=========================  ===========================  ==================

The mixed-precision column applies with ``train.mixed_precision: true``;
otherwise the policy is float32 everywhere. ``cpu_replicas`` splits the CPU
into N logical devices (:func:`configure_cpu_replicas`), which TensorFlow only
allows before it initialises its devices: set it at process start.

:func:`make_deterministic` seeds every generator and, on CPU, makes TensorFlow's
ops deterministic, so the same command on the same inputs trains the same
weights (``docs/training.md``, "Reproducible training").
"""

from __future__ import annotations

import logging
import os
from typing import Any

from minewatch.compat import use_legacy_keras
from minewatch.errors import ConfigError

__all__ = [
    "Hardware",
    "configure_cpu_replicas",
    "detect",
    "make_deterministic",
    "set_precision",
]

log = logging.getLogger(__name__)


class Hardware:
    """The chosen strategy and what it runs on.

    Attributes:
        strategy: A ``tf.distribute.Strategy``.
        kind: ``tpu``, ``gpu`` or ``cpu``.
        replicas: ``strategy.num_replicas_in_sync``.
    """

    def __init__(self, strategy: Any, kind: str) -> None:
        self.strategy = strategy
        self.kind = kind
        self.replicas = int(strategy.num_replicas_in_sync)

    def __repr__(self) -> str:
        return f"Hardware(kind={self.kind!r}, replicas={self.replicas})"


def _tpu_likely() -> bool:
    # Asking the resolver off-TPU probes the GCE metadata server, which takes
    # seconds where there is none; ask only where a TPU can be.
    return bool(os.environ.get("TPU_NAME") or os.environ.get("TPU_ACCELERATOR_TYPE")) or (
        os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0")
    )


def configure_cpu_replicas(replicas: int) -> list[str]:
    """Split the first physical CPU into ``replicas`` logical devices.

    TensorFlow accepts the split only before it initialises its devices (the
    first op, dataset or ``list_logical_devices`` call does that), so call it
    at process start; :class:`nsl_models.train.Trainer` calls it first thing.
    Calling it again with the same count is harmless.

    Args:
        replicas: Logical CPU devices wanted (``train.cpu_replicas``); 1 leaves
            the CPU as it is.

    Returns:
        The names of the logical CPU devices (``/job:localhost/.../CPU:i``).

    Raises:
        ConfigError: TensorFlow already initialised its devices with another
            count of logical CPUs.
    """
    use_legacy_keras()
    import tensorflow as tf

    if replicas < 1:
        raise ConfigError(f"train.cpu_replicas must be >= 1, got {replicas}", "train.cpu_replicas")
    cpus = tf.config.list_physical_devices("CPU")
    if replicas > 1:
        wanted = [tf.config.LogicalDeviceConfiguration() for _ in range(replicas)]
        try:
            tf.config.set_logical_device_configuration(cpus[0], wanted)
        except RuntimeError:
            pass  # already initialised: accepted below only if the count matches
    logical = [d.name for d in tf.config.list_logical_devices("CPU")]
    if replicas > 1 and len(logical) != replicas:
        raise ConfigError(
            f"train.cpu_replicas: {replicas} needs {replicas} logical CPU devices, but "
            f"TensorFlow already initialised its devices with {len(logical)}; the split "
            "must happen before TensorFlow runs anything: set train.cpu_replicas at "
            "process start (build the Trainer, or call "
            "nsl_models.hardware.configure_cpu_replicas, before any other TensorFlow work)",
            "train.cpu_replicas",
        )
    return logical


def detect(tpu: str | None = None, cpu_replicas: int = 1) -> Hardware:
    """Choose a strategy: TPU if a resolver answers, else GPUs, else the CPU(s).

    Args:
        tpu: TPU name or address for ``TPUClusterResolver``; ``None`` asks the
            resolver only where a TPU is likely (``TPU_NAME`` or
            ``TPU_ACCELERATOR_TYPE`` set, or ``/dev/accel0`` present).
        cpu_replicas: On a machine without TPU or GPU, train on this many
            replicas: ``MirroredStrategy`` over as many logical CPU devices
            (:func:`configure_cpu_replicas`). Ignored (with a warning) where a
            TPU or GPU is used. Default 1: the default strategy.

    Returns:
        The :class:`Hardware`.

    Raises:
        ConfigError: ``cpu_replicas > 1`` and TensorFlow already initialised
            its devices with another count of logical CPUs.
    """
    use_legacy_keras()
    import tensorflow as tf

    if tpu or _tpu_likely():
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
            if cpu_replicas > 1:
                log.warning("train.cpu_replicas=%d ignored: training on TPU", cpu_replicas)
            return Hardware(tf.distribute.TPUStrategy(resolver), "tpu")
        except (ValueError, RuntimeError, tf.errors.OpError) as err:
            log.warning("TPU resolver did not answer (%s); trying GPUs", err)
    if cpu_replicas > 1 and not tf.config.list_physical_devices("GPU"):
        # Before anything below initialises the devices.
        cpus = configure_cpu_replicas(cpu_replicas)
        return Hardware(tf.distribute.MirroredStrategy(cpus[:cpu_replicas]), "cpu")
    gpus = tf.config.list_logical_devices("GPU")
    if gpus and cpu_replicas > 1:
        log.warning("train.cpu_replicas=%d ignored: training on GPU", cpu_replicas)
    if len(gpus) > 1:
        return Hardware(tf.distribute.MirroredStrategy(), "gpu")
    if len(gpus) == 1:
        return Hardware(tf.distribute.OneDeviceStrategy("/gpu:0"), "gpu")
    return Hardware(tf.distribute.get_strategy(), "cpu")


def set_precision(hardware: Hardware, mixed: bool) -> str:
    """Set the global Keras mixed-precision policy (before building the model).

    Args:
        hardware: From :func:`detect`.
        mixed: Use mixed precision: ``mixed_bfloat16`` on TPU and CPU (bfloat16
            matmuls and convolutions run natively on CPUs with AVX512-BF16 or
            AMX, and are emulated, slower, elsewhere), ``mixed_float16`` on GPU.

    Returns:
        The policy name set: ``mixed_bfloat16``, ``mixed_float16`` or ``float32``.
    """
    use_legacy_keras()
    import tensorflow as tf

    policy = "float32"
    if mixed and hardware.kind in ("tpu", "cpu"):
        policy = "mixed_bfloat16"
    elif mixed and hardware.kind == "gpu":
        policy = "mixed_float16"
    tf.keras.mixed_precision.set_global_policy(policy)
    return policy


def make_deterministic(seed: int, ops: bool | None = None) -> bool:
    """Seed Python, NumPy and TensorFlow; make TensorFlow's ops deterministic.

    Call it first, before any dataset, model or strategy is built: kernels
    and ``tf.data`` pipelines read the setting when they are made. Op
    determinism is process-wide and stays on. It also makes every ``tf.data``
    map, interleave and batch keep its order (whatever their ``deterministic``
    argument) and runs a map with stateful ops serially.

    Args:
        seed: Seed of Python's ``random``, NumPy's global generator, TensorFlow's
            global seed and Keras's layer seeds (``tf.keras.utils.set_random_seed``).
        ops: Enable ``tf.config.experimental.enable_op_determinism()``. Default
            None: on when no GPU is visible and no TPU is likely, or when
            ``TF_DETERMINISTIC_OPS`` is ``1``/``true`` (TensorFlow reads that
            variable itself too). On GPUs it slows some ops and makes others
            raise ``UnimplementedError``, so it is opt-in there.

    Returns:
        Whether it enabled op determinism (``TF_DETERMINISTIC_OPS=1`` turns it
        on in TensorFlow even when ``ops`` is False).

    Example:
        >>> make_deterministic(0)  # doctest: +SKIP
        True
    """
    use_legacy_keras()
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    if ops is None:
        requested = os.environ.get("TF_DETERMINISTIC_OPS", "").lower() in ("1", "true")
        accelerated = bool(tf.config.list_physical_devices("GPU")) or _tpu_likely()
        ops = requested or not accelerated
    if ops:
        tf.config.experimental.enable_op_determinism()
    return bool(ops)
