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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
    executed_runs,
    metric,
    order,
    produce,
    route_toml,
    settled,
    unique,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
# Four in a row: a freeze that starts while a duplicate waits to be cancelled leaves it to the daemon, which
# starts it once the original finished; it must stand down in its own run (it once ran the batch twice).
FREEZES = 4


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
    worker = await start_worker(route_toml(topic, max_records=500, max_wait_s=4.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq,
                                DAGSTER_GRAPHQL_URL=own_dagster.graphql_url, KAFKA_DAGSTER_DAGSTER_TIMEOUT_S="4",
                                KAFKA_DAGSTER_ROUTE_RETRY_MAX_DELAY_S="5")
    # a run every 2 s (each partition's batch closes on max_wait_s): each costs Dagster a process, 2.5 CPU-seconds
    flow = Flow(stack.bootstrap, topic, per_second=40, partitions=PARTITIONS)
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

    async def counted_alike() -> list[dict[str, Any]] | None:
        # a cancel whose answer was lost is counted at a later sweep, once Dagster shows it cancelled
        runs = await api.runs(flow.topic)
        cancelled = metric(await worker.metrics(), "kafka_dagster_duplicate_runs_cancelled_total",
                           dagster_job="process_orders")
        return runs if canceled_duplicates(runs) == cancelled else None

    return await eventually(counted_alike, 30, "kafka_dagster_duplicate_runs_cancelled_total to count every "
                                               "run cancelled before it started as a duplicate")


async def test_a_webserver_frozen_past_the_timeout_again_and_again_loses_and_duplicates_nothing(
        stack: Stack, own_dagster: Dagster, flowing: tuple[WorkerProcess, Flow, str, DagsterApi]) -> None:
    """Issue 21's black-box check: launches in flight when the webserver freezes for longer than the worker's
    timeout are created late, beside their retries; every batch keeps exactly one run, freeze after freeze."""
    worker, flow, dlq, api = flowing
    for freeze in range(FREEZES):
        timeouts = _timeouts(worker)
        own_dagster.webserver.signal_group(signal.SIGSTOP)
        try:
            async def timed_out(before: int = timeouts) -> bool:
                return _timeouts(worker) > before

            await eventually(timed_out, 60, f"a launch to time out against the frozen webserver ({freeze + 1})")
            await asyncio.sleep(3)  # the freeze under test: longer than the 4 s timeout, retries pile up
        finally:
            own_dagster.webserver.signal_group(signal.SIGCONT)
        launched = _launches(worker)

        async def launching_again(before: int = launched) -> bool:
            return _launches(worker) > before

        await eventually(launching_again, 60, "launches after the freeze")
    await assert_every_record_in_exactly_one_executed_run(stack, api, worker, flow, dlq)
    assert await dead_letters(stack.bootstrap, dlq) == []


def _timeouts(worker: WorkerProcess) -> int:
    return worker.log_path.read_text(errors="replace").count("ReadTimeout")


def _launches(worker: WorkerProcess) -> int:
    return worker.log_path.read_text(errors="replace").count("launched run")


async def test_a_webserver_killed_and_restarted_mid_stream_loses_and_duplicates_nothing(
        stack: Stack, own_dagster: Dagster, flowing: tuple[WorkerProcess, Flow, str, DagsterApi]) -> None:
    worker, flow, dlq, api = flowing
    own_dagster.webserver.kill()
    await asyncio.to_thread(wait_until, lambda: not port_open(own_dagster.webserver_port), 10, "the port to close")
    await asyncio.sleep(3)  # the outage under test
    await asyncio.to_thread(own_dagster.start_webserver)
    await assert_every_record_in_exactly_one_executed_run(stack, api, worker, flow, dlq)


async def test_a_code_server_killed_mid_stream_dead_letters_nothing_and_every_record_succeeds(
        stack: Stack, own_dagster: Dagster, flowing: tuple[WorkerProcess, Flow, str, DagsterApi]) -> None:
    """The code server SIGKILLed with runs queued and running, and back 20 s later: launching pauses, runs the
    daemon dequeues meanwhile wait, runs that failed for it are launched again. No healthy record in the DLQ."""
    worker, flow, dlq, api = flowing
    own_dagster.code_server.kill()
    try:
        async def paused() -> dict[str, Any] | None:
            try:
                async with httpx.AsyncClient() as client:
                    body = (await client.get(f"{worker.base_url}/readyz", timeout=5)).json()
            except httpx.HTTPError:
                return None
            return body.get("routes_paused", {}).get(flow.topic)  # type: ignore[no-any-return]

        pause = await eventually(paused, 120, "/readyz to name the route paused for its code location")
        assert pause["reason"] == "code_location_error", pause
        assert metric(await worker.metrics(), "kafka_dagster_route_paused", route=flow.topic,
                      reason="code_location_error") == 1
    finally:
        own_dagster.code_server.start()
        await asyncio.to_thread(wait_until, lambda: port_open(own_dagster.grpc_port), 60, "the code server")
    await assert_every_record_in_exactly_one_executed_run(stack, api, worker, flow, dlq)
    assert await dead_letters(stack.bootstrap, dlq) == []
    executed = executed_runs(await api.runs(flow.topic))
    assert {run["status"] for run in executed} == {"SUCCESS"}, [(r["runId"], r["status"]) for r in executed]
    assert metric(await worker.metrics(), "kafka_dagster_route_paused", route=flow.topic,
                  reason="code_location_error") == 0


async def _one_batch(stack: Stack, client: Any) -> tuple[str, Callable[[], Awaitable[str]], Any]:
    """A batch of three records (its run reads them back from Kafka): its topic, a launch of it, the batch."""
    from service.batching import Batch
    from service.delivery import run_config, run_tags
    from service.records import Record
    from service.routes import Route

    topic = unique("duplicate")
    await produce(stack.bootstrap, topic, [order(i) for i in range(3)])
    route = Route(topic, "process_orders", 10, 1_000_000, 1.0, inline_max_bytes=0)
    records = [Record(topic, 0, i, None, None, order(i)) for i in range(3)]
    batch = Batch(topic, 0, opened_at=0.0, records=records, size=sum(r.size for r in records))
    tags = run_tags(route, batch, unique("group"))
    selector = await client.workspace.resolve_job("process_orders")

    async def launch() -> str:
        return str(await client.launch_run(selector, run_config(route, batch), tags))

    return topic, launch, batch


class Decider:
    """What settles a batch in one worker: its own Dagster client, duplicate rule and view of the outcomes topic."""

    def __init__(self, stack: Stack, dagster: Dagster, dlq: str) -> None:
        from prometheus_client import CollectorRegistry

        from service.dagster import DagsterClient
        from service.duplicates import DuplicateRuns
        from service.kafka import Producer
        from service.metrics import Metrics
        from service.outcomes import OutcomeLog, outcomes_topic

        self.client = DagsterClient(dagster.graphql_url)
        self.registry = CollectorRegistry()
        self.producer = Producer(stack.bootstrap)
        self.log = OutcomeLog(stack.bootstrap, outcomes_topic(dlq), self.producer)
        self.duplicates = DuplicateRuns(self.client, Metrics(self.registry), self.log, window_s=60,
                                        max_system_failures=4)

    def cancelled(self) -> float:
        return self.registry.get_sample_value("kafka_dagster_duplicate_runs_cancelled_total",
                                              {"dagster_job": "process_orders"}) or 0.0

    async def close(self) -> None:
        await self.log.stop()
        await self.producer.stop()
        await self.client.aclose()


@contextlib.asynccontextmanager
async def deciders(stack: Stack, dagster: Dagster, count: int) -> AsyncIterator[list[Decider]]:
    """`count` workers' deciders on one outcomes topic."""
    dlq = unique("dlq")
    made = [Decider(stack, dagster, dlq) for _ in range(count)]
    try:
        yield made
    finally:
        for decider in made:
            await decider.close()


async def _finished(api: DagsterApi, topic: str, count: int) -> list[dict[str, Any]]:
    runs = await api.runs(topic)
    done = len(runs) == count and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs)
    return runs if done else []


async def test_two_workers_settling_one_batch_at_once_keep_the_same_run(stack: Stack, own_dagster: Dagster) -> None:
    """The launch path of one worker and the sweep of another judge a batch with two queued runs at once, twice
    over: both keep the oldest, the other is cancelled, and the kept run executes."""
    api = DagsterApi(own_dagster.graphql_url)
    async with deciders(stack, own_dagster, 2) as (first, second):
        topic, launch, batch = await _one_batch(stack, first.client)
        own_dagster.daemon.signal_group(signal.SIGSTOP)  # both runs stay queued while they are judged
        try:
            original, duplicate = await launch(), await launch()
            for _ in range(2):
                verdicts = await asyncio.gather(first.duplicates.judge("process_orders", batch.batch_id),
                                                second.duplicates.judge("process_orders", batch.batch_id))
                assert {v.survivor.run_id for v in verdicts if v.survivor} == {original}, verdicts
                assert all(v.survivor for v in verdicts), verdicts
        finally:
            own_dagster.daemon.signal_group(signal.SIGCONT)
        runs = {r["runId"]: r for r in await eventually(lambda: _finished(api, topic, 2), 120, "both runs ended")}
        assert 1 <= first.cancelled() + second.cancelled() <= 2  # both may cancel it in the same instant
    assert runs[original]["status"] == "SUCCESS"
    assert runs[duplicate]["status"] == "CANCELED" and not runs[duplicate]["started"]
    assert canceled_duplicates(list(runs.values())) == 1


async def test_a_run_that_started_keeps_its_batch_and_a_later_duplicate_is_cancelled(
        stack: Stack, own_dagster: Dagster) -> None:
    api = DagsterApi(own_dagster.graphql_url)
    async with deciders(stack, own_dagster, 1) as (decider,):
        topic, launch, batch = await _one_batch(stack, decider.client)
        original = await launch()

        async def started() -> bool:
            return any(r["started"] for r in await api.runs(topic))

        await eventually(started, 120, "the first run to start")
        own_dagster.daemon.signal_group(signal.SIGSTOP)  # the late duplicate stays queued
        try:
            duplicate = await launch()
            verdict = await decider.duplicates.judge("process_orders", batch.batch_id)
        finally:
            own_dagster.daemon.signal_group(signal.SIGCONT)
        assert verdict.survivor is not None and verdict.survivor.run_id == original
        runs = {r["runId"]: r for r in await eventually(lambda: _finished(api, topic, 2), 120, "both runs ended")}
        assert decider.cancelled() == 1
    assert runs[original]["status"] == "SUCCESS"
    assert runs[duplicate]["status"] == "CANCELED" and not runs[duplicate]["started"]


async def test_an_operator_cancelling_a_batch_run_puts_its_records_in_the_dlq_once(
        stack: Stack, own_dagster: Dagster, start_worker: Any) -> None:
    """The run an operator terminates (the UI's Terminate: GraphQL terminateRun) is no duplicate: its records
    go to the DLQ at stage run, with the run id, and are not launched again."""
    from service.dagster import DagsterClient

    topic, dlq = unique("operator-cancel"), unique("dlq")
    api = DagsterApi(own_dagster.graphql_url)
    await ensure_topics(stack.bootstrap, {topic: 1})
    own_dagster.daemon.signal_group(signal.SIGSTOP)
    try:
        await start_worker(route_toml(topic, max_records=3, max_wait_s=0.5), KAFKA_DAGSTER_DLQ_TOPIC=dlq,
                           DAGSTER_GRAPHQL_URL=own_dagster.graphql_url)
        await produce(stack.bootstrap, topic, [order(i) for i in range(3)])
        runs = await eventually(lambda: api.runs(topic), 120, "the batch's run")
        client = DagsterClient(own_dagster.graphql_url)
        try:
            assert await client.terminate_queued(runs[0]["runId"])
        finally:
            await client.aclose()
        letters = await eventually(lambda: dead_letters(stack.bootstrap, dlq), 120, "the cancelled run's records")
    finally:
        own_dagster.daemon.signal_group(signal.SIGCONT)
    result = await eventually(lambda: settled(stack.bootstrap, api, topic, dlq, 3), 120, "the batch settled")
    assert result.problems == [] and result.run_copies == 3
    assert {(letter.stage, letter.dlq["dlq.error.class"], letter.dlq["dlq.run_id"]) for letter in letters} == {
        ("run", "RunCanceled", runs[0]["runId"])}
    assert [r["status"] for r in await api.runs(topic)] == ["CANCELED"]


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
