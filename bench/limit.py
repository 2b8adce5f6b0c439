"""Contender 1, the limit: a bare aiokafka consumer that decodes every value and nothing else."""

from __future__ import annotations

import asyncio
import time

import orjson
from aiokafka import AIOKafkaConsumer


async def _consume(bootstrap: str, topic: str, expected: int) -> float:
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=None,
                                auto_offset_reset="earliest", enable_auto_commit=False)
    await consumer.start()
    try:
        started = time.perf_counter()
        seen = 0
        while seen < expected:
            fetched = await consumer.getmany(timeout_ms=500)
            for messages in fetched.values():
                for message in messages:
                    orjson.loads(message.value)
                seen += len(messages)
        return expected / (time.perf_counter() - started)
    finally:
        await consumer.stop()


def run_limit(bootstrap: str, topic: str, expected: int) -> float:
    """Messages per second from the first fetch to the last of `expected` decoded values."""
    return asyncio.run(_consume(bootstrap, topic, expected))
