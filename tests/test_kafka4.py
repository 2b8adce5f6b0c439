"""The promises on Apache Kafka 4.x: one broker of the newest pinned 4.x for this module, whatever the session's
broker is, and on it the end-to-end path, kill -9 of a worker and rolling restarts of two workers.

4.x removed the old protocol versions (KIP-896) and serves the classic group protocol that aiokafka speaks
through its new group coordinator only. The scenarios are the suite's own (`test_end_to_end`,
`test_delivery`, `test_faults`), given a `Stack` whose broker is the 4.x one: their workers and every read
of the accounting go to it. The runs go to the session's Dagster, with their records inline (no batch of
these scenarios reaches a route's `inline_max_bytes`), so the code location never reads the 4.x broker.
Each scenario launches a run a second or more, so they run one after the other, as in their own modules,
and the kill -9 shorter than there (one kill, not three): the suite is bound by CPU, and 3.9.1 runs the long
version.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from service.dev.apache_kafka import ApacheKafka
from service.dev.kafka_jars import KAFKA4_VERSION
from tests.conftest import Stack, Workers
from tests.support import DagsterApi, unique
from tests.test_delivery import killed_three_times
from tests.test_end_to_end import orders_become_runs_of_a_ready_worker
from tests.test_faults import rolling_restarts

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
async def kafka4(stack: Stack) -> AsyncIterator[Stack]:
    """The session's Dagster beside an Apache Kafka 4.x broker of this module's own."""
    workdir = stack.workdir / unique("kafka4")
    broker = ApacheKafka(workdir, name="kafka4", version=KAFKA4_VERSION)
    await asyncio.to_thread(broker.start)
    try:
        yield Stack(broker, stack.dagster, workdir)
    finally:
        await asyncio.to_thread(broker.stop)


@pytest.fixture
async def start_worker4(kafka4: Stack, tmp_path: Path) -> AsyncIterator[Callable[..., object]]:
    """`start_worker`, with the workers on the 4.x broker."""
    workers = Workers(kafka4, tmp_path)
    yield workers.start
    workers.stop()


async def test_messages_become_successful_runs_on_kafka_4(kafka4: Stack, dagster_api: DagsterApi,
                                                          start_worker4: Callable[..., object]) -> None:
    await orders_become_runs_of_a_ready_worker(kafka4, dagster_api, start_worker4)


async def test_killing_the_worker_loses_and_duplicates_nothing_on_kafka_4(
        kafka4: Stack, dagster_api: DagsterApi, start_worker4: Callable[..., object]) -> None:
    await killed_three_times(kafka4, dagster_api, start_worker4, kills=1)


async def test_rolling_restarts_of_two_workers_lose_and_duplicate_nothing_on_kafka_4(
        kafka4: Stack, dagster_api: DagsterApi, start_worker4: Callable[..., object]) -> None:
    await rolling_restarts(kafka4, dagster_api, start_worker4)
