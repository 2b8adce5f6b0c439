"""Reading the dead-letter topic, and the replay protocol.

A replay sends each selected dead letter back to its origin (or another
topic) with its original key, value and headers plus `kafka-dagster.replay-of`,
paced, and once a group is acknowledged records each of its letters in the
compacted topic `<dlq>.replayed`: a later replay, from any machine, skips
them (a replay killed midway re-sends at most its last group).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator
from dataclasses import dataclass

import orjson
from aiokafka.structs import ConsumerRecord

from service.dlq import DeadLetter, Selection, identity, replay_headers, utc_iso
from service.kafka import Producer, ensure_topics, stream_topic
from service.kafka.security import KafkaSecurity
from service.outcomes import COMPACTED
from service.pacing import paced


async def dead_letters(bootstrap_servers: str, dlq_topic: str, selection: Selection, security: KafkaSecurity,
                       from_offset: int | None = None, follow: bool = False) -> AsyncGenerator[DeadLetter, None]:
    """The dead letters `selection` takes, as they stream in (with `follow`, until cancelled)."""
    async with contextlib.aclosing(stream_topic(bootstrap_servers, dlq_topic, from_offset, follow,
                                                security=security)) as messages:
        async for message in messages:
            letter = _letter(message)
            if selection.takes(letter):
                yield letter


@dataclass
class ReplayPlan:
    """The selected dead letters, and which of them an earlier replay sent (`<dlq>.replayed`)."""

    letters: list[DeadLetter]
    replayed: set[str]

    @property
    def fresh(self) -> list[DeadLetter]:
        return [letter for letter in self.letters if identity(letter) not in self.replayed]

    @property
    def skipped(self) -> list[DeadLetter]:
        return [letter for letter in self.letters if identity(letter) in self.replayed]


async def plan_replay(bootstrap_servers: str, dlq_topic: str, marker_topic: str, selection: Selection,
                      security: KafkaSecurity) -> ReplayPlan:
    """The selected dead letters of `dlq_topic`, and those `marker_topic` records as replayed."""
    async with contextlib.aclosing(dead_letters(bootstrap_servers, dlq_topic, selection, security)) as selected:
        letters = [letter async for letter in selected]
    replayed = set()
    async with contextlib.aclosing(stream_topic(bootstrap_servers, marker_topic, security=security)) as markers:
        async for marker in markers:
            if marker.key is not None and marker.value is not None:  # a null value would undo it (compaction)
                replayed.add(marker.key.decode("utf-8", "replace"))
    return ReplayPlan(letters, replayed)


async def replay(bootstrap_servers: str, marker_topic: str, letters: list[DeadLetter], target_topic: str | None,
                 rate: float, security: KafkaSecurity) -> int:
    """Send `letters` back at `rate` per second at most; once each group is acknowledged, record its
    letters as replayed in `marker_topic`. How many were sent."""
    await ensure_topics(bootstrap_servers, {marker_topic: 1}, security, configs=COMPACTED)
    producer = Producer(bootstrap_servers, security=security)
    sent = 0
    try:
        async for group in paced(letters, rate):
            await producer.acknowledged([
                await producer.enqueue(target_topic or letter.origin[0], letter.key, letter.value,
                                       replay_headers(letter))
                for letter in group])
            at = utc_iso()
            await producer.acknowledged([
                await producer.enqueue(marker_topic, identity(letter).encode(), orjson.dumps(
                    {"replayed_at": at, "to": target_topic or letter.origin[0], "dlq_offset": letter.dlq_offset}))
                for letter in group])
            sent += len(group)
    finally:
        await producer.stop()
    return sent


def _letter(message: ConsumerRecord[bytes, bytes]) -> DeadLetter:
    return DeadLetter.parse(message.key, message.value, message.timestamp, list(message.headers or ()),
                            message.offset)
