"""A route that Dagster refuses: paused and retried through the one loop (`service.retry.until_accepted`),
waiting its backoff, or less when its code location loads again."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from service.dagster import DagsterClient
from service.delivery.config import Tools
from service.errors import CODE_LOCATION_ERROR, KafkaDagsterError
from service.retry import EVERY_PAUSE, Refusal, Resumes, route_refusal, until_accepted
from service.routes import Route


class RouteRetry:
    """The launch's and the reconcile's pause-and-retry of a route Dagster refuses."""

    def __init__(self, tools: Tools, client: DagsterClient) -> None:
        self.pauses = tools.pauses
        self.retrying = tools.retrying
        self.location_probe_s = tools.settings.location_probe_s
        self.clock = tools.clock
        self.client = client

    async def until_accepted(self, route: Route, attempt: Callable[[], Awaitable[Any]],
                             refusal: Callable[[Exception], Refusal | None] = route_refusal,
                             resumes: Resumes = EVERY_PAUSE) -> Any:
        """`attempt()` until the route's Dagster accepts it: each refusal pauses the route and waits."""
        async def wait(refused: Refusal, delay_s: float) -> None:
            self.client.workspace.forget_job(route.job)
            if refused.reason == CODE_LOCATION_ERROR:
                await self._until_location_loads(route, delay_s)
            else:
                await self.pauses.wait(route.name, delay_s)

        return await until_accepted(attempt, pauses=self.pauses, route=route.name, resumes=resumes,
                                    refusal=refusal, backoff=self.retrying.route_backoff(), wait=wait)

    async def _until_location_loads(self, route: Route, delay_s: float) -> None:
        """Wait `delay_s`, or less: until the route's code location (any, if not pinned) loads again."""
        deadline = self.clock() + delay_s
        while (left := deadline - self.clock()) > 0:
            await self.pauses.wait(route.name, min(self.location_probe_s, left))
            if not self.pauses.is_paused(route.name):
                return  # another lane got through
            try:
                broken = await self.client.workspace.broken_locations(max_age_s=self.location_probe_s / 2)
            except KafkaDagsterError:
                continue  # Dagster itself unreachable: keep waiting
            if not (broken if route.location is None else route.location in broken):
                return
