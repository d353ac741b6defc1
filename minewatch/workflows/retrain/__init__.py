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

The package, by concept: :mod:`.config` (settings and YAML loading),
:mod:`.ledger` (the scene ledger and the ``training_runs`` table),
:mod:`.dataset` (the union of the batches) and :mod:`.cycle` (the lock and
the stages of one run).

Core code: nothing here imports :mod:`nsl_models` or Beam at module level.

Example:
    >>> from minewatch.workflows.retrain import load_retrain_config, retrain
    >>> config = load_retrain_config("retrain.yaml")  # doctest: +SKIP
    >>> record = retrain(config)  # doctest: +SKIP
    >>> record["status"], record["reason"]  # doctest: +SKIP
"""

# `X as X`: public names outside __all__ that callers imported from here before the split.
from minewatch.workflows.retrain.config import (
    EvaluationSettings,
    Init,
    PromotionSettings,
    RetrainConfig,
    TrainingSettings,
    load_retrain_config,
    retrain_config_from_dict,
)
from minewatch.workflows.retrain.cycle import RetrainLocked, retrain
from minewatch.workflows.retrain.cycle import robustness_refusal as robustness_refusal
from minewatch.workflows.retrain.dataset import merge_band_stats
from minewatch.workflows.retrain.dataset import sync_dataset as sync_dataset
from minewatch.workflows.retrain.ledger import LEDGER as LEDGER
from minewatch.workflows.retrain.ledger import RUNS as RUNS
from minewatch.workflows.retrain.ledger import (
    SceneKey,
    find_new_scenes,
    read_ledger,
    read_training_runs,
)
from minewatch.workflows.retrain.ledger import list_scenes as list_scenes

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
