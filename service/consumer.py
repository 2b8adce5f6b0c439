"""Faust's aiokafka consumer, handing whole fetched chunks to the worker.

Faust's fetch loop turns every fetched record into a `Message`, hands it to
the conductor with `wait_first(callback(message), suspend_flow.wait())`
(four tasks and an `asyncio.wait` each), queues it for a stream, wraps it in
an `Event`, and tracks its ack in sorted lists. Profiling the worker showed
that per-message machinery as where its time went: a bare Faust agent that
only decoded and acked managed 6-10k msg/s, against about 300k for a bare
aiokafka consumer on the same broker.

The worker needs none of it per message: it batches by partition anyway.
So here the fetch loop hands each partition's fetched chunk of raw aiokafka
records to `app.record_sink` in one call, and commits follow the worker's
own account of what is done (`mark_done`: every offset below it is in a
launched run or the DLQ) instead of per-message acks. Faust still owns the
group membership, rebalances, seeks, the commit schedule, timers and the web
server.

The loop below is faust-streaming 0.15's `_drain_messages` and `getmany`
(pinned `<0.16`) with per-chunk instead of per-message hand-off. Guarded by
tests/unit/test_library_internals.py: a Faust or aiokafka release whose
internals differ fails there.

The broker refusing the worker (an ACL: `service.kafka.access`) never
crashes or stalls it. aiokafka hands a refused group (join, heartbeat,
offsets) to the application through the next `getmany` and waits until it
is taken, but Faust calls `getmany` only for partitions it fetches, so a
worker refused its group would wait without a word (Faust starts its fetch
loop, and the app's tasks, only once the group assigned partitions): a task
of the consumer takes such errors itself, every second. A refused fetch is
raised by `getmany`, and a refused commit inside Faust's commit (which would
crash the worker): both pause the routes they touch instead, and are tried
again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from time import monotonic
from typing import Any, Protocol, cast

from aiokafka.errors import CommitFailedError, GroupAuthorizationFailedError, IllegalStateError, KafkaError
from aiokafka.structs import OffsetAndMetadata
from aiokafka.structs import TopicPartition as AIOKafkaTP
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from faust.types import TP
from mode import Service

from service.errors import BrokerUnavailable, KafkaNotAuthorized, KafkaRefused, KafkaRejected
from service.fetched_records import build_records
from service.kafka import kafka_error, not_authorized
from service.kafka.access import scope_of
from service.kafka.group_commits import GroupCommits, Membership
from service.ownership_proofs import OwnershipProofs

# How long a fencing commit may wait for the group coordinator before it counts as a transient failure.
FENCE_TIMEOUT_S = 10.0


class Refusals(Protocol):
    """Where the fetch loop reports the broker refusing the worker (`service.kafka.access.KafkaAccess`)."""

    def refuse(self, scope: str, exc: KafkaRefused, quiet_ends: bool = True) -> None: ...

    def accept_quiet(self) -> None: ...


class _Ignored:
    def refuse(self, scope: str, exc: KafkaRefused, quiet_ends: bool = True) -> None:
        return None

    def accept_quiet(self) -> None:
        return None


IGNORED: Refusals = _Ignored()  # an app without a worker (the unit tests')

# What the fetch loop hands over: one partition and its fetched `Record`s (`service.fetched_records`), in
# offset order.
RecordSink = Callable[[TP, Sequence[Any]], Awaitable[None]]
# Called with the assigned partitions before their committed offsets are read.
BeforeSeek = Callable[[set[TP]], Awaitable[None]]


# How long the broker may hold a fetch waiting for data. Faust fixes 1,500 ms; Tansu holds a fetch
# that long even with records waiting, which measured here as ~0.4 s median delivery delay at
# 1,000 msg/s. 100 ms costs an idle worker ten small fetches a second.
FETCH_MAX_WAIT_MS = 100

# The most records handed to the worker in one call: a fetch brings up to a megabyte per partition, and the
# app's loop answers nothing else (a fencing commit's reply, a launch's) while the worker reads a chunk.
HAND_OFF_RECORDS = 1_000

# How long the fetch loop waits after the broker refused the worker, before it asks again.
REFUSED_BACKOFF_S = 1.0


class ConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    """Faust's thread running the aiokafka consumer, with a shorter fetch wait and a fencing commit."""

    def verify_event_path(self, now: float, tp: TP) -> None:
        """Faust's livelock check of `tp`, once the partition has a fetch position.

        The check reads the position, which aiokafka asserts is set; a partition
        assigned a moment ago has none until its seek, and the seek waits for the
        partition's transactional id (`seek_to_committed`). Run in between, the
        check crashed the worker (AssertionError in `TopicPartitionState.position`).
        """
        subscription = self._ensure_consumer()._fetcher._subscriptions.subscription
        state = None if subscription is None else subscription.assignment.state_value(
            AIOKafkaTP(tp.topic, tp.partition))
        if state is not None and state.has_valid_position:
            super().verify_event_path(now, tp)

    async def on_start(self) -> None:
        await super().on_start()
        build_records(self._consumer)

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS  # no Faust setting; read when the consumer starts
        return consumer

    async def subscribe(self, topics: Any) -> None:
        """Faust's subscription by names, or by the app's pattern when it has one (Faust cannot)."""
        pattern: str | None = self.app.subscription_pattern  # type: ignore[attr-defined]  # service.app.App
        if pattern is None:
            await super().subscribe(topics)
            return
        await self.call_thread(self._ensure_consumer().subscribe, pattern=pattern, listener=self._rebalance_listener)

    async def seek_to_committed(self) -> Mapping[TP, int]:  # None where nothing is committed, as aiokafka's
        """Seek every assigned partition to its committed offset, or to its beginning if none is committed.

        First the app's `before_seek` takes over the partitions' transactional
        ids (`service.kafka.transactions`): a zombie's open transaction ends before
        the committed offsets are read.

        aiokafka's `seek_to_committed` seeks only where the committed offset
        is above 0, leaving the others where the fetcher got to. Faust seeks
        so to read again what it fetched and dropped in a rebalance; left past
        them, a worker given such a partition back never read them (records lost).
        """
        before_seek: BeforeSeek | None = getattr(self.app, "before_seek", None)
        if before_seek is not None:
            await before_seek({TP(tp.topic, tp.partition) for tp in self._ensure_consumer().assignment()})
        return cast(Mapping[TP, int], await self.call_thread(self._seek_to_committed))

    async def _seek_to_committed(self) -> dict[Any, int | None]:
        consumer = self._ensure_consumer()
        committed: dict[Any, int | None] = {}
        for tp in consumer.assignment():
            offset = committed[tp] = await consumer.committed(tp)
            try:
                if offset is None:
                    await consumer.seek_to_beginning(tp)  # consumer_auto_offset_reset is "earliest"
                else:
                    consumer.seek(tp, offset)
            except IllegalStateError:
                committed.pop(tp)  # revoked meanwhile: its next assignment seeks again
        return committed

    def membership(self, tps: Iterable[TP]) -> Membership | None:
        """The member's place in its group as aiokafka's coordinator holds it now, for a commit of `tps` from
        the app's loop (`service.kafka.group_commits`); None unless it is in a generation, knows its
        coordinator and has every one of `tps` assigned. Read across threads: each value is one attribute."""
        consumer = self._consumer
        if consumer is None:
            return None
        coordinator = consumer._coordinator
        generation, member_id, coordinator_id = coordinator.generation, coordinator.member_id, \
            coordinator.coordinator_id
        if generation < 0 or coordinator_id is None or not member_id:
            return None
        try:
            assigned = consumer.assignment()
        except RuntimeError:  # changed while copied: a rebalance is under way
            return None
        if not all(tp in assigned for tp in tps):
            return None
        return Membership(coordinator.group_id, generation, member_id, coordinator_id)

    async def prove_ownership(self, offsets: Mapping[TP, int]) -> dict[TP, bool | BaseException]:
        """Commit each partition's offset now, in this member's current generation, in one request: each
        partition's verdict (False: the group refuses), or the error to raise for it."""
        return cast(dict[TP, bool | BaseException], await self.call_thread(self._commit_each_owned, offsets))

    async def _commit_each_owned(self, offsets: Mapping[TP, int]) -> dict[TP, bool | BaseException]:
        if len(offsets) > 1:
            try:
                if await self._commit_owned(offsets):
                    return dict.fromkeys(offsets, True)
            except BrokerUnavailable:
                raise  # the coordinator did not answer: asking again partition by partition would wait as long
            except KafkaRejected:
                pass
            # Refused as a whole: a partition revoked meanwhile or a topic's ACL fails the request for all.
        verdicts: dict[TP, bool | BaseException] = {}
        for tp, offset in offsets.items():
            try:
                verdicts[tp] = await self._commit_owned({tp: offset})
            except (BrokerUnavailable, KafkaRejected) as exc:
                verdicts[tp] = exc
        return verdicts

    async def _commit_owned(self, offsets: Mapping[TP, int]) -> bool:
        consumer = self._ensure_consumer()
        # Kicked out of the group (aiokafka reset the generation to -1), not yet rejoined: a commit now would
        # go out with generation -1, which a real coordinator accepts when the group is empty. Not proof.
        if consumer._coordinator.generation < 0:
            return False
        what = ", ".join(f"{tp.topic}/{tp.partition}" for tp in offsets)
        try:
            # aiokafka retries coordinator errors (NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE, timeouts)
            # inside commit forever: a coordinator moving (a broker restart) must not hold a launch that long.
            await asyncio.wait_for(
                consumer.commit({AIOKafkaTP(tp.topic, tp.partition): OffsetAndMetadata(offset, "")
                                 for tp, offset in offsets.items()}),
                FENCE_TIMEOUT_S)
        except TimeoutError as exc:
            raise BrokerUnavailable(f"committing {what}: the group coordinator did not answer "
                                    f"in {FENCE_TIMEOUT_S:.0f}s") from exc
        except (CommitFailedError, IllegalStateError) as exc:
            # The coordinator answered UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION or REBALANCE_IN_PROGRESS
            # (aiokafka raises CommitFailedError for all three), or a partition is no longer assigned.
            self.log.info("commit for %s refused: %r", what, exc)
            return False
        except KafkaError as exc:
            raise kafka_error(f"committing {what}", exc) from exc
        return True

    # -- refusals ------------------------------------------------------------

    @property
    def refused_commits(self) -> deque[KafkaNotAuthorized]:
        """Commits the broker's ACLs refused on this thread, for the fetch loop (on the app's loop) to report."""
        refused: deque[KafkaNotAuthorized] | None = getattr(self, "_refused_commits", None)
        if refused is None:
            refused = deque(maxlen=100)
            self._refused_commits = refused
        return refused

    async def take_coordinator_error(self) -> KafkaError | None:
        """The error aiokafka's group coordinator holds for the application, if any: it waits, retrying
        nothing, until someone takes it. A refused group also rejoins: aiokafka's heartbeat stays failed
        until the member joins again. Raises what ended the coordinator, if it ended (as `getmany` would)."""
        return cast(KafkaError | None, await self.call_thread(self._take_coordinator_error))

    async def _take_coordinator_error(self) -> KafkaError | None:
        coordinator = self._ensure_consumer()._coordinator
        if coordinator._coordination_task.done():
            coordinator.check_errors()
        try:
            coordinator.check_errors()
        except KafkaError as exc:
            if isinstance(exc, GroupAuthorizationFailedError) or "GroupAuthorizationFailedError" in str(exc):
                coordinator.request_rejoin()
            return exc
        return None

    async def refresh_metadata(self) -> None:
        """Ask the broker for the subscribed topics' metadata now (a topic the ACLs hid is back)."""
        await self.call_thread(self._refresh_metadata)

    async def _refresh_metadata(self) -> None:
        await self._ensure_consumer()._client.force_metadata_update()

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        """faust-streaming 0.15's commit, except that a commit the broker's ACLs refuse is reported (the
        routes pause) and tried again at the next commit, instead of crashing the worker."""
        consumer = self._ensure_consumer()
        now = monotonic()
        commitable_offsets = {tp: offset for tp, offset in offsets.items() if tp in self.assignment()}
        try:
            aiokafka_offsets = {aiokafka_driver.ensure_aiokafka_TP(tp): OffsetAndMetadata(offset, "")
                                for tp, offset in commitable_offsets.items()}
            self.tp_last_committed_at.update({tp: now for tp in commitable_offsets})
            await consumer.commit(aiokafka_offsets)
        except CommitFailedError as exc:
            if "already rebalanced" in str(exc):
                return False
            self.log.exception("Committing raised exception: %r", exc)
            await self.crash(exc)
            return False
        except KafkaError as exc:
            refused = not_authorized("committing offsets", exc)
            if refused is None:
                self.log.exception("Got exception: %r\nCurrent assignment: %r", exc, self.assignment())
                await self.crash(exc)
                return False
            self.refused_commits.append(refused)
            return False
        except Exception as exc:
            self.log.exception("Got exception: %r\nCurrent assignment: %r", exc, self.assignment())
            await self.crash(exc)
            return False
        return True


class Consumer(aiokafka_driver.Consumer):
    """Chunks to `app.record_sink`; commits up to what the worker marked done."""

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._done: dict[TP, int] = {}
        self._commit_locks: dict[TP, asyncio.Lock] = {}
        self._highest_committed: dict[TP, int] = {}  # by any way, while assigned
        self._proofs: OwnershipProofs[TP] = OwnershipProofs(self._prove_each)

    # -- commits ------------------------------------------------------------
    #
    # A partition's offset is committed three ways: Faust's periodic commit, the fencing commit before a
    # launch, and a dead-letter transaction. Each goes out holding the partition's lock (`committing`), and
    # none goes lower than the highest offset committed so far: an offset decided before the lock was taken
    # (Faust decides its own before calling `_commit`) may be older than a transaction committed meanwhile,
    # and would overwrite it.

    async def prove_ownership(self, tp: TP, offset: int) -> bool:
        """True when the group coordinator accepts a commit of `offset` (or of a higher one committed already)
        for `tp` from this member now. Proofs of several partitions asked together go out in one commit."""
        async with self.committing(tp):
            offset = max(offset, self._highest_committed.get(_key(tp), offset))
            owns = await self._proofs.prove(tp, offset)
            if owns:
                self.committed(tp, offset)
            return owns

    async def prepare_proofs(self, assigned: Iterable[TP]) -> None:
        """At an assignment: connect the app's loop to the group's coordinator before the first proof."""
        fast = self._fast_commits(assigned)
        if fast is not None:
            commits, membership = fast
            await commits.connect(membership.coordinator_id)

    async def _prove_each(self, offsets: Mapping[TP, int]) -> Mapping[TP, bool | BaseException]:
        """Commit from the app's loop first (`service.kafka.group_commits`: no hop to the consumer thread);
        what that did not get accepted, the consumer's own commit answers."""
        verdicts: dict[TP, bool | BaseException] = {}
        fast = self._fast_commits(offsets)
        if fast is not None:
            commits, membership = fast
            verdicts = dict.fromkeys(await commits.accepted(membership, offsets), True)
        rest = {tp: offset for tp, offset in offsets.items() if tp not in verdicts}
        if rest:
            verdicts.update(await cast(ConsumerThread, self._thread).prove_ownership(rest))
        return verdicts

    def _fast_commits(self, tps: Iterable[TP]) -> tuple[GroupCommits, Membership] | None:
        """The app loop's commits and the membership to commit `tps` in, when both are there."""
        commits: GroupCommits | None = self.app.group_commits  # type: ignore[attr-defined]  # service.app.App
        if commits is None:
            return None
        membership = cast(ConsumerThread, self._thread).membership(tps)
        return None if membership is None else (commits, membership)

    @contextlib.asynccontextmanager
    async def committing(self, tp: TP) -> AsyncIterator[None]:
        """Held while a commit of `tp` goes out (a fence, Faust's periodic commit, a dead-letter transaction):
        one at a time per partition."""
        async with self._commit_locks.setdefault(_key(tp), asyncio.Lock()):
            yield

    def committed(self, tp: TP, offset: int) -> None:
        """`offset` of `tp` is committed (by a transaction, holding `committing(tp)`): no commit goes lower."""
        key = _key(tp)
        self._highest_committed[key] = max(offset, self._highest_committed.get(key, offset))

    async def _commit(self, offsets: Mapping[TP, int]) -> bool:
        async with contextlib.AsyncExitStack() as stack:
            for tp in _in_order(offsets):
                await stack.enter_async_context(self.committing(tp))
            higher = {tp: offset for tp, offset in offsets.items()
                      if offset > self._highest_committed.get(_key(tp), -1)}
            if not higher:
                return False
            done = bool(await super()._commit(higher))
            if done:
                for tp, offset in higher.items():
                    self.committed(tp, offset)
            return done

    def committed_offset(self, tp: TP) -> int | None:
        """The offset Faust last committed for `tp` (None: nothing yet); Faust keeps it in a private dict."""
        committed = self._committed_offset.get(tp)
        return None if committed is None else int(committed)

    def mark_done(self, tp: TP, next_offset: int) -> None:
        """Every offset of `tp` below `next_offset` is in a launched run or the DLQ: commit up to it."""
        if next_offset > self._done.get(tp, -1):
            self._done[tp] = next_offset

    def _filter_tps_with_pending_acks(self, topics: Any = None) -> Iterator[TP]:
        return (tp for tp in list(self._done) if topics is None or tp in topics or tp.topic in topics)

    def _new_offset(self, tp: TP) -> int | None:
        return self._done.get(tp)

    async def on_partitions_revoked(self, revoked: set[TP]) -> None:
        for tp in revoked:
            self._done.pop(tp, None)
            self._highest_committed.pop(_key(tp), None)
        await super().on_partitions_revoked(revoked)

    # -- fetching -----------------------------------------------------------

    async def _hand_off(self, sink: RecordSink, tp: TP, chunk: Sequence[Any]) -> bool:
        """`sink(tp, chunk)`, abandoned (False) if a rebalance begins first, as Faust abandons a hand-off.

        The sink runs in a task of its own: it may talk to Dagster, whose
        client (httpx on anyio) must stay in the task it started in.
        """
        finished = sink(tp, chunk)
        result = await self.wait_first(finished, self.suspend_flow.wait())
        return finished in result.done

    async def _deliver(self, records: Mapping[TP, Sequence[Any]], generation_id: int) -> None:
        """Hand each partition's new records to the sink, as Faust's `getmany` would have one by one.

        `generation_id` is the group generation when the fetch began: records
        fetched before a rebalance are read again after it, never handed over.
        """
        if not self.flow_active or self.app.consumer_generation_id != generation_id:
            await self.perform_seek()  # a rebalance began: what was fetched is read again after it
            return
        sink: RecordSink = self.app.record_sink  # type: ignore[attr-defined]  # service.app.App
        # Every fetched chunk is handed off, also of a partition paused since the fetch (a paused route):
        # aiokafka has moved past it, so skipping it would leave a gap when the partition resumes.
        for tp, fetched in records.items():
            r_offset = self._read_offset[tp]
            if r_offset is not None and fetched and fetched[0].offset < r_offset:
                fetched = [record for record in fetched if record.offset >= r_offset]
            for start in range(0, len(fetched), HAND_OFF_RECORDS):
                if not self.flow_active or self.app.consumer_generation_id != generation_id:
                    return
                chunk = fetched[start:start + HAND_OFF_RECORDS]
                # Faust's livelock check warns about a partition with lag whose stream took no event
                # for `stream_processing_timeout`; there are no streams here, the sink is what takes them.
                self.app.monitor.stream_inbound_time[tp] = monotonic()
                if not await self._hand_off(sink, tp, chunk):
                    return
                if not self.flow_active or self.app.consumer_generation_id != generation_id:
                    # A rebalance began while the sink ran: the partition was handed over and its
                    # read offset reset to the committed one. Writing this chunk's end over it would
                    # skip the chunk if this worker gets the partition back.
                    return
                self._read_offset[tp] = chunk[-1].offset

    async def _fetch(self) -> tuple[Mapping[TP, Sequence[Any]] | None, int]:
        """Fetched records, and the group generation the fetch began in.

        Faust's `_wait_next_records` first waits while the flow is stopped (a
        rebalance): waiting here instead takes the generation after it, so the
        first fetch of a new assignment is not dropped as an earlier generation's.
        """
        if not self.flow_active:
            await self.wait(self.can_resume_flow)  # type: ignore[arg-type]  # as Faust's own call
        generation_id = self.app.consumer_generation_id
        try:
            records, _active_partitions = await self._wait_next_records(1.0)
        except KafkaError as exc:
            refused = not_authorized(self._consuming, exc)
            if refused is None:
                raise
            self._access.refuse(scope_of(refused), refused)
            await self.sleep(REFUSED_BACKOFF_S)
            return None, generation_id
        return records, generation_id

    # -- refusals -----------------------------------------------------------

    @property
    def _access(self) -> Refusals:
        return self.app.kafka_access or IGNORED  # type: ignore[attr-defined,no-any-return]  # service.app.App

    @property
    def _consuming(self) -> str:
        return f"consuming as group {self.app.conf.id!r}"

    @Service.task
    async def _watch_refusals(self) -> None:
        """Report what the broker refuses the consumer, every `REFUSED_BACKOFF_S`, from the start: Faust
        starts its fetch loop and the app's tasks only once the group has assigned partitions."""
        while not self.should_stop:
            await self.sleep(REFUSED_BACKOFF_S)
            await self.report_refusals()

    async def report_refusals(self) -> None:
        """Refused commits, and the error aiokafka's coordinator holds (taking it lets it try again), as
        refusals; the refusals none came for lately, as accepted."""
        thread = cast(ConsumerThread, self._thread)
        access = self._access
        while thread.refused_commits:
            commit = thread.refused_commits.popleft()
            access.refuse(scope_of(commit), commit)
        taken = await thread.take_coordinator_error() if thread._consumer is not None else None
        if taken is not None:
            refused = not_authorized(self._consuming, taken)
            if refused is None:
                self.log.warning("the group coordinator reported %r; aiokafka tries again", taken)
            else:
                access.refuse(scope_of(refused), refused)
            return
        access.accept_quiet()

    async def _drain_messages(self, fetcher: Any) -> None:  # pragma: no cover
        consumer_should_stop = self._stopped.is_set
        fetcher_should_stop = fetcher._stopped.is_set
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                self.diag.set_flag(CONSUMER_FETCHING)
                records, generation_id = await self._fetch()
                await self.sleep(0)
                if records and not self.should_stop:
                    await self._deliver(records, generation_id)
                self.diag.unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            self.diag.unset_flag(CONSUMER_FETCHING)


def _key(tp: Any) -> TP:
    return TP(tp.topic, tp.partition)


def _in_order(tps: Iterable[TP]) -> list[TP]:
    return sorted(tps, key=lambda tp: (tp.topic, tp.partition))


class Transport(aiokafka_driver.Transport):
    """The aiokafka transport, creating the consumer above."""

    Consumer = Consumer
