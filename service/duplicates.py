"""A batch launched twice, made harmless before the second run executes.

Dagster's `launchRun` takes no client-chosen run id, so a launch whose answer
was lost (a timeout, a connection reset after the request left) cannot be
retried idempotently: the webserver may still create the first run after the
retry's look-up found none. So a batch whose launch outcome was unknown is a
*suspect*: right after its launch succeeds, and then at every sweep for a
window long enough for a late request to land, the worker lists the runs of
its `kafka/batch_id` and cancels every one but one while they are still
queued. The shipped `dagster.yaml` limits runs per `kafka/batch_id` to one at
a time, so a duplicate waits in the queue beside its original instead of
running with it. What remains: a duplicate created after the window, or one
dequeued after the original finished and before a sweep, would run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from service.dagster_client import DagsterClient, RunInfo
from service.errors import KafkaDagsterError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

NOT_STARTED = frozenset({"QUEUED", "NOT_STARTED"})


@dataclass
class Suspect:
    job: str
    tags: dict[str, str]
    kept: str
    until: float


def choose_kept(runs: Sequence[RunInfo], launched: str) -> str:
    """The run to keep: one that already started if any, else the oldest (then ours)."""
    started = [run for run in runs if run.status not in NOT_STARTED]
    if started:
        return min(started, key=lambda run: run.creation_time).run_id
    if not runs:
        return launched
    return min(runs, key=lambda run: (run.creation_time, run.run_id != launched)).run_id


class DuplicateRuns:
    """Finds and cancels extra runs of one batch; counts them in `kafka_dagster_duplicate_runs_cancelled_total`.

    :param client: the worker's Dagster client
    :param metrics: where cancelled duplicates are counted
    :param window_s: how long a suspect batch is swept after its launch
    """

    def __init__(self, client: DagsterClient, metrics: Metrics, window_s: float) -> None:
        self.client = client
        self.metrics = metrics
        self.window_s = window_s
        self.suspects: dict[str, Suspect] = {}
        # Canceled duplicate run id -> the run kept in its place (its CANCELED is no failure of the data).
        self.canceled: dict[str, str] = {}

    async def settle(self, job: str, batch_id: str, tags: dict[str, str], launched: str) -> str:
        """After a launch whose earlier attempt's outcome is unknown: the run id to keep."""
        suspect = self.suspects[batch_id] = Suspect(job, tags, launched, time.monotonic() + self.window_s)
        try:
            await self._sweep_one(suspect)
        except KafkaDagsterError as exc:
            logger.warning("could not check batch %s for duplicate runs yet: %s", batch_id, exc)
        return suspect.kept

    async def sweep(self) -> None:
        """Check every suspect batch once; forget those whose window has passed."""
        now = time.monotonic()
        for batch_id, suspect in list(self.suspects.items()):
            try:
                await self._sweep_one(suspect)
            except KafkaDagsterError as exc:
                logger.warning("checking batch %s for duplicate runs failed: %s", batch_id, exc)
                continue
            if now > suspect.until:
                del self.suspects[batch_id]

    async def _sweep_one(self, suspect: Suspect) -> None:
        runs = await self.client.find_runs(suspect.tags, job=suspect.job, limit=50)
        if len(runs) < 2:
            return
        kept = next((run for run in runs if run.run_id == suspect.kept), None)
        if kept is None or kept.status in NOT_STARTED:
            suspect.kept = choose_kept(runs, suspect.kept)
        for run in runs:
            if run.run_id != suspect.kept and run.status in NOT_STARTED:
                await self._cancel(suspect, run)

    async def _cancel(self, suspect: Suspect, run: RunInfo) -> None:
        if await self.client.terminate_queued(run.run_id):
            self.canceled[run.run_id] = suspect.kept
            self.metrics.duplicate_runs_cancelled.labels(suspect.job).inc()
            logger.warning("canceled run %s: a duplicate of run %s for the same batch (a launch whose answer "
                           "was lost, then retried)", run.run_id, suspect.kept)

