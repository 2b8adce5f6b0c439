"""Micro-batching: cut each topic-partition's records into batches.

Pure logic, no Faust and no I/O, so it can be tested exhaustively. One
`Batcher` per route: a batch holds consecutive records of one topic-partition
among those its route takes, and closes on the first of `max_records`,
`max_bytes` or `max_wait_s`. A record that is dead-lettered for the route
splits the open batch, so no run's offset range covers a record dead-lettered
for its route. A route with a `partition_key` gives each record's key: a
batch holds one key and closes (reason `split`) where the key changes, so
every run is one partition's run.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from service.records import TP, Record

# Why a batch closed; the values of the `reason` label of kafka_dagster_batches_total.
RECORDS, BYTES, TIME, REVOKE, SPLIT = "records", "bytes", "time", "revoke", "split"

# A batch's max_wait_s counts from its first record's timestamp, but never from more than this before
# the worker read the record: the fetch delay is credited, a backlog's old timestamps are not.
ARRIVAL_CREDIT_S = 0.25


def arrival_credit(record: Record, wall_now: float | None) -> float:
    """How long before now `record` reached the broker, as far as the batch clock counts it."""
    if wall_now is None or record.timestamp_ms is None:
        return 0.0
    return min(max(wall_now - record.timestamp_ms / 1000, 0.0), ARRIVAL_CREDIT_S)


@dataclass(frozen=True)
class BatchPolicy:
    max_records: int
    max_bytes: int
    max_wait_s: float


def batch_id(topic: str, partition: int, offset_start: int, offset_end: int, route: str = "") -> str:
    """Deterministic id of `route`'s batch covering [offset_start, offset_end] of a partition.

    A route named after its topic (the default) hashes as before routes could share
    a topic, so a worker upgraded mid-stream still recognises its earlier launches.
    """
    text = f"{topic}\x00{partition}\x00{offset_start}\x00{offset_end}"
    if route and route != topic:
        text = f"{route}\x00{text}"
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class Batch:
    """Consecutive records of one topic-partition, launched as one run."""

    topic: str
    partition: int
    opened_at: float
    records: list[Record] = field(default_factory=list)
    size: int = 0
    reason: str | None = None
    wait_s: float = math.inf  # closes on time once `wait_s` has passed since `opened_at`
    closed_at: float | None = None  # when it was handed to its partition's lane
    route: str = ""
    partition_key: str | None = None  # the Dagster partition of every record in it (partitioned routes)

    @property
    def tp(self) -> TP:
        return TP(self.topic, self.partition)

    @property
    def offset_start(self) -> int:
        return self.records[0].offset

    @property
    def offset_end(self) -> int:
        return self.records[-1].offset

    @property
    def batch_id(self) -> str:
        return batch_id(self.topic, self.partition, self.offset_start, self.offset_end, self.route)

    def close(self, reason: str) -> Batch:
        self.reason = reason
        return self


class Batcher:
    """Holds one route's open batch of every topic-partition and decides when each closes."""

    def __init__(self, policy: BatchPolicy, route: str = "") -> None:
        self.policy = policy
        self.route = route
        self.open: dict[TP, Batch] = {}
        self.first_wait: dict[TP, float] = {}  # fraction of max_wait_s for a partition's next batch

    def stagger(self, tps: Iterable[TP]) -> None:
        """Spread the first deadlines of newly assigned partitions over `max_wait_s`.

        Partitions assigned together would otherwise open their batches
        together and close them together, every `max_wait_s`, so their launches
        would reach Dagster in bursts and queue there. The i-th of n partitions
        waits (i + 1) / n of `max_wait_s` for its first batch; later batches
        wait the full `max_wait_s` and keep the spread.
        """
        ordered = sorted(tps)
        for index, tp in enumerate(ordered):
            self.first_wait[tp] = (index + 1) / len(ordered)

    def add_many(self, records: Sequence[Record], now: float, wall_now: float | None = None,
                 keys: Sequence[str | None] | None = None) -> list[Batch]:
        """Add consecutive records of one partition, in order; return the batches they closed.

        `now` is the batch clock (monotonic); with `wall_now` (epoch seconds) a new batch's clock starts
        when its first record reached the broker, at most `ARRIVAL_CREDIT_S` earlier than `now`.
        `keys`, one per record, are their partition keys: a batch is cut where the key changes.
        """
        if not records:
            return []
        if keys is not None:
            return self._add_keyed(records, now, wall_now, keys)
        tp = records[0].tp
        policy = self.policy
        max_records, max_bytes = policy.max_records, policy.max_bytes
        closed: list[Batch] = []
        batch = self.open.pop(tp, None)
        for record in records:
            size = record.size
            if batch is not None and batch.size + size > max_bytes:
                closed.append(batch.close(BYTES))
                batch = None
            if batch is None:
                batch = Batch(tp.topic, tp.partition, opened_at=now - arrival_credit(record, wall_now),
                              wait_s=policy.max_wait_s * self.first_wait.pop(tp, 1.0), route=self.route)
            batch.records.append(record)
            batch.size += size
            if len(batch.records) >= max_records:
                closed.append(batch.close(RECORDS))
                batch = None
            elif batch.size >= max_bytes:
                closed.append(batch.close(BYTES))
                batch = None
        if batch is not None:
            self.open[tp] = batch
        return closed

    def _add_keyed(self, records: Sequence[Record], now: float, wall_now: float | None,
                   keys: Sequence[str | None]) -> list[Batch]:
        """`add_many` for records with partition keys: each run of one key is added on its own."""
        closed: list[Batch] = []
        tp = records[0].tp
        start = 0
        for index in range(1, len(records) + 1):
            if index < len(records) and keys[index] == keys[start]:
                continue
            key = keys[start]
            open_batch = self.open.get(tp)
            if open_batch is not None and open_batch.partition_key != key:
                closed.append(self.open.pop(tp).close(SPLIT))
            segment = self.add_many(records[start:index], now, wall_now)
            for batch in [*segment, self.open.get(tp)]:
                if batch is not None:
                    batch.partition_key = key  # every batch here holds records of this key only
            closed.extend(segment)
            start = index
        return closed

    def split(self, tp: TP) -> Batch | None:
        """Close `tp`'s open batch because the next record will not join it."""
        batch = self.open.pop(tp, None)
        return batch.close(SPLIT) if batch else None

    def next_deadline(self) -> float | None:
        """When the first open batch closes on time, if nothing else closes it first (None: no open batch)."""
        return min((batch.opened_at + batch.wait_s for batch in self.open.values()), default=None)

    def expire(self, now: float) -> list[Batch]:
        """Close every batch that has waited `max_wait_s` or longer."""
        due = [
            tp for tp, batch in self.open.items()
            if now - batch.opened_at >= batch.wait_s
        ]
        return [self.open.pop(tp).close(TIME) for tp in due]

    def drain(self, tps: Iterable[TP] | None = None, reason: str = REVOKE) -> list[Batch]:
        """Close the open batches of `tps` (default: all), e.g. on revoke or shutdown."""
        selected = list(self.open) if tps is None else [tp for tp in tps if tp in self.open]
        return [self.open.pop(tp).close(reason) for tp in selected]
