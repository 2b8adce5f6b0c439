"""Intake: a partition's fetched records, each to the routes it matches, decoded, checked and batched; a
record that fails goes to the DLQ alone, and the batch it interrupts is closed before it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from service.batching import Batch, Batcher, BatchPolicy
from service.contract import STAGE_ROUTE
from service.decoding import decode_value
from service.delivery.config import Tools
from service.delivery.framed import FramedValues, framed_route
from service.delivery.lanes import DeadLetters
from service.delivery.ownership import OwnedPartition, Partitions, RouteShare
from service.delivery.reconcile import Reconciler
from service.dlq import Failure
from service.errors import NoRouteMatched, RecordError
from service.records import Record
from service.routes import RouteTable
from service.routing import Fanout
from service.throttle import Throttle

logger = logging.getLogger(__name__)


def batchers_of(routes: RouteTable) -> dict[str, Batcher]:
    """One batcher per route, by its name."""
    return {name: Batcher(BatchPolicy(r.max_records, r.max_bytes, r.max_wait_s), name) for name, r in routes.items()}


class Intake:
    """Records in: routed, checked and batched per route; closed batches and dead letters into the lanes.

    :param tools: the record bounds, the metrics and the clocks
    :param partitions: the owned partitions, with their routes' batchers and lanes
    :param reconciler: tells what runs already cover, before a partition's first record is handled
    :param throttles: the run-rate limits of the routes that have them (a held route's batches grow)
    :param framed: decodes a framed route's values first; None when no route reads a framed format
    """

    def __init__(self, tools: Tools, partitions: Partitions, reconciler: Reconciler,
                 throttles: dict[str, Throttle], framed: FramedValues | None = None) -> None:
        self.settings = tools.settings
        self.metrics = tools.metrics
        self.clock = tools.clock
        self.wall_clock = tools.wall_clock
        self.framed = framed
        self.partitions = partitions
        self.batchers = partitions.batchers
        self.reconciler = reconciler
        self.throttles = throttles
        self._fanouts: dict[tuple[int, ...], Fanout] = {}  # by a partition's routes (a fanout keeps them alive)

    def fanout(self, owned: OwnedPartition) -> Fanout:
        """The routes of `owned`'s topic, compiled once for the per-record decision."""
        key = tuple(id(share.route) for share in owned.shares)
        fanout = self._fanouts.get(key)
        if fanout is None:
            fanout = self._fanouts[key] = Fanout([share.route for share in owned.shares])
        return fanout

    async def on_records(self, records: Sequence[Record]) -> None:
        """Handle consecutive records of one partition: each route of the topic skips, dead-letters or
        batches the ones it matches; the rest are unmatched."""
        if not records:
            return
        owned = self.partitions.current(records[0])
        if owned is None:
            return  # consumed for an assignment this worker no longer holds: its next owner reads them
        tp = owned.tp
        self.metrics.messages_consumed.labels(tp.topic).inc(len(records))
        if owned.position is None:
            owned.position = records[0].offset
            logger.info("consuming %s/%d from offset %d", tp.topic, tp.partition, records[0].offset)
        owned.next_offset = records[-1].offset + 1
        covered = [await self.reconciler.covered(owned, share) for share in owned.shares]
        if not owned.owns(records[0]):
            return
        framed = framed_route([share.route for share in owned.shares]) if self.framed is not None else None
        if framed is not None and self.framed is not None:
            await self.framed.decode(framed, records)
            if not owned.owns(records[0]):
                return
        only = owned.shares[0].route if len(owned.shares) == 1 else None
        if only is not None and only.match is None and only.partition_key is None:
            await self._add_checked(owned, owned.shares[0], [r for r in records if r.offset > covered[0]])
        else:
            await self._dispatch(owned, records, covered)
        if owned.owns(records[0]):
            owned.dispatched = records[-1].offset + 1
            self.partitions.advance(owned)

    async def _add_checked(self, owned: OwnedPartition, share: RouteShare, records: Sequence[Record]) -> None:
        """The one route of the topic takes every record: batch those that decode and validate,
        dead-letter each one that does not, in order (the fast path: slices, no per-record routing)."""
        validator = share.route.validator()
        good_from = 0
        for index, record in enumerate(records):
            try:
                decode_value(record, self.settings.max_message_bytes, validator, self.settings.json_bounds)
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
        fanout = self.fanout(owned)
        max_bytes, bounds = self.settings.max_message_bytes, self.settings.json_bounds
        sorted_ = fanout.sort(records, max_bytes, bounds)
        if sorted_ is not None:
            await self._add_sorted(owned, records, sorted_, covered)
            return
        decide = fanout.decide
        below = {share.route.name: c for share, c in zip(owned.shares, covered, strict=True)}
        for record in records:
            verdicts = decide(record, max_bytes, bounds)
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

    async def _add_sorted(self, owned: OwnedPartition, records: Sequence[Record], taken: list[list[int]],
                          covered: list[int]) -> None:
        """The chunk as `Fanout.sort` split it (every record decoded and valid): the unmatched ones first, in
        order, then each route's records as one slice, as `_dispatch` would have done record by record."""
        matched = bytearray(len(records))
        for indexes in taken:
            for i in indexes:
                matched[i] = 1
        for i, hit in enumerate(matched):
            if not hit:
                await self._unmatched(owned, records[i])
        for share, indexes, below in zip(owned.shares, taken, covered, strict=True):
            await self._add(owned, share, [records[i] for i in indexes if records[i].offset > below])

    async def _reject_shared(self, owned: OwnedPartition, shares: list[RouteShare], taken: dict[str, list[Record]],
                             keys: dict[str, list[str | None]], record: Record, exc: RecordError) -> None:
        """A value no route can read: one dead letter for all of them (in the first one's lane), every
        one of their batches split before it."""
        for share in shares:
            await self._add(owned, share, taken[share.route.name], keys[share.route.name])
            taken[share.route.name], keys[share.route.name] = [], []
            split = share.batcher.split(record.tp)
            if split is not None:
                await self.submit(owned, share, split)
        names = ",".join(share.route.name for share in shares)
        failure = Failure.from_exception(exc.stage, exc, route=names)
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
            await self.submit(owned, share, batch)

    async def _reject(self, owned: OwnedPartition, share: RouteShare, record: Record, exc: RecordError) -> None:
        """Dead-letter `record` for the route in offset order: the open batch before it is launched first."""
        split = share.batcher.split(record.tp)
        if split is not None:
            await self.submit(owned, share, split)
        failure = Failure.from_exception(exc.stage, exc, route=share.route.name)
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
                    await self.submit(owned, share, batch)

    def seconds_to_next_deadline(self, at_most: float) -> float:
        """How long until the next open batch is due to close on time, capped at `at_most`."""
        deadlines = [d for d in (b.next_deadline() for b in self.batchers.values()) if d is not None]
        return at_most if not deadlines else min(at_most, max(0.0, min(deadlines) - self.clock()))

    async def submit(self, owned: OwnedPartition, share: RouteShare, batch: Batch) -> None:
        if not owned.may_launch:
            return  # the partition moved on: its next owner reconciles and launches these records
        self.count_closed(batch)
        await share.lane.put(batch)

    def count_closed(self, batch: Batch) -> None:
        batch.closed_at = self.clock()
        self.metrics.batches.labels(batch.topic, batch.reason).inc()
        self.metrics.batch_records.labels(batch.topic).observe(len(batch.records))
