"""The promises on Apache Kafka 4.x: one broker of the newest pinned 4.x for this module, whatever the session's
broker is, and on it the end-to-end path, kill -9 of a worker and rolling restarts of two workers.

4.x removed the old protocol versions (KIP-896) and serves the classic group protocol that aiokafka speaks
through its new group coordinator only. The scenarios are the suite's own (`test_end_to_end`,
`test_delivery`, `test_faults`), given a `Stack` whose broker is the 4.x one: their workers and every read
of the accounting go to it. The runs go to the session's Dagster, with their records inline (no batch of
these scenarios reaches a route's `inline_max_bytes`), so the code location never reads the 4.x broker.
They run side by side (each with its own topic, group and workers, as `test_faults` runs its scenarios), and
shorter than in their own modules (one kill -9, one round of restarts): 3.9.1 runs the long versions.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

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


SCENARIOS: dict[str, Callable[[Stack, DagsterApi, Any], Awaitable[None]]] = {
    "end_to_end": orders_become_runs_of_a_ready_worker,
    "killed": lambda stack, api, start: killed_three_times(stack, api, start, kills=1),
    "rolling_restarts": lambda stack, api, start: rolling_restarts(stack, api, start, rounds=1),
}


@pytest.fixture(scope="module")
async def on_kafka4(kafka4: Stack, dagster_api: DagsterApi,
                    tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    """Every scenario on the 4.x broker, started at once, each with workers (and a consumer group) of its own."""
    pools = {name: Workers(kafka4, tmp_path_factory.mktemp(f"kafka4-{name}")) for name in SCENARIOS}
    tasks = {name: asyncio.create_task(scenario(kafka4, dagster_api, pools[name].start), name=name)
             for name, scenario in SCENARIOS.items()}
    try:
        yield tasks
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for pool in pools.values():
            pool.stop()


async def test_messages_become_successful_runs_on_kafka_4(on_kafka4: dict[str, asyncio.Task[None]]) -> None:
    await on_kafka4["end_to_end"]


async def test_killing_the_worker_loses_and_duplicates_nothing_on_kafka_4(
        on_kafka4: dict[str, asyncio.Task[None]]) -> None:
    await on_kafka4["killed"]


async def test_rolling_restarts_of_two_workers_lose_and_duplicate_nothing_on_kafka_4(
        on_kafka4: dict[str, asyncio.Task[None]]) -> None:
    await on_kafka4["rolling_restarts"]
