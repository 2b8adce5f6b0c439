"""Routed topics that do not exist on the cluster: the route pauses, saying so, until they do.

Production clusters set `auto.create.topics.enable=false`, so a route whose
topic was never created (a typo, a producer not deployed yet) would leave the
worker waiting without a word. Instead, at start and then every
`interval_s`, the worker lists the cluster's topics once; each route whose
`topic` is missing pauses with reason `topic_missing` (one log line naming the
topic and the fix, `kafka_dagster_route_paused`, `/readyz`), and resumes once
the topic exists. The worker creates only its own topics: the DLQ and
`<dlq>.outcomes`. Routes on a `topic_pattern` wait for any match, silently.

A cluster lists only the topics the worker's principal may Describe, so a
topic it has no ACL for looks missing too: asked by name, the broker answers
TOPIC_AUTHORIZATION_FAILED instead, and the route pauses with reason
`kafka_authorization`, naming the ACL to grant, until it is granted. The
worker keeps watching after every topic was found: an ACL revoked later
hides its topic again (and aiokafka then drops its partitions silently).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from service.errors import KafkaNotAuthorized, TransientError
from service.routes import Route

logger = logging.getLogger(__name__)

TOPIC_MISSING = "topic_missing"
CHECK_INTERVAL_S = 10.0


@dataclass
class HiddenTopics:
    """Where a topic hidden by the ACLs goes: `refuse(topic, error)` while the broker refuses to describe it,
    `accept(topic)` once the worker sees it (`service.kafka.access`); `unauthorized(topics)` asks the broker
    which of `topics` it refuses to describe."""

    unauthorized: Callable[[set[str]], Awaitable[set[str]]]
    refuse: Callable[[str, KafkaNotAuthorized], None]
    accept: Callable[[str], Awaitable[None]]


def hidden_topic_error(topic: str) -> KafkaNotAuthorized:
    return KafkaNotAuthorized(
        f"topic {topic!r}: TOPIC_AUTHORIZATION_FAILED: the broker's ACLs deny the worker even Describe on it",
        f"grant Read on topic {topic} to the worker's principal (kafka-acls.sh --add --allow-principal "
        f"User:<the worker's user> --operation Read --topic {topic})", f"topic {topic}")


async def watch_topics(routes: Iterable[Route], existing: Callable[[], Awaitable[set[str]]],
                       pause: Callable[[str, str, str, str], None], resume: Callable[[str, str], None],
                       bootstrap_servers: str, interval_s: float = CHECK_INTERVAL_S,
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                       hidden: HiddenTopics | None = None) -> None:
    """Pause each route whose topic is missing until it exists; without `hidden`, return once every routed
    topic exists; with it, also pause (through `hidden`) the routes of a topic the ACLs hide, and keep
    watching: an ACL revoked later hides its topic again."""
    topics = {route.name: route.topic for route in routes if route.topic}
    waiting = dict(topics)
    refused: set[str] = set()
    while waiting or (hidden is not None and topics):
        try:
            found = await existing()
            lost = {t for t in topics.values() if t not in found}
            now_hidden = await hidden.unauthorized(lost) if hidden is not None and lost else set()
        except TransientError as exc:
            logger.info("checking that the routed topics exist waits for the broker: %s", exc)
        else:
            if hidden is not None:
                for topic in sorted(now_hidden):
                    hidden.refuse(topic, hidden_topic_error(topic))
                for topic in sorted(refused - now_hidden):
                    await hidden.accept(topic)
                refused = now_hidden
                waiting.update({name: topic for name, topic in topics.items()
                                if topic in lost and topic not in now_hidden})
            for name, topic in list(waiting.items()):
                if topic in found:
                    resume(name, TOPIC_MISSING)
                    del waiting[name]
                elif topic not in now_hidden:
                    pause(name, TOPIC_MISSING, f"topic {topic!r} does not exist on {bootstrap_servers}",
                          f"create it (kafka-topics.sh --create --topic {topic}), or correct the route's topic; "
                          "the worker creates only its DLQ topics")
        if waiting or hidden is not None:
            await sleep(interval_s)
