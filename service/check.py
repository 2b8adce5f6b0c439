"""`kafka-dagster check`: each route against the live Dagster, before a batch finds out.

For each route, over GraphQL:
1. the job, or every asset of the selection, exists in a loaded code location;
2. an op job has the route's `batch_op`, and accepts the contract's run config
   on it (`isPipelineConfigValid` with a sample batch, inline and as an offset
   range); an asset selection has at least one asset whose config takes the
   batch, and accepts it too;
3. a route with `partition_key` targets something partitioned, and one with
   `dynamic_partitions` the dynamic partitions definition of that name.

The command prints one line per route and exits 1 if any is wrong; the worker
runs the same checks at start (`watch_routes`) and pauses a failing route with
the reason until a later check passes (a route that dead-letters refused
launches is only logged: its launches say what is wrong, as it asks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from service.batching import Batch
from service.dagster import DagsterClient, Target
from service.errors import ConfigurationError, RouteError, TransientError
from service.records import Record
from service.retry import OWN_PAUSE, ROUTE_RETRY_BASE_S, Backoff, Pauses, Refusal, until_accepted
from service.routes import Route, load_routes
from service.run_request import run_config
from service.settings import load_settings

logger = logging.getLogger(__name__)

CHECK_FAILED = "check_failed"
SAMPLE_VALUE = b'{"kafka-dagster": "check"}'


@dataclass(frozen=True)
class Verdict:
    """One route's check: ok, or what is wrong (`problem`), the pause reason, and how to fix it."""

    route: str
    ok: bool
    detail: str
    reason: str = CHECK_FAILED
    hint: str = ""

    def line(self) -> str:
        if self.ok:
            return f"ok    route {self.route!r}: {self.detail}"
        return f"FAIL  route {self.route!r}: {self.detail}" + (f"; fix: {self.hint}" if self.hint else "")


def sample_batch(route: Route) -> Batch:
    """A one-record batch of the route's topic, as the worker would launch it."""
    topic = route.topic or "sample-topic"
    record = Record(topic, 0, 0, 0, None, SAMPLE_VALUE)
    return Batch(topic, 0, 0.0, [record], size=record.size, route=route.name)


async def check_route(route: Route, client: DagsterClient) -> Verdict:
    """The route's verdict; transient failures (Dagster unreachable) propagate, to be retried."""
    try:
        target = await client.workspace.resolve_target(route.job, route.assets, route.location, route.repository,
                                                       route.batch_op)
        problem = await _target_problem(route, target, client)
        if problem is not None:
            return Verdict(route.name, False, *problem)
        batch = sample_batch(route)
        for inline in (True, False):
            errors = await client.workspace.config_errors(target, run_config(route, batch, inline, target.batch_ops))
            if errors:
                mode = "inline" if inline else "as an offset range"
                return Verdict(route.name, False, f"{route.target} does not accept the batch config ({mode}): "
                               f"{errors[0]}", "run_config_invalid",
                               "give the batch op (or asset) a config of the contract's fields, e.g. "
                               "dagster_project.toolkit.KafkaBatch")
        problem = await _partitions_problem(route, target)
    except RouteError as exc:
        return Verdict(route.name, False, str(exc), exc.reason, exc.hint)
    if problem is not None:
        return Verdict(route.name, False, *problem)
    where = f"{target.selector.location}/{target.selector.repository}"
    return Verdict(route.name, True, f"{route.target} in {where} takes the batch"
                   + (f" on {', '.join(target.batch_ops)}" if target.batch_ops else ""))


async def _target_problem(route: Route, target: Target, client: DagsterClient) -> tuple[str, str, str] | None:
    if route.assets:
        if not target.batch_ops:
            return (f"none of the assets {', '.join(route.assets)} takes the batch config", "run_config_invalid",
                    "give one of them `config: KafkaBatch` (dagster_project.toolkit)")
        return None
    ops = await client.workspace.job_ops(target)
    if route.batch_op not in ops:
        return (f"batch_op {route.batch_op!r} is not an op of job {route.job} (its ops: {', '.join(sorted(ops))})",
                "run_config_invalid", "set the route's batch_op to the op that takes the batch config")
    return None


async def _partitions_problem(route: Route, target: Target) -> tuple[str, str, str] | None:
    if route.partition_key is None:
        return None
    hint = "fix the route's dynamic_partitions or partition_key, or the assets' partitions_def"
    found = target.partitions
    if found is None:
        return f"{route.target} has no partitions definition, but the route has a partition_key", \
            "partitions_not_found", hint
    if route.dynamic_partitions is not None and (found.type != "DYNAMIC" or found.name != route.dynamic_partitions):
        what = f"dynamic partitions {found.name!r}" if found.type == "DYNAMIC" else f"{found.type.lower()} partitions"
        return (f"unknown partitions definition: {route.target} has {what}, not dynamic partitions "
                f"{route.dynamic_partitions!r}", "partitions_not_found", hint)
    if route.dynamic_partitions is None and found.type in ("DYNAMIC", "MIXED", "MULTIPARTITIONED"):
        return (f"{route.target} has {found.type.lower()} partitions: name a dynamic definition with "
                "dynamic_partitions (static, time-window or dynamic partitions of one definition are supported)",
                "partitions_not_found", hint)
    return None


async def check_routes(routes: Iterable[Route], client: DagsterClient) -> list[Verdict]:
    """Every route's verdict, in order (checked concurrently)."""
    return list(await asyncio.gather(*(check_route(route, client) for route in routes)))


async def watch_routes(routes: Iterable[Route], client: DagsterClient, pauses: Pauses, max_delay_s: float,
                       sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
    """The worker's start check: pause each failing route (reason, message, fix) and check it again with a
    capped backoff until it passes; Dagster being unreachable only delays the check."""
    await asyncio.gather(*(_watch(route, client, pauses, max_delay_s, sleep) for route in routes))


class _CheckFailed(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.detail)
        self.verdict = verdict


async def _watch(route: Route, client: DagsterClient, pauses: Pauses, max_delay_s: float,
                 sleep: Callable[[float], Awaitable[None]]) -> None:
    async def attempt() -> Verdict:
        verdict = await check_route(route, client)
        if verdict.ok or route.dead_letters_rejected_launches:
            return verdict
        raise _CheckFailed(verdict)

    def refusal(exc: Exception) -> Refusal | None:
        if isinstance(exc, _CheckFailed):
            return Refusal(exc.verdict.reason, exc.verdict.detail, exc.verdict.hint)
        if isinstance(exc, TransientError):
            return Refusal("dagster_unreachable", str(exc), "", pauses=False)
        return None

    async def wait(refused: Refusal, delay_s: float) -> None:
        if refused.pauses:
            client.workspace.forget_job(route.job)
        else:
            logger.info("checking route %r waits for Dagster: %s", route.name, refused.message)
        await sleep(delay_s)

    verdict = await until_accepted(attempt, pauses=pauses, route=route.name, resumes=OWN_PAUSE, refusal=refusal,
                                   backoff=Backoff(base_s=ROUTE_RETRY_BASE_S, max_delay_s=max_delay_s), wait=wait)
    if verdict.ok:
        logger.info("route check: %s", verdict.line())
    else:
        logger.error("route check: %s (not paused: its refused launches are dead-lettered)", verdict.line())


def main() -> int:
    """`kafka-dagster check`: one line per route on stdout; 0 when every route is ok, 1 otherwise."""
    try:
        settings = load_settings()
        routes = load_routes(settings.routes_path)
    except ConfigurationError as exc:
        print(f"error: {exc}")
        return 1

    async def run() -> list[Verdict]:
        client = DagsterClient(settings.dagster_graphql_url, settings.dagster_api_token, settings.dagster_timeout_s,
                               cafile=settings.dagster_ssl_cafile)
        try:
            return await check_routes(routes.values(), client)
        finally:
            await client.aclose()

    try:
        verdicts = asyncio.run(run())
    except TransientError as exc:
        print(f"error: cannot check the routes: {exc}")
        return 1
    for verdict in verdicts:
        print(verdict.line())
    wrong = sum(not v.ok for v in verdicts)
    print(f"{len(verdicts) - wrong} of {len(verdicts)} routes ok" + (f", {wrong} wrong" if wrong else ""))
    return 1 if wrong else 0
