"""Typed, frozen dataclasses from parsed YAML/TOML mappings, with errors that name the key.

Shared by the trainer's config (:mod:`nsl_models.configs`) and the nightly
retrain config (:mod:`minewatch.workflows.retrain`): unknown keys and values of the wrong
type are refused with the dotted key first (``train.epochs: expected an
integer, got 'ten'``); range checks stay in each dataclass's ``__post_init__``
(raising :class:`~minewatch.errors.ConfigError`), and their messages get the
section prefix added here.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import typing
from collections.abc import Collection, Mapping
from typing import Any, TypeVar

from minewatch.errors import ConfigError

__all__ = ["build_dataclass"]

T = TypeVar("T")


def _convert(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return build_dataclass(tp, value, f"{key}.")  # type: ignore[arg-type]
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(str(m.value) for m in tp)
            raise ConfigError(f"{key}: {value!r} is not one of {choices}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        # A number where a string is expected is taken as written (YAML reads
        # `- 16` in a list of command-line arguments as an integer).
        if isinstance(value, bool) or not isinstance(value, str | os.PathLike | int | float):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    if typing.get_origin(tp) is tuple:
        # tuple[X, ...]: a YAML/TOML list, or one comma-separated string (--set a=x,y).
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        item = typing.get_args(tp)[0]
        return tuple(_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    raise ConfigError(f"{key}: unsupported type {tp}")  # pragma: no cover


def build_dataclass(
    cls: type[T], mapping: Mapping[str, Any], prefix: str = "", hidden: Collection[str] = ()
) -> T:
    """Build ``cls`` from ``mapping``, converting and checking each value by its type hint.

    Args:
        cls: A dataclass whose fields are dataclasses, enums, ``bool``, ``int``,
            ``float``, ``str`` or ``tuple[X, ...]`` of those.
        mapping: The parsed section; omitted keys take the field defaults.
        prefix: Dotted key of this section, for messages (``"train."``).
        hidden: Fields that a file may not set (set by the program instead).

    Returns:
        The instance.

    Raises:
        ConfigError: An unknown key, a value of the wrong type, or a value the
            dataclass itself refuses; the message starts with the dotted key.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name not in hidden]  # type: ignore[arg-type]
    unknown = [k for k in mapping if k not in names]
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}{unknown[0]!s}; known keys here: {', '.join(names)}"
        )
    kwargs = {k: _convert(hints[k], v, f"{prefix}{k}") for k, v in mapping.items()}
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{prefix}{err}") from None
