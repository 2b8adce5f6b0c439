"""Run-rate limits: a route launches at most `max_runs_per_minute`, and not while Dagster queues enough of its runs.

Users ask to stop triggering when the orchestrator is swamped. Before each
launch a lane asks its route's `Throttle` for a slot: at most
`max_runs_per_minute` launches in any 60 s (a sliding window shared by all of
the route's partitions), and none while Dagster holds `max_queued_runs` or
more QUEUED runs of the route's job (asked over GraphQL, at most once a
`QUEUE_POLL_S`). While a lane waits, `held` is True: the route's open batches
then close only on `max_records`/`max_bytes`, so they grow instead of
queueing small; a full lane blocks the consumer, so memory stays bounded.
`kafka_dagster_route_throttled_seconds_total{route}` counts the wait.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from service.errors import KafkaDagsterError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
QUEUE_POLL_S = 2.0

QueuedRuns = Callable[[str], Awaitable[int]]  # job -> how many of its runs are QUEUED


class Throttle:
    """One route's launch limits; `acquire()` returns when a launch may go."""

    def __init__(self, route: str, job: str, metrics: Metrics, *, max_runs_per_minute: int | None,
                 max_queued_runs: int | None, queued_runs: QueuedRuns,
                 clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S,
                 queue_poll_s: float = QUEUE_POLL_S) -> None:
        self.route = route
        self.job = job
        self.metrics = metrics
        self.max_runs_per_minute = max_runs_per_minute
        self.max_queued_runs = max_queued_runs
        self.queued_runs = queued_runs
        self.clock = clock
        self.window_s = window_s
        self.queue_poll_s = queue_poll_s
        self._launches: deque[float] = deque()
        self._lock = asyncio.Lock()
        self._waiting = 0

    @property
    def held(self) -> bool:
        """True while a lane of the route waits for a slot."""
        return self._waiting > 0

    async def acquire(self) -> None:
        """Wait for a launch slot and take it (lanes take slots one at a time, in arrival order)."""
        self._waiting += 1
        try:
            async with self._lock:
                await self._wait_for_rate()
                await self._wait_for_queue()
                self._launches.append(self.clock())
        finally:
            self._waiting -= 1

    async def _wait_for_rate(self) -> None:
        if self.max_runs_per_minute is None:
            return
        while True:
            now = self.clock()
            while self._launches and now - self._launches[0] >= self.window_s:
                self._launches.popleft()
            if len(self._launches) < self.max_runs_per_minute:
                return
            await self._hold(self._launches[0] + self.window_s - now, "max_runs_per_minute")

    async def _wait_for_queue(self) -> None:
        """Wait while Dagster queues `max_queued_runs` of the job (an unanswered count is retried, not skipped)."""
        if self.max_queued_runs is None:
            return
        while True:
            try:
                queued = await self.queued_runs(self.job)
            except KafkaDagsterError as exc:  # a count not known holds the launch: the bound is a promise
                logger.warning("route %r: counting QUEUED runs of %s failed (%s); holding its launches",
                               self.route, self.job, exc)
            else:
                if queued < self.max_queued_runs:
                    return
            await self._hold(self.queue_poll_s, "max_queued_runs")

    async def _hold(self, seconds: float, why: str) -> None:
        seconds = max(seconds, 0.01)
        logger.debug("route %r holds its next launch %.2fs (%s)", self.route, seconds, why)
        await asyncio.sleep(seconds)
        self.metrics.route_throttled.labels(self.route).inc(seconds)
