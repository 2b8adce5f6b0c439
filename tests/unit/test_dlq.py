"""DLQ record format: original headers kept first, exactly the contract's dlq.* headers added."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from service.dlq import (
    MAX_ERROR_MESSAGE_CHARS,
    DeadLetter,
    Failure,
    Selection,
    dlq_headers,
    failure_headers,
    identity,
    truncate,
)
from service.errors import LaunchRejected, SchemaViolation
from tests.unit.factories import make_record

CONTRACT_HEADERS = [
    "dlq.topic", "dlq.partition", "dlq.offset", "dlq.stage", "dlq.error.class",
    "dlq.error.message", "dlq.attempts", "dlq.failed_at",
]
ORIGINAL = [("trace-id", b"abc"), ("bin", b"\x00\xff\xfe"), ("trace-id", b"dup"), ("empty", b"")]


def record():  # type: ignore[no-untyped-def]
    return make_record(42, topic="orders", partition=3, key=b"\x01k", value=b'{"x": 1}', headers=ORIGINAL)


def as_dict(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    return {k: v.decode() for k, v in headers if k.startswith("dlq.")}


def test_original_headers_first_then_exactly_the_contract_headers() -> None:
    now = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    failure = Failure("validate", "SchemaViolation", "value fails the route schema at id", attempts=1)
    headers = dlq_headers(record(), failure, now=now)
    assert headers[: len(ORIGINAL)] == ORIGINAL
    added = headers[len(ORIGINAL):]
    assert [k for k, _ in added] == CONTRACT_HEADERS
    assert all(isinstance(v, bytes) for _, v in headers)
    assert as_dict(headers) == {
        "dlq.topic": "orders",
        "dlq.partition": "3",
        "dlq.offset": "42",
        "dlq.stage": "validate",
        "dlq.error.class": "SchemaViolation",
        "dlq.error.message": "value fails the route schema at id",
        "dlq.attempts": "1",
        "dlq.failed_at": "2024-05-06T07:08:09.123Z",
    }


def test_run_id_only_when_given() -> None:
    with_run = dlq_headers(record(), Failure("run", "RunFailure", "run failed", run_id="r-123"))
    assert [k for k, _ in with_run[len(ORIGINAL):]] == [*CONTRACT_HEADERS, "dlq.run_id"]
    assert as_dict(with_run)["dlq.run_id"] == "r-123"
    without = dlq_headers(record(), Failure("decode", "InvalidJson", "bad"))
    assert "dlq.run_id" not in as_dict(without)


def test_route_only_when_routed() -> None:
    routed = dlq_headers(record(), Failure("validate", "SchemaViolation", "bad", route="orders-created"))
    assert [k for k, _ in routed[len(ORIGINAL):]] == [*CONTRACT_HEADERS, "dlq.route"]
    assert as_dict(routed)["dlq.route"] == "orders-created"
    assert "dlq.route" not in as_dict(dlq_headers(record(), Failure("decode", "InvalidJson", "bad")))


@pytest.mark.parametrize("stage", ["decode", "validate", "route", "launch", "run", "process"])
def test_each_contract_stage(stage: str) -> None:
    assert as_dict(dlq_headers(record(), Failure(stage, "E", "m")))["dlq.stage"] == stage


def test_unknown_stage_is_refused() -> None:
    with pytest.raises(ValueError, match="stage"):
        dlq_headers(record(), Failure("later", "E", "m"))


def test_failed_at_is_iso8601_utc_now() -> None:
    before = datetime.now(UTC)
    failed_at = as_dict(dlq_headers(record(), Failure("decode", "E", "m")))["dlq.failed_at"]
    after = datetime.now(UTC)
    assert failed_at.endswith("Z")
    parsed = datetime.fromisoformat(failed_at.replace("Z", "+00:00"))
    assert parsed.utcoffset() == timedelta(0)
    assert before - timedelta(milliseconds=1) <= parsed <= after


def test_error_message_is_truncated_to_the_bound() -> None:
    long = "é" * 5000
    message = as_dict(dlq_headers(record(), Failure("decode", "E", long)))["dlq.error.message"]
    assert len(message) == MAX_ERROR_MESSAGE_CHARS
    assert message.endswith("…")
    assert message[:-1] == long[: MAX_ERROR_MESSAGE_CHARS - 1]


def test_truncate_keeps_messages_at_the_bound() -> None:
    exact = "x" * MAX_ERROR_MESSAGE_CHARS
    assert truncate(exact) == exact
    assert truncate(exact + "y") == "x" * (MAX_ERROR_MESSAGE_CHARS - 1) + "…"
    assert truncate("short", limit=3) == "sh…"


def test_earlier_dlq_headers_are_replaced_not_duplicated() -> None:
    first = dlq_headers(record(), Failure("launch", "PipelineNotFoundError", "old", attempts=1))
    replayed = make_record(42, topic="orders", partition=3, headers=first)
    second = dlq_headers(replayed, Failure("run", "RunFailure", "new", attempts=2, run_id="r-9"))
    assert [k for k, _ in second] == [k for k, _ in ORIGINAL] + CONTRACT_HEADERS + ["dlq.run_id"]
    assert as_dict(second)["dlq.error.message"] == "new"
    assert as_dict(second)["dlq.attempts"] == "2"


def test_failure_from_exception() -> None:
    rejected = Failure.from_exception("launch", LaunchRejected("PipelineNotFoundError", "no job x"), attempts=3)
    assert rejected == Failure("launch", "PipelineNotFoundError", "PipelineNotFoundError: no job x", 3, None)
    violation = Failure.from_exception("validate", SchemaViolation("at id: bad"))
    assert (violation.error_class, violation.error_message) == ("SchemaViolation", "at id: bad")


def test_dead_letter_parse_round_trips() -> None:
    original = record()
    failure = Failure("run", "RunFailure", "step failed", attempts=2, run_id="run-1")
    headers = dlq_headers(original, failure, now=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    letter = DeadLetter.parse(original.key, original.value, original.timestamp_ms, headers, dlq_offset=7)
    assert letter.key == original.key
    assert letter.value == original.value
    assert letter.timestamp_ms == original.timestamp_ms
    assert letter.headers == ORIGINAL
    assert letter.origin == ("orders", 3, 42)
    assert letter.stage == "run"
    assert letter.dlq_offset == 7
    assert letter.dlq == {
        "dlq.topic": "orders", "dlq.partition": "3", "dlq.offset": "42", "dlq.stage": "run",
        "dlq.error.class": "RunFailure", "dlq.error.message": "step failed", "dlq.attempts": "2",
        "dlq.failed_at": "2024-01-02T03:04:05.000Z", "dlq.run_id": "run-1",
    }
    again = dlq_headers(make_record(42, topic="orders", partition=3, headers=letter.headers), failure,
                        now=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert again == headers


def test_dead_letter_without_dlq_headers() -> None:
    letter = DeadLetter.parse(None, None, None, [("a", b"1")])
    assert letter.stage == ""
    assert letter.dlq == {}
    assert letter.headers == [("a", b"1")]


def test_a_selection_takes_each_dead_letter_once_and_only_those_failed_since() -> None:
    def letter(offset: int, failed_at: str, dlq_offset: int) -> DeadLetter:
        headers = failure_headers([], "orders", 0, offset, Failure("validate", "SchemaViolation", "bad"),
                                  datetime.fromisoformat(failed_at))
        return DeadLetter.parse(None, b"{}", 0, headers, dlq_offset)

    letters = [letter(1, "2024-05-01T11:00:00+00:00", 0), letter(2, "2024-05-01T12:00:00+00:00", 1),
               letter(2, "2024-05-01T12:05:00+00:00", 2), DeadLetter.parse(None, b"not a dead letter", 0, [], 3)]
    selection = Selection(since_ms=int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() * 1000))

    assert [item.dlq_offset for item in letters if selection.takes(item)] == [1]
    assert letters[1].failed_at_ms == int(datetime(2024, 5, 1, 12, tzinfo=UTC).timestamp() * 1000)
    assert identity(letters[1]) == "orders/0/2/validate"


def test_inspect_names_the_writer_schema_of_a_framed_value_that_did_not_decode() -> None:
    import struct

    from service.dlq import DeadLetter, describe

    def letter(value: bytes, error_class: str, headers: list[tuple[str, bytes]] | None = None) -> DeadLetter:
        dlq = {"dlq.topic": "payments", "dlq.partition": "0", "dlq.offset": "5", "dlq.stage": "decode",
               "dlq.error.class": error_class, "dlq.error.message": "no"}
        return DeadLetter(None, value, 1, [*(headers or []), *((k, v.encode()) for k, v in dlq.items())], dlq, 3)

    assert describe(letter(b"\x00" + struct.pack(">I", 987654) + b"\x02", "UnknownSchema")).endswith(
        " schema=987654")
    guid = bytes(range(16))
    assert describe(letter(b"\x02", "UndecodableValue", [("__value_schema_id", b"\x01" + guid)])).endswith(
        " schema=guid 00010203-0405-0607-0809-0a0b0c0d0e0f")
    assert "schema=" not in describe(letter(b"{", "BadFraming"))
    assert "schema=" not in describe(letter(b"\x00\x00\x00\x00\x01", "InvalidJson"))
    from service.dlq import schema_ref

    assert schema_ref(letter(b"\x00" + struct.pack(">I", 7) + b"\x02", "UndecodableValue")) == "7"
    assert schema_ref(letter(b"{", "BadFraming")) is None


def test_inspect_names_the_key_s_writer_schema_when_a_framed_key_did_not_decode() -> None:
    """A key's failure says "key" first (`key_format`): the schema named is the key's, as `key_schema`, from
    its prefix or its `__key_schema_id` header, never the value's."""
    import struct

    import orjson

    from service.cli.dead_letters import _as_json
    from service.dlq import DeadLetter, describe, schema_field, schema_ref

    value = b"\x00" + struct.pack(">I", 1) + b"\x02"  # a framed value, whose schema is not the one to name

    def letter(key: bytes, message: str, headers: list[tuple[str, bytes]] | None = None) -> DeadLetter:
        dlq = {"dlq.topic": "payments", "dlq.partition": "0", "dlq.offset": "5", "dlq.stage": "decode",
               "dlq.error.class": "UnknownSchema", "dlq.error.message": message}
        return DeadLetter(key, value, 1, [*(headers or []), *((k, v.encode()) for k, v in dlq.items())], dlq, 3)

    by_id = letter(b"\x00" + struct.pack(">I", 42) + b"\x02", "key schema 42 is not in the schema registry")
    assert (schema_ref(by_id), schema_field(by_id)) == ("42", "key_schema")
    assert describe(by_id).endswith(" key_schema=42")
    assert orjson.loads(_as_json(by_id))["key_schema"] == "42"
    guid = bytes(range(16))
    in_header = letter(b"\x02", "key does not decode with Avro schema guid 00010203-0405-0607-0809-0a0b0c0d0e0f",
                       [("__key_schema_id", b"\x01" + guid), ("__value_schema_id", b"\x00\x00\x00\x00\x09")])
    assert describe(in_header).endswith(" key_schema=guid 00010203-0405-0607-0809-0a0b0c0d0e0f")
    the_value = letter(b"k", "schema 1 is not in the schema registry")
    assert (schema_ref(the_value), schema_field(the_value)) == ("1", "schema")
