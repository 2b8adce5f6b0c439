"""The code location's event patterns through the real stack: broker, worker, Dagster daemon and sensors.

The code server started by tests/conftest.py has only KAFKA_BOOTSTRAP_SERVERS
in its environment, so dead letters written inside runs go to the default DLQ
topic (`kafka-dagster.dlq`) and notifications to `kafka-dagster.notifications`;
each test finds its own records there by its unique source topic.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from service.contract import DEFAULT_DLQ_TOPIC
from service.kafka import ensure_topics, topic_partitions
from tests.conftest import Stack
from tests.support import DagsterApi, eventually, produce, record_counts, route_toml, unique

pytestmark = pytest.mark.integration

DEADLINE_S = 240
DLQ_TOPIC = DEFAULT_DLQ_TOPIC  # the code location's default
NOTIFICATIONS_TOPIC = "kafka-dagster.notifications"

CHECK_EXECUTIONS = """
query Checks($key: AssetKeyInput!, $name: String!) {
  assetCheckExecutions(assetKey: $key, checkName: $name, limit: 200) {
    runId status evaluation { severity success description } } }"""

RUNS_OF_JOB = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId status tags { key value } } } } }"""

ASSET_GRAPH = """
{ assetNodes { assetKey { path } dependencyKeys { path } } }"""


def order(i: int, **extra: Any) -> bytes:
    return orjson.dumps({"order_id": f"o-{i}", "customer": f"c-{i % 3}", "amount": 2.0, **extra})


async def read_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of `topic` now, from the beginning (none if the topic does not exist yet).

    Reads until a fetch comes back empty: Tansu's end offsets count record
    batches, not records, so they cannot tell when the end is reached.
    """
    partitions = (await topic_partitions(bootstrap, [topic])).get(topic)
    if partitions is None:
        return []
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        records: list[Any] = []
        while batches := await consumer.getmany(*tps, timeout_ms=1000):
            for batch in batches.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def notifications(stack: Stack, topic: str, event: str) -> list[dict[str, Any]]:
    bodies = [json.loads(r.value) for r in await read_topic(stack.bootstrap, NOTIFICATIONS_TOPIC)]
    return [b for b in bodies if b.get("event") == event and b.get("kafka_topic") == topic]


async def finished(api: DagsterApi, topic: str, records: int) -> list[dict[str, Any]]:
    runs = await api.runs(topic)
    if record_counts(runs) < records or any(r["status"] not in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
        return []
    return runs


async def check_executions(api: DagsterApi, name: str, run_ids: set[str]) -> list[dict[str, Any]]:
    data = await api.query(CHECK_EXECUTIONS, {"key": {"path": ["order_batches"]}, "name": name})
    return [e for e in data["assetCheckExecutions"] if e["runId"] in run_ids and e["evaluation"]]


async def aggregation_runs(api: DagsterApi, trigger_run_ids: set[str]) -> list[dict[str, Any]]:
    data = await api.query(RUNS_OF_JOB, {"filter": {"pipelineName": "aggregate_orders"}})
    runs = data["runsOrError"]["results"]
    for run in runs:
        run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
    return [r for r in runs if r["tags"].get("kafka-dagster/trigger_run_id") in trigger_run_ids
            and r["status"] == "SUCCESS"]


async def test_a_batch_with_bad_records_is_published_checked_dead_lettered_and_aggregated(
        stack: Stack, dagster_api: DagsterApi, start_worker) -> None:
    topic = unique("bad-records")
    await ensure_topics(stack.bootstrap, {topic: 1})
    await start_worker(route_toml(topic, max_records=100, max_wait_s=2.0))
    values = [order(i) for i in range(8)] + [b"[1, 2]", orjson.dumps({"customer": "c-1", "amount": 3})]
    await produce(stack.bootstrap, topic, values)

    runs = await eventually(lambda: finished(dagster_api, topic, len(values)), DEADLINE_S, "the batch runs")

    assert {r["status"] for r in runs} == {"SUCCESS"}
    run_ids = {r["runId"] for r in runs}
    by_run = {m["runId"]: m["metadata"] for m in await dagster_api.materializations("order_batches")}
    assert sum(by_run[r]["dead_letter_count"] for r in run_ids) == 2
    assert sum(by_run[r]["orders_processed"] for r in run_ids) == 8

    schema = await eventually(lambda: check_executions(dagster_api, "schema_conformance", run_ids), 60,
                              "the schema_conformance check")
    assert any(e["status"] == "FAILED" and e["evaluation"]["severity"] == "WARN" for e in schema)
    completeness = await check_executions(dagster_api, "completeness", run_ids)
    assert completeness and all(e["status"] == "SUCCEEDED" for e in completeness)

    async def dead_letters() -> list[Any]:
        found = [r for r in await read_topic(stack.bootstrap, DLQ_TOPIC)
                 if dict(r.headers).get("dlq.topic") == topic.encode()]
        return found if len(found) >= 2 else []

    letters = await eventually(dead_letters, 60, "two dead letters at stage process")
    assert sorted(int(dict(r.headers)["dlq.offset"]) for r in letters) == [8, 9]
    for letter in letters:
        headers = dict(letter.headers)
        assert headers["dlq.stage"] == b"process"
        assert headers["dlq.run_id"].decode() in run_ids
        assert letter.value == values[int(headers["dlq.offset"])]

    published = await eventually(lambda: notifications(stack, topic, "batch_published"), 60,
                                 "a batch_published notification")
    assert {n["run_id"] for n in published} <= run_ids

    aggregations = await eventually(lambda: aggregation_runs(dagster_api, run_ids), DEADLINE_S,
                                    "the aggregation launched by the sensor")
    totals = {m["runId"]: m["metadata"] for m in await dagster_api.materializations("order_totals")}
    for run in aggregations:
        assert totals[run["runId"]]["through_storage_id"] == int(run["tags"]["kafka-dagster/through_storage_id"])
        assert totals[run["runId"]]["total_orders"] >= 8


async def test_a_fail_run_record_fails_the_run_and_notifications_say_so(
        stack: Stack, dagster_api: DagsterApi, start_worker) -> None:
    topic = unique("fail-run")
    await ensure_topics(stack.bootstrap, {topic: 1})
    await start_worker(route_toml(topic, max_records=100, max_wait_s=2.0))
    await produce(stack.bootstrap, topic, [order(0), order(1, fail_run=True)])

    runs = await eventually(lambda: finished(dagster_api, topic, 2), DEADLINE_S, "the batch run")

    assert {r["status"] for r in runs} == {"FAILURE"}
    run_ids = {r["runId"] for r in runs}
    [op_failed] = await eventually(lambda: notifications(stack, topic, "op_failed"), 60,
                                   "the failure hook's notification")
    assert op_failed["op"] == "read_batch" and op_failed["run_id"] in run_ids
    assert "fail_run" in op_failed["error_message"]
    run_failed = await eventually(lambda: notifications(stack, topic, "run_failed"), 120,
                                  "the run-failure sensor's notification")
    assert {n["run_id"] for n in run_failed} == run_ids
    assert run_failed[0]["failed_steps"] == ["read_batch"]


async def test_the_asset_graph_runs_from_kafka_topics_to_the_totals(dagster_api: DagsterApi) -> None:
    data = await dagster_api.query(ASSET_GRAPH, {})
    deps = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]}
            for n in data["assetNodes"]}

    assert deps["order_batches"] and all(d.startswith("kafka/") for d in deps["order_batches"])
    assert deps["order_totals"] == {"order_batches"}
