"""Settings of the nightly retrain: dataclasses, YAML loading and validation.

A retrain config (YAML) names the scenes, the work folder, the registry and the
trainer config; :func:`load_retrain_config` validates it into a
:class:`RetrainConfig`, parsing ``tile_args``/``graph_args`` as the tile and graph
jobs will so a typo fails before any work starts.
"""

from __future__ import annotations

import dataclasses
import enum
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from minewatch.dataclass_config import build_dataclass
from minewatch.errors import ConfigError
from minewatch.paths import is_remote

__all__ = [
    "EvaluationSettings",
    "Init",
    "PromotionSettings",
    "RetrainConfig",
    "TrainingSettings",
    "job_errors",
    "load_retrain_config",
    "retrain_config_from_dict",
]

#: Options of ``minewatch tile`` / ``graph`` that retrain sets itself.
_RESERVED_TILE = ("--out", "--labels", "--overwrite")
_RESERVED_GRAPH = ("--out", "--overwrite")


class Init(enum.Enum):
    """Where a new training run starts from."""

    SCRATCH = "scratch"
    """Random weights (seeded by ``train.seed``)."""
    CURRENT = "current"
    """The registry's current model's weights (same architecture, bands and
    classes); random weights when there is no current model or it does not fit,
    and the run record says why."""


@dataclass(frozen=True)
class TrainingSettings:
    """The trainer and where it starts.

    Attributes:
        config: Trainer config file (YAML/TOML, ``docs/training.md``); relative
            to the retrain config's folder. Required.
        overrides: ``section.key=value`` items applied after reading it (as
            ``minewatch train --set``). ``data.tiles`` and ``data.graph`` are set
            by retrain and may not be overridden. Default none.
        init: :class:`Init`. Default ``scratch``.
    """

    config: str = ""
    overrides: tuple[str, ...] = ()
    init: Init = Init.SCRATCH

    def __post_init__(self) -> None:
        if not self.config:
            raise ConfigError("config: required (a trainer config file, docs/training.md)")
        for item in self.overrides:
            key = item.partition("=")[0].strip()
            if key in ("data.tiles", "data.graph", "data.train"):
                raise ConfigError(
                    f"overrides: {key} is set by retrain (WORK/dataset, WORK/graph); remove it"
                )


@dataclass(frozen=True)
class EvaluationSettings:
    """Held-out evaluation of the candidate (and the current model).

    Attributes:
        split: ``validation`` (the trainer's hash split: tiles never trained on)
            or ``all``. Default ``validation``.
        corruptions: Names from :data:`minewatch.corruptions.CORRUPTIONS`.
            Default: ``shift`` plus the satellite corruptions.
        severities: Corruption severities 1..5. Default ``(1, 3)``.
        epsilons: FGSM/PGD radii in per-band std units; empty for none.
            Default ``(0.05,)``.
        max_examples: Evaluate a seeded sample of at most this many tiles; 0 for
            all. Default 2000.
    """

    split: str = "validation"
    corruptions: tuple[str, ...] = ()
    severities: tuple[int, ...] = (1, 3)
    epsilons: tuple[float, ...] = (0.05,)
    max_examples: int = 2000

    def __post_init__(self) -> None:
        from minewatch.corruptions import CORRUPTIONS

        if self.split not in ("validation", "all"):
            raise ConfigError(f"split: {self.split!r} is not one of validation, all")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ConfigError(
                f"corruptions: unknown {unknown}; choose from {', '.join(CORRUPTIONS)}"
            )
        if not all(1 <= s <= 5 for s in self.severities):
            raise ConfigError(f"severities: must be in 1..5, got {list(self.severities)}")
        if not all(e > 0 for e in self.epsilons):
            raise ConfigError(f"epsilons: must be > 0, got {list(self.epsilons)}")
        if self.max_examples < 0:
            raise ConfigError("max_examples: must be >= 0")


@dataclass(frozen=True)
class PromotionSettings:
    """When a candidate replaces the current model.

    Attributes:
        metric: Held-out metric :func:`nsl_models.registry.promote` compares
            (higher is better). Default ``""``: the trainer's
            ``train.selection_metric``.
        max_robustness_drop: Refuse a candidate whose mean accuracy under
            corruption is more than this below the current model's on the same
            tiles, even when its clean metric is better. Default 1.0 (off).
    """

    metric: str = ""
    max_robustness_drop: float = 1.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_robustness_drop <= 1.0:
            raise ConfigError("max_robustness_drop: must be in [0, 1]")


@dataclass(frozen=True)
class RetrainConfig:
    """Everything one ``minewatch retrain`` needs (a YAML file mirrors it).

    Attributes:
        scenes: Folder, glob or file of incoming scenes/frames (local or
            ``gs://``). Required.
        labels: ``minewatch tile --labels`` (polygons, a folder/glob of per-scene
            polygon files, or a frames CSV). Default ``""``: weak labels.
        work: Work folder (``batches/``, ``dataset/``, ``graph/``, ``models/``,
            ``reports/``, ``retrain.lock``). Local or mounted: the trainer reads
            files with local I/O. Required.
        tables: Tables folder for ``training_runs/`` and ``retrain_ledger/``
            (``minewatch query --tables``). Default ``WORK/tables``.
        registry: Model registry folder (``minewatch promote --registry``). Required.
        tile_args: Extra ``minewatch tile`` options (``--bands``,
            ``--tile-size``, Beam options, ``--profile``...). Not ``--out``,
            ``--labels`` or ``--overwrite``. Default none.
        graph_args: Extra ``minewatch graph`` options. Default none.
        training: :class:`TrainingSettings`.
        evaluation: :class:`EvaluationSettings`.
        promotion: :class:`PromotionSettings`.
        base_dir: Folder relative paths are resolved against (the config
            file's); not a file key.
    """

    scenes: str = ""
    labels: str = ""
    work: str = ""
    tables: str = ""
    registry: str = ""
    tile_args: tuple[str, ...] = ()
    graph_args: tuple[str, ...] = ()
    training: TrainingSettings = field(default_factory=lambda: TrainingSettings("-"))
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    promotion: PromotionSettings = field(default_factory=PromotionSettings)
    base_dir: str = "."

    def __post_init__(self) -> None:
        for name in ("scenes", "work", "registry"):
            if not getattr(self, name):
                raise ConfigError(f"{name}: required")
        for name, args, reserved in (
            ("tile_args", self.tile_args, _RESERVED_TILE),
            ("graph_args", self.graph_args, _RESERVED_GRAPH),
        ):
            bad = [a for a in args if a.split("=", 1)[0] in reserved]
            if bad:
                raise ConfigError(f"{name}: {bad[0]} is set by retrain; remove it")

    def path(self, value: str) -> str:
        """Resolve a path of this config: URLs and absolute paths as they are."""
        if not value or is_remote(value) or os.path.isabs(value):
            return value
        return os.path.normpath(os.path.join(self.base_dir, value))

    @property
    def work_dir(self) -> str:
        """The work folder, resolved."""
        return self.path(self.work)

    @property
    def tables_dir(self) -> str:
        """The tables folder, resolved (default ``WORK/tables``)."""
        return self.path(self.tables) if self.tables else os.path.join(self.work_dir, "tables")


@contextmanager
def job_errors(what: str) -> Iterator[None]:
    """Prefix an inner job's option errors with the config key that holds the options."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None


def retrain_config_from_dict(mapping: Mapping[str, Any], base_dir: str = ".") -> RetrainConfig:
    """Validate a mapping (a parsed retrain YAML) into a :class:`RetrainConfig`.

    Args:
        mapping: The file's content.
        base_dir: Folder relative paths are resolved against. Default ``.``.

    Returns:
        The config.

    Raises:
        ConfigError: An unknown key, a missing required key or a bad value; the
            message starts with the dotted key (``training.init: ...``).
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"a retrain config is a mapping, got {type(mapping).__name__}")
    if "training" not in mapping:
        raise ConfigError("training: required (training.config names the trainer config)")
    config = build_dataclass(RetrainConfig, mapping, hidden=("base_dir",))
    _check_job_args(config)
    return dataclasses.replace(config, base_dir=os.path.abspath(base_dir))


def _check_job_args(config: RetrainConfig) -> None:
    """Parse ``tile_args``/``graph_args`` as the commands will, so a typo fails at once."""
    from minewatch.arguments import parse
    from pipelines.graph import GRAPH_ARGS
    from pipelines.tile import TILE_ARGS

    with job_errors("tile_args"):
        parse(TILE_ARGS, ["x", "--out", "y", *config.tile_args], "minewatch tile")
    with job_errors("graph_args"):
        parse(GRAPH_ARGS, ["x", "--out", "y", *config.graph_args], "minewatch graph")


def load_retrain_config(path: str | os.PathLike[str]) -> RetrainConfig:
    """Read a retrain config (YAML); relative paths in it are relative to its folder.

    Args:
        path: The file.

    Returns:
        The validated config.

    Raises:
        ConfigError: Unreadable or invalid file.
    """
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as err:
        raise ConfigError(f"cannot read {os.fspath(path)}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{os.fspath(path)} is not valid YAML: {err}") from None
    try:
        return retrain_config_from_dict(data or {}, os.path.dirname(os.path.abspath(path)))
    except ConfigError as err:
        raise ConfigError(f"{os.fspath(path)}: {err}") from None
