"""The training loop: data, strategy, checkpoints, resume, early stopping, export.

:class:`Trainer` is the library; ``minewatch train`` only parses flags and
calls :func:`train_from_config`. ``MODEL_DIR`` after a run::

    config.yaml         the resolved config (every default written out)
    checkpoints/        tf.train.CheckpointManager: model, optimizer, data
                        iterator, epoch and early-stopping state, every
                        ``train.checkpoint_every`` steps and at each epoch end
    best/               weights of the best validation epoch
    logs/train|validation   TensorBoard scalars
    saved_model/        the exported SavedModel (registry contract)
    metadata.json       version, task, classes, bands, normalisation, metrics,
                        labels (the label budget: training and labelled tiles
                        per class), ...

Resume: running again with the same ``MODEL_DIR`` restores the latest
checkpoint (the optimizer step, the position in the shuffled data stream and
the early-stopping state) and continues from that step; a finished run exports
again without training.

Example:
    >>> from nsl_models.configs import load_config
    >>> from nsl_models.train import train_from_config
    >>> config = load_config("nsl_models/configs/tiles.yaml")
    >>> result = train_from_config(config, "models/t1")  # doctest: +SKIP
    >>> result.metrics["accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import glob
import json
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from minewatch.compat import import_nsl
from nsl_models import data as datalib
from nsl_models.configs import OptimizerName, TrainerConfig, config_to_dict
from nsl_models.hard_negatives import HardNegatives
from nsl_models.hardware import Hardware, detect, make_deterministic, set_precision

__all__ = ["StepHook", "TrainResult", "Trainer", "hard_negative_round", "train_from_config"]

log = logging.getLogger(__name__)

#: Called after every optimizer step with ``(global_step, logs)``; may raise to stop.
StepHook = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What a run did.

    Attributes:
        model_dir: The output folder.
        global_step: Optimizer steps taken in total (across resumes).
        resumed_from: Step of the checkpoint the run started from (0: fresh).
        epochs: Epochs completed.
        stopped_early: Early stopping ended the run.
        history: Per-epoch logs (train and ``val_`` metrics) of this process.
        metrics: Held-out metrics written to ``metadata.json``.
        metadata: The exported ``metadata.json`` content.
    """

    model_dir: str
    global_step: int
    resumed_from: int
    epochs: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)


class Trainer:
    """Builds data, model and checkpoints from a config, trains, exports.

    Example:
        >>> trainer = Trainer(config, "models/run1")  # doctest: +SKIP
        >>> result = trainer.fit()  # doctest: +SKIP

    Args:
        config: The validated config.
        model_dir: Output folder (created); an earlier run there is resumed.
        hardware: Strategy to use; default :func:`nsl_models.hardware.detect`
            (with ``train.cpu_replicas``).
        hooks: Called after every step with ``(global_step, logs)``.
        hard_negatives: Pure majority tiles to keep every pass (round 2 of
            ``train.hard_negatives``, :mod:`nsl_models.hard_negatives`); default
            none: undersampling draws every such tile alike.
    """

    def __init__(
        self,
        config: TrainerConfig,
        model_dir: str,
        hardware: Hardware | None = None,
        hooks: Sequence[StepHook] = (),
        hard_negatives: HardNegatives | None = None,
    ) -> None:
        self.config = config
        self.model_dir = os.fspath(model_dir)
        self.hooks = list(hooks)
        if config.train.hard_negatives > 0 and hard_negatives is None:
            from minewatch.errors import ConfigError

            raise ConfigError(
                "train.hard_negatives: the trainer needs the mined tiles of a first round; "
                "train through train_from_config (`minewatch train`), or set it to 0"
            )
        self.hard_negatives = hard_negatives
        import_nsl()
        import tensorflow as tf

        self._tf = tf
        make_deterministic(config.train.seed)  # seeds; op determinism on CPU
        # train.cpu_replicas > 1 on a CPU-only machine: MirroredStrategy over N
        # logical CPUs, split here, before anything initialises the devices.
        self.hardware = hardware or detect(cpu_replicas=config.train.cpu_replicas)
        self.precision = set_precision(self.hardware, config.train.mixed_precision)
        self.train_files, self.validation_files = datalib.resolve_files(config.data)
        self.spec = datalib.read_tile_spec(config.data.tiles, self.train_files)
        # Stratified label budget (data.label_fraction per class, label_floor):
        # one pass, before the counts below, which see the hidden labels as -1.
        self.label_budget = (
            datalib.label_budget(self.train_files, self.spec, config.data)
            if config.data.label_fraction < 1.0
            else None
        )
        # One pass counts tiles and pixels; weights and epoch length follow the
        # counts expected after majority undersampling (data.majority_keep).
        self.class_counts = datalib.count_classes(
            self.train_files,
            self.spec,
            config.data,
            pixel_labels=config.model.pixel_head,
            budget=self.label_budget,
        )
        self.majority_class = self.class_counts.majority
        counts, pixels = self.class_counts.expected(
            config.data.majority_keep,
            hard_negatives.tiles if hard_negatives else 0,
            hard_negatives.pixels if hard_negatives else 0,
        )
        self.label_counts = counts
        self.class_weight = datalib.class_weights(
            counts[:-1], config.data.class_weighting, config.data.max_class_weight
        )
        self.pixel_class_weight = None
        if config.model.pixel_head:
            self.pixel_counts = pixels
            self.pixel_class_weight = datalib.class_weights(
                pixels,
                config.data.pixel_class_weighting,
                config.data.max_pixel_class_weight or config.data.max_class_weight,
            )
        self.logit_adjustment = self._logit_adjustment()
        self.train_examples = round(float(counts.sum()))
        self._held_out: tuple[np.ndarray, np.ndarray, np.ndarray, datalib.TilePlaces] | None = None
        self.steps_per_epoch = config.train.steps_per_epoch or max(
            1, self.train_examples // config.data.batch_size
        )
        self._build()

    # -- setup ---------------------------------------------------------------

    def _logit_adjustment(self) -> dict[str, list[float]]:
        """Offsets that undo undersampling and class weights (``train.calibrate``).

        Returns:
            ``{"probabilities": [K], "pixel_probabilities": [K]}`` (the latter
            with the pixel head); empty when ``train.calibrate`` is off.
        """
        from nsl_models.calibration import logit_adjustment

        if not self.config.train.calibrate:
            return {}
        full_labels, full_pixels = self.class_counts.expected(1.0)
        out = {
            "probabilities": logit_adjustment(
                full_labels[:-1], self.label_counts[:-1], self.class_weight
            ).tolist()
        }
        if self.config.model.pixel_head:
            out["pixel_probabilities"] = logit_adjustment(
                full_pixels, self.pixel_counts, self.pixel_class_weight
            ).tolist()
        return out

    def _val_split(self) -> tuple[list[str], str]:
        if self.validation_files:
            return self.validation_files, datalib.Split.ALL
        data = self.config.data
        if data.graph and not data.train:
            # The packed records are the tile records plus their neighbours: the
            # held-out part of the same hash split reads the plain tile records
            # (the same tiles, a tenth of the bytes with k=10 neighbours).
            tiles = sorted(glob.glob(os.path.join(data.tiles, "tiles", "*.tfrecord")))
            if tiles:
                return tiles, datalib.Split.VALIDATION
        return self.train_files, datalib.Split.VALIDATION

    def _build(self) -> None:
        from nsl_models.models import RegularizedModel, build_base_model

        tf, cfg = self._tf, self.config
        k = cfg.graph.max_neighbors if cfg.graph.enabled else 0
        train_ds = datalib.make_dataset(
            self.train_files,
            self.spec,
            cfg.data,
            split=datalib.Split.TRAIN,
            training=True,
            class_weight=self.class_weight,
            max_neighbors=k,
            seed=cfg.train.seed,
            pixel_labels=cfg.model.pixel_head,
            pixel_class_weight=self.pixel_class_weight,
            majority_class=self.majority_class,
            corruptions=cfg.adversarial.corruptions if cfg.adversarial.enabled else (),
            max_severity=cfg.adversarial.max_severity,
            fault_views=cfg.augment.views,
            view_faults=cfg.augment.faults,
            view_severities=(cfg.augment.min_severity, cfg.augment.max_severity),
            budget=self.label_budget,
            always_keep=self.hard_negatives.tile_ids if self.hard_negatives else (),
        )
        val_files, val_split = self._val_split()
        n_val = int(datalib.count_labels(val_files, self.spec, cfg.data, val_split)[:-1].sum())
        self.validation_examples = n_val
        self.val_ds = None
        if n_val:
            self.val_ds = datalib.make_dataset(
                val_files,
                self.spec,
                cfg.data,
                split=val_split,
                training=False,
                batch_size=min(cfg.data.batch_size, n_val),
                pixel_labels=cfg.model.pixel_head,
                pixel_class_weight=self.pixel_class_weight,
            )
        strategy = self.hardware.strategy
        with strategy.scope():
            self.base_model = build_base_model(self.spec, cfg.model)
            self.model = RegularizedModel(
                self.base_model,
                cfg.graph,
                cfg.adversarial,
                cfg.train.pixel_loss_weight,
                cfg.train.pixel_focal_gamma,
                augment=cfg.augment,
                consistency=cfg.consistency,
                fault_adversary=cfg.fault_adversary,
            )
            opt_cls = (
                tf.keras.optimizers.Adam
                if cfg.train.optimizer is OptimizerName.ADAM
                else tf.keras.optimizers.SGD
            )
            self.model.compile(
                optimizer=opt_cls(learning_rate=cfg.train.learning_rate),
                jit_compile=cfg.train.jit_compile,
            )
            self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch")
            self.best = tf.Variable(-math.inf, dtype=tf.float64, trainable=False, name="best")
            self.wait = tf.Variable(0, dtype=tf.int64, trainable=False, name="wait")
        # A plain tf.data iterator over global batches: checkpointable (a
        # tf.distribute DistributedIterator is not), so a run of several replicas
        # resumes at its data position too; _replicated_train_function splits
        # each global batch between the replicas.
        self.iterator = iter(train_ds)
        # Build the optimizer's slots before restoring so they restore too; in
        # the strategy's scope, so that with several replicas they are mirrored
        # (outside it each replica would update one shared slot: Adam's moments
        # moved N times per step).
        with strategy.scope():
            self.model.optimizer.build(self.model.trainable_variables)
        self.checkpoint = tf.train.Checkpoint(
            model=self.model,
            optimizer=self.model.optimizer,
            iterator=self.iterator,
            epoch=self.epoch,
            best=self.best,
            wait=self.wait,
        )
        self.manager = tf.train.CheckpointManager(
            self.checkpoint,
            os.path.join(self.model_dir, "checkpoints"),
            max_to_keep=cfg.train.keep_checkpoints,
        )
        self.best_checkpoint = tf.train.Checkpoint(model=self.base_model)

    def _replicated_train_function(self) -> Callable[[Any], dict[str, Any]]:
        """One step over several replicas, reading the checkpointable plain iterator.

        Takes the next global batch, gives replica ``i`` of ``N`` rows
        ``[i * ceil(B / N), (i + 1) * ceil(B / N))`` (the order
        ``experimental_distribute_dataset`` uses), runs ``train_step`` on every
        replica and returns the first replica's logs (the metrics are already
        aggregated over replicas).

        Returns:
            ``f(iterator) -> logs``, a ``tf.function``.
        """
        tf, strategy, model = self._tf, self.hardware.strategy, self.model
        n = self.hardware.replicas

        def shard(t: Any, i: Any) -> Any:
            per = (tf.shape(t)[0] + n - 1) // n
            return t[i * per : (i + 1) * per]

        # No jit_compile: XLA refuses variables placed on another logical device.
        @tf.function  # type: ignore[untyped-decorator]
        def train_function(iterator: Any) -> dict[str, Any]:
            batch = next(iterator)

            def value_fn(ctx: Any) -> Any:
                i = ctx.replica_id_in_sync_group
                return tf.nest.map_structure(lambda t: shard(t, i), batch)

            data = strategy.experimental_distribute_values_from_function(value_fn)
            outputs = strategy.run(model.train_step, args=(data,))
            return {k: strategy.experimental_local_results(v)[0] for k, v in outputs.items()}

        return train_function

    @property
    def global_step(self) -> int:
        """Optimizer steps taken (restored ones included)."""
        return int(self.model.optimizer.iterations.numpy())

    def restore(self) -> int:
        """Restore the latest checkpoint of ``model_dir``, if any.

        Returns:
            The restored optimizer step (0 when starting fresh).
        """
        latest = self.manager.latest_checkpoint
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            log.info("resumed from %s (step %d)", latest, self.global_step)
        return self.global_step

    # -- loop ----------------------------------------------------------------

    def fit(self, export: bool = True) -> TrainResult:
        """Train (resuming if a checkpoint exists), then export.

        Args:
            export: Write ``saved_model/`` and ``metadata.json`` at the end.

        Returns:
            The :class:`TrainResult`.
        """
        tf, cfg = self._tf, self.config
        os.makedirs(self.model_dir, exist_ok=True)
        _write_config(cfg, os.path.join(self.model_dir, "config.yaml"))
        resumed_from = self.restore()
        train_fn = (
            self.model.make_train_function()
            if self.hardware.replicas == 1
            else self._replicated_train_function()
        )
        writers = {
            name: tf.summary.create_file_writer(os.path.join(self.model_dir, "logs", name))
            for name in ("train", "validation")
        }
        spe, history, stopped = self.steps_per_epoch, [], False
        patience = cfg.train.early_stopping_patience
        while int(self.epoch.numpy()) < cfg.train.epochs and not stopped:
            epoch = int(self.epoch.numpy())
            first = self.global_step - epoch * spe
            print(
                f"Epoch {epoch + 1}/{cfg.train.epochs}" + (f" (from step {first})" if first else "")
            )
            # A live bar on a terminal; one line per epoch in logs and CI.
            bar = tf.keras.utils.Progbar(
                spe,
                verbose=1 if sys.stdout.isatty() else 2,
                stateful_metrics=[m.name for m in self.model.metrics],
            )
            self.model.reset_metrics()
            logs: dict[str, float] = {}
            for i in range(first, spe):
                logs = {k: float(v) for k, v in train_fn(self.iterator).items()}
                step = self.global_step
                bar.update(i + 1, list(logs.items()))
                if step % cfg.train.log_every == 0:
                    with writers["train"].as_default():
                        for name, value in logs.items():
                            tf.summary.scalar(name, value, step=step)
                if step % cfg.train.checkpoint_every == 0:
                    self.manager.save(checkpoint_number=step)
                for hook in self.hooks:
                    hook(step, logs)
            record = dict(logs)
            if self.val_ds is not None:
                val = self.model.evaluate(self.val_ds, verbose=0, return_dict=True)
                record.update({f"val_{k}": float(v) for k, v in val.items()})
                with writers["validation"].as_default():
                    for name, value in val.items():
                        tf.summary.scalar(name, value, step=self.global_step)
                metric = cfg.train.selection_metric.value
                if metric != "accuracy":
                    record[f"val_{metric}"] = float(self.held_out_metrics()[metric])
                score = record[f"val_{metric}"]
                if score > float(self.best.numpy()):
                    self.best.assign(score)
                    self.wait.assign(0)
                    self.best_checkpoint.write(os.path.join(self.model_dir, "best", "weights"))
                else:
                    self.wait.assign_add(1)
                    stopped = bool(patience) and int(self.wait.numpy()) >= patience
                print(
                    "  "
                    + " - ".join(f"{k}: {v:.4f}" for k, v in record.items() if k.startswith("val_"))
                )
            self.epoch.assign_add(1)
            history.append(record)
            self.manager.save(checkpoint_number=self.global_step)
            if stopped:
                print(
                    f"Early stopping: val_{cfg.train.selection_metric.value} did not improve "
                    f"for {patience} epochs"
                )
        for w in writers.values():
            w.flush()
        best = os.path.join(self.model_dir, "best", "weights")
        if tf.io.gfile.exists(best + ".index"):
            self.best_checkpoint.read(best).expect_partial()
        result = TrainResult(
            model_dir=self.model_dir,
            global_step=self.global_step,
            resumed_from=resumed_from,
            epochs=int(self.epoch.numpy()),
            stopped_early=stopped,
            history=history,
        )
        if export:
            result.metrics = self.held_out_metrics()
            result.metadata = self.export(result.metrics, self.operating_points())
        return result

    # -- evaluation and export ----------------------------------------------

    def held_out_metrics(self) -> dict[str, Any]:
        """Accuracy, macro F1 and per-class scores of the base model on the validation split.

        Returns:
            :func:`nsl_models.evaluate.classification_report` of the held-out
            tiles plus ``selection_metric`` (``train.selection_metric``) and ``examples``; empty
            metrics with ``examples: 0`` when there is no held-out tile. With the
            pixel head, also ``pixels``: :func:`nsl_models.evaluate.pixel_report`
            of the same tiles.
        """
        from nsl_models.evaluate import classification_report, pixel_report

        images, labels, masks, _ = self._validation_tiles()
        metric = self.config.train.selection_metric.value
        if not len(labels):
            return {"examples": 0, "selection_metric": metric}
        outputs = self.base_model.predict(images.astype(np.float32), batch_size=256, verbose=0)
        logits = outputs[0] if isinstance(outputs, list) else outputs
        report = classification_report(labels, np.argmax(logits, -1), self.spec.classes)
        if isinstance(outputs, list):
            report["pixels"] = pixel_report(masks, np.argmax(outputs[1], -1), self.spec.classes)
            adjust = self.logit_adjustment.get("pixel_probabilities")
            if adjust:
                # What the exported model serves: the data's prior restored.
                report["pixels_calibrated"] = pixel_report(
                    masks, np.argmax(outputs[1] + np.asarray(adjust), -1), self.spec.classes
                )
        report["selection_metric"] = metric
        return report

    def _validation_tiles(
        self,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, datalib.TilePlaces]:
        if self._held_out is None:
            # Read once per run: every epoch scores the same tiles.
            files, split = self._val_split()
            self._held_out = datalib.load_pixel_tiles(files, self.spec, self.config.data, split)
        return self._held_out

    def operating_points(self) -> dict[str, Any] | None:
        """Each site kind's cut, chosen on the validation split (see :mod:`nsl_models.calibration`).

        Returns:
            The ``operating_points`` for ``metadata.json``, or None without the
            pixel head, with ``train.calibrate`` off, for frames, or without
            validation tiles.
        """
        from nsl_models.calibration import ValidationScenes, choose_operating_points

        cfg = self.config
        if not (cfg.train.calibrate and cfg.model.pixel_head) or self.config.task.value != "tile":
            return None
        images, _, masks, places = self._validation_tiles()
        if not len(images):
            return None
        outputs = self.base_model.predict(images.astype(np.float32), batch_size=256, verbose=0)
        probs = _served(outputs[1], np.asarray(self.logit_adjustment["pixel_probabilities"]))
        scenes = ValidationScenes.mosaic(
            probs.astype(np.float32),
            masks,
            places.scene_ids,
            places.rows,
            places.cols,
            places.transforms,
            places.crs,
        )
        skip = ("background", "other", "vessel")
        positive = [c for c in self.spec.classes if c not in skip]
        return choose_operating_points(
            scenes, self.spec.classes, positive, self.logit_adjustment["pixel_probabilities"]
        )

    def labels(self) -> dict[str, Any]:
        """The label budget as ``metadata.json`` records it (``labels``).

        Returns:
            ``{"fraction", "floor", "tiles": {class: n}, "labelled": {class: n}}``:
            labelled tiles per class in the training split, and how many of
            them kept their label (:class:`nsl_models.data.LabelBudget`; all of
            them with ``label_fraction`` 1). Counted before majority
            undersampling.
        """
        if self.label_budget is not None:
            return self.label_budget.to_metadata(self.spec.classes)
        full = self.class_counts.expected(1.0)[0][:-1]
        tiles = {name: int(n) for name, n in zip(self.spec.classes, full, strict=True)}
        data = self.config.data
        return {
            "fraction": data.label_fraction,
            "floor": data.label_floor,
            "tiles": tiles,
            "labelled": dict(tiles),
        }

    def export(
        self, metrics: dict[str, Any], operating_points: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Write ``saved_model/`` and ``metadata.json`` (see :mod:`nsl_models.registry`).

        ``metadata.json`` also holds ``labels`` (:meth:`labels`).

        Args:
            metrics: Held-out metrics to store.
            operating_points: Per-kind site cuts for ``metadata.json``, or None.

        Returns:
            The metadata written.
        """
        from nsl_models.registry import data_manifest_hash, export_model

        metadata = export_model(
            self.base_model,
            self.spec,
            self.model_dir,
            task=self.config.task.value,
            config=config_to_dict(self.config),
            metrics=metrics,
            data_hash=data_manifest_hash(self.config.data.tiles, self.train_files),
            logit_adjustment=self.logit_adjustment,
            operating_points=operating_points,
            labels=self.labels(),
            hard_negatives=self.hard_negatives.summary() if self.hard_negatives else None,
        )
        return metadata

    def mine_hard_negatives(self, fraction: float) -> HardNegatives:
        """The hardest ``fraction`` of the training split's pure majority tiles for this model.

        Scores with the base model's served probabilities (the pixel head's when
        there is one; the logit adjustment added), as the exported model would
        (:func:`nsl_models.hard_negatives.mine`).

        Args:
            fraction: Share of the pool to keep.

        Returns:
            The mined tiles.
        """
        from nsl_models.hard_negatives import mine

        pixel = self.config.model.pixel_head
        key = "pixel_probabilities" if pixel else "probabilities"
        adjust = np.asarray(self.logit_adjustment.get(key, 0.0), np.float32)

        def predict(images: np.ndarray) -> np.ndarray:
            outputs = self.base_model(images, training=False)
            out = outputs[1] if pixel else outputs[0] if isinstance(outputs, list) else outputs
            return _served(np.asarray(self._tf.cast(out, "float64")), adjust)

        return mine(
            self.train_files,
            self.spec,
            self.config.data,
            self.label_budget,
            self.majority_class,
            predict,
            fraction,
        )


def _served(logits: np.ndarray, adjust: np.ndarray) -> np.ndarray:
    """Softmax of ``logits + adjust``: the probabilities the exported model serves."""
    z = logits + adjust
    z -= z.max(axis=-1, keepdims=True)
    probs = np.exp(z)
    return np.asarray(probs / probs.sum(axis=-1, keepdims=True))


def _write_config(config: TrainerConfig, path: str) -> None:
    import yaml

    with open(path, "w") as f:
        yaml.safe_dump(config_to_dict(config), f, sort_keys=False)


def train_from_config(
    config: TrainerConfig, model_dir: str, hooks: Sequence[StepHook] = ()
) -> TrainResult:
    """Train and export one model (resuming an interrupted run in ``model_dir``).

    Args:
        config: The validated config.
        model_dir: Output folder.
        hooks: Per-step hooks (see :data:`StepHook`).

    Returns:
        The :class:`TrainResult`; ``metadata.json`` is also written.
    """
    fraction = config.train.hard_negatives
    if fraction > 0:
        hard = hard_negative_round(config, model_dir, hooks)
        import tensorflow as tf

        tf.keras.backend.clear_session()
        result = Trainer(config, model_dir, hooks=hooks, hard_negatives=hard).fit()
    else:
        result = Trainer(config, model_dir, hooks=hooks).fit()
    log.info("trained %s: %s", model_dir, json.dumps(result.metrics.get("accuracy")))
    return result


def hard_negative_round(
    config: TrainerConfig, model_dir: str, hooks: Sequence[StepHook] = ()
) -> HardNegatives:
    """Round 1 of ``train.hard_negatives`` into ``MODEL_DIR/round1``, then mine it.

    Writes ``MODEL_DIR/hard_negatives.json``. A finished round 1 is not trained
    again (its folder resumes like any run); mining is deterministic, so a
    resumed command mines the same tiles.
    """
    import dataclasses

    from nsl_models.hard_negatives import write

    first_config = dataclasses.replace(
        config, train=dataclasses.replace(config.train, hard_negatives=0.0)
    )
    first = Trainer(first_config, os.path.join(model_dir, "round1"), hooks=hooks)
    first.fit()
    hard = first.mine_hard_negatives(config.train.hard_negatives)
    path = write(hard, model_dir)
    log.info(
        "hard negatives: %d of %d pure majority tiles (hardness >= %.3f, pool median %.3f) -> %s",
        hard.tiles,
        hard.pool,
        hard.least_hardness,
        hard.median_hardness,
        path,
    )
    return hard
