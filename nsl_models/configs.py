"""Trainer configuration: typed, frozen dataclasses with documented defaults.

Follows NSL's ``configs/configs.py``: one class per concern, enums for every
choice, and ``make_*_config`` helpers that take their defaults from the class
fields. A config file (YAML or TOML) mirrors :class:`TrainerConfig`::

    task: tile                 # tile | frame
    data:
      tiles: out/tiles         # the tile job's output folder (stats.json, manifest/)
      label_fraction: 0.05
    model: {architecture: small_cnn, width: 32}
    graph: {enabled: true, multiplier: 0.5, max_neighbors: 3}
    adversarial: {enabled: true, method: pgd, epsilon: 0.1}
    train: {epochs: 5, checkpoint_every: 50}

:func:`config_from_dict` rejects unknown keys and bad values with a
:class:`~minewatch.errors.ConfigError` naming the key (``train.epochs: must be
>= 1, got 0``); :func:`load_config` reads a file and applies ``key.path=value``
overrides (``--set train.epochs=3`` on the command line).
"""

from __future__ import annotations

import dataclasses
import enum
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from minewatch.dataclass_config import build_dataclass
from minewatch.errors import ConfigError

__all__ = [
    "AdversarialConfig",
    "AdversarialMethod",
    "Architecture",
    "AugmentConfig",
    "ClassWeighting",
    "ConsistencyConfig",
    "DataConfig",
    "DistanceType",
    "FaultAdversaryConfig",
    "GraphConfig",
    "GraphSpace",
    "ModelConfig",
    "NormType",
    "OptimizerName",
    "PixelDecoder",
    "SelectionMetric",
    "SplitKey",
    "Task",
    "TrainConfig",
    "TrainerConfig",
    "ViewDistance",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "make_adversarial_config",
    "make_graph_config",
    "make_trainer_config",
]


class Task(enum.Enum):
    """What the model predicts."""

    TILE = "tile"
    """Land-cover / mining class of a satellite tile (classes from ``stats.json``)."""
    FRAME = "frame"
    """Ore grade of a conveyor-belt camera frame tile."""


class Architecture(enum.Enum):
    """Encoder architecture (all are built with random weights; nothing is downloaded)."""

    SMALL_CNN = "small_cnn"
    """Conv-GroupNorm-ReLU blocks with stride-2 downsampling; for satellite tiles."""
    FRAME_CNN = "frame_cnn"
    """Depthwise-separable blocks with a wider stem; for RGB camera frames."""
    MOBILENET_V2 = "mobilenet_v2"
    """``tf.keras.applications.MobileNetV2(weights=None)``, any channel count."""
    RESNET50 = "resnet50"
    """``tf.keras.applications.ResNet50(weights=None)``, any channel count."""


class AdversarialMethod(enum.Enum):
    """How adversarial neighbours are generated."""

    FGSM = "fgsm"
    """One gradient step of size ``epsilon`` (fast gradient sign method for L-inf)."""
    PGD = "pgd"
    """``pgd_iterations`` steps of ``pgd_step_size``, projected onto the ``epsilon`` ball."""


class NormType(enum.Enum):
    """Norm of the adversarial perturbation (NSL's ``NormType``)."""

    INFINITY = "infinity"
    L2 = "l2"


class DistanceType(enum.Enum):
    """Distance between a tile and its neighbours in the graph term (NSL's ``DistanceType``)."""

    L2 = "l2"
    """Squared L2 (summed over the vector)."""
    L1 = "l1"
    """L1 (summed over the vector)."""
    COSINE = "cosine"
    """``1 - cos``; NSL normalises both sides first, so it ignores their length."""
    KL = "kl_divergence"
    """``KL(tile || neighbour)`` between predicted distributions (``space: predictions`` only)."""
    JENSEN_SHANNON = "jensen_shannon_divergence"
    """Symmetric and bounded by ln 2, between predicted distributions (``space:
    predictions`` only)."""


class GraphSpace(enum.Enum):
    """Where the graph term compares a tile with its neighbours."""

    EMBEDDING = "embedding"
    """The encoder's embedding (penultimate layer), optionally L2-normalised."""
    PREDICTIONS = "predictions"
    """The predicted class distributions: each side's logits from the same head, softmaxed."""


class ViewDistance(enum.Enum):
    """Distance between the predicted class distributions of an image and its fault views."""

    JENSEN_SHANNON = "jensen_shannon_divergence"
    """Symmetric and bounded (by ln 2); gradients reach both sides."""
    KL = "kl_divergence"
    """``KL(clean || view)``."""
    L2 = "l2"
    """Squared L2 between the probability vectors."""


class ClassWeighting(enum.Enum):
    """Per-class loss weights computed from the training label counts."""

    NONE = "none"
    """Every labelled example weighs 1."""
    BALANCED = "balanced"
    """``n / (K * n_k)``, as scikit-learn's ``class_weight='balanced'``; capped."""
    SQRT = "sqrt"
    """``sqrt(n / (K * n_k))``: milder than balanced; capped."""


class SplitKey(enum.Enum):
    """What the train/validation hash split groups by, so that no group is in both."""

    AUTO = "auto"
    """``location`` for the ``tile`` task, ``scene`` for ``frame``."""
    TILE = "tile"
    """Each tile on its own (neighbouring tiles leak across the split)."""
    SCENE = "scene"
    """``scene/id``: right for frames (one frame = one scene)."""
    LOCATION = "location"
    """Blocks of ``split_block`` x ``split_block`` tiles at the same grid position in
    every scene, so a place seen on two dates is never in both splits."""


class PixelDecoder(enum.Enum):
    """How the per-pixel head (``model.pixel_head``) turns features into pixel logits."""

    FLAT = "flat"
    """Two 3 x 3 convolutions over the normalised pixels at full resolution, plus
    the embedding as a per-tile bias; does not see the encoder's feature maps."""
    UNET = "unet"
    """U-Net: upsamples the encoder's coarsest map back to full resolution,
    concatenating the encoder's map of each resolution on the way up (skip
    connections); ``small_cnn`` only."""


class OptimizerName(enum.Enum):
    """Optimizer."""

    ADAM = "adam"
    SGD = "sgd"


class SelectionMetric(enum.Enum):
    """Held-out metric that picks the best checkpoint, stops early and decides promotion."""

    ACCURACY = "accuracy"
    """Share of correct tiles: on imbalanced data, predicting the majority class scores well."""
    BALANCED_ACCURACY = "balanced_accuracy"
    """Mean recall over the classes present: every class counts the same."""
    MACRO_F1 = "macro_f1"
    """Mean F1 over the classes present."""


class _Checked:
    """Mixin: ``_require(ok, key, message)`` raises ConfigError naming the key."""

    @staticmethod
    def _require(ok: bool, key: str, message: str) -> None:
        if not ok:
            raise ConfigError(f"{key}: {message}")


@dataclass(frozen=True)
class DataConfig(_Checked):
    """Where the tiles are and how batches are made.

    Attributes:
        tiles: The tile job's output folder (``stats.json``, ``manifest/``,
            ``tiles/``). Required.
        graph: The graph job's output folder; when set, training reads its
            ``packed/*.tfrecord`` (tiles with their neighbours). Default ``""``.
        train: Glob of training TFRecords. Default ``""``: ``GRAPH/packed/*.tfrecord``
            when ``graph`` is set, else ``TILES/tiles/*.tfrecord``.
        validation: Glob of held-out TFRecords. Default ``""``: the validation
            part of the hash split of ``train``.
        validation_fraction: Share of split groups held out when ``validation``
            is empty. Default 0.2.
        split_by: What the hash split groups by. Default ``auto``: ``location``
            for tiles, ``scene`` (frame) for frames; :class:`TrainerConfig`
            resolves it.
        split_block: Side, in tiles, of a ``location`` group. Default 4.
        label_fraction: Share of the labelled training tiles of *each class*
            whose label is kept (stratified; the tiles are chosen by a salted
            hash of ``tile/id``); the others become unlabelled and reach the
            loss only through the graph term. Validation tiles keep their
            labels. 1 hides nothing. Default 1.0.
        label_floor: With ``label_fraction < 1``, at least this many labelled
            training tiles are kept per class (all of a class that has fewer),
            so a rare class keeps some labels: class ``c`` with ``n_c`` training
            tiles keeps ``max(round(label_fraction * n_c), min(label_floor,
            n_c))`` (:func:`nsl_models.data.label_budget`). Default 10.
        batch_size: Global batch size (all replicas). Default 32.
        shuffle_buffer: Records in the shuffle buffer. Default 2048.
        class_weighting: Loss weights for rare classes. Default ``balanced``.
        max_class_weight: Cap on any class weight. Default 10.0.
        pixel_class_weighting: Loss weights of the pixel classes (from the
            pixel counts), separate from the tile weights: per-pixel weights that
            balance a 0.2 % class make the head paint it everywhere. Default
            ``sqrt``.
        max_pixel_class_weight: Cap on the per-pixel class weights of the pixel
            head's loss; 0 means ``max_class_weight``. Rare pixel classes (piles
            are 0.2 % of the pixels) need a higher cap than rare tile classes.
            Default 0.
        majority_keep: Share of the *majority-only* training tiles kept per pass
            (seeded rejection sampling in ``tf.data``; static shapes): tiles whose
            label is the most frequent tile class and whose labelled pixels are
            all of that class. 1 keeps every tile. Class weights and
            ``steps_per_epoch`` follow the expected resampled counts. Hidden and
            unlabelled tiles are always kept (their labels must not steer the
            sampling). Default 1.0.
        weak_label_weight: Sample weight of weak (spectral-rule) labels; 0 drops
            them from the supervised loss. Default 0.5.
    """

    tiles: str = ""
    graph: str = ""
    train: str = ""
    validation: str = ""
    validation_fraction: float = 0.2
    split_by: SplitKey = SplitKey.AUTO
    split_block: int = 4
    label_fraction: float = 1.0
    label_floor: int = 10
    batch_size: int = 32
    shuffle_buffer: int = 2048
    class_weighting: ClassWeighting = ClassWeighting.BALANCED
    max_class_weight: float = 10.0
    pixel_class_weighting: ClassWeighting = ClassWeighting.SQRT
    max_pixel_class_weight: float = 0.0
    majority_keep: float = 1.0
    weak_label_weight: float = 0.5

    def __post_init__(self) -> None:
        self._require(
            0.0 <= self.validation_fraction < 1.0, "validation_fraction", "must be in [0, 1)"
        )
        self._require(self.split_block >= 1, "split_block", "must be >= 1")
        self._require(0.0 < self.label_fraction <= 1.0, "label_fraction", "must be in (0, 1]")
        self._require(self.label_floor >= 0, "label_floor", f"must be >= 0, got {self.label_floor}")
        self._require(self.batch_size >= 1, "batch_size", "must be >= 1")
        self._require(self.shuffle_buffer >= 1, "shuffle_buffer", "must be >= 1")
        self._require(self.max_class_weight >= 1.0, "max_class_weight", "must be >= 1")
        self._require(
            self.max_pixel_class_weight == 0.0 or self.max_pixel_class_weight >= 1.0,
            "max_pixel_class_weight",
            "must be 0 (same as max_class_weight) or >= 1",
        )
        self._require(0.0 < self.majority_keep <= 1.0, "majority_keep", "must be in (0, 1]")
        self._require(
            0.0 <= self.weak_label_weight <= 1.0, "weak_label_weight", "must be in [0, 1]"
        )


@dataclass(frozen=True)
class ModelConfig(_Checked):
    """The network.

    Attributes:
        architecture: Encoder. Default ``small_cnn``.
        width: Filters of the first block (doubled per block) for the small
            CNNs; ``alpha * 32`` style width for MobileNetV2 is fixed at 1.0.
            Default 32.
        depth: Blocks of the small CNNs (each halves the resolution). Default 2.
        embedding_dim: Size of the embedding (penultimate layer). Default 64.
        dropout: Dropout rate before the classifier. Default 0.1.
        pixel_head: Add the per-pixel head: a small fully-convolutional decoder
            that returns ``[B, H, W, K]`` logits at tile resolution from the
            shared embedding and a full-resolution branch over the normalised
            pixels (``docs/training.md``). Default False.
        pixel_width: Filters of the per-pixel decoder's convolutions. Default 16.
        pixel_dilation: Dilation of the decoder's second 3 x 3 convolution: 1
            sees a 5 x 5 neighbourhood per pixel, 2 a 7 x 7 one (a 70 m pile and
            its rim at 10 m) for the same cost. With ``pixel_decoder: unet`` it
            is the dilation of the decoder's coarsest 3 x 3 convolution instead.
            Default 1.
        pixel_decoder: ``flat`` (two full-resolution convolutions over the
            pixels) or ``unet`` (skip connections from every resolution of the
            encoder; ``small_cnn`` only). Both serve the same outputs
            (``docs/training.md``, Pixel decoder). Default ``flat``.
    """

    architecture: Architecture = Architecture.SMALL_CNN
    width: int = 32
    depth: int = 2
    embedding_dim: int = 64
    dropout: float = 0.1
    pixel_head: bool = False
    pixel_width: int = 16
    pixel_dilation: int = 1
    pixel_decoder: PixelDecoder = PixelDecoder.FLAT

    def __post_init__(self) -> None:
        self._require(self.width >= 4, "width", "must be >= 4")
        self._require(1 <= self.depth <= 6, "depth", "must be in 1..6")
        self._require(self.embedding_dim >= 2, "embedding_dim", "must be >= 2")
        self._require(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        self._require(self.pixel_width >= 2, "pixel_width", "must be >= 2")
        self._require(1 <= self.pixel_dilation <= 4, "pixel_dilation", "must be in 1..4")
        self._require(
            self.pixel_decoder is PixelDecoder.FLAT or self.architecture is Architecture.SMALL_CNN,
            "pixel_decoder",
            f"unet needs architecture small_cnn (its feature maps), got "
            f"{self.architecture.value}; use pixel_decoder: flat",
        )


#: Distances that compare probability distributions (``space: predictions`` only).
_DIVERGENCES = (DistanceType.KL, DistanceType.JENSEN_SHANNON)


@dataclass(frozen=True)
class GraphConfig(_Checked):
    """NSL graph regularization over the neighbours of packed records.

    The term is ``nsl.lib.pairwise_distance_wrapper`` between each tile and
    each of its neighbours, weighted by the edge weights. Gradients reach both
    sides (the neighbours go through the same encoder and head, as in NSL's
    ``GraphRegularization``): a labelled tile pulls its unlabelled neighbours
    and they pull it.

    Attributes:
        enabled: Add the graph term. Without neighbour features in the data the
            term is 0 whatever this says. Default False.
        multiplier: Weight of the graph loss; choose it on the validation split
            (its scale depends on ``space`` and ``distance``). Default 0.1.
        max_neighbors: Neighbours read per record (``NL_nbr_0`` ..
            ``NL_nbr_{k-1}``); missing ones weigh 0. Default 2.
        distance: ``l2`` (squared), ``l1`` or ``cosine`` in either space;
            ``kl_divergence`` (``KL(tile || neighbour)``) or
            ``jensen_shannon_divergence`` with ``space: predictions`` only.
            Default ``l2``.
        space: ``embedding`` (the encoder's embedding) or ``predictions`` (the
            predicted class distributions: the tile's and each neighbour's
            logits from the same head, through a softmax, NSL's
            ``transform_fn``). Default ``embedding``.
        normalize: L2-normalise both embeddings before the distance, so the
            term ignores their length (a raw ReLU embedding can shrink to lower
            it); ``space: embedding`` only, and no change with ``cosine``, which
            is already length-free. Default False.
    """

    enabled: bool = False
    multiplier: float = 0.1
    max_neighbors: int = 2
    distance: DistanceType = DistanceType.L2
    space: GraphSpace = GraphSpace.EMBEDDING
    normalize: bool = False

    def __post_init__(self) -> None:
        self._require(self.multiplier >= 0.0, "multiplier", "must be >= 0")
        self._require(1 <= self.max_neighbors <= 32, "max_neighbors", "must be in 1..32")
        predictions = self.space is GraphSpace.PREDICTIONS
        self._require(
            predictions or self.distance not in _DIVERGENCES,
            "distance",
            f"{self.distance.value} compares probability distributions: set graph.space: "
            "predictions, or use l2, l1 or cosine between embeddings",
        )
        self._require(
            not (predictions and self.distance is DistanceType.COSINE),
            "distance",
            "cosine is not offered between predicted distributions: use "
            "jensen_shannon_divergence, kl_divergence, l2 or l1 with graph.space: predictions",
        )
        self._require(
            not (predictions and self.normalize),
            "normalize",
            "only for graph.space: embedding (predictions are compared as softmax "
            "probabilities): drop graph.normalize or set graph.space: embedding",
        )


@dataclass(frozen=True)
class AdversarialConfig(_Checked):
    """NSL adversarial regularization.

    Perturbations live in *normalised* pixel space (after the model's
    normalisation layer), so ``epsilon`` is in units of each band's standard
    deviation whatever the stored dtype.

    Attributes:
        enabled: Add the adversarial term. Default False.
        multiplier: Weight of the adversarial loss. Default 0.2.
        method: ``fgsm`` or ``pgd``. Default ``fgsm``.
        epsilon: Perturbation radius (FGSM step size; PGD ball radius). Default 0.05.
        norm: Norm of the perturbation. Default ``infinity``.
        pgd_iterations: PGD steps (``pgd`` only). Default 3.
        pgd_step_size: PGD step size; 0 means ``2.5 * epsilon / pgd_iterations``.
            Default 0.
        corruptions: Names from :data:`minewatch.corruptions.CORRUPTIONS`
            (YAML list or ``shift,rotation``). When set, the adversarial branch
            starts from a corrupted view of each training image (one corruption
            drawn per example, severity uniform in ``1..max_severity``, made on
            the host in the input pipeline) and the L-inf perturbation is searched
            around that view: the threat model is camera misalignment/vibration
            plus a small perturbation. Only the tile head is scored on that branch
            (geometric corruptions move the pixels away from their pixel labels).
            Default ``()``: the plain clean-image perturbation.
        max_severity: Highest corruption severity drawn (1..5). Default 3.
    """

    enabled: bool = False
    multiplier: float = 0.2
    method: AdversarialMethod = AdversarialMethod.FGSM
    epsilon: float = 0.05
    norm: NormType = NormType.INFINITY
    pgd_iterations: int = 3
    pgd_step_size: float = 0.0
    corruptions: tuple[str, ...] = ()
    max_severity: int = 3

    def __post_init__(self) -> None:
        from minewatch.corruptions import CORRUPTIONS

        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        self._require(
            not unknown, "corruptions", f"unknown {unknown}; choose from {', '.join(CORRUPTIONS)}"
        )
        self._require(1 <= self.max_severity <= 5, "max_severity", "must be in 1..5")
        self._require(self.multiplier >= 0.0, "multiplier", "must be >= 0")
        self._require(self.epsilon > 0.0, "epsilon", "must be > 0")
        self._require(1 <= self.pgd_iterations <= 100, "pgd_iterations", "must be in 1..100")
        self._require(self.pgd_step_size >= 0.0, "pgd_step_size", "must be >= 0")


@dataclass(frozen=True)
class AugmentConfig(_Checked):
    """Fault views of each training example: what every arm of a comparison sees.

    With ``views > 0`` each training example carries ``views`` copies of its
    image under a random fault (one of ``faults``, severity uniform in
    ``min_severity..max_severity``, drawn per view from a seeded stream and made
    on the host, :func:`nsl_models.data.make_dataset`). The views are the same
    whatever regularizer reads them, so a plain model trained with
    ``supervised: true`` and a regularized one see the same pixels.

    Attributes:
        faults: Names from :data:`minewatch.corruptions.CORRUPTIONS` (YAML list
            or ``tilt,defocus``); ``belt`` stands for the nine belt-camera faults
            (:data:`minewatch.corruptions.BELT_FAULTS`). Default ``()``.
        views: Views per example (0 = off). Default 0.
        min_severity: Lowest severity drawn (1..5). Default 1.
        max_severity: Highest severity drawn (1..5). Default 5.
        supervised: Cross-entropy on every view too (the supervised loss is the
            mean over the image and its views): plain training with fault
            augmentation. Default True.
    """

    faults: tuple[str, ...] = ()
    views: int = 0
    min_severity: int = 1
    max_severity: int = 5
    supervised: bool = True

    def __post_init__(self) -> None:
        from minewatch.corruptions import CORRUPTIONS

        if "belt" in self.faults:
            from minewatch.corruptions import BELT_FAULTS

            expanded = [
                f for name in self.faults for f in (BELT_FAULTS if name == "belt" else (name,))
            ]
            object.__setattr__(self, "faults", tuple(dict.fromkeys(expanded)))
        unknown = [c for c in self.faults if c not in CORRUPTIONS]
        self._require(
            not unknown, "faults", f"unknown {unknown}; choose from belt, {', '.join(CORRUPTIONS)}"
        )
        self._require(0 <= self.views <= 8, "views", "must be in 0..8")
        self._require(
            not self.views or bool(self.faults), "faults", "views need at least one fault"
        )
        self._require(1 <= self.min_severity <= 5, "min_severity", "must be in 1..5")
        self._require(
            self.min_severity <= self.max_severity <= 5,
            "max_severity",
            "must be in min_severity..5",
        )


@dataclass(frozen=True)
class ConsistencyConfig(_Checked):
    """Graph regularization whose neighbours are the fault views of the same image.

    NSL's graph term (``nsl.lib.pairwise_distance_wrapper``) between the
    predicted class distribution of each image and those of its
    ``augment.views`` views, made on the fly: the "graph" joins every image to
    corrupted copies of itself. Unlabelled examples take part too.

    Attributes:
        enabled: Add the term (needs ``augment.views >= 1``). Default False.
        multiplier: Weight of the term. Default 4.0.
        distance: ``jensen_shannon_divergence``, ``kl_divergence`` or ``l2``
            between probability vectors. Default ``jensen_shannon_divergence``.
    """

    enabled: bool = False
    multiplier: float = 4.0
    distance: ViewDistance = ViewDistance.JENSEN_SHANNON

    def __post_init__(self) -> None:
        self._require(self.multiplier >= 0.0, "multiplier", "must be >= 0")


@dataclass(frozen=True)
class FaultAdversaryConfig(_Checked):
    """Adversarial regularization over camera-fault parameters (worst of k).

    Of each labelled example's ``augment.views`` fault views, the one the model
    currently gets most wrong (highest cross-entropy) is the adversarial
    neighbour: the worst plausible camera fault among ``k = views`` sampled
    ones. Its cross-entropy, times ``multiplier``, is added to the loss. The
    views' logits are already computed for the other terms, so the search costs
    no extra pass.

    Attributes:
        enabled: Add the term (needs ``augment.views >= 1``). Default False.
        multiplier: Weight of the term. Default 1.0.
    """

    enabled: bool = False
    multiplier: float = 1.0

    def __post_init__(self) -> None:
        self._require(self.multiplier >= 0.0, "multiplier", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig(_Checked):
    """The optimisation loop.

    Attributes:
        epochs: Passes over ``steps_per_epoch`` batches. Default 10.
        steps_per_epoch: Batches per epoch; 0 means one pass over the training
            records (``records // batch_size``). Default 0.
        learning_rate: Default 1e-3.
        optimizer: Default ``adam``.
        seed: Seed of Python, NumPy, TensorFlow and the shuffle. Default 0.
        checkpoint_every: Save a checkpoint every N optimizer steps (and at each
            epoch end). Default 100.
        keep_checkpoints: Checkpoints kept. Default 3.
        selection_metric: Held-out metric that picks the best checkpoint, drives
            early stopping and is compared on promotion. Default
            ``balanced_accuracy``: with 90 % background tiles, accuracy rewards a
            model that never finds a stockpile.
        early_stopping_patience: Epochs without improvement of the selection
            metric before stopping; 0 disables. Default 3.
        log_every: Steps between TensorBoard scalars. Default 10.
        mixed_precision: ``mixed_bfloat16`` on TPU and CPU, ``mixed_float16``
            on GPU; the output layer stays float32. Default False.
        cpu_replicas: On a machine without TPU or GPU, train on this many
            replicas: the CPU is split into as many logical devices and the step
            runs under ``MirroredStrategy`` (:func:`nsl_models.hardware.detect`);
            the global batch stays ``data.batch_size`` (each replica takes its
            share, and the losses are normalised over the global batch, so N
            replicas compute the loss of one). The split must happen before TensorFlow initialises
            its devices: set it at process start. Ignored on TPU and GPU.
            Default 1.
        jit_compile: Compile the train step with XLA. Not with
            ``cpu_replicas > 1`` (XLA refuses variables placed on another
            logical CPU device). Default False.
        pixel_loss_weight: Weight of the per-pixel cross-entropy (``label/mask``)
            in the loss, when ``model.pixel_head`` is on. Default 1.0.
        pixel_focal_gamma: Focal exponent of the per-pixel loss
            (:func:`nsl_models.models.pixel_xent`); 0 is plain cross-entropy.
            Default 0 (measured: docs/results.md, "Held-out quality").
        calibrate: Undo the prior shift of undersampling and class weights in
            the exported model (logit adjustment, :mod:`nsl_models.calibration`)
            and, with the pixel head, choose each site kind's operating point on
            the validation split (``metadata.json`` ``operating_points``).
            Default True.
        hard_negatives: Share of the training split's pure majority (background)
            tiles to mine as hard negatives, in ``[0, 1]``; 0 is off. When above
            0, ``train_from_config`` trains a first round into ``MODEL_DIR/round1``,
            keeps the tiles it scores hardest every pass and trains again from
            scratch (:mod:`nsl_models.hard_negatives`). Default 0 (measured:
            docs/results.md, "Held-out quality").
    """

    epochs: int = 10
    steps_per_epoch: int = 0
    learning_rate: float = 1e-3
    optimizer: OptimizerName = OptimizerName.ADAM
    selection_metric: SelectionMetric = SelectionMetric.BALANCED_ACCURACY
    seed: int = 0
    checkpoint_every: int = 100
    keep_checkpoints: int = 3
    early_stopping_patience: int = 3
    log_every: int = 10
    mixed_precision: bool = False
    cpu_replicas: int = 1
    jit_compile: bool = False
    pixel_loss_weight: float = 1.0
    pixel_focal_gamma: float = 0.0
    calibrate: bool = True
    hard_negatives: float = 0.0

    def __post_init__(self) -> None:
        self._require(self.pixel_loss_weight >= 0.0, "pixel_loss_weight", "must be >= 0")
        self._require(0.0 <= self.hard_negatives <= 1.0, "hard_negatives", "must be in [0, 1]")
        self._require(self.pixel_focal_gamma >= 0.0, "pixel_focal_gamma", "must be >= 0")
        self._require(self.epochs >= 1, "epochs", f"must be >= 1, got {self.epochs}")
        self._require(self.steps_per_epoch >= 0, "steps_per_epoch", "must be >= 0")
        self._require(0.0 < self.learning_rate < 10.0, "learning_rate", "must be in (0, 10)")
        self._require(self.seed >= 0, "seed", "must be >= 0")
        self._require(self.checkpoint_every >= 1, "checkpoint_every", "must be >= 1")
        self._require(self.keep_checkpoints >= 1, "keep_checkpoints", "must be >= 1")
        self._require(self.early_stopping_patience >= 0, "early_stopping_patience", "must be >= 0")
        self._require(self.log_every >= 1, "log_every", "must be >= 1")
        self._require(self.cpu_replicas >= 1, "cpu_replicas", "must be >= 1")
        self._require(
            not (self.jit_compile and self.cpu_replicas > 1),
            "jit_compile",
            "XLA cannot compile a step over several logical CPU devices; "
            "set train.cpu_replicas: 1 or train.jit_compile: false",
        )


@dataclass(frozen=True)
class TrainerConfig(_Checked):
    """Everything ``minewatch train`` needs.

    Attributes:
        task: ``tile`` or ``frame``. Default ``tile``.
        data: :class:`DataConfig`.
        model: :class:`ModelConfig`.
        graph: :class:`GraphConfig`.
        adversarial: :class:`AdversarialConfig`.
        augment: :class:`AugmentConfig` (fault views of each example).
        consistency: :class:`ConsistencyConfig` (graph term over the views).
        fault_adversary: :class:`FaultAdversaryConfig` (worst of the views).
        train: :class:`TrainConfig`.
    """

    task: Task = Task.TILE
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    graph: GraphConfig = field(default_factory=GraphConfig)
    adversarial: AdversarialConfig = field(default_factory=AdversarialConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    consistency: ConsistencyConfig = field(default_factory=ConsistencyConfig)
    fault_adversary: FaultAdversaryConfig = field(default_factory=FaultAdversaryConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        for name, term in (
            ("consistency", self.consistency),
            ("fault_adversary", self.fault_adversary),
        ):
            if term.enabled and not self.augment.views:
                raise ConfigError(
                    f"{name}.enabled needs fault views: set augment.views >= 1 and augment.faults"
                )
        if self.data.split_by is SplitKey.AUTO:
            key = SplitKey.LOCATION if self.task is Task.TILE else SplitKey.SCENE
            # Frozen: resolve the automatic choice once, so config.yaml records it.
            object.__setattr__(self, "data", dataclasses.replace(self.data, split_by=key))


def make_graph_config(
    enabled: bool = True,
    multiplier: float = GraphConfig.multiplier,
    max_neighbors: int = GraphConfig.max_neighbors,
    distance: DistanceType | str = GraphConfig.distance,
    space: GraphSpace | str = GraphConfig.space,
    normalize: bool = GraphConfig.normalize,
) -> GraphConfig:
    """Build a :class:`GraphConfig`; defaults come from the class, except ``enabled``.

    Example:
        >>> make_graph_config(space="predictions", distance="jensen_shannon_divergence").space
        <GraphSpace.PREDICTIONS: 'predictions'>

    Args:
        enabled: Add the graph term. Default True.
        multiplier: Weight of the graph loss.
        max_neighbors: Neighbours per record.
        distance: Distance between a tile and each neighbour.
        space: ``embedding`` or ``predictions``.
        normalize: L2-normalise embeddings first (``embedding`` only).

    Returns:
        The config.

    Raises:
        ConfigError: A combination that does not fit (a divergence between
            embeddings, ``normalize`` or ``cosine`` with predictions).
    """
    return GraphConfig(
        enabled, multiplier, max_neighbors, DistanceType(distance), GraphSpace(space), normalize
    )


def make_adversarial_config(
    enabled: bool = True,
    multiplier: float = AdversarialConfig.multiplier,
    method: AdversarialMethod | str = AdversarialConfig.method,
    epsilon: float = AdversarialConfig.epsilon,
    norm: NormType | str = AdversarialConfig.norm,
    pgd_iterations: int = AdversarialConfig.pgd_iterations,
    pgd_step_size: float = AdversarialConfig.pgd_step_size,
    corruptions: Sequence[str] = AdversarialConfig.corruptions,
    max_severity: int = AdversarialConfig.max_severity,
) -> AdversarialConfig:
    """Build an :class:`AdversarialConfig`; defaults come from the class, except ``enabled``.

    Args:
        enabled: Add the adversarial term. Default True.
        multiplier: Weight of the adversarial loss.
        method: ``fgsm`` or ``pgd``.
        epsilon: Perturbation radius in normalised units.
        norm: ``infinity`` or ``l2``.
        pgd_iterations: PGD steps.
        pgd_step_size: PGD step size (0: automatic).
        corruptions: Corruptions of the adversarial branch's starting view.
        max_severity: Highest corruption severity drawn.

    Returns:
        The config.
    """
    return AdversarialConfig(
        enabled,
        multiplier,
        AdversarialMethod(method),
        epsilon,
        NormType(norm),
        pgd_iterations,
        pgd_step_size,
        tuple(corruptions),
        max_severity,
    )


def make_trainer_config(**sections: Mapping[str, Any] | str) -> TrainerConfig:
    """Build a :class:`TrainerConfig` from keyword sections, validated like a file.

    Example:
        >>> cfg = make_trainer_config(data={"tiles": "out"}, train={"epochs": 2})
        >>> cfg.train.epochs
        2

    Args:
        **sections: ``task=...`` and section mappings (``data={...}``, ...).

    Returns:
        The config.

    Raises:
        ConfigError: An unknown key or a bad value.
    """
    return config_from_dict(sections)


def config_from_dict(mapping: Mapping[str, Any]) -> TrainerConfig:
    """Validate a nested mapping into a :class:`TrainerConfig`.

    Args:
        mapping: Sections as in the config file; omitted keys take their defaults.

    Returns:
        The config.

    Raises:
        ConfigError: An unknown key, a value of the wrong type, or a value out of
            range; the message starts with the dotted key (``train.epochs: ...``).
    """
    if not isinstance(mapping, Mapping):
        raise ConfigError(f"a config is a mapping of sections, got {type(mapping).__name__}")
    return build_dataclass(TrainerConfig, mapping)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON/YAML-ready nested dict of a config (enums as their values).

    Args:
        config: A :class:`TrainerConfig` or one of its sections.

    Returns:
        The dict; :func:`config_from_dict` turns it back into the same config.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = config_to_dict(value)
        elif isinstance(value, enum.Enum):
            out[f.name] = value.value
        elif isinstance(value, tuple):
            out[f.name] = list(value)
        else:
            out[f.name] = value
    return out


def apply_overrides(mapping: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides to a nested mapping.

    Values are parsed as YAML scalars (``3`` is an int, ``true`` a bool, ``pgd``
    a string).

    Args:
        mapping: The config as read from the file.
        overrides: Items like ``train.epochs=3``.

    Returns:
        A new nested dict.

    Raises:
        ConfigError: An item without ``=`` or with an empty key.
    """
    import yaml

    out: dict[str, Any] = _deep_copy(mapping)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ConfigError(f"override {item!r}: expected section.key=value")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else ""
    return out


def _deep_copy(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in mapping.items()}


def load_config(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> TrainerConfig:
    """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file.

    Relative ``data.tiles``/``data.train``/``data.validation`` paths are kept as
    written (relative to the working directory).

    Args:
        path: The file.
        overrides: ``section.key=value`` items applied after reading.

    Returns:
        The validated config.

    Raises:
        ConfigError: Unreadable file, unknown suffix, unknown key or bad value.
    """
    import yaml

    suffix = os.path.splitext(os.fspath(path))[1].lower()
    if suffix not in (".yaml", ".yml", ".toml"):
        raise ConfigError(f"config {os.fspath(path)!r}: use a .yaml, .yml or .toml file")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as err:
        raise ConfigError(f"cannot read config {os.fspath(path)!r}: {err.strerror}") from None
    try:
        if suffix == ".toml":
            mapping = tomllib.loads(raw.decode())
        else:
            mapping = yaml.safe_load(raw) or {}
    except (yaml.YAMLError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"config {os.fspath(path)!r} is not valid {suffix[1:]}: {err}") from None
    return config_from_dict(apply_overrides(mapping, overrides))
