"""The batch policy, through the real worker: one test per closing reason."""

from __future__ import annotations

import orjson
import pytest

from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import DagsterApi, eventually, metric, produce, record_counts, route_toml, unique

pytestmark = pytest.mark.integration


def padded_order(index: int, size: int) -> bytes:
    """An order whose JSON is exactly `size` bytes."""
    value = orjson.dumps({"order_id": f"o-{index:05d}", "customer": "c", "amount": 1, "pad": ""})
    return value.replace(b'"pad":""', b'"pad":"' + b"x" * (size - len(value)) + b'"')


async def batch_sizes(api: DagsterApi, topic: str, expected_records: int) -> list[int]:
    """Record counts of the topic's runs in offset order, once they cover `expected_records`."""
    runs = await api.runs(topic)
    if record_counts(runs) < expected_records:
        return []
    runs.sort(key=lambda run: int(run["tags"]["kafka/offset_start"]))
    return [int(run["tags"]["kafka/record_count"]) for run in runs]


async def test_batches_close_at_max_records(stack: Stack, dagster_api: DagsterApi, start_worker) -> None:
    topic = unique("by-records")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker = await start_worker(route_toml(topic, max_records=50, max_wait_s=3.0))
    await produce(stack.bootstrap, topic, [padded_order(i, 100) for i in range(120)])

    sizes = await eventually(lambda: batch_sizes(dagster_api, topic, 120), 120, "runs covering 120 records")

    assert sizes == [50, 50, 20]
    samples = await worker.metrics()
    assert metric(samples, "kafka_dagster_batches_total", topic=topic, reason="records") == 2
    assert metric(samples, "kafka_dagster_batches_total", topic=topic, reason="time") == 1


async def test_batches_close_at_max_bytes(stack: Stack, dagster_api: DagsterApi, start_worker) -> None:
    topic = unique("by-bytes")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker = await start_worker(route_toml(topic, max_records=1000, max_bytes=1000, max_wait_s=3.0))
    await produce(stack.bootstrap, topic, [padded_order(i, 100) for i in range(25)])

    sizes = await eventually(lambda: batch_sizes(dagster_api, topic, 25), 120, "runs covering 25 records")

    assert sizes == [10, 10, 5]
    samples = await worker.metrics()
    assert metric(samples, "kafka_dagster_batches_total", topic=topic, reason="bytes") == 2
    assert metric(samples, "kafka_dagster_batches_total", topic=topic, reason="time") == 1


async def test_batches_close_after_max_wait(stack: Stack, dagster_api: DagsterApi, start_worker) -> None:
    topic = unique("by-time")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker = await start_worker(route_toml(topic, max_records=1000, max_wait_s=1.0))

    await produce(stack.bootstrap, topic, [padded_order(i, 100) for i in range(5)])
    assert await eventually(lambda: batch_sizes(dagster_api, topic, 5), 60, "the first batch") == [5]
    await produce(stack.bootstrap, topic, [padded_order(i, 100) for i in range(5, 8)])
    sizes = await eventually(lambda: batch_sizes(dagster_api, topic, 8), 60, "the second batch")

    assert sizes == [5, 3]
    samples = await worker.metrics()
    assert metric(samples, "kafka_dagster_batches_total", topic=topic, reason="time") == 2
