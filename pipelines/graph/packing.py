"""Merge neighbours into a seed ``tf.train.Example``, as NSL's ``pack_nbrs`` does, without TF.

NSL's ``tools/pack_nbrs.py`` copies each labelled (seed) Example and adds:

- ``NL_num_nbrs``: int64, the number ``K`` of neighbours merged;
- for ``i`` in ``[0, K)``: ``NL_nbr_{i}_weight`` (float, the edge weight) and
  every feature ``f`` of the ``i``-th neighbour as ``NL_nbr_{i}_{f}``;

where the neighbours are the seed's out-edges whose target Example exists,
sorted by ``(weight, id)`` decreasing (ties: the larger id first) and cut to
``max_nbrs``. :func:`pack_example` produces the same Example.

It works on the serialized bytes, so Beam workers need not import TensorFlow:
protobuf merges two concatenated serializations of a message, and a map entry
seen later replaces an earlier one with the same key, so the merged Example is
the seed's bytes followed by an Example holding only the new features.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence

__all__ = [
    "NBR_PREFIX",
    "NUM_NBRS",
    "example_bytes",
    "feature_entries",
    "pack_example",
    "packed_size",
    "select_neighbours",
]

#: Prefix of neighbour features (``nsl.configs.GraphNeighborConfig.prefix``).
NBR_PREFIX = "NL_nbr_"
#: Name of the neighbour count feature.
NUM_NBRS = "NL_num_nbrs"

_LEN = 2  # wire type of length-delimited fields


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int64 as two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint in serialized Example")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """Yield ``(field, wire_type, value)`` of a serialized message."""
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _read_varint(data, pos)
            yield field, wire, value
        elif wire == _LEN:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise ValueError("truncated field in serialized Example")
            yield field, wire, data[pos : pos + length]
            pos += length
        elif wire == 1:
            yield field, wire, data[pos : pos + 8]
            pos += 8
        elif wire == 5:
            yield field, wire, data[pos : pos + 4]
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire} in serialized Example")


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | _LEN) + _varint(len(payload)) + payload


def feature_entries(record: bytes) -> list[tuple[str, bytes]]:
    """``(name, serialized tf.train.Feature)`` of each feature of an Example, last wins.

    Raises:
        ValueError: ``record`` is not a serialized Example.
    """
    entries: dict[str, bytes] = {}
    for field, wire, features in _fields(record):
        if field != 1 or wire != _LEN:
            continue
        assert isinstance(features, bytes)
        for f2, w2, entry in _fields(features):
            if f2 != 1 or w2 != _LEN:
                continue
            assert isinstance(entry, bytes)
            key, value = b"", b""
            for f3, w3, v in _fields(entry):
                if w3 == _LEN and f3 == 1:
                    assert isinstance(v, bytes)
                    key = v
                elif w3 == _LEN and f3 == 2:
                    assert isinstance(v, bytes)
                    value = v
            entries[key.decode()] = value
    return list(entries.items())


def example_bytes(entries: Iterable[tuple[str, bytes]]) -> bytes:
    """A serialized ``tf.train.Example`` holding ``entries`` (name, serialized Feature)."""
    features = b"".join(_ld(1, _ld(1, key.encode()) + _ld(2, value)) for key, value in entries)
    return _ld(1, features)


def _float_feature(value: float) -> bytes:
    return _ld(2, _ld(1, struct.pack("<f", value)))


def _int64_feature(value: int) -> bytes:
    return _ld(3, _ld(1, _varint(value)))


def select_neighbours(
    nbrs: Iterable[tuple[float, str, bytes]], max_nbrs: int | None
) -> list[tuple[float, str, bytes]]:
    """``pack_nbrs``'s choice: by ``(weight, id)`` decreasing, at most ``max_nbrs``."""
    ranked = sorted(nbrs, key=lambda n: (n[0], n[1]), reverse=True)
    return ranked if max_nbrs is None else ranked[:max_nbrs]


def pack_example(
    seed: bytes, nbrs: Sequence[tuple[float, str, bytes]], max_nbrs: int | None = None
) -> bytes:
    """Merge neighbours into a seed Example, as ``nsl.tools.pack_nbrs`` does.

    Args:
        seed: The serialized labelled Example.
        nbrs: ``(weight, id, serialized Example)`` of each out-edge neighbour that
            exists (``pack_nbrs`` drops targets without an Example first).
        max_nbrs: Most neighbours to merge; all when None.

    Returns:
        The serialized merged Example.
    """
    chosen = select_neighbours(nbrs, max_nbrs)
    entries: list[tuple[str, bytes]] = [(NUM_NBRS, _int64_feature(len(chosen)))]
    for i, (weight, _, record) in enumerate(chosen):
        prefix = f"{NBR_PREFIX}{i}_"
        entries.append((prefix + "weight", _float_feature(weight)))
        entries.extend((prefix + name, value) for name, value in feature_entries(record))
    return seed + example_bytes(entries)


def _ld_size(n: int) -> int:
    """Bytes of a length-delimited field of ``n`` payload bytes (field numbers below 16)."""
    return 1 + len(_varint(n)) + n


def _entry_size(key: str, value_bytes: int) -> int:
    return _ld_size(_ld_size(len(key.encode())) + _ld_size(value_bytes))


def packed_size(seed_bytes: int, nbrs: Sequence[Sequence[tuple[str, int]]]) -> int:
    """``len(pack_example(seed, chosen))`` from sizes alone, before any record is read.

    Args:
        seed_bytes: Length of the seed's serialized Example.
        nbrs: Per chosen neighbour, in packing order: ``(name, serialized Feature
            length)`` of each of its features (:func:`feature_entries`' order).
    """
    total = _entry_size(NUM_NBRS, len(_int64_feature(len(nbrs))))
    weight = len(_float_feature(0.0))
    for i, features in enumerate(nbrs):
        prefix = f"{NBR_PREFIX}{i}_"
        total += _entry_size(prefix + "weight", weight)
        total += sum(_entry_size(prefix + name, size) for name, size in features)
    return seed_bytes + _ld_size(total)
