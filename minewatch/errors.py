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
    """An option or option combination that cannot work; raised before a job starts.

    Attributes:
        option: The option at fault as the user writes it (``--labels``,
            ``INPUT``), or None when no single option is; the CLI turns it into
            click's "Invalid value for '--labels'".
    """

    def __init__(self, message: str, option: str | None = None) -> None:
        super().__init__(message)
        self.option = option


class InputError(MinewatchError, ValueError):
    """An input file that cannot be used; a job records it as a dead-letter row."""


class SceneError(InputError):
    """A raster scene or camera frame that cannot be tiled, with the reason."""


class LabelError(InputError):
    """A label file, or one feature of it, that cannot be used, with the reason."""
