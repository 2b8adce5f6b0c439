"""Dead letters with transactions: each partition's letters wait until a transaction writes them with the offset
commit that covers them; a fenced transaction writes nothing (`service.delivery.dead_letters.DeadLetterCommits`).

The broker's side (InitProducerId fencing, read committed) is proven against Apache Kafka in
`tests/test_faults.py`; here a fake stands for `service.kafka.transactions.Transactions`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.delivery.lanes import DeadLetters
from service.delivery.ownership import Letter, OwnedPartition
from service.dlq import Failure, dlq_headers
from service.errors import BrokerUnavailable, ConfigurationError, Fenced, KafkaRejected
from service.kafka.transactions import Outgoing, transactional_id, use_transactions
from service.records import TP
from service.settings import load_settings
from tests.unit.factories import make_record
from tests.unit.test_delivery import Harness, _failed_run

TP0 = TP("orders", 0)
POISON = b"not json"


class FakeTransactions:
    """Stands for `service.kafka.transactions.Transactions`: keeps each committed transaction; `failures` first."""

    def __init__(self) -> None:
        self.written: list[tuple[TP, list[int], int | None]] = []
        self.records: list[Outgoing] = []
        self.failures: list[Exception] = []
        self.acquired: list[TP] = []
        self.held: set[TP] = set()
        self.released: list[TP] = []

    async def acquire(self, tps: Iterable[TP]) -> None:
        self.acquired.extend(tps)
        self.held.update(tps)

    def __contains__(self, tp: TP) -> bool:
        return tp in self.held

    async def release(self, tps: Iterable[TP]) -> None:
        self.released.extend(tps)

    async def write(self, tp: TP, records: Sequence[Outgoing], offset: int | None = None) -> None:
        await asyncio.sleep(0)  # a round trip: another flush may run meanwhile
        if self.failures:
            failure = self.failures.pop(0)
            if not isinstance(failure, Fenced):
                self.held.discard(tp)  # a failed producer is stopped, never reused
            raise failure
        offsets = [int(dict(r.headers)["dlq.offset"]) if r.headers else -1 for r in records]  # -1: not a letter
        self.written.append((tp, offsets, offset))
        self.records.extend(records)


@pytest.fixture
async def harness(registry: CollectorRegistry) -> AsyncIterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(**options: Any) -> Harness:
        made.append(Harness(registry, **options))
        return made[-1]

    yield make
    for h in made:
        await h.close()


@pytest.fixture
def transactional(harness: Callable[..., Harness]) -> Callable[..., tuple[Harness, FakeTransactions]]:
    def make(**route: Any) -> tuple[Harness, FakeTransactions]:
        transactions = FakeTransactions()
        return harness(transactions=transactions, **route), transactions

    return make


async def poison_between_batches(h: Harness) -> None:
    await h.deliver(h.record(0), h.record(1), h.record(2, value=POISON), h.record(3), h.record(4))
    h.clock.now += 5
    await h.delivery.tick()
    assert await h.settle()


async def test_a_dead_letter_waits_and_is_written_with_the_commit_that_covers_it(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    h, txn = transactional(max_records=10)
    await poison_between_batches(h)
    assert h.launched() == [(0, 1), (3, 4)]
    assert h.sink.sent == [] and txn.written == []  # nothing written at once
    assert h.done[0] == 2, "a plain commit never passes a dead letter not yet written"
    assert h.delivery.snapshot()["partitions"][0]["dead_letters_waiting"] == 1

    await h.delivery.flush_dead_letters()
    assert txn.written == [(TP0, [2], 5)]  # the letter and the commit past it: one transaction
    assert h.done[0] == 5
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="decode") == 1
    assert h.sample("kafka_dagster_dlq_transactions_total", result="committed") == 1
    await h.delivery.flush_dead_letters()
    assert len(txn.written) == 1  # written once


async def test_two_flushes_at_once_write_a_letter_once(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    """The timer's flush and a hand-over's may meet: what is due is read once the partition's commit is ours."""
    h, txn = transactional(max_records=10)
    await h.deliver(h.record(0, value=POISON))
    assert await h.settle()
    [owned] = list(h.delivery.partitions)
    assert h.delivery.dead_letter_commits is not None
    await asyncio.gather(h.delivery.flush_dead_letters(), h.delivery.dead_letter_commits.flush_partition(owned))
    assert txn.written == [(TP0, [0], 1)]


async def test_the_fencing_commit_before_a_launch_never_passes_a_waiting_dead_letter(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    h, _ = transactional(max_records=2)
    await h.deliver(h.record(0, value=POISON), h.record(1), h.record(2))
    assert await h.settle()
    assert h.launched() == [(1, 2)]
    assert h.fenced_at == [(TP0, 0)]


async def test_a_launch_during_the_first_chunk_never_commits_past_a_waiting_dead_letter(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    """A restarted worker's first chunk is a backlog: its lane fills, and launches begin while the chunk is still
    being handed to the routes. Seen on Apache Kafka (CI, 2026-12-07): the fence committed the batch's start
    past a letter still waiting, and the worker was killed before the letter's transaction; it was lost."""
    h, _ = transactional(max_records=2, delivery={"queued_batches_per_partition": 1})
    await h.deliver(h.record(10, value=POISON), *(h.record(o) for o in range(11, 13)),
                    h.record(13, value=POISON), *(h.record(o) for o in range(14, 20)))
    assert await h.settle()
    assert h.launched() == [(11, 12), (14, 15), (16, 17), (18, 19)]
    assert h.fenced_at and max(offset for _, offset in h.fenced_at) <= 10, h.fenced_at
    assert h.done[0] == 10


async def test_a_fenced_transaction_writes_nothing_and_drops_the_partitions_work(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    h, txn = transactional(max_records=10)
    await h.deliver(h.record(0, value=POISON), h.record(1))  # 1 waits in an open batch
    assert await h.settle()
    txn.failures = [Fenced("another worker initialised its transactional id (ProducerFenced)")]
    h.clock.now += 5
    await h.delivery.tick()
    assert await h.settle()
    await h.delivery.flush_dead_letters()
    assert txn.written == [] and h.sink.sent == []
    assert h.done.get(0, 0) == 0
    assert h.sample("kafka_dagster_dlq_transactions_total", result="fenced") == 1
    assert h.delivery.snapshot()["partitions"][0]["fenced"]
    await h.deliver(h.record(2, value=POISON))  # records of its old assignment: ignored
    assert await h.settle()
    await h.delivery.flush_dead_letters()
    assert txn.written == []


async def test_a_failed_transaction_leaves_the_letters_waiting_for_the_next_flush(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    h, txn = transactional(max_records=10)
    await h.delivery.before_seek([TP0])
    await h.deliver(h.record(0, value=POISON))
    assert await h.settle()
    txn.failures = [BrokerUnavailable("the transaction coordinator moved")]
    await h.delivery.flush_dead_letters()
    assert txn.written == [] and h.done.get(0, 0) == 0
    await h.delivery.flush_dead_letters()
    assert txn.written == [(TP0, [0], 1)] and h.done[0] == 1
    assert h.sample("kafka_dagster_dlq_transactions_total", result="failed") == 1
    # Another producer, once the coordinator confirmed the partition is still this worker's:
    assert txn.acquired == [TP0, TP0] and h.fenced_at == [(TP0, 0)]


async def test_a_failed_producer_is_not_replaced_once_the_partition_moved(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    h, txn = transactional(max_records=10)
    await h.delivery.before_seek([TP0])
    await h.deliver(h.record(0, value=POISON))
    assert await h.settle()
    txn.failures = [BrokerUnavailable("the transaction coordinator moved")]
    await h.delivery.flush_dead_letters()
    h.owned = False  # the group rebalanced without this worker meanwhile
    await h.delivery.flush_dead_letters()
    assert txn.written == [] and txn.acquired == [TP0]  # initialising the id again would fence the new owner
    assert h.delivery.snapshot()["partitions"][0]["fenced"]


async def test_a_refused_transaction_pauses_the_route_until_one_is_written(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    h, txn = transactional(max_records=10)
    await h.deliver(h.record(0, value=POISON))
    assert await h.settle()
    txn.failures = [KafkaRejected("MessageSizeTooLargeError")]
    await h.delivery.flush_dead_letters()
    assert h.delivery.pauses.status()["orders"]["reason"] == "dlq_write"
    await h.delivery.flush_dead_letters()
    assert "orders" not in h.delivery.pauses.status()
    assert txn.written == [(TP0, [0], 1)]


async def test_a_revoked_partitions_dead_letters_are_written_with_what_it_handled_then_released(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    """The hand-over's dead letters are committed, so the next owner does not write them again."""
    h, txn = transactional(max_records=10)
    await h.deliver(h.record(0), h.record(1, value=POISON), h.record(2))
    await h.delivery.on_revoked([TP0], timeout_s=2.0)
    assert h.launched() == [(0, 0), (2, 2)]
    assert txn.written == [(TP0, [1], 3)]
    assert txn.released == [TP0]
    assert h.done.get(0, 0) == 0  # no plain commit of a revoked partition


async def test_shutdown_writes_the_waiting_dead_letters_before_the_last_commit(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    h, txn = transactional(max_records=10)
    await h.deliver(h.record(0, value=POISON), h.record(1))
    await h.delivery.close(timeout_s=2.0)
    assert txn.written == [(TP0, [0], 2)]
    assert h.done[0] == 2


async def test_partitions_are_taken_over_before_their_offsets_are_read(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    h, txn = transactional()
    await h.delivery.before_seek([TP0, TP("orders", 1)])
    assert sorted(txn.acquired) == [TP0, TP("orders", 1)]


async def test_without_transactions_dead_letters_are_written_at_once(harness: Callable[..., Harness]) -> None:
    h = harness(max_records=10)
    await h.deliver(h.record(0, value=POISON))
    assert await h.settle()
    assert h.sink.offsets("decode") == [0] and h.done[0] == 1
    await h.delivery.before_seek([TP0])  # nothing to take over


async def test_a_failed_runs_copy_and_its_outcome_record_are_one_transaction_of_the_partition(
        transactional: Callable[..., tuple[Harness, FakeTransactions]]) -> None:
    h, txn = transactional(max_records=1)
    await h.delivery.before_seek([TP0])
    h.client.runs.append(_failed_run("died-with-its-worker", 0, 2))
    h.read_back[(0, 2)] = [h.record(offset) for offset in range(3)]
    await h.feed(0, 1, 2, 3)
    assert await h.settle()
    await h.delivery.watcher.poll()
    assert txn.written == [(TP0, [0, 1, 2, -1], None)]  # no offsets: the run's were committed with its launch
    outcome = txn.records[-1]
    assert (outcome.topic, outcome.key, outcome.value) == (f"{h.outcomes.topic}", b"died-with-its-worker",
                                                            b"FAILURE")
    assert h.outcomes.recorded == {"died-with-its-worker": "FAILURE"} and h.sink.sent == []
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="run") == 3


def test_waiting_letters_hold_back_the_plain_commit_not_the_handled_offset() -> None:
    owned = OwnedPartition(TP0, 1, [], dispatched=10)
    failure = Failure("decode", "InvalidJson", "no")
    for offset in (4, 7):
        record = make_record(offset)
        owned.letters.append(Letter(record, failure, dlq_headers(record, failure)))
    assert owned.handled_below() == 10 and owned.done_below() == 4
    due, handled = owned.letters_due()
    assert [letter.record.offset for letter in due] == [4, 7] and handled == 10
    assert isinstance(DeadLetters([make_record(1)], failure), DeadLetters)


def test_a_partitions_transactional_id_is_stable_per_prefix_and_partition() -> None:
    assert transactional_id("kafka-dagster", TP("demo.orders", 3)) == "kafka-dagster:demo.orders:3"


def test_the_transactions_setting_and_prefix(tmp_path: Any) -> None:
    routes = tmp_path / "routes.toml"
    routes.write_text("")
    env = {"KAFKA_DAGSTER_ROUTES": str(routes), "KAFKA_DAGSTER_DATA_DIR": str(tmp_path)}
    settings = load_settings(env)
    assert settings.transactions == "auto" and settings.transactional_id_prefix == "kafka-dagster"
    settings = load_settings(env | {"KAFKA_DAGSTER_TRANSACTIONS": "off", "KAFKA_DAGSTER_TRANSACTIONAL_ID_PREFIX": "p"})
    assert settings.transactions == "off" and settings.transactional_id_prefix == "p"
    with pytest.raises(ConfigurationError, match="KAFKA_DAGSTER_TRANSACTIONS"):
        load_settings(env | {"KAFKA_DAGSTER_TRANSACTIONS": "yes"})


async def test_off_asks_nothing_and_on_requires_a_cluster_that_serves_them(monkeypatch: pytest.MonkeyPatch) -> None:
    async def serves(*args: Any) -> bool:
        return False

    monkeypatch.setattr("service.kafka.transactions.broker_has_transactions", serves)
    assert await use_transactions("off", "nowhere:1", "p") is False
    assert await use_transactions("auto", "nowhere:1", "p") is False
    with pytest.raises(ConfigurationError, match="KAFKA_DAGSTER_TRANSACTIONS"):
        await use_transactions("on", "nowhere:1", "p")
