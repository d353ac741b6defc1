"""Versioned SavedModel export, promotion to a registry, and loading the current model.

**Model folder contract** (the inference job depends on it):

``MODEL_DIR/saved_model/``
    A TF SavedModel. Signature ``serving_default`` takes one input ``image``:
    float32 ``[None, H, W, C]``, raw pixel values as stored in the tile (cast
    to float32; invalid pixels 0), and returns ``probabilities`` float32
    ``[None, K]`` and ``embedding`` float32 ``[None, D]``; a model trained with
    the per-pixel head (``model.pixel_head``) also returns
    ``pixel_probabilities`` float32 ``[None, H, W, K]`` (softmax per pixel, at
    tile resolution). Signature ``embedding`` takes the same input and returns
    only ``embedding``. Normalisation is inside the model.
``MODEL_DIR/metadata.json``
    ``{"version", "task", "classes", "bands", "tile_size", "input_dtype",
    "normalization": {"mean", "std"}, "outputs", "data_manifest_hash",
    "config", "metrics", "created"}``; ``outputs`` lists the serving outputs;
    ``version`` is ``YYYYmmddTHHMMSSZ-<8 hex>`` (UTC time and a hash of the
    weights and config).

**Export** writes the SavedModel into ``MODEL_DIR/.exporting-<random>/``, then
removes ``metadata.json``, renames the new folder to ``saved_model/`` (the old
one moved aside and deleted) and writes ``metadata.json`` last (atomically).
A process killed while the SavedModel is written leaves the previous model
whole; one killed during the swap leaves a folder without ``metadata.json``.
A model folder is whole when it holds ``metadata.json``,
``saved_model/saved_model.pb`` and ``saved_model/variables/variables.index``;
:func:`read_metadata`, and so :func:`promote`, refuse any other.

**Registry layout** (``minewatch promote MODEL_DIR --registry DIR``)::

    DIR/versions/<version>/    a copy of MODEL_DIR (saved_model/, metadata.json)
    DIR/current.json           {"version": ..., "path": "versions/<version>"}

``current.json`` is replaced atomically (write then ``os.replace``), so a reader
sees the old or the new version, never a partial file; older versions stay for
rollback (point ``current.json`` back at one).
"""

from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from minewatch.compat import use_legacy_keras
from minewatch.errors import ConfigError, InputError
from minewatch.paths import write_json
from nsl_models.data import TileSpec

__all__ = [
    "Decision",
    "data_manifest_hash",
    "export_model",
    "load_current",
    "promote",
    "read_metadata",
]


def data_manifest_hash(tiles_dir: str, files: Sequence[str] = ()) -> str:
    """SHA-256 of the tile job's manifest and stats (or the files' names and sizes).

    Args:
        tiles_dir: The tile job's output folder.
        files: Training files, hashed by name and size when there is no manifest.

    Returns:
        ``sha256:<hex>``.
    """
    h = hashlib.sha256()
    parts = sorted(glob.glob(os.path.join(tiles_dir, "manifest", "*.parquet")))
    for path in [*parts, os.path.join(tiles_dir, "stats.json")]:
        if os.path.exists(path):
            with open(path, "rb") as f:
                h.update(f.read())
    if not parts:
        for path in files:
            h.update(f"{os.path.basename(path)}:{os.path.getsize(path)}\n".encode())
    return f"sha256:{h.hexdigest()}"


def export_model(
    base_model: Any,
    spec: TileSpec,
    model_dir: str,
    *,
    task: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    data_hash: str,
    logit_adjustment: dict[str, list[float]] | None = None,
    operating_points: dict[str, Any] | None = None,
    labels: dict[str, Any] | None = None,
    hard_negatives: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``MODEL_DIR/saved_model/`` and ``MODEL_DIR/metadata.json`` (the contract above).

    Args:
        base_model: From :func:`nsl_models.models.build_base_model`.
        spec: The tile spec (shape, bands, classes, normalisation).
        model_dir: Output folder.
        task: ``tile`` or ``frame``.
        config: The training config as a dict.
        metrics: Held-out metrics.
        data_hash: :func:`data_manifest_hash` of the training data.
        logit_adjustment: Per output (``probabilities``,
            ``pixel_probabilities``), offsets added to the logits before the
            softmax in the serving signature (:mod:`nsl_models.calibration`);
            recorded in ``metadata.json`` ``calibration``. Default none.
        operating_points: Per-kind site cuts for ``metadata.json``
            (``operating_points``; :class:`minewatch.sites.SiteRules`). Default none.
        labels: The label budget the model trained with (``labels``:
            :meth:`nsl_models.train.Trainer.labels`). Default none.
        hard_negatives: What round 2 of ``train.hard_negatives`` kept every pass
            (``hard_negatives``: :meth:`nsl_models.hard_negatives.HardNegatives.summary`).
            Default none.

    Returns:
        The metadata written.
    """
    use_legacy_keras()
    import tensorflow as tf

    from nsl_models.models import embedding_of, has_pixel_head

    module = tf.Module()
    module.model = base_model
    spec_in = tf.TensorSpec([None, *spec.shape], tf.float32, name="image")
    pixel_head = has_pixel_head(base_model)
    adjust = {
        name: tf.constant(values, tf.float32) for name, values in (logit_adjustment or {}).items()
    }
    zero = tf.constant(0.0, tf.float32)

    @tf.function(input_signature=[spec_in])  # type: ignore[untyped-decorator]
    def serve(image: Any) -> dict[str, Any]:
        xn = base_model.get_layer("normalize")(image)
        raw = base_model.get_layer("encoder")(xn, training=False)
        embedding = tf.cast(raw, tf.float32)
        logits = base_model.get_layer("logits")(embedding)
        tile = tf.cast(logits, tf.float32) + adjust.get("probabilities", zero)
        out = {"probabilities": tf.nn.softmax(tile), "embedding": embedding}
        if pixel_head:
            pixel = base_model.get_layer("pixel_decoder")([xn, raw], training=False)
            pixel = tf.cast(pixel, tf.float32) + adjust.get("pixel_probabilities", zero)
            out["pixel_probabilities"] = tf.nn.softmax(pixel, axis=-1)
        return out

    @tf.function(input_signature=[spec_in])  # type: ignore[untyped-decorator]
    def embed(image: Any) -> dict[str, Any]:
        return {"embedding": embedding_of(base_model, image, training=False)}

    module.serve = serve
    os.makedirs(model_dir, exist_ok=True)
    for prefix in (_EXPORTING, _REPLACED):  # left by an export that was killed
        for stale in glob.glob(os.path.join(model_dir, f"{prefix}*")):
            shutil.rmtree(stale, ignore_errors=True)
    # Written beside the model, so the folder stays the previous whole model (or
    # no model) until the swap below; a killed export leaves only this folder.
    fresh = tempfile.mkdtemp(dir=model_dir, prefix=_EXPORTING)
    tf.saved_model.save(module, fresh, signatures={"serving_default": serve, "embedding": embed})

    weights = hashlib.sha256()
    for w in base_model.get_weights():
        weights.update(np.ascontiguousarray(w).tobytes())
    weights.update(json.dumps(config, sort_keys=True).encode())
    weights.update(json.dumps(logit_adjustment or {}, sort_keys=True).encode())
    now = datetime.now(UTC).replace(microsecond=0)
    metadata = {
        "version": f"{now:%Y%m%dT%H%M%SZ}-{weights.hexdigest()[:8]}",
        "task": task,
        "classes": list(spec.classes),
        "bands": list(spec.bands),
        "tile_size": spec.height,
        "input_dtype": spec.dtype,
        "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
        "outputs": ["probabilities", "embedding", *(["pixel_probabilities"] if pixel_head else [])],
        "data_manifest_hash": data_hash,
        "config": config,
        "metrics": _jsonable(metrics),
        "created": now.isoformat(),
    }
    if logit_adjustment:
        metadata["calibration"] = {"logit_adjustment": logit_adjustment}
    if operating_points:
        metadata["operating_points"] = _jsonable(operating_points)
    if labels:
        metadata["labels"] = _jsonable(labels)
    if hard_negatives:
        metadata["hard_negatives"] = _jsonable(hard_negatives)
    _swap_in(model_dir, fresh, metadata)
    return metadata


#: Prefix of the folder an export writes before it is renamed to ``saved_model``.
_EXPORTING = ".exporting-"
#: Prefix of the previous ``saved_model`` while it is replaced.
_REPLACED = ".replaced-"


def _swap_in(model_dir: str, fresh: str, metadata: dict[str, Any]) -> None:
    """Replace ``saved_model/`` by ``fresh`` and write ``metadata.json`` last.

    ``metadata.json`` goes first, so from then until it is written again the
    folder is not a model folder (:func:`read_metadata` refuses it) even if
    the process is killed between the two renames.
    """
    meta_path = os.path.join(model_dir, "metadata.json")
    path = os.path.join(model_dir, "saved_model")
    if os.path.exists(meta_path):
        os.remove(meta_path)
    if os.path.exists(path):
        # A non-empty folder cannot be renamed over: move the old one aside first.
        old = os.path.join(model_dir, _REPLACED + os.path.basename(fresh)[len(_EXPORTING) :])
        os.replace(path, old)
        os.replace(fresh, path)
        shutil.rmtree(old)
    else:
        os.replace(fresh, path)
    write_json(meta_path, metadata, allow_nan=False)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; promotion treats a missing metric as NaN
    return value


#: What a whole model folder holds (``metadata.json`` is written last).
_REQUIRED = (
    "saved_model/saved_model.pb",
    "saved_model/variables/variables.index",
    "metadata.json",
)


def read_metadata(model_dir: str) -> dict[str, Any]:
    """Read ``MODEL_DIR/metadata.json`` of a whole model folder.

    Args:
        model_dir: A model folder.

    Returns:
        The metadata.

    Raises:
        InputError: The folder lacks ``metadata.json``,
            ``saved_model/saved_model.pb`` or
            ``saved_model/variables/variables.index`` (an export that did not
            finish, or not a model folder), or the metadata is not JSON.
    """
    missing = [name for name in _REQUIRED if not os.path.isfile(os.path.join(model_dir, name))]
    if len(missing) == len(_REQUIRED):
        raise InputError(
            f"{model_dir} is not a model folder (saved_model/ and metadata.json); "
            "export one with `minewatch train`"
        )
    if missing:
        raise InputError(
            f"{model_dir} is not a whole model folder: no {', '.join(missing)} (an export "
            "that did not finish?); export it again with `minewatch train`"
        )
    path = os.path.join(model_dir, "metadata.json")
    try:
        with open(path) as f:
            metadata: dict[str, Any] = json.load(f)
    except ValueError as err:
        raise InputError(f"{path} is not JSON ({err}); export the model again") from None
    return metadata


def load_current(registry: str) -> tuple[str, dict[str, Any]]:
    """The current model of a registry.

    Args:
        registry: Registry folder.

    Returns:
        ``(model_dir, metadata)``; ``model_dir`` holds ``saved_model/``.

    Raises:
        InputError: No ``current.json`` (nothing promoted yet) or a broken entry.
    """
    path = os.path.join(registry, "current.json")
    try:
        with open(path) as f:
            current = json.load(f)
    except OSError:
        raise InputError(
            f"{path} not found: nothing promoted yet (minewatch promote MODEL --registry)"
        ) from None
    model_dir = os.path.join(registry, current["path"])
    return model_dir, read_metadata(model_dir)


@dataclass(frozen=True)
class Decision:
    """The outcome of :func:`promote`.

    Attributes:
        promoted: Whether ``current.json`` now points at the candidate.
        reason: Why, in words.
        version: The candidate's version.
        path: The candidate's folder in the registry (empty when refused).
    """

    promoted: bool
    reason: str
    version: str
    path: str = ""


def _weights_problem(model_dir: str) -> str:
    """Why the SavedModel's weights cannot be served (unreadable, NaN or inf); ``""`` if fine."""
    use_legacy_keras()
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(
            os.path.join(model_dir, "saved_model", "variables", "variables")
        )
        for name, dtype in reader.get_variable_to_dtype_map().items():
            if dtype.is_floating and not np.all(np.isfinite(reader.get_tensor(name))):
                return "the weights contain NaN or inf"
    # The checkpoint reader turns a short or corrupt file into any of these.
    except (tf.errors.OpError, ValueError, IndexError, RuntimeError, OSError) as err:
        text = (getattr(err, "message", None) or str(err) or type(err).__name__).strip()
        text = text.splitlines()[0][:200]
        return f"the weights cannot be read ({text}): export the model again"
    return ""


def _score(metadata: dict[str, Any], metric: str) -> float:
    value = metadata.get("metrics", {}).get(metric)
    return float("nan") if value is None else float(value)


def promote(model_dir: str, registry: str, metric: str | None = None) -> Decision:
    """Copy a model into the registry and make it current if it beats the current one.

    Refuses a folder whose export did not finish, a model whose weights are
    unreadable or NaN/inf or whose held-out metric is NaN/inf, whose task or
    classes differ from the current model's, or whose metric is not strictly
    greater than the current one's. The copy is kept either way only when
    promoted (``versions/<version>/``); earlier versions are never removed.

    Args:
        model_dir: A model folder (``saved_model/`` + ``metadata.json``).
        registry: Registry folder (created).
        metric: Key of ``metadata["metrics"]`` to compare (higher is better);
            default the candidate's ``selection_metric`` (``accuracy`` when its
            metadata names none).

    Returns:
        The :class:`Decision`.

    Raises:
        InputError: ``model_dir`` is not a whole model folder (see
            :func:`read_metadata`: an export that did not finish is refused).
        ConfigError: The metric is not in the candidate's metadata.
    """
    meta = read_metadata(model_dir)
    version = str(meta["version"])
    metric = metric or str(meta.get("metrics", {}).get("selection_metric", "accuracy"))
    if metric not in meta.get("metrics", {}):
        raise ConfigError(f"--metric: {metric!r} is not in {model_dir}/metadata.json metrics")
    score = _score(meta, metric)
    if not math.isfinite(score):
        return Decision(False, f"refused {version}: held-out {metric} is {score}", version)
    weights = _weights_problem(model_dir)
    if weights:
        return Decision(False, f"refused {version}: {weights}", version)
    try:
        _, current = load_current(registry)
    except InputError:
        current = None
    if current is not None:
        for key in ("task", "classes"):
            if current.get(key) != meta.get(key):
                return Decision(
                    False,
                    f"refused {version}: {key} {meta.get(key)} differs from current "
                    f"{current['version']}'s {current.get(key)}",
                    version,
                )
        best = _score(current, metric)
        if current["version"] == version:
            return Decision(False, f"refused {version}: it is already current", version)
        if math.isfinite(best) and not score > best:
            return Decision(
                False,
                f"refused {version}: held-out {metric} {score:.4f} does not beat current "
                f"{current['version']}'s {best:.4f}",
                version,
            )
    rel = os.path.join("versions", version)
    dest = os.path.join(registry, rel)
    if not os.path.exists(dest):
        os.makedirs(os.path.join(registry, "versions"), exist_ok=True)
        tmp = tempfile.mkdtemp(dir=os.path.join(registry, "versions"), prefix=".tmp-")
        for name in ("saved_model", "metadata.json"):
            src = os.path.join(model_dir, name)
            (shutil.copytree if os.path.isdir(src) else shutil.copy2)(src, os.path.join(tmp, name))
        try:
            # The source may have been re-exported while it was copied.
            copied = read_metadata(tmp)["version"]
        except InputError as err:
            copied = str(err)
        if copied != version:
            shutil.rmtree(tmp)
            return Decision(
                False, f"refused {version}: {model_dir} changed while it was copied", version
            )
        os.replace(tmp, dest)
    write_json(
        os.path.join(registry, "current.json"), {"version": version, "path": rel}, allow_nan=False
    )
    why = (
        f"promoted {version}: first model in the registry ({metric} {score:.4f})"
        if current is None
        else f"promoted {version}: held-out {metric} {score:.4f} beats current "
        f"{current['version']}'s {_score(current, metric):.4f}"
    )
    return Decision(True, why, version, dest)
