"""Every retry of the worker, in one place: exponential backoff with jitter, the transient retry, and the
one pause-and-retry loop of a route.

- `Retrying.transient` retries a call for as long as it fails transiently
  (`service.errors.TransientError`): never a pause, never a dead letter.
- `until_accepted` is the route's loop: an attempt that is refused pauses
  the route (`service.pauses`) with the refusal's reason, waits a capped
  backoff and tries again; a success clears the pauses its `Resumes` scope
  names, and no other. The launch, the reconcile, the dead-letter writes
  and the start check (`service.check`) all go through it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from service.errors import DagsterUnavailable, KafkaRefused, RateLimited, RouteError, TransientError
from service.metrics import Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

# The first wait of a paused route; it doubles up to the route's cap (KAFKA_DAGSTER_ROUTE_RETRY_MAX_DELAY_S).
ROUTE_RETRY_BASE_S = 2.0


@dataclass
class Backoff:
    """Delays of base * 2**n, capped at `max_delay_s`, each scaled by a random 50-100%."""

    base_s: float = 0.25
    max_delay_s: float = 30.0
    attempts: int = 0

    def next_delay(self) -> float:
        delay = min(self.max_delay_s, self.base_s * 2 ** min(self.attempts, 32))
        self.attempts += 1
        return delay * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class Refusal:
    """Why a route cannot go on now: what its pause says (reason, message, the fix); or, not `pauses`, a
    failure the loop waits out without pausing the route (Dagster unreachable while the start check runs)."""

    reason: str
    message: str
    hint: str
    pauses: bool = True

    @classmethod
    def of(cls, exc: RouteError | KafkaRefused) -> Refusal:
        return cls(exc.reason, str(exc), exc.hint)


@dataclass(frozen=True)
class Resumes:
    """Which pauses of a route a success clears: every one (`reason` None), one reason, or only the pause
    the loop itself set (`own`; nothing if it set none)."""

    reason: str | None = None
    own: bool = False


EVERY_PAUSE = Resumes()  # a launch or reconcile got through: the route works, whatever it was paused for
OWN_PAUSE = Resumes(own=True)


class Pauses(Protocol):
    """What the loop pauses and resumes (`service.pauses.RoutePauses`)."""

    def pause(self, route: str, reason: str, message: str, hint: str) -> None: ...

    def resume(self, route: str, reason: str | None = None) -> None: ...

    async def wait(self, route: str, delay_s: float) -> None: ...


async def until_accepted(attempt: Callable[[], Awaitable[T]], *, pauses: Pauses, route: str, resumes: Resumes,
                         refusal: Callable[[Exception], Refusal | None], backoff: Backoff,
                         wait: Callable[[Refusal, float], Awaitable[None]] | None = None) -> T:
    """`attempt()` until it is accepted: each failure `refusal` names pauses `route` and waits (`wait`, by
    default until the route resumes or the backoff's delay passes); a failure it does not name is raised."""
    paused_for: str | None = None
    while True:
        try:
            result = await attempt()
        except Exception as exc:
            refused = refusal(exc)
            if refused is None:
                raise
            if refused.pauses:
                pauses.pause(route, refused.reason, refused.message, refused.hint)
                paused_for = refused.reason
            delay_s = backoff.next_delay()
            await (wait(refused, delay_s) if wait is not None else pauses.wait(route, delay_s))
            continue
        if resumes.own:
            if paused_for is not None:
                pauses.resume(route, reason=paused_for)
        else:
            pauses.resume(route, reason=resumes.reason)
        return result


def route_refusal(exc: Exception) -> Refusal | None:
    """A route fault, or the broker refusing the worker's access (an ACL, credentials), pauses the route;
    anything else is raised."""
    return Refusal.of(exc) if isinstance(exc, (RouteError, KafkaRefused)) else None


class Retrying:
    """The worker's retries of transient failures, with its caps (`KAFKA_DAGSTER_RETRY_MAX_DELAY_S`, and
    `KAFKA_DAGSTER_ROUTE_RETRY_MAX_DELAY_S` for a paused route)."""

    def __init__(self, metrics: Metrics, retry_max_delay_s: float, route_retry_max_delay_s: float,
                 route_retry_base_s: float = ROUTE_RETRY_BASE_S,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.metrics = metrics
        self.retry_max_delay_s = retry_max_delay_s
        self.route_retry_max_delay_s = route_retry_max_delay_s
        self.route_retry_base_s = route_retry_base_s
        self.sleep = sleep

    def route_backoff(self) -> Backoff:
        """The backoff of a paused route's retries."""
        return Backoff(base_s=self.route_retry_base_s, max_delay_s=self.route_retry_max_delay_s)

    async def transient(self, call: Callable[[], Awaitable[Any]], what: str,
                        on_failure: Callable[[TransientError], Awaitable[None]] | None = None) -> Any:
        """`call()`, retried with backoff for as long as it fails transiently; `on_failure` sees each
        failure first and may raise to stop retrying."""
        backoff = Backoff(max_delay_s=self.retry_max_delay_s)
        attempts = 0
        while True:
            attempts += 1
            try:
                return await call()
            except TransientError as exc:
                if on_failure is not None:
                    await on_failure(exc)
                if isinstance(exc, DagsterUnavailable) and not isinstance(exc, RateLimited):
                    self.metrics.dagster_up.set(0)
                delay = max(backoff.next_delay(), exc.retry_after_s or 0.0)
                logger.warning("%s failed (%s), attempt %d; retrying in %.1fs", what, exc, attempts, delay)
                await self.sleep(delay)
