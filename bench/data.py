"""The data set: JSON orders of about 300 bytes, produced fast or at a steady rate."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping, Sequence

import orjson
from aiokafka import AIOKafkaProducer

from service.dev.demo import demo_order
from service.kafka import ensure_topics

SEED = 6
BATCH_BYTES = 1_048_576


def make_values(count: int, value_bytes: int = 300, seed: int = SEED) -> list[bytes]:
    """`count` demo orders padded with a `note` to about `value_bytes` bytes of JSON each."""
    rng = random.Random(seed)
    values = []
    for _ in range(count):
        order = demo_order(rng)
        order["note"] = ""
        pad = max(0, value_bytes - len(orjson.dumps(order)))
        order["note"] = "x" * pad
        values.append(orjson.dumps(order))
    return values


def _producer(bootstrap: str) -> AIOKafkaProducer:
    return AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=20, max_batch_size=BATCH_BYTES)


async def produce_fast(bootstrap: str, topic: str, values: Sequence[bytes], partitions: int,
                       on_sent: Callable[[int], None] | None = None) -> float:
    """Send `values` round-robin over `partitions` in large record batches; return msgs/s."""
    await ensure_topics(bootstrap, {topic: partitions})
    producer = _producer(bootstrap)
    await producer.start()
    started = time.perf_counter()
    try:
        for partition in range(partitions):
            await _send_partition(producer, topic, partition, values[partition::partitions], on_sent)
        await producer.flush()
    finally:
        await producer.stop()
    return len(values) / (time.perf_counter() - started)


async def _send_partition(producer: AIOKafkaProducer, topic: str, partition: int, values: Sequence[bytes],
                          on_sent: Callable[[int], None] | None) -> None:
    pending = []
    batch = producer.create_batch()
    for value in values:
        if batch.append(key=None, value=value, timestamp=None) is None:
            pending.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=None, value=value, timestamp=None)
    pending.append(await producer.send_batch(batch, topic, partition=partition))
    for future in pending:
        await future
        if on_sent is not None:
            on_sent(len(values) // len(pending))


async def produce_to(bootstrap: str, topic: str, per_partition: Mapping[int, Sequence[bytes]],
                     partitions: int) -> None:
    """Send each partition's values to that partition."""
    await ensure_topics(bootstrap, {topic: partitions})
    producer = _producer(bootstrap)
    await producer.start()
    try:
        for partition, values in per_partition.items():
            await _send_partition(producer, topic, partition, values, None)
    finally:
        await producer.stop()


async def produce_steady(bootstrap: str, topic: str, values: Sequence[bytes], rate: float,
                         partitions: int, tick_s: float = 0.01) -> None:
    """Send `values` at `rate` messages per second, round-robin over `partitions`, timestamped at send."""
    await ensure_topics(bootstrap, {topic: partitions})
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks=1, linger_ms=0)
    await producer.start()
    loop = asyncio.get_running_loop()
    started = loop.time()
    sent = 0
    try:
        while sent < len(values):
            due = min(len(values), int((loop.time() - started) * rate) + 1)
            for index in range(sent, due):
                await producer.send(topic, values[index], partition=index % partitions)
            sent = due
            await asyncio.sleep(tick_s)
        await producer.flush()
    finally:
        await producer.stop()
