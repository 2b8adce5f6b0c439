"""What the delivery is given to reach the world around it: the consumer above it (the one way back up),
the dead-letter producer, the outcomes topic and the reader of offset ranges; `Links` hands them over as
one, with the schema registry and the transactional producers where there are."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol

from service.kafka.transactions import Transactions
from service.records import TP, Record
from service.registry import SchemaRegistry


class ConsumerLink(Protocol):
    """The way back up to the consumer that feeds the delivery (`service.worker` wires Faust's)."""

    async def fence(self, tp: TP, offset: int) -> bool:
        """Prove with the group coordinator that this worker owns `tp` (a synchronous commit of `offset`);
        False: another worker owns it now."""

    def mark_done(self, tp: TP, next_offset: int) -> None:
        """Every offset of `tp` below `next_offset` is launched or dead-lettered: it may be committed."""

    def pause(self, tps: set[TP]) -> None:
        """Stop fetching these partitions (a paused route's)."""

    def resume(self, tps: set[TP]) -> None:
        """Fetch these partitions again."""

    def committing(self, tp: TP) -> AbstractAsyncContextManager[None]:
        """Held while `tp`'s offset is committed another way (a transaction): no other commit of `tp` goes
        out meanwhile."""

    def committed(self, tp: TP, offset: int) -> None:
        """Holding `committing(tp)`: `offset` was committed another way; no later commit of `tp` may go lower
        (one decided earlier would overwrite it)."""


class DeadLetterSink(Protocol):
    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes]], timestamp_ms: int | None) -> None: ...


class HandledOutcomes(Protocol):
    """Which runs that did not succeed are settled already, by any worker (`service.outcomes.OutcomeLog`)."""

    topic: str  # where they are recorded (a transaction may write a record there itself: then `remember` it)

    def remember(self, run_id: str, status: str) -> None: ...

    async def outcome(self, run_id: str) -> str | None: ...

    async def record(self, run_id: str, status: str) -> None: ...

    async def cancelled_as_duplicates(self) -> set[str]: ...


# (topic, partition, first offset, last offset) -> the records of that range, read back from Kafka.
ReadRange = Callable[[str, int, int, int], Awaitable[list[Record]]]


@dataclass(frozen=True)
class Links:
    """What `service.worker` wires the delivery to.

    :param consumer: the way back up to the consumer: fence, mark done, pause and resume fetching
    :param dead_letters: where dead letters are written (the DLQ producer)
    :param outcomes: which failed runs are settled already, by any worker (each is settled once)
    :param read_range: reads a partition's offset range back, to copy a failed run's records to the DLQ
    :param on_fatal: a bug in a lane: stop the worker
    :param registry: the schema registry, when a route reads a framed format (`service.wire`)
    :param transactions: the partitions' transactional producers, where the cluster serves transactions: each
        partition's dead letters are then written with the offset commit that covers them, in one transaction
    """

    consumer: ConsumerLink
    dead_letters: DeadLetterSink
    outcomes: HandledOutcomes
    read_range: ReadRange
    on_fatal: Callable[[BaseException], Awaitable[None]]
    registry: SchemaRegistry | None = None
    transactions: Transactions | None = None
