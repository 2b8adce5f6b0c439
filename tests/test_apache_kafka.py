"""What Tansu could not show, on brokers of Apache Kafka 3.9.1 of their own (whatever the session's broker is).

- The broker SIGKILLed mid-stream and started again on the same log directory:
  nothing lost, nothing launched twice, the worker recovers by itself and
  `kafka_dagster_kafka_up` goes 0, then 1.
- A dead letter larger than the DLQ topic's `max.message.bytes`: the route
  pauses (`dlq_write`), nothing is lost, and it resumes once the limit is raised.
- A routed topic that does not exist (`auto.create.topics.enable=false`): the
  route pauses (`topic_missing`) with one line naming it, until it is created.

The runs themselves go to the session's Dagster, with their records inline.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from service.dev.apache_kafka import ApacheKafka
from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import (
    DagsterApi,
    Flow,
    WorkerProcess,
    dead_letters,
    eventually,
    metric,
    order,
    produce,
    route_toml,
    settled,
    unique,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
async def apache(stack: Stack) -> AsyncIterator[ApacheKafka]:
    """An Apache Kafka broker for this module's tests that do not stop it."""
    broker = ApacheKafka(stack.workdir / unique("apache"), name="apache")
    await asyncio.to_thread(broker.start)
    try:
        yield broker
    finally:
        await asyncio.to_thread(broker.stop)


async def _kafka_up(worker: WorkerProcess, value: float) -> bool:
    try:
        return metric(await worker.metrics(), "kafka_dagster_kafka_up") == value
    except Exception:
        return False


async def test_the_broker_killed_and_started_again_on_its_data_loses_and_duplicates_nothing(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any, tmp_path: Path) -> None:
    broker = ApacheKafka(tmp_path, name="restarted")
    await asyncio.to_thread(broker.start)
    try:
        topic, dlq = unique("restarted"), unique("dlq")
        await ensure_topics(broker.bootstrap_servers, {topic: 2})
        worker = await start_worker(route_toml(topic, max_records=200, max_wait_s=1.0),
                                    KAFKA_BOOTSTRAP_SERVERS=broker.bootstrap_servers, KAFKA_DAGSTER_DLQ_TOPIC=dlq)
        await _restart_mid_stream(broker, worker, topic, dlq, dagster_api)
    finally:
        await asyncio.to_thread(broker.stop)


async def _restart_mid_stream(broker: ApacheKafka, worker: WorkerProcess, topic: str, dlq: str,
                              dagster_api: DagsterApi) -> None:
    try:
        before = Flow(broker.bootstrap_servers, topic, per_second=40, partitions=2)
        before.start()

        async def launched() -> bool:
            return "launched run" in worker.log_path.read_text(errors="replace")

        await eventually(launched, 90, "the first launches")
        sent = await before.stop()
        broker.kill()  # mid-stream: batches open, launches and commits in flight
        await eventually(lambda: _kafka_up(worker, 0), 60, "kafka_dagster_kafka_up to go 0")
        await asyncio.to_thread(broker.start)
        await eventually(lambda: _kafka_up(worker, 1), 90, "kafka_dagster_kafka_up to go 1 again")
        launched_before = _launches(worker)
        after = Flow(broker.bootstrap_servers, topic, per_second=40, partitions=2)
        after.start()

        async def launching_again() -> bool:
            return _launches(worker) > launched_before

        await eventually(launching_again, 120, "launches after the restart")
        sent += await after.stop()
        result = await eventually(lambda: settled(broker.bootstrap_servers, dagster_api, topic, dlq, sent), 240,
                                  "every record in exactly one run")
        assert result.problems == [], result.problems[:10]
        assert result.in_runs == result.offsets >= sent
        assert await dead_letters(broker.bootstrap_servers, dlq) == []
    finally:
        await asyncio.to_thread(worker.stop)  # before its broker: a worker whose broker is gone stops slowly


def _launches(worker: WorkerProcess) -> int:
    return worker.log_path.read_text(errors="replace").count("launched run")


async def test_a_dead_letter_over_the_dlq_topics_size_limit_pauses_the_route_until_the_limit_is_raised(
        apache: ApacheKafka, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq = unique("dlq-size"), unique("dlq")
    await ensure_topics(apache.bootstrap_servers, {topic: 1})
    await ensure_topics(apache.bootstrap_servers, {dlq: 1}, configs={"max.message.bytes": "1000"})
    worker = await start_worker(route_toml(topic, max_records=10, max_wait_s=0.5),
                                KAFKA_BOOTSTRAP_SERVERS=apache.bootstrap_servers, KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    poison = b"not json " + b"x" * 5000  # undecodable, and larger than the DLQ topic takes
    await produce(apache.bootstrap_servers, topic, [order(0), order(1), poison, order(3), order(4)])

    async def paused() -> bool:
        return metric(await worker.metrics(), "kafka_dagster_route_paused", route=topic, reason="dlq_write") == 1

    await eventually(paused, 120, "the route to pause for the refused dead letter")
    assert await dead_letters(apache.bootstrap_servers, dlq) == []
    await _raise_max_message_bytes(apache.bootstrap_servers, dlq, 1_048_576)
    result = await eventually(lambda: settled(apache.bootstrap_servers, dagster_api, topic, dlq, 5), 180,
                              "every record in a run or the DLQ once the limit is raised")
    assert result.problems == [] and result.in_runs == 4 and result.dead_lettered == {"decode": 1}
    [letter] = await dead_letters(apache.bootstrap_servers, dlq)
    assert letter.origin[2] == 2 and letter.value == poison
    assert metric(await worker.metrics(), "kafka_dagster_route_paused", route=topic, reason="dlq_write") == 0


async def _raise_max_message_bytes(bootstrap: str, topic: str, limit: int) -> None:
    """What `kafka-configs --alter --entity-type topics --add-config max.message.bytes=...` does."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                  configs={"max.message.bytes": str(limit)})])
    finally:
        await admin.close()


async def test_a_routed_topic_that_does_not_exist_pauses_its_route_with_one_clear_line_until_created(
        apache: ApacheKafka, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq = unique("not-yet"), unique("dlq")
    worker = await start_worker(route_toml(topic, max_records=10, max_wait_s=0.5), wait=False,
                                KAFKA_BOOTSTRAP_SERVERS=apache.bootstrap_servers, KAFKA_DAGSTER_DLQ_TOPIC=dlq,
                                KAFKA_DAGSTER_TOPIC_REFRESH_S="5")  # finds the topic created late sooner

    async def said() -> bool:
        return f"topic {topic!r} does not exist on {apache.bootstrap_servers}" in worker.log_path.read_text(
            errors="replace")

    await eventually(said, 90, "the line naming the missing topic")
    assert metric(await worker.metrics(), "kafka_dagster_route_paused", route=topic, reason="topic_missing") == 1
    await ensure_topics(apache.bootstrap_servers, {topic: 1})
    await produce(apache.bootstrap_servers, topic, [order(i) for i in range(5)])
    result = await eventually(lambda: settled(apache.bootstrap_servers, dagster_api, topic, dlq, 5), 400,
                              "the records of the topic created late in a run")
    assert result.problems == [] and result.in_runs == 5
    assert metric(await worker.metrics(), "kafka_dagster_route_paused", route=topic, reason="topic_missing") == 0
    log = worker.log_path.read_text(errors="replace")
    assert log.count(f"topic {topic!r} does not exist") == 1  # one line, not one per check
