"""Batcher: closing rules, splits, drains, and batch ids."""

from __future__ import annotations

import itertools

import pytest

from service.batching import (
    ARRIVAL_CREDIT_S,
    BYTES,
    RECORDS,
    REVOKE,
    SPLIT,
    TIME,
    TP,
    Batch,
    Batcher,
    BatchPolicy,
    Record,
    batch_id,
)
from tests.unit.factories import make_record

BIG = 10**9


def batcher(max_records: int = BIG, max_bytes: int = BIG, max_wait_s: float = 1e9, route: str = "") -> Batcher:
    return Batcher(BatchPolicy(max_records, max_bytes, max_wait_s), route)


def sized(offset: int, size: int, partition: int = 0) -> Record:
    return make_record(offset, value=b"x" * size, partition=partition)


def add_one(b: Batcher, record: Record, now: float) -> list[Batch]:
    """One record through `add_many`: what the worker hands over is a chunk of one or more."""
    return b.add_many([record], now)


def offsets(batch: Batch) -> list[int]:
    return [r.offset for r in batch.records]


def test_closes_on_max_records() -> None:
    b = batcher(max_records=3)
    assert add_one(b, make_record(0), 0.0) == []
    assert add_one(b, make_record(1), 0.0) == []
    [closed] = add_one(b, make_record(2), 0.0)
    assert closed.reason == RECORDS
    assert offsets(closed) == [0, 1, 2]
    assert (closed.offset_start, closed.offset_end) == (0, 2)
    assert b.open == {}


def test_max_records_one_closes_every_record() -> None:
    b = batcher(max_records=1)
    for offset in range(5):
        [closed] = add_one(b, make_record(offset), 0.0)
        assert offsets(closed) == [offset]
        assert closed.reason == RECORDS


def test_closes_when_exactly_max_bytes() -> None:
    b = batcher(max_bytes=10)
    assert add_one(b, sized(0, 4), 0.0) == []
    [closed] = add_one(b, sized(1, 6), 0.0)
    assert closed.reason == BYTES
    assert closed.size == 10
    assert offsets(closed) == [0, 1]


def test_record_that_would_overflow_closes_the_open_batch_and_starts_the_next() -> None:
    b = batcher(max_bytes=10)
    add_one(b, sized(0, 6), 0.0)
    [closed] = add_one(b, sized(1, 6), 0.0)
    assert closed.reason == BYTES
    assert offsets(closed) == [0]
    assert closed.size == 6
    assert offsets(b.open[TP("orders", 0)]) == [1]


def test_oversized_record_goes_alone_in_its_own_batch() -> None:
    b = batcher(max_bytes=10)
    add_one(b, sized(0, 3), 0.0)
    closed = add_one(b, sized(1, 50), 0.0)
    assert [offsets(c) for c in closed] == [[0], [1]]
    assert [c.reason for c in closed] == [BYTES, BYTES]
    assert closed[1].size == 50
    assert b.open == {}


def test_key_counts_toward_size() -> None:
    b = batcher(max_bytes=10)
    [closed] = add_one(b, make_record(0, key=b"k" * 5, value=b"v" * 5), 0.0)
    assert closed.reason == BYTES
    assert closed.size == 10


@pytest.mark.parametrize("max_bytes", [1, 7, 10, 25, 64])
def test_batch_never_exceeds_max_bytes_unless_one_record_alone_is_larger(max_bytes: int) -> None:
    b = batcher(max_records=6, max_bytes=max_bytes)
    sizes = [3, 9, 1, 0, 12, 5, 5, 5, 30, 2, 2, 2, 2, 2, 2, 2, 7, 1, 64, 0]
    closed: list[Batch] = []
    for offset, size in enumerate(sizes):
        closed += add_one(b, sized(offset, size), 0.0)
    closed += b.drain()
    for batch in closed:
        assert batch.size == sum(r.size for r in batch.records)
        assert batch.size <= max_bytes or len(batch.records) == 1
        assert len(batch.records) <= 6
    assert list(itertools.chain.from_iterable(offsets(c) for c in closed)) == list(range(len(sizes)))


def test_records_before_bytes_when_both_reached() -> None:
    b = batcher(max_records=2, max_bytes=10)
    add_one(b, sized(0, 5), 0.0)
    [closed] = add_one(b, sized(1, 5), 0.0)
    assert closed.reason == RECORDS


def test_expire_closes_on_max_wait_s() -> None:
    b = batcher(max_wait_s=5.0)
    add_one(b, make_record(0), now=100.0)
    add_one(b, make_record(1), now=103.0)
    assert b.expire(104.9) == []
    [closed] = b.expire(105.0)
    assert closed.reason == TIME
    assert offsets(closed) == [0, 1]
    assert b.open == {}
    assert b.expire(1000.0) == []


@pytest.mark.parametrize(("on_the_way_s", "closes_at"), [
    (0.125, 104.875),  # fetched 0.125 s after it reached the broker: max_wait_s counts from the broker
    (30.0, 104.75),  # a backlog: at most ARRIVAL_CREDIT_S is credited, the batch still waits
    (-2.0, 105.0),  # a producer clock ahead of ours: nothing credited
])
def test_max_wait_s_counts_from_the_first_records_arrival_at_the_broker_within_a_bound(
        on_the_way_s: float, closes_at: float) -> None:
    assert ARRIVAL_CREDIT_S == 0.25
    b = batcher(max_wait_s=5.0)
    record = make_record(0, timestamp_ms=1_700_000_000_000)
    b.add_many([record], now=100.0, wall_now=1_700_000_000 + on_the_way_s)
    assert b.expire(closes_at - 0.001) == []
    assert [offsets(batch) for batch in b.expire(closes_at)] == [[0]]


def test_a_record_without_a_timestamp_starts_the_clock_when_it_is_read() -> None:
    b = batcher(max_wait_s=5.0)
    b.add_many([make_record(0, timestamp_ms=None)], now=100.0, wall_now=2_000_000_000.0)
    assert b.expire(104.999) == [] and len(b.expire(105.0)) == 1


def test_wait_counts_from_the_batch_opening_not_the_last_record() -> None:
    b = batcher(max_wait_s=5.0)
    add_one(b, make_record(0), now=0.0)
    add_one(b, make_record(1), now=4.9)
    [closed] = b.expire(5.0)
    assert offsets(closed) == [0, 1]
    add_one(b, make_record(2), now=6.0)
    assert b.expire(10.9) == []
    assert offsets(b.expire(11.0)[0]) == [2]


def test_each_route_batches_by_its_own_policy() -> None:
    slow, fast = batcher(max_wait_s=10.0, route="slow"), batcher(max_wait_s=1.0, route="fast")
    add_one(slow, make_record(0), 0.0)
    add_one(fast, make_record(0), 0.0)
    assert slow.expire(1.0) == []
    [closed] = fast.expire(1.0)
    assert closed.route == "fast"
    assert list(slow.open) == [TP("orders", 0)]


def test_split_closes_the_open_batch_before_a_dead_lettered_record() -> None:
    b = batcher()
    add_one(b, make_record(0), 0.0)
    add_one(b, make_record(1), 0.0)
    split = b.split(TP("orders", 0))
    assert split is not None
    assert split.reason == SPLIT
    assert offsets(split) == [0, 1]
    # offset 2 is dead-lettered; the next batch starts after it
    add_one(b, make_record(3), 0.0)
    [rest] = b.drain()
    assert offsets(rest) == [3]


def test_split_without_an_open_batch_is_none() -> None:
    b = batcher()
    assert b.split(TP("orders", 0)) is None
    add_one(b, make_record(0, partition=1), 0.0)
    assert b.split(TP("orders", 0)) is None
    assert list(b.open) == [TP("orders", 1)]


def test_drain_closes_selected_partitions_with_a_reason() -> None:
    b = batcher()
    for partition in range(3):
        add_one(b, make_record(0, partition=partition), 0.0)
    closed = b.drain([TP("orders", 0), TP("orders", 2), TP("orders", 9)])
    assert sorted(c.partition for c in closed) == [0, 2]
    assert {c.reason for c in closed} == {REVOKE}
    assert list(b.open) == [TP("orders", 1)]
    [last] = b.drain(reason="shutdown")
    assert last.reason == "shutdown"
    assert b.open == {}
    assert b.drain() == []


def test_partitions_are_independent() -> None:
    b = batcher(max_records=3)
    closed: list[Batch] = []
    for offset in range(4):
        closed += add_one(b, make_record(offset, partition=0), 0.0)
        if offset < 2:
            closed += add_one(b, make_record(offset + 100, partition=1), 0.0)
    assert [(c.partition, offsets(c)) for c in closed] == [(0, [0, 1, 2])]
    assert offsets(b.open[TP("orders", 1)]) == [100, 101]
    assert offsets(b.open[TP("orders", 0)]) == [3]


def test_topics_are_independent() -> None:
    b = batcher(max_records=2)
    assert add_one(b, make_record(0, topic="other"), 0.0) == []
    assert add_one(b, make_record(0), 0.0) == []
    [closed] = add_one(b, make_record(1), 0.0)
    assert closed.topic == "orders"
    assert offsets(b.open[TP("other", 0)]) == [0]


def test_batch_ids_include_the_route_unless_it_is_named_after_its_topic() -> None:
    assert batch_id("orders", 0, 1, 2, route="orders") == batch_id("orders", 0, 1, 2)
    assert batch_id("orders", 0, 1, 2, route="refunds") != batch_id("orders", 0, 1, 2)
    assert batch_id("orders", 0, 1, 2, route="refunds") != batch_id("orders", 0, 1, 2, route="large")
    b = batcher(max_records=1, route="refunds")
    [closed] = add_one(b, make_record(4), 0.0)
    assert closed.batch_id == batch_id("orders", 0, 4, 4, route="refunds")


def test_interleaved_partitions_give_consecutive_single_partition_batches() -> None:
    b = batcher(max_records=4, max_bytes=40)
    closed: list[Batch] = []
    next_offset = {0: 0, 1: 50, 2: 7}
    pattern = [0, 1, 1, 2, 0, 0, 2, 1, 2, 2, 2, 0, 1, 0, 0, 1, 2, 2, 0, 1] * 3
    for step, partition in enumerate(pattern):
        record = sized(next_offset[partition], (step * 7) % 13, partition=partition)
        next_offset[partition] += 1
        closed += add_one(b, record, float(step))
        if step % 9 == 8:
            closed += b.expire(float(step))
    closed += b.drain()
    seen: dict[int, list[int]] = {0: [], 1: [], 2: []}
    for batch in closed:
        assert {r.partition for r in batch.records} == {batch.partition}
        assert {r.topic for r in batch.records} == {batch.topic}
        assert offsets(batch) == list(range(batch.offset_start, batch.offset_end + 1))
        seen[batch.partition] += offsets(batch)
    assert seen == {0: list(range(next_offset[0])), 1: list(range(50, next_offset[1])),
                    2: list(range(7, next_offset[2]))}


def test_batch_id_is_deterministic() -> None:
    assert batch_id("orders", 0, 10, 20) == batch_id("orders", 0, 10, 20)
    b1, b2 = batcher(max_records=2), batcher(max_records=2)
    add_one(b1, make_record(10), 0.0)
    [first] = add_one(b1, make_record(11), 0.0)
    add_one(b2, make_record(10, value=b'{"other": 1}'), 5.0)
    [second] = add_one(b2, make_record(11, value=b"[]"), 9.0)
    assert first.batch_id == second.batch_id == batch_id("orders", 0, 10, 11)


@pytest.mark.parametrize(
    "other",
    [("orders", 0, 10, 21), ("orders", 0, 11, 20), ("orders", 1, 10, 20), ("order", 0, 10, 20),
     ("orders", 0, 1, 1020)],
)
def test_batch_id_differs_for_different_ranges(other: tuple[str, int, int, int]) -> None:
    assert batch_id("orders", 0, 10, 20) != batch_id(*other)


def test_batch_id_fields_cannot_run_into_each_other() -> None:
    ids = {batch_id("a", 1, 11, 1), batch_id("a", 11, 1, 1), batch_id("a1", 1, 1, 1), batch_id("a", 1, 1, 11)}
    assert len(ids) == 4


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 20])
@pytest.mark.parametrize(("max_records", "max_bytes"), [(6, 10), (3, BIG), (BIG, 25), (1, 1)])
def test_adding_a_fetched_chunk_closes_the_same_batches_as_adding_one_by_one(
        chunk: int, max_records: int, max_bytes: int) -> None:
    sizes = [3, 9, 1, 0, 12, 5, 5, 5, 30, 2, 2, 2, 2, 2, 2, 2, 7, 1, 64, 0]
    one_by_one, chunked = batcher(max_records, max_bytes), batcher(max_records, max_bytes)
    expected = [b for offset, size in enumerate(sizes) for b in add_one(one_by_one, sized(offset, size), 0.0)]
    records = [sized(offset, size) for offset, size in enumerate(sizes)]
    got = [b for start in range(0, len(records), chunk) for b in chunked.add_many(records[start:start + chunk], 0.0)]
    assert [(offsets(b), b.size, b.reason) for b in got] == [(offsets(b), b.size, b.reason) for b in expected]
    assert [offsets(b) for b in chunked.drain()] == [offsets(b) for b in one_by_one.drain()]


def test_partitions_assigned_together_close_their_first_batches_spread_over_max_wait() -> None:
    b = batcher(max_wait_s=8.0)
    b.stagger([TP("orders", p) for p in (3, 1, 0, 2)])
    for p in range(4):
        add_one(b, make_record(0, partition=p), 0.0)
    closed_at = {}
    for now in [x / 2 for x in range(1, 17)]:
        for batch in b.expire(now):
            closed_at[batch.partition] = now
    assert closed_at == {0: 2.0, 1: 4.0, 2: 6.0, 3: 8.0}
    # Later batches wait the whole max_wait_s, so the spread stays.
    add_one(b, make_record(1, partition=0), 10.0)
    assert b.expire(17.9) == []
    assert [offsets(batch) for batch in b.expire(18.0)] == [[1]]


def test_next_deadline_is_the_earliest_open_batch_closing_on_time() -> None:
    b = batcher(max_wait_s=5.0)
    assert b.next_deadline() is None
    add_one(b, make_record(0, partition=0), 10.0)
    add_one(b, make_record(0, partition=1), 12.0)
    assert b.next_deadline() == 15.0
    b.expire(15.0)
    assert b.next_deadline() == 17.0
