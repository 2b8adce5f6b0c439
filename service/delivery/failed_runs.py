"""Failed runs: a watched run that ended FAILURE or CANCELED settles its batch by the one rule of
`service.verdicts`: another run keeps the records, the records are copied to the DLQ (stage `run`), or the
batch is launched again; what was done is recorded in the outcomes topic, once, by whichever worker saw it."""

from __future__ import annotations

import asyncio
import logging
from functools import partial

from service.batching import Batch
from service.contract import STAGE_LAUNCH, STAGE_RUN
from service.delivery.config import Tools
from service.delivery.dead_letters import DeadLetterWriter
from service.delivery.framed import FramedValues
from service.delivery.launcher import Launcher
from service.delivery.links import HandledOutcomes, ReadRange
from service.delivery.ownership import Partitions
from service.dlq import Failure
from service.duplicates import DuplicateRuns
from service.errors import Fenced, KafkaRejected, RecordError, RouteError
from service.kafka.transactions import Outgoing
from service.outcomes import DUPLICATE
from service.records import TP, Record
from service.routes import RouteTable
from service.routing import selects
from service.run_request import launched_run, run_tags
from service.verdicts import RunInfo, Verdict
from service.watcher import LaunchedRun, RunWatcher

logger = logging.getLogger(__name__)

# What the outcomes topic says of a run settled without a dead letter.
SUPERSEDED = "SUPERSEDED"  # another run of its batch keeps the records
RELAUNCHED = "RELAUNCHED"  # its batch was launched again
DEAD_LETTERED = "DEAD_LETTERED"  # launching its batch again was refused: the records are in the DLQ


class RunRecords:
    """The records of a run's offset range that its route takes, read back from Kafka (the range also holds
    other routes').

    :param tools: the retries, and the bounds a record is selected with
    :param routes: the routes, by name
    :param read_range: reads a partition's offset range back
    :param framed: decodes a framed route's records again, so they select as they did; None when no route
        reads a framed format
    """

    def __init__(self, tools: Tools, routes: RouteTable, read_range: ReadRange,
                 framed: FramedValues | None = None) -> None:
        self.settings = tools.settings
        self.retrying = tools.retrying
        self.routes = routes
        self.read_range = read_range
        self.framed = framed

    async def read(self, run: LaunchedRun) -> list[Record]:
        records = await self.retrying.transient(
            partial(self.read_range, run.topic, run.partition, run.offset_start, run.offset_end),
            "reading a run's records back")
        route = self.routes.get(run.route)
        if route is None:
            return list(records)
        if self.framed is not None:
            await self.framed.decode(route, records)
        return [r for r in records if selects(route, r, self.settings.max_message_bytes, self.settings.json_bounds)]


class FailedRuns:
    """Settles the batch of each watched run that did not succeed (`on_run_failed`).

    :param tools: the settings, the retries, the metrics and the clock
    :param partitions: the owned partitions (and the routes): a batch is copied in a transaction, or launched
        again, only where its partition is owned here
    :param launcher: launches a batch again
    :param dead_letters: copies a run's records to the DLQ
    :param duplicates: the one rule that settles a batch (`service.verdicts`), and the sweep of its duplicates
    :param watcher: follows the run that keeps a batch, and a batch's run launched again
    :param outcomes: which failed runs are settled already, by any worker; where each settled one is recorded
    :param run_records: reads a run's records back
    """

    def __init__(self, tools: Tools, partitions: Partitions, launcher: Launcher, dead_letters: DeadLetterWriter,
                 duplicates: DuplicateRuns, watcher: RunWatcher, outcomes: HandledOutcomes,
                 run_records: RunRecords) -> None:
        self.settings = tools.settings
        self.retrying = tools.retrying
        self.metrics = tools.metrics
        self.clock = tools.clock
        self.partitions = partitions
        self.routes = partitions.routes
        self.launcher = launcher
        self.dead_letters = dead_letters
        self.duplicates = duplicates
        self.watcher = watcher
        self.outcomes = outcomes
        self.run_records = run_records
        self._relaunching: dict[str, asyncio.Task[None]] = {}  # batch id -> its relaunch

    def relaunches(self) -> list[asyncio.Task[None]]:
        """The batches being launched again right now."""
        return list(self._relaunching.values())

    async def on_run_failed(self, run: LaunchedRun, status: str) -> None:
        """A watched run ended FAILURE or CANCELED: settle its batch by the one rule of `service.verdicts`."""
        outcome = await self.retrying.transient(partial(self.outcomes.outcome, run.run_id), "reading handled outcomes")
        if outcome not in (None, DUPLICATE):
            return  # settled already, by another worker or an earlier life of this one
        if not run.batch_id:  # a run from before batches were tagged: its own end decides
            await self._dead_letter_run(run, run.run_id, status, f"Dagster run {run.run_id} ended {status}")
            return
        verdict: Verdict = await self.retrying.transient(partial(self.duplicates.judge, run.job, run.batch_id),
                                                      f"settling batch {run.batch_id}")
        if verdict.survivor is not None and verdict.survivor.run_id != run.run_id:
            self._follow(verdict.survivor)  # it holds the batch's records
            await self._record_outcome(run.run_id, outcome, SUPERSEDED)
        elif verdict.survivor is not None:  # the run of the batch, ended by a failed step: the data's fault
            await self._dead_letter_run(run, run.run_id, status, f"Dagster run {run.run_id} ended {status}")
        elif verdict.relaunch:
            self._start_relaunch(run, verdict)
        else:
            assert verdict.dead_letter is not None
            dead = verdict.dead_letter
            await self._dead_letter_run(run, dead.run_id, dead.status, verdict.reason)
            if dead.run_id != run.run_id:
                await self._record_outcome(run.run_id, outcome, status)

    def _follow(self, survivor: RunInfo) -> None:
        if survivor.status != "SUCCESS":
            self.watcher.adopt(launched_run(survivor.run_id, survivor.job, survivor.tags))

    async def _record_outcome(self, run_id: str, outcome: str | None, done: str) -> None:
        """Write what was done with `run_id`, unless it was written as a duplicate (which stays so)."""
        if outcome != DUPLICATE:
            await self.retrying.transient(partial(self.outcomes.record, run_id, done), "recording a handled outcome")

    async def _dead_letter_run(self, run: LaunchedRun, run_id: str, status: str, message: str) -> None:
        """Copy the records of `run`'s batch to the DLQ, stage `run`, naming `run_id`; then record it handled.

        With transactions, where this worker owns the run's partition, the copy and the record are one
        transaction of the partition's transactional id: both or neither, and nothing from a fenced worker.
        """
        records = await self.run_records.read(run)
        route = self.routes.get(run.route)
        failure = Failure(STAGE_RUN, f"Run{status.title()}", message, run_id=run_id,
                          route=route.name if route is not None else None)
        if await self._copy_in_transaction(run, run_id, status, records, failure):
            return
        await self.dead_letters.write(records, failure)
        await self.retrying.transient(partial(self.outcomes.record, run_id, status), "recording a handled outcome")

    async def _copy_in_transaction(self, run: LaunchedRun, run_id: str, status: str, records: list[Record],
                                   failure: Failure) -> bool:
        """The copy and its outcome record in one transaction; False where that cannot be (written plainly)."""
        owned = self.partitions.get(TP(run.topic, run.partition))
        outcome = Outgoing(self.outcomes.topic, run_id.encode(), status.encode(), [])
        try:
            if not await self.dead_letters.write_in_transaction(owned, records, failure, outcome,
                                                                f"copying run {run_id}'s records to the DLQ"):
                return False
        except Fenced as exc:
            logger.warning("not copying run %s's records: %s; the partition's owner settles it", run_id, exc)
            return True
        except KafkaRejected as exc:
            logger.warning("copying run %s's records in a transaction was refused (%s); writing them one by one",
                           run_id, exc)
            return False
        self.outcomes.remember(run_id, status)
        return True

    # -- relaunch: a batch left with no live run ------------------------------

    def _start_relaunch(self, run: LaunchedRun, verdict: Verdict) -> None:
        if run.batch_id in self._relaunching:
            return  # already being launched again (another of its runs ended at the same time)
        delay_s = 0.0
        if verdict.system_failures:
            delay_s = min(self.settings.relaunch_base_s * 2 ** (verdict.system_failures - 1),
                          self.settings.relaunch_max_delay_s)
        logger.warning("batch %s (%s/%d offsets %d-%d) has no run left to process it (%s): launching it again "
                       "in %.0fs", run.batch_id, run.topic, run.partition, run.offset_start, run.offset_end,
                       verdict.reason, delay_s)
        task = asyncio.create_task(self._relaunch(run, verdict, delay_s), name=f"relaunch-{run.batch_id}")
        self._relaunching[run.batch_id] = task
        task.add_done_callback(partial(self._relaunch_done, run.batch_id))

    def _relaunch_done(self, batch_id: str, task: asyncio.Task[None]) -> None:
        self._relaunching.pop(batch_id, None)
        if not task.cancelled() and task.exception() is not None:
            # A bug, not a classified failure: the runs stay unsettled, and the next reconcile settles them.
            logger.error("launching batch %s again failed", batch_id, exc_info=task.exception())

    async def _relaunch(self, run: LaunchedRun, verdict: Verdict, delay_s: float) -> None:
        await asyncio.sleep(delay_s)
        owned = self.partitions.get(TP(run.topic, run.partition))
        route = self.routes.get(run.route)
        if owned is None or not owned.may_launch or route is None or owned.share(route.name) is None:
            logger.warning("not launching batch %s again: %s/%d is not owned here (its owner reconciles and "
                           "settles it)", run.batch_id, run.topic, run.partition)
            return
        records = await self.run_records.read(run)
        if not records:
            logger.error("not launching batch %s again: its offsets %d-%d hold none of route %r's records",
                         run.batch_id, run.offset_start, run.offset_end, route.name)
            return
        batch = Batch(run.topic, run.partition, self.clock(), records, sum(len(r.value or b"") for r in records),
                      reason="relaunch", route=route.name, partition_key=run.partition_key)
        try:
            run_id = await self.launcher.launch_through_refusals(owned, route, batch)
        except Fenced as exc:
            logger.warning("not launching batch %s again: %s", run.batch_id, exc)
            return
        except (RecordError, RouteError) as exc:  # as for any launch of the batch: its records go to the DLQ
            stage = exc.stage if isinstance(exc, RecordError) else STAGE_LAUNCH
            logger.error("batch %s not launched again: %s; dead-lettering its %d records", run.batch_id, exc,
                         len(records))
            await self.dead_letters.write(records, Failure.from_exception(stage, exc, route=route.name))
            await self._record_dead_runs(verdict, DEAD_LETTERED)
            return
        self.metrics.runs_relaunched.labels(route.job).inc()
        self.duplicates.watch(route.job, batch.batch_id)
        logger.warning("launched run %s for batch %s again (%s/%d offsets %d-%d): %s", run_id, batch.batch_id,
                       batch.topic, batch.partition, batch.offset_start, batch.offset_end, verdict.reason)
        await self._record_dead_runs(verdict, RELAUNCHED)
        await self.watcher.add(launched_run(run_id, route.job, run_tags(route, batch, self.settings.group_id)))

    async def _record_dead_runs(self, verdict: Verdict, done: str) -> None:
        for dead in verdict.dead_runs:
            written = DUPLICATE if dead.run_id in verdict.cancelled_as_duplicates else None
            await self._record_outcome(dead.run_id, written, done)
