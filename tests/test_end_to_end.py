"""The whole path, real: Kafka -> micro-batches -> Dagster runs -> materializations."""

from __future__ import annotations

import asyncio
import itertools
from urllib.parse import urlparse

import httpx
import orjson
import pytest
from dagster import DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient

from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import (
    DagsterApi,
    WorkerProcess,
    eventually,
    finished_runs,
    metric,
    produce,
    ranges_by_partition,
    record_counts,
    route_toml,
    unique,
)

pytestmark = pytest.mark.integration


def orders(count: int) -> list[bytes]:
    return [orjson.dumps({"order_id": f"o-{i}", "customer": f"c-{i % 7}", "amount": 1.5}) for i in range(count)]


async def test_messages_become_successful_runs_with_materializations(stack: Stack, dagster_api: DagsterApi,
                                                                     start_worker) -> None:
    await orders_become_runs_of_a_ready_worker(stack, dagster_api, start_worker)


async def orders_become_runs_of_a_ready_worker(stack: Stack, dagster_api: DagsterApi, start_worker) -> None:
    """The whole path on `stack`'s broker, then the worker's probes: healthy and ready."""
    topic = unique("orders")
    await ensure_topics(stack.bootstrap, {topic: 4})
    worker = await start_worker(route_toml(topic, max_records=200, max_wait_s=2.0))
    await assert_orders_become_runs(stack.bootstrap, dagster_api, worker, topic)

    async with httpx.AsyncClient(base_url=worker.base_url) as client:
        health, ready = await client.get("/healthz"), await client.get("/readyz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"broker": True, "partitions_assigned": True, "dagster": True}


async def assert_orders_become_runs(bootstrap: str, dagster_api: DagsterApi, worker: WorkerProcess,
                                    topic: str) -> None:
    """2,000 orders over 4 partitions reach SUCCESSful runs: exact counts, contiguous ranges, metadata, metrics."""
    sent = await produce(bootstrap, topic, orders(2000), partitions=4)

    runs = await eventually(lambda: finished_runs(dagster_api, topic, sent), 240, "runs covering 2,000 records")

    assert {run["status"] for run in runs} == {"SUCCESS"}
    assert record_counts(runs) == 2000
    for partition, ranges in ranges_by_partition(runs).items():
        assert ranges[0][0] == 0, f"partition {partition} does not start at offset 0"
        assert ranges[-1][1] == 499, f"partition {partition} does not end at offset 499"
        for (_, end), (start, _) in itertools.pairwise(ranges):
            assert start == end + 1, f"partition {partition}: gap or overlap in {ranges}"
    for run in runs:
        tags = run["tags"]
        assert int(tags["kafka/offset_end"]) - int(tags["kafka/offset_start"]) + 1 == int(tags["kafka/record_count"])
        assert len(tags["kafka/batch_id"]) == 24

    by_run = {m["runId"]: m["metadata"] for m in await dagster_api.materializations("order_batches")}
    for run in runs:
        metadata = by_run[run["runId"]]
        tags = run["tags"]
        assert metadata["record_count"] == int(tags["kafka/record_count"])
        assert metadata["kafka_topic"] == topic
        assert metadata["kafka_partition"] == int(tags["kafka/partition"])
        assert metadata["offset_start"] == int(tags["kafka/offset_start"])
        assert metadata["offset_end"] == int(tags["kafka/offset_end"])
        assert metadata["records_source"] == "inline"

    # dagster-graphql's own client, independent of the worker's and of the tests' queries, agrees
    url = urlparse(dagster_api.url)
    client = DagsterGraphQLClient(url.hostname or "127.0.0.1", port_number=url.port)
    statuses = await asyncio.to_thread(lambda: {client.get_run_status(run["runId"]) for run in runs})
    assert statuses == {DagsterRunStatus.SUCCESS}

    samples = await worker.metrics()
    assert metric(samples, "kafka_dagster_messages_consumed_total", topic=topic) == 2000
    assert metric(samples, "kafka_dagster_run_launches_total", dagster_job="process_orders",
                  result="LaunchRunSuccess") == len(runs)
    batches = sum(v for (name, labels), v in samples.items()
                  if name == "kafka_dagster_batches_total" and ("topic", topic) in labels)
    assert batches == len(runs)
    assert metric(samples, "kafka_dagster_batch_records_count", topic=topic) == len(runs)
    assert metric(samples, "kafka_dagster_batch_records_sum", topic=topic) == 2000
    assert metric(samples, "kafka_dagster_run_launch_duration_seconds_count", topic=topic) == len(runs)
    assert metric(samples, "kafka_dagster_dagster_up") == 1


async def test_large_batches_travel_as_offset_ranges_and_are_read_back_from_kafka(
        stack: Stack, dagster_api: DagsterApi, start_worker) -> None:
    topic = unique("large")
    await ensure_topics(stack.bootstrap, {topic: 1})
    await start_worker(route_toml(topic, max_records=150, max_wait_s=2.0, inline_max_bytes=0))
    await produce(stack.bootstrap, topic, orders(300))

    runs = await eventually(lambda: finished_runs(dagster_api, topic, 300), 180, "runs covering 300 records")

    assert {run["status"] for run in runs} == {"SUCCESS"}
    assert sorted(int(r["tags"]["kafka/record_count"]) for r in runs) == [150, 150]
    by_run = {m["runId"]: m["metadata"] for m in await dagster_api.materializations("order_batches")}
    for run in runs:
        assert by_run[run["runId"]]["records_source"] == "kafka"
        assert by_run[run["runId"]]["record_count"] == 150
