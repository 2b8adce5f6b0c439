"""Dagster itself failing mid-stream: frozen, killed, its code location stopped, its daemon stopped.

These faults run on a Dagster deployment of their own (code server, webserver
and daemon, as compose runs them), so freezing or killing it does not touch
the session's shared Dagster. The code location runs in its own
`dagster code-server`, so freezing the webserver does not also lose it.
Records flow from a producer task throughout each fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from service.dev.stack import Dagster, port_open, wait_until
from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import (
    DagsterApi,
    Flow,
    WorkerProcess,
    canceled_duplicates,
    dead_letters,
    eventually,
    every_record_in_one_run,
    metric,
    order,
    produce,
    route_toml,
    settled,
    unique,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2


@pytest.fixture(scope="module")
def own_dagster(stack: Stack) -> Iterator[Dagster]:
    dagster = Dagster(stack.workdir / unique("own-dagster"), {"KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap})
    try:
        dagster.start()
        yield dagster
    finally:
        dagster.stop()


@pytest.fixture
async def flowing(stack: Stack, own_dagster: Dagster, start_worker: Any
                  ) -> AsyncIterator[tuple[WorkerProcess, Flow, str, DagsterApi]]:
    topic, dlq = unique("dagster-fault"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: PARTITIONS})
    worker = await start_worker(route_toml(topic, max_records=500, max_wait_s=2.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq,
                                DAGSTER_GRAPHQL_URL=own_dagster.graphql_url, KAFKA_DAGSTER_DAGSTER_TIMEOUT_S="4",
                                KAFKA_DAGSTER_ROUTE_RETRY_MAX_DELAY_S="5")
    flow = Flow(stack.bootstrap, topic, per_second=40, partitions=PARTITIONS)  # a run a second: each costs a process
    flow.start()
    api = DagsterApi(own_dagster.graphql_url)
    await eventually(lambda: _launched(worker), 90, "the first launches")
    yield worker, flow, dlq, api
    with contextlib.suppress(AssertionError):
        await flow.stop()


async def _launched(worker: WorkerProcess) -> bool:
    return "launched run" in worker.log_path.read_text(errors="replace")


async def assert_every_record_in_exactly_one_executed_run(stack: Stack, api: DagsterApi, worker: WorkerProcess,
                                                          flow: Flow, dlq: str) -> list[dict[str, Any]]:
    """Every record in exactly one run that executed; the DLQ holds nothing but copies of failed runs."""
    await every_record_in_one_run(stack.bootstrap, api, flow, dlq)
    assert {letter.stage for letter in await dead_letters(stack.bootstrap, dlq)} <= {"run"}
    runs = await api.runs(flow.topic)
    cancelled = metric(await worker.metrics(), "kafka_dagster_duplicate_runs_cancelled_total",
                       dagster_job="process_orders")
    assert canceled_duplicates(runs) == cancelled
    return runs


async def test_a_webserver_frozen_past_the_timeout_never_gets_a_batch_run_twice(
        stack: Stack, own_dagster: Dagster, flowing: tuple[WorkerProcess, Flow, str, DagsterApi]) -> None:
    worker, flow, dlq, api = flowing
    own_dagster.webserver.signal_group(signal.SIGSTOP)
    try:
        async def timed_out() -> bool:
            return "ReadTimeout" in worker.log_path.read_text(errors="replace")

        await eventually(timed_out, 60, "a launch to time out against the frozen webserver")
        await asyncio.sleep(6)  # the freeze under test: longer than the 4 s timeout, retries pile up
    finally:
        own_dagster.webserver.signal_group(signal.SIGCONT)
    await assert_every_record_in_exactly_one_executed_run(stack, api, worker, flow, dlq)


async def test_a_webserver_killed_and_restarted_mid_stream_loses_and_duplicates_nothing(
        stack: Stack, own_dagster: Dagster, flowing: tuple[WorkerProcess, Flow, str, DagsterApi]) -> None:
    worker, flow, dlq, api = flowing
    own_dagster.webserver.kill()
    await asyncio.to_thread(wait_until, lambda: not port_open(own_dagster.webserver_port), 10, "the port to close")
    await asyncio.sleep(3)  # the outage under test
    await asyncio.to_thread(own_dagster.start_webserver)
    await assert_every_record_in_exactly_one_executed_run(stack, api, worker, flow, dlq)


async def test_a_stopped_code_location_pauses_launching_and_nothing_is_dead_lettered(
        stack: Stack, own_dagster: Dagster, flowing: tuple[WorkerProcess, Flow, str, DagsterApi]) -> None:
    """A broken deploy: the code server is gone. Launches wait (no PipelineNotFoundError dead letters)."""
    worker, flow, dlq, api = flowing
    own_dagster.code_server.stop()
    try:
        async def paused() -> dict[str, Any] | None:
            try:
                async with httpx.AsyncClient() as client:
                    body = (await client.get(f"{worker.base_url}/readyz", timeout=5)).json()
            except httpx.HTTPError:
                return None
            return body.get("routes_paused", {}).get(flow.topic)

        pause = await eventually(paused, 120, "/readyz to name the route paused for its code location")
        assert pause["reason"] == "code_location_error", pause
        assert metric(await worker.metrics(), "kafka_dagster_route_paused", route=flow.topic,
                      reason="code_location_error") == 1
        # Runs that were executing when their code server went away may fail, and are copied (stage run);
        # the records waiting to be launched are not dead-lettered.
        letters = await dead_letters(stack.bootstrap, dlq)
        assert {letter.stage for letter in letters} <= {"run"}
    finally:
        own_dagster.code_server.start()
        await asyncio.to_thread(wait_until, lambda: port_open(own_dagster.grpc_port), 60, "the code server")
    await assert_every_record_in_exactly_one_executed_run(stack, api, worker, flow, dlq)
    assert metric(await worker.metrics(), "kafka_dagster_route_paused", route=flow.topic,
                  reason="code_location_error") == 0


async def test_two_runs_of_one_batch_are_settled_to_one_that_runs(stack: Stack, own_dagster: Dagster) -> None:
    """What a late, lost launch leaves behind (two runs with one kafka/batch_id), made harmless in real Dagster:
    the queue's per-batch limit keeps them apart and the worker's sweep cancels one before it runs."""
    from prometheus_client import CollectorRegistry

    from service.batching import Batch
    from service.dagster_client import DagsterClient
    from service.delivery import TAG_BATCH_ID, run_config, run_tags
    from service.duplicates import DuplicateRuns
    from service.metrics import Metrics
    from service.records import Record
    from service.routes import Route

    topic = unique("duplicate")
    await produce(stack.bootstrap, topic, [order(i) for i in range(3)])
    route = Route(topic, "process_orders", 10, 1_000_000, 1.0, inline_max_bytes=0)  # the run reads Kafka
    records = [Record(topic, 0, i, None, None, order(i)) for i in range(3)]
    batch = Batch(topic, 0, opened_at=0.0, records=records, size=sum(r.size for r in records))
    tags = run_tags(route, batch, unique("group"))
    client = DagsterClient(own_dagster.graphql_url)
    metrics = Metrics(CollectorRegistry())
    try:
        selector = await client.resolve_job("process_orders")
        first = await client.launch_run(selector, run_config(route, batch), tags)
        second = await client.launch_run(selector, run_config(route, batch), tags)  # the retry's duplicate
        kept = await DuplicateRuns(client, metrics, window_s=60).settle(
            "process_orders", batch.batch_id, {TAG_BATCH_ID: batch.batch_id}, second)
    finally:
        await client.aclose()
    api = DagsterApi(own_dagster.graphql_url)

    async def both_finished() -> list[dict[str, Any]]:
        runs = await api.runs(topic)
        return runs if len(runs) == 2 and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs) else []

    runs = {r["runId"]: r for r in await eventually(both_finished, 120, "both runs finished")}
    canceled = first if kept == second else second
    assert runs[kept]["status"] == "SUCCESS"
    assert runs[canceled]["status"] == "CANCELED" and not runs[canceled]["started"]
    assert canceled_duplicates(list(runs.values())) == 1
    assert metrics.registry.get_sample_value("kafka_dagster_duplicate_runs_cancelled_total",
                                             {"dagster_job": "process_orders"}) == 1


async def test_max_queued_runs_holds_launches_while_dagster_dequeues_nothing(
        stack: Stack, own_dagster: Dagster, start_worker: Any) -> None:
    """The daemon stopped: Dagster queues runs and starts none. A route with `max_queued_runs = 3` launches
    three, keeps the rest in Kafka, and launches them once the daemon dequeues again."""
    topic, dlq = unique("queued"), unique("dlq")
    api = DagsterApi(own_dagster.graphql_url)
    await ensure_topics(stack.bootstrap, {topic: 1})
    own_dagster.daemon.signal_group(signal.SIGSTOP)
    try:
        worker = await start_worker(route_toml(topic, max_records=10, max_wait_s=0.5, max_queued_runs=3),
                                    KAFKA_DAGSTER_DLQ_TOPIC=dlq, DAGSTER_GRAPHQL_URL=own_dagster.graphql_url)
        await produce(stack.bootstrap, topic, [order(i) for i in range(100)])  # ten batches' worth

        async def held() -> bool:
            return metric(await worker.metrics(), "kafka_dagster_route_throttled_seconds_total", route=topic) >= 5

        await eventually(held, 120, "the route to hold its launches at the bound")
        runs = await api.runs(topic)
        assert len(runs) == 3 and {r["status"] for r in runs} == {"QUEUED"}, runs
    finally:
        own_dagster.daemon.signal_group(signal.SIGCONT)
    result = await eventually(lambda: settled(stack.bootstrap, api, topic, dlq, 100), 180,
                              "every record in a run once the daemon dequeues")
    assert result.problems == [] and result.in_runs == 100
    assert await dead_letters(stack.bootstrap, dlq) == []
