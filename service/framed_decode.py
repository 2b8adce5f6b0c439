"""A record's framed value and key decoded with their writer schemas from the schema registry: the one decode
step the worker (`service.delivery.framed`), `routes test` (`service.route_preview`) and the code location
(`dagster_project.framed`) share. Imports no delivery machinery, so the code location can use it.

A key that does not decode makes the record unreadable for every route of it (`service.routing`), so its value
is then left undecoded: no registry look-up is spent on a record that goes to the DLQ anyway.
"""

from __future__ import annotations

from service.errors import RecordError
from service.records import Record
from service.registry import Resolved, SchemaRegistry
from service.wire import (
    JSON,
    KEY_SCHEMA_ID_HEADER,
    PROTOBUF,
    Decoded,
    SchemaRef,
    decode_framed,
    read_frame,
    schema_id_header,
)


async def decode_record(registry: SchemaRegistry, fmt: str, record: Record, key: bool = False) -> Decoded | RecordError:
    """`record`'s value (or `key`) decoded in format `fmt` with its writer schema (`Decoded`, with the
    schema's id and subject), or the RecordError why not (a key's says "key" first); registry faults are
    raised."""
    try:
        if key:
            frame = read_frame(record.key, schema_id_header(record.headers, KEY_SCHEMA_ID_HEADER),
                               protobuf=fmt == PROTOBUF, what="key")
        else:
            frame = read_frame(record.value, schema_id_header(record.headers), protobuf=fmt == PROTOBUF)
        resolved = registry.known(frame.ref) or await _resolve(registry, frame.ref, key)
        decoded = decode_framed(resolved.schema, frame, fmt)
    except RecordError as exc:
        return exc
    decoded.schema_id, decoded.subject = resolved.schema_id, resolved.subject
    return decoded


async def _resolve(registry: SchemaRegistry, ref: SchemaRef, key: bool) -> Resolved:
    try:
        return await registry.resolve(ref)
    except RecordError as exc:  # the registry's words name the schema, not which part named it
        if not key:
            raise
        raise type(exc)(f"key {exc}") from None


async def decode_formats(registry: SchemaRegistry, value_format: str, key_format: str, record: Record) -> None:
    """Set `record.decoded_key` (a framed `key_format`) and `record.decoded` (a framed `value_format`) to what
    `decode_record` says, each only if not set yet (a retry after a registry fault resumes where it stopped);
    the value is left alone when the key did not decode."""
    if key_format != JSON and record.decoded_key is None:
        record.decoded_key = await decode_record(registry, key_format, record, key=True)
    if value_format != JSON and record.decoded is None and not isinstance(record.decoded_key, RecordError):
        record.decoded = await decode_record(registry, value_format, record)
