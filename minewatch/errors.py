"""Exceptions raised by minewatch.

One root, :class:`MinewatchError`; each subclass also derives from the builtin
that fits, so callers may catch ``ValueError`` or ``OSError`` as they would for
the standard library.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InputError",
    "LabelError",
    "MinewatchError",
    "SceneError",
]


class MinewatchError(Exception):
    """Root of every error minewatch raises on purpose."""


class ConfigError(MinewatchError, ValueError):
    """An option or option combination that cannot work; raised before a job starts."""


class InputError(MinewatchError, ValueError):
    """An input file that cannot be used; a job records it as a dead-letter row."""


class SceneError(InputError):
    """A raster scene or camera frame that cannot be tiled, with the reason."""


class LabelError(InputError):
    """A label file, or one feature of it, that cannot be used, with the reason."""
