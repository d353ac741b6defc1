"""Local and remote (``gs://``, ``s3://``) paths, and files written whole or not at all.

A job's outputs may live on an object store, where Beam's ``FileSystems``
reads and writes them; local paths are made absolute because workers run in
other processes and folders. A file another process may read while it is
rewritten (``stats.json``, a model's ``metadata.json``, a stream's ledger) is
written to a hidden temporary name and moved into place.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from typing import Any

__all__ = ["abs_path", "is_remote", "replace_file", "write_bytes", "write_json"]


def is_remote(path: str) -> bool:
    """Whether ``path`` is a URL (``gs://bucket/x``), read through Beam's FileSystems."""
    return "://" in path


def abs_path(path: str) -> str:
    """Make a local path absolute (workers run elsewhere); leave URLs as they are."""
    return path if is_remote(path) else os.path.abspath(path)


def replace_file(temp: str, path: str) -> None:
    """Move a finished ``temp`` file onto ``path``, replacing what was there.

    Atomic on a local file system (``os.replace``); on object stores, where a
    rename is a copy, the old object is deleted first.
    """
    if not is_remote(path):
        os.replace(temp, path)
        return
    from apache_beam.io.filesystems import FileSystems

    if FileSystems.exists(path):
        FileSystems.delete([path])
    FileSystems.rename([temp], [path])


def write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` (local or remote), whole or not at all.

    The bytes go to a hidden temporary file beside ``path`` (``.tmp-<hex>``, no
    extension, so a reader globbing ``*.json`` never sees it), which then
    replaces ``path``. A missing local folder is created.
    """
    folder = posixpath.dirname(path) if is_remote(path) else os.path.dirname(abs_path(path))
    temp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}")
    if is_remote(path):
        from apache_beam.io.filesystems import FileSystems

        with FileSystems.create(temp) as f:
            f.write(data)
    else:
        os.makedirs(folder, exist_ok=True)
        with open(temp, "wb") as f:
            f.write(data)
    replace_file(temp, path)


def write_json(path: str, value: Any, indent: int = 2, allow_nan: bool = True) -> None:
    """Write ``value`` as JSON to ``path`` (local or remote), whole or not at all.

    Args:
        path: The file; a missing local folder is created.
        value: Anything ``json`` writes; other objects (dates, paths) as ``str``.
        indent: JSON indent.
        allow_nan: Write NaN/Infinity (not JSON); off where strict readers follow.

    Raises:
        ValueError: ``value`` holds NaN or infinity and ``allow_nan`` is off.
    """
    text = json.dumps(value, indent=indent, default=str, allow_nan=allow_nan)
    write_bytes(path, (text + "\n").encode())
