"""TFRecord framing without TensorFlow.

A TFRecord file is a sequence of records, each ``uint64 length``,
``uint32 masked_crc32c(length)``, ``data``, ``uint32 masked_crc32c(data)``,
little-endian. Tile workers write it directly so that they never import
TensorFlow (hundreds of MB per process); the checksum is google-crc32c's C
implementation, several times faster than the pure-Python crcmod that Beam
falls back to.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import google_crc32c

__all__ = ["masked_crc32c", "read_records", "write_record"]

_MASK_DELTA = 0xA282EAD8
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")


def masked_crc32c(data: bytes) -> int:
    """Return TFRecord's masked CRC-32C of ``data``."""
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def write_record(stream: BinaryIO, data: bytes) -> int:
    """Append one record to ``stream``.

    Args:
        stream: A binary file opened for writing.
        data: The record payload, typically a serialized ``tf.train.Example``.

    Returns:
        The number of bytes written.
    """
    header = _U64.pack(len(data))
    stream.write(header)
    stream.write(_U32.pack(masked_crc32c(header)))
    stream.write(data)
    stream.write(_U32.pack(masked_crc32c(data)))
    return len(data) + 16


def read_records(stream: BinaryIO) -> Iterator[bytes]:
    """Yield each record of an uncompressed TFRecord stream, checking both CRCs.

    Args:
        stream: A binary file opened for reading.

    Yields:
        Record payloads, in file order.

    Raises:
        ValueError: The stream is truncated or a checksum does not match.
    """
    while True:
        header = stream.read(8)
        if not header:
            return
        if len(header) != 8:
            raise ValueError("truncated TFRecord: incomplete length header")
        (length_crc,) = _U32.unpack(stream.read(4) or b"\0\0\0\0")
        if length_crc != masked_crc32c(header):
            raise ValueError("corrupt TFRecord: length checksum mismatch")
        (length,) = _U64.unpack(header)
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) != length or len(footer) != 4:
            raise ValueError("truncated TFRecord: incomplete record")
        if _U32.unpack(footer)[0] != masked_crc32c(data):
            raise ValueError("corrupt TFRecord: data checksum mismatch")
        yield data
