"""Run metrics from event logs: the watcher reads each finished run's log once and counts it.

The fake Dagster is `httpx.MockTransport` behind the real `DagsterClient`; it
answers the watcher's two queries (run statuses, one run's event log) from a
table of runs, paging event logs by cursor the way `eventConnection` does.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from service.dagster import DagsterClient, RunEvent
from service.metrics import Metrics
from service.watcher import LaunchedRun, RunWatcher, count_run_events

URL = "http://dagster.test/graphql"
T0_MS = 1_700_000_000_000
Event = dict[str, Any]


def event(typename: str, at_ms: int, step: str | None = None) -> Event:
    return {"__typename": typename, "timestamp": str(T0_MS + at_ms), "stepKey": step}


def successful_run_log() -> list[Event]:
    """A process_orders-like run: 2.0 s long, read_batch 0.5 s, a mapped step 0.25 s."""
    return [
        event("RunEnqueuedEvent", -300),
        event("RunDequeuedEvent", -200),
        event("RunStartingEvent", -100),
        event("RunStartEvent", 0),
        event("ExecutionStepStartEvent", 100, "read_batch"),
        event("LogMessageEvent", 200, "read_batch"),
        event("ExecutionStepOutputEvent", 300, "read_batch"),
        event("ExecutionStepSuccessEvent", 600, "read_batch"),
        event("ExecutionStepStartEvent", 700, "total_orders[keys_01]"),
        event("ExecutionStepSuccessEvent", 950, "total_orders[keys_01]"),
        event("AssetCheckEvaluationEvent", 1000, "publish_batch"),
        event("MaterializationEvent", 1100, "publish_batch"),
        event("RunSuccessEvent", 2000),
    ]


def failed_run_log() -> list[Event]:
    """A run whose read_batch is retried once, then fails: 1.5 s from its first start."""
    return [
        event("RunStartEvent", 0),
        event("ExecutionStepStartEvent", 500, "read_batch"),
        event("ExecutionStepUpForRetryEvent", 700, "read_batch"),
        event("ExecutionStepRestartEvent", 1000, "read_batch"),
        event("ExecutionStepFailureEvent", 2000, "read_batch"),
        event("RunFailureEvent", 2500),
    ]


class FakeDagster:
    """Runs by id: status and event log. `fail_events` answers event-log queries with that HTTP status."""

    def __init__(self, runs: dict[str, tuple[str, list[Event]]]) -> None:
        self.runs = runs
        self.event_queries: list[dict[str, Any]] = []
        self.fail_events: int | None = None
        self.gate: asyncio.Event | None = None

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        variables = body["variables"]
        if "query RunStatuses" in body["query"]:
            results = [{"runId": run_id, "status": status} for run_id, (status, _) in self.runs.items()
                       if run_id in variables["filter"]["runIds"]]
            return httpx.Response(200, json={"data": {"runsOrError": {"__typename": "Runs", "results": results}}})
        assert "query RunEvents" in body["query"], body["query"]
        self.event_queries.append(variables)
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_events is not None:
            return httpx.Response(self.fail_events, text="unavailable")
        if variables["runId"] not in self.runs:
            return httpx.Response(200, json={"data": {"runOrError": {
                "__typename": "RunNotFoundError", "message": "no such run"}}})
        _, log = self.runs[variables["runId"]]
        start = int(variables["afterCursor"]) if variables["afterCursor"] is not None else 0
        page = log[start:start + variables["limit"]]
        connection = {"events": page, "cursor": str(start + len(page)), "hasMore": start + len(page) < len(log)}
        return httpx.Response(200, json={"data": {"runOrError": {"__typename": "Run",
                                                                 "eventConnection": connection}}})


@pytest.fixture
async def client_for() -> AsyncIterator[Callable[[FakeDagster], DagsterClient]]:
    clients: list[DagsterClient] = []

    def make(fake: FakeDagster) -> DagsterClient:
        client = DagsterClient(URL, timeout_s=5, transport=httpx.MockTransport(fake))
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def launched(run_id: str) -> LaunchedRun:
    return LaunchedRun(run_id, "process_orders", "orders", 0, 0, 9)


async def no_dead_letters(run: LaunchedRun, status: str) -> None:
    pass


def watcher_for(client: DagsterClient, registry: CollectorRegistry,
                on_failed: Callable[[LaunchedRun, str], Awaitable[None]] = no_dead_letters) -> RunWatcher:
    return RunWatcher(client, Metrics(registry), on_failed, poll_interval_s=0.01)


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_a_finished_run_s_event_log_becomes_counters_and_durations(
        client_for: Callable[[FakeDagster], DagsterClient], registry: CollectorRegistry) -> None:
    fake = FakeDagster({"run-1": ("SUCCESS", successful_run_log())})
    watcher = watcher_for(client_for(fake), registry)
    watcher.adopt(launched("run-1"))

    await watcher.poll()
    await watcher.events.drain()

    assert watcher.inflight == {}
    success = {"status": "SUCCESS"}
    assert sample(registry, "dagster_events_total", event_type="ExecutionStepSuccessEvent", **success) == 2
    assert sample(registry, "dagster_events_total", event_type="ExecutionStepStartEvent", **success) == 2
    assert sample(registry, "dagster_events_total", event_type="MaterializationEvent", **success) == 1
    assert sample(registry, "dagster_events_total", event_type="AssetCheckEvaluationEvent", **success) == 1
    assert sample(registry, "dagster_events_total", event_type="RunSuccessEvent", **success) == 1
    assert sample(registry, "dagster_events_total", event_type="RunEnqueuedEvent", **success) == 1
    assert sample(registry, "event_processing_seconds_count", event_type="step") == 2
    assert sample(registry, "event_processing_seconds_sum", event_type="step") == pytest.approx(0.75)
    assert sample(registry, "event_processing_seconds_count", event_type="run") == 1
    assert sample(registry, "event_processing_seconds_sum", event_type="run") == pytest.approx(2.0)
    assert sample(registry, "event_processing_seconds_bucket", event_type="run", le="2.5") == 1
    assert sample(registry, "event_processing_seconds_bucket", event_type="run", le="1.0") == 0
    assert sample(registry, "kafka_dagster_runs_finished_total", dagster_job="process_orders", status="SUCCESS") == 1
    assert len(fake.event_queries) == 1, "one finished run, one event-log fetch"


async def test_the_status_label_is_the_run_s_terminal_status_and_retries_count_once(
        client_for: Callable[[FakeDagster], DagsterClient], registry: CollectorRegistry) -> None:
    failed: list[tuple[str, str]] = []

    async def on_failed(run: LaunchedRun, status: str) -> None:
        failed.append((run.run_id, status))

    fake = FakeDagster({"run-ok": ("SUCCESS", successful_run_log()), "run-bad": ("FAILURE", failed_run_log())})
    watcher = watcher_for(client_for(fake), registry, on_failed)
    watcher.adopt(launched("run-ok"))
    watcher.adopt(launched("run-bad"))

    await watcher.poll()
    await watcher.events.drain()

    assert failed == [("run-bad", "FAILURE")]
    assert sample(registry, "dagster_events_total", event_type="ExecutionStepFailureEvent", status="FAILURE") == 1
    assert sample(registry, "dagster_events_total", event_type="RunFailureEvent", status="FAILURE") == 1
    assert sample(registry, "dagster_events_total", event_type="ExecutionStepSuccessEvent", status="FAILURE") is None
    assert sample(registry, "dagster_events_total", event_type="ExecutionStepSuccessEvent", status="SUCCESS") == 2
    # read_batch of the failed run: first start (0.5 s) to its failure (2.0 s), its retry included.
    assert sample(registry, "event_processing_seconds_count", event_type="step") == 3
    assert sample(registry, "event_processing_seconds_sum", event_type="step") == pytest.approx(0.75 + 1.5)
    assert sample(registry, "event_processing_seconds_count", event_type="run") == 2
    assert sample(registry, "event_processing_seconds_sum", event_type="run") == pytest.approx(2.0 + 2.5)


async def test_long_event_logs_are_read_page_by_page(client_for: Callable[[FakeDagster], DagsterClient],
                                                     registry: CollectorRegistry) -> None:
    log = successful_run_log()
    log[5:5] = [event("LogMessageEvent", 200, "read_batch") for _ in range(20)]
    fake = FakeDagster({"run-1": ("SUCCESS", log)})
    watcher = watcher_for(client_for(fake), registry)
    watcher.events.page_size = 4
    watcher.adopt(launched("run-1"))

    await watcher.poll()
    await watcher.events.drain()

    assert [q["afterCursor"] for q in fake.event_queries] == [None, "4", "8", "12", "16", "20", "24", "28", "32"]
    assert {q["limit"] for q in fake.event_queries} == {4}
    assert sample(registry, "dagster_events_total", event_type="LogMessageEvent", status="SUCCESS") == 21
    assert sample(registry, "event_processing_seconds_count", event_type="run") == 1
    assert sample(registry, "kafka_dagster_run_event_log_failures_total", reason="truncated") is None


async def test_the_page_bound_cuts_a_log_short_and_says_so(client_for: Callable[[FakeDagster], DagsterClient],
                                                           registry: CollectorRegistry) -> None:
    fake = FakeDagster({"run-1": ("SUCCESS", successful_run_log())})
    watcher = watcher_for(client_for(fake), registry)
    watcher.events.page_size, watcher.events.max_pages = 2, 3

    assert await watcher.events.record("run-1", "SUCCESS") is False

    assert len(fake.event_queries) == 3
    assert sample(registry, "kafka_dagster_run_event_log_failures_total", reason="truncated") == 1
    assert sample(registry, "dagster_events_total", event_type="RunStartEvent", status="SUCCESS") == 1
    assert sample(registry, "event_processing_seconds_count", event_type="run") is None


@pytest.mark.parametrize(("http_status", "reason"), [(503, "unavailable"), (400, "error")])
async def test_a_log_that_cannot_be_read_is_counted_once_and_never_raises(
        client_for: Callable[[FakeDagster], DagsterClient], registry: CollectorRegistry,
        http_status: int, reason: str, caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeDagster({"run-1": ("CANCELED", successful_run_log())})
    fake.fail_events = http_status
    watcher = watcher_for(client_for(fake), registry)
    watcher.adopt(launched("run-1"))

    for _ in range(2):
        await watcher.poll()
        await watcher.events.drain()

    assert watcher.inflight == {}
    assert len(fake.event_queries) == 1, "at most one fetch per finished run"
    assert sample(registry, "kafka_dagster_runs_finished_total", dagster_job="process_orders", status="CANCELED") == 1
    assert sample(registry, "kafka_dagster_run_event_log_failures_total", reason=reason) == 1
    assert sample(registry, "dagster_events_total", event_type="RunStartEvent", status="CANCELED") is None
    assert any(r.levelname == "WARNING" and "not counting the events of run run-1" in r.getMessage()
               for r in caplog.records)


async def test_a_run_gone_from_dagster_is_counted_as_an_error(client_for: Callable[[FakeDagster], DagsterClient],
                                                              registry: CollectorRegistry) -> None:
    watcher = watcher_for(client_for(FakeDagster({})), registry)

    assert await watcher.events.record("run-gone", "SUCCESS") is False

    assert sample(registry, "kafka_dagster_run_event_log_failures_total", reason="error") == 1


async def test_an_unexpected_error_while_counting_is_logged_and_counted(
        registry: CollectorRegistry, caplog: pytest.LogCaptureFixture) -> None:
    class BrokenClient:
        async def run_events(self, run_id: str, page_size: int, max_pages: int) -> None:
            raise KeyError("eventConnection")

    watcher = RunWatcher(BrokenClient(), Metrics(registry), no_dead_letters)  # type: ignore[arg-type]

    assert await watcher.events.record("run-1", "SUCCESS") is False

    assert sample(registry, "kafka_dagster_run_event_log_failures_total", reason="error") == 1
    assert any(r.levelname == "ERROR" and r.exc_info for r in caplog.records)


async def test_a_slow_event_log_does_not_hold_up_the_watcher(client_for: Callable[[FakeDagster], DagsterClient],
                                                             registry: CollectorRegistry) -> None:
    failed = asyncio.Event()

    async def on_failed(run: LaunchedRun, status: str) -> None:
        failed.set()

    fake = FakeDagster({"run-ok": ("SUCCESS", successful_run_log()), "run-bad": ("FAILURE", failed_run_log())})
    fake.gate = asyncio.Event()
    watcher = watcher_for(client_for(fake), registry, on_failed)
    watcher.adopt(launched("run-ok"))
    task = asyncio.create_task(watcher.run_forever())
    try:
        async with asyncio.timeout(5):
            while not fake.event_queries:
                await asyncio.sleep(0.01)
            await watcher.add(launched("run-bad"))
            await failed.wait()  # the second run is finished and dead-lettered while the first log hangs
        assert watcher.inflight == {}
        assert sample(registry, "dagster_events_total", event_type="RunStartEvent", status="SUCCESS") is None

        fake.gate.set()
        async with asyncio.timeout(5):
            while sample(registry, "event_processing_seconds_count", event_type="run") != 2:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert sample(registry, "dagster_events_total", event_type="RunFailureEvent", status="FAILURE") == 1


async def test_a_full_backlog_drops_runs_and_counts_them(client_for: Callable[[FakeDagster], DagsterClient],
                                                         registry: CollectorRegistry) -> None:
    fake = FakeDagster({})
    watcher = watcher_for(client_for(fake), registry)
    watcher.events._queue = asyncio.Queue(maxsize=2)

    for i in range(5):
        watcher.events.submit(f"run-{i}", "SUCCESS")

    assert sample(registry, "kafka_dagster_run_event_log_failures_total", reason="dropped") == 3
    assert fake.event_queries == []


async def test_labels_never_carry_run_ids_or_step_keys(client_for: Callable[[FakeDagster], DagsterClient],
                                                       registry: CollectorRegistry) -> None:
    fake = FakeDagster({"run-1": ("SUCCESS", successful_run_log()), "run-2": ("FAILURE", failed_run_log())})
    watcher = watcher_for(client_for(fake), registry)
    watcher.adopt(launched("run-1"))
    watcher.adopt(launched("run-2"))
    await watcher.poll()
    await watcher.events.drain()

    values = {value for family in registry.collect() for s in family.samples for value in s.labels.values()}
    assert not {v for v in values if "run-" in v or "read_batch" in v or "keys_" in v}
    event_types = {s.labels["event_type"] for family in registry.collect() for s in family.samples
                   if "event_type" in s.labels}
    assert event_types <= {e["__typename"] for e in successful_run_log() + failed_run_log()} | {"step", "run"}


def test_count_run_events_pairs_steps_by_key_and_ignores_events_without_time() -> None:
    events = [
        RunEvent("RunStartEvent", 10.0, None),
        RunEvent("ExecutionStepStartEvent", 11.0, "a"),
        RunEvent("ExecutionStepStartEvent", 11.5, "b"),
        RunEvent("ExecutionStepSuccessEvent", 12.5, "b"),
        RunEvent("ExecutionStepSuccessEvent", None, "a"),
        RunEvent("ExecutionStepSuccessEvent", 13.0, "never-started"),
        RunEvent("RunSuccessEvent", 14.0, None),
    ]

    counts = count_run_events(events)

    assert counts.events["ExecutionStepSuccessEvent"] == 3
    assert counts.step_durations_s == [1.0]
    assert counts.run_duration_s == 4.0
    assert count_run_events([RunEvent("RunCanceledEvent", 5.0, None)]).run_duration_s is None
