"""The command line's option checks and pacing, without a broker (tests/test_cli.py runs it for real)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import pytest
from click.testing import CliRunner

from service import cli
from service.cli import KeyedValue, _chunks, main, paced, record_key


@pytest.mark.parametrize("args", [["dlq", "replay", "--rate", "0"], ["dlq", "replay", "--rate", "-5"],
                                  ["produce", "--topic", "t", "--rate", "-1"]])
def test_a_rate_that_cannot_pace_is_a_usage_error(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 2
    assert "--rate" in result.output


async def test_paced_items_keep_their_order_and_rate() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    items = [item async for item in paced(range(5), rate=100.0)]

    assert items == [0, 1, 2, 3, 4]
    assert loop.time() - started >= 0.04  # the 5th item 4 / 100 s after the first


def test_unpaced_values_go_out_in_chunks() -> None:
    chunks = list(_chunks(((None, bytes([n])) for n in range(5)), 2))

    assert [len(chunk) for chunk in chunks] == [2, 2, 1]
    assert chunks[0] == [(None, b"\x00"), (None, b"\x01")]


# -- produce --key-field and --header --------------------------------------------------


@pytest.fixture
def produced(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """What `produce` hands to the broker-facing `_produce`, one dict per invocation, instead of sending it."""
    calls: list[dict[str, Any]] = []

    async def fake(bootstrap_servers: str, topic: str, records: Iterable[KeyedValue], rate: float,
                   partitions: int, security: object, headers: list[tuple[str, bytes]] | None = None) -> int:
        calls.append({"topic": topic, "records": list(records), "headers": headers})
        return len(calls[-1]["records"])

    monkeypatch.setattr(cli, "_produce", fake)
    return calls


@pytest.mark.parametrize(("value", "key"), [
    ({"customer": "customer-007"}, b"customer-007"), ({"customer": "é"}, "é".encode()), ({"customer": ""}, b""),
    ({"customer": 7}, b"7"), ({"customer": 2.5}, b"2.5"), ({"customer": True}, b"true"),
    ({"customer": {"id": 1, "eu": True}}, b'{"id":1,"eu":true}'), ({"customer": [1, "a"]}, b'[1,"a"]'),
    ({"customer": None}, None), ({"other": "x"}, None), ({}, None), (["customer"], None), ("customer", None),
    (None, None), (7, None), ({"nested": {"customer": "x"}}, None),
])
def test_the_key_is_a_top_level_field_as_utf8_text(value: Any, key: bytes | None) -> None:
    assert record_key(value, "customer") == key


def test_json_lines_get_their_key_field_and_every_header(produced: list[dict[str, Any]]) -> None:
    lines = '{"customer": "c-1", "n": 1}\n\n{"n": 2}\n{"customer": 3}\n'
    result = CliRunner().invoke(main, ["produce", "--topic", "t", "--key-field", "customer",
                                       "--header", "source=cli", "--header", "trace=a=b", "--header", "empty="],
                                input=lines)

    assert result.exit_code == 0, result.output
    [call] = produced
    assert call["records"] == [(b"c-1", b'{"customer": "c-1", "n": 1}'), (None, b'{"n": 2}'),
                               (b"3", b'{"customer": 3}')]
    assert call["headers"] == [("source", b"cli"), ("trace", b"a=b"), ("empty", b"")]
    assert "sent 3 messages to t" in result.output


def test_demo_orders_get_their_key_field_and_headers(produced: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(main, ["produce", "--topic", "t", "--demo", "5", "--key-field", "customer",
                                       "--header", "source=demo"])

    assert result.exit_code == 0, result.output
    [call] = produced
    assert len(call["records"]) == 5
    for key, value in call["records"]:
        assert key == json.loads(value)["customer"].encode()
    assert call["headers"] == [("source", b"demo")]


def test_without_the_options_records_have_no_key_and_no_headers(produced: list[dict[str, Any]]) -> None:
    result = CliRunner().invoke(main, ["produce", "--topic", "t"], input='{"customer": "c-1"}\n')

    assert result.exit_code == 0, result.output
    assert produced == [{"topic": "t", "records": [(None, b'{"customer": "c-1"}')], "headers": []}]


@pytest.mark.parametrize("header", ["source", "=cli", "", "=", "source:cli"])
def test_a_malformed_header_is_a_usage_error_with_one_line(produced: list[dict[str, Any]], header: str) -> None:
    result = CliRunner().invoke(main, ["produce", "--topic", "t", "--header", header], input='{"n": 1}\n')

    assert result.exit_code == 2
    [line] = [line for line in result.output.splitlines() if line.startswith("Error")]
    assert line == f"Error: Invalid value for '--header': {header!r} is not NAME=VALUE"
    assert produced == []


def test_produce_help_describes_the_new_options() -> None:
    result = CliRunner().invoke(main, ["produce", "--help"])

    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "--key-field FIELD Key each record with its value's top-level field FIELD" in text
    assert "--header NAME=VALUE Add the header NAME" in text and "(repeatable)" in text
