"""Models: a base classifier and the graph + adversarial regularized wrapper.

The *base model* (:func:`build_base_model`) is a functional Keras model
``image -> logits`` whose first layer, :class:`Normalization`, casts raw pixels
to float32 and applies the per-band mean/std of ``stats.json``, so the exported
model takes pixels exactly as stored. Its layers are named ``normalize``,
``encoder`` (raw embedding; the penultimate layer), ``dropout`` and ``logits``
(always float32, also under mixed precision).

:class:`RegularizedModel` wraps a base model the way NSL's
``GraphRegularization(base_model, config)`` does, but adds *both* NSL
regularizers in one ``train_step`` that shares the clean forward pass:

1. ``xn = normalize(image)``; neighbours ``nbr_n = normalize(nbr_image)``.
2. One encoder pass over the clean batch ``xn`` (watched by an inner tape) gives
   the clean embedding; one pass over the ``B * k`` neighbours gives theirs. (A
   single pass over ``concat([xn, nbr_n])`` was measured slower: the input
   gradient of step 5 then back-propagates through the neighbour rows too.)
3. Supervised loss: weighted cross-entropy of ``logits(embedding)``. Unlabelled
   examples (label -1) have weight 0 and reach the loss only through step 4.
4. Graph loss: ``nsl.lib.pairwise_distance_wrapper`` between the clean
   batch (``nsl.lib.replicate_embeddings``) and its neighbours, weighted by the
   edge weights (0 for missing neighbours). With ``graph.space: embedding``
   (default) it compares the embeddings (L2-normalised first with
   ``graph.normalize``); with ``graph.space: predictions`` the logits of the
   same head, through a softmax (NSL's ``transform_fn``), so KL or
   Jensen-Shannon compare predicted distributions. It uses the same embedding
   and logits tensors as step 3: no second pass over the batch. Gradients
   reach both sides, as in NSL's ``GraphRegularization``.
5. Adversarial loss: ``nsl.lib.gen_adv_neighbor`` perturbs ``xn`` along the
   gradient of the step-3 supervised loss, taken from an inner tape that watched
   ``xn`` during that same pass (FGSM: no extra forward pass; PGD: the NSL loop
   with ``pgd_iterations`` further passes). Only the tile's own normalised pixels
   are perturbed: labels, weights and neighbour features never are. The
   perturbation is computed with the outer tape paused and NSL stops its
   gradient, so it is a constant to the weight update. One more forward pass on
   the adversarial batch gives the adversarial loss with the same weights.
   With ``adversarial.corruptions`` the batch carries ``aug_image`` (a
   corrupted view of each image, :func:`nsl_models.data.make_dataset`): the
   perturbation is then searched around the normalised corrupted view (one
   extra pass under its own input tape) and only the tile head is scored there.
6. Fault views (``augment``; the batch carries ``views``, ``V`` copies of
   each image under random camera faults made on the host): one more encoder
   pass over the ``B * V`` views gives their logits. With
   ``augment.supervised`` the supervised loss is the mean cross-entropy over
   the image and its views (plain training with fault augmentation). The
   *consistency* term is NSL's graph term with the views as neighbours:
   ``nsl.lib.pairwise_distance_wrapper`` between the predicted distribution of
   each image and of each of its views (softmax of both logits; Jensen-Shannon
   by default); unlabelled examples take part. The *fault adversary* takes, per
   labelled example, the view of highest cross-entropy (the worst of ``V``
   sampled camera faults) and adds its cross-entropy; the choice is a max over
   logits already computed, so it costs no pass.
7. ``loss = supervised + pixel_loss_weight * pixel + graph.multiplier * graph +
   adversarial.multiplier * adversarial + consistency.multiplier * consistency
   + fault_adversary.multiplier * fault_adversarial + model regularization
   losses``; one optimizer update.

**Several replicas** (``MirroredStrategy``, ``TPUStrategy``,
``train.cpu_replicas``): each replica runs the step on its share of the
global batch. Every term is a ratio (a weighted sum over examples, pixels or
edges over how many count), and :func:`global_mean` divides each replica's sum
by the count of the *global* batch (one ``all_reduce`` of the count), so the
replicas' losses add up to the one-replica loss of the same batch even when
the labelled examples or graph edges fall unevenly; the weight penalty is
split 1/N. The optimizer sums the replicas' gradients, which is then the
one-replica gradient. Graph neighbours and fault views travel with their
example, so the graph, consistency and adversarial terms need nothing from the
other replicas. The loss trackers record N times each replica's share, which
averages over replicas to the global loss.

**Per-pixel head** (``model.pixel_head``, layer ``pixel_decoder``): a small
fully-convolutional decoder that takes the normalised pixels and the clean
embedding of step 2 and returns ``[B, H, W, K]`` logits at tile resolution. It
runs inside step 3 on the same pass (same tape): its weighted per-pixel
cross-entropy on ``label/mask`` (``pixel_label``/``pixel_weight`` of the batch;
unknown, invalid and unlabelled-tile pixels weigh 0) is added to the loss that
the adversarial perturbation of step 5 climbs, and the adversarial pass scores
both heads. The graph term is unchanged (it acts on the shared embedding, or
on the tile logits with ``graph.space: predictions``).
With ``model.pixel_decoder: unet`` the decoder also takes the encoder's feature
map of every resolution (skip connections): the encoder's convolutions then sit
in a nested ``encoder_features`` model shared by ``encoder`` and
``pixel_decoder``, and :func:`forward` runs them once per pass for both heads.

Each term is switched by its config (``enabled`` and ``multiplier > 0``); the
graph term also needs neighbour features in the batch.

**Train/inference mode in the extra passes.** Every pass of the train step
(clean + neighbours, PGD steps, adversarial) calls the encoder with
``training=True``, so the adversarial loss is measured on the very function
whose supervised loss is being minimised (batch statistics, dropout on), as
NSL's ``AdversarialRegularization`` does. Calling it with ``training=False``
would use BatchNorm moving averages that are still far from the batch
statistics early in training, so the adversarial term would regularize a
different network. The cost, for BatchNorm backbones (MobileNetV2, ResNet50),
is that the moving averages also absorb adversarial batches; those lie within
``epsilon`` of the clean ones, so the statistics move by O(epsilon). The
default small CNNs use GroupNorm, which has no batch statistics, so the choice
changes nothing for them except dropout.

Example:
    >>> from nsl_models.models import build_base_model, RegularizedModel
    >>> base = build_base_model(spec, ModelConfig())  # doctest: +SKIP
    >>> model = RegularizedModel(base, make_graph_config(), make_adversarial_config())
    >>> model.compile(optimizer="adam")  # doctest: +SKIP
    >>> model.fit(make_dataset(..., max_neighbors=2), steps_per_epoch=100)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from minewatch.compat import import_nsl
from minewatch.errors import ConfigError
from nsl_models.configs import (
    AdversarialConfig,
    AdversarialMethod,
    Architecture,
    AugmentConfig,
    ConsistencyConfig,
    FaultAdversaryConfig,
    GraphConfig,
    GraphSpace,
    ModelConfig,
    PixelDecoder,
)
from nsl_models.data import TileSpec

nsl = import_nsl()
import tensorflow as tf  # noqa: E402  (after import_nsl selects Keras 2)

__all__ = [
    "Normalization",
    "RegularizedModel",
    "build_base_model",
    "build_encoder",
    "build_encoder_features",
    "build_pixel_decoder",
    "embedding_of",
    "forward",
    "global_mean",
    "has_pixel_head",
    "pixel_xent",
    "replicas_in_sync",
    "tile_logits",
]


@tf.keras.utils.register_keras_serializable(package="minewatch")
class Normalization(tf.keras.layers.Layer):  # type: ignore[misc]
    """Raw pixels -> float32 ``(x - mean) / std`` per band; invalid pixels -> 0.

    A pixel whose bands are all 0 is invalid (the tile record stores invalid
    pixels as 0); it maps to 0, the mean, instead of ``-mean / std``.

    Args:
        mean: Per-band mean, channel order.
        std: Per-band standard deviation, channel order.
        **kwargs: Passed to ``tf.keras.layers.Layer``.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], **kwargs: Any) -> None:
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def call(self, inputs: Any) -> Any:
        """Normalise ``[..., C]`` pixels."""
        x = tf.cast(inputs, tf.float32)
        valid = tf.reduce_any(tf.not_equal(x, 0.0), axis=-1, keepdims=True)
        y = (x - tf.constant(self.mean)) / tf.constant(self.std)
        return tf.where(valid, y, tf.zeros_like(y))

    def get_config(self) -> dict[str, Any]:
        """Layer config (mean, std)."""
        config: dict[str, Any] = super().get_config()
        config.update(mean=self.mean, std=self.std)
        return config


def _norm(filters: int) -> Any:
    # GroupNorm: no batch statistics, so clean, neighbour and adversarial passes
    # compute the same function and per-replica batch size does not matter (TPU).
    return tf.keras.layers.GroupNormalization(groups=min(8, filters // 4) or 1)


def _small_cnn_maps(x: Any, config: ModelConfig) -> list[Any]:
    # Block i: a 3 x 3 convolution at 1/2**i resolution (its output is map i),
    # then a stride-2 one; the last entry is the coarsest map, at 1/2**depth.
    maps = []
    for i in range(config.depth):
        filters = config.width * 2**i
        x = tf.keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = tf.keras.layers.ReLU()(_norm(filters)(x))
        maps.append(x)
        x = tf.keras.layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False)(x)
        x = tf.keras.layers.ReLU()(_norm(filters)(x))
    return [*maps, x]


def _small_cnn(x: Any, config: ModelConfig) -> Any:
    return tf.keras.layers.GlobalAveragePooling2D()(_small_cnn_maps(x, config)[-1])


def _frame_cnn(x: Any, config: ModelConfig) -> Any:
    x = tf.keras.layers.Conv2D(config.width, 3, strides=2, padding="same", use_bias=False)(x)
    x = tf.keras.layers.ReLU()(_norm(config.width)(x))
    for i in range(config.depth):
        filters = config.width * 2 ** (i + 1)
        x = tf.keras.layers.SeparableConv2D(filters, 3, padding="same", use_bias=False)(x)
        x = tf.keras.layers.ReLU()(_norm(filters)(x))
        x = tf.keras.layers.SeparableConv2D(filters, 3, strides=2, padding="same", use_bias=False)(
            x
        )
        x = tf.keras.layers.ReLU()(_norm(filters)(x))
    return tf.keras.layers.GlobalAveragePooling2D()(x)


def _application(x: Any, config: ModelConfig, shape: tuple[int, int, int]) -> Any:
    h, w, c = shape
    side = max(h, w, 32)  # both applications refuse inputs under 32 px
    if (h, w) != (side, side):
        x = tf.keras.layers.Resizing(side, side, interpolation="bilinear")(x)
    cls = (
        tf.keras.applications.MobileNetV2
        if config.architecture is Architecture.MOBILENET_V2
        else tf.keras.applications.ResNet50
    )
    backbone = cls(input_shape=(side, side, c), weights=None, include_top=False, pooling="avg")
    return backbone(x)


def _uses_unet(config: ModelConfig) -> bool:
    return config.pixel_head and config.pixel_decoder is PixelDecoder.UNET


def build_encoder_features(shape: tuple[int, int, int], config: ModelConfig) -> Any:
    """The ``small_cnn`` encoder's feature maps, one per resolution (U-Net skips).

    Args:
        shape: ``(H, W, C)``; ``H`` and ``W`` divisible by ``2**depth``.
        config: ``small_cnn`` width and depth.

    Returns:
        A functional ``tf.keras.Model`` named ``encoder_features``: normalised
        pixels -> ``depth + 1`` maps; map ``i < depth`` is
        ``[H / 2**i, W / 2**i, width * 2**i]`` (block ``i`` before its stride-2
        convolution), the last is the coarsest, ``[H / 2**depth, W / 2**depth,
        width * 2**(depth - 1)]``, which the encoder pools into the embedding.

    Raises:
        ConfigError: Another architecture, or a tile side the maps cannot halve
            ``depth`` times.
    """
    if config.architecture is not Architecture.SMALL_CNN:
        raise ConfigError(
            f"model.pixel_decoder: unet needs architecture small_cnn, got "
            f"{config.architecture.value}; use pixel_decoder: flat"
        )
    h, w, _ = shape
    step = 2**config.depth
    if h % step or w % step:
        raise ConfigError(
            f"model.depth: a {h} x {w} tile cannot be halved {config.depth} times "
            f"for the unet decoder; use a tile side divisible by {step} or a smaller depth"
        )
    inputs = tf.keras.Input(shape=shape, name="normalized")
    return tf.keras.Model(inputs, _small_cnn_maps(inputs, config), name="encoder_features")


def build_encoder(shape: tuple[int, int, int], config: ModelConfig) -> Any:
    """The encoder: normalised ``[H, W, C]`` pixels -> ``[embedding_dim]`` embedding.

    With the U-Net pixel decoder (``pixel_head`` and ``pixel_decoder: unet``)
    the convolutions sit in a nested model, ``encoder_features``
    (:func:`build_encoder_features`), that the decoder shares, followed by
    ``encoder_top`` (pooling and the ``embedding`` layer); the function is the
    same.

    Args:
        shape: ``(H, W, C)``; any channel count.
        config: Architecture, width, depth, embedding size.

    Returns:
        A functional ``tf.keras.Model`` named ``encoder``.
    """
    inputs = tf.keras.Input(shape=shape, name="normalized")
    if _uses_unet(config):
        maps = build_encoder_features(shape, config)(inputs)
        bottom = tf.keras.Input(shape=maps[-1].shape[1:], name="coarsest")
        pooled = tf.keras.layers.GlobalAveragePooling2D()(bottom)
        emb = tf.keras.layers.Dense(config.embedding_dim, activation="relu", name="embedding")(
            pooled
        )
        top = tf.keras.Model(bottom, emb, name="encoder_top")
        return tf.keras.Model(inputs, top(maps[-1]), name="encoder")
    if config.architecture is Architecture.SMALL_CNN:
        x = _small_cnn(inputs, config)
    elif config.architecture is Architecture.FRAME_CNN:
        x = _frame_cnn(inputs, config)
    else:
        x = _application(inputs, config, shape)
    x = tf.keras.layers.Dense(config.embedding_dim, activation="relu", name="embedding")(x)
    return tf.keras.Model(inputs, x, name="encoder")


def build_pixel_decoder(
    shape: tuple[int, int, int], config: ModelConfig, num_classes: int, encoder: Any = None
) -> Any:
    """The per-pixel head: ``(normalised pixels, embedding) -> [H, W, K]`` logits.

    Either decoder takes ``[normalised pixels, embedding]`` and returns
    ``[H, W, K]`` float32 logits (also under mixed precision), so the exported
    signature is the same for both.

    ``pixel_decoder: flat``: two 3 x 3 convolutions at full tile resolution see
    each pixel's spectrum and its 5 x 5 neighbourhood; the shared embedding,
    projected and added to every pixel's features (a per-tile bias), brings what
    the encoder learnt about the whole tile; a 1 x 1 convolution then maps them
    to class logits. Nothing is downsampled, so outlines keep the pixel grid.

    ``pixel_decoder: unet``: the trainable part, ``pixel_unet``, takes
    ``[normalised pixels, map_0 .. map_depth, embedding]`` (the maps of
    :func:`build_encoder_features`, shared with ``encoder``). The embedding,
    projected, is added to the coarsest map as a per-tile bias; then, per level
    from coarse to fine, a 2 x 2 stride-2 transposed convolution doubles the
    resolution, the encoder's map of that resolution is concatenated (skip
    connection; at full resolution the normalised pixels too, so each pixel's
    own spectrum is one convolution from the logits) and a 3 x 3 convolution
    (GroupNorm, ReLU, ``pixel_width`` filters; the coarsest one dilated by
    ``pixel_dilation``) mixes them; a 1 x 1 convolution gives the logits.
    ``pixel_decoder`` wraps it as ``pixel_unet([pixels,
    *encoder_features(pixels), embedding])``, so called on its own it runs the
    encoder's convolutions again; :func:`forward` calls the parts on a
    single encoder pass.

    Args:
        shape: ``(H, W, C)``.
        config: ``pixel_width``, ``pixel_dilation``, ``pixel_decoder`` and
            ``embedding_dim``.
        num_classes: ``K``.
        encoder: The encoder from :func:`build_encoder` with the same config;
            required by ``unet``, whose skips are its ``encoder_features``.

    Returns:
        A functional ``tf.keras.Model`` named ``pixel_decoder`` with inputs
        ``normalized`` ``[None, H, W, C]`` and ``embedding`` ``[None, D]``.

    Raises:
        ValueError: ``unet`` without ``encoder``.
    """
    if config.pixel_decoder is PixelDecoder.UNET:
        if encoder is None:
            raise ValueError("the unet pixel decoder needs the encoder (encoder=...)")
        return _unet_decoder(shape, config, num_classes, encoder)
    width = config.pixel_width
    pixels = tf.keras.Input(shape=shape, name="normalized")
    embedding = tf.keras.Input(shape=(config.embedding_dim,), name="embedding")
    x = pixels
    for i, rate in enumerate((1, config.pixel_dilation)):
        x = tf.keras.layers.Conv2D(
            width, 3, padding="same", dilation_rate=rate, use_bias=False, name=f"conv{i}"
        )(x)
        x = tf.keras.layers.ReLU()(_norm(width)(x))
    # The embedding enters as a per-tile bias of the mixing layer (broadcast over
    # H x W by Add: XLA compiles its gradient, unlike UpSampling's).
    context = tf.keras.layers.Dense(width, name="context")(embedding)
    context = tf.keras.layers.Reshape((1, 1, width))(context)
    x = tf.keras.layers.Conv2D(width, 1, name="mix")(x)
    x = tf.keras.layers.ReLU()(tf.keras.layers.Add(name="add_context")([x, context]))
    logits = tf.keras.layers.Conv2D(num_classes, 1, dtype="float32", name="pixel_logits")(x)
    return tf.keras.Model([pixels, embedding], logits, name="pixel_decoder")


def _unet_decoder(
    shape: tuple[int, int, int], config: ModelConfig, num_classes: int, encoder: Any
) -> Any:
    """The ``unet`` pixel decoder of :func:`build_pixel_decoder`."""
    # Transposed convolutions rather than UpSampling2D: XLA compiles their gradient.
    features = encoder.get_layer("encoder_features")
    width = config.pixel_width
    pixels = tf.keras.Input(shape=shape, name="normalized")
    embedding = tf.keras.Input(shape=(config.embedding_dim,), name="embedding")
    skips = [
        tf.keras.Input(shape=t.shape[1:], name=f"map{i}") for i, t in enumerate(features.outputs)
    ]
    x = skips[-1]
    channels = x.shape[-1]
    context = tf.keras.layers.Dense(channels, name="context")(embedding)
    context = tf.keras.layers.Reshape((1, 1, channels))(context)
    x = tf.keras.layers.ReLU()(tf.keras.layers.Add(name="add_context")([x, context]))
    for i in reversed(range(config.depth)):
        x = tf.keras.layers.Conv2DTranspose(width, 2, strides=2, name=f"up{i}")(x)
        parts = [x, skips[i], *([pixels] if i == 0 else [])]
        x = tf.keras.layers.Concatenate(name=f"skip{i}")(parts)
        rate = config.pixel_dilation if i == config.depth - 1 else 1
        x = tf.keras.layers.Conv2D(
            width, 3, padding="same", dilation_rate=rate, use_bias=False, name=f"conv{i}"
        )(x)
        x = tf.keras.layers.ReLU()(_norm(width)(x))
    logits = tf.keras.layers.Conv2D(num_classes, 1, dtype="float32", name="pixel_logits")(x)
    tail = tf.keras.Model([pixels, *skips, embedding], logits, name="pixel_unet")
    p = tf.keras.Input(shape=shape, name="normalized")
    e = tf.keras.Input(shape=(config.embedding_dim,), name="embedding")
    return tf.keras.Model([p, e], tail([p, *features(p), e]), name="pixel_decoder")


def build_base_model(spec: TileSpec, config: ModelConfig) -> Any:
    """The base classifier ``image -> logits`` with normalisation inside.

    Args:
        spec: Shape, classes and per-band statistics of the tiles.
        config: The model section.

    Returns:
        A functional ``tf.keras.Model`` with input ``image`` (raw pixels, float32
        ``[None, H, W, C]``) and float32 logits ``[None, K]``; layers
        ``normalize``, ``encoder``, ``dropout``, ``logits``. With
        ``config.pixel_head`` it also has the layer ``pixel_decoder`` and a
        second output, per-pixel logits ``[None, H, W, K]``: the model returns
        ``[logits, pixel_logits]`` (:func:`tile_logits` picks the first).
    """
    image = tf.keras.Input(shape=spec.shape, name="image", dtype=tf.float32)
    xn = Normalization(spec.mean, spec.std, name="normalize")(image)
    encoder = build_encoder(spec.shape, config)
    emb = encoder(xn)
    x = tf.keras.layers.Dropout(config.dropout, name="dropout")(emb)
    logits = tf.keras.layers.Dense(spec.num_classes, dtype="float32", name="logits")(x)
    if not config.pixel_head:
        return tf.keras.Model(image, logits, name="base_model")
    # unet: this graph (and the exported signature, which calls the encoder and
    # the decoder in turn) runs the shared encoder_features twice; the train step
    # runs it once (forward).
    pixel = build_pixel_decoder(spec.shape, config, spec.num_classes, encoder)([xn, emb])
    return tf.keras.Model(image, [logits, pixel], name="base_model")


def forward(
    base_model: Any, xn: Any, training: bool = False, pixels: bool = True
) -> tuple[Any, Any]:
    """Embedding and per-pixel logits of normalised pixels, on one encoder pass.

    Calling the base model's ``encoder`` and then its ``pixel_decoder`` gives the
    same values, but with the U-Net decoder that runs the encoder's
    convolutions twice (the decoder recomputes the maps it needs); this calls
    ``encoder_features`` once and feeds its maps to both ``encoder_top`` and
    ``pixel_unet``. The train step uses it; an export can too.

    Args:
        base_model: From :func:`build_base_model`.
        xn: Normalised pixels ``[B, H, W, C]`` (the ``normalize`` layer's output).
        training: Keras training flag.
        pixels: Also run the pixel decoder (when the base model has one).

    Returns:
        ``(embedding, pixel_logits)``: float32 ``[B, D]`` and ``[B, H, W, K]``
        (``None`` without the pixel head or with ``pixels=False``).
    """
    encoder = base_model.get_layer("encoder")
    decoder = base_model.get_layer("pixel_decoder") if has_pixel_head(base_model) else None
    if decoder is None or not pixels:
        return tf.cast(encoder(xn, training=training), tf.float32), None
    if not any(layer.name == "pixel_unet" for layer in decoder.layers):
        emb = tf.cast(encoder(xn, training=training), tf.float32)
        return emb, decoder([xn, emb], training=training)
    maps = encoder.get_layer("encoder_features")(xn, training=training)
    emb = tf.cast(encoder.get_layer("encoder_top")(maps[-1], training=training), tf.float32)
    return emb, decoder.get_layer("pixel_unet")([xn, *maps, emb], training=training)


def has_pixel_head(base_model: Any) -> bool:
    """Whether a base model has the per-pixel head (layer ``pixel_decoder``)."""
    return any(layer.name == "pixel_decoder" for layer in base_model.layers)


def tile_logits(outputs: Any) -> Any:
    """The tile logits of a base model's outputs (the first of two with the pixel head)."""
    return outputs[0] if isinstance(outputs, list | tuple) else outputs


def embedding_of(base_model: Any, image: Any, training: bool = False) -> Any:
    """The float32 embedding (penultimate layer) of raw pixels.

    Args:
        base_model: A model from :func:`build_base_model`.
        image: Raw pixels ``[N, H, W, C]``.
        training: Keras training flag.

    Returns:
        ``float32[N, embedding_dim]``.
    """
    x = base_model.get_layer("normalize")(image)
    return tf.cast(base_model.get_layer("encoder")(x, training=training), tf.float32)


def replicas_in_sync() -> int:
    """Replicas the current ``tf.distribute`` replica context runs (1 outside one)."""
    ctx = tf.distribute.get_replica_context()
    return 1 if ctx is None else int(ctx.num_replicas_in_sync)


def global_mean(total: Any, count: Any, across_replicas: bool = True) -> Any:
    """``total / count`` where ``count`` is summed over the replicas in sync.

    Every loss term of :class:`RegularizedModel` is a ratio (weighted sum over
    the batch / how many examples, pixels or edges count). Under a strategy
    with N replicas each replica sees 1/N of the global batch; dividing its
    local sum by the *global* count makes the replicas' values add up to the
    loss of the whole batch on one replica, whatever share of the labelled
    examples each replica got. Gradients, summed over replicas by the
    optimizer, are then those of the one-replica loss. With one replica (or
    outside a replica context) it is the plain ratio.

    Args:
        total: This replica's weighted sum (float32 scalar).
        count: This replica's count (float32 scalar); no gradient flows through it.
        across_replicas: Sum the count over replicas; False divides by this
            replica's count (evaluation, where each replica reports its own mean).

    Returns:
        ``total / max(sum of count over replicas, 1)``.
    """
    count = tf.stop_gradient(tf.cast(count, tf.float32))
    ctx = tf.distribute.get_replica_context()
    if across_replicas and ctx is not None and ctx.num_replicas_in_sync > 1:
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, count)
    return total / tf.maximum(count, 1.0)


def _weighted_xent(labels: Any, logits: Any, weights: Any, across_replicas: bool = True) -> Any:
    # Mean over the labelled examples of the (global) batch, so a batch with few
    # labels (label_fraction 0.05) is not drowned by the graph term.
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(labels, 0), logits=tf.cast(logits, tf.float32)
    )
    labelled = tf.reduce_sum(tf.cast(weights > 0, tf.float32))
    return global_mean(tf.reduce_sum(per_example * weights), labelled, across_replicas)


def pixel_xent(
    labels: Any,
    logits: Any,
    weights: Any,
    focal_gamma: float = 0.0,
    across_replicas: bool = True,
) -> Any:
    """Weighted per-pixel cross-entropy, averaged over the pixels that count.

    With ``focal_gamma`` > 0 each pixel's term is multiplied by
    ``(1 - p_true) ** focal_gamma`` (the focal loss of Lin et al., 2017): pixels
    the head already gets right weigh less, hard ones (a pile's edge, bare soil
    that looks like ore) more.

    Args:
        labels: int ``[B, H, W]``; -1 (any negative) where ignored.
        logits: ``[B, H, W, K]``.
        weights: ``[B, H, W]``; 0 where ignored (unknown class 255, invalid
            pixel, unlabelled tile), else the pixel's class weight.
        focal_gamma: Focusing exponent; 0 (default) is plain cross-entropy.
        across_replicas: Normalise by the count of the global batch under a
            strategy (:func:`global_mean`); False: by this replica's.

    Returns:
        ``sum(weight * focal * xent) / #(weight > 0)``; 0 when no pixel counts.
        Under a strategy, the count is that of the global batch
        (:func:`global_mean`).
    """
    if focal_gamma <= 0.0:
        return _weighted_xent(labels, logits, weights, across_replicas)
    xent = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.maximum(labels, 0), logits=tf.cast(logits, tf.float32)
    )
    focal = tf.pow(1.0 - tf.exp(-xent), focal_gamma)  # exp(-xent) = p of the true class
    labelled = tf.reduce_sum(tf.cast(weights > 0, tf.float32))
    return global_mean(tf.reduce_sum(focal * xent * weights), labelled, across_replicas)


class RegularizedModel(tf.keras.Model):  # type: ignore[misc]
    """A base classifier trained with supervised + graph + adversarial loss in one step.

    Batches are dicts from :func:`nsl_models.data.make_dataset` (``image``,
    ``label``, ``weight``, optionally ``nbr_image``/``nbr_weight`` and, for a
    base model with the pixel head, ``pixel_label``/``pixel_weight``). The
    module docstring describes the step. Metrics: ``loss``, ``supervised_loss``,
    ``graph_loss`` and ``adversarial_loss`` (unscaled), ``accuracy`` (labelled
    examples), and ``pixel_loss`` with the pixel head.

    Example:
        >>> model = RegularizedModel(base, make_graph_config(), make_adversarial_config())
        >>> model.compile(optimizer=tf.keras.optimizers.Adam(1e-3))  # doctest: +SKIP
        >>> model.fit(train_ds, steps_per_epoch=10)  # doctest: +SKIP

    Args:
        base_model: From :func:`build_base_model` (layers ``normalize``,
            ``encoder``, ``dropout``, ``logits``).
        graph: Graph regularization; default off.
        adversarial: Adversarial regularization; default off.
        pixel_loss_weight: Weight of the per-pixel loss (pixel head only). Default 1.
        pixel_focal_gamma: Focal exponent of the per-pixel loss
            (:func:`pixel_xent`); 0 (default) is plain cross-entropy.
        augment: How the batch's fault ``views`` enter the supervised loss.
        consistency: Graph term between each image and its views.
        fault_adversary: Worst-of-views term.
    """

    def __init__(
        self,
        base_model: Any,
        graph: GraphConfig | None = None,
        adversarial: AdversarialConfig | None = None,
        pixel_loss_weight: float = 1.0,
        pixel_focal_gamma: float = 0.0,
        *,
        augment: AugmentConfig | None = None,
        consistency: ConsistencyConfig | None = None,
        fault_adversary: FaultAdversaryConfig | None = None,
    ) -> None:
        super().__init__(name="regularized_model")
        self.base_model = base_model
        self.pixel_loss_weight = float(pixel_loss_weight)
        self.pixel_focal_gamma = float(pixel_focal_gamma)
        self._pixel: Any = (
            base_model.get_layer("pixel_decoder") if has_pixel_head(base_model) else None
        )
        self.graph = graph or GraphConfig()
        self.adversarial = adversarial or AdversarialConfig()
        self.augment = augment or AugmentConfig()
        self.consistency = consistency or ConsistencyConfig()
        self.fault_adversary = fault_adversary or FaultAdversaryConfig()
        # Both distances sum over the pairs; the mean divides by the count of
        # the global batch (global_mean), so replicas add up to one batch.
        self._view_distance = nsl.configs.DistanceConfig(
            distance_type=self.consistency.distance.value,
            reduction=tf.compat.v1.losses.Reduction.SUM,
            sum_over_axis=-1,
            transform_fn="softmax",
        )
        self._normalize = base_model.get_layer("normalize")
        self._encoder = base_model.get_layer("encoder")
        self._dropout = base_model.get_layer("dropout")
        self._head = base_model.get_layer("logits")
        self._distance = nsl.configs.DistanceConfig(
            distance_type=self.graph.distance.value,
            reduction=tf.compat.v1.losses.Reduction.SUM,
            sum_over_axis=-1,
            transform_fn="softmax" if self._graph_on_predictions else "none",
        )
        adv = self.adversarial
        pgd = adv.method is AdversarialMethod.PGD
        step = adv.pgd_step_size or 2.5 * adv.epsilon / adv.pgd_iterations
        self._adv_neighbor = nsl.configs.AdvNeighborConfig(
            adv_step_size=step if pgd else adv.epsilon,
            adv_grad_norm=adv.norm.value,
            pgd_iterations=adv.pgd_iterations if pgd else 1,
            pgd_epsilon=adv.epsilon if pgd else None,
        )
        names = [
            "loss",
            "supervised_loss",
            "graph_loss",
            "adversarial_loss",
            "consistency_loss",
            "fault_adversarial_loss",
        ]
        if self._pixel is not None:
            names.append("pixel_loss")
        self._trackers = {name: tf.keras.metrics.Mean(name) for name in names}
        self._accuracy = tf.keras.metrics.SparseCategoricalAccuracy("accuracy")

    @property
    def metrics(self) -> list[Any]:
        """Trackers reset by Keras at each epoch."""
        return [*self._trackers.values(), self._accuracy]

    def call(self, inputs: Any, training: bool = False) -> Any:
        """Logits of raw pixels (or of ``inputs["image"]``); two outputs with the pixel head."""
        if isinstance(inputs, dict):
            inputs = inputs["image"]
        return self.base_model(inputs, training=training)

    def _logits(self, embedding: Any, training: bool) -> Any:
        return self._head(self._dropout(embedding, training=training))

    def _embed(self, xn: Any, training: bool) -> Any:
        return tf.cast(self._encoder(xn, training=training), tf.float32)

    def forward(self, xn: Any, training: bool = False, pixels: bool = True) -> tuple[Any, Any]:
        """Embedding and per-pixel logits of normalised pixels, on one encoder pass.

        Args:
            xn: Normalised pixels ``[B, H, W, C]`` (the ``normalize`` layer's output).
            training: Keras training flag.
            pixels: Also run the pixel decoder (when the base model has one).

        Returns:
            :func:`forward` of the base model.
        """
        return forward(self.base_model, xn, training=training, pixels=pixels)

    def uses_pixels(self, data: dict[str, Any]) -> bool:
        """Whether the per-pixel term is on for batches like ``data``."""
        return self._pixel is not None and "pixel_label" in data

    def _pixel_loss(
        self, data: dict[str, Any], pixel_logits: Any, across_replicas: bool = True
    ) -> Any:
        return pixel_xent(
            data["pixel_label"],
            pixel_logits,
            data["pixel_weight"],
            self.pixel_focal_gamma,
            across_replicas,
        )

    @property
    def uses_adversarial(self) -> bool:
        """Whether the adversarial term is on."""
        return self.adversarial.enabled and self.adversarial.multiplier > 0

    def uses_graph(self, data: dict[str, Any]) -> bool:
        """Whether the graph term is on for batches like ``data``."""
        return self.graph.enabled and self.graph.multiplier > 0 and "nbr_image" in data

    @property
    def _graph_on_predictions(self) -> bool:
        return self.graph.space is GraphSpace.PREDICTIONS

    def _graph_loss(self, emb: Any, logits: Any, nbr_emb: Any, nbr_weight: Any) -> Any:
        """The graph term between the clean batch and its ``k`` neighbours per example.

        Args:
            emb: Clean embedding ``[B, D]``.
            logits: Clean logits ``[B, K]`` (from ``emb``).
            nbr_emb: Neighbours' embeddings ``[B * k, D]``, example-major.
            nbr_weight: Edge weights ``[B, k]``; 0 for a missing neighbour.

        Returns:
            The weighted mean distance over the edges of non-zero weight (0 when
            there is none); under a strategy, over those of the global batch.
        """
        k = nbr_weight.shape[1]
        if self._graph_on_predictions:
            # The neighbours' logits from the same head (dropout as on the clean
            # side); NSL's transform_fn turns both into distributions.
            sources = tf.cast(logits, tf.float32)
            targets = tf.cast(self._logits(nbr_emb, training=True), tf.float32)
        elif self.graph.normalize:
            sources = tf.math.l2_normalize(emb, axis=-1)
            targets = tf.math.l2_normalize(nbr_emb, axis=-1)
        else:
            sources, targets = emb, nbr_emb
        weight = tf.reshape(tf.cast(nbr_weight, tf.float32), [-1, 1])
        total = nsl.lib.pairwise_distance_wrapper(
            sources=nsl.lib.replicate_embeddings(sources, k),
            targets=targets,
            weights=weight,
            distance_config=self._distance,
        )
        return global_mean(total, tf.reduce_sum(tf.cast(weight != 0, tf.float32)))

    def uses_views(self, data: dict[str, Any]) -> bool:
        """Whether any term reads the batch's fault ``views``."""
        return "views" in data and (
            self.augment.supervised
            or (self.consistency.enabled and self.consistency.multiplier > 0)
            or (self.fault_adversary.enabled and self.fault_adversary.multiplier > 0)
        )

    def _view_terms(
        self, data: dict[str, Any], logits: Any, supervised: Any
    ) -> tuple[Any, Any, Any]:
        """Supervised loss with the views, consistency and worst-view terms (step 6)."""
        image, labels, weights = data["image"], data["label"], data["weight"]
        views = data["views"]
        v = views.shape[1]
        vn = self._normalize(tf.reshape(views, [-1, *image.shape[1:]]))
        v_emb, _ = self.forward(vn, training=True, pixels=False)
        v_logits = self._logits(v_emb, training=True)  # [B * V, K], example-major
        zero = tf.constant(0.0)
        per_view = tf.reshape(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.repeat(tf.maximum(labels, 0), v), logits=tf.cast(v_logits, tf.float32)
            ),
            [-1, v],
        )  # [B, V]
        labelled = tf.reduce_sum(tf.cast(weights > 0, tf.float32))
        if self.augment.supervised:
            view_xent = global_mean(
                tf.reduce_sum(tf.reduce_mean(per_view, axis=1) * weights), labelled
            )
            supervised = (supervised + v * view_xent) / (1 + v)
        consistency = zero
        if self.consistency.enabled and self.consistency.multiplier > 0:
            pairs = tf.cast(tf.shape(v_logits)[0], tf.float32)  # B * V
            consistency = global_mean(
                nsl.lib.pairwise_distance_wrapper(
                    sources=nsl.lib.replicate_embeddings(tf.cast(logits, tf.float32), v),
                    targets=tf.cast(v_logits, tf.float32),
                    distance_config=self._view_distance,
                ),
                pairs,
            )
        worst = zero
        if self.fault_adversary.enabled and self.fault_adversary.multiplier > 0:
            worst = global_mean(tf.reduce_sum(tf.reduce_max(per_view, axis=1) * weights), labelled)
        return supervised, consistency, worst

    def compute_losses(self, data: dict[str, Any], tape: Any) -> dict[str, Any]:
        """Forward passes and the loss terms of one batch (inside ``tape``).

        Args:
            data: A batch dict.
            tape: The outer ``tf.GradientTape`` over the weights; paused while
                the adversarial perturbation is searched.

        Returns:
            ``loss`` (total), ``supervised_loss``, ``graph_loss``,
            ``adversarial_loss``, ``pixel_loss`` (each 0 when off) and ``logits``
            of the clean batch.
        """
        image, labels, weights = data["image"], data["label"], data["weight"]
        use_graph = self.uses_graph(data)
        use_pixels = self.uses_pixels(data)
        w_pix = self.pixel_loss_weight
        zero = tf.constant(0.0)
        pixel_loss = zero
        xn = self._normalize(image)
        with tf.GradientTape(watch_accessed_variables=False) as tape_x:
            tape_x.watch(xn)
            # Same pass, same embedding: the decoder adds one branch.
            emb, pixel_logits = self.forward(xn, training=True, pixels=use_pixels)
            logits = self._logits(emb, training=True)
            supervised = _weighted_xent(labels, logits, weights)
            attacked = supervised
            if use_pixels:
                pixel_loss = self._pixel_loss(data, pixel_logits)
                attacked = supervised + w_pix * pixel_loss
        if use_graph:
            # Outside tape_x: the input gradient for the adversarial step then
            # back-propagates through the B clean rows only, not the B * k neighbours.
            nbr = data["nbr_image"]
            nbr_n = self._normalize(tf.reshape(nbr, [-1, *image.shape[1:]]))
            nbr_emb = self._embed(nbr_n, training=True)
        total = attacked
        graph_loss = adversarial_loss = consistency = worst = zero
        if self.uses_views(data):
            with_views, consistency, worst = self._view_terms(data, logits, supervised)
            total += with_views - supervised
            supervised = with_views
            total += self.consistency.multiplier * consistency
            total += self.fault_adversary.multiplier * worst
        if use_graph:
            graph_loss = self._graph_loss(emb, logits, nbr_emb, data["nbr_weight"])
            total += self.graph.multiplier * graph_loss
        if self.uses_adversarial:

            def model_fn(z: Any) -> Any:
                # Reads use_pixels when called: the corrupted-view branch below clears it.
                e, p = self.forward(z, True, pixels=use_pixels)
                return (self._logits(e, True), p)

            def loss_fn(y: Any, out: Any) -> Any:
                loss = _weighted_xent(y, out[0], weights)
                return loss + w_pix * self._pixel_loss(data, out[1]) if use_pixels else loss

            if "aug_image" in data:
                # Corrupted view (adversarial.corruptions): the perturbation is
                # searched around it, on the tile head only (a shifted or rotated
                # image no longer lines up with its pixel labels).
                use_pixels = False

                def loss_fn(y: Any, out: Any) -> Any:
                    return _weighted_xent(y, out[0], weights)

            with tape.stop_recording():
                start, start_loss, start_tape = xn, attacked, tape_x
                if "aug_image" in data:
                    start = self._normalize(data["aug_image"])
                    with tf.GradientTape(watch_accessed_variables=False) as start_tape:
                        start_tape.watch(start)
                        start_loss = loss_fn(labels, model_fn(start))
                adv_xn, _ = nsl.lib.gen_adv_neighbor(
                    start,
                    start_loss,
                    config=self._adv_neighbor,
                    gradient_tape=start_tape,
                    pgd_model_fn=model_fn,
                    pgd_loss_fn=loss_fn,
                    pgd_labels=labels,
                )
            adversarial_loss = loss_fn(labels, model_fn(tf.stop_gradient(adv_xn)))
            total += self.adversarial.multiplier * adversarial_loss
        if self.losses:
            # Every replica adds the full weight penalty: its share is 1/N.
            total += tf.add_n(self.losses) / replicas_in_sync()
        return {
            "loss": total,
            "supervised_loss": supervised,
            "graph_loss": graph_loss,
            "adversarial_loss": adversarial_loss,
            "consistency_loss": consistency,
            "fault_adversarial_loss": worst,
            "pixel_loss": pixel_loss,
            "logits": logits,
        }

    def train_step(self, data: dict[str, Any]) -> dict[str, Any]:
        """One optimizer update on supervised + graph + adversarial loss."""
        with tf.GradientTape() as tape:
            out = self.compute_losses(data, tape)
        # Each replica's terms are already its share of the global batch's loss
        # (global_mean); the optimizer sums the replicas' gradients, which gives
        # the gradient of the one-replica loss. No further / N.
        self.optimizer.minimize(out["loss"], self.trainable_variables, tape=tape)
        return self._update_metrics(data, out)

    def test_step(self, data: dict[str, Any]) -> dict[str, Any]:
        """Supervised (and pixel) loss and accuracy of the clean batch in inference mode."""
        use_pixels = self.uses_pixels(data)
        emb, pixel_logits = self.forward(
            self._normalize(data["image"]), training=False, pixels=use_pixels
        )
        logits = self._logits(emb, training=False)
        # Each replica's own mean (no all_reduce: Keras's evaluate may hand a
        # replica a partial or empty last batch); the trackers average them.
        supervised = _weighted_xent(data["label"], logits, data["weight"], False)
        zero = tf.constant(0.0)
        pixel_loss = self._pixel_loss(data, pixel_logits, False) if use_pixels else zero
        out = {
            "loss": supervised + self.pixel_loss_weight * pixel_loss,
            "supervised_loss": supervised,
            "graph_loss": zero,
            "adversarial_loss": zero,
            "consistency_loss": zero,
            "fault_adversarial_loss": zero,
            "pixel_loss": pixel_loss,
            "logits": logits,
        }
        return self._update_metrics(data, out, shares=False)

    def _update_metrics(
        self, data: dict[str, Any], out: dict[str, Any], shares: bool = True
    ) -> dict[str, Any]:
        # A tracker averages the values of the replicas. In training a replica's
        # value is its share of the global loss (shares), so N times it averages
        # to the global loss.
        replicas = replicas_in_sync() if shares else 1
        for name, tracker in self._trackers.items():
            tracker.update_state(out[name] * replicas if replicas > 1 else out[name])
        labelled = tf.cast(data["label"] >= 0, tf.float32)
        self._accuracy.update_state(tf.maximum(data["label"], 0), out["logits"], labelled)
        return {m.name: m.result() for m in self.metrics}
