"""The command line, as a user runs it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import cast

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from service.kafka import ensure_topics, read_topic
from tests.conftest import Stack
from tests.support import ROOT, DagsterApi, eventually, produce, route_toml, unique

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
