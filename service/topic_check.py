"""Routed topics that do not exist on the cluster: the route pauses, saying so, until they do.

Production clusters set `auto.create.topics.enable=false`, so a route whose
topic was never created (a typo, a producer not deployed yet) would leave the
worker waiting without a word. Instead, at start and then every
`interval_s`, the worker lists the cluster's topics once; each route whose
`topic` is missing pauses with reason `topic_missing` (one log line naming the
topic and the fix, `kafka_dagster_route_paused`, `/readyz`), and resumes once
the topic exists. The worker creates only its own topics: the DLQ and
`<dlq>.outcomes`. Routes on a `topic_pattern` wait for any match, silently.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

from service.errors import TransientError
from service.routes import Route

logger = logging.getLogger(__name__)

TOPIC_MISSING = "topic_missing"
CHECK_INTERVAL_S = 10.0


async def watch_topics(routes: Iterable[Route], existing: Callable[[], Awaitable[set[str]]],
                       pause: Callable[[str, str, str, str], None], resume: Callable[[str, str], None],
                       bootstrap_servers: str, interval_s: float = CHECK_INTERVAL_S,
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """Pause each route whose topic is missing until it exists; return once every routed topic exists."""
    waiting = {route.name: route.topic for route in routes if route.topic}
    while waiting:
        try:
            found = await existing()
        except TransientError as exc:
            logger.info("checking that the routed topics exist waits for the broker: %s", exc)
        else:
            for name, topic in list(waiting.items()):
                if topic in found:
                    resume(name, TOPIC_MISSING)
                    del waiting[name]
                else:
                    pause(name, TOPIC_MISSING, f"topic {topic!r} does not exist on {bootstrap_servers}",
                          f"create it (kafka-topics.sh --create --topic {topic}), or correct the route's topic; "
                          "the worker creates only its DLQ topics")
        if waiting:
            await sleep(interval_s)
