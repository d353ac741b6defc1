"""A label-free tile encoder: contrastive training on the tiles themselves.

The graph job's similarity edges are only as good as the embedding they compare.
The built-in descriptor needs no model but sees only colour, contrast and texture
statistics; a trained classifier needs labels. This encoder needs neither: a small
convolutional network learns, from the tiles of one tile job alone, to give two
*views* of the same tile (the tile under two random corruptions, flips and band
jitter) nearby embeddings and different tiles distant ones (SimCLR's NT-Xent
loss). What survives the views is what stays the same when a camera or a sensor
misbehaves: the tile's materials and shapes.

Training (:func:`train_encoder`):

- reads the tile TFRecords of a ``minewatch tile`` folder as a stream (a seeded
  shuffle buffer, never the whole set in memory) and z-scores the pixels with the
  tile job's per-band statistics (``stats.json``), invalid pixels 0: exactly the
  input the graph job gives a SavedModel (:func:`minewatch.embeddings.load_saved_model`);
- makes two views of every tile of a batch: each one corruption from
  :mod:`minewatch.corruptions` (drawn from ``corruptions`` at a severity in
  ``1..max_severity``, applied to the stored pixel values), one of the 8 flips and
  quarter turns, then a per-band gain and offset (``band_jitter``, in z-score
  units); the draws come from a seeded ``tf.data.Dataset.random`` stream;
- passes the views through the encoder and a small projection head, and minimises
  NT-Xent (temperature ``temperature``) over the ``2B`` views of the batch, for
  ``steps`` Adam steps;
- is deterministic: the same tiles, options and seed give the same weights on
  CPU (:func:`nsl_models.hardware.make_deterministic`, seeded initialisers and data
  order), so a rerun reproduces, and a folder trained on the same tiles and
  options is reused instead of retrained.

The encoder (:func:`build_encoder`) is two blocks of two 3 x 3 convolutions (the
second after a 2 x 2 max pool), then the mean and the maximum over the image
(the maximum keeps a small object, such as a stockpile in a 16-pixel tile, from
being averaged away) and a linear layer to ``dim`` values: the embedding. The
projection head is used in training only (the SimCLR recipe: the layer before it
keeps more of what the views do not change).

Output folder ``OUT`` (a SavedModel the graph job reads unchanged)::

    saved_model.pb, variables/   signature "embedding": "image" float32
                                 [None, None, None, C] (z-scored pixels, invalid 0)
                                 -> "embedding" float32 [None, dim];
                                 also "serving_default"
    encoder.json                 what was trained and how: format, options, bands,
                                 normalisation, tiles fingerprint, steps, seconds,
                                 loss curve

Example:
    >>> from nsl_models.encoder import EncoderConfig, train_encoder
    >>> meta = train_encoder("out/tiles", "out/encoder", EncoderConfig(steps=300))  # doctest: +SKIP
    >>> meta["loss"][-1]  # doctest: +SKIP
    [300, 3.91]

Then ``minewatch graph out/tiles --out out/graph --embedding out/encoder``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from typing import Any

import numpy as np

from minewatch import __version__
from minewatch.compat import use_legacy_keras
from minewatch.errors import ConfigError, InputError
from minewatch.paths import is_remote
from minewatch.spec import IMAGE_RAW, VALID_MASK

__all__ = [
    "DEFAULT_VIEW_CORRUPTIONS",
    "ENCODER_FORMAT",
    "METADATA_NAME",
    "EncoderConfig",
    "build_encoder",
    "encoder_fingerprint",
    "nt_xent_loss",
    "read_encoder_metadata",
    "train_encoder",
]

log = logging.getLogger(__name__)

#: ``format`` of ``encoder.json``; bumped when the folder's meaning changes.
ENCODER_FORMAT = "minewatch-contrastive-encoder/1"
#: The metadata file written into the SavedModel folder.
METADATA_NAME = "encoder.json"
#: Signature the graph job calls (:data:`minewatch.embeddings.EMBEDDING_SIGNATURE`).
_SIGNATURE = "embedding"

#: Corruptions the views are drawn from: the sensor's radiometric and geometric
#: faults, none that changes what is on the ground.
DEFAULT_VIEW_CORRUPTIONS: tuple[str, ...] = (
    "shift",
    "misregistration",
    "haze",
    "sensor_noise",
    "gaussian_noise",
    "exposure",
    "white_balance",
)


@dataclass(frozen=True)
class EncoderConfig:
    """Options of the contrastive encoder.

    Attributes:
        steps: Optimizer steps. Default 400.
        batch_size: Tiles per step (``2 x`` views); each tile's negatives are the
            other ``2 B - 2`` views. Default 256.
        dim: Embedding size (the graph job's vector). Default 32.
        width: Filters of the first block (the second has twice as many). Default 16.
        projection_dim: Output of the projection head the loss sees. Default 32.
        temperature: NT-Xent temperature. Default 0.1.
        learning_rate: Adam learning rate (cosine decay to 10% over ``steps``).
            Default 0.002.
        seed: Seed of initialisation, shuffle and views. Default 0.
        shuffle_buffer: Serialized records in the shuffle buffer (the memory
            bound). Default 4096.
        corruptions: Names from :data:`minewatch.corruptions.CORRUPTIONS` the views
            draw one from; empty: flips and band jitter only. Default
            :data:`DEFAULT_VIEW_CORRUPTIONS`.
        max_severity: Highest corruption severity drawn (1..5). Default 2.
        band_jitter: Standard deviation of each view's per-band gain (around 1)
            and offset (around 0), in z-score units. Default 0.1.
    """

    steps: int = 400
    batch_size: int = 256
    dim: int = 32
    width: int = 16
    projection_dim: int = 32
    temperature: float = 0.1
    learning_rate: float = 0.002
    seed: int = 0
    shuffle_buffer: int = 4096
    corruptions: tuple[str, ...] = DEFAULT_VIEW_CORRUPTIONS
    max_severity: int = 2
    band_jitter: float = 0.1

    def __post_init__(self) -> None:
        from minewatch.corruptions import CORRUPTIONS

        positive = ("steps", "dim", "width", "projection_dim", "shuffle_buffer")
        for name in positive:
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"encoder {name}: must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError(
                f"encoder batch_size: must be >= 2 (a tile needs other tiles as "
                f"negatives), got {self.batch_size}"
            )
        if not self.temperature > 0 or not self.learning_rate > 0:
            raise ConfigError(
                f"encoder temperature and learning_rate: must be > 0, got "
                f"{self.temperature} and {self.learning_rate}"
            )
        if not 1 <= self.max_severity <= 5:
            raise ConfigError(f"encoder max_severity: 1..5, got {self.max_severity}")
        if not 0 <= self.band_jitter <= 1:
            raise ConfigError(f"encoder band_jitter: 0..1, got {self.band_jitter}")
        unknown = [c for c in self.corruptions if c not in CORRUPTIONS]
        if unknown:
            raise ConfigError(
                f"encoder corruptions: unknown {unknown}; choose from {', '.join(CORRUPTIONS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready options (``corruptions`` as a list)."""
        out = asdict(self)
        out["corruptions"] = list(self.corruptions)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EncoderConfig:
        """The inverse of :meth:`to_dict`; unknown keys are refused."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"encoder: unknown option(s) {unknown}; known: {sorted(names)}")
        kwargs = dict(values)
        if "corruptions" in kwargs:
            kwargs["corruptions"] = tuple(kwargs["corruptions"])
        return cls(**kwargs)


# -- inputs ------------------------------------------------------------------------


def _tile_files(tiles_dir: str) -> list[str]:
    import tensorflow as tf

    pattern = posixpath.join(tiles_dir, "tiles", "*.tfrecord")
    files = sorted(tf.io.gfile.glob(pattern))
    if not files:
        raise InputError(
            f"{pattern} matches no file: give the --out folder of 'minewatch tile' "
            "(tiles/*.tfrecord and stats.json)"
        )
    return files


def encoder_fingerprint(tiles_dir: str, config: EncoderConfig) -> str:
    """What an encoder was trained from: the tiles and the options, as a hex digest.

    The tiles are named by their ``stats.json`` (which a new tile job rewrites,
    with its time of creation) and the names and sizes of the TFRecord files, so
    the fingerprint costs no pass over the data.

    Args:
        tiles_dir: The tile job's output folder.
        config: The encoder options.

    Returns:
        A SHA-256 hex digest.

    Raises:
        InputError: No tile files or no ``stats.json``.
    """
    use_legacy_keras()
    import tensorflow as tf

    files = _tile_files(tiles_dir)
    stats_path = posixpath.join(tiles_dir, "stats.json")
    if not tf.io.gfile.exists(stats_path):
        raise InputError(
            f"{stats_path} is missing: the encoder z-scores the pixels with the tile "
            "job's band statistics; run 'minewatch tile' to make it"
        )
    digest = hashlib.sha256()
    digest.update(ENCODER_FORMAT.encode())
    with tf.io.gfile.GFile(stats_path, "rb") as f:
        digest.update(hashlib.sha256(f.read()).digest())
    for path in files:
        digest.update(f"{posixpath.basename(path)}\0{tf.io.gfile.stat(path).length}\0".encode())
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


def read_encoder_metadata(path: str) -> dict[str, Any] | None:
    """``encoder.json`` of an encoder folder, or None when there is no whole encoder there.

    A folder is whole when it holds ``encoder.json`` (written last) and
    ``saved_model.pb``.
    """
    use_legacy_keras()
    import tensorflow as tf

    meta_path = posixpath.join(path, METADATA_NAME)
    if not (
        tf.io.gfile.exists(meta_path) and tf.io.gfile.exists(posixpath.join(path, "saved_model.pb"))
    ):
        return None
    with tf.io.gfile.GFile(meta_path, "r") as f:
        try:
            meta = json.loads(f.read())
        except json.JSONDecodeError:
            return None
    return meta if isinstance(meta, dict) and meta.get("format") == ENCODER_FORMAT else None


# -- model -------------------------------------------------------------------------


def build_encoder(channels: int, config: EncoderConfig) -> Any:
    """The encoder: z-scored ``[H, W, C]`` pixels (any ``H, W``) -> ``[dim]`` embedding.

    Initialisers are seeded from ``config.seed``, so the weights before training
    do not depend on what the process built before.

    Args:
        channels: ``C``, the bands.
        config: ``width``, ``dim`` and ``seed``.

    Returns:
        A functional ``tf.keras.Model`` named ``contrastive_encoder``.
    """
    use_legacy_keras()
    import tensorflow as tf

    layers = tf.keras.layers
    seeds = iter(range(config.seed * 100, config.seed * 100 + 100))

    def init() -> Any:
        return tf.keras.initializers.GlorotUniform(seed=next(seeds))

    def conv(x: Any, filters: int, name: str) -> Any:
        return layers.Conv2D(
            filters, 3, padding="same", activation="relu", kernel_initializer=init(), name=name
        )(x)

    inputs = tf.keras.Input(shape=(None, None, channels), name="image")
    x = conv(inputs, config.width, "block1_conv1")
    x = conv(x, config.width, "block1_conv2")
    x = layers.MaxPool2D(2, padding="same", name="block2_pool")(x)
    x = conv(x, 2 * config.width, "block2_conv1")
    x = conv(x, 2 * config.width, "block2_conv2")
    pooled = layers.Concatenate(name="pool")(
        [layers.GlobalAveragePooling2D(name="mean")(x), layers.GlobalMaxPooling2D(name="max")(x)]
    )
    emb = layers.Dense(config.dim, kernel_initializer=init(), name="embedding")(pooled)
    return tf.keras.Model(inputs, emb, name="contrastive_encoder")


def _projection_head(config: EncoderConfig) -> Any:
    import tensorflow as tf

    layers = tf.keras.layers
    seed = config.seed * 100 + 90
    return tf.keras.Sequential(
        [
            layers.Dense(
                config.dim,
                activation="relu",
                kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed),
            ),
            layers.Dense(
                config.projection_dim,
                kernel_initializer=tf.keras.initializers.GlorotUniform(seed=seed + 1),
            ),
        ],
        name="projection",
    )


def nt_xent_loss(z1: Any, z2: Any, temperature: float) -> Any:
    """NT-Xent (normalised temperature-scaled cross-entropy) of two batches of views.

    View ``i`` of ``z1`` and view ``i`` of ``z2`` are a positive pair; every other
    view of the ``2B`` is a negative. The loss is the mean over all ``2B`` views
    of the cross-entropy of picking the partner among the other ``2B - 1`` by
    cosine similarity / ``temperature``. Its value for embeddings that carry no
    information is ``log(2B - 1)``.

    Args:
        z1: ``[B, P]`` projections of the first views.
        z2: ``[B, P]`` projections of the second views.
        temperature: Softmax temperature (> 0).

    Returns:
        A scalar float32 tensor.
    """
    import tensorflow as tf

    z = tf.math.l2_normalize(tf.concat([z1, z2], 0), axis=1)
    n = tf.shape(z1)[0]
    logits = tf.matmul(z, z, transpose_b=True) / temperature
    logits -= 1e9 * tf.eye(2 * n)  # a view is not its own partner
    partner = tf.concat([tf.range(n, 2 * n), tf.range(0, n)], 0)
    return tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=partner, logits=logits)
    )


# -- data --------------------------------------------------------------------------


def _view_maker(
    spec: Any, config: EncoderConfig
) -> Callable[[np.ndarray, np.ndarray, np.int64], np.ndarray]:
    """``(raw [B, H, W, C], valid [B, H, W], draw) -> [2, B, H, W, C]`` z-scored views."""
    from minewatch.corruptions import corrupt

    dtype = np.dtype(spec.dtype)
    mean = np.asarray(spec.mean, np.float32)
    std = np.asarray(spec.std, np.float32)
    names = config.corruptions
    jitter = np.float32(config.band_jitter)

    def make(images: np.ndarray, valid: np.ndarray, draw: np.int64) -> np.ndarray:
        rng = np.random.default_rng(int(draw) & 0x7FFFFFFFFFFFFFFF)
        b, _, _, c = images.shape
        out = np.empty((2, *images.shape), np.float32)
        for v in range(2):
            for i in range(b):
                img, ok = images[i], valid[i] > 0
                if names:
                    name = names[int(rng.integers(len(names)))]
                    severity = int(rng.integers(1, config.max_severity + 1))
                    # Decoded pixels are the stored values as float32: the cast back is exact.
                    img = corrupt(img.astype(dtype), name, severity, rng).astype(np.float32)
                z = (img - mean) / std
                gain = 1.0 + jitter * np.asarray(rng.standard_normal(c), np.float32)
                z = z * gain + jitter * np.asarray(rng.standard_normal(c), np.float32)
                z[~ok] = 0.0
                turns, flip = int(rng.integers(4)), bool(rng.integers(2))
                z = np.rot90(z, turns, axes=(0, 1))
                out[v, i] = z[:, ::-1] if flip else z
        return out

    return make


def _dataset(files: list[str], spec: Any, config: EncoderConfig) -> Any:
    """Batches of ``[2, B, H, W, C]`` views, forever, streamed from ``files``."""
    import tensorflow as tf

    from nsl_models.data.records import decode_image, decode_plane, interleaved_records

    feats = {
        IMAGE_RAW: tf.io.FixedLenFeature([], tf.string),
        VALID_MASK: tf.io.FixedLenFeature([], tf.string, default_value=""),
    }

    def parse(record: Any) -> Any:
        ex = tf.io.parse_single_example(record, feats)
        return decode_image(ex[IMAGE_RAW], spec), decode_plane(ex[VALID_MASK], spec, fill=1)

    make = _view_maker(spec, config)

    def views(batch: Any, draw: Any) -> Any:
        images, valid = batch
        out = tf.numpy_function(make, [images, valid, draw], tf.float32, stateful=False)
        out.set_shape((2, config.batch_size, *spec.shape))
        return out

    ds = interleaved_records(files)
    # Shuffle serialized records (smaller than decoded pixels): the only buffer.
    ds = ds.shuffle(config.shuffle_buffer, seed=config.seed, reshuffle_each_iteration=True)
    ds = ds.repeat().map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(config.batch_size, drop_remainder=True)
    draws = tf.data.Dataset.random(seed=config.seed + 1)
    ds = tf.data.Dataset.zip((ds, draws)).map(views, num_parallel_calls=2, deterministic=True)
    return ds.prefetch(2)


# -- training ----------------------------------------------------------------------


def _first_line(err: Exception) -> str:
    text = str(getattr(err, "message", "") or err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _export(encoder: Any, channels: int, folder: str, metadata: dict[str, Any]) -> None:
    """Write the SavedModel and ``encoder.json`` (last) into ``folder``.

    Locally the folder is written beside ``folder`` and renamed into place, so a
    killed export leaves the previous encoder (or none) whole.
    """
    import tensorflow as tf

    module = tf.Module()
    module.encoder = encoder
    spec_in = tf.TensorSpec([None, None, None, channels], tf.float32, name="image")

    @tf.function(input_signature=[spec_in])  # type: ignore[untyped-decorator]
    def embed(image: Any) -> dict[str, Any]:
        return {_SIGNATURE: encoder(image, training=False)}

    signatures = {_SIGNATURE: embed, "serving_default": embed}
    text = json.dumps(metadata, indent=2, sort_keys=True)
    if is_remote(folder):
        if tf.io.gfile.exists(folder):
            tf.io.gfile.rmtree(folder)
        tf.saved_model.save(module, folder, signatures=signatures)
        with tf.io.gfile.GFile(posixpath.join(folder, METADATA_NAME), "w") as f:
            f.write(text)
        return
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    fresh = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(folder)}.exporting-")
    try:
        tf.saved_model.save(module, fresh, signatures=signatures)
        with open(os.path.join(fresh, METADATA_NAME), "w") as f:
            f.write(text)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.replace(fresh, folder)
    finally:
        if os.path.exists(fresh):
            shutil.rmtree(fresh, ignore_errors=True)


def train_encoder(
    tiles_dir: str,
    out: str,
    config: EncoderConfig | None = None,
    *,
    overwrite: bool = False,
    log_every: int = 10,
) -> dict[str, Any]:
    """Train the contrastive encoder on a tile job's tiles and export it to ``out``.

    An encoder already in ``out`` that was trained on the same tiles with the same
    options (:func:`encoder_fingerprint`) is kept: training again would give the
    same weights. Another one is replaced only with ``overwrite``.

    Args:
        tiles_dir: The ``--out`` folder of ``minewatch tile`` (``tiles/*.tfrecord``,
            ``stats.json``).
        out: Output folder: the SavedModel and ``encoder.json`` (module docstring).
        config: Options; default :class:`EncoderConfig`.
        overwrite: Replace an encoder in ``out`` trained on other tiles or options.
            Default False.
        log_every: Steps per point of the loss curve (the mean over them). Default 10.

    Returns:
        The metadata (``encoder.json``), with ``reused`` True when ``out`` was kept.

    Raises:
        InputError: No tiles, no ``stats.json``, a first record that is not a tile,
            a record that cannot be read or has another shape, or ``out`` holding
            another encoder (without ``overwrite``) or other files.
    """
    config = config or EncoderConfig()
    use_legacy_keras()
    import tensorflow as tf

    from nsl_models.data import read_tile_spec
    from nsl_models.hardware import make_deterministic

    tiles_dir = tiles_dir.rstrip("/") or tiles_dir
    fingerprint = encoder_fingerprint(tiles_dir, config)
    existing = read_encoder_metadata(out)
    if existing is not None:
        if existing.get("fingerprint") == fingerprint:
            log.info("%s: encoder trained on the same tiles and options, kept", out)
            return {**existing, "reused": True}
        if not overwrite:
            raise InputError(
                f"{out} holds an encoder trained on other tiles or options; give another "
                "folder, or overwrite it (--overwrite)"
            )
    elif tf.io.gfile.isdir(out) and tf.io.gfile.listdir(out) and not overwrite:
        raise InputError(
            f"{out} holds files that are not an encoder; give an empty or new folder, or "
            "overwrite it (--overwrite)"
        )
    files = _tile_files(tiles_dir)
    spec = read_tile_spec(tiles_dir, files)

    make_deterministic(config.seed)  # seeds; op determinism on CPU
    encoder = build_encoder(spec.channels, config)
    head = _projection_head(config)
    schedule = tf.keras.optimizers.schedules.CosineDecay(
        config.learning_rate, config.steps, alpha=0.1
    )
    optimizer = tf.keras.optimizers.Adam(schedule)

    @tf.function  # type: ignore[untyped-decorator]
    def step(views: Any) -> Any:
        with tf.GradientTape() as tape:
            z1 = head(encoder(views[0], training=True), training=True)
            z2 = head(encoder(views[1], training=True), training=True)
            loss = nt_xent_loss(z1, z2, config.temperature)
        variables = encoder.trainable_variables + head.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return loss

    curve: list[list[float]] = []
    window: list[float] = []
    started = time.monotonic()
    iterator = iter(_dataset(files, spec, config))
    for i in range(1, config.steps + 1):
        try:
            views = next(iterator)
        except tf.errors.OpError as err:
            raise InputError(
                f"{tiles_dir}: a tile record could not be read as a {spec.dtype} "
                f"{list(spec.shape)} tile ({_first_line(err)}); rerun 'minewatch tile' "
                "or remove the file"
            ) from None
        value = float(step(views))
        if not math.isfinite(value):
            raise InputError(
                f"{tiles_dir}: the contrastive loss is {value} at step {i}; are there "
                "NaN/inf pixels, or a band with a zero spread in stats.json?"
            )
        window.append(value)
        if len(window) == log_every or i == config.steps:
            curve.append([i, round(float(np.mean(window)), 5)])
            log.info("encoder step %d: loss %.4f", i, curve[-1][1])
            window = []
    seconds = time.monotonic() - started
    weights = hashlib.sha256()
    for w in encoder.get_weights():
        weights.update(np.ascontiguousarray(w).tobytes())
    metadata = {
        "format": ENCODER_FORMAT,
        "minewatch_version": __version__,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "tiles_dir": tiles_dir,
        "fingerprint": fingerprint,
        "options": config.to_dict(),
        "bands": list(spec.bands),
        "tile_shape": list(spec.shape),
        "normalization": {"mean": list(spec.mean), "std": list(spec.std)},
        "signature": {
            "name": _SIGNATURE,
            "input": {
                "name": "image",
                "dtype": "float32",
                "shape": [None, None, None, spec.channels],
            },
            "output": {"name": _SIGNATURE, "dtype": "float32", "shape": [None, config.dim]},
        },
        "steps": config.steps,
        "tiles_seen": config.steps * config.batch_size,
        "seconds": round(seconds, 2),
        "loss": curve,
        "loss_chance": round(math.log(2 * config.batch_size - 1), 5),
        "weights_sha256": weights.hexdigest(),
    }
    _export(encoder, spec.channels, out, metadata)
    return {**metadata, "reused": False}
