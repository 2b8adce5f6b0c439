"""Decode and validate one record's value, or say exactly why not."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson

from service.batching import Record
from service.errors import InvalidJson, MessageTooLarge, NotUtf8, NullValue, SchemaViolation


def decode_value(record: Record, max_message_bytes: int,
                 validator: jsonschema.protocols.Validator | None = None) -> Any:
    """The record's value as JSON, checked against its bounds and schema."""
    if record.size > max_message_bytes:
        raise MessageTooLarge(f"record is {record.size} bytes, over the bound of {max_message_bytes}")
    if record.value is None:
        raise NullValue("record has a null value")
    try:
        record.value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise NotUtf8(f"value is not UTF-8: {exc.reason} at byte {exc.start}") from None
    try:
        value = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise InvalidJson(f"value is not JSON: {exc}") from None
    if validator is not None:
        error = jsonschema.exceptions.best_match(validator.iter_errors(value))
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise SchemaViolation(f"value fails the route schema at {path}: {error.message}")
    return value
