"""Resources of the code location, configured from the environment with `dg.EnvVar`."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import dagster as dg
from aiokafka import AIOKafkaConsumer, TopicPartition


class KafkaResource(dg.ConfigurableResource):
    """The Kafka cluster the batches come from.

    Large batches reach a run as an offset range only; `read_range` reads the
    records back from the partition, so run config stays small.
    """

    bootstrap_servers: str = dg.EnvVar("KAFKA_BOOTSTRAP_SERVERS")
    request_timeout_s: float = 30.0

    def read_range(self, topic: str, partition: int, start: int, end: int) -> list[dict[str, Any]]:
        """Records of `topic`/`partition` with offsets in [start, end], decoded as JSON."""
        return asyncio.run(self._read_range(topic, partition, start, end))

    async def _read_range(self, topic: str, partition: int, start: int, end: int) -> list[dict[str, Any]]:
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap_servers,
            enable_auto_commit=False,
            request_timeout_ms=int(self.request_timeout_s * 1000),
        )
        await consumer.start()
        try:
            tp = TopicPartition(topic, partition)
            consumer.assign([tp])
            consumer.seek(tp, start)
            records: list[dict[str, Any]] = []
            while True:
                batch = await asyncio.wait_for(
                    consumer.getmany(tp, timeout_ms=1000), timeout=self.request_timeout_s
                )
                for message in batch.get(tp, []):
                    if message.offset > end:
                        return records
                    records.append(_record(message.offset, message.timestamp, message.key, message.value))
                    if message.offset == end:
                        return records
        finally:
            await consumer.stop()


def _record(offset: int, timestamp_ms: int, key: bytes | None, value: bytes | None) -> dict[str, Any]:
    return {
        "offset": offset,
        "timestamp_ms": timestamp_ms,
        "key": key.decode("utf-8", "backslashreplace") if key is not None else None,
        "value": json.loads(value) if value is not None else None,
    }
