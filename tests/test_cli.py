"""The command line, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from typing import cast

import httpx
import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from service.dlq import Failure, failure_headers
from service.kafka import Producer, ensure_topics, read_topic
from tests.conftest import Stack
from tests.support import ROOT, DagsterApi, eventually, order, produce, route_toml, unique

pytestmark = pytest.mark.integration


def kafka_dagster(*args: str, stdin: str = "", **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], input=stdin, capture_output=True, text=True,
                          env={**os.environ, **env}, cwd=ROOT, timeout=120)


async def test_produce_sends_json_lines_from_stdin_and_demo_events(stack: Stack) -> None:
    topic = unique("produced")
    lines = "\n".join(json.dumps({"n": n}) for n in range(10)) + "\n"
    piped = await asyncio.to_thread(kafka_dagster, "produce", "--topic", topic, "--partitions", "2",
                                    stdin=lines, KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap)
    demo = await asyncio.to_thread(kafka_dagster, "produce", "--topic", topic, "--demo", "5",
                                   KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap)

    assert piped.returncode == 0, piped.stderr
    assert demo.returncode == 0, demo.stderr
    values = [orjson.loads(m.value) for _, _, m in await read_topic(stack.bootstrap, topic)]  # type: ignore[attr-defined]
    assert sorted(v["n"] for v in values if "n" in v) == list(range(10))
    assert sum("order_id" in v for v in values) == 5


async def test_produce_keys_records_by_a_field_and_adds_headers(stack: Stack) -> None:
    topic = unique("keyed")
    lines = '{"customer": "c-1", "n": 1}\n{"n": 2}\n'
    piped = await asyncio.to_thread(kafka_dagster, "produce", "--topic", topic, "--key-field", "customer",
                                    "--header", "source=cli", "--header", "trace=t-1", stdin=lines,
                                    KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap)
    demo = await asyncio.to_thread(kafka_dagster, "produce", "--topic", topic, "--demo", "3", "--rate", "50",
                                   "--key-field", "customer", "--header", "source=demo",
                                   KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap)

    assert piped.returncode == 0, piped.stderr
    assert demo.returncode == 0, demo.stderr
    records = [cast(ConsumerRecord[bytes, bytes], m) for _, _, m in await read_topic(stack.bootstrap, topic)]
    sent = {r.value: (r.key, list(r.headers)) for r in records}
    assert sent.pop(b'{"customer": "c-1", "n": 1}') == (b"c-1", [("source", b"cli"), ("trace", b"t-1")])
    assert sent.pop(b'{"n": 2}') == (None, [("source", b"cli"), ("trace", b"t-1")])
    assert len(sent) == 3
    for value, (key, headers) in sent.items():
        assert key == orjson.loads(value)["customer"].encode()
        assert headers == [("source", b"demo")]


async def test_produce_refuses_a_line_that_is_not_json(stack: Stack) -> None:
    result = await asyncio.to_thread(kafka_dagster, "produce", "--topic", unique("bad"), stdin='{"ok": 1}\nnope\n',
                                     KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap)

    assert result.returncode != 0
    assert "stdin line 2 is not JSON" in result.stderr


@pytest.mark.parametrize(("name", "value"), [("KAFKA_DAGSTER_WEB_PORT", "abc"),
                                             ("KAFKA_BOOTSTRAP_SERVERS", "no-port"),
                                             ("KAFKA_DAGSTER_ROUTES", "/nonexistent/routes.toml")])
def test_a_bad_setting_fails_at_start_with_one_line_naming_it(name: str, value: str) -> None:
    result = kafka_dagster("worker", **{"KAFKA_DAGSTER_ROUTES": str(ROOT / "routes.toml"), name: value})

    assert result.returncode != 0
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: invalid setting {name}=")


async def test_json_log_lines_carry_the_batch_and_its_run(stack: Stack, dagster_api: DagsterApi,
                                                          start_worker) -> None:
    topic = unique("json-logs")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker = await start_worker(route_toml(topic, max_wait_s=1.0), KAFKA_DAGSTER_LOG_FORMAT="json")
    await produce(stack.bootstrap, topic, [orjson.dumps({"order_id": "o", "customer": "c", "amount": 1})] * 3)
    [run] = await eventually(lambda: dagster_api.runs(topic), 60, "the run")

    def launch_line() -> dict[str, object] | None:
        for line in worker.log_path.read_text().splitlines():
            if line.startswith("{") and run["runId"] in line:
                return json.loads(line)  # type: ignore[no-any-return]
        return None

    async def found() -> dict[str, object] | None:
        return launch_line()

    logged = await eventually(found, 30, "the JSON line about the launch")
    assert logged["level"] == "INFO"
    assert (logged["topic"], logged["partition"], logged["offset_start"], logged["offset_end"]) == (topic, 0, 0, 2)
    assert logged["run_id"] == run["runId"]
    assert logged["batch_id"] == run["tags"]["kafka/batch_id"]


# -- dlq inspect and replay ---------------------------------------------------------------


async def write_dead_letters(bootstrap: str, dlq_topic: str, source: str, offsets: list[int],
                             failed_at: datetime | None = None) -> None:
    """Dead letters of `source` at `offsets` (validate), as the worker writes them."""
    await ensure_topics(bootstrap, {dlq_topic: 1, source: 1})
    producer = Producer(bootstrap)
    try:
        for offset in offsets:
            headers = failure_headers([("trace", b"t-%d" % offset)], source, 0, offset,
                                      Failure("validate", "SchemaViolation", f"bad {offset}", route=source),
                                      failed_at)
            await producer.send(dlq_topic, b"k-%d" % offset, order(offset), headers)
    finally:
        await producer.stop()


def dlq_offsets(stdout: str) -> list[int]:
    return [int(line.split("\t")[0]) for line in stdout.splitlines()]


async def test_dlq_inspect_streams_from_an_offset_up_to_a_limit(stack: Stack) -> None:
    dlq, source = unique("dlq"), unique("orders")
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    await write_dead_letters(stack.bootstrap, dlq, source, list(range(10)), failed_at=an_hour_ago)
    await write_dead_letters(stack.bootstrap, dlq, source, [3, *range(10, 20)])  # 3 again: a duplicate
    env = {"KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap, "KAFKA_DAGSTER_DLQ_TOPIC": dlq}

    everything, limited, from_offset, recent = await asyncio.gather(
        asyncio.to_thread(kafka_dagster, "dlq", "inspect", **env),
        asyncio.to_thread(kafka_dagster, "dlq", "inspect", "--limit", "4", **env),
        asyncio.to_thread(kafka_dagster, "dlq", "inspect", "--from-offset", "15", "--limit", "3", "--json", **env),
        asyncio.to_thread(kafka_dagster, "dlq", "inspect", "--since", "10m", **env))

    assert everything.returncode == 0, everything.stderr
    assert dlq_offsets(everything.stdout) == [*range(10), *range(11, 21)]  # the duplicate shown once
    assert everything.stderr.strip() == "20 dead letters"
    assert dlq_offsets(limited.stdout) == [0, 1, 2, 3]
    assert limited.stdout.splitlines()[0] == f"0\t{source}/0/0\tvalidate\tSchemaViolation: bad 0"
    assert [orjson.loads(line)["dlq_offset"] for line in from_offset.stdout.splitlines()] == [15, 16, 17]
    assert dlq_offsets(recent.stdout) == list(range(10, 21))  # offset 3 again, written recently


async def test_dlq_inspect_follows_new_dead_letters_until_interrupted(stack: Stack) -> None:
    dlq, source = unique("dlq"), unique("orders")
    await write_dead_letters(stack.bootstrap, dlq, source, [0])
    follower = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "service", "dlq", "inspect", "--follow", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap, "KAFKA_DAGSTER_DLQ_TOPIC": dlq})
    try:
        assert follower.stdout is not None
        first = await asyncio.wait_for(follower.stdout.readline(), 60)
        await write_dead_letters(stack.bootstrap, dlq, source, [1])
        second = await asyncio.wait_for(follower.stdout.readline(), 30)
    finally:
        follower.send_signal(signal.SIGINT)
        _, stderr = await asyncio.wait_for(follower.communicate(), 30)

    assert first.decode().startswith(f"0\t{source}/0/0\t")
    assert second.decode().startswith(f"1\t{source}/0/1\t")
    assert follower.returncode == 0, stderr
    assert stderr.decode().strip().endswith("2 dead letters")


async def test_dlq_replay_sends_once_and_refuses_a_second_time_without_force(stack: Stack) -> None:
    dlq, source = unique("dlq"), unique("orders")
    await write_dead_letters(stack.bootstrap, dlq, source, [0, 1, 2])
    env = {"KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap, "KAFKA_DAGSTER_DLQ_TOPIC": dlq}

    async def replayed() -> list[ConsumerRecord[bytes, bytes]]:
        return [cast(ConsumerRecord[bytes, bytes], m) for _, _, m in await read_topic(stack.bootstrap, source)]

    unconfirmed = await asyncio.to_thread(kafka_dagster, "dlq", "replay", "--source-topic", source, stdin="n\n",
                                          **env)
    assert unconfirmed.returncode == 1 and "3 dead letters to replay" in unconfirmed.stderr
    assert await replayed() == []

    first = await asyncio.to_thread(kafka_dagster, "dlq", "replay", "--yes", "--rate", "1000", **env)
    assert first.returncode == 0, first.stderr
    assert "replayed 3 dead letters" in first.stderr
    records = await replayed()
    assert sorted(r.key for r in records) == [b"k-0", b"k-1", b"k-2"]
    assert dict(records[0].headers)["kafka-dagster.replay-of"] == f"{source}/0/{records[0].key[2:].decode()}".encode()
    assert ("trace", b"t-0") in [h for r in records for h in r.headers]

    second = await asyncio.to_thread(kafka_dagster, "dlq", "replay", "--yes", **env)
    assert second.returncode == 0, second.stderr
    assert "skipping 3 dead letters replayed before" in second.stderr and "nothing to replay" in second.stderr
    assert len(await replayed()) == 3

    await write_dead_letters(stack.bootstrap, dlq, source, [5])
    third = await asyncio.to_thread(kafka_dagster, "dlq", "replay", "--yes", **env)
    assert "replayed 1 dead letters" in third.stderr
    forced = await asyncio.to_thread(kafka_dagster, "dlq", "replay", "--yes", "--force", **env)
    assert forced.returncode == 0, forced.stderr
    assert "replayed 4 dead letters" in forced.stderr
    assert sorted(r.key for r in await replayed()) == [b"k-0", b"k-0", b"k-1", b"k-1", b"k-2", b"k-2", b"k-5",
                                                        b"k-5"]


# -- /status and kafka-dagster status -------------------------------------------------------


async def test_status_shows_the_open_batch_of_a_running_worker(stack: Stack, start_worker) -> None:
    topic = unique("status")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker = await start_worker(route_toml(topic, max_wait_s=300.0, max_records=1000))
    await produce(stack.bootstrap, topic, [order(i) for i in range(5)])

    async def open_batch() -> dict[str, object] | None:
        async with httpx.AsyncClient() as client:
            status = (await client.get(f"{worker.base_url}/status", timeout=5)).json()
        for partition in status["partitions"]:
            for share in partition["routes"]:
                if partition["topic"] == topic and (share["open_batch"] or {}).get("records") == 5:
                    return {"status": status, "partition": partition, "share": share}
        return None

    found = await eventually(open_batch, 60, "the open batch on /status")
    share, partition = found["share"], found["partition"]
    assert share["route"] == topic and share["queued"] == 0 and share["inflight_runs"] == 0  # type: ignore[index]
    assert share["covered"] == -1 and share["reconcile"]["runs_found"] == 0  # type: ignore[index]
    assert share["open_batch"]["offset_start"] == 0 and share["open_batch"]["offset_end"] == 4  # type: ignore[index]
    assert partition["next_offset"] == 5 and partition["done_below"] == 0  # type: ignore[index]
    assert found["status"]["paused_routes"] == {}  # type: ignore[index]

    shown = await asyncio.to_thread(kafka_dagster, "status", "--url", worker.base_url)

    assert shown.returncode == 0, shown.stderr
    [row] = [line for line in shown.stdout.splitlines() if f"{topic}/0" in line]
    assert row.split()[:4] == [topic, f"{topic}/0", "5", "rec,"]
    assert "(offsets 0-4)" in row
    assert "1 partitions owned, 0 runs in flight" in shown.stdout
