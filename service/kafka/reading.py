"""Readers without a consumer group: an offset range of one partition, a whole topic, or a topic as a stream.

Every reader here reads committed records only (`READ_COMMITTED`), and has
its errors translated by `service.kafka.errors`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from service.errors import BrokerUnavailable
from service.kafka.admin import topic_partitions
from service.kafka.errors import kafka_error, map_kafka_errors
from service.kafka.security import PLAINTEXT, KafkaSecurity, aiokafka_kwargs
from service.records import Record

# Every reader reads committed records only: the DLQ and its companion topics are written in transactions
# (`service.kafka.transactions`); an aborted dead letter is never seen, and an open transaction's records not yet.
READ_COMMITTED = "read_committed"


async def read_range(bootstrap_servers: str, topic: str, partition: int, start: int, end: int,
                     timeout_s: float = 30.0, security: KafkaSecurity = PLAINTEXT) -> list[Record]:
    """The records of one partition with offsets in [start, end] still in the log, read without a consumer group.

    Records below the log start are gone (retention) and are not waited for;
    the read ends once the position passes `end`, so gaps (compaction,
    transaction markers) do not hold it up either.
    """
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=READ_COMMITTED,
                                **aiokafka_kwargs(security))
    records: list[Record] = []
    try:
        await consumer.start()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        start = max(start, (await consumer.beginning_offsets([tp]))[tp])
        if start > end:
            return []
        consumer.seek(tp, start)
        deadline = asyncio.get_running_loop().time() + timeout_s
        while await consumer.position(tp) <= end:
            if asyncio.get_running_loop().time() > deadline:
                raise BrokerUnavailable(f"reading {topic}/{partition} offsets {start}-{end} timed out")
            fetched = await consumer.getmany(tp, timeout_ms=500)
            records.extend(Record(topic, partition, message.offset, message.timestamp, message.key, message.value,
                                  list(message.headers or ()))
                           for message in fetched.get(tp, []) if message.offset <= end)
    except KafkaError as exc:
        raise kafka_error(f"reading {topic}/{partition}", exc) from exc
    finally:
        await consumer.stop()
    return records


async def read_topic(bootstrap_servers: str, topic: str, timeout_s: float = 30.0,
                     security: KafkaSecurity = PLAINTEXT) -> list[tuple[int, int, object]]:
    """Every record of `topic` present now, as (partition, offset, message).

    End offsets are treated as a lower bound and reading stops at the first
    empty fetch after them: some Kafka-compatible brokers (Tansu) report the
    last batch's base offset + 1 as the end offset.
    """
    tps = await _topic_partitions(bootstrap_servers, topic, security)
    if not tps:
        return []
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=READ_COMMITTED,
                                **aiokafka_kwargs(security))
    found: list[tuple[int, int, object]] = []
    try:
        await consumer.start()
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            if loop.time() > deadline:
                raise BrokerUnavailable(f"reading {topic} timed out")
            fetched = await consumer.getmany(*tps, timeout_ms=300)
            for tp, messages in fetched.items():
                for message in messages:
                    found.append((tp.partition, message.offset, message))
            # The position, not the last record's offset + 1: transaction markers take offsets too.
            if not any(fetched.values()) and all([await consumer.position(tp) >= ends[tp] for tp in tps]):
                return found
    except KafkaError as exc:
        raise kafka_error(f"reading {topic}", exc) from exc
    finally:
        await consumer.stop()


async def stream_topic(bootstrap_servers: str, topic: str, from_offset: int | None = None, follow: bool = False,
                       stall_timeout_s: float = 30.0, security: KafkaSecurity = PLAINTEXT,
                       ) -> AsyncGenerator[ConsumerRecord[bytes, bytes]]:
    """The records of every partition of `topic` (from `from_offset` in each, else its beginning), as they
    are fetched, without a consumer group.

    Without `follow` it ends at the end of the topic as it was when it started
    (an empty fetch at or past the end offsets, which Tansu reports too low);
    with `follow` it waits for new records until cancelled. Nothing is kept in
    memory: a topic of any size streams. A read that makes no progress for
    `stall_timeout_s` while records remain raises `BrokerUnavailable`.
    """
    tps = await _topic_partitions(bootstrap_servers, topic, security)
    if not tps:
        return
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False,
                                auto_offset_reset="earliest", isolation_level=READ_COMMITTED,
                                **aiokafka_kwargs(security))
    try:
        with map_kafka_errors(f"reading {topic}"):
            await consumer.start()
            consumer.assign(tps)
            await _seek(consumer, tps, from_offset)
            ends = await consumer.end_offsets(tps)
        loop = asyncio.get_running_loop()
        progress_at = loop.time()
        while True:
            with map_kafka_errors(f"reading {topic}"):
                fetched = await consumer.getmany(*tps, timeout_ms=300, max_records=500)
            for messages in fetched.values():
                for message in messages:
                    yield message
            if any(fetched.values()):
                progress_at = loop.time()
                continue
            if follow:
                continue
            with map_kafka_errors(f"reading {topic}"):
                positions = [await consumer.position(tp) for tp in tps]
            if all(position >= ends[tp] for position, tp in zip(positions, tps, strict=True)):
                return
            if loop.time() - progress_at > stall_timeout_s:
                raise BrokerUnavailable(f"reading {topic}: no record for {stall_timeout_s:.0f}s before its end")
    finally:
        await consumer.stop()


async def _topic_partitions(bootstrap_servers: str, topic: str, security: KafkaSecurity) -> list[TopicPartition]:
    partitions = await topic_partitions(bootstrap_servers, [topic], security)
    return [TopicPartition(topic, p) for p in partitions.get(topic, [])]


async def _seek(consumer: AIOKafkaConsumer, tps: list[TopicPartition], from_offset: int | None) -> None:
    await consumer.seek_to_beginning(*tps)
    if from_offset is not None:
        beginnings = await consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(from_offset, beginnings[tp]))
