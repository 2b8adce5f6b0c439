"""Hostile messages through the real broker and the real Dagster.

A message is data: it cannot choose its job, its tags or its run config keys,
whatever it contains (GraphQL syntax, quotes, newlines, huge unicode, keys that
look like our tags). Values over the input bounds are dead-lettered at
`validate` with their reason; the worker's web pages bind where they are told.
"""

from __future__ import annotations

import json

import httpx
import orjson
import pytest
import yaml

from service.delivery import TAG_CONSUMER_GROUP
from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import DagsterApi, dead_letters, eventually, produce, route_toml, unique

pytestmark = pytest.mark.integration

# The worker's tags, plus the one the job definition carries.
EXPECTED_TAGS = {"kafka/topic", "kafka/partition", "kafka/offset_start", "kafka/offset_end", "kafka/record_count",
                 "kafka/batch_id", TAG_CONSUMER_GROUP, "kafka/route", "kafka-dagster/kind"}
BATCH_CONFIG_KEYS = {"topic", "partition", "offset_start", "offset_end", "record_count", "batch_id", "records_json"}


def hostile_values() -> list[bytes]:
    base = {"customer": "c", "amount": 1.0}
    values = [
        {"order_id": 'x"}) { launchRun(executionParams: {}) { __typename } } #', **base},
        {"order_id": "mutation { deleteRun(runId: \"*\") { __typename } }", **base},
        {"order_id": "line1\nline2\r\n\t'quoted' \"double\" \\ back\\slash \u0000 nul", **base},
        {"order_id": "\U0001d518\u202e\ufeff" * 20_000, **base},  # ~220 KB of astral and bidi characters
        {"order_id": "tags", "kafka/offset_start": "999", "kafka/topic": "other", "kafka/batch_id": "x",
         "tags": [{"key": "kafka/topic", "value": "other"}], "job": "aggregate_orders",
         "ops": {"aggregate": {"config": {}}}, "runConfigData": {"execution": {}},
         "executionMetadata": {"tags": [{"key": "dagster/priority", "value": "999"}]}, **base},
        {"order_id": "${KAFKA_SASL_PASSWORD} $(id) `id` {{7*7}} %s %(x)s", **base},
    ]
    return [orjson.dumps(v) for v in values]


async def test_hostile_strings_reach_runs_as_data_only(stack: Stack, dagster_api: DagsterApi,
                                                       start_worker) -> None:
    topic = unique("hostile")
    sent = hostile_values()
    await ensure_topics(stack.bootstrap, {topic: 1})
    await start_worker(route_toml(topic, max_records=len(sent), max_wait_s=1.0, inline_max_bytes=1_048_576))
    await produce(stack.bootstrap, topic, [(b"kafka/batch_id", v) for v in sent])

    async def launched() -> list[dict]:
        runs = await dagster_api.runs(topic)
        return runs if sum(int(r["tags"]["kafka/record_count"]) for r in runs) == len(sent) else []

    runs = await eventually(launched, 120, "the hostile messages launched")
    records = []
    for run in runs:
        assert run["jobName"] == "process_orders"
        tags = run["tags"]
        assert {k for k in tags if not k.startswith("dagster/")} == EXPECTED_TAGS, tags
        assert tags["kafka/topic"] == topic
        assert "dagster/priority" not in tags
        details = await dagster_api.run_details(run["runId"])
        config = yaml.safe_load(details["runConfigYaml"])
        assert list(config) == ["ops"] and list(config["ops"]) == ["read_batch"]
        assert list(config["ops"]["read_batch"]) == ["config"]
        batch = config["ops"]["read_batch"]["config"]
        assert set(batch) == BATCH_CONFIG_KEYS
        assert (batch["topic"], str(batch["offset_start"])) == (topic, tags["kafka/offset_start"])
        records.extend(json.loads(batch["records_json"]))
    assert [r["value"].encode() for r in sorted(records, key=lambda r: r["offset"])] == sent
    assert {r["key"] for r in records} == {"kafka/batch_id"}


async def test_values_over_the_input_bounds_are_dead_lettered_at_validate(stack: Stack, dagster_api: DagsterApi,
                                                                          start_worker) -> None:
    topic, dlq_topic = unique("bounds"), unique("bounds-dlq")
    good = orjson.dumps({"order_id": "ok", "customer": "c", "amount": 1.0})
    deep = b'{"order_id": "deep", "customer": "c", "amount": 1, "x": ' + b"[" * 10 + b"]" * 10 + b"}"
    wide = orjson.dumps({"order_id": "wide", "customer": "c", "amount": 1, **{f"k{i}": i for i in range(50)}})
    large = orjson.dumps({"order_id": "large", "customer": "c", "amount": 1, "pad": "x" * 5_000})
    await ensure_topics(stack.bootstrap, {topic: 1})
    await start_worker(route_toml(topic, max_records=10, max_wait_s=1.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq_topic,
                       KAFKA_DAGSTER_MAX_JSON_DEPTH="8", KAFKA_DAGSTER_MAX_JSON_KEYS="20",
                       KAFKA_DAGSTER_MAX_MESSAGE_BYTES="4096")
    await produce(stack.bootstrap, topic, [good, deep, wide, large, good])

    async def three() -> list:
        letters = await dead_letters(stack.bootstrap, dlq_topic)
        return letters if len(letters) >= 3 else []

    letters = await eventually(three, 120, "three dead letters")
    assert sorted((d.origin[2], d.stage, d.dlq["dlq.error.class"]) for d in letters) == [
        (1, "validate", "JsonTooDeep"), (2, "validate", "TooManyKeys"), (3, "validate", "MessageTooLarge")]
    assert all(d.value in (deep, wide, large) for d in letters)

    async def launched() -> list[dict]:
        runs = await dagster_api.runs(topic)
        return runs if sum(int(r["tags"]["kafka/record_count"]) for r in runs) == 2 else []

    runs = await eventually(launched, 120, "the two good records launched")
    assert sorted((r["tags"]["kafka/offset_start"], r["tags"]["kafka/offset_end"]) for r in runs) == [
        ("0", "0"), ("4", "4")]


async def test_web_pages_bind_to_the_configured_host(stack: Stack, start_worker) -> None:
    """127.0.0.2 is loopback too on Linux: the pages answer there, and not on 127.0.0.1."""
    worker = await start_worker(route_toml(unique("bind")), wait=False, KAFKA_DAGSTER_WEB_HOST="127.0.0.2")

    async def metrics_on_the_configured_host() -> bool:
        try:
            async with httpx.AsyncClient() as client:
                response = await client.get(f"http://127.0.0.2:{worker.web_port}/metrics", timeout=2)
        except httpx.HTTPError:
            return False
        return response.status_code == 200 and "kafka_dagster_messages_consumed_total" in response.text

    await eventually(metrics_on_the_configured_host, 60, "/metrics on 127.0.0.2")
    for page in ("/metrics", "/healthz", "/readyz"):
        with pytest.raises(httpx.ConnectError):
            async with httpx.AsyncClient() as client:
                await client.get(f"http://127.0.0.1:{worker.web_port}{page}", timeout=2)
