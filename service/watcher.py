"""Closed loop on runs: follow every launched run to a terminal status.

One GraphQL query per poll covers all in-flight runs. A run that ends in
FAILURE or CANCELED hands its offset range to `on_failed`, which copies the
records to the DLQ with stage `run`. The number of runs in flight is bounded:
`add` waits for a slot, which slows launching down instead of growing memory.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from service.dagster_client import DagsterClient
from service.errors import KafkaDagsterError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

TERMINAL = frozenset({"SUCCESS", "FAILURE", "CANCELED"})
FAILED = frozenset({"FAILURE", "CANCELED"})


@dataclass(frozen=True)
class LaunchedRun:
    run_id: str
    job: str
    topic: str
    partition: int
    offset_start: int
    offset_end: int


class RunWatcher:
    """Polls Dagster for the status of in-flight runs."""

    def __init__(self, client: DagsterClient, metrics: Metrics,
                 on_failed: Callable[[LaunchedRun, str], Awaitable[None]],
                 max_inflight: int = 64, poll_interval_s: float = 1.0) -> None:
        self.client = client
        self.metrics = metrics
        self.on_failed = on_failed
        self.max_inflight = max_inflight
        self.poll_interval_s = poll_interval_s
        self.inflight: dict[str, LaunchedRun] = {}
        self._changed = asyncio.Condition()

    async def add(self, run: LaunchedRun) -> None:
        """Watch `run`; waits while `max_inflight` runs are already watched."""
        async with self._changed:
            await self._changed.wait_for(lambda: len(self.inflight) < self.max_inflight)
            self.inflight[run.run_id] = run
            self.metrics.inflight_runs.set(len(self.inflight))

    def adopt(self, run: LaunchedRun) -> None:
        """Watch a run found at reconciliation, without waiting for a slot."""
        self.inflight.setdefault(run.run_id, run)
        self.metrics.inflight_runs.set(len(self.inflight))

    async def run_forever(self) -> None:
        while True:
            try:
                await self.poll()
            except KafkaDagsterError as exc:
                logger.warning("polling run statuses failed: %s", exc)
            await asyncio.sleep(self.poll_interval_s)

    async def poll(self) -> None:
        if not self.inflight:
            return
        statuses = await self.client.run_statuses(list(self.inflight))
        for run_id, status in statuses.items():
            if status in TERMINAL and run_id in self.inflight:
                await self._finish(self.inflight[run_id], status)

    async def _finish(self, run: LaunchedRun, status: str) -> None:
        self.metrics.runs_finished.labels(run.job, status).inc()
        if status in FAILED:
            logger.warning("run %s of %s/%d offsets %d-%d ended %s", run.run_id, run.topic, run.partition,
                           run.offset_start, run.offset_end, status)
            await self.on_failed(run, status)
        async with self._changed:
            del self.inflight[run.run_id]
            self.metrics.inflight_runs.set(len(self.inflight))
            self._changed.notify_all()
