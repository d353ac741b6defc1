"""Reading the model registry: which SavedModel to serve, without training code.

A model folder holds ``saved_model/`` (a TensorFlow SavedModel whose
``serving_default`` signature takes ``image``: float32 ``[N, H, W, C]`` raw pixel
values as stored in the tiles, and returns ``probabilities`` ``[N, K]`` and
``embedding`` ``[N, D]``) and ``metadata.json`` (``version``, ``task``,
``classes``, ``bands``, ``tile_size``, ...). A registry folder holds
``versions/<version>/`` model folders and ``current.json``
(``{"version": ..., "path": ...}``) naming the promoted one. Promotion itself
lives with the trainer (:mod:`nsl_models.registry`).
"""

from __future__ import annotations

import json
import os
import posixpath
from dataclasses import dataclass
from typing import Any

from minewatch.errors import ConfigError
from minewatch.paths import is_remote

__all__ = ["ModelRef", "resolve_model", "within"]


@dataclass(frozen=True)
class ModelRef:
    """A servable model.

    Attributes:
        path: The model folder.
        saved_model: Its SavedModel folder.
        version: ``metadata.json`` ``version``.
        metadata: The whole ``metadata.json``.
    """

    path: str
    saved_model: str
    version: str
    metadata: dict[str, Any]

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names in output order."""
        return tuple(self.metadata.get("classes", ()))

    @property
    def bands(self) -> tuple[str, ...]:
        """Band names in input channel order."""
        return tuple(self.metadata.get("bands", ()))

    @property
    def tile_size(self) -> int:
        """Input tile side in pixels."""
        return int(self.metadata.get("tile_size", 0))


def _read_json(path: str) -> dict[str, Any]:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as f:
        data: dict[str, Any] = json.loads(f.read())
    return data


def _exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    from apache_beam.io.filesystems import FileSystems

    return bool(FileSystems.exists(path))


def within(path: str, root: str) -> bool:
    """Whether ``path`` is ``root`` or lies under it (local links resolved)."""
    if is_remote(root) or is_remote(path):
        path, root = posixpath.normpath(path), posixpath.normpath(root)
    else:
        path, root = os.path.realpath(path), os.path.realpath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def resolve_model(path: str) -> ModelRef:
    """Find the model to serve: the registry's current model, or a model folder.

    Args:
        path: A registry folder (with ``current.json``) or a model folder (with
            ``saved_model/`` and ``metadata.json``).

    Returns:
        The model.

    Raises:
        ConfigError: Nothing servable there; the message says what is missing.
    """
    if not _exists(path):
        raise ConfigError(f"model {path!r} does not exist")
    current = posixpath.join(path, "current.json")
    if _exists(current):
        pointer = _read_json(current)
        target = pointer.get("path") or posixpath.join(path, "versions", str(pointer["version"]))
        if not is_remote(target) and not os.path.isabs(target):
            target = os.path.join(path, target)
        if not within(target, path):
            # Serve only what the configured registry holds: a pointer that leads
            # out of it (an absolute path, '..', a link) is refused, at launch and
            # whenever a stream re-reads it.
            raise ConfigError(
                f"the registry's current.json points outside it ({target!r}); "
                "promote the model into the registry with 'minewatch promote'"
            )
        return resolve_model(target)
    saved = posixpath.join(path, "saved_model")
    if not _exists(posixpath.join(saved, "saved_model.pb")):
        raise ConfigError(
            f"{path!r} is neither a registry (no current.json) nor a model folder "
            "(no saved_model/saved_model.pb); promote a model with 'minewatch promote'"
        )
    meta_path = posixpath.join(path, "metadata.json")
    if not _exists(meta_path):
        raise ConfigError(f"model {path!r} has no metadata.json")
    try:
        metadata = _read_json(meta_path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model {path!r}: unreadable metadata.json: {exc}") from exc
    missing = [k for k in ("version", "classes", "tile_size") if k not in metadata]
    if missing:
        raise ConfigError(f"model {path!r}: metadata.json lacks {missing}")
    return ModelRef(path, saved, str(metadata["version"]), metadata)
