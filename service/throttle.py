"""Run-rate limits: a route launches at most `max_runs_per_minute`, and not while Dagster queues enough of its runs.

Users ask to stop triggering when the orchestrator is swamped. Before each
launch a lane asks its route's `Throttle` for a slot: at most
`max_runs_per_minute` launches in any 60 s (a sliding window shared by all of
the route's partitions), and none while Dagster holds `max_queued_runs` or
more QUEUED runs of the route's job (asked over GraphQL, at most once a
`QUEUE_POLL_S`). A launch counts in the window from when it takes its slot
until 60 s after its run was created. While a launch would wait, `held` is
True: the route's open batches then close only on `max_records`/`max_bytes`,
so they grow instead of queueing small; a full lane blocks the consumer, so memory stays bounded.
`kafka_dagster_route_throttled_seconds_total{route}` counts the wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from service.errors import KafkaDagsterError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
QUEUE_POLL_S = 2.0

QueuedRuns = Callable[[str], Awaitable[int]]  # job -> how many of its runs are QUEUED


@dataclass(eq=False)
class Slot:
    """One launch's place in its route's window: counted from when it is taken until `window_s` after the
    run was created (Dagster's creation time is what users see the limit in)."""

    launched_at: float = math.inf  # inf while the launch is under way


class Throttle:
    """One route's launch limits; `acquire()` returns when a launch may go."""

    def __init__(self, route: str, job: str, metrics: Metrics, *, max_runs_per_minute: int | None,
                 max_queued_runs: int | None, queued_runs: QueuedRuns,
                 clock: Callable[[], float] = time.monotonic, window_s: float = WINDOW_S,
                 queue_poll_s: float = QUEUE_POLL_S,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.route = route
        self.job = job
        self.metrics = metrics
        self.max_runs_per_minute = max_runs_per_minute
        self.max_queued_runs = max_queued_runs
        self.queued_runs = queued_runs
        self.clock = clock
        self.window_s = window_s
        self.queue_poll_s = queue_poll_s
        self.sleep = sleep
        self._slots: deque[Slot] = deque()
        self._lock = asyncio.Lock()
        self._waiting = 0
        self._queue_full = False

    @property
    def held(self) -> bool:
        """True while a launch of the route would have to wait (its open batches then grow, not close on time)."""
        return self._waiting > 0 or self._queue_full or self._window_full()

    @property
    def reason(self) -> str | None:
        """Why launches are held now (`max_runs_per_minute`, `max_queued_runs`), None when they are not."""
        if self._window_full():
            return "max_runs_per_minute"
        if self._queue_full:
            return "max_queued_runs"
        return "waiting_for_a_slot" if self._waiting > 0 else None

    async def acquire(self) -> Slot:
        """Wait for a launch slot and take it (lanes take slots one at a time, in arrival order); give it
        back with `launched` once the run exists, or `release` if nothing was launched."""
        self._waiting += 1
        try:
            async with self._lock:
                await self._wait_for_rate()
                await self._wait_for_queue()
                slot = Slot()
                self._slots.append(slot)
                return slot
        finally:
            self._waiting -= 1

    @contextlib.asynccontextmanager
    async def launching(self) -> AsyncIterator[None]:
        """A launch slot held while the launch goes: counted as launched once it got through, given back if it
        raised (nothing was launched)."""
        slot = await self.acquire()
        try:
            yield
        except BaseException:
            self.release(slot)
            raise
        self.launched(slot)

    def launched(self, slot: Slot) -> None:
        slot.launched_at = self.clock()

    def release(self, slot: Slot) -> None:
        with contextlib.suppress(ValueError):
            self._slots.remove(slot)

    def _window_full(self) -> bool:
        if self.max_runs_per_minute is None:
            return False
        now = self.clock()
        while self._slots and now - self._slots[0].launched_at >= self.window_s:
            self._slots.popleft()
        return len(self._slots) >= self.max_runs_per_minute

    async def _wait_for_rate(self) -> None:
        while self._window_full():
            first = self._slots[0].launched_at
            wait = first + self.window_s - self.clock() if math.isfinite(first) else self.queue_poll_s
            await self._hold(wait, "max_runs_per_minute")

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
                self._queue_full = queued >= self.max_queued_runs
                if not self._queue_full:
                    return
            await self._hold(self.queue_poll_s, "max_queued_runs")

    async def _hold(self, seconds: float, why: str) -> None:
        seconds = max(seconds, 0.01)
        logger.debug("route %r holds its next launch %.2fs (%s)", self.route, seconds, why)
        await self.sleep(seconds)
        self.metrics.route_throttled.labels(self.route).inc(seconds)
