"""The command line's option checks and pacing, without a broker (tests/test_cli.py runs it for real)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import pytest
from click.testing import CliRunner

from service import __version__
from service.cli import dead_letters as cli_dlq
from service.cli import main
from service.cli import sending as cli_produce
from service.cli.options import since_ms
from service.cli.sending import KeyedValue, _chunks, record_key, send_paced
from service.dlq import DeadLetter, identity
from service.pacing import paced
from service.replay import ReplayPlan

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("args", [["dlq", "replay", "--rate", "0"], ["dlq", "replay", "--rate", "-5"],
                                  ["produce", "--topic", "t", "--rate", "-1"]])
def test_a_rate_that_cannot_pace_is_a_usage_error(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 2
    assert "--rate" in result.output


async def test_paced_items_keep_their_order_and_rate() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    items = [item async for group in paced(range(5), rate=100.0) for item in group]

    assert items == [0, 1, 2, 3, 4]
    assert loop.time() - started >= 0.04  # the 5th item 4 / 100 s after the first


async def test_paced_items_never_come_before_they_are_due() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    seen = 0
    async for group in paced(range(300), rate=1000.0, tick_s=0.02):
        seen += len(group)
        assert seen <= (loop.time() - started) * 1000 + 1
    assert seen == 300


class SlowAcks:
    """A producer whose every acknowledgement takes `ack_s`, as a broker's round trip does."""

    def __init__(self, ack_s: float) -> None:
        self.ack_s = ack_s
        self.sent: list[tuple[bytes | None, bytes]] = []
        self.unacknowledged = 0
        self.most_unacknowledged = 0  # records sent and not yet acknowledged, at most

    async def enqueue(self, topic: str, key: bytes | None, value: bytes,
                      headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[object]:
        self.sent.append((key, value))
        self.unacknowledged += 1
        self.most_unacknowledged = max(self.most_unacknowledged, self.unacknowledged)
        ack = asyncio.ensure_future(asyncio.sleep(self.ack_s))
        ack.add_done_callback(self._acknowledged)
        return ack

    def _acknowledged(self, _: asyncio.Future[object]) -> None:
        self.unacknowledged -= 1

    @staticmethod
    async def acknowledged(acks: list[asyncio.Future[object]]) -> None:
        await asyncio.gather(*acks)


async def test_a_paced_produce_does_not_wait_for_one_ack_per_record() -> None:
    producer = SlowAcks(ack_s=0.05)
    records = [(None, b"%d" % n) for n in range(200)]
    loop = asyncio.get_running_loop()
    started = loop.time()

    sent = await send_paced(producer, "t", records, rate=1000.0)  # type: ignore[arg-type]

    assert sent == 200 and producer.sent == records
    assert loop.time() - started >= 0.19  # paced: 200 records at 1000/s
    assert producer.most_unacknowledged > 10  # it kept sending while acknowledgements were on their way


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

    monkeypatch.setattr(cli_produce, "_produce", fake)
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


# -- every command: -h/--help, --version, help on every option, exit codes --------------


def commands(group: click.Group = main, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    found: list[tuple[tuple[str, ...], click.Command]] = [(path, group)]
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            found.extend(commands(command, (*path, name)))
        else:
            found.append(((*path, name), command))
    return found


@pytest.mark.parametrize("flag", ["-h", "--help"])
@pytest.mark.parametrize("path", [path for path, _ in commands()], ids=lambda path: " ".join(path) or "main")
def test_every_command_has_help_under_h_and_help(path: tuple[str, ...], flag: str) -> None:
    result = CliRunner().invoke(main, [*path, flag], prog_name="kafka-dagster")

    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Usage: kafka-dagster {' '.join(path)}".rstrip() + " ")


@pytest.mark.parametrize(("path", "command"), commands(), ids=lambda v: " ".join(v) if isinstance(v, tuple) else "")
def test_every_option_says_what_it_does(path: tuple[str, ...], command: click.Command) -> None:
    ctx = click.Context(command, info_name="kafka-dagster")
    silent = [param.name for param in command.get_params(ctx)
              if isinstance(param, click.Option) and not param.hidden and not param.help]
    assert silent == []


def test_version() -> None:
    result = CliRunner().invoke(main, ["--version"])

    assert result.exit_code == 0
    assert result.output == f"kafka-dagster {__version__}\n"


def test_main_help_documents_exit_codes_and_completion() -> None:
    text = " ".join(CliRunner().invoke(main, ["-h"]).output.split())

    assert "Exit codes: 0 done; 1 a runtime failure" in text and "2 a usage error" in text
    assert "_KAFKA_DAGSTER_COMPLETE=bash_source kafka-dagster" in text


def test_completion_script_is_generated() -> None:
    result = CliRunner().invoke(main, [], prog_name="kafka-dagster",
                                env={"_KAFKA_DAGSTER_COMPLETE": "bash_source"})

    assert result.exit_code == 0
    assert "_kafka_dagster_completion" in result.output


@pytest.mark.parametrize("args", [["nope"], ["produce"], ["dlq", "inspect", "--limit", "0"],
                                  ["dlq", "inspect", "--since", "yesterday"],
                                  ["dlq", "inspect", "--from-offset", "-1"],
                                  ["dlq", "inspect", "--stage", "nope"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 2, result.output
    assert "Error:" in result.output


@pytest.mark.parametrize("args", [["produce", "--topic", "t"], ["dlq", "inspect"], ["dlq", "replay", "--yes"],
                                  ["dlq", "replay", "--dry-run"]])
def test_an_unreachable_broker_ends_in_one_line_and_exit_1(args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--bootstrap-servers", "127.0.0.1:1"], input='{"n": 1}\n')

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: Kafka: ") and "127.0.0.1" in line and "KAFKA_BOOTSTRAP_SERVERS" in line
    assert "Traceback" not in result.output


def test_an_unreachable_worker_ends_in_one_line_and_exit_1() -> None:
    result = CliRunner().invoke(main, ["status", "--url", "http://127.0.0.1:1"])

    assert result.exit_code == 1
    [line] = result.stderr.splitlines()
    assert line.startswith("Error: cannot read the worker's status at http://127.0.0.1:1/status")


@pytest.mark.parametrize(("text", "expected"), [
    ("90s", NOW - timedelta(seconds=90)), ("15m", NOW - timedelta(minutes=15)), ("2h", NOW - timedelta(hours=2)),
    ("1d", NOW - timedelta(days=1)), ("1h30m", NOW - timedelta(minutes=90)), ("0.5h", NOW - timedelta(minutes=30)),
    ("2024-05-01T12:00:00Z", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01T12:00:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01T14:00:00+02:00", datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("2024-05-01", datetime(2024, 5, 1, tzinfo=UTC)),
])
def test_since_is_an_iso_time_or_a_duration_back_from_now(text: str, expected: datetime) -> None:
    assert since_ms(text, NOW) == int(expected.timestamp() * 1000)


# -- dlq replay: confirmation and --force ------------------------------------------------


@pytest.fixture
def replays(monkeypatch: pytest.MonkeyPatch) -> list[list[int]]:
    """Plans two dead letters, the one at DLQ offset 1 replayed before; records what `send_back` would send."""
    letters = [DeadLetter.parse(None, b"{}", 0, [("dlq.topic", b"orders"), ("dlq.partition", b"0"),
                                                 ("dlq.offset", str(n).encode()), ("dlq.stage", b"validate")], n)
               for n in range(2)]
    sent: list[list[int]] = []

    async def plan(*args: object) -> ReplayPlan:
        return ReplayPlan(letters, {identity(letters[1])})

    async def replay(bootstrap: str, marker: str, chosen: list[DeadLetter], *args: object) -> int:
        sent.append([letter.dlq_offset for letter in chosen])
        return len(chosen)

    monkeypatch.setattr(cli_dlq, "_plan_replay", plan)
    monkeypatch.setattr(cli_dlq, "send_back", replay)
    return sent


def test_replay_asks_first_and_sends_nothing_without_a_yes(replays: list[list[int]]) -> None:
    result = CliRunner().invoke(main, ["dlq", "replay"], input="n\n")

    assert result.exit_code == 1
    assert "1 dead letters to replay: 1 to orders" in result.stderr and "Replay them?" in result.stderr
    assert replays == []


@pytest.mark.parametrize(("args", "answer", "sent"), [([], "y\n", [[0]]), (["--yes"], "", [[0]]),
                                                       (["--yes", "--force"], "", [[0, 1]])])
def test_replay_skips_what_was_replayed_before_unless_forced(replays: list[list[int]], args: list[str],
                                                             answer: str, sent: list[list[int]]) -> None:
    result = CliRunner().invoke(main, ["dlq", "replay", *args], input=answer)

    assert result.exit_code == 0, result.output
    assert replays == sent
    assert ("skipping 1 dead letters replayed before" in result.stderr) == ("--force" not in args)


def test_a_dry_run_prints_what_it_would_replay_and_sends_nothing(replays: list[list[int]]) -> None:
    result = CliRunner().invoke(main, ["dlq", "replay", "--dry-run"])

    assert result.exit_code == 0
    assert result.stdout.splitlines() == ["0\torders/0/0\tvalidate\t: "]
    assert "would replay 1 dead letters" in result.stderr
    assert replays == []
