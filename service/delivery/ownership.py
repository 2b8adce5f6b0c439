"""Ownership: the partitions this worker holds, each from its assignment to its drop, and the rules of what
may be done with one (`OwnedPartition.may_launch`, `may_commit`, `owns`)."""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial

from service.batching import Batch, Batcher
from service.delivery.lanes import DeadLetters, Lane
from service.delivery.links import ConsumerLink
from service.dlq import Failure
from service.records import TP, Record
from service.routes import Route, RouteTable

# What a lane does with its items: launch a route's batch, or write dead letters (`Launcher.handle`).
Work = Callable[["OwnedPartition", "RouteShare | None", Batch | DeadLetters], Awaitable[None]]


@dataclass(frozen=True)
class Reconciled:
    """What a reconcile with Dagster found, for /status."""

    at: float  # wall-clock time
    runs_found: int
    covered: int


@dataclass(frozen=True, eq=False)
class Letter:
    """A dead letter waiting to be written with the offset commit that covers it (transactions on)."""

    record: Record
    failure: Failure
    headers: list[tuple[str, bytes]]  # made when it failed: dlq.failed_at says when


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
    handled below the lowest offset any of them still holds, or below
    `dispatched` when none holds anything; with transactions, its dead
    letters wait in `letters` until a transaction writes them with the
    offset commit that covers them, and a plain commit may not pass them.
    """

    tp: TP
    epoch: int
    shares: list[RouteShare]
    unmatched: Lane | None = None
    position: int | None = None  # first offset consumed since assignment (the committed offset then)
    next_offset: int | None = None
    dispatched: int | None = None  # every record below it has been handed to the routes it matches
    state: PartitionState = PartitionState.ASSIGNED
    letters: list[Letter] = field(default_factory=list)

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
        """Every offset below this is launched, dead-lettered (written) or skipped by every route of the topic:
        what a plain commit may commit."""
        handled = self.handled_below()
        if handled is None or not self.letters:
            return handled
        return min(handled, min(letter.record.offset for letter in self.letters))

    def letters_due(self) -> tuple[list[Letter], int | None]:
        """The waiting dead letters that a commit of `handled_below()` covers, and that offset."""
        handled = self.handled_below()
        if handled is None:
            return [], None
        return [letter for letter in self.letters if letter.record.offset < handled], handled

    def handled_below(self) -> int | None:
        """Every offset below this is launched, dead-lettered (written or waiting) or skipped by every route."""
        # Lanes work while a chunk is still being handed to the routes (a full lane blocks the hand-over), so
        # below the chunk's start is all that is known handled until it is handed over whole: for the first
        # chunk, the position consumption started from.
        lowest = self.dispatched if self.dispatched is not None else self.position
        if lowest is None:
            return None
        for share in self.shares:
            held = share.first_pending(self.tp)
            if held is not None and held < lowest:
                lowest = held
        if self.unmatched is not None and self.unmatched.first_pending is not None:
            lowest = min(lowest, self.unmatched.first_pending)
        return lowest


class Partitions:
    """The partitions this worker owns, by topic-partition: made on assignment, dropped on revoke.

    A partition is marked done with the consumer (`advance`) below what every
    route of it has finished with, and only while it may commit.
    """

    def __init__(self, routes: RouteTable, batchers: dict[str, Batcher], consumer: ConsumerLink, queue_size: int,
                 on_fatal: Callable[[BaseException], Awaitable[None]]) -> None:
        self.routes = routes
        self.batchers = batchers
        self.consumer = consumer
        self.queue_size = queue_size
        self.on_fatal = on_fatal
        self.work: Work | None = None  # set once by the delivery, before the first partition is made
        self.closing = False
        self._held: dict[TP, OwnedPartition] = {}
        self._epochs = itertools.count(1)

    def __contains__(self, tp: TP) -> bool:
        return tp in self._held

    def __iter__(self) -> Iterator[OwnedPartition]:
        return iter(list(self._held.values()))

    def get(self, tp: TP) -> OwnedPartition | None:
        return self._held.get(tp)

    def current(self, record: Record) -> OwnedPartition | None:
        """The partition the record was consumed for, if this worker still holds that assignment."""
        owned = self._held.get(record.tp)
        return owned if owned is not None and owned.owns(record) else None

    def with_route(self, route: str) -> set[TP]:
        return {tp for tp, owned in self._held.items() if owned.share(route) is not None}

    def epoch(self, tp: TP) -> int:
        """The current assignment epoch of `tp` (made on first use); 0 while shutting down."""
        if self.closing:
            return 0
        return self.acquire(tp).epoch

    def acquire(self, tp: TP) -> OwnedPartition:
        owned = self._held.get(tp)
        if owned is None:
            owned = self._held[tp] = self._new(tp)
        return owned

    def _new(self, tp: TP) -> OwnedPartition:
        assert self.work is not None
        owned = OwnedPartition(tp, next(self._epochs), [])
        advance = partial(self.advance, owned)
        for route in self.routes.for_topic(tp.topic):
            share = RouteShare(route, self.batchers[route.name], None)  # type: ignore[arg-type]  # lane next
            share.lane = Lane(f"{route.name}-{tp.topic}-{tp.partition}", self.queue_size,
                              partial(self.work, owned, share), advance, self.on_fatal)
            owned.shares.append(share)
        if self.routes.unmatched(tp.topic) == "dead_letter":
            owned.unmatched = Lane(f"unmatched-{tp.topic}-{tp.partition}", self.queue_size,
                                   partial(self.work, owned, None), advance, self.on_fatal)
        return owned

    def advance(self, owned: OwnedPartition) -> None:
        """Mark the partition done below what every route of it has finished with."""
        if not owned.may_commit:
            return  # records from before a revoke must not commit for a partition we may no longer own
        done = owned.done_below()
        if done is not None:
            self.consumer.mark_done(owned.tp, done)

    async def drop(self, owned: OwnedPartition) -> None:
        """No longer held here: its lanes stop, its reconciles are cancelled."""
        owned.drop()
        if self._held.get(owned.tp) is owned:
            del self._held[owned.tp]
        for lane in owned.lanes:
            await lane.close()
        for share in owned.shares:
            if share.reconcile is not None:
                share.reconcile.cancel()

    @property
    def next_offsets(self) -> dict[TP, int]:
        return {tp: p.next_offset for tp, p in self._held.items() if p.next_offset is not None}

    @property
    def positions(self) -> dict[TP, int]:
        return {tp: p.position for tp, p in self._held.items() if p.position is not None}
