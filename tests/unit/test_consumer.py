"""The consumer's chunked hand-off and its commits, on an unstarted Faust app (no broker needed).

`app` is the unstarted app of tests/unit/conftest.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka import errors as Errors
from aiokafka.consumer.group_coordinator import GroupCoordinator
from aiokafka.structs import TopicPartition as AIOKafkaTP
from faust.types import TP

from service import consumer as consumer_module
from service.app import App
from service.consumer import Consumer
from service.errors import BrokerUnavailable, KafkaNotAuthorized, KafkaRefused

P0, P1 = TP("orders", 0), TP("orders", 1)


@dataclass
class Fetched:
    offset: int


class Sink:
    def __init__(self) -> None:
        self.chunks: list[tuple[TP, list[int]]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()  # set once the sink has been handed a chunk

    async def __call__(self, tp: TP, chunk: Sequence[Any]) -> None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        self.chunks.append((tp, [record.offset for record in chunk]))


@pytest.fixture
def sink(app: App) -> Sink:
    app.record_sink = sink = Sink()
    return sink


def consumer(app: App) -> Consumer:
    assert isinstance(app.consumer, Consumer)
    return app.consumer


GEN = 0  # the unstarted app's group generation


def chunk(*offsets: int) -> list[Fetched]:
    return [Fetched(offset) for offset in offsets]


async def test_commits_follow_what_was_marked_done_and_never_go_back(app: App) -> None:
    c = consumer(app)
    assert c._filter_committable_offsets([P0]) == {}
    c.mark_done(P0, 10)
    c.mark_done(P0, 4)  # a late, lower mark must not move the commit back
    assert list(c._filter_tps_with_pending_acks()) == [P0]
    assert c._filter_committable_offsets([P0, P1]) == {P0: 10}
    c._committed_offset[P0] = 10
    assert c._filter_committable_offsets([P0]) == {}  # already committed


async def test_a_revoked_partition_has_nothing_left_to_commit(app: App) -> None:
    c = consumer(app)
    c.mark_done(P0, 10)
    c.mark_done(P1, 7)
    await c.on_partitions_revoked({P0})
    assert c._filter_committable_offsets([P0, P1]) == {P1: 7}


async def test_each_partition_chunk_reaches_the_sink_in_one_call(app: App, sink: Sink) -> None:
    await consumer(app)._deliver({P0: chunk(0, 1, 2), P1: chunk(5, 6)}, GEN)
    assert sink.chunks == [(P0, [0, 1, 2]), (P1, [5, 6])]
    assert consumer(app)._read_offset[P0] == 2


async def test_a_large_fetch_reaches_the_sink_in_slices_in_order_so_the_loop_answers_in_between(
        app: App, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "HAND_OFF_RECORDS", 2)
    await consumer(app)._deliver({P0: chunk(0, 1, 2, 3, 4), P1: chunk(5)}, GEN)
    assert sink.chunks == [(P0, [0, 1]), (P0, [2, 3]), (P0, [4]), (P1, [5])]
    assert consumer(app)._read_offset[P0] == 4


async def test_a_rebalance_between_slices_hands_over_nothing_more(app: App, sink: Sink,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(consumer_module, "HAND_OFF_RECORDS", 2)
    c = consumer(app)

    async def first_slice_then_rebalance(tp: TP, records: Sequence[Any]) -> None:
        await Sink.__call__(sink, tp, records)
        app.consumer_generation_id = GEN + 1

    app.record_sink = first_slice_then_rebalance  # type: ignore[assignment]
    await c._deliver({P0: chunk(0, 1, 2, 3)}, GEN)
    assert sink.chunks == [(P0, [0, 1])]
    assert c._read_offset[P0] is None  # left to the seek after the rebalance


async def test_faust_livelock_check_sees_the_partitions_taking_records(app: App, sink: Sink) -> None:
    """Without streams, nothing else tells Faust's check; it would log "Stream has not started processing"."""
    await consumer(app)._deliver({P0: chunk(0)}, GEN)
    assert P0 in app.monitor.stream_inbound_time
    assert P1 not in app.monitor.stream_inbound_time


async def test_records_before_the_read_offset_are_not_handed_over_again(app: App, sink: Sink) -> None:
    consumer(app)._read_offset[P0] = 2
    await consumer(app)._deliver({P0: chunk(0, 1, 2, 3)}, GEN)
    assert sink.chunks == [(P0, [2, 3])]


async def test_a_chunk_fetched_before_its_partition_paused_is_still_handed_off(app: App, sink: Sink) -> None:
    """aiokafka has moved past a fetched chunk: skipping it would leave a gap when the partition resumes."""
    await consumer(app)._deliver({P0: chunk(0), P1: chunk(0)}, GEN)
    assert sink.chunks == [(P0, [0]), (P1, [0])]


async def test_a_new_generation_stops_the_hand_over(app: App, sink: Sink) -> None:
    sink.gate = asyncio.Event()
    c = consumer(app)
    delivering = asyncio.create_task(c._deliver({P0: chunk(0), P1: chunk(0)}, GEN))
    await asyncio.wait_for(sink.entered.wait(), 5)
    app.consumer_generation_id += 1
    sink.gate.set()
    await delivering
    assert sink.chunks == [(P0, [0])]


async def test_a_chunk_handed_off_across_a_rebalance_leaves_the_read_offset_to_the_seek(
        app: App, sink: Sink) -> None:
    """The sink took the chunk while the partition was being handed over (its batches dropped): if this
    worker gets the partition back, it must read the chunk again from the committed offset."""
    sink.gate = asyncio.Event()
    c = consumer(app)
    delivering = asyncio.create_task(c._deliver({P0: chunk(33, 34, 35)}, GEN))
    await asyncio.wait_for(sink.entered.wait(), 5)
    c._read_offset[P0] = 33  # revoked, then assigned again: Faust's seek to the committed offset
    app.consumer_generation_id += 1
    sink.gate.set()
    await asyncio.wait_for(delivering, 5)
    assert sink.chunks == [(P0, [33, 34, 35])]
    assert c._read_offset[P0] == 33  # the next fetch from 33 is handed off again, not skipped


async def test_a_rebalance_abandons_a_blocked_hand_off(app: App, sink: Sink) -> None:
    sink.gate = asyncio.Event()  # never set: a sink blocked on a full lane
    c = consumer(app)
    delivering = asyncio.create_task(c._deliver({P0: chunk(0, 1)}, GEN))
    await asyncio.wait_for(sink.entered.wait(), 5)
    c.suspend_flow.set()
    await asyncio.wait_for(delivering, 5)
    assert sink.chunks == []
    assert c._read_offset[P0] is None  # read again after the rebalance


async def test_records_fetched_before_a_rebalance_are_read_again_not_handed_over(
        app: App, sink: Sink, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fetch began in the previous generation; the partition may be this worker's again, from the committed
    offset, or another's: the fetched records are dropped and the partitions sought back to what is committed."""
    c = consumer(app)
    seeks: list[str] = []

    async def perform_seek() -> None:
        seeks.append("committed")

    monkeypatch.setattr(c, "perform_seek", perform_seek)
    app.consumer_generation_id = GEN + 1
    await c._deliver({P0: chunk(36, 37)}, GEN)
    assert sink.chunks == []
    assert seeks == ["committed"]


class FakeAIOKafkaConsumer:
    """What `ConsumerThread._seek_to_committed` calls of aiokafka's consumer."""

    def __init__(self, committed: dict[str, int | None]) -> None:
        self._committed = committed
        self.positions: dict[str, Any] = {}

    def assignment(self) -> set[str]:
        return set(self._committed)

    async def committed(self, tp: str) -> int | None:
        return self._committed[tp]

    def seek(self, tp: str, offset: int) -> None:
        self.positions[tp] = offset

    async def seek_to_beginning(self, *tps: str) -> bool:
        self.positions.update({tp: "beginning" for tp in tps})
        return True


async def test_the_seek_to_committed_offsets_also_seeks_offset_0_and_partitions_never_committed(app: App) -> None:
    """aiokafka skips those, leaving the fetch position past records dropped in a rebalance (they were lost)."""
    thread = consumer(app)._thread
    fake = FakeAIOKafkaConsumer({"t-0": 0, "t-1": None, "t-2": 36})
    thread._consumer = fake
    assert await thread._seek_to_committed() == {"t-0": 0, "t-1": None, "t-2": 36}
    assert fake.positions == {"t-0": 0, "t-1": "beginning", "t-2": 36}


async def test_a_fetch_waits_out_a_rebalance_and_carries_the_new_generation(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records fetched once the flow resumes belong to the new assignment: they must not be dropped."""
    c = consumer(app)

    async def wait_next_records(seconds: float) -> tuple[dict[TP, list[Fetched]], None]:
        return {P0: chunk(0)}, None

    monkeypatch.setattr(c, "_wait_next_records", wait_next_records)
    c.stop_flow()  # a rebalance began
    fetching = asyncio.create_task(c._fetch())
    for _ in range(10):  # let it run as far as it can: to the wait for the flow
        await asyncio.sleep(0)
    assert not fetching.done()
    app.consumer_generation_id = GEN + 1  # assigned in the next generation, then the flow resumes
    c.resume_flow()
    records, generation = await asyncio.wait_for(fetching, 5)
    assert records == {P0: chunk(0)} and generation == GEN + 1


class AnsweringCoordinator(GroupCoordinator):
    """aiokafka's own group coordinator logic (`commit_offsets`), answered by a scripted broker.

    Only the network is replaced: what aiokafka does with each OffsetCommit answer (raise, reset the
    generation, request a rejoin, retry) is its real code.
    """

    def __init__(self, error_code: int, generation: int = 5) -> None:  # no super(): no client, no tasks
        self.group_id, self.generation, self.member_id = "group", generation, "member-1"
        self.coordinator_id, self._retry_backoff_ms = 1, 1
        self._commit_lock = asyncio.Lock()
        self.error_code = error_code
        self.requests: list[tuple[int, str]] = []
        self.rejoin_requested = False
        self.answers = 1_000  # requests answered before the broker stops answering

    async def ensure_coordinator_known(self) -> None:
        return None

    async def _send_req(self, request: Any) -> Any:
        self.requests.append((request._consumer_group_generation_id, request._consumer_id))
        if len(self.requests) > self.answers:
            await asyncio.Event().wait()  # no answer at all: the broker went away
        return SimpleNamespace(topics=[("orders", [(0, self.error_code)])])

    def request_rejoin(self) -> None:
        self.rejoin_requested = True

    def coordinator_dead(self, error: Any = None) -> None:  # would wake the task that finds the next coordinator
        self.coordinator_id = None


class CommittingConsumer:
    """The part of aiokafka's consumer that the fencing commit uses: its coordinator, and commit."""

    def __init__(self, coordinator: AnsweringCoordinator) -> None:
        self._coordinator = coordinator

    async def commit(self, offsets: dict[Any, Any]) -> None:
        await self._coordinator.commit_offsets(None, offsets)


def fencing(app: App, error_code: int, generation: int = 5) -> tuple[Any, AnsweringCoordinator]:
    thread = consumer(app)._thread
    coordinator = AnsweringCoordinator(error_code, generation)
    thread._consumer = CommittingConsumer(coordinator)
    return thread, coordinator


@pytest.mark.parametrize("answer", [Errors.UnknownMemberIdError, Errors.IllegalGenerationError,
                                    Errors.RebalanceInProgressError])
async def test_each_refusal_of_a_real_coordinator_means_the_worker_does_not_own_the_partition(
        app: App, answer: type[Errors.BrokerResponseError]) -> None:
    """Apache Kafka's answers to a commit from a member the group moved on without (shared/kafka/README.md)."""
    thread, coordinator = fencing(app, answer.errno)
    assert await thread._commit_owned({P0: 10}) is False
    assert coordinator.requests == [(5, "member-1")]
    if answer is Errors.RebalanceInProgressError:  # joined the next generation, not synced: rejoin
        assert coordinator.rejoin_requested and coordinator.generation == 5
    else:  # removed from the group: aiokafka forgets its generation
        assert coordinator.generation == -1
        assert await thread._commit_owned({P0: 10}) is False  # and the next fence sends nothing at all
        assert len(coordinator.requests) == 1


async def test_a_member_without_a_generation_never_commits_what_an_empty_group_would_accept(app: App) -> None:
    """A generation -1 commit is accepted by a real coordinator when the group is empty: it proves nothing."""
    thread, coordinator = fencing(app, Errors.NoError.errno, generation=-1)
    assert await thread._commit_owned({P0: 10}) is False
    assert coordinator.requests == []


async def test_an_accepted_commit_proves_ownership(app: App) -> None:
    thread, coordinator = fencing(app, Errors.NoError.errno)
    assert await thread._commit_owned({P0: 10}) is True
    assert coordinator.requests == [(5, "member-1")]


async def test_a_coordinator_that_keeps_moving_is_a_transient_failure_not_a_hang(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """aiokafka retries NOT_COORDINATOR inside commit forever (a broker restarting): the fence gives up."""
    monkeypatch.setattr(consumer_module, "FENCE_TIMEOUT_S", 1.0)
    thread, coordinator = fencing(app, Errors.NotCoordinatorForGroupError.errno)
    coordinator.answers = 2  # NOT_COORDINATOR twice (aiokafka retries), then no answer
    with pytest.raises(BrokerUnavailable, match="did not answer"):
        await thread._commit_owned({P0: 10})
    assert len(coordinator.requests) == 3


async def test_proofs_of_partitions_asked_together_go_out_in_one_commit_each_answered_alone_if_refused(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """One commit for the partitions whose launches wait together; refused as a whole (a partition revoked
    meanwhile, a topic's ACL), each partition is asked alone, so none is fenced because of another."""
    thread = consumer(app)._thread
    asked: list[dict[Any, int]] = []
    refused = KafkaNotAuthorized("committing: TOPIC_AUTHORIZATION_FAILED", "grant Read", "topic orders")
    answers: dict[tuple[Any, ...], Any] = {(P0, P1): refused, (P0,): True, (P1,): False}

    async def commit_owned(offsets: dict[Any, int]) -> bool:
        asked.append(dict(offsets))
        answer = answers[tuple(offsets)]
        if isinstance(answer, Exception):
            raise answer
        return answer

    monkeypatch.setattr(thread, "_commit_owned", commit_owned)
    assert await thread._commit_each_owned({P0: 10, P1: 20}) == {P0: True, P1: False}
    assert asked == [{P0: 10, P1: 20}, {P0: 10}, {P1: 20}]
    answers[(P0, P1)] = True
    assert await thread._commit_each_owned({P0: 11, P1: 21}) == {P0: True, P1: True}
    assert asked[3:] == [{P0: 11, P1: 21}]


async def test_a_coordinator_that_does_not_answer_a_joint_proof_fails_each_partition_once(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Asking again partition by partition would wait as long again for each: the transient error goes to all."""
    thread = consumer(app)._thread
    asked: list[dict[Any, int]] = []

    async def commit_owned(offsets: dict[Any, int]) -> bool:
        asked.append(dict(offsets))
        raise BrokerUnavailable("committing: the group coordinator did not answer in 10s")

    monkeypatch.setattr(thread, "_commit_owned", commit_owned)
    with pytest.raises(BrokerUnavailable):
        await thread._commit_each_owned({P0: 10, P1: 20})
    assert asked == [{P0: 10, P1: 20}]


async def test_faust_livelock_check_leaves_a_partition_alone_until_it_has_a_fetch_position(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen in a fresh-clone run: the check ran between an assignment and its seek (which waits for the
    partition's transactional id) and aiokafka's position assertion crashed the worker."""
    from aiokafka.consumer.subscription_state import TopicPartitionState

    thread = consumer(app)._thread
    fresh, fetching = TopicPartitionState(None), TopicPartitionState(None)
    fetching.seek(7)
    states = {AIOKafkaTP("orders", 0): fresh, AIOKafkaTP("orders", 1): fetching}
    assignment = SimpleNamespace(state_value=states.get)
    thread._consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=SimpleNamespace(
        subscription=SimpleNamespace(assignment=assignment))))
    checked: list[Any] = []
    monkeypatch.setattr(consumer_module.aiokafka_driver.AIOKafkaConsumerThread, "verify_event_path",
                        lambda self, now, tp: checked.append(tp))
    thread.verify_event_path(100.0, P0)
    thread.verify_event_path(100.0, P1)
    assert checked == [P1]


# -- refusals by the broker's ACLs: aiokafka's own commit code, answered by a scripted broker ---------------------


async def test_a_fence_refused_by_an_acl_is_a_refusal_naming_the_group(app: App) -> None:
    thread, _ = fencing(app, Errors.GroupAuthorizationFailedError.errno)
    with pytest.raises(KafkaNotAuthorized, match="GROUP_AUTHORIZATION_FAILED") as refused:
        await thread._commit_owned({P0: 10})
    assert refused.value.resource == "group group" and "--operation Read --group group" in refused.value.hint


class AssignedConsumer(CommittingConsumer):
    def assignment(self) -> set[Any]:
        return {P0}


class Reported:
    def __init__(self) -> None:
        self.refused: list[tuple[str, KafkaRefused]] = []

    def refuse(self, scope: str, exc: KafkaRefused, quiet_ends: bool = True) -> None:
        self.refused.append((scope, exc))

    def accept_quiet(self) -> None:
        return None


async def test_a_commit_refused_by_an_acl_pauses_instead_of_crashing_the_worker(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust's own commit crashes the worker on any error but "already rebalanced"."""
    c = consumer(app)
    thread = c._thread
    thread._consumer = AssignedConsumer(AnsweringCoordinator(Errors.TopicAuthorizationFailedError.errno))
    crashed: list[BaseException] = []

    async def crash(exc: BaseException) -> None:
        crashed.append(exc)

    monkeypatch.setattr(thread, "crash", crash)
    assert await thread._commit({P0: 10}) is False
    assert crashed == []
    app.kafka_access = reported = Reported()

    async def nothing_held() -> None:
        return None

    monkeypatch.setattr(thread, "take_coordinator_error", nothing_held)
    await c.report_refusals()
    [(scope, refused)] = reported.refused
    assert scope == "topic orders" and "TOPIC_AUTHORIZATION_FAILED" in str(refused)
    assert "--operation Read --topic orders" in refused.hint


async def test_a_commit_decided_before_a_transaction_committed_higher_never_overwrites_it(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    """Faust decides its offsets before `_commit` takes the partition's lock; a dead-letter transaction may commit
    a higher one meanwhile (seen: its dead letters were written again after a kill -9)."""
    c = consumer(app)
    sent: list[dict[Any, int]] = []
    fenced: list[int] = []

    async def commit(offsets: dict[Any, int]) -> bool:
        sent.append(dict(offsets))
        return True

    async def prove(offsets: dict[Any, int]) -> dict[Any, bool]:
        fenced.extend(offsets.values())
        return dict.fromkeys(offsets, True)

    monkeypatch.setattr(c._thread, "commit", commit)
    monkeypatch.setattr(c._thread, "prove_ownership", prove)
    async with c.committing(P0):
        c.committed(P0, 300)  # the transaction
    assert await c._commit({P0: 234, P1: 5}) is True
    assert sent == [{P1: 5}]
    assert await c._commit({P0: 234}) is False
    assert await c.prove_ownership(P0, 240) and fenced == [300]  # the proof commits what is committed already
    await c.on_partitions_revoked({P0})
    assert await c._commit({P0: 234}) is True  # a new assignment starts afresh


class AcceptingCommits:
    """`service.kafka.group_commits.GroupCommits` as the fence sees it: the partitions it got accepted."""

    def __init__(self, accepts: set[Any]) -> None:
        self.accepts = accepts
        self.asked: list[dict[Any, int]] = []

    async def accepted(self, membership: Any, offsets: dict[Any, int]) -> set[Any]:
        self.asked.append(dict(offsets))
        return self.accepts & set(offsets)


async def test_a_proof_goes_from_the_apps_loop_first_and_the_consumer_thread_answers_the_rest(
        app: App, monkeypatch: pytest.MonkeyPatch) -> None:
    c = consumer(app)
    app.group_commits = commits = AcceptingCommits({P0})  # type: ignore[assignment]
    asked_thread: list[dict[Any, int]] = []

    async def prove(offsets: dict[Any, int]) -> dict[Any, bool]:
        asked_thread.append(dict(offsets))
        return dict.fromkeys(offsets, False)

    monkeypatch.setattr(c._thread, "prove_ownership", prove)
    monkeypatch.setattr(c._thread, "membership", lambda tps: SimpleNamespace(generation=5))
    assert await c._prove_each({P0: 10, P1: 20}) == {P0: True, P1: False}
    assert commits.asked == [{P0: 10, P1: 20}] and asked_thread == [{P1: 20}]

    monkeypatch.setattr(c._thread, "membership", lambda tps: None)  # not in a generation, or mid-rebalance
    assert await c._prove_each({P0: 11}) == {P0: False}
    assert len(commits.asked) == 1 and asked_thread[-1] == {P0: 11}


def test_the_membership_for_a_commit_from_the_apps_loop_needs_a_generation_a_coordinator_and_the_partitions(
        app: App) -> None:
    thread = consumer(app)._thread
    coordinator = SimpleNamespace(group_id="g", generation=5, member_id="member-1", coordinator_id=1)
    thread._consumer = SimpleNamespace(_coordinator=coordinator, assignment=lambda: {AIOKafkaTP("orders", 0)})
    membership = thread.membership([P0])
    assert (membership.group_id, membership.generation, membership.member_id, membership.coordinator_id) == \
        ("g", 5, "member-1", 1)
    assert thread.membership([P0, P1]) is None  # P1 is not assigned
    coordinator.coordinator_id = None
    assert thread.membership([P0]) is None
    coordinator.coordinator_id, coordinator.generation = 1, -1
    assert thread.membership([P0]) is None
