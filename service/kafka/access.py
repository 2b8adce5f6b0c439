"""The broker refusing the worker itself: revoked credentials, a missing ACL. A failure of the system, never of
the data: the routes the refusal touches pause, say which credential or ACL is missing, and resume by
themselves once it is back.

Each refusal has a scope, which decides the routes it pauses:

    scope            what was refused                                  routes paused
    credentials      a fresh SASL/TLS login (`kafka_auth`)             every route
    group            the consumer group: join, heartbeat, offsets      every route
    topic <name>     reading a routed topic (fetch, offsets, commit)   the routes reading it
    topics           reading a topic the broker did not name           every route
    dlq              creating or describing the worker's own topics    every route

A refusal stays until its scope is accepted again: the credentials by the
next login probe that passes, a topic or the group once no refusal came for
`QUIET_S` while the consumer kept asking (aiokafka retries a refused
coordinator as soon as the error is taken from it, and a refused fetch as
soon as the next fetch goes out), the worker's topics once they are created.
A dead letter the DLQ refuses pauses its own route through the DLQ writer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from service.errors import KafkaRefused
from service.pauses import RoutePauses
from service.retry import Backoff
from service.routes import RouteTable

logger = logging.getLogger(__name__)

T = TypeVar("T")

CREDENTIALS = "credentials"
GROUP = "group"
TOPICS = "topics"  # a topic refusal that names no topic
DLQ_TOPICS = "dlq"

# How long a refusal of the group or a topic must stay away before its routes resume.
QUIET_S = 5.0


def topic_scope(topic: str) -> str:
    return f"topic {topic}"


def scope_of(exc: KafkaRefused) -> str:
    """The scope of a refusal the consumer met: its topic, the group, or every topic."""
    kind, _, name = exc.resource.partition(" ")
    if kind == "group":
        return GROUP
    if kind == "topic" and name and "," not in name:
        return topic_scope(name)
    return TOPICS


@dataclass
class Refused:
    error: KafkaRefused
    last_seen: float
    quiet_ends: bool  # False: only an explicit `accept` ends it (a topic the ACLs hide from the metadata)


class KafkaAccess:
    """The worker's refused Kafka access, by scope, and the route pauses each holds.

    :param pauses: the worker's route pauses (`kafka_dagster_route_paused`, `/readyz`)
    :param routes: the routes, to find those a topic refusal touches
    :param clock: monotonic time
    """

    def __init__(self, pauses: RoutePauses, routes: RouteTable,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.pauses = pauses
        self.routes = routes
        self.clock = clock
        self.refused: dict[str, Refused] = {}

    def routes_of(self, scope: str) -> list[str]:
        if scope.startswith("topic "):
            return [route.name for route in self.routes.for_topic(scope.removeprefix("topic "))]
        return list(self.routes)

    def refuse(self, scope: str, exc: KafkaRefused, quiet_ends: bool = True) -> None:
        """The broker refused `scope`: pause its routes with the refusal's reason, message and fix.

        A refused topic's partitions keep fetching: the next fetch is the retry.
        Without `quiet_ends`, only `accept` ends the refusal, not `accept_quiet`.
        """
        previous = self.refused.get(scope)
        if previous is None:
            logger.error("Kafka refused the worker (%s): %s; fix: %s", exc.reason, exc, exc.hint)
        self.refused[scope] = Refused(exc, self.clock(), quiet_ends and (previous is None or previous.quiet_ends))
        for route in self.routes_of(scope):
            self.pauses.pause(route, exc.reason, str(exc), exc.hint, stop_fetching=not scope.startswith("topic"),
                              held=True)

    def accept(self, scope: str) -> None:
        """`scope` works again: resume the routes its refusal paused (each only if still paused for it)."""
        refused = self.refused.pop(scope, None)
        if refused is None:
            return
        logger.info("Kafka accepts the worker again (%s): %s", scope, refused.error.resource)
        for route in self.routes_of(scope):
            holding = self._holding(route)
            if holding is None:
                self.pauses.resume(route, reason=refused.error.reason)
            elif self.pauses.is_paused(route) and self.pauses.paused[route].reason == refused.error.reason:
                # Another refusal still holds the route: its pause shows now.
                other_scope, other = holding
                self.pauses.pause(route, other.error.reason, str(other.error), other.error.hint,
                                  stop_fetching=not other_scope.startswith("topic"), held=True)

    def accept_quiet(self, scopes: tuple[str, ...] = (GROUP, TOPICS)) -> None:
        """Accept the group and topic scopes that no refusal came for in `QUIET_S`."""
        now = self.clock()
        for scope, refused in list(self.refused.items()):
            quiet = refused.quiet_ends and now - refused.last_seen >= QUIET_S
            if quiet and (scope in scopes or scope.startswith("topic ")):
                self.accept(scope)

    def _holding(self, route: str) -> tuple[str, Refused] | None:
        """A refusal that still pauses `route`, if any."""
        return next(((scope, r) for scope, r in self.refused.items() if route in self.routes_of(scope)), None)

    async def until_accepted(self, scope: str, attempt: Callable[[], Awaitable[T]], backoff: Backoff) -> T:
        """`attempt()` until the broker accepts it; each refusal pauses the scope's routes until then."""
        while True:
            try:
                result = await attempt()
            except KafkaRefused as exc:
                self.refuse(scope, exc)
                await asyncio.sleep(backoff.next_delay())
                continue
            self.accept(scope)
            return result
