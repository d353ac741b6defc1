"""Runner profiles: the Beam options a job gets on Dataflow, Flink or Spark.

A profile is a YAML file in ``deploy/runners/`` (or any path) with a ``common``
list of Beam options and a list per job under ``jobs``::

    common:
      - --runner=DataflowRunner
      - --project=${MINEWATCH_PROJECT}
    jobs:
      tile:
        - --machine_type=n2-standard-4

``${VAR}`` is replaced from the environment when the profile is loaded.

Example:
    >>> from minewatch.profiles import load_profile
    >>> args = load_profile("dataflow", "tile", env={...})  # doctest: +SKIP
    >>> launch([scene, "--out", out, *args])  # doctest: +SKIP
"""

from __future__ import annotations

import os
import string
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from minewatch.errors import ConfigError

__all__ = ["JOBS", "PROFILES_DIR", "load_profile", "profile_names"]

#: The Beam jobs a profile configures.
JOBS = ("tile", "graph", "infer")

#: Where the named profiles live in a source checkout.
PROFILES_DIR = Path(__file__).resolve().parent.parent / "deploy" / "runners"


def profile_names(directory: str | os.PathLike[str] = PROFILES_DIR) -> list[str]:
    """The names of the profiles in ``directory`` (default: ``deploy/runners``)."""
    return sorted(p.stem for p in Path(directory).glob("*.yaml"))


def load_profile(
    name: str | os.PathLike[str],
    job: str,
    env: Mapping[str, str] | None = None,
    directory: str | os.PathLike[str] = PROFILES_DIR,
) -> list[str]:
    """Read a runner profile and return the Beam arguments for one job.

    Args:
        name: A profile name in ``directory`` (``dataflow``, ``flink``, ``spark``)
            or the path of a YAML file.
        job: ``tile``, ``graph`` or ``infer``.
        env: Values for ``${VAR}`` placeholders (default: ``os.environ``).
        directory: Where named profiles live (default: ``deploy/runners``).

    Returns:
        The ``common`` arguments followed by the job's, placeholders filled in.

    Raises:
        ConfigError: The profile does not exist, is malformed, lacks the job, or
            uses a variable that ``env`` does not define.
    """
    import yaml

    if job not in JOBS:
        raise ConfigError(f"unknown job {job!r}: give one of {', '.join(JOBS)}")
    path = Path(name)
    if path.suffix not in (".yaml", ".yml"):
        path = Path(directory) / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(profile_names(directory)) or "none"
        raise ConfigError(f"no runner profile {str(name)!r} (known: {known}); or give a YAML path")
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("jobs"), dict):
        raise ConfigError(f"{path} needs a 'jobs' mapping (and optionally a 'common' list)")
    if job not in data["jobs"]:
        raise ConfigError(f"{path} has no options for job {job!r}; add jobs.{job} (may be [])")
    args: list[str] = []
    for section, items in (("common", data.get("common") or []), (job, data["jobs"][job] or [])):
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise ConfigError(f"{path}: {section} must be a list of strings like --name=value")
        for item in items:
            if not item.startswith("--"):
                raise ConfigError(f"{path}: {section} item {item!r} is not a --option")
            args.append(_substitute(item, os.environ if env is None else env, path))
    return args


def _substitute(item: str, env: Mapping[str, str], path: Path) -> str:
    try:
        return string.Template(item).substitute(env)
    except KeyError as exc:
        raise ConfigError(
            f"{path}: {item!r} needs the environment variable {exc.args[0]}; set it first"
        ) from exc
    except ValueError as exc:
        raise ConfigError(f"{path}: bad placeholder in {item!r}: {exc}") from exc
