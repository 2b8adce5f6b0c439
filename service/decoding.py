"""Decode and validate one record's value, or say exactly why not.

Checks run cheapest first and each bound is checked before the work it
protects: the byte size before parsing, nesting depth and key count (walked
iteratively, stopping at the first excess) before the JSON Schema, which
recurses. orjson itself refuses nesting deeper than 1024 (`InvalidJson`).
The schema check is the compiled verdict of `service.schemas`; only a
rejected value pays for `jsonschema`'s explanation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson

from service.errors import (
    InvalidJson,
    JsonTooDeep,
    MessageTooLarge,
    NotUtf8,
    NullValue,
    RecordError,
    SchemaViolation,
    TooManyKeys,
)
from service.records import Record
from service.schemas import SchemaValidator, first_error


@dataclass(frozen=True)
class JsonBounds:
    """How deep and how wide a decoded value may be (`KAFKA_DAGSTER_MAX_JSON_DEPTH`, `..._MAX_JSON_KEYS`)."""

    max_depth: int = 32
    max_keys: int = 10_000


DEFAULT_BOUNDS = JsonBounds()


def decode_value(record: Record, max_message_bytes: int,
                 validator: SchemaValidator | None = None,
                 bounds: JsonBounds | None = None) -> Any:
    """The record's value as JSON, checked against its bounds and schema."""
    value = parse_value(record, max_message_bytes, bounds)
    if validator is not None:
        check_schema(validator, value)
    return value


def parse_value(record: Record, max_message_bytes: int, bounds: JsonBounds | None = None) -> Any:
    """The record's value as JSON, checked against its size and shape bounds (not a schema); a framed key
    that did not decode (`key_format`) makes the record unreadable too, and raises its RecordError.

    Called for every record a route reads, so written for speed: no calls but the parse and the byte
    counts for a valid value."""
    decoded_key = record.decoded_key
    if decoded_key is not None and isinstance(decoded_key, RecordError):
        raise decoded_key
    raw, key = record.value, record.key
    size = (0 if raw is None else len(raw)) + (0 if key is None else len(key))  # `record.size`
    if size > max_message_bytes:
        raise MessageTooLarge(f"record is {size} bytes, over the bound of {max_message_bytes}")
    if record.decoded is not None:  # a framed value, decoded with its writer schema (service.wire)
        return _framed_value(record.decoded, bounds)
    if raw is None:
        raise NullValue("record has a null value")
    try:
        value = orjson.loads(raw)  # refuses bytes that are not UTF-8 too
    except orjson.JSONDecodeError as exc:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as bad:
            raise NotUtf8(f"value is not UTF-8: {bad.reason} at byte {bad.start}") from None
        raise InvalidJson(f"value is not JSON: {exc}") from None
    bounds = bounds or DEFAULT_BOUNDS
    # The raw text alone proves most values within bounds, so the walk is skipped: every nesting level
    # opens with `{` or `[`, and every object key takes at least four bytes (`"":0`) and is followed by
    # `:`; so the byte counts (done in C, string contents included) are upper bounds.
    if (raw.count(b"{") + raw.count(b"[") > bounds.max_depth
            or (len(raw) >= 4 * bounds.max_keys and raw.count(b":") > bounds.max_keys)):
        check_shape(value, bounds)
    return value


def _framed_value(decoded: Any, bounds: JsonBounds | None) -> Any:
    if isinstance(decoded, RecordError):
        raise decoded
    check_shape(decoded.value, bounds or DEFAULT_BOUNDS)
    return decoded.value


def check_schema(validator: SchemaValidator, value: Any) -> None:
    """Raise `SchemaViolation` naming the JSON path of the first error when `value` fails the schema."""
    error = first_error(validator, value)
    if error is not None:
        path = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise SchemaViolation(f"value fails the route schema at {path}: {error.message}")


def check_shape(value: Any, bounds: JsonBounds) -> None:
    """Raise `JsonTooDeep` or `TooManyKeys` when `value` is over a bound; no recursion."""
    keys = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
            keys += len(node)
            if keys > bounds.max_keys:
                raise TooManyKeys(f"value has more than {bounds.max_keys} object keys")
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > bounds.max_depth:
            raise JsonTooDeep(f"value nests deeper than {bounds.max_depth} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
