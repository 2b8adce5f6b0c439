"""Delivery: from consumed records to launched runs and dead letters.

This is where the delivery invariant is kept. Every record of a routed topic
ends in exactly one launched run's offset range or in the DLQ (stages decode,
validate, and launch where a route asks to dead-letter refused launches), and
only then is it marked done, so its offset may be committed. Records arrive as
fetched chunks of one partition, in offset order; each partition's records are
marked done in that same order.

- Each owned topic-partition is one `OwnedPartition`, made when it is
  assigned and dropped when it is revoked: its lane of closed batches and
  dead letters (worked one at a time, in offset order; a full lane blocks the
  consumer, which keeps memory bounded while Dagster is down), its reconcile
  with Dagster, the highest offset covered by a run, and its read positions.
- Before the first record of a partition is handled, the partition is
  reconciled: runs tagged with its topic, partition and consumer group tell
  the highest offset already covered, and those records are skipped.
- Before every launch the worker proves with the group coordinator that it
  still owns the partition (`fence`); a worker that lost it (frozen past its
  session timeout) drops the partition's batches and launches nothing.
- The three kinds of failure (`service.errors`): transient ones are retried
  with backoff and never dead-letter; a bad record goes to the DLQ alone; a
  route that Dagster refuses pauses (`service.pauses`) and retries the same
  batch until it is fixed.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import enum
import itertools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any, Protocol

from service.batching import Batch, Batcher, BatchPolicy
from service.contract import (
    STAGE_LAUNCH,
    STAGE_ROUTE,
    STAGE_RUN,
    TAG_BATCH_ID,
    TAG_CONSUMER_GROUP,
    TAG_OFFSET_END,
    TAG_PARTITION,
    TAG_ROUTE,
    TAG_TOPIC,
)
from service.dagster_client import DagsterClient, RunInfo, Target, location_failure
from service.decoding import JsonBounds, decode_value
from service.dlq import Failure, dlq_headers
from service.duplicates import DuplicateRuns
from service.errors import (
    CODE_LOCATION_ERROR,
    BatchTooLarge,
    DagsterError,
    DagsterUnavailable,
    Fenced,
    KafkaDagsterError,
    KafkaRejected,
    LaunchRejected,
    NoRouteMatched,
    RateLimited,
    RecordError,
    RequestRejected,
    RouteError,
    TransientError,
)
from service.logs import batch_extra
from service.metrics import Metrics
from service.outcomes import DUPLICATE
from service.partition_sets import PartitionSets
from service.pauses import RoutePauses
from service.records import TP, Record
from service.retry import EVERY_PAUSE, Refusal, Resumes, Retrying, route_refusal, until_accepted
from service.routes import Route, RouteTable
from service.routing import route_record, selects
from service.run_request import inline_records_json, launched_run, run_config, run_tags  # noqa: F401  (re-exported)
from service.throttle import Throttle
from service.verdicts import Verdict, survivor
from service.watcher import FAILED, TERMINAL, LaunchedRun, RunWatcher

logger = logging.getLogger(__name__)

# Dagster answering PythonError this many times in a row is no passing trouble: the route pauses.
MAX_DAGSTER_ERROR_ATTEMPTS = 10
# A route paused for its code location looks this often whether the workspace shows it loaded again,
# so it resumes within seconds of a fix instead of at its next backoff retry (up to minutes away).
LOCATION_PROBE_S = 3.0
# A batch whose runs all failed before processing it is launched again at most this many times, after
# RELAUNCH_BASE_S, doubling; then its records go to the DLQ with the reason (docs/delivery.md, Run outcomes).
MAX_SYSTEM_FAILURES = 4
RELAUNCH_BASE_S = 5.0
RELAUNCH_MAX_DELAY_S = 60.0
# What the outcomes topic says of a run settled without a dead letter.
SUPERSEDED = "SUPERSEDED"  # another run of its batch keeps the records
RELAUNCHED = "RELAUNCHED"  # its batch was launched again
DEAD_LETTERED = "DEAD_LETTERED"  # launching its batch again was refused: the records are in the DLQ
DLQ_WRITE = "dlq_write"  # a route's pause reason: the DLQ topic refused a dead letter


class DeadLetterSink(Protocol):
    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes]], timestamp_ms: int | None) -> None: ...


class HandledOutcomes(Protocol):
    """Which runs that did not succeed are settled already, by any worker (`service.outcomes.OutcomeLog`)."""

    async def outcome(self, run_id: str) -> str | None: ...

    async def record(self, run_id: str, status: str) -> None: ...

    async def cancelled_as_duplicates(self) -> set[str]: ...


# (topic, partition, offset) -> next offset: proves ownership by committing it (see `Delivery`).
Fence = Callable[[TP, int], Awaitable[bool]]
ReadRange = Callable[[str, int, int, int], Awaitable[list[Record]]]


@dataclass
class DeadLetters:
    """Records a pre-launch stage rejected, handled in order with the partition's batches."""

    records: list[Record]
    failure: Failure


class Lane:
    """One route's queue of closed batches and dead letters for one partition, worked in order.

    `first_pending` is the lowest offset handed to the lane and not yet
    launched or dead-lettered: what the partition's commit may not pass.
    """

    def __init__(self, name: str, maxsize: int, handle: Callable[[Batch | DeadLetters], Awaitable[None]],
                 on_done: Callable[[], None], on_fatal: Callable[[BaseException], Awaitable[None]]) -> None:
        self.name = name
        self.queue: asyncio.Queue[Batch | DeadLetters] = asyncio.Queue(maxsize)
        self.pending: deque[int] = deque()
        self._handle = handle
        self._on_done = on_done
        self._on_fatal = on_fatal
        self._task = asyncio.create_task(self._run(), name=f"lane-{name}")

    @property
    def first_pending(self) -> int | None:
        return self.pending[0] if self.pending else None

    async def put(self, item: Batch | DeadLetters) -> None:
        self.pending.append(_first_offset(item))  # pending while it waits for room, too
        await self.queue.put(item)

    def put_nowait(self, item: Batch | DeadLetters) -> None:
        self.pending.append(_first_offset(item))
        self.queue.put_nowait(item)

    def drain(self) -> list[Batch | DeadLetters]:
        """Take every queued item out, unhandled (the partition moved to another worker)."""
        items = []
        while not self.queue.empty():
            items.append(self.queue.get_nowait())
            self.queue.task_done()
        self.pending.clear()
        return items

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
                logger.exception("lane %s failed; stopping the worker", self.name)
                await self._on_fatal(exc)
                raise
            finally:
                self.queue.task_done()
            if self.pending:
                self.pending.popleft()
            self._on_done()

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
        self.drain()  # frees a producer blocked on a full queue


def _first_offset(item: Batch | DeadLetters) -> int:
    return item.offset_start if isinstance(item, Batch) else item.records[0].offset


@dataclass(frozen=True)
class Reconciled:
    """What a reconcile with Dagster found, for /status."""

    at: float  # wall-clock time
    runs_found: int
    covered: int


@dataclass(eq=False)
class RouteShare:
    """One route's share of an owned partition: its lane, and what of the partition its runs cover."""

    route: Route
    batcher: Batcher
    lane: Lane
    covered: int | None = None  # highest offset inside a launched run of the route; None until reconciled
    reconcile: asyncio.Task[int] | None = None
    reconciled: Reconciled | None = None

    def first_pending(self, tp: TP) -> int | None:
        """The lowest offset the route holds in an open batch or its lane (None: holds nothing)."""
        open_batch = self.batcher.open.get(tp)
        lowest = self.lane.first_pending
        if open_batch is not None and (lowest is None or open_batch.offset_start < lowest):
            lowest = open_batch.offset_start
        return lowest


class PartitionState(enum.Enum):
    """Where an owned partition is between its assignment and its drop."""

    ASSIGNED = "assigned"
    HANDING_OVER = "handing_over"  # revoked: launch what is open, commit nothing more
    FENCED = "fenced"  # the coordinator says another worker owns it now: launch and commit nothing
    DROPPED = "dropped"  # no longer held here


@dataclass(eq=False)
class OwnedPartition:
    """What the worker holds for one partition it owns, from assignment to revoke.

    Every route of the topic has its `RouteShare`; records no route matches
    and that the topic dead-letters go through `unmatched`. The partition is
    done below the lowest offset any of them still holds, or below
    `dispatched` when none holds anything.
    """

    tp: TP
    epoch: int
    shares: list[RouteShare]
    unmatched: Lane | None = None
    position: int | None = None  # first offset consumed since assignment (the committed offset then)
    next_offset: int | None = None
    dispatched: int | None = None  # every record below it has been handed to the routes it matches
    state: PartitionState = PartitionState.ASSIGNED

    @property
    def may_launch(self) -> bool:
        """Batches of it may be launched (each launch still proves ownership with the coordinator first)."""
        return self.state in (PartitionState.ASSIGNED, PartitionState.HANDING_OVER)

    @property
    def may_commit(self) -> bool:
        """Its offsets may be marked done: a revoked partition's commits are Faust's no more."""
        return self.state is PartitionState.ASSIGNED

    def owns(self, record: Record) -> bool:
        """The record was consumed for this assignment of the partition, and it is still held here."""
        return record.epoch == self.epoch and self.may_launch

    def hand_over(self) -> None:
        if self.state is PartitionState.ASSIGNED:
            self.state = PartitionState.HANDING_OVER

    def fence(self) -> None:
        if self.state is not PartitionState.DROPPED:
            self.state = PartitionState.FENCED

    def drop(self) -> None:
        self.state = PartitionState.DROPPED

    def share(self, route: str) -> RouteShare | None:
        return next((share for share in self.shares if share.route.name == route), None)

    @property
    def lanes(self) -> list[Lane]:
        return [share.lane for share in self.shares] + ([self.unmatched] if self.unmatched else [])

    def done_below(self) -> int | None:
        """Every offset below this is launched, dead-lettered or skipped by every route of the topic."""
        if self.dispatched is None:
            return None
        lowest = self.dispatched
        for share in self.shares:
            held = share.first_pending(self.tp)
            if held is not None and held < lowest:
                lowest = held
        if self.unmatched is not None and self.unmatched.first_pending is not None:
            lowest = min(lowest, self.unmatched.first_pending)
        return lowest


class Delivery:
    """Owns batching, launching, reconciling and dead-lettering for one worker.

    :param routes: the routes (`service.routes.RouteTable`: by name, and which read each topic)
    :param client: the Dagster GraphQL client
    :param dead_letters: where dead letters are written (the DLQ producer)
    :param metrics: the worker's metrics
    :param group_id: the consumer group, tagged on every run and used to reconcile
    :param dlq_topic: the dead-letter topic
    :param max_message_bytes: the record size bound (stage `validate` above it)
    :param read_range: reads a partition's offset range back, to copy a failed run's records to the DLQ
    :param outcomes: which failed runs are copied already, by any worker (each is copied once)
    :param fence: proves with the group coordinator that this worker owns a partition (a synchronous
        commit of the given offset); False means another worker owns it now
    :param mark_done: every offset of the partition below the given one is launched or dead-lettered
    :param pause_fetching: stop (True) or resume (False) fetching these partitions
    :param on_fatal: a bug in a lane: stop the worker
    :param queued_batches_per_partition: closed batches a lane holds before the consumer blocks
    :param retry_max_delay_s: the cap of the backoff for transient failures
    :param route_retry_max_delay_s: the cap of the backoff of a paused route
    :param max_inflight_runs: launched runs watched at once before launching waits
    :param run_poll_interval_s: how often run statuses are polled
    :param duplicate_window_s: how long a batch whose launch answer was lost is checked for duplicates
    :param clock: monotonic time, for batch deadlines
    :param wall_clock: epoch time, to credit a batch's clock with its first record's way to the worker
    :param json_bounds: depth and key bounds of decoded values
    """

    def __init__(self, routes: RouteTable, client: DagsterClient, dead_letters: DeadLetterSink,
                 metrics: Metrics, *, group_id: str, dlq_topic: str, max_message_bytes: int,
                 read_range: ReadRange, outcomes: HandledOutcomes, fence: Fence, mark_done: Callable[[TP, int], None],
                 pause_fetching: Callable[[set[TP], bool], None],
                 on_fatal: Callable[[BaseException], Awaitable[None]],
                 queued_batches_per_partition: int = 4, retry_max_delay_s: float = 30.0,
                 route_retry_max_delay_s: float = 120.0, max_inflight_runs: int = 64,
                 run_poll_interval_s: float = 1.0, duplicate_window_s: float = 120.0,
                 clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time,
                 json_bounds: JsonBounds | None = None) -> None:
        self.routes = routes
        self.client = client
        self.sink = dead_letters
        self.metrics = metrics
        self.group_id = group_id
        self.dlq_topic = dlq_topic
        self.max_message_bytes = max_message_bytes
        self.read_range = read_range
        self.outcomes = outcomes
        self.fence = fence
        self.mark_done = mark_done
        self.pause_fetching = pause_fetching
        self.on_fatal = on_fatal
        self.bounds = json_bounds or JsonBounds()
        self.queue_size = queued_batches_per_partition
        self.retrying = Retrying(metrics, retry_max_delay_s, route_retry_max_delay_s)
        self.clock = clock
        self.wall_clock = wall_clock
        self.batchers = {name: Batcher(BatchPolicy(r.max_records, r.max_bytes, r.max_wait_s), name)
                         for name, r in routes.items()}
        self.throttles = {name: Throttle(name, r.job, metrics, max_runs_per_minute=r.max_runs_per_minute,
                                         max_queued_runs=r.max_queued_runs, queued_runs=self._queued_runs,
                                         clock=clock)
                          for name, r in routes.items() if r.throttled}
        self.partitions: dict[TP, OwnedPartition] = {}
        self.partition_sets = PartitionSets(client)
        self._epochs = itertools.count(1)
        self.closing = False
        self.pauses = RoutePauses(metrics, self._on_route_pause)
        self.duplicates = DuplicateRuns(client, metrics, outcomes, duplicate_window_s, MAX_SYSTEM_FAILURES)
        self._relaunches: dict[str, asyncio.Task[None]] = {}  # batch id -> its relaunch
        self.watcher = RunWatcher(client, metrics, self.on_run_failed, max_inflight_runs, run_poll_interval_s,
                                  sweep=self.duplicates.sweep)

    # -- owned partitions ---------------------------------------------------

    def epoch(self, tp: TP) -> int:
        """The current assignment epoch of `tp` (made on first use); 0 while shutting down."""
        if self.closing:
            return 0
        return self._owned(tp).epoch

    def _owned(self, tp: TP) -> OwnedPartition:
        owned = self.partitions.get(tp)
        if owned is None:
            owned = self.partitions[tp] = self._new_partition(tp)
        return owned

    def _new_partition(self, tp: TP) -> OwnedPartition:
        owned = OwnedPartition(tp, next(self._epochs), [])
        advance = partial(self._advance, owned)
        for route in self.routes.for_topic(tp.topic):
            share = RouteShare(route, self.batchers[route.name], None)  # type: ignore[arg-type]  # lane next
            share.lane = Lane(f"{route.name}-{tp.topic}-{tp.partition}", self.queue_size,
                              partial(self._handle, owned, share), advance, self.on_fatal)
            owned.shares.append(share)
        if self.routes.unmatched(tp.topic) == "dead_letter":
            owned.unmatched = Lane(f"unmatched-{tp.topic}-{tp.partition}", self.queue_size,
                                   partial(self._handle, owned, None), advance, self.on_fatal)
        return owned

    def _current(self, record: Record) -> OwnedPartition | None:
        """The partition the record was consumed for, if this worker still holds that assignment."""
        owned = self.partitions.get(record.tp)
        return owned if owned is not None and owned.owns(record) else None

    def _advance(self, owned: OwnedPartition) -> None:
        """Mark the partition done below what every route of it has finished with."""
        if not owned.may_commit:
            return  # records from before a revoke must not commit for a partition we may no longer own
        done = owned.done_below()
        if done is not None:
            self.mark_done(owned.tp, done)

    @property
    def next_offsets(self) -> dict[TP, int]:
        return {tp: p.next_offset for tp, p in self.partitions.items() if p.next_offset is not None}

    @property
    def positions(self) -> dict[TP, int]:
        return {tp: p.position for tp, p in self.partitions.items() if p.position is not None}

    # -- records in ---------------------------------------------------------

    async def on_records(self, records: Sequence[Record]) -> None:
        """Handle consecutive records of one partition: each route of the topic skips, dead-letters or
        batches the ones it matches; the rest are unmatched."""
        if not records:
            return
        owned = self._current(records[0])
        if owned is None:
            return  # consumed for an assignment this worker no longer holds: its next owner reads them
        tp = owned.tp
        self.metrics.messages_consumed.labels(tp.topic).inc(len(records))
        if owned.position is None:
            owned.position = records[0].offset
            logger.info("consuming %s/%d from offset %d", tp.topic, tp.partition, records[0].offset)
        owned.next_offset = records[-1].offset + 1
        covered = [await self._covered(owned, share) for share in owned.shares]
        if not owned.owns(records[0]):
            return
        only = owned.shares[0].route if len(owned.shares) == 1 else None
        if only is not None and only.match is None and only.partition_key is None:
            await self._add_checked(owned, owned.shares[0], [r for r in records if r.offset > covered[0]])
        else:
            await self._dispatch(owned, records, covered)
        if owned.owns(records[0]):
            owned.dispatched = records[-1].offset + 1
            self._advance(owned)

    async def _add_checked(self, owned: OwnedPartition, share: RouteShare, records: Sequence[Record]) -> None:
        """The one route of the topic takes every record: batch those that decode and validate,
        dead-letter each one that does not, in order (the fast path: slices, no per-record routing)."""
        validator = share.route.validator()
        good_from = 0
        for index, record in enumerate(records):
            try:
                decode_value(record, self.max_message_bytes, validator, self.bounds)
            except RecordError as exc:
                await self._add(owned, share, records[good_from:index])
                await self._reject(owned, share, record, exc)
                good_from = index + 1
        await self._add(owned, share, records[good_from:])

    async def _dispatch(self, owned: OwnedPartition, records: Sequence[Record], covered: list[int]) -> None:
        """Route each record to every route it matches (`service.routing`), keeping each route's order."""
        shares = {share.route.name: share for share in owned.shares}
        taken: dict[str, list[Record]] = {name: [] for name in shares}
        keys: dict[str, list[str | None]] = {name: [] for name in shares}  # partition keys, as taken
        routes = [share.route for share in owned.shares]
        below = {share.route.name: c for share, c in zip(owned.shares, covered, strict=True)}
        for record in records:
            verdicts = route_record(routes, record, self.max_message_bytes, self.bounds)
            if not verdicts:
                await self._unmatched(owned, record)
                continue
            verdicts = [v for v in verdicts if record.offset > below[v.route.name]]  # else in a run already
            if verdicts and verdicts[0].shared:
                await self._reject_shared(owned, [shares[v.route.name] for v in verdicts], taken, keys, record,
                                          verdicts[0].failure)  # type: ignore[arg-type]  # shared: a failure
                continue
            for verdict in verdicts:
                name = verdict.route.name
                if verdict.failure is None:
                    taken[name].append(record)
                    keys[name].append(verdict.partition_key)
                    continue
                await self._add(owned, shares[name], taken[name], keys[name])
                taken[name], keys[name] = [], []
                await self._reject(owned, shares[name], record, verdict.failure)
        for name, share in shares.items():
            await self._add(owned, share, taken[name], keys[name])

    async def _reject_shared(self, owned: OwnedPartition, shares: list[RouteShare], taken: dict[str, list[Record]],
                             keys: dict[str, list[str | None]], record: Record, exc: RecordError) -> None:
        """A value no route can read: one dead letter for all of them (in the first one's lane), every
        one of their batches split before it."""
        for share in shares:
            await self._add(owned, share, taken[share.route.name], keys[share.route.name])
            taken[share.route.name], keys[share.route.name] = [], []
            split = share.batcher.split(record.tp)
            if split is not None:
                await self._submit(owned, share, split)
        names = ",".join(share.route.name for share in shares)
        failure = dataclasses.replace(Failure.from_exception(exc.stage, exc), route=names)
        await shares[0].lane.put(DeadLetters([record], failure))

    async def _unmatched(self, owned: OwnedPartition, record: Record) -> None:
        self.metrics.messages_unmatched.labels(record.topic).inc()
        if owned.unmatched is not None:
            failure = Failure.from_exception(STAGE_ROUTE, NoRouteMatched(
                f"no route of topic {record.topic!r} matches the record"))
            await owned.unmatched.put(DeadLetters([record], failure))

    async def _add(self, owned: OwnedPartition, share: RouteShare, records: Sequence[Record],
                   keys: Sequence[str | None] | None = None) -> None:
        """Batch `records` for the route; with `keys` (a partitioned route's), a batch holds one key."""
        if share.route.partition_key is None:
            keys = None
        for batch in share.batcher.add_many(records, self.clock(), self.wall_clock(), keys):
            await self._submit(owned, share, batch)

    async def _reject(self, owned: OwnedPartition, share: RouteShare, record: Record, exc: RecordError) -> None:
        """Dead-letter `record` for the route in offset order: the open batch before it is launched first."""
        split = share.batcher.split(record.tp)
        if split is not None:
            await self._submit(owned, share, split)
        failure = dataclasses.replace(Failure.from_exception(exc.stage, exc), route=share.route.name)
        await share.lane.put(DeadLetters([record], failure))

    async def tick(self) -> None:
        """Close the batches whose `max_wait_s` has passed (not a held route's: those grow until full)."""
        now = self.clock()
        for name, batcher in self.batchers.items():
            throttle = self.throttles.get(name)
            if throttle is not None and throttle.held:
                continue
            for batch in batcher.expire(now):
                owned = self.partitions.get(batch.tp)
                share = owned.share(name) if owned is not None else None
                if owned is not None and share is not None:
                    await self._submit(owned, share, batch)

    def seconds_to_next_deadline(self, at_most: float) -> float:
        """How long until the next open batch is due to close on time, capped at `at_most`."""
        deadlines = [d for d in (b.next_deadline() for b in self.batchers.values()) if d is not None]
        return at_most if not deadlines else min(at_most, max(0.0, min(deadlines) - self.clock()))

    async def _submit(self, owned: OwnedPartition, share: RouteShare, batch: Batch) -> None:
        if not owned.may_launch:
            return  # the partition moved on: its next owner reconciles and launches these records
        self._count_closed(batch)
        await share.lane.put(batch)

    def _count_closed(self, batch: Batch) -> None:
        batch.closed_at = self.clock()
        self.metrics.batches.labels(batch.topic, batch.reason).inc()
        self.metrics.batch_records.labels(batch.topic).observe(len(batch.records))

    # -- reconciliation -----------------------------------------------------

    def on_assigned(self, tps: Iterable[TP]) -> None:
        """New assignment: reconcile each route of its partitions all at once, before their records
        arrive, spread their first batch deadlines, and keep paused routes' partitions from fetching."""
        tps = [tp for tp in tps if self.routes.for_topic(tp.topic)]
        for batcher in self.batchers.values():
            batcher.stagger(tp for tp in tps if self.routes[batcher.route].reads(tp.topic))
        paused: set[TP] = set()
        for tp in tps:
            owned = self._owned(tp)
            for share in owned.shares:
                if share.covered is None:
                    self._reconcile_task(owned, share)
                if self.pauses.is_paused(share.route.name):
                    paused.add(tp)
        if paused:
            self.pause_fetching(paused, True)

    async def _covered(self, owned: OwnedPartition, share: RouteShare) -> int:
        """Highest offset of the partition inside a launched run of the route (-1: none); asks Dagster once."""
        if share.covered is None:
            task = self._reconcile_task(owned, share)
            try:
                share.covered = await asyncio.shield(task)
            finally:
                if task.done() and share.covered is None:  # a failure is not kept: the next caller asks again
                    share.reconcile = None
        return share.covered

    def _reconcile_task(self, owned: OwnedPartition, share: RouteShare) -> asyncio.Task[int]:
        if share.reconcile is None:
            share.reconcile = asyncio.create_task(
                self._until_accepted(share.route, partial(self.retrying.transient,
                                                          partial(self._reconcile, owned.tp, share.route),
                                                          "reconcile")),
                name=f"reconcile-{share.route.name}-{owned.tp.topic}-{owned.tp.partition}")
        return share.reconcile

    async def _reconcile(self, tp: TP, route: Route) -> int:
        runs = await self.client.find_runs(
            {TAG_TOPIC: tp.topic, TAG_PARTITION: str(tp.partition), TAG_CONSUMER_GROUP: self.group_id,
             TAG_ROUTE: route.name},
            job=route.job,
            limit=1000,
        )
        covered = max((int(run.tags[TAG_OFFSET_END]) for run in runs), default=-1)
        owned = self.partitions.get(tp)
        share = owned.share(route.name) if owned is not None else None
        if share is not None:
            share.reconciled = Reconciled(time.time(), len(runs), covered)
        unsettled = 0
        for batch_runs in _by_batch(runs).values():
            unsettled += await self._adopt_unsettled(batch_runs)
        logger.info("reconciled route %r on %s/%d: %d earlier runs (%d ended ones not yet settled), covered "
                    "up to offset %d", route.name, tp.topic, tp.partition, len(runs), unsettled, covered)
        return covered

    async def _adopt_unsettled(self, batch_runs: list[RunInfo]) -> int:
        """Watch a batch's runs still going, and those that ended unsettled while no worker watched them (the
        watcher settles them at its next poll); a batch whose runs the duplicate rule all cancelled, once."""
        unsettled = 0
        outcomes = set()
        for run in batch_runs:
            if run.status not in TERMINAL:
                self.watcher.adopt(launched_run(run.run_id, run.job, run.tags))
            elif run.status in FAILED:
                outcome = await self.outcomes.outcome(run.run_id)
                outcomes.add(outcome)
                if outcome is None:
                    self.watcher.adopt(launched_run(run.run_id, run.job, run.tags))
                    unsettled += 1
        if outcomes == {DUPLICATE} and survivor(batch_runs) is None:  # a race, then its worker died
            newest = max(batch_runs, key=lambda run: (run.creation_time, run.run_id))
            self.watcher.adopt(launched_run(newest.run_id, newest.job, newest.tags))
            unsettled += 1
        return unsettled

    # -- lanes: launch and dead-letter --------------------------------------

    async def _handle(self, owned: OwnedPartition, share: RouteShare | None, item: Batch | DeadLetters) -> None:
        if not owned.may_launch:
            return  # dropped: launch nothing for a partition another worker owns now
        if isinstance(item, DeadLetters):
            await self.dead_letter(item.records, item.failure)
        elif share is not None:
            await self._launch(owned, share, item)

    async def _launch(self, owned: OwnedPartition, share: RouteShare, batch: Batch) -> None:
        route = share.route
        try:
            run_id = await self._launch_until_accepted(owned, share, batch)
        except Fenced as exc:
            self._drop_fenced(owned, batch, exc)
            return
        except RecordError as exc:  # its partition key is not a partition of the target: every record's
            logger.error("batch %s (%s/%d offsets %d-%d) not launched: %s; dead-lettering its %d records",
                         batch.batch_id, batch.topic, batch.partition, batch.offset_start, batch.offset_end, exc,
                         len(batch.records), extra=batch_extra(batch))
            failure = dataclasses.replace(Failure.from_exception(exc.stage, exc), route=route.name)
            await self.dead_letter(batch.records, failure)
            return
        except RouteError as exc:  # only where the route dead-letters refused launches
            logger.error("launch of batch %s (%s/%d offsets %d-%d) rejected: %s; dead-lettering it "
                         "(on_launch_rejected = \"dead_letter\")", batch.batch_id, batch.topic, batch.partition,
                         batch.offset_start, batch.offset_end, exc, extra=batch_extra(batch))
            failure = dataclasses.replace(Failure.from_exception(STAGE_LAUNCH, exc), route=route.name)
            await self.dead_letter(batch.records, failure)
            return
        share.covered = max(share.covered if share.covered is not None else -1, batch.offset_end)
        self._observelaunched_run(batch, run_id)
        await self.watcher.add(launched_run(run_id, route.job, run_tags(route, batch, self.group_id)))

    def _observelaunched_run(self, batch: Batch, run_id: str) -> None:
        oldest = min((r.timestamp_ms for r in batch.records if r.timestamp_ms), default=None)
        if oldest:
            self.metrics.event_to_launch.labels(batch.topic).observe(max(0.0, time.time() - oldest / 1000))
        waited_s = self.clock() - batch.closed_at if batch.closed_at is not None else 0.0
        logger.info("launched run %s for batch %s (route %r, %s/%d offsets %d-%d, %d records, closed by %s "
                    "%.3fs ago)", run_id, batch.batch_id, batch.route, batch.topic, batch.partition,
                    batch.offset_start, batch.offset_end, len(batch.records), batch.reason, waited_s,
                    extra=batch_extra(batch, run_id) | {"closed_s_ago": round(waited_s, 3)})

    async def _queued_runs(self, job: str) -> int:
        return await self.client.count_runs(job, ["QUEUED"])

    async def _launch_until_accepted(self, owned: OwnedPartition, share: RouteShare, batch: Batch) -> str:
        """Launch the batch's run; while the route is refused, pause it and retry the same batch.

        Raises `Fenced` if the partition moved, and `RouteError` only for a route that
        dead-letters refused launches. A batch refused for its size goes again with its
        offset range only (the run reads the records back from Kafka). A route with
        run-rate limits first waits for a launch slot.
        """
        route = share.route
        throttle = self.throttles.get(route.name)
        if throttle is None:
            return await self._launch_through_refusals(owned, route, batch)
        slot = await throttle.acquire()
        try:
            run_id = await self._launch_through_refusals(owned, route, batch)
        except BaseException:
            throttle.release(slot)
            raise
        throttle.launched(slot)
        return run_id

    async def _launch_through_refusals(self, owned: OwnedPartition, route: Route, batch: Batch) -> str:
        inline = True
        too_large: RouteError | None = None  # refused for its size even with the offset range only: a pause

        async def attempt() -> str:
            nonlocal inline, too_large
            while True:
                try:
                    return await self._launch_once(owned, route, batch, inline)
                except BatchTooLarge as exc:
                    if not inline:
                        too_large = RequestRejected(f"{exc}, even with the offset range only",
                                                    hint="raise the request size limit of the proxy in front of "
                                                    "Dagster")
                        raise too_large from exc
                    logger.warning("batch %s was refused for its size (%s); launching it with its offset range "
                                   "only", batch.batch_id, exc, extra=batch_extra(batch))
                    inline = False

        def refusal(exc: Exception) -> Refusal | None:
            if route.dead_letters_rejected_launches and isinstance(exc, RouteError) and exc is not too_large:
                return None  # raised: the route dead-letters refused launches
            return route_refusal(exc)

        return await self._until_accepted(route, attempt, refusal)

    async def _until_accepted(self, route: Route, attempt: Callable[[], Awaitable[Any]],
                              refusal: Callable[[Exception], Refusal | None] = route_refusal,
                              resumes: Resumes = EVERY_PAUSE) -> Any:
        """`attempt()` until the route's Dagster accepts it: each refusal pauses the route and waits."""
        return await until_accepted(attempt, pauses=self.pauses, route=route.name, resumes=resumes,
                                    refusal=refusal, backoff=self.retrying.route_backoff(),
                                    wait=partial(self._route_refused, route))

    async def _route_refused(self, route: Route, refused: Refusal, delay_s: float) -> None:
        self.client.forget_job(route.job)
        if refused.reason == CODE_LOCATION_ERROR:
            await self._until_location_loads(route, delay_s)
        else:
            await self.pauses.wait(route.name, delay_s)

    async def _until_location_loads(self, route: Route, delay_s: float) -> None:
        """Wait `delay_s`, or less: until the route's code location (any, if not pinned) loads again."""
        deadline = time.monotonic() + delay_s
        while (left := deadline - time.monotonic()) > 0:
            await self.pauses.wait(route.name, min(LOCATION_PROBE_S, left))
            if not self.pauses.is_paused(route.name):
                return  # another lane got through
            try:
                broken = await self.client.broken_locations(max_age_s=LOCATION_PROBE_S / 2)
            except KafkaDagsterError:
                continue  # Dagster itself unreachable: keep waiting
            if not (broken if route.location is None else route.location in broken):
                return

    async def _launch_once(self, owned: OwnedPartition, route: Route, batch: Batch, inline: bool) -> str:
        """Launch the batch's run, retrying transient failures; never launches it twice knowingly."""
        tags = run_tags(route, batch, self.group_id)
        dagster_errors = 0
        outcome_unknown = False

        async def attempt() -> tuple[str, bool]:
            """The run's id, and whether it is the one an earlier lost answer left (no launch now)."""
            try:
                target = await self._target(route)
                if batch.partition_key is not None:
                    await self.partition_sets.prepare(route, target, batch.partition_key)
                if outcome_unknown:
                    kept = await self.duplicates.settle(route.job, batch.batch_id)
                    if kept is not None:
                        return kept, True
                config = run_config(route, batch, inline, target.batch_ops)
                return await self._fenced_launch(owned, route, batch, target, config, tags), False
            except (RouteError, BatchTooLarge) as exc:
                self._count_launch(route, getattr(exc, "typename", type(exc).__name__))
                raise

        async def on_failure(exc: TransientError) -> None:
            nonlocal dagster_errors, outcome_unknown
            if isinstance(exc, DagsterError):
                dagster_errors += 1
                self._count_launch(route, exc.typename)
                if dagster_errors >= MAX_DAGSTER_ERROR_ATTEMPTS:
                    raise LaunchRejected(exc.typename, f"{exc} ({dagster_errors} times in a row)") from exc
                return
            # The request may have reached Dagster: a run may exist that this worker never heard of.
            outcome_unknown = outcome_unknown or (isinstance(exc, DagsterUnavailable)
                                                  and not isinstance(exc, RateLimited))
            if isinstance(exc, DagsterUnavailable) and exc.http_status is not None and exc.http_status >= 500:
                await self._raise_if_location_broken(route)

        run_id, kept = await self.retrying.transient(attempt, f"launch of batch {batch.batch_id}", on_failure)
        if outcome_unknown and not kept:
            run_id = await self.duplicates.settle(route.job, batch.batch_id) or run_id
        return run_id

    async def _target(self, route: Route) -> Target:
        if not route.assets:
            return Target(await self.client.resolve_job(route.job, route.location, route.repository), (),
                          (route.batch_op,))
        return await self.client.resolve_target(route.job, route.assets, route.location, route.repository)

    async def _raise_if_location_broken(self, route: Route) -> None:
        """The webserver is up but failed: if the route's code location failed to load, that is a route fault."""
        try:
            broken = await self.client.broken_locations()
        except TransientError:
            return
        failure = location_failure("CodeLocationError", "Dagster answered HTTP 5xx", broken, route.location)
        if failure is not None:
            raise failure

    async def _fenced_launch(self, owned: OwnedPartition, route: Route, batch: Batch, target: Target,
                             config: dict[str, Any], tags: dict[str, str]) -> str:
        """Prove ownership of the partition, then launch: nothing is awaited between the two."""
        await self._prove_ownership(owned, batch)
        started = time.monotonic()
        try:
            run_id = await self.client.launch_run(target, config, tags)
        except DagsterUnavailable:
            self._count_launch(route, "transport_error")
            raise
        finally:
            self.metrics.run_launch_duration.labels(batch.topic).observe(time.monotonic() - started)
        self._count_launch(route, "LaunchRunSuccess")
        self.metrics.dagster_up.set(1)
        return run_id

    def _count_launch(self, route: Route, result: str) -> None:
        self.metrics.run_launches.labels(route.job, result).inc()

    async def _prove_ownership(self, owned: OwnedPartition, batch: Batch) -> None:
        """Raise `Fenced` unless the coordinator confirms this worker owns the partition now."""
        if not owned.may_launch:
            raise Fenced(f"{owned.tp.topic}/{owned.tp.partition} is no longer assigned to this worker")
        # The commit proving it is of what the partition is done with (every route of it), at most the batch's
        # start, unless the whole batch lies below that (a batch launched again: its offsets are covered).
        done = owned.done_below()
        if done is None:
            offset = batch.offset_start
        elif batch.offset_end < done:
            offset = done
        else:
            offset = min(done, batch.offset_start)
        with self.metrics.fence_duration.time():
            owns = await self.retry_transient(partial(self.fence, owned.tp, offset),
                                              f"proving ownership of {owned.tp.topic}/{owned.tp.partition}")
        if not owns:
            raise Fenced(f"the group coordinator refused this worker's commit for "
                         f"{owned.tp.topic}/{owned.tp.partition}: the group has rebalanced without it")

    def _drop_fenced(self, owned: OwnedPartition, batch: Batch, exc: Fenced) -> None:
        """Another worker owns the partition: launch and commit nothing more for it here."""
        owned.fence()
        open_batches = [b for share in owned.shares for b in share.batcher.drain({owned.tp})]
        queued = [item for lane in owned.lanes for item in lane.drain() if isinstance(item, Batch)]
        dropped = [batch, *queued, *open_batches]
        self.metrics.fenced.labels(owned.tp.topic).inc(len(dropped))
        logger.warning("%s; dropped %d unlaunched batches (offsets %d-%d) for its new owner to reconcile and "
                       "launch", exc, len(dropped), min(b.offset_start for b in dropped),
                       max(b.offset_end for b in dropped))

    async def on_run_failed(self, run: LaunchedRun, status: str) -> None:
        """A watched run ended FAILURE or CANCELED: settle its batch by the one rule of `service.verdicts`."""
        outcome = await self.retry_transient(partial(self.outcomes.outcome, run.run_id), "reading handled outcomes")
        if outcome not in (None, DUPLICATE):
            return  # settled already, by another worker or an earlier life of this one
        if not run.batch_id:  # a run from before batches were tagged: its own end decides
            await self._dead_letter_run(run, run.run_id, status, f"Dagster run {run.run_id} ended {status}")
            return
        verdict: Verdict = await self.retry_transient(partial(self.duplicates.judge, run.job, run.batch_id),
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
            await self.retry_transient(partial(self.outcomes.record, run_id, done), "recording a handled outcome")

    async def _dead_letter_run(self, run: LaunchedRun, run_id: str, status: str, message: str) -> None:
        """Copy the records of `run`'s batch to the DLQ, stage `run`, naming `run_id`; then record it handled."""
        records = await self._records_of(run)
        route = self.routes.get(run.route)
        failure = Failure(STAGE_RUN, f"Run{status.title()}", message, run_id=run_id,
                          route=route.name if route is not None else None)
        await self.dead_letter(records, failure)
        await self.retry_transient(partial(self.outcomes.record, run_id, status), "recording a handled outcome")

    async def _records_of(self, run: LaunchedRun) -> list[Record]:
        """The records of a run's offset range that its route takes (the range also holds other routes')."""
        records = await self.retry_transient(
            partial(self.read_range, run.topic, run.partition, run.offset_start, run.offset_end),
            "reading a run's records back")
        route = self.routes.get(run.route)
        if route is None:
            return list(records)
        return [r for r in records if selects(route, r, self.max_message_bytes, self.bounds)]

    # -- relaunch: a batch left with no live run ------------------------------

    def _start_relaunch(self, run: LaunchedRun, verdict: Verdict) -> None:
        if run.batch_id in self._relaunches:
            return  # already being launched again (another of its runs ended at the same time)
        delay_s = 0.0
        if verdict.system_failures:
            delay_s = min(RELAUNCH_BASE_S * 2 ** (verdict.system_failures - 1), RELAUNCH_MAX_DELAY_S)
        logger.warning("batch %s (%s/%d offsets %d-%d) has no run left to process it (%s): launching it again "
                       "in %.0fs", run.batch_id, run.topic, run.partition, run.offset_start, run.offset_end,
                       verdict.reason, delay_s)
        task = asyncio.create_task(self._relaunch(run, verdict, delay_s), name=f"relaunch-{run.batch_id}")
        self._relaunches[run.batch_id] = task
        task.add_done_callback(partial(self._relaunch_done, run.batch_id))

    def _relaunch_done(self, batch_id: str, task: asyncio.Task[None]) -> None:
        self._relaunches.pop(batch_id, None)
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
        records = await self._records_of(run)
        if not records:
            logger.error("not launching batch %s again: its offsets %d-%d hold none of route %r's records",
                         run.batch_id, run.offset_start, run.offset_end, route.name)
            return
        batch = Batch(run.topic, run.partition, self.clock(), records, sum(len(r.value or b"") for r in records),
                      reason="relaunch", route=route.name, partition_key=run.partition_key)
        try:
            run_id = await self._launch_through_refusals(owned, route, batch)
        except Fenced as exc:
            logger.warning("not launching batch %s again: %s", run.batch_id, exc)
            return
        except (RecordError, RouteError) as exc:  # as for any launch of the batch: its records go to the DLQ
            stage = exc.stage if isinstance(exc, RecordError) else STAGE_LAUNCH
            logger.error("batch %s not launched again: %s; dead-lettering its %d records", run.batch_id, exc,
                         len(records))
            await self.dead_letter(records, dataclasses.replace(Failure.from_exception(stage, exc), route=route.name))
            await self._record_dead_runs(verdict, DEAD_LETTERED)
            return
        self.metrics.runs_relaunched.labels(route.job).inc()
        self.duplicates.watch(route.job, batch.batch_id)
        logger.warning("launched run %s for batch %s again (%s/%d offsets %d-%d): %s", run_id, batch.batch_id,
                       batch.topic, batch.partition, batch.offset_start, batch.offset_end, verdict.reason)
        await self._record_dead_runs(verdict, RELAUNCHED)
        await self.watcher.add(launched_run(run_id, route.job, run_tags(route, batch, self.group_id)))

    async def _record_dead_runs(self, verdict: Verdict, done: str) -> None:
        for dead in verdict.dead_runs:
            written = DUPLICATE if dead.run_id in verdict.cancelled_as_duplicates else None
            await self._record_outcome(dead.run_id, written, done)

    async def dead_letter(self, records: Iterable[Record], failure: Failure) -> None:
        """Write records to the DLQ, retrying what Kafka refuses."""
        for record in records:
            await self._send_until_accepted(record, failure)
            self.metrics.dlq_messages.labels(record.topic, failure.stage).inc()
            logger.warning("dead-lettered %s/%d offset %d at stage %s: %s: %s", record.topic,
                           record.partition, record.offset, failure.stage, failure.error_class,
                           failure.error_message)

    async def _send_until_accepted(self, record: Record, failure: Failure) -> None:
        """Send one dead letter; a broker that refuses it (e.g. for its size) pauses its route, reason dlq_write."""

        def refusal(exc: Exception) -> Refusal | None:
            if not isinstance(exc, KafkaRejected):
                return None
            return Refusal(DLQ_WRITE, f"the DLQ topic {self.dlq_topic} refused a dead letter of {record.topic}/"
                           f"{record.partition} offset {record.offset}: {exc}",
                           "raise the DLQ topic's max.message.bytes (or the broker's message.max.bytes)")

        await until_accepted(partial(self.retrying.transient, partial(self._send_dead_letter, record, failure),
                                     "dead-letter"),
                             pauses=self.pauses, route=failure.route or record.topic, resumes=Resumes(DLQ_WRITE),
                             refusal=refusal, backoff=self.retrying.route_backoff())

    async def _send_dead_letter(self, record: Record, failure: Failure) -> None:
        headers = dlq_headers(record, failure)
        await self.sink.send(self.dlq_topic, record.key, record.value, headers, record.timestamp_ms)

    async def retry_transient(self, call: Callable[[], Awaitable[Any]], what: str) -> Any:
        """`call()`, retried with backoff for as long as it fails transiently."""
        return await self.retrying.transient(call, what)

    def _on_route_pause(self, route_name: str, paused: bool) -> None:
        tps = {tp for tp, owned in self.partitions.items() if owned.share(route_name) is not None}
        if tps:
            self.pause_fetching(tps, paused)

    # -- rebalance and shutdown ---------------------------------------------

    async def on_revoked(self, tps: Iterable[TP], timeout_s: float) -> None:
        """Rebalance: launch what is open for the revoked partitions (each launch fenced), then drop them.

        Revoked partitions are no longer marked done (their commits are Faust's
        no more); the next owner learns what was launched by reconciling with Dagster.
        """
        owned = [self.partitions[tp] for tp in set(tps) if tp in self.partitions]
        for partition in owned:
            partition.hand_over()
        await self._hand_over(owned, timeout_s)

    async def close(self, timeout_s: float) -> None:
        """Shutdown: launch and mark done what is open, within `timeout_s`, so the last commit covers it."""
        self.closing = True
        owned = list(self.partitions.values())
        await self._hand_over(owned, timeout_s)

    async def _hand_over(self, owned: list[OwnedPartition], timeout_s: float) -> None:
        for partition in owned:
            for share in partition.shares:
                for batch in share.batcher.drain({partition.tp}):
                    if share.lane.queue.full() or not partition.may_launch:
                        continue  # its records stay uncommitted: whoever consumes them next reconciles first
                    self._count_closed(batch)
                    share.lane.put_nowait(batch)
        lanes = [lane for partition in owned for lane in partition.lanes]
        if lanes:
            done = await asyncio.gather(*(lane.join(timeout_s) for lane in lanes))
            if not all(done):
                logger.warning("%d lanes still launching after %.0fs; leaving their batches uncommitted",
                               done.count(False), timeout_s)
        for partition in owned:
            await self._drop(partition)

    async def _drop(self, owned: OwnedPartition) -> None:
        owned.drop()
        if self.partitions.get(owned.tp) is owned:
            del self.partitions[owned.tp]
        for lane in owned.lanes:
            await lane.close()
        for share in owned.shares:
            if share.reconcile is not None:
                share.reconcile.cancel()

    # -- status ---------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """What this worker holds right now, as JSON-ready data for /status; reads, changes nothing."""
        now = self.clock()
        inflight = collections.Counter((run.route, run.topic, run.partition)
                                       for run in self.watcher.inflight.values())
        partitions = [{
            "topic": tp.topic, "partition": tp.partition, "epoch": owned.epoch, "position": owned.position,
            "next_offset": owned.next_offset, "done_below": owned.done_below(),
            "handing_over": owned.state is PartitionState.HANDING_OVER,
            "fenced": owned.state is PartitionState.FENCED,
            "unmatched_queued": owned.unmatched.queue.qsize() if owned.unmatched is not None else None,
            "routes": [_share_status(share, tp, now, inflight[(share.route.name, tp.topic, tp.partition)])
                       for share in owned.shares],
        } for tp, owned in sorted(self.partitions.items())]
        return {
            "partitions": partitions,
            "inflight_runs": len(self.watcher.inflight),
            "paused_routes": self.pauses.status(),
            "throttled_routes": {name: throttle.reason for name, throttle in sorted(self.throttles.items())
                                 if throttle.reason is not None},
        }


def _share_status(share: RouteShare, tp: TP, now: float, inflight: int) -> dict[str, Any]:
    batch = share.batcher.open.get(tp)
    reconciled = share.reconciled
    return {
        "route": share.route.name,
        "open_batch": None if batch is None else {
            "records": len(batch.records), "bytes": batch.size, "age_s": round(now - batch.opened_at, 3),
            "offset_start": batch.offset_start, "offset_end": batch.offset_end,
            "closes_in_s": round(max(0.0, batch.opened_at + batch.wait_s - now), 3)},
        "queued": share.lane.queue.qsize(),
        "covered": share.covered,
        "inflight_runs": inflight,
        "reconcile": None if reconciled is None else {
            "at": datetime.fromtimestamp(reconciled.at, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "runs_found": reconciled.runs_found, "covered": reconciled.covered},
    }


def _by_batch(runs: Iterable[RunInfo]) -> dict[str, list[RunInfo]]:
    batches: dict[str, list[RunInfo]] = {}
    for run in runs:
        batches.setdefault(run.tags.get(TAG_BATCH_ID) or run.run_id, []).append(run)
    return batches
