"""Kafka transactions at the edge: one transactional producer per owned partition.

The dead letters of a partition and the offset commit that covers them are
written in one transaction, so after any crash either both are there or
neither is: each dead letter is in the DLQ exactly once.

Ownership of a transactional id is what fences here. aiokafka's transactional
offset commit (TxnOffsetCommit v0) carries no group generation, so the broker
cannot refuse a commit from a worker the group moved on without; it refuses a
producer whose transactional id was initialised again by someone else
(`ProducerFenced`). So the id is stable per consumer group and partition,
`transactional_id(prefix, tp)`, and a worker that is given a partition
initialises that id (`Transactions.acquire`) before it reads the partition's
committed offset: a zombie's open transaction is aborted then (or has
completed, and its offset is the one read), and from then on every
transaction of the zombie's producer is refused. The prefix is the consumer
group unless `KAFKA_DAGSTER_TRANSACTIONAL_ID_PREFIX` says otherwise; the ACL it
needs is Write and Describe on TransactionalId with that prefix (prefixed).

Errors: `ProducerFenced` becomes `Fenced`; the rest are mapped as everywhere
(`service.kafka.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import (
    KafkaError,
    ProducerFenced,
    TopicAuthorizationFailedError,
    TransactionalIdAuthorizationFailed,
)

from service.errors import BrokerUnavailable, ConfigurationError, Fenced, KafkaNotAuthorized, KafkaRejected
from service.kafka.errors import kafka_error
from service.kafka.security import PLAINTEXT, KafkaSecurity, aiokafka_kwargs
from service.records import TP

logger = logging.getLogger(__name__)

# The broker aborts a transaction its producer left open this long (a worker killed mid-transaction whose
# partitions nobody initialises again): DLQ readers, which read committed records, wait for it meanwhile.
TRANSACTION_TIMEOUT_MS = 30_000
START_TIMEOUT_S = 20.0
MODES = ("auto", "on", "off")


def transactional_id(prefix: str, tp: TP) -> str:
    """The transactional id of a partition's dead letters: stable per group (prefix) and partition."""
    return f"{prefix}:{tp.topic}:{tp.partition}"


@dataclass(frozen=True)
class Outgoing:
    """A record to write inside a transaction."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    timestamp_ms: int | None = None


def authorization_hint(prefix: str) -> str:
    return (f"grant the worker's principal Write and Describe on TransactionalId with the prefix {prefix!r} "
            f"(kafka-acls --add --allow-principal User:... --operation Write --operation Describe "
            f"--transactional-id {prefix!r} --resource-pattern-type prefixed), or set "
            f"KAFKA_DAGSTER_TRANSACTIONS=off")


class Transactions:
    """The transactional producers of the partitions this worker owns, one per partition.

    :param bootstrap_servers: the Kafka bootstrap servers
    :param group_id: the consumer group whose offsets the transactions commit
    :param prefix: the transactional ids' prefix (`transactional_id`)
    :param security: Kafka TLS/SASL settings
    :param max_request_size: the largest record (a dead letter with its headers) a producer sends
    """

    def __init__(self, bootstrap_servers: str, group_id: str, prefix: str, security: KafkaSecurity = PLAINTEXT,
                 max_request_size: int = 1_048_576) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.group_id = group_id
        self.prefix = prefix
        self.security = security
        self.max_request_size = max_request_size
        self._producers: dict[TP, AIOKafkaProducer] = {}
        self._locks: dict[TP, asyncio.Lock] = {}

    def __contains__(self, tp: TP) -> bool:
        return tp in self._producers

    async def acquire(self, tps: Iterable[TP]) -> None:
        """Initialise the transactional id of each partition not held yet: this fences any earlier holder
        (a zombie) and ends its open transaction. Call before reading the partitions' committed offsets."""
        new = [tp for tp in set(tps) if tp not in self._producers]
        started = sum(await asyncio.gather(*(self._acquire(tp) for tp in new)))
        if started:
            logger.info("initialised %d transactional ids (%s, ...)", started, transactional_id(self.prefix, new[0]))

    async def _acquire(self, tp: TP) -> bool:
        async with self._lock(tp):
            if tp in self._producers:
                return False  # a seek running beside this one took it over
            self._producers[tp] = await self._start(transactional_id(self.prefix, tp))
            return True

    async def release(self, tps: Iterable[TP]) -> None:
        """Stop the producers of partitions no longer owned here."""
        await asyncio.gather(*(self._release(tp) for tp in set(tps)))

    async def _release(self, tp: TP) -> None:
        producer = self._producers.pop(tp, None)
        self._locks.pop(tp, None)
        if producer is not None:
            with contextlib.suppress(Exception):
                await producer.stop()

    async def stop(self) -> None:
        await self.release(list(self._producers))

    async def write(self, tp: TP, records: Sequence[Outgoing], offset: int | None = None) -> None:
        """Write `records` and, with `offset`, commit the group's offset of `tp` to it, in one transaction.

        Raises `Fenced` when a newer holder of the partition's transactional id exists, `BrokerUnavailable` or
        `KafkaRejected` otherwise (the transaction aborted: nothing of it is visible, so it can be written
        again, once `acquire` started another producer: a failed one is stopped, never reused).
        """
        async with self._lock(tp):
            producer = self._producers.get(tp)
            if producer is None:
                raise Fenced(f"{tp.topic}/{tp.partition}: no transactional producer (not owned here)")
            try:
                await self._transaction(producer, tp, records, offset)
            except ProducerFenced as exc:
                await self._forget(tp, producer)
                raise Fenced(f"{tp.topic}/{tp.partition}: another worker initialised its transactional id "
                             f"{transactional_id(self.prefix, tp)!r} (ProducerFenced)") from exc
            except TransactionalIdAuthorizationFailed as exc:
                await self._forget(tp, producer)
                txn_id = transactional_id(self.prefix, tp)
                raise KafkaNotAuthorized(f"writing dead letters of {tp.topic}/{tp.partition}: "
                                         f"TRANSACTIONAL_ID_AUTHORIZATION_FAILED (transactional id {txn_id!r})",
                                         authorization_hint(self.prefix), f"transactional-id {txn_id}") from exc
            except KafkaError as exc:
                # Never reused: a record the broker refused leaves its sequence numbers behind the broker's
                # (the next send fails OutOfOrderSequenceNumber). `acquire` starts another, once ownership is proven.
                await self._forget(tp, producer)
                needs = "Write" if isinstance(exc, TopicAuthorizationFailedError) else None  # on the DLQ topic
                raise kafka_error(f"writing dead letters of {tp.topic}/{tp.partition} in a transaction", exc,
                                  needs) from exc

    async def _transaction(self, producer: AIOKafkaProducer, tp: TP, records: Sequence[Outgoing],
                           offset: int | None) -> None:
        await producer.begin_transaction()
        futures: list[asyncio.Future[object]] = []
        try:
            for r in records:
                futures.append(await producer.send(r.topic, value=r.value, key=r.key, headers=r.headers or None,
                                                   timestamp_ms=r.timestamp_ms))
            # Every record acknowledged before the commit: aiokafka commits a transaction whose records the
            # broker refused (e.g. over max.message.bytes: the record's future fails, the transaction does not).
            for future in futures:
                await future
            if offset is not None:
                await producer.send_offsets_to_transaction({TopicPartition(tp.topic, tp.partition): offset},
                                                           self.group_id)
            await producer.commit_transaction()
        except BaseException:
            for future in futures:  # their failure is the transaction's, raised below
                future.add_done_callback(_retrieve)
            if not producer._txn_manager.is_fatal_error():
                with contextlib.suppress(Exception):
                    await producer.abort_transaction()
            raise

    async def _forget(self, tp: TP, producer: AIOKafkaProducer) -> None:
        if self._producers.get(tp) is producer:
            del self._producers[tp]
        _retrieve(producer._txn_manager.wait_for_transaction_end())  # its failure is the one raised
        with contextlib.suppress(Exception):
            await producer.stop()

    def _lock(self, tp: TP) -> asyncio.Lock:
        return self._locks.setdefault(tp, asyncio.Lock())

    async def _start(self, txn_id: str) -> AIOKafkaProducer:
        """A started producer for `txn_id`: starting sends InitProducerId, which bumps the id's epoch."""
        return await start_transactional(self.bootstrap_servers, txn_id, self.security, self.max_request_size)


def _retrieve(future: asyncio.Future[object]) -> None:
    if future.done() and not future.cancelled():
        future.exception()


async def start_transactional(bootstrap_servers: str, txn_id: str, security: KafkaSecurity = PLAINTEXT,
                              max_request_size: int = 1_048_576) -> AIOKafkaProducer:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap_servers, transactional_id=txn_id,
                                transaction_timeout_ms=TRANSACTION_TIMEOUT_MS, linger_ms=0,
                                max_batch_size=max(1_048_576, max_request_size),
                                max_request_size=max_request_size, **aiokafka_kwargs(security))
    try:
        await asyncio.wait_for(producer.start(), START_TIMEOUT_S)
    except TimeoutError as exc:
        await producer.stop()
        raise BrokerUnavailable(f"initialising transactional id {txn_id!r}: no answer in "
                                f"{START_TIMEOUT_S:.0f}s") from exc
    except KafkaError as exc:
        await producer.stop()
        raise kafka_error(f"initialising transactional id {txn_id!r}", exc) from exc
    except BaseException:
        await producer.stop()
        raise
    return producer


async def use_transactions(mode: str, bootstrap_servers: str, prefix: str,
                           security: KafkaSecurity = PLAINTEXT, retry_s: float = 2.0) -> bool:
    """Whether the worker writes dead letters in transactions: `mode` off: no; on: yes, or
    `ConfigurationError` if the cluster cannot; auto: if the cluster serves them (asked until it answers)."""
    if mode == "off":
        return False
    while True:
        try:
            served = await broker_has_transactions(bootstrap_servers, prefix, security)
            break
        except BrokerUnavailable as exc:
            logger.warning("asking the Kafka cluster whether it serves transactions: %s; retrying", exc)
            await asyncio.sleep(retry_s)
    if mode == "on" and not served:
        raise ConfigurationError("invalid setting KAFKA_DAGSTER_TRANSACTIONS: 'on', but the Kafka cluster does "
                                 "not serve transactions (set it to 'auto' or 'off')")
    return served


def how_dead_letters_are_written(transactional: bool) -> str:
    return "dead letters are written " + ("in one transaction with the offset commit that covers them (exactly "
                                          "once)" if transactional else "without transactions (at least once)")


async def broker_has_transactions(bootstrap_servers: str, prefix: str, security: KafkaSecurity = PLAINTEXT) -> bool:
    """Whether the cluster serves transactions: initialise a probe id (`<prefix>:probe`).

    False when the broker refuses InitProducerId as unsupported (Tansu answers UNKNOWN);
    `ConfigurationError` when the transactional id is not authorised; transient failures raise.
    """
    txn_id = f"{prefix}:probe"
    sender = logging.getLogger("aiokafka.producer.sender")  # it logs the refusal as an error: expected here
    level = sender.level
    sender.setLevel(logging.CRITICAL)
    try:
        producer = await start_transactional(bootstrap_servers, txn_id, security)
    except KafkaRejected as exc:
        if isinstance(exc.__cause__, TransactionalIdAuthorizationFailed):
            raise ConfigurationError(f"Kafka refused the transactional id {txn_id!r}: "
                                     f"{authorization_hint(prefix)}") from None
        logger.warning("the Kafka cluster does not serve transactions (%s): dead letters are written without "
                       "them (at least once)", exc)
        return False
    finally:
        sender.setLevel(level)
    await producer.stop()
    return True
