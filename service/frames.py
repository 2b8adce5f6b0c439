"""The Confluent wire format's frame: which writer schema a value names, and where its encoding starts.

A framed value starts with a magic byte: 0 and a 4-byte big-endian schema id,
or 1 and a 16-byte schema GUID; or it has no frame and the id is in the
record's `__value_schema_id` (`__key_schema_id`) header, framed the same way.
A Protobuf value adds, after the id (in the payload or the header, wherever
the id is), the message-index array: zigzag varints, a count then the path of
the message type in the schema's file (a count of 0 means the first message).
Standard library only, so the dead-letter format (`service.dlq`) can name a
dead letter's schema; the values themselves are decoded by `service.wire`.
"""

from __future__ import annotations

import functools
import io
import struct
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from service.errors import BadFraming

VALUE_SCHEMA_ID_HEADER = "__value_schema_id"
KEY_SCHEMA_ID_HEADER = "__key_schema_id"
MAGIC_ID = 0
MAGIC_GUID = 1
MAX_MESSAGE_INDEXES = 100  # deeper than any schema nests its messages


@dataclass(frozen=True, slots=True)
class SchemaRef:
    """Which schema a value was written with: its registry id, or its GUID."""

    id: int | None = None
    guid: uuid.UUID | None = None

    def __str__(self) -> str:
        return str(self.id) if self.id is not None else f"guid {self.guid}"


@functools.lru_cache(maxsize=4096)
def ref_of_id(schema_id: int) -> SchemaRef:
    """The `SchemaRef` of a registry id, made once: a topic's records name few ids, and each is read per record."""
    return SchemaRef(id=schema_id)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs ~0.3 µs more, paid per record
class Frame:
    """A framed value (or key: `what`): its writer schema's ref, the Protobuf message indexes, and the encoded
    bytes."""

    ref: SchemaRef
    payload: bytes
    indexes: tuple[int, ...] = ()
    what: str = "value"  # which part of the record: "value" or "key" (how a failure to decode it is worded)


def read_frame(data: bytes | None, header: bytes | None = None, protobuf: bool = False,
               what: str = "value") -> Frame:
    """The frame of `data` (the record's value, or its key: `what`), or of `header` (its `__value_schema_id`
    or `__key_schema_id` header) when there is one."""
    if data is None:
        raise BadFraming(f"record has a null {what} where a framed {what} is required")
    if header is not None:
        where = "the schema id header" if what == "value" else f"the {what}'s schema id header"
        ref, indexes, _ = _read_id(io.BytesIO(header), protobuf, where)
        return Frame(ref, data, indexes, what)
    if not protobuf and len(data) >= 5 and data[0] == MAGIC_ID:  # the common case, without a stream
        return Frame(ref_of_id(int.from_bytes(data[1:5], "big")), data[5:], (), what)
    buf = io.BytesIO(data)
    ref, indexes, offset = _read_id(buf, protobuf, f"the {what}")
    return Frame(ref, data[offset:], indexes, what)


def frame_prefix(schema_id: int, indexes: Sequence[int] | None = None) -> bytes:
    """What a producer puts in front of an encoded value: magic byte 0, the 4-byte id, and for Protobuf
    (`indexes` given) the message-index array ([0] as the single byte 0, as the Confluent clients write it)."""
    prefix = bytes([MAGIC_ID]) + struct.pack(">I", schema_id)
    if indexes is None:
        return prefix
    if list(indexes) == [0]:
        return prefix + b"\x00"
    return prefix + b"".join(_zigzag(i) for i in (len(indexes), *indexes))


def _zigzag(value: int) -> bytes:
    value = (value << 1) ^ (value >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def schema_id_header(headers: Sequence[tuple[str, bytes]], name: str = VALUE_SCHEMA_ID_HEADER) -> bytes | None:
    """The value of the record's schema id header `name`, or None."""
    for key, value in headers:
        if key == name:
            return value
    return None


def _read_id(buf: io.BytesIO, protobuf: bool, where: str) -> tuple[SchemaRef, tuple[int, ...], int]:
    magic = buf.read(1)
    if magic == bytes([MAGIC_ID]):
        raw = buf.read(4)
        if len(raw) != 4:
            raise BadFraming(f"{where} ends inside its 4-byte schema id")
        ref = ref_of_id(struct.unpack(">I", raw)[0])
    elif magic == bytes([MAGIC_GUID]):
        raw = buf.read(16)
        if len(raw) != 16:
            raise BadFraming(f"{where} ends inside its 16-byte schema GUID")
        ref = SchemaRef(guid=uuid.UUID(bytes=raw))
    else:
        shown = f"0x{magic.hex()}" if magic else "nothing"
        raise BadFraming(f"{where} starts with {shown}, not the wire format's magic byte 0 or 1")
    indexes = _read_indexes(buf, where) if protobuf else ()
    return ref, indexes, buf.tell()


def _read_indexes(buf: io.BytesIO, where: str) -> tuple[int, ...]:
    count = _read_zigzag(buf, where)
    if count < 0 or count > MAX_MESSAGE_INDEXES:
        raise BadFraming(f"{where} has a message-index array of {count} entries")
    if count == 0:
        return (0,)
    return tuple(_read_zigzag(buf, where) for _ in range(count))


def _read_zigzag(buf: io.BytesIO, where: str) -> int:
    value = shift = 0
    while True:
        byte = buf.read(1)
        if not byte:
            raise BadFraming(f"{where} ends inside its Protobuf message-index array")
        value |= (byte[0] & 0x7F) << shift
        shift += 7
        if not byte[0] & 0x80:
            return (value >> 1) ^ -(value & 1)
        if shift > 63:
            raise BadFraming(f"{where} has a message index longer than 64 bits")
