"""Delivery: from consumed records to launched runs and dead letters.

This is where the delivery invariant is kept. Every record of a routed topic
ends in exactly one launched run's offset range or in the DLQ (stages decode,
validate, launch), and only then is it marked done, so its offset may be
committed. Records arrive as fetched chunks of one partition, in offset order;
each partition's records are marked done in that same order.

- Each topic-partition has a `Lane`: its closed batches and dead letters are
  handled one at a time, in offset order. A full lane blocks the consumer,
  which is what keeps memory bounded while Dagster is down.
- Before the first record of a partition is handled, the partition is
  reconciled with Dagster: runs tagged with its topic, partition and consumer
  group tell the highest offset already covered, and those records are
  skipped, whatever batch boundaries the earlier worker chose.
- Transient failures are retried with backoff, forever, and never dead-letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from service.batching import TP, Batch, Batcher, BatchPolicy, Record
from service.dagster_client import DagsterClient, RetryableLaunchError
from service.decoding import JsonBounds, decode_value
from service.dlq import Failure, dlq_headers
from service.errors import LaunchRejected, PermanentError, TransientError
from service.logs import batch_extra
from service.metrics import Metrics
from service.retry import Backoff
from service.routes import Route
from service.watcher import TERMINAL, LaunchedRun, RunWatcher

logger = logging.getLogger(__name__)

# The run tags of the contract, plus the consumer group that launched the run.
TAG_TOPIC = "kafka/topic"
TAG_PARTITION = "kafka/partition"
TAG_OFFSET_START = "kafka/offset_start"
TAG_OFFSET_END = "kafka/offset_end"
TAG_RECORD_COUNT = "kafka/record_count"
TAG_BATCH_ID = "kafka/batch_id"
TAG_CONSUMER_GROUP = "kafka/consumer_group"

UNAUTHORIZED = "UnauthorizedError"

# Dagster answering launchRun with PythonError this many times in a row is no passing trouble.
MAX_PYTHON_ERROR_ATTEMPTS = 10


class DeadLetterSink(Protocol):
    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes]], timestamp_ms: int | None) -> None: ...


def run_tags(batch: Batch, group_id: str) -> dict[str, str]:
    return {
        TAG_TOPIC: batch.topic,
        TAG_PARTITION: str(batch.partition),
        TAG_OFFSET_START: str(batch.offset_start),
        TAG_OFFSET_END: str(batch.offset_end),
        TAG_RECORD_COUNT: str(len(batch.records)),
        TAG_BATCH_ID: batch.batch_id,
        TAG_CONSUMER_GROUP: group_id,
    }


def run_config(route: Route, batch: Batch) -> dict[str, Any]:
    """The batch as `ops.<batch_op>.config`; records inline only below the route's bound."""
    config: dict[str, Any] = {
        "topic": batch.topic,
        "partition": batch.partition,
        "offset_start": batch.offset_start,
        "offset_end": batch.offset_end,
        "record_count": len(batch.records),
        "batch_id": batch.batch_id,
    }
    if batch.size <= route.inline_max_bytes:
        config["records"] = [
            {
                "offset": r.offset,
                "timestamp_ms": r.timestamp_ms or 0,
                "key": r.key.decode("utf-8", "backslashreplace") if r.key is not None else None,
                "value": (r.value or b"").decode("utf-8"),
            }
            for r in batch.records
        ]
    return {"ops": {route.batch_op: {"config": config}}}


@dataclass
class DeadLetters:
    """Records a pre-launch stage rejected, handled in order with the partition's batches."""

    records: list[Record]
    failure: Failure


class Lane:
    """One partition's queue of closed batches and dead letters, worked in order."""

    def __init__(self, tp: TP, maxsize: int, handle: Callable[[Batch | DeadLetters], Awaitable[None]],
                 on_fatal: Callable[[BaseException], Awaitable[None]] | None = None) -> None:
        self.tp = tp
        self.queue: asyncio.Queue[Batch | DeadLetters] = asyncio.Queue(maxsize)
        self._handle = handle
        self._on_fatal = on_fatal
        self._task = asyncio.create_task(self._run(), name=f"lane-{tp.topic}-{tp.partition}")

    async def put(self, item: Batch | DeadLetters) -> None:
        await self.queue.put(item)

    async def _run(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                await self._handle(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug, not a classified failure: the item is neither launched nor dead-lettered,
                # so the worker must stop and let a restart reconcile rather than skip it.
                logger.exception("lane %s/%d failed; stopping the worker", self.tp.topic, self.tp.partition)
                if self._on_fatal is not None:
                    await self._on_fatal(exc)
                raise
            finally:
                self.queue.task_done()

    async def join(self, timeout_s: float) -> bool:
        """Wait until the lane is idle; False if `timeout_s` passed first."""
        try:
            await asyncio.wait_for(self.queue.join(), timeout_s)
        except TimeoutError:
            return False
        return True

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        while not self.queue.empty():  # frees a producer blocked on a full queue
            self.queue.get_nowait()


class Delivery:
    """Owns batching, launching, reconciling and dead-lettering for one worker."""

    def __init__(self, routes: dict[str, Route], client: DagsterClient, dead_letters: DeadLetterSink,
                 metrics: Metrics, *, group_id: str, dlq_topic: str, max_message_bytes: int,
                 queued_batches_per_partition: int = 4, retry_max_delay_s: float = 30.0,
                 read_range: Callable[[str, int, int, int], Awaitable[list[Record]]] | None = None,
                 max_inflight_runs: int = 64, run_poll_interval_s: float = 1.0,
                 on_fatal: Callable[[BaseException], Awaitable[None]] | None = None,
                 mark_done: Callable[[TP, int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic, json_bounds: JsonBounds | None = None) -> None:
        self.routes = routes
        self.client = client
        self.sink = dead_letters
        self.metrics = metrics
        self.group_id = group_id
        self.dlq_topic = dlq_topic
        self.max_message_bytes = max_message_bytes
        self.bounds = json_bounds or JsonBounds()
        self.queue_size = queued_batches_per_partition
        self.retry_max_delay_s = retry_max_delay_s
        self.clock = clock
        self.batcher = Batcher({t: BatchPolicy(r.max_records, r.max_bytes, r.max_wait_s) for t, r in routes.items()})
        self.validators = {t: r.validator() for t, r in routes.items()}
        self.covered: dict[TP, int] = {}
        self.reconciles: dict[TP, asyncio.Task[int]] = {}
        self.epochs: dict[TP, int] = {}
        self.lanes: dict[TP, Lane] = {}
        # First offset consumed since assignment (= the group's committed offset then), and the next one.
        self.positions: dict[TP, int] = {}
        self.next_offsets: dict[TP, int] = {}
        self.read_range = read_range
        self.on_fatal = on_fatal
        self.mark_done = mark_done
        self.watcher = RunWatcher(client, metrics, self.on_run_failed, max_inflight_runs, run_poll_interval_s)

    # -- records in ---------------------------------------------------------

    async def on_records(self, records: Sequence[Record]) -> None:
        """Handle consecutive records of one partition: skip, dead-letter, or add each to its batch."""
        if not records:
            return
        tp = records[0].tp
        self.metrics.messages_consumed.labels(tp.topic).inc(len(records))
        if tp not in self.positions:
            self.positions[tp] = records[0].offset
            logger.info("consuming %s/%d from offset %d", tp.topic, tp.partition, records[0].offset)
        self.next_offsets[tp] = records[-1].offset + 1
        try:
            covered = await self.covered_offset(tp)
        except LaunchRejected as exc:
            if exc.typename != UNAUTHORIZED:
                raise
            # Dagster refuses us (HTTP 401/403: a wrong DAGSTER_API_TOKEN): nothing can be launched,
            # so the records go where a rejected launch goes. Not cached: the next chunk asks again.
            logger.error("cannot reconcile %s/%d with Dagster: %s", tp.topic, tp.partition, exc)
            for record in records:
                await self._reject(record, Failure.from_exception("launch", exc))
            return
        if records[0].offset <= covered:
            records = self._skip_covered(records, covered)
        if records:
            await self._add_checked(records)

    def _skip_covered(self, records: Sequence[Record], covered: int) -> Sequence[Record]:
        """Mark done the records an earlier run already covers; return the rest."""
        skipped = [record for record in records if record.offset <= covered]
        last = skipped[-1]
        self._done(last.tp, last.offset + 1, last.epoch)
        return records[len(skipped):]

    async def _add_checked(self, records: Sequence[Record]) -> None:
        """Batch the records that decode and validate; dead-letter each one that does not, in order."""
        validator = self.validators[records[0].topic]
        good_from = 0
        for index, record in enumerate(records):
            try:
                decode_value(record, self.max_message_bytes, validator, self.bounds)
            except PermanentError as exc:
                await self._add(records[good_from:index])
                await self._reject(record, Failure.from_exception(exc.stage, exc))
                good_from = index + 1
        await self._add(records[good_from:])

    async def _add(self, records: Sequence[Record]) -> None:
        for batch in self.batcher.add_many(records, self.clock()):
            await self._submit(batch)

    async def _reject(self, record: Record, failure: Failure) -> None:
        """Dead-letter `record` in offset order: the open batch before it is launched first."""
        split = self.batcher.split(record.tp)
        if split is not None:
            await self._submit(split)
        await self._lane(record.tp).put(DeadLetters([record], failure))

    async def tick(self) -> None:
        """Close the batches whose `max_wait_s` has passed."""
        for batch in self.batcher.expire(self.clock()):
            await self._submit(batch)

    def seconds_to_next_deadline(self, at_most: float) -> float:
        """How long until the next open batch is due to close on time, capped at `at_most`."""
        deadline = self.batcher.next_deadline()
        return at_most if deadline is None else min(at_most, max(0.0, deadline - self.clock()))

    async def _submit(self, batch: Batch) -> None:
        self._count_closed(batch)
        await self._lane(batch.tp).put(batch)

    def _count_closed(self, batch: Batch) -> None:
        batch.closed_at = self.clock()
        self.metrics.batches.labels(batch.topic, batch.reason).inc()
        self.metrics.batch_records.observe(len(batch.records))

    def _lane(self, tp: TP) -> Lane:
        lane = self.lanes.get(tp)
        if lane is None:
            lane = self.lanes[tp] = Lane(tp, self.queue_size, self._handle, self.on_fatal)
        return lane

    def _done(self, tp: TP, next_offset: int, epoch: int) -> None:
        # Records from before a revoke must not commit for a partition we may no longer own.
        if self.mark_done is not None and self.epochs.get(tp, 0) == epoch:
            self.mark_done(tp, next_offset)

    def epoch(self, tp: TP) -> int:
        return self.epochs.get(tp, 0)

    # -- reconciliation -----------------------------------------------------

    def on_assigned(self, tps: Iterable[TP]) -> None:
        """New assignment: reconcile its partitions all at once, before their records arrive,
        and spread their first batch deadlines."""
        tps = [tp for tp in tps if tp.topic in self.routes]
        self.batcher.stagger(tps)
        for tp in tps:
            if tp not in self.covered:
                self._reconcile_task(tp)

    async def covered_offset(self, tp: TP) -> int:
        """Highest offset of `tp` inside a launched run's range (-1: none); asks Dagster once."""
        covered = self.covered.get(tp)
        if covered is None:
            task = self._reconcile_task(tp)
            try:
                covered = self.covered[tp] = await asyncio.shield(task)
            finally:
                if task.done():  # a failure is not kept: the next caller asks again
                    self.reconciles.pop(tp, None)
        return covered

    def _reconcile_task(self, tp: TP) -> asyncio.Task[int]:
        task = self.reconciles.get(tp)
        if task is None:
            task = self.reconciles[tp] = asyncio.create_task(
                self.retry_transient(lambda: self._reconcile(tp), "reconcile"),
                name=f"reconcile-{tp.topic}-{tp.partition}")
        return task

    async def _reconcile(self, tp: TP) -> int:
        route = self.routes[tp.topic]
        runs = await self.client.find_runs(
            {TAG_TOPIC: tp.topic, TAG_PARTITION: str(tp.partition), TAG_CONSUMER_GROUP: self.group_id},
            job=route.job,
            limit=1000,
        )
        covered = max((int(run.tags[TAG_OFFSET_END]) for run in runs), default=-1)
        for run in runs:
            if run.status not in TERMINAL:
                self.watcher.adopt(_launched(run.run_id, run.job, run.tags))
        logger.info("reconciled %s/%d: %d earlier runs, covered up to offset %d",
                    tp.topic, tp.partition, len(runs), covered)
        return covered

    # -- lanes: launch and dead-letter --------------------------------------

    async def _handle(self, item: Batch | DeadLetters) -> None:
        if isinstance(item, DeadLetters):
            await self.dead_letter(item.records, item.failure, done=True)
        else:
            await self._launch(item)

    async def _launch(self, batch: Batch) -> None:
        route = self.routes[batch.topic]
        tags = run_tags(batch, self.group_id)
        config = run_config(route, batch)
        try:
            run_id = await self._launch_once(route, batch, tags, config)
        except PermanentError as exc:
            logger.error("launch of batch %s (%s/%d offsets %d-%d) rejected: %s",
                         batch.batch_id, batch.topic, batch.partition, batch.offset_start, batch.offset_end, exc,
                         extra=batch_extra(batch))
            await self.dead_letter(batch.records, Failure.from_exception("launch", exc), done=True)
            return
        self.covered[batch.tp] = max(self.covered.get(batch.tp, -1), batch.offset_end)
        oldest = min((r.timestamp_ms for r in batch.records if r.timestamp_ms), default=None)
        if oldest:
            self.metrics.event_to_launch.observe(max(0.0, time.time() - oldest / 1000))
        waited_s = self.clock() - batch.closed_at if batch.closed_at is not None else 0.0
        logger.info("launched run %s for batch %s (%s/%d offsets %d-%d, %d records, closed by %s %.3fs ago)",
                    run_id, batch.batch_id, batch.topic, batch.partition, batch.offset_start,
                    batch.offset_end, len(batch.records), batch.reason, waited_s,
                    extra=batch_extra(batch, run_id) | {"closed_s_ago": round(waited_s, 3)})
        last = batch.records[-1]
        self._done(batch.tp, last.offset + 1, last.epoch)
        await self.watcher.add(_launched(run_id, route.job, tags))

    async def _launch_once(self, route: Route, batch: Batch, tags: dict[str, str],
                           config: dict[str, Any]) -> str:
        """Launch the batch's run, retrying transient failures; never launches it twice."""
        backoff = Backoff(max_delay_s=self.retry_max_delay_s)
        attempts = python_errors = 0
        while True:
            attempts += 1
            try:
                selector = await self.client.resolve_job(route.job, route.location, route.repository)
                if attempts > 1:
                    existing = await self.client.find_runs({TAG_BATCH_ID: batch.batch_id}, job=route.job, limit=1)
                    if existing:
                        return existing[0].run_id
                started = time.monotonic()
                try:
                    run_id = await self.client.launch_run(selector, config, tags)
                finally:
                    self.metrics.run_launch_duration.observe(time.monotonic() - started)
                self.metrics.run_launches.labels(route.job, "LaunchRunSuccess").inc()
                self.metrics.dagster_up.set(1)
                return run_id
            except PermanentError as exc:
                result = exc.typename if isinstance(exc, LaunchRejected) else type(exc).__name__
                self.metrics.run_launches.labels(route.job, result).inc()
                self.metrics.dagster_up.set(1)
                raise
            except TransientError as exc:
                result = getattr(exc, "typename", "transport_error")
                self.metrics.run_launches.labels(route.job, result).inc()
                if isinstance(exc, RetryableLaunchError):
                    python_errors += 1
                    if python_errors >= MAX_PYTHON_ERROR_ATTEMPTS:
                        raise LaunchRejected(exc.typename, f"{exc} ({python_errors} times in a row)") from exc
                else:
                    self.metrics.dagster_up.set(0)
                delay = backoff.next_delay()
                logger.warning("launch of batch %s failed (%s), attempt %d; retrying in %.1fs",
                               batch.batch_id, exc, attempts, delay, extra=batch_extra(batch))
                await asyncio.sleep(delay)

    async def on_run_failed(self, run: LaunchedRun, status: str) -> None:
        """Copy the records of a run that ended FAILURE or CANCELED to the DLQ, stage `run`."""
        if self.read_range is None:
            return
        reader = self.read_range
        records = await self.retry_transient(
            partial(reader, run.topic, run.partition, run.offset_start, run.offset_end),
            "reading a failed run's records")
        failure = Failure("run", f"Run{status.title()}", f"Dagster run {run.run_id} ended {status}",
                          run_id=run.run_id)
        await self.dead_letter(records, failure)

    async def dead_letter(self, records: Iterable[Record], failure: Failure, done: bool = False) -> None:
        """Write records to the DLQ (retrying transient broker failures); `done`: then mark each done."""
        for record in records:
            await self.retry_transient(partial(self._send_dead_letter, record, failure), "dead-letter")
            self.metrics.dlq_messages.labels(record.topic, failure.stage).inc()
            logger.warning("dead-lettered %s/%d offset %d at stage %s: %s: %s", record.topic,
                           record.partition, record.offset, failure.stage, failure.error_class,
                           failure.error_message)
            if done:
                self._done(record.tp, record.offset + 1, record.epoch)

    async def _send_dead_letter(self, record: Record, failure: Failure) -> None:
        headers = dlq_headers(record, failure)
        await self.sink.send(self.dlq_topic, record.key, record.value, headers, record.timestamp_ms)

    async def retry_transient(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        backoff = Backoff(max_delay_s=self.retry_max_delay_s)
        while True:
            try:
                result = await call()
            except TransientError as exc:
                self.metrics.dagster_up.set(0)
                delay = backoff.next_delay()
                logger.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
            else:
                return result

    # -- rebalance and shutdown ---------------------------------------------

    async def on_revoked(self, tps: Iterable[TP], timeout_s: float) -> None:
        """Rebalance: launch what is open for the revoked partitions, then forget them.

        Revoked partitions are no longer marked done (their commits are Faust's
        no more); the next owner learns what was launched by reconciling with Dagster.
        """
        tps = set(tps)
        self._bump_epochs(tps)
        await self._hand_over(tps, timeout_s)

    async def close(self, timeout_s: float) -> None:
        """Shutdown: launch and mark done what is open, within `timeout_s`, so the last commit covers it."""
        tps = set(self.lanes) | set(self.batcher.open) | set(self.reconciles)
        await self._hand_over(tps, timeout_s)
        self._bump_epochs(tps)

    def _bump_epochs(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self.epochs[tp] = self.epochs.get(tp, 0) + 1

    async def _hand_over(self, tps: set[TP], timeout_s: float) -> None:
        for batch in self.batcher.drain(tps):
            lane = self._lane(batch.tp)
            if lane.queue.full():
                continue  # its records stay uncommitted: whoever consumes them next reconciles first
            self._count_closed(batch)
            lane.queue.put_nowait(batch)
        lanes = [lane for tp, lane in self.lanes.items() if tp in tps]
        if lanes:
            done = await asyncio.gather(*(lane.join(timeout_s) for lane in lanes))
            if not all(done):
                logger.warning("%d partitions still launching after %.0fs; leaving their batches uncommitted",
                               done.count(False), timeout_s)
        for tp in tps:
            handed = self.lanes.pop(tp, None)
            if handed is not None:
                await handed.close()
            self.covered.pop(tp, None)
            reconcile = self.reconciles.pop(tp, None)
            if reconcile is not None:
                reconcile.cancel()
            self.positions.pop(tp, None)
            self.next_offsets.pop(tp, None)


def _launched(run_id: str, job: str, tags: dict[str, str]) -> LaunchedRun:
    return LaunchedRun(run_id, job, tags[TAG_TOPIC], int(tags[TAG_PARTITION]),
                       int(tags[TAG_OFFSET_START]), int(tags[TAG_OFFSET_END]))
