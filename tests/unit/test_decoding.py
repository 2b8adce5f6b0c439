"""decode_value: each way a value can be undeliverable, and its DLQ stage."""

from __future__ import annotations

import jsonschema
import pytest

from service.decoding import decode_value
from service.errors import (
    DecodeError,
    InvalidJson,
    MessageTooLarge,
    NotUtf8,
    NullValue,
    PermanentError,
    SchemaViolation,
    ValidationError,
)
from tests.unit.factories import make_record

SCHEMA = {
    "type": "object",
    "required": ["id", "items"],
    "properties": {
        "id": {"type": "integer"},
        "items": {
            "type": "array",
            "items": {"type": "object", "properties": {"price": {"type": "number", "minimum": 0}}},
        },
    },
}


def validator() -> jsonschema.protocols.Validator:
    return jsonschema.Draft202012Validator(SCHEMA)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b"[1, 2]", [1, 2]),
        (b'"text"', "text"),
        (b"null", None),
        ('{"name": "Zoë ✓"}'.encode(), {"name": "Zoë ✓"}),
    ],
)
def test_valid_json_decodes(value: bytes, expected: object) -> None:
    assert decode_value(make_record(0, value=value), 1000) == expected


def test_valid_against_schema() -> None:
    value = b'{"id": 1, "items": [{"price": 2.5}]}'
    assert decode_value(make_record(0, value=value), 1000, validator())["id"] == 1


def test_null_value() -> None:
    with pytest.raises(NullValue) as info:
        decode_value(make_record(0, value=None), 1000)
    assert info.value.stage == "decode"


@pytest.mark.parametrize("value", [b"\xff\xfe", b'{"a": "\xc3"}', b"\xed\xa0\x80"])
def test_not_utf8(value: bytes) -> None:
    with pytest.raises(NotUtf8) as info:
        decode_value(make_record(0, value=value), 1000)
    assert info.value.stage == "decode"


@pytest.mark.parametrize("value", [b"", b"{", b"not json", b"{'a': 1}", b"NaN", b"[1,]", b"1 2"])
def test_invalid_json(value: bytes) -> None:
    with pytest.raises(InvalidJson) as info:
        decode_value(make_record(0, value=value), 1000)
    assert info.value.stage == "decode"


def test_message_too_large() -> None:
    with pytest.raises(MessageTooLarge) as info:
        decode_value(make_record(0, value=b'"' + b"x" * 100 + b'"'), 50)
    assert info.value.stage == "validate"
    assert "102" in str(info.value) and "50" in str(info.value)


def test_size_bound_counts_the_key_and_is_inclusive() -> None:
    assert decode_value(make_record(0, key=b"kk", value=b"[1]"), 5) == [1]
    with pytest.raises(MessageTooLarge):
        decode_value(make_record(0, key=b"kkk", value=b"[1]"), 5)


def test_too_large_is_checked_before_decoding() -> None:
    with pytest.raises(MessageTooLarge):
        decode_value(make_record(0, value=b"\xff" * 20), 10)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        (b'{"id": "one", "items": []}', "id"),
        (b'{"id": 1, "items": [{"price": 1}, {"price": -2}]}', "items/1/price"),
        (b'{"id": 1}', "(root)"),
        (b"[]", "(root)"),
    ],
)
def test_schema_violation_names_the_path(value: bytes, path: str) -> None:
    with pytest.raises(SchemaViolation) as info:
        decode_value(make_record(0, value=value), 1000, validator())
    assert info.value.stage == "validate"
    assert f"at {path}:" in str(info.value)


def test_hierarchy_and_stages() -> None:
    for decode_cls in (NullValue, NotUtf8, InvalidJson):
        assert issubclass(decode_cls, DecodeError) and issubclass(decode_cls, PermanentError)
        assert decode_cls.stage == "decode"
    for validate_cls in (MessageTooLarge, SchemaViolation):
        assert issubclass(validate_cls, ValidationError) and issubclass(validate_cls, PermanentError)
        assert validate_cls.stage == "validate"
