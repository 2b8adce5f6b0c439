"""A batch launched twice, made harmless before the second run executes.

Dagster's `launchRun` takes no client-chosen run id, so a launch whose answer
was lost (a timeout, a connection reset after the request left) cannot be
retried idempotently: the webserver may still create the first run after the
retry's look-up found none. So a batch whose launch outcome was unknown is a
*suspect*: right after its launch succeeds, and then at every sweep for a
window long enough for a late request to land, the worker lists the runs of
its `kafka/batch_id` and applies the one rule of `service.verdicts`: the
survivor is kept, every other queued run is cancelled. Each cancelled run is
first written to the outcomes topic as a duplicate, so that every worker can
tell it from a run an operator cancelled. The shipped `dagster.yaml` limits
runs per `kafka/batch_id` to one at a time, so a duplicate waits in the queue
beside its original instead of running with it. A duplicate
created after the window, or one dequeued after the original finished and
before a sweep, would start: it then stands down in its own run before
reading a record (`dagster_project.toolkit.stand_down_if_duplicate`, by the
same rule), ending CANCELED with the tag `kafka/duplicate_of`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from service.contract import TAG_BATCH_ID, TAG_DUPLICATE_OF
from service.dagster import DagsterClient
from service.errors import KafkaDagsterError
from service.metrics import Metrics
from service.outcomes import DUPLICATE
from service.verdicts import CANCELLED, RunInfo, Verdict, judge

ENDED = frozenset({"SUCCESS", "FAILURE"})

logger = logging.getLogger(__name__)


class DuplicateLog(Protocol):
    """Where cancelled duplicates are written, read by every worker (`service.outcomes.OutcomeLog`)."""

    async def record(self, run_id: str, status: str) -> None: ...

    async def cancelled_as_duplicates(self) -> set[str]: ...


@dataclass
class Suspect:
    job: str
    batch_id: str
    until: float


class DuplicateRuns:
    """Finds and cancels extra runs of one batch; counts them in `kafka_dagster_duplicate_runs_cancelled_total`.

    :param client: the worker's Dagster client
    :param metrics: where cancelled duplicates are counted
    :param log: where a duplicate is written before it is cancelled
    :param window_s: how long a suspect batch is swept after its launch
    :param max_system_failures: the verdict's bound on runs that failed for the system
    """

    def __init__(self, client: DagsterClient, metrics: Metrics, log: DuplicateLog, window_s: float,
                 max_system_failures: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.clock = clock
        self.metrics = metrics
        self.log = log
        self.window_s = window_s
        self.max_system_failures = max_system_failures
        self.suspects: dict[str, Suspect] = {}
        # Runs asked to cancel whose answer has not confirmed it (lost in a timeout), by run id to batch id:
        # counted once Dagster shows them cancelled; their batch is swept past its window until then.
        self._unconfirmed: dict[str, str] = {}
        self._counted_ids: set[str] = set()  # two judges of one worker may cancel the same run at once

    async def settle(self, job: str, batch_id: str) -> str | None:
        """A suspect batch (an earlier attempt's outcome is unknown): the survivor's run id, None if no live run."""
        self.watch(job, batch_id)
        try:
            verdict = await self.judge(job, batch_id)
        except KafkaDagsterError as exc:
            logger.warning("could not check batch %s for duplicate runs yet: %s", batch_id, exc)
            return None
        return verdict.survivor.run_id if verdict.survivor is not None else None

    def watch(self, job: str, batch_id: str) -> None:
        """Sweep this batch for its window (it was launched again: another worker may have done so too)."""
        self.suspects[batch_id] = Suspect(job, batch_id, self.clock() + self.window_s)

    async def sweep(self) -> None:
        """Check every suspect batch once; forget those whose window has passed."""
        now = self.clock()
        for batch_id, suspect in list(self.suspects.items()):
            try:
                await self.judge(suspect.job, suspect.batch_id)
            except KafkaDagsterError as exc:
                logger.warning("checking batch %s for duplicate runs failed: %s", batch_id, exc)
                continue
            if now > suspect.until and batch_id not in self._unconfirmed.values():
                del self.suspects[batch_id]

    async def judge(self, job: str, batch_id: str) -> Verdict:
        """The batch's verdict now, its duplicates cancelled."""
        runs = await self.client.find_runs({TAG_BATCH_ID: batch_id}, job=job, limit=50)
        self._confirm(job, batch_id, runs)
        verdict = judge(runs, await self.log.cancelled_as_duplicates(), self.max_system_failures)
        if verdict.survivor is not None:
            for run in verdict.duplicates:
                await self._cancel(job, batch_id, run, verdict.survivor)
        return verdict

    def _confirm(self, job: str, batch_id: str, runs: list[RunInfo]) -> None:
        """Count the unconfirmed cancels of this batch that Dagster shows cancelled (a run cancelled from the
        queue has a start time in Dagster's run record too: only a run that stood down in its own run, tagged
        `kafka/duplicate_of`, did start)."""
        status = {run.run_id: run for run in runs}
        for run_id in [run_id for run_id, batch in self._unconfirmed.items() if batch == batch_id]:
            run = status.get(run_id)
            if run is not None and run.status in CANCELLED and TAG_DUPLICATE_OF not in run.tags:
                self._counted(job, run_id)
            elif run is None or run.status in CANCELLED or run.status in ENDED:
                # gone, or it started before the request landed: it stood down in its run, or ran
                logger.info("duplicate run %s of batch %s was not cancelled before it started (%s)", run_id,
                            batch_id, "gone" if run is None else run.status)
                self._unconfirmed.pop(run_id, None)

    def _counted(self, job: str, run_id: str) -> None:
        self._unconfirmed.pop(run_id, None)
        if run_id not in self._counted_ids:
            logger.info("duplicate run %s cancelled before it started", run_id)
            self._counted_ids.add(run_id)
            self.metrics.duplicate_runs_cancelled.labels(job).inc()

    async def _cancel(self, job: str, batch_id: str, run: RunInfo, kept: RunInfo) -> None:
        await self.log.record(run.run_id, DUPLICATE)
        self._unconfirmed[run.run_id] = batch_id  # counted once the answer, or Dagster's run list, confirms it
        if await self.client.terminate_queued(run.run_id):
            self._counted(job, run.run_id)
            logger.warning("canceled run %s: a duplicate of run %s for the same batch (a launch whose answer "
                           "was lost, then retried)", run.run_id, kept.run_id)
