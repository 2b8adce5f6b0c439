"""Closed loop on runs: follow every launched run to a terminal status.

One GraphQL query per poll covers all in-flight runs. A run that ends in
FAILURE or CANCELED hands its offset range to `on_failed`, which copies the
records to the DLQ with stage `run`. The number of runs in flight is bounded:
`add` waits for a slot, which slows launching down instead of growing memory.

Every run seen finishing is also handed to `RunEventRecorder`, which reads
its event log once over GraphQL, off the polling path, and turns it into the
event guide's metrics: `dagster_events_total{event_type,status}` and
`event_processing_seconds{event_type}` (`step`, `run`). Runs are short-lived
processes; the worker outlives them, so its counters are monotonic and
Prometheus' `rate()` means what it says.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from service.dagster import DagsterClient, RunEvent
from service.errors import KafkaDagsterError, TransientError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

TERMINAL = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
FAILED = frozenset({"FAILURE", "CANCELED"})
MAX_REMEMBERED_FINISHED = 10_000

STEP_START = "ExecutionStepStartEvent"
STEP_ENDS = frozenset({"ExecutionStepSuccessEvent", "ExecutionStepFailureEvent"})
RUN_START = "RunStartEvent"
RUN_ENDS = frozenset({"RunSuccessEvent", "RunFailureEvent", "RunCanceledEvent"})


@dataclass(frozen=True)
class LaunchedRun:
    run_id: str
    job: str
    topic: str
    partition: int
    offset_start: int
    offset_end: int
    route: str = ""  # the route that launched it ("" for a run from before routes were tagged)
    batch_id: str = ""
    partition_key: str | None = None  # the Dagster partition of a partitioned route's batch


class RunWatcher:
    """Polls Dagster for the status of in-flight runs."""

    def __init__(self, client: DagsterClient, metrics: Metrics,
                 on_failed: Callable[[LaunchedRun, str], Awaitable[None]],
                 max_inflight: int = 64, poll_interval_s: float = 1.0,
                 sweep: Callable[[], Awaitable[None]] | None = None) -> None:
        """`sweep`: also called at every poll (the check for duplicate runs of suspect batches)."""
        self.client = client
        self.sweep = sweep
        self.metrics = metrics
        self.on_failed = on_failed
        self.max_inflight = max_inflight
        self.poll_interval_s = poll_interval_s
        self.inflight: dict[str, LaunchedRun] = {}
        # Runs seen ending lately: adopting one again would count and settle its end twice.
        self.finished: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._changed = asyncio.Condition()
        self.events = RunEventRecorder(client, metrics)

    async def add(self, run: LaunchedRun) -> None:
        """Watch `run`; waits while `max_inflight` runs are already watched."""
        if run.run_id in self.finished:
            return
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.inflight) < self.max_inflight)
            self.inflight[run.run_id] = run
            self.metrics.inflight_runs.set(len(self.inflight))

    def adopt(self, run: LaunchedRun) -> None:
        """Watch a run found at reconciliation (or keeping a batch), without waiting for a slot."""
        if run.run_id in self.finished:
            return
        self.inflight.setdefault(run.run_id, run)
        self.metrics.inflight_runs.set(len(self.inflight))

    async def run_forever(self) -> None:
        recorder = asyncio.create_task(self.events.run_forever(), name="kafka_dagster.run_events")
        try:
            while True:
                try:
                    await self.poll()
                    if self.sweep is not None:
                        await self.sweep()
                except KafkaDagsterError as exc:
                    logger.warning("polling run statuses failed: %s", exc)
                await asyncio.sleep(self.poll_interval_s)
        finally:
            recorder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await recorder

    async def poll(self) -> None:
        if not self.inflight:
            return
        statuses = await self.client.run_statuses(list(self.inflight))
        for run_id, status in statuses.items():
            if status in TERMINAL and run_id in self.inflight:
                await self._finish(self.inflight[run_id], status)

    async def _finish(self, run: LaunchedRun, status: str) -> None:
        self.finished[run.run_id] = None
        while len(self.finished) > MAX_REMEMBERED_FINISHED:
            self.finished.popitem(last=False)
        self.metrics.runs_finished.labels(run.job, status).inc()
        self.events.submit(run.run_id, status)
        if status in FAILED:
            logger.warning("run %s of %s/%d offsets %d-%d ended %s", run.run_id, run.topic, run.partition,
                           run.offset_start, run.offset_end, status)
            await self.on_failed(run, status)
        async with self._changed:
            del self.inflight[run.run_id]
            self.metrics.inflight_runs.set(len(self.inflight))
            self._changed.notify_all()


@dataclass
class RunEventCounts:
    """What one finished run's event log adds to the metrics."""

    events: Counter[str] = field(default_factory=Counter)
    step_durations_s: list[float] = field(default_factory=list)
    run_duration_s: float | None = None


def count_run_events(events: Iterable[RunEvent]) -> RunEventCounts:
    """Events by type, each step's start-to-end duration, and the run's, from an event log oldest first.

    A step retried inside the run is measured from its first start to its final
    success or failure. A run that never started has no run duration.
    """
    counts = RunEventCounts()
    step_started: dict[str, float] = {}
    run_started: float | None = None
    for event in events:
        counts.events[event.typename] += 1
        at = event.timestamp_s
        if at is None:
            continue
        if event.typename == STEP_START and event.step_key:
            step_started.setdefault(event.step_key, at)
        elif event.typename in STEP_ENDS and event.step_key in step_started:
            counts.step_durations_s.append(max(0.0, at - step_started.pop(event.step_key)))
        elif event.typename == RUN_START and run_started is None:
            run_started = at
        elif event.typename in RUN_ENDS and run_started is not None and counts.run_duration_s is None:
            counts.run_duration_s = max(0.0, at - run_started)
    return counts


class RunEventRecorder:
    """Reads each finished run's event log once and exports it as counters and histograms.

    `submit` never waits: runs queue up (at most `max_backlog`; beyond that a run
    is dropped and counted) and one task reads their logs in turn, so a slow or
    absent Dagster never holds up the watcher or the delivery path. A log that
    cannot be read is logged, counted in `kafka_dagster_run_event_log_failures_total`
    and not asked for again.
    """

    def __init__(self, client: DagsterClient, metrics: Metrics, page_size: int = 500, max_pages: int = 20,
                 max_backlog: int = 1000) -> None:
        self.client = client
        self.metrics = metrics
        self.page_size = page_size
        self.max_pages = max_pages
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue(maxsize=max_backlog)

    def submit(self, run_id: str, status: str) -> None:
        """Queue a run that reached terminal `status` for counting."""
        try:
            self._queue.put_nowait((run_id, status))
        except asyncio.QueueFull:
            logger.warning("not counting the events of run %s: %d finished runs already wait to be read",
                           run_id, self._queue.maxsize)
            self.metrics.event_log_failures.labels("dropped").inc()

    async def run_forever(self) -> None:
        while True:
            run_id, status = await self._queue.get()
            await self.record(run_id, status)

    async def drain(self) -> None:
        """Count every queued run now (tests, and callers without `run_forever`)."""
        while not self._queue.empty():
            run_id, status = self._queue.get_nowait()
            await self.record(run_id, status)

    async def record(self, run_id: str, status: str) -> bool:
        """Read the event log of `run_id` and add it to the metrics; False, logged and counted, if it failed."""
        try:
            log = await self.client.run_events(run_id, self.page_size, self.max_pages)
        except TransientError as exc:
            return self._failed(run_id, "unavailable", exc)
        except KafkaDagsterError as exc:
            return self._failed(run_id, "error", exc)
        except Exception:  # metrics must never stop the watcher
            logger.exception("reading the event log of run %s failed unexpectedly", run_id)
            self.metrics.event_log_failures.labels("error").inc()
            return False
        counts = count_run_events(log.events)
        for event_type, n in counts.events.items():
            self.metrics.dagster_events.labels(event_type, status).inc(n)
        for duration_s in counts.step_durations_s:
            self.metrics.event_processing.labels("step").observe(duration_s)
        if counts.run_duration_s is not None:
            self.metrics.event_processing.labels("run").observe(counts.run_duration_s)
        if not log.complete:
            logger.warning("the event log of run %s is longer than %d events: counted only those",
                           run_id, self.page_size * self.max_pages)
            self.metrics.event_log_failures.labels("truncated").inc()
        return log.complete

    def _failed(self, run_id: str, reason: str, exc: Exception) -> bool:
        logger.warning("not counting the events of run %s: reading its event log failed: %s", run_id, exc)
        self.metrics.event_log_failures.labels(reason).inc()
        return False
