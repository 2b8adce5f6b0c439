"""Paused routes: a route that cannot launch waits, says why, and resumes by itself.

A route pauses when Dagster refuses what the route asks for (a token refused,
a job missing after a deploy, a config schema that changed, a wrong URL) or a
dead letter cannot be written. Its records stay in Kafka, uncommitted; its
partitions stop fetching; each of its lanes retries its head batch with a
capped backoff, and wakes at once when any lane of the route got through. A
route paused for its code location also looks every few seconds whether the
workspace shows the location loaded again, and retries at once when it does. One
log line per change of state names the route, the reason and the fix;
`kafka_dagster_route_paused{route,reason}` is 1 and `/readyz` says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from service.metrics import Metrics

logger = logging.getLogger(__name__)


@dataclass
class Pause:
    reason: str
    message: str
    hint: str
    since: float = field(default_factory=time.monotonic)
    held: bool = False  # only a resume naming its reason ends it (its owner knows when it ends)

    def describe(self) -> dict[str, object]:
        return {"reason": self.reason, "error": self.message, "fix": self.hint,
                "paused_for_s": round(time.monotonic() - self.since, 1)}


class RoutePauses:
    """Which routes are paused, and why; `on_change(route, paused)` follows each change."""

    def __init__(self, metrics: Metrics, on_change: Callable[[str, bool], None]) -> None:
        self.metrics = metrics
        self.on_change = on_change
        self.paused: dict[str, Pause] = {}
        self._resumed: dict[str, asyncio.Event] = {}

    def pause(self, route: str, reason: str, message: str, hint: str, stop_fetching: bool = True,
              held: bool = False) -> None:
        """Pause `route` (its partitions stop fetching, unless not `stop_fetching`: a refused fetch is itself
        the retry that tells when the refusal ends). A `held` pause ends only by a resume naming its reason:
        a launch that gets through does not prove the broker accepts the worker again."""
        current = self.paused.get(route)
        if current is not None and current.reason == reason:
            current.message = message
            current.held = current.held or held
            return
        if current is not None:
            self._gauge(route, current.reason, 0)
        self.paused[route] = Pause(reason, message, hint, held=held)
        self._gauge(route, reason, 1)
        self._event(route).clear()
        fix = "" if hint in message else f"; fix: {hint}"
        logger.error("route %s paused (%s): %s%s. Its records stay in Kafka, uncommitted, and are retried "
                     "until this is fixed", route, reason, message, fix)
        if current is None and stop_fetching:
            self.on_change(route, True)

    def resume(self, route: str, reason: str | None = None) -> None:
        """The route works again (only if it was paused for `reason`, when given)."""
        pause = self.paused.get(route)
        if pause is None or (pause.reason != reason if reason is not None else pause.held):
            return
        del self.paused[route]
        self._gauge(route, pause.reason, 0)
        self._event(route).set()
        logger.info("route %s resumed after %.0fs paused (%s)", route, time.monotonic() - pause.since,
                    pause.reason)
        self.on_change(route, False)

    def is_paused(self, route: str) -> bool:
        return route in self.paused

    async def wait(self, route: str, delay_s: float) -> None:
        """Sleep `delay_s`, or less if the route resumes meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event(route).wait(), delay_s)

    def status(self) -> dict[str, dict[str, object]]:
        return {route: pause.describe() for route, pause in sorted(self.paused.items())}

    def _event(self, route: str) -> asyncio.Event:
        event = self._resumed.get(route)
        if event is None:
            event = self._resumed[route] = asyncio.Event()
        return event

    def _gauge(self, route: str, reason: str, value: int) -> None:
        self.metrics.route_paused.labels(route, reason).set(value)
