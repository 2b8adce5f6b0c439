"""Faults of the stack every test shares: the broker frozen, the Dagster webserver down.

Each stalls every other flow too, so they run here, one after the other,
never beside the scenarios other modules run side by side.
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import (
    DagsterApi,
    Flow,
    WorkerProcess,
    dead_letters,
    eventually,
    every_record_in_one_run,
    metric,
    order,
    produce,
    route_toml,
    settled,
    topic_created,
    unique,
)

pytestmark = pytest.mark.integration

TOTAL = 40_000  # the Dagster-down scenario's records: 20 runs of 2,000


async def test_the_broker_frozen_mid_stream_loses_and_duplicates_nothing(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq = unique("broker-frozen"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 2})
    worker = await start_worker(route_toml(topic, max_records=500, max_wait_s=4.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    flow = Flow(stack.bootstrap, topic, per_second=40, partitions=2)  # a run every 2 s: each costs a process
    flow.start()
    await eventually(lambda: _has_launched(worker), 90, "the first launches")
    await flow.stop()  # the producer would block on the frozen broker too
    stack.broker.process.signal_group(signal.SIGSTOP)
    try:
        await asyncio.sleep(20)  # the fault under test: the broker frozen for 20 s
    finally:
        stack.broker.process.signal_group(signal.SIGCONT)

    await topic_created(stack.bootstrap, topic, 2)  # the test's own producer waits for the broker to wake
    flow.start()
    await asyncio.sleep(3)  # records flowing after the freeze, for 3 s
    await every_record_in_one_run(stack.bootstrap, dagster_api, flow, dlq)
    assert await dead_letters(stack.bootstrap, dlq) == []
    assert worker.proc is not None and worker.proc.poll() is None



async def _has_launched(worker: WorkerProcess) -> bool:
    return "launched run" in worker.log_path.read_text(errors="replace")


async def test_nothing_is_lost_or_dead_lettered_while_dagster_is_down(stack: Stack, dagster_api: DagsterApi,
                                                                       start_worker) -> None:
    topic, dlq = unique("outage"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 2})
    worker = await start_worker(route_toml(topic, max_records=2000, max_wait_s=1.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq,
                                KAFKA_DAGSTER_QUEUED_BATCHES="1", KAFKA_DAGSTER_RETRY_MAX_DELAY_S="2")
    await produce(stack.bootstrap, topic, [order(i) for i in range(4000)], partitions=2)
    await eventually(lambda: dagster_api.runs(topic), 60, "a first run")

    stack.dagster.stop_webserver()
    try:
        outage_started = time.monotonic()
        await produce(stack.bootstrap, topic, [order(i) for i in range(4000, TOTAL)], partitions=2)

        async def down_and_holding() -> float:
            samples = await worker.metrics()
            return metric(samples, "kafka_dagster_dagster_up") == 0 and metric(
                samples, "kafka_dagster_messages_consumed_total", topic=topic)

        await eventually(down_and_holding, 30, "the worker to see Dagster down")
        await asyncio.sleep(max(0.0, 12 - (time.monotonic() - outage_started)))  # the outage itself
        held = metric(await worker.metrics(), "kafka_dagster_messages_consumed_total", topic=topic)
        await asyncio.sleep(5)  # still down: consumption must stay paused
        samples = await worker.metrics()
        assert metric(samples, "kafka_dagster_messages_consumed_total", topic=topic) == held
        assert held < 25000, f"the worker consumed {held} of {TOTAL:,} messages with Dagster down"
        assert not await dead_letters(stack.bootstrap, dlq)
        backlog = await eventually(lambda: topic_lag(worker, topic), 15, "the lag gauge to show the backlog")
        assert backlog >= TOTAL - held
        async with httpx.AsyncClient(base_url=worker.base_url, timeout=10) as client:
            ready, health = await client.get("/readyz"), await client.get("/healthz")
        assert ready.status_code == 503 and ready.json()["checks"]["dagster"] is False
        assert health.status_code == 200, "a worker waiting for Dagster is alive: it must not be restarted"
    finally:
        stack.dagster.start_webserver()

    result = await eventually(lambda: settled(stack.bootstrap, dagster_api, topic, dlq, TOTAL), 240,
                              "everything launched after Dagster returned")
    assert result.problems == []
    assert result.in_runs == TOTAL
    assert result.dead_lettered == {}
    assert metric(await worker.metrics(), "kafka_dagster_dagster_up") == 1

    async def lag_gone() -> bool:
        return await topic_lag(worker, topic) == 0

    await eventually(lag_gone, 30, "the lag gauge back to zero")


async def topic_lag(worker: WorkerProcess, topic: str) -> float:
    """Sum of kafka_dagster_consumer_lag over the topic's partitions."""
    samples = await worker.metrics()
    return sum(v for (name, labels), v in samples.items()
               if name == "kafka_dagster_consumer_lag" and ("topic", topic) in labels)
