"""The worker's plain (non-transactional) producer: acks=all, errors translated by `service.kafka.errors`."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from aiokafka import AIOKafkaProducer

from service.kafka.errors import map_kafka_errors
from service.kafka.security import PLAINTEXT, KafkaSecurity, aiokafka_kwargs


class Producer:
    """An idempotent-enough aiokafka producer (acks=all) with translated errors."""

    def __init__(self, bootstrap_servers: str, linger_ms: int = 5, security: KafkaSecurity = PLAINTEXT,
                 max_request_size: int = 1_048_576) -> None:
        """`max_request_size`: the largest record (key, value and headers) it will send."""
        self.bootstrap_servers = bootstrap_servers
        self.linger_ms = linger_ms
        self.security = security
        self.max_request_size = max_request_size
        self._producer: AIOKafkaProducer | None = None
        self._starting = asyncio.Lock()

    async def start(self) -> AIOKafkaProducer:
        """The started aiokafka producer (created on first use, inside the event loop, once however many
        senders ask at the same time)."""
        async with self._starting:
            if self._producer is None:
                self._producer = await self._started_producer()
        return self._producer

    async def _started_producer(self) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap_servers, acks="all",
                                    linger_ms=self.linger_ms,
                                    max_batch_size=max(1_048_576, self.max_request_size),
                                    max_request_size=self.max_request_size,
                                    **aiokafka_kwargs(self.security))
        try:
            with map_kafka_errors("connecting the producer"):
                await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes]] | None = None, timestamp_ms: int | None = None,
                   partition: int | None = None) -> None:
        """Send one record and wait for the broker's acknowledgement."""
        producer = await self.start()
        with map_kafka_errors(f"producing to {topic}", needs="Write"):
            await producer.send_and_wait(topic, value=value, key=key, headers=headers or None,
                                         timestamp_ms=timestamp_ms, partition=partition)

    async def send_batch(self, topic: str, records: Sequence[tuple[bytes | None, bytes | None]],
                         partition: int | None = None, headers: list[tuple[str, bytes]] | None = None) -> None:
        """Send many (key, value) records, each with `headers`, waiting for all acknowledgements at the end."""
        producer = await self.start()
        with map_kafka_errors(f"producing to {topic}", needs="Write"):
            futures = [await producer.send(topic, value=v, key=k, partition=partition, headers=headers or None)
                       for k, v in records]
            for future in futures:
                await future


    async def enqueue(self, topic: str, key: bytes | None, value: bytes | None,
                      headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[object]:
        """Hand one record to the producer without waiting for its acknowledgement: await the
        returned future with `acknowledged` (many at once), so sending never waits for one ack per record."""
        producer = await self.start()
        with map_kafka_errors(f"producing to {topic}", needs="Write"):
            return await producer.send(topic, value=value, key=key, headers=headers or None)

    @staticmethod
    async def acknowledged(acks: Sequence[asyncio.Future[object]]) -> None:
        """Wait until the broker has acknowledged every record of `acks` (from `enqueue`)."""
        with map_kafka_errors("producing", needs="Write"):
            for ack in acks:
                await ack
