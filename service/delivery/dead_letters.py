"""Dead letters: records written to the DLQ with the contract's headers, retried through what Kafka refuses
(a refusal pauses the route, reason `dlq_write`, or `kafka_authorization` when an ACL denies the write,
until the DLQ takes the record; `dlq_refusal` words it for both writers).

Which of the two writes a dead letter depends on whether the cluster serves
transactions (`service.kafka.transactions`):

- Without transactions (`KAFKA_DAGSTER_TRANSACTIONS=off`, or `auto` on a
  broker that serves none), `DeadLetterWriter` writes every dead letter, one
  by one, at once: before its offset may be committed, so a worker killed
  between the two writes it again after a restart (at least once).
- With transactions (`on`, or `auto` on a broker that serves them), the dead
  letter of a record not yet committed waits in its partition
  (`OwnedPartition.letters`), and `DeadLetterCommits` writes each
  partition's waiting dead letters together with the offset commit that
  covers them, in one transaction per partition: exactly once.

The copies of a failed run's records (stage `run`: their offsets were
committed with the launch) are `DeadLetterWriter`'s either way. With
transactions, where this worker owns the run's partition, it writes them in
one transaction of the partition's transactional id with the record that
settles the run (`write_in_transaction`; no offset commit); otherwise, or
when that transaction is refused, one by one. The records of a batch whose
launch again was refused are written one by one too.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from functools import partial

from service.delivery.config import Tools
from service.delivery.links import ConsumerLink, DeadLetterSink
from service.delivery.ownership import Letter, OwnedPartition, Partitions
from service.dlq import Failure, dlq_headers
from service.errors import Fenced, KafkaRefused, KafkaRejected, TransientError
from service.kafka.transactions import Outgoing, Transactions
from service.metrics import Metrics
from service.records import Record
from service.retry import OWN_PAUSE, Refusal, until_accepted

logger = logging.getLogger(__name__)

DLQ_WRITE = "dlq_write"  # a route's pause reason: the DLQ topic refused a dead letter


class DeadLetterWriter:
    """Writes dead letters, one at a time, each until the DLQ topic takes it (`write`); with transactions, those
    of an owned partition's records not yet committed wait in it for `DeadLetterCommits`, and a failed run's
    copy goes in one transaction with the record that settles the run (`write_in_transaction`).

    :param tools: the DLQ topic, the route pauses (reason `dlq_write`), the retries and the metrics
    :param sink: the DLQ producer
    :param transactions: the partitions' transactional producers, where the cluster serves transactions
    """

    def __init__(self, tools: Tools, sink: DeadLetterSink, transactions: Transactions | None = None) -> None:
        self.settings = tools.settings
        self.pauses = tools.pauses
        self.retrying = tools.retrying
        self.metrics = tools.metrics
        self.sink = sink
        self.transactions = transactions

    async def write(self, records: Iterable[Record], failure: Failure, owned: OwnedPartition | None = None) -> None:
        """Write records to the DLQ, retrying what Kafka refuses; with transactions, records of `owned`
        (consumed for it, not yet committed) wait in it to be written with the commit that covers them."""
        if self.transactions is not None and owned is not None:
            owned.letters.extend(Letter(record, failure, dlq_headers(record, failure)) for record in records)
            return
        for record in records:
            await self._send_until_accepted(record, failure)
            dead_lettered(self.metrics, record, failure)

    async def write_in_transaction(self, owned: OwnedPartition | None, records: list[Record], failure: Failure,
                                   also: Outgoing, what: str) -> bool:
        """Write records to the DLQ and `also` in one transaction of `owned`'s transactional id: both or neither,
        and nothing from a fenced worker (`Fenced`). False, nothing written, where that cannot be: no
        transactions, or the partition is not owned here. A refusal is raised (`KafkaRejected`)."""
        if self.transactions is None or owned is None or not owned.may_launch or owned.tp not in self.transactions:
            return False
        outgoing = [dlq_record(self.settings.dlq_topic, r, dlq_headers(r, failure)) for r in records]
        outgoing.append(also)
        await self.retrying.transient(partial(self.transactions.write, owned.tp, outgoing), what)
        for record in records:
            dead_lettered(self.metrics, record, failure)
        return True

    async def _send_until_accepted(self, record: Record, failure: Failure) -> None:
        """Send one dead letter; a broker that refuses it (e.g. for its size) pauses its route, reason dlq_write."""

        def refusal(exc: Exception) -> Refusal | None:
            return dlq_refusal(self.settings.dlq_topic, [record], exc) if isinstance(exc, KafkaRejected) else None

        await until_accepted(partial(self.retrying.transient, partial(self._send_dead_letter, record, failure),
                                     "dead-letter"),
                             pauses=self.pauses, route=failure.route or record.topic, resumes=OWN_PAUSE,
                             refusal=refusal, backoff=self.retrying.route_backoff())

    async def _send_dead_letter(self, record: Record, failure: Failure) -> None:
        headers = dlq_headers(record, failure)
        await self.sink.send(self.settings.dlq_topic, record.key, record.value, headers, record.timestamp_ms)


def dlq_refusal(dlq_topic: str, records: Sequence[Record], exc: KafkaRejected, transactional: bool = False) -> Refusal:
    """What the routes of `records` pause with when the DLQ topic refused them (reason, message, fix): an ACL
    (`KafkaRefused`) its own reason and the grant, anything else `dlq_write` and the size limit to raise (or, for
    a transaction, the transactional id's ACL to grant)."""
    first = records[0]
    more = f" and {len(records) - 1} more" if len(records) > 1 else ""
    refused = (f"the DLQ topic {dlq_topic} refused a dead letter of {first.topic}/{first.partition} offset "
               f"{first.offset}{more}: {exc}")
    if isinstance(exc, KafkaRefused):  # an ACL: not the records' fault, and no size limit to raise
        return Refusal(exc.reason, refused, exc.hint)
    fix = "raise the DLQ topic's max.message.bytes (or the broker's message.max.bytes)"
    return Refusal(DLQ_WRITE, refused, f"{fix}, or grant the transactional id its ACL" if transactional else fix)


def dlq_record(dlq_topic: str, record: Record, headers: list[tuple[str, bytes]]) -> Outgoing:
    """The dead letter of `record`: its key, value and timestamp, with the DLQ headers."""
    return Outgoing(dlq_topic, record.key, record.value, headers, record.timestamp_ms)


def dead_lettered(metrics: Metrics, record: Record, failure: Failure) -> None:
    metrics.dlq_messages.labels(record.topic, failure.stage).inc()
    logger.warning("dead-lettered %s/%d offset %d at stage %s: %s: %s", record.topic, record.partition,
                   record.offset, failure.stage, failure.error_class, failure.error_message)


class DeadLetterCommits:
    """Writes each partition's waiting dead letters with the offset commit that covers them, in one transaction.

    A partition's letters are due once every offset below them is handled
    (`OwnedPartition.letters_due`); the transaction commits the handled
    offset, and no other commit of the partition goes out meanwhile
    (`ConsumerLink.committing`). A transaction refused because another worker
    holds the partition's transactional id now (a zombie woken) drops the
    partition's work as the fence does: nothing of it is written. Any other
    failure leaves the letters waiting (nothing of the transaction is
    visible), to be written at the next flush; a refusal that waiting will
    not fix pauses their routes (reason `dlq_write`) until a write succeeds.

    :param tools: the DLQ topic, the route pauses (reason `dlq_write`) and the metrics
    :param partitions: the owned partitions, whose letters wait
    :param transactions: the partitions' transactional producers
    :param consumer: the consumer, whose other commits of a partition wait while a transaction commits it
    :param on_fenced: drops an owned partition that another worker holds now
    """

    def __init__(self, tools: Tools, partitions: Partitions, transactions: Transactions, consumer: ConsumerLink,
                 on_fenced: Callable[[OwnedPartition, Fenced], None]) -> None:
        self.settings = tools.settings
        self.pauses = tools.pauses
        self.metrics = tools.metrics
        self.partitions = partitions
        self.transactions = transactions
        self.consumer = consumer
        self.on_fenced = on_fenced
        self._paused: dict[str, str] = {}  # route -> the reason it was paused for

    async def flush(self) -> None:
        """Write every owned partition's due letters (each partition in its own transaction)."""
        for owned in self.partitions:
            await self.flush_partition(owned)

    async def flush_partition(self, owned: OwnedPartition) -> bool:
        """Write `owned`'s due letters with the commit of its handled offset; False if they still wait."""
        if not owned.letters_due()[0]:
            return True
        if owned.tp not in self.transactions and not await self._take_over_again(owned):
            return False
        try:
            async with self.consumer.committing(owned.tp):  # what is due is read inside: a flush beside this one
                due, handled = owned.letters_due()           # may have written some meanwhile
                if not due or handled is None or not owned.may_launch:
                    return not due
                outgoing = [dlq_record(self.settings.dlq_topic, letter.record, letter.headers) for letter in due]
                started = time.monotonic()
                await self.transactions.write(owned.tp, outgoing, handled)
                self.consumer.committed(owned.tp, handled)
                written = {id(letter) for letter in due}
                owned.letters[:] = [letter for letter in owned.letters if id(letter) not in written]
        except Fenced as exc:
            self.metrics.dlq_transactions.labels("fenced").inc()
            self.on_fenced(owned, exc)  # drops the letters too: the partition's next owner writes them
            return False
        except (TransientError, KafkaRejected) as exc:
            self.metrics.dlq_transactions.labels("failed").inc()
            logger.warning("writing %d dead letters of %s/%d failed (they wait for the next attempt): %s",
                           len(due), owned.tp.topic, owned.tp.partition, exc)
            if isinstance(exc, KafkaRejected):
                self._pause(due, exc)
            return False
        self.metrics.dlq_transactions.labels("committed").inc()
        self.metrics.dlq_transaction_duration.observe(time.monotonic() - started)
        for letter in due:
            dead_lettered(self.metrics, letter.record, letter.failure)
        self._resume(due)
        self.partitions.advance(owned)
        return True

    async def _take_over_again(self, owned: OwnedPartition) -> bool:
        """The partition's producer failed and was stopped: start another, once the group coordinator has
        confirmed that this worker still owns the partition (initialising the id fences whoever holds it)."""
        offset = owned.done_below()
        try:
            owns = offset is None or await self.consumer.fence(owned.tp, offset)
            if owns:
                await self.transactions.acquire([owned.tp])
        except (TransientError, KafkaRejected) as exc:
            logger.warning("taking over the transactional id of %s/%d again failed (retried): %s", owned.tp.topic,
                           owned.tp.partition, exc)
            return False
        if not owns:
            self.metrics.dlq_transactions.labels("fenced").inc()
            self.on_fenced(owned, Fenced(f"the group coordinator refused this worker's commit for "
                                         f"{owned.tp.topic}/{owned.tp.partition}: the group has rebalanced without it"))
        return owns

    def _pause(self, due: list[Letter], exc: KafkaRejected) -> None:
        refused = dlq_refusal(self.settings.dlq_topic, [letter.record for letter in due], exc, transactional=True)
        for route in {letter.failure.route or letter.record.topic for letter in due}:
            self._paused[route] = refused.reason
            self.pauses.pause(route, refused.reason, refused.message, refused.hint)

    def _resume(self, due: list[Letter]) -> None:
        for route in {letter.failure.route or letter.record.topic for letter in due} & set(self._paused):
            self.pauses.resume(route, reason=self._paused.pop(route))


Flush = Callable[[OwnedPartition], Awaitable[bool]]
