"""Record checks: every training record must be a tile of the first record's spec.

A record that is not (missing ``image/*`` features, pixel bytes that do not
match ``image/shape``, another shape, dtype or bands) would fail a training step
deep inside TensorFlow, or train on garbage. :func:`checked_pass` rides on the
counting passes (:mod:`nsl_models.data.labels`, :mod:`nsl_models.data.counts`),
which read every record anyway, and names the bad ones by file, index and
``tile/id`` before any step runs.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from minewatch.errors import InputError
from minewatch.spec import IMAGE_BANDS, IMAGE_DTYPE, IMAGE_RAW, IMAGE_SHAPE, TILE_ID
from nsl_models.data.spec import TileSpec

__all__ = ["check_features", "checked_pass", "first_line", "record_problem"]


#: Bad records named in full in the error; the rest are counted.
_SHOWN = 5


def check_features(batched: bool = False) -> dict[str, Any]:
    """The features every tile record must hold, parsed so that a bad one cannot fail a batch.

    Ragged: a missing feature gives an empty row and a repeated one a longer
    row, both reported by :func:`_problem` instead of failing ``parse_example``.
    ``batched`` (the pass over every record) reads ``image/raw`` as one string,
    missing as empty: a ragged row of large strings costs more to build, and a
    record holding two of them (which no writer makes) fails its batch, which
    :func:`_unreadable` then names by file.
    """
    import tensorflow as tf

    raw = tf.io.FixedLenFeature([], tf.string, default_value="") if batched else None
    return {
        TILE_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
        IMAGE_RAW: raw or tf.io.RaggedFeature(tf.string),
        IMAGE_SHAPE: tf.io.RaggedFeature(tf.int64),
        IMAGE_DTYPE: tf.io.RaggedFeature(tf.string),
        IMAGE_BANDS: tf.io.RaggedFeature(tf.string),
    }


def _problem(
    raw_values: int,
    raw_bytes: int,
    shape: list[int],
    dtype: str,
    dtype_values: int,
    bands: Sequence[str],
    spec: TileSpec | None = None,
) -> str:
    """What is wrong with one record's image features, in words; ``""`` when nothing is.

    Args:
        raw_values: Values of ``image/raw`` (1 in a tile record).
        raw_bytes: Their total length.
        shape: ``image/shape``.
        dtype: ``image/dtype`` (its values joined).
        dtype_values: Values of ``image/dtype`` (1).
        bands: ``image/bands``.
        spec: The spec every record must match; None checks only that the
            record agrees with itself.
    """
    present = {
        IMAGE_RAW: raw_values,
        IMAGE_SHAPE: len(shape),
        IMAGE_DTYPE: dtype_values,
        IMAGE_BANDS: len(bands),
    }
    missing = [name for name, n in present.items() if n == 0]
    if missing:
        return f"missing features {missing}"
    if raw_values != 1 or dtype_values != 1:
        return f"image/raw holds {raw_values} values and image/dtype {dtype_values}, not 1 each"
    if len(shape) != 3 or min(shape) <= 0:
        return f"image/shape {shape} is not [height, width, bands]"
    try:
        itemsize = np.dtype(dtype).itemsize
    except TypeError:
        return f"image/dtype {dtype!r} is not a numpy dtype name"
    need = shape[0] * shape[1] * shape[2] * itemsize
    if raw_bytes != need:
        return (
            f"image/raw holds {raw_bytes} bytes and image/shape {shape} of {dtype} needs "
            f"{need}: they do not match"
        )
    if len(bands) != shape[2]:
        return f"image/bands {list(bands)} and image/shape {shape} do not match"
    if spec is None:
        return ""
    for name, mine, theirs in (
        (IMAGE_SHAPE, shape, list(spec.shape)),
        (IMAGE_DTYPE, dtype, spec.dtype),
        (IMAGE_BANDS, list(bands), list(spec.bands)),
    ):
        if mine != theirs:
            return f"{name} {mine} and the first record's {theirs} do not match"
    return ""


def _bad_records(ex: dict[str, Any], spec: TileSpec) -> Any:
    """``bool[N]``: records of a parsed batch that do not fit ``spec`` (see :func:`_problem`)."""
    import tensorflow as tf

    raw, shape, dtype = ex[IMAGE_RAW], ex[IMAGE_SHAPE], ex[IMAGE_DTYPE]
    bands = ex[IMAGE_BANDS]
    nbytes = spec.height * spec.width * spec.channels * np.dtype(spec.dtype).itemsize
    fixed_shape = shape.to_tensor(default_value=-1, shape=[None, 3])
    ok = tf.strings.length(raw) == nbytes  # [N] strings, see check_features(batched=True)
    ok &= (shape.row_lengths() == 3) & tf.reduce_all(fixed_shape == list(spec.shape), 1)
    ok &= (dtype.row_lengths() == 1) & (tf.strings.reduce_join(dtype, 1) == spec.dtype)
    ok &= (bands.row_lengths() == spec.channels) & (
        tf.strings.reduce_join(bands, 1, separator="\n") == "\n".join(spec.bands)
    )
    return tf.logical_not(ok)


def first_line(err: Exception) -> str:
    """TensorFlow's error message without its op and function names, cut to one line."""
    if isinstance(err, UnicodeDecodeError):
        # TensorFlow fails to decode its own message when it quotes the record's bytes.
        return "TensorFlow's message quotes undecodable bytes of the record"
    text = getattr(err, "message", None) or str(err)
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*", "", text).strip()
    line = text.splitlines()[0] if text else type(err).__name__
    return line if len(line) <= 300 else line[:300] + "..."


def checked_pass(
    files: Sequence[str],
    spec: TileSpec,
    feats: dict[str, Any],
    count: Any,
    size: int,
    batch_size: int,
) -> np.ndarray:
    """Sum ``count(batch)`` over every record and check each record against ``spec``.

    One batched pass. Batches are cut per file (files are read in parallel) so
    that a bad record is named by its file and index. Every record is counted
    before the error is raised, so the error gives the full number of bad ones;
    only the few records it describes are read again.

    Args:
        files: TFRecord files.
        spec: The tile spec.
        feats: Features ``count`` needs (parsed with the checked ones).
        count: Parsed batch -> ``int64[size]``, summed over the batch.
        size: Length of the count vector.
        batch_size: Records per batch.

    Returns:
        ``int64[size]``, the sum.

    Raises:
        InputError: A record that does not fit ``spec`` (missing ``image/*``
            features, pixel bytes that do not match ``image/shape``, another
            shape, dtype or bands than the first record's), a record that is not
            a ``tf.train.Example`` of the right feature types, or a corrupt or
            truncated file; the message names the file (and the record and its
            ``tile/id`` where the record parses).
    """
    import tensorflow as tf

    feats = {**feats, **check_features(batched=True)}

    def per_file(path: Any) -> Any:
        batches = tf.data.TFRecordDataset(path).batch(batch_size).enumerate()
        return batches.map(lambda i, batch: (path, i * batch_size, batch))

    def run(path: Any, first: Any, batch: Any) -> Any:
        ex = tf.io.parse_example(batch, feats)
        return count(ex), path, first + tf.where(_bad_records(ex, spec))[:, 0]

    # The sums do not depend on the order; no step of the input pipeline trades
    # order for speed, so that op determinism (on CPU) changes nothing here.
    ds = tf.data.Dataset.from_tensor_slices(tf.constant(list(files), tf.string)).interleave(
        per_file, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    ds = ds.map(run, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    total = np.zeros(size, np.int64)
    first_bad: list[tuple[str, int]] = []  # the first _SHOWN, by file and index
    n_bad, bad_files = 0, set[str]()
    try:
        for counts, path, index in ds.as_numpy_iterator():
            total += counts
            if len(index):
                n_bad += len(index)
                bad_files.add(path.decode())
                first_bad = sorted(first_bad + [(path.decode(), int(i)) for i in index])
                del first_bad[_SHOWN:]
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError, UnicodeDecodeError) as err:
        raise InputError(_unreadable(files, feats, err)) from None
    if n_bad:
        shown = "\n".join(
            f"  {path} record {i} {_describe(path, i, spec)}" for path, i in first_bad
        )
        more = f"\n  ... and {n_bad - len(first_bad)} more" if n_bad > len(first_bad) else ""
        raise InputError(
            f"{n_bad} training record(s) in {len(bad_files)} file(s) are not "
            f"tiles of the first record's spec ({list(spec.shape)} {spec.dtype}, bands "
            f"{list(spec.bands)}); the tile and graph jobs dead-letter such records, so these "
            "files were altered or come from elsewhere: rebuild them with `minewatch tile` / "
            f"`minewatch graph` or leave them out of data.train:\n{shown}{more}"
        )
    return total


def _describe(path: str, index: int, spec: TileSpec) -> str:
    """``(tile/id ...): <problem>`` of record ``index`` of ``path`` (read again: error path)."""
    import tensorflow as tf

    record = next(iter(tf.data.TFRecordDataset(path).skip(index).take(1)))
    tile, problem = record_problem(tf.io.parse_single_example(record, check_features()), spec)
    return f"(tile/id {tile!r}): {problem}"


def record_problem(ex: dict[str, Any], spec: TileSpec | None) -> tuple[str, str]:
    """``(tile id, problem)`` of one record parsed with :func:`check_features`."""
    raw = [len(r) for r in ex[IMAGE_RAW].numpy()]
    dtype = [d.decode(errors="replace") for d in ex[IMAGE_DTYPE].numpy()]
    problem = _problem(
        len(raw),
        sum(raw),
        [int(v) for v in ex[IMAGE_SHAPE].numpy()],
        "".join(dtype),
        len(dtype),
        [b.decode(errors="replace") for b in ex[IMAGE_BANDS].numpy()],
        spec,
    )
    return ex[TILE_ID].numpy().decode(errors="replace"), problem


def _unreadable(files: Sequence[str], feats: dict[str, Any], err: Exception) -> str:
    """Name the file behind a batch that failed to read or parse (the error path only)."""
    import tensorflow as tf

    for path in files:
        try:
            for batch in tf.data.TFRecordDataset(path).batch(256):
                tf.io.parse_example(batch, feats)
        except tf.errors.DataLossError as e:
            return f"{path}: corrupt or truncated TFRecord file ({first_line(e)})"
        except (tf.errors.InvalidArgumentError, UnicodeDecodeError) as e:
            return (
                f"{path}: a record is not a tf.train.Example with the tile features' types "
                f"({first_line(e)})"
            )
    return f"{list(files)[:3]}: {first_line(err)}"
