"""TensorBoard scalar event files written without TensorFlow.

TensorBoard reads `events.out.tfevents.*` files: a TFRecord stream whose records are serialized
`tensorflow.Event` protocol buffers. We only need scalars, so rather than depend on TensorFlow (or
on generated protobuf classes) we encode the few fields by hand:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

TFRecord framing (one record): `uint64 length`, `uint32 masked_crc32c(length bytes)`, `data`,
`uint32 masked_crc32c(data)`, all little-endian. Readers verify both checksums and drop the
rest of a file after a bad one, so the CRC must be exactly right.
"""

from __future__ import annotations

import math
import os
import socket
import struct
import time
from collections.abc import Mapping
from pathlib import Path

# The first record of every event file; readers use it to recognise the format version.
FILE_VERSION = "brain.Event:2"

_UINT32 = 0xFFFFFFFF
_UINT64 = (1 << 64) - 1
# CRC-32C (Castagnoli) polynomial 0x1EDC6F41, bit-reversed because the CRC is computed LSB first.
_CRC32C_POLYNOMIAL_REVERSED = 0x82F63B78
# The rotate-and-add mask from the TFRecord format, so a CRC of data containing CRCs stays strong.
_CRC_MASK_DELTA = 0xA282EAD8

# Protobuf wire types.
_VARINT = 0
_FIXED64 = 1
_LENGTH_DELIMITED = 2
_FIXED32 = 5


def _crc32c_table() -> tuple[int, ...]:
    """CRC of every byte value, so the main loop processes a byte per table lookup."""
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLYNOMIAL_REVERSED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of `data`, as an unsigned 32-bit int (`crc32c(b"123456789")` is
    0xE3069283). Pure Python: event records are a few hundred bytes, so speed does not matter."""
    crc = _UINT32
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ _UINT32


def masked_crc32c(data: bytes) -> int:
    """The checksum TFRecord stores: CRC-32C rotated right by 15 bits plus a constant (mod 2^32)."""
    crc = crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & _UINT32) + _CRC_MASK_DELTA) & _UINT32


def tfrecord(data: bytes) -> bytes:
    """`data` framed as one TFRecord: length, masked CRC of the length, data, masked CRC of data."""
    length = struct.pack("<Q", len(data))
    return (length + struct.pack("<I", masked_crc32c(length))
            + data + struct.pack("<I", masked_crc32c(data)))


def _varint(value: int) -> bytes:
    """Base-128 varint; negative numbers are encoded as their 64-bit two's complement."""
    value &= _UINT64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field_key(field_number: int, wire_type: int) -> bytes:
    return _varint((field_number << 3) | wire_type)


def _length_delimited_field(field_number: int, payload: bytes) -> bytes:
    return _field_key(field_number, _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def _summary_value(tag: str, simple_value: float) -> bytes:
    """`Summary.Value{tag, simple_value}`; the value is stored as float32, as TensorBoard does."""
    return (_length_delimited_field(1, tag.encode("utf-8"))
            + _field_key(2, _FIXED32) + struct.pack("<f", simple_value))


def encode_event(wall_time: float, step: int | None = None, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
    """A serialized `Event` holding any of: the file-version marker, and one scalar per tag.

    Float32 overflow (|x| > 3.4e38) is stored as +-inf rather than raising, like a float32 cast.
    """
    event = _field_key(1, _FIXED64) + struct.pack("<d", wall_time)
    if step is not None:
        event += _field_key(2, _VARINT) + _varint(step)
    if file_version is not None:
        event += _length_delimited_field(3, file_version.encode("utf-8"))
    if scalars:
        summary = b"".join(
            _length_delimited_field(1, _summary_value(tag, _as_float32_range(value)))
            for tag, value in scalars.items())
        event += _length_delimited_field(5, summary)
    return event


def _as_float32_range(value: float) -> float:
    """`value` clipped to +-inf outside float32's range (struct.pack('<f') raises instead)."""
    if math.isfinite(value) and abs(value) > 3.4028234663852886e38:
        return math.copysign(math.inf, value)
    return value


class EventFileWriter:
    """Appends scalar events to one new event file in `logdir` (one directory per run/split).

    The name follows TensorBoard's `events.out.tfevents.<unix seconds>.<host>.<pid>` convention;
    a numeric suffix is added when two writers start in the same second in the same process, so
    neither overwrites the other. Every write is flushed, so a crash loses at most the record
    being written (readers skip a truncated last record).
    """

    def __init__(self, logdir: str | os.PathLike[str]):
        self.logdir = Path(logdir)
        self.logdir.mkdir(parents=True, exist_ok=True)
        now = time.time()
        base = f"events.out.tfevents.{int(now):010d}.{socket.gethostname()}.{os.getpid()}"
        self.path = self.logdir / base
        attempt = 0
        while True:
            try:
                self._file = open(self.path, "xb")
                break
            except FileExistsError:
                attempt += 1
                self.path = self.logdir / f"{base}.{attempt}"
        self._write_record(encode_event(now, file_version=FILE_VERSION))

    def add_scalars(self, step: int, scalars: Mapping[str, float],
                    wall_time: float | None = None) -> None:
        """One event at `step` holding every `tag -> value` of `scalars`, flushed to disk."""
        if self._file.closed:
            raise ValueError(f"EventFileWriter for {self.path} is closed; create a new one")
        wall_time = time.time() if wall_time is None else wall_time
        self._write_record(encode_event(wall_time, step=step, scalars=scalars))

    def _write_record(self, event: bytes) -> None:
        self._file.write(tfrecord(event))
        self._file.flush()

    def flush(self) -> None:
        if not self._file.closed:
            self._file.flush()

    def close(self) -> None:
        self._file.close()
