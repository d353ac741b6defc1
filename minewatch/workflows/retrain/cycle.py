"""One retraining run: the lock, the stages and the promotion decision.

:func:`retrain` takes the work folder's lock, then :func:`_cycle` finds new
scenes, tiles them, syncs the dataset, rebuilds the graph, trains, evaluates and
promotes only if better; every run ends as one ``training_runs`` row.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from minewatch.errors import ConfigError, InputError, MinewatchError
from minewatch.workflows.retrain.config import Init, RetrainConfig, job_errors
from minewatch.workflows.retrain.dataset import acquired_window, sync_dataset
from minewatch.workflows.retrain.ledger import (
    SceneKey,
    empty_record,
    find_new_scenes,
    read_ledger,
    read_training_runs,
    write_ledger,
    write_record,
)

__all__ = ["RetrainLocked", "retrain", "retrain_lock", "robustness_refusal"]


class RetrainLocked(MinewatchError, RuntimeError):
    """Another ``minewatch retrain`` holds the work folder's lock."""


@contextmanager
def retrain_lock(work: str) -> Iterator[None]:
    """Hold ``WORK/retrain.lock`` (an ``flock``, released when the process dies).

    Args:
        work: The work folder (made if missing).

    Raises:
        RetrainLocked: Another process holds the lock; the message names it.
    """
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


def _tile(config: RetrainConfig, new: Sequence[SceneKey], out: str) -> dict[str, Any]:
    from pipelines.tile import run

    argv = [k.path for k in new] + ["--out", out, "--overwrite", *config.tile_args]
    if config.labels:
        argv[len(new) : len(new)] = ["--labels", config.path(config.labels)]
    with job_errors("tile_args/labels"):
        stats = run(argv, save_main_session=False)
    if stats is None:
        raise ConfigError("tile_args: a dry run (--dry_run) cannot feed a retrain")
    return stats


def _graph(config: RetrainConfig, dataset: str, out: str) -> dict[str, Any]:
    from pipelines.graph import run

    with job_errors("graph_args"):
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
    with retrain_lock(work):
        record = empty_record(run_id, started)
        try:
            _cycle(config, work, tables, record, log)
        except Exception as err:
            record.update(status="failed", promoted=False, reason=f"{type(err).__name__}: {err}")
            write_record(tables, record)
            raise
        write_record(tables, record)
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
        write_ledger(tables, run_id, new, record["started"])
        committed.append(run_id)
    else:
        record.update(scenes_tiled=0, scenes_dead_lettered=0, tiles_new=0, dead_letter_rows=0)
    record["batches"] = len(committed)
    if not committed:
        record.update(status="noop", reason=f"no scene in {config.scenes} yet; nothing to train on")
        return

    dataset_stats = sync_dataset(work, committed)
    record["tiles_total"] = int(dataset_stats["tiles"]["written"])
    record["window_start"], record["window_end"] = acquired_window(os.path.join(work, "dataset"))
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
    from nsl_models.train import Trainer, hard_negative_round

    hard = None
    if trainer_config.train.hard_negatives > 0:
        # Round 1 from scratch (nsl_models.hard_negatives); the warm start is round 2's.
        hard = hard_negative_round(trainer_config, model_dir)
    trainer = Trainer(trainer_config, model_dir, hard_negatives=hard)
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
