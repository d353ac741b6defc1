"""The nightly retraining cycle behind ``minewatch retrain``.

One call of :func:`retrain` does, under a lock:

1. **Find new scenes.** Every file the ``scenes`` folder or glob names is keyed
   by ``(path, size, mtime)``; keys already in the ledger
   (``TABLES/retrain_ledger/``) are old. A file rewritten in place has a new
   size or mtime, so it counts as new again.
2. **Tile only those** with the tile job (``minewatch tile``) into
   ``WORK/batches/<run_id>/``, then write that night's ledger part: the commit
   point. A crash before it leaves an orphan batch folder that the next run
   deletes and tiles again; a crash after it is finished by the next run.
3. **Sync the dataset.** ``WORK/dataset/`` looks like one tile job's output made
   of every committed batch: ``tiles/`` and ``manifest/`` hold hard links (local)
   or copies (object stores) of the batches' files, whose names are unique, and
   ``stats.json`` merges the batches' band statistics exactly (from their counts,
   sums and sums of squares). Rebuilt from the ledger each time, so it is
   idempotent.
4. **Rebuild the graph** over all tiles so far (``minewatch graph``) into
   ``WORK/graph/``.
5. **Train** with the trainer config (plus overrides; ``data.tiles`` and
   ``data.graph`` point at the dataset and graph) into
   ``WORK/models/<train_key>/``, where the key hashes the committed batches, the
   trainer config and the start weights. Rerunning after a crash therefore
   resumes that folder's last checkpoint; ``training.init: current`` starts a new
   folder from the registry's current weights instead of random ones.
6. **Evaluate** the candidate, and the current model when there is one, on the
   same held-out tiles: clean, corrupted and adversarial accuracy
   (:func:`nsl_models.evaluate.evaluate_models`); the report goes to
   ``WORK/reports/<run_id>.json``.
7. **Promote only if better** (:func:`nsl_models.registry.promote`), after an
   optional robustness gate.
8. **Record** one row in the ``training_runs`` table
   (``TABLES/training_runs/run-<run_id>.parquet``, schema
   :func:`minewatch.tables.training_runs_schema`), also for runs that did
   nothing (``status = noop``) and runs that failed (``status = failed``, the error
   in ``reason``).

**Twice in one night** is safe: a second run that overlaps the first is refused
(:class:`RetrainLocked`, the lock is ``WORK/retrain.lock``, an ``flock`` released
when the process dies); a second run after it finds no new scene and the same
``train_key`` as the last trained run, and records a ``noop`` row without
training. A config change (new trainer config or overrides) changes the key and
retrains on the same data.

Core code: nothing here imports :mod:`nsl_models` or Beam at module level.

Example:
    >>> from minewatch.workflows.retrain import load_retrain_config, retrain
    >>> config = load_retrain_config("retrain.yaml")  # doctest: +SKIP
    >>> record = retrain(config)  # doctest: +SKIP
    >>> record["status"], record["reason"]  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import posixpath
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from minewatch.dataclass_config import build_dataclass
from minewatch.errors import ConfigError, InputError, MinewatchError
from minewatch.paths import is_remote, write_json

__all__ = [
    "EvaluationSettings",
    "Init",
    "PromotionSettings",
    "RetrainConfig",
    "RetrainLocked",
    "SceneKey",
    "TrainingSettings",
    "find_new_scenes",
    "load_retrain_config",
    "merge_band_stats",
    "read_ledger",
    "read_training_runs",
    "retrain",
    "retrain_config_from_dict",
]

#: Options of ``minewatch tile`` / ``graph`` that retrain sets itself.
_RESERVED_TILE = ("--out", "--labels", "--overwrite")
_RESERVED_GRAPH = ("--out", "--overwrite")
LEDGER = "retrain_ledger"
RUNS = "training_runs"


class RetrainLocked(MinewatchError, RuntimeError):
    """Another ``minewatch retrain`` holds the work folder's lock."""


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


# -- config --------------------------------------------------------------------


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

    with _job_errors("tile_args"):
        parse(TILE_ARGS, ["x", "--out", "y", *config.tile_args], "minewatch tile")
    with _job_errors("graph_args"):
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


# -- ledger --------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class SceneKey:
    """A scene file as the ledger knows it: a rewrite changes size or mtime.

    Attributes:
        path: Absolute path or URL.
        size: Bytes.
        mtime: Last modification, seconds since the epoch (as the file system
            reports it; object stores give the upload time).
    """

    path: str
    size: int
    mtime: float

    @property
    def key(self) -> str:
        """The ledger key ``path|size|mtime``."""
        return f"{self.path}|{self.size}|{self.mtime:.6f}"


def _ledger_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            ("key", pa.string()),
            ("path", pa.string()),
            ("size", pa.int64()),
            ("mtime", pa.float64()),
            ("run_id", pa.string()),
            ("recorded", pa.timestamp("s", tz="UTC")),
        ]
    )


def list_scenes(pattern: str) -> list[SceneKey]:
    """Every file a folder, glob or file names, with size and mtime.

    Args:
        pattern: Local path/glob/folder or a URL (``gs://bucket/folder/``).

    Returns:
        Keys sorted by path; hidden files (``.name``) are left out.
    """
    from apache_beam.io.filesystems import FileSystems

    from pipelines.options import list_inputs

    if not is_remote(pattern):
        keys = []
        for p in list_inputs(pattern):
            st = os.stat(p)
            keys.append(SceneKey(p, st.st_size, st.st_mtime))
        return sorted(keys)
    glob = pattern + "**" if pattern.endswith("/") else pattern
    found = FileSystems.match([glob])[0].metadata_list
    return sorted(
        SceneKey(m.path, int(m.size_in_bytes), float(m.last_updated_in_seconds))
        for m in found
        if not posixpath.basename(m.path).startswith(".")
    )


def read_ledger(tables_dir: str) -> list[dict[str, Any]]:
    """All ledger rows (one per scene file tiled), oldest run first.

    Args:
        tables_dir: The tables folder.

    Returns:
        Rows of ``TABLES/retrain_ledger/*.parquet``; empty when there is none.
    """
    return _read_parts(os.path.join(tables_dir, LEDGER), _ledger_schema())


def _read_parts(folder: str, schema: Any) -> list[dict[str, Any]]:
    import pyarrow.parquet as pq

    if not os.path.isdir(folder):
        return []
    rows: list[dict[str, Any]] = []
    for name in sorted(os.listdir(folder)):
        if name.endswith(".parquet") and not name.startswith("."):
            rows.extend(pq.read_table(os.path.join(folder, name), schema=schema).to_pylist())
    return rows


def find_new_scenes(pattern: str, tables_dir: str) -> tuple[list[SceneKey], int]:
    """Scene files not in the ledger yet.

    Args:
        pattern: The config's ``scenes``.
        tables_dir: The tables folder.

    Returns:
        ``(new keys, number of files seen)``.
    """
    seen = {row["key"] for row in read_ledger(tables_dir)}
    found = list_scenes(pattern)
    return [k for k in found if k.key not in seen], len(found)


def read_training_runs(tables_dir: str) -> list[dict[str, Any]]:
    """All rows of the ``training_runs`` table, oldest first.

    Args:
        tables_dir: The tables folder.

    Returns:
        The rows (empty when there is none).
    """
    from minewatch.tables import training_runs_schema

    rows = _read_parts(os.path.join(tables_dir, RUNS), training_runs_schema())
    return sorted(rows, key=lambda r: (r["started"], r["run_id"]))


# -- dataset -------------------------------------------------------------------


def merge_band_stats(parts: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, Any]:
    """Merge the ``bands`` sections of several tile jobs' ``stats.json`` exactly.

    Each part holds ``count``, ``mean``, ``std`` (population), ``min`` and
    ``max`` per band; sums and sums of squares are rebuilt from them, so the
    merged mean and std equal those of one job over all the pixels.

    Args:
        parts: ``stats["bands"]`` of each job.

    Returns:
        The merged ``bands`` section (same keys).
    """
    from minewatch.bandstats import BandStats

    merged = BandStats({})
    for bands in parts:
        merged.merge(BandStats.from_summary(bands))
    return merged.summary()


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _link(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (copy across devices); an existing ``dst`` stays."""
    if os.path.exists(dst):
        return
    try:
        os.link(src, dst)
    except OSError:
        temp = f"{dst}.tmp-{uuid.uuid4().hex[:8]}"
        shutil.copy2(src, temp)
        os.replace(temp, dst)


def sync_dataset(work: str, batches: Sequence[str]) -> dict[str, Any]:
    """Make ``WORK/dataset/`` the union of the committed batches (idempotent).

    Args:
        work: The work folder.
        batches: Run ids of the committed batches, in order.

    Returns:
        The dataset's ``stats.json`` content.

    Raises:
        InputError: Batches with different class lists (give ``--classes`` in
            ``tile_args`` so every night labels the same classes).
    """
    dataset = os.path.join(work, "dataset")
    stats_parts, classes, first = [], None, ""
    totals = {"tiles": 0, "inputs": 0}
    with_tiles = []
    for batch in batches:
        folder = os.path.join(work, "batches", batch)
        stats = _read_json(os.path.join(folder, "stats.json"))
        batch_classes = list(stats.get("classes") or [])
        if stats["tiles"]["written"]:
            with_tiles.append(batch)
            if classes is None:
                classes, first = batch_classes, batch
            elif batch_classes != classes:
                raise InputError(
                    f"batch {batch} has classes {batch_classes}, batch {first} has {classes}: "
                    "fix the class list with --classes in tile_args"
                )
        stats_parts.append(stats.get("bands") or {})
        totals["tiles"] += int(stats["tiles"]["written"])
        totals["inputs"] += int(stats["inputs"]["total"])
        for table in ("tiles", "manifest"):
            src_dir = os.path.join(folder, table)
            dst_dir = os.path.join(dataset, table)
            os.makedirs(dst_dir, exist_ok=True)
            for name in sorted(os.listdir(src_dir)) if os.path.isdir(src_dir) else ():
                if name.startswith(".") or name == "part-empty.parquet":
                    continue
                # Shard names are derived from each batch's own inputs
                # (tiles-00000-of-00001.tfrecord in every small batch): the batch
                # id keeps one batch's files from standing in for another's.
                _link(os.path.join(src_dir, name), os.path.join(dst_dir, f"{batch}__{name}"))
    merged = {
        "label_source": "retrain",
        "classes": classes or [],
        "batches": list(batches),
        "batches_with_tiles": with_tiles,
        "tiles": {"written": totals["tiles"]},
        "inputs": {"total": totals["inputs"]},
        "bands": merge_band_stats(stats_parts),
    }
    write_json(os.path.join(dataset, "stats.json"), merged)
    return merged


def _acquired_window(dataset: str) -> tuple[Any, Any]:
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    folder = os.path.join(dataset, "manifest")
    if not os.path.isdir(folder) or not os.listdir(folder):
        return None, None
    column = ds.dataset(folder, format="parquet").to_table(columns=["acquired"])["acquired"]
    bounds = pc.min_max(column)
    return bounds["min"].as_py(), bounds["max"].as_py()


# -- the run -------------------------------------------------------------------


@contextmanager
def _lock(work: str) -> Iterator[None]:
    import fcntl

    os.makedirs(work, exist_ok=True)
    path = os.path.join(work, "retrain.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            with open(path) as f:
                holder = f.read().strip() or "unknown"
            raise RetrainLocked(
                f"another minewatch retrain is running on {work} ({holder}); wait for it to "
                "finish (the lock is released when that process ends)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        yield
    finally:
        os.close(fd)


def _run_id(now: datetime) -> str:
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


@contextmanager
def _job_errors(what: str) -> Iterator[None]:
    """Prefix an inner job's option errors with the config key that holds the options."""
    try:
        yield
    except ConfigError as err:
        raise ConfigError(f"{what}: {err}") from None


def _tile(config: RetrainConfig, new: Sequence[SceneKey], out: str) -> dict[str, Any]:
    from pipelines.tile import run

    argv = [k.path for k in new] + ["--out", out, "--overwrite", *config.tile_args]
    if config.labels:
        argv[len(new) : len(new)] = ["--labels", config.path(config.labels)]
    with _job_errors("tile_args/labels"):
        stats = run(argv, save_main_session=False)
    if stats is None:
        raise ConfigError("tile_args: a dry run (--dry_run) cannot feed a retrain")
    return stats


def _graph(config: RetrainConfig, dataset: str, out: str) -> dict[str, Any]:
    from pipelines.graph import run

    with _job_errors("graph_args"):
        stats = run([dataset, "--out", out, "--overwrite", *config.graph_args], False)
    if stats is None:
        raise ConfigError("graph_args: a dry run (--dry_run) cannot feed a retrain")
    return stats


def _trainer_config(config: RetrainConfig, work: str) -> Any:
    from nsl_models.configs import config_from_dict, config_to_dict, load_config

    base = load_config(config.path(config.training.config), config.training.overrides)
    data = config_to_dict(base)
    data["data"].update(
        tiles=os.path.join(work, "dataset"), graph=os.path.join(work, "graph"), train=""
    )
    return config_from_dict(data)


def _warm_start(trainer: Any, registry: str) -> str:
    """Load the registry's current weights into a fresh trainer; say what happened."""
    from nsl_models.registry import load_current

    try:
        current_dir, meta = load_current(registry)
    except InputError:
        return "scratch (no current model in the registry)"
    spec = trainer.spec
    mismatch = [
        k
        for k, mine in (
            ("classes", list(spec.classes)),
            ("bands", list(spec.bands)),
            ("tile_size", spec.height),
        )
        if meta.get(k) != mine
    ]
    from nsl_models.configs import config_to_dict

    if (meta.get("config") or {}).get("model") != config_to_dict(trainer.config.model):
        mismatch.append("model")
    if mismatch:
        return f"scratch (current {meta['version']} differs in {', '.join(mismatch)})"
    import tensorflow as tf

    variables = os.path.join(current_dir, "saved_model", "variables", "variables")
    try:
        # The SavedModel's root object holds the base model as `model`
        # (nsl_models.registry.export_model), so its variables restore by path.
        status = tf.train.Checkpoint(model=trainer.base_model).read(variables)
        status.expect_partial().assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as err:
        return f"scratch (weights of {meta['version']} do not restore: {str(err)[:200]})"
    return f"current {meta['version']}"


def _summaries(report: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Clean, mean corrupted and worst adversarial accuracy per model version."""
    out = {}
    for m in report["models"]:
        corrupted = [
            r["accuracy"]
            for sev in m["corruptions"].values()
            for r in sev.values()
            if r["accuracy"] is not None and math.isfinite(r["accuracy"])
        ]
        attacked = [
            r["accuracy"]
            for eps in m["adversarial"].values()
            for r in eps.values()
            if r["accuracy"] is not None and math.isfinite(r["accuracy"])
        ]
        out[m["version"]] = {
            "accuracy": float(m["clean"]["accuracy"]),
            "balanced_accuracy": float(m["clean"]["balanced_accuracy"]),
            "macro_f1": float(m["clean"]["macro_f1"]),
            "corrupted_accuracy": float(sum(corrupted) / len(corrupted)) if corrupted else math.nan,
            "adversarial_accuracy": float(min(attacked)) if attacked else math.nan,
        }
    return out


def robustness_refusal(
    candidate: Mapping[str, float], current: Mapping[str, float] | None, max_drop: float
) -> str:
    """Why the robustness gate refuses a candidate, or ``""`` when it passes.

    Args:
        candidate: :func:`_summaries` entry of the candidate.
        current: The current model's entry on the same tiles (None: no current model).
        max_drop: :attr:`PromotionSettings.max_robustness_drop`.

    Returns:
        The reason, or ``""``.
    """
    if current is None or max_drop >= 1.0:
        return ""
    mine, theirs = candidate["corrupted_accuracy"], current["corrupted_accuracy"]
    if math.isfinite(mine) and math.isfinite(theirs) and mine < theirs - max_drop:
        return (
            f"mean accuracy under corruption {mine:.4f} is more than {max_drop} below the "
            f"current model's {theirs:.4f} on the same tiles"
        )
    return ""


def _empty_record(run_id: str, started: datetime) -> dict[str, Any]:
    from minewatch.tables import training_runs_schema

    record: dict[str, Any] = {f.name: None for f in training_runs_schema()}
    record.update(run_id=run_id, started=started, promoted=False)
    return record


def _write_record(tables_dir: str, record: dict[str, Any]) -> None:
    from minewatch.tables import training_runs_schema, write_geoparquet

    record["finished"] = datetime.now(UTC).replace(microsecond=0)
    path = os.path.join(tables_dir, RUNS, f"run-{record['run_id']}.parquet")
    write_geoparquet(path, [record], RUNS, training_runs_schema())


def _write_ledger(tables_dir: str, run_id: str, keys: Sequence[SceneKey], now: datetime) -> None:
    from minewatch.tables import write_geoparquet

    rows = [
        {
            "key": k.key,
            "path": k.path,
            "size": k.size,
            "mtime": k.mtime,
            "run_id": run_id,
            "recorded": now,
        }
        for k in keys
    ]
    path = os.path.join(tables_dir, LEDGER, f"batch-{run_id}.parquet")
    write_geoparquet(path, rows, LEDGER, _ledger_schema())


def retrain(
    config: RetrainConfig,
    now: datetime | None = None,
    log: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Run one retraining cycle (see the module docstring) and record it.

    Args:
        config: The validated config.
        now: The run's start time (default: now, UTC).
        log: Called with one line per step (the CLI prints them).

    Returns:
        The ``training_runs`` row written (``status`` ``promoted``,
        ``not_promoted``, ``noop`` or ``failed``).

    Raises:
        RetrainLocked: Another run holds the lock; nothing is recorded.
        ConfigError: A config problem found while running (recorded as failed).
        InputError: Unusable data (recorded as failed).
    """
    started = (now or datetime.now(UTC)).replace(microsecond=0)
    run_id = _run_id(started)
    work, tables = config.work_dir, config.tables_dir
    with _lock(work):
        record = _empty_record(run_id, started)
        try:
            _cycle(config, work, tables, record, log)
        except Exception as err:
            record.update(status="failed", promoted=False, reason=f"{type(err).__name__}: {err}")
            _write_record(tables, record)
            raise
        _write_record(tables, record)
        log(f"{record['status']}: {record['reason']}")
        return record


def _cycle(
    config: RetrainConfig,
    work: str,
    tables: str,
    record: dict[str, Any],
    log: Callable[[str], None],
) -> None:
    run_id = record["run_id"]
    ledger = read_ledger(tables)
    committed = list(dict.fromkeys(row["run_id"] for row in ledger))
    # A batch folder that no ledger part names is what a crashed run left: redo it.
    batches_dir = os.path.join(work, "batches")
    for name in sorted(os.listdir(batches_dir)) if os.path.isdir(batches_dir) else ():
        if name not in committed:
            log(f"removing batch {name} of an unfinished run")
            shutil.rmtree(os.path.join(batches_dir, name))

    new, seen = find_new_scenes(config.path(config.scenes), tables)
    record.update(scenes_seen=seen, scenes_new=len(new))
    log(f"{len(new)} new scene file(s) of {seen}")
    if new:
        batch_dir = os.path.join(batches_dir, run_id)
        stats = _tile(config, new, batch_dir)
        record.update(
            scenes_tiled=int(stats["inputs"]["tiled"]),
            scenes_dead_lettered=int(stats["inputs"]["dead_lettered"]),
            tiles_new=int(stats["tiles"]["written"]),
            dead_letter_rows=_count_rows(os.path.join(batch_dir, "dead_letter")),
        )
        log(
            f"tiled {stats['inputs']['tiled']} input(s) into {stats['tiles']['written']} tiles, "
            f"{stats['inputs']['dead_lettered']} dead-lettered"
        )
        _write_ledger(tables, run_id, new, record["started"])
        committed.append(run_id)
    else:
        record.update(scenes_tiled=0, scenes_dead_lettered=0, tiles_new=0, dead_letter_rows=0)
    record["batches"] = len(committed)
    if not committed:
        record.update(status="noop", reason=f"no scene in {config.scenes} yet; nothing to train on")
        return

    dataset_stats = sync_dataset(work, committed)
    record["tiles_total"] = int(dataset_stats["tiles"]["written"])
    record["window_start"], record["window_end"] = _acquired_window(os.path.join(work, "dataset"))
    if not record["tiles_total"]:
        record.update(status="noop", reason="no tile in any batch yet (all inputs dead-lettered)")
        return

    trainer_config = _trainer_config(config, work)
    from nsl_models.configs import config_to_dict

    config_dict = config_to_dict(trainer_config)
    record["config_hash"] = _hash(config_dict)[:16]
    # Batches that added no tile do not change what the model sees.
    record["data_hash"] = _hash(dataset_stats["batches_with_tiles"])[:16]
    train_key = _hash([record["data_hash"], record["config_hash"], config.training.init.value])
    record["train_key"] = train_key[:16]
    done = [
        r
        for r in read_training_runs(tables)
        if r["train_key"] == record["train_key"] and r["status"] in ("promoted", "not_promoted")
    ]
    if done:
        last = done[-1]
        record.update(
            status="noop",
            model_version=last["model_version"],
            reason=f"no new tile: run {last['run_id']} already trained on the same data and "
            f"config (model {last['model_version']}, "
            f"{'promoted' if last['promoted'] else 'not promoted'})",
        )
        return

    graph_stats = _graph(config, os.path.join(work, "dataset"), os.path.join(work, "graph"))
    record["graph_edges"] = int(sum(graph_stats["edges"].values()))
    log(f"graph: {record['graph_edges']} edges over {graph_stats['tiles']['read']} tiles")

    model_dir = os.path.join(work, "models", record["train_key"])
    record["model_dir"] = model_dir
    result, init = _train(config, trainer_config, model_dir)
    record.update(
        init=init,
        resumed_from_step=int(result.resumed_from),
        global_step=int(result.global_step),
        model_version=str(result.metadata["version"]),
    )
    metric = config.promotion.metric or str(result.metrics.get("selection_metric", "accuracy"))
    record["metric"] = metric
    value = result.metrics.get(metric)
    record["metric_value"] = float(value) if value is not None else None
    log(f"trained {record['model_version']} ({init}): held-out {metric} {value}")

    report = _evaluate(config, work, run_id, model_dir, trainer_config.task.value)
    summaries = _summaries(report)
    mine = summaries[record["model_version"]]
    current = next((v for k, v in summaries.items() if k != record["model_version"]), None)
    current_version = next((k for k in summaries if k != record["model_version"]), None)
    record.update(
        eval_examples=int(report["examples"]),
        accuracy=mine["accuracy"],
        balanced_accuracy=mine["balanced_accuracy"],
        macro_f1=mine["macro_f1"],
        corrupted_accuracy=mine["corrupted_accuracy"],
        adversarial_accuracy=mine["adversarial_accuracy"],
        current_version=current_version,
        current_accuracy=current["accuracy"] if current else None,
        current_corrupted_accuracy=current["corrupted_accuracy"] if current else None,
        report=os.path.join(work, "reports", f"{run_id}.json"),
        metrics_json=json.dumps(_finite(result.metrics), sort_keys=True),
    )

    refusal = robustness_refusal(mine, current, config.promotion.max_robustness_drop)
    if refusal:
        record.update(status="not_promoted", promoted=False, reason=f"refused: {refusal}")
        return
    from nsl_models.registry import promote

    decision = promote(model_dir, config.path(config.registry), config.promotion.metric or None)
    record.update(
        status="promoted" if decision.promoted else "not_promoted",
        promoted=decision.promoted,
        reason=decision.reason,
    )


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _count_rows(folder: str) -> int:
    import pyarrow.dataset as ds

    if not os.path.isdir(folder):
        return 0
    return int(ds.dataset(folder, format="parquet").count_rows())


def _train(config: RetrainConfig, trainer_config: Any, model_dir: str) -> tuple[Any, str]:
    from nsl_models.train import Trainer

    trainer = Trainer(trainer_config, model_dir)
    if trainer.manager.latest_checkpoint:
        init = "checkpoint (resumed)"
    elif config.training.init is Init.CURRENT:
        init = _warm_start(trainer, config.path(config.registry))
    else:
        init = "scratch"
    return trainer.fit(), init


def _evaluate(
    config: RetrainConfig, work: str, run_id: str, model_dir: str, task: str
) -> dict[str, Any]:
    from minewatch.corruptions import FRAME_CORRUPTIONS, SATELLITE_CORRUPTIONS
    from nsl_models.evaluate import evaluate_models, write_report
    from nsl_models.registry import load_current, read_metadata

    models = [model_dir]
    mine = read_metadata(model_dir)
    try:
        current_dir, current = load_current(config.path(config.registry))
    except InputError:
        current_dir, current = "", {}
    # Only a model that reads the same tiles can be scored on them.
    if current_dir and all(
        current.get(k) == mine.get(k) for k in ("task", "classes", "bands", "tile_size")
    ):
        models.append(current_dir)
    ev = config.evaluation
    default = FRAME_CORRUPTIONS if task == "frame" else ("shift", *SATELLITE_CORRUPTIONS)
    report = evaluate_models(
        models,
        os.path.join(work, "dataset"),
        split=ev.split,
        corruptions=ev.corruptions or default,
        severities=ev.severities,
        epsilons=ev.epsilons,
        max_examples=ev.max_examples,
    )
    path = os.path.join(work, "reports", f"{run_id}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_report(report, path)
    return report
