"""decode_value: each way a value can be undeliverable, and its DLQ stage."""

from __future__ import annotations

import jsonschema
import pytest

from service.decoding import JsonBounds, decode_value
from service.errors import (
    DecodeError,
    InvalidJson,
    JsonTooDeep,
    MessageTooLarge,
    NotUtf8,
    NullValue,
    RecordError,
    SchemaViolation,
    TooManyKeys,
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
        assert issubclass(decode_cls, DecodeError) and issubclass(decode_cls, RecordError)
        assert decode_cls.stage == "decode"
    for validate_cls in (MessageTooLarge, SchemaViolation):
        assert issubclass(validate_cls, ValidationError) and issubclass(validate_cls, RecordError)
        assert validate_cls.stage == "validate"


@pytest.mark.parametrize(
    ("value", "bounds", "error"),
    [
        (b"[" * 5 + b"]" * 5, JsonBounds(max_depth=4), JsonTooDeep),
        (b'{"a": {"b": {"c": {"d": {}}}}}', JsonBounds(max_depth=4), JsonTooDeep),
        (b'[1, [2, [3, [4, {"e": 5}]]]]', JsonBounds(max_depth=4), JsonTooDeep),
        (b'{"a": 1, "b": 2, "c": 3}', JsonBounds(max_keys=2), TooManyKeys),
        (b'[{"a": 1}, {"b": 2}, {"c": 3}]', JsonBounds(max_keys=2), TooManyKeys),
        (b'{"a": {"b": {"c": 1}}}', JsonBounds(max_keys=2), TooManyKeys),
        (b"[" * 1100 + b"]" * 1100, JsonBounds(max_depth=10_000), InvalidJson),  # orjson's own limit
    ],
)
def test_values_over_a_shape_bound_are_validation_errors(value: bytes, bounds: JsonBounds,
                                                          error: type[RecordError]) -> None:
    with pytest.raises(error) as info:
        decode_value(make_record(0, value=value), 1_000_000, None, bounds)
    assert info.value.stage == ("decode" if error is InvalidJson else "validate")


@pytest.mark.parametrize(
    "value",
    [b"[" * 4 + b"]" * 4, b'{"a": {"b": {"c": {"d": 1}}}}', b'{"a": 1, "b": [1, 2, 3, 4, 5]}', b'"flat"', b"7"],
)
def test_values_at_the_bound_pass(value: bytes) -> None:
    assert decode_value(make_record(0, value=value), 1_000, None, JsonBounds(max_depth=4, max_keys=4)) is not None


def test_default_bounds_are_the_settings_defaults() -> None:
    from service.settings import Settings

    assert JsonBounds() == JsonBounds(Settings().max_json_depth, Settings().max_json_keys)
    with pytest.raises(JsonTooDeep):
        decode_value(make_record(0, value=b"[" * 33 + b"]" * 33), 1_000)
    decode_value(make_record(0, value=b"[" * 32 + b"]" * 32), 1_000)
