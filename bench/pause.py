"""What a paused route costs once its cause is gone: the time from the fix to the next launch.

The code location is stopped while records wait (the route pauses with
reason `code_location_error` and retries the same batch with a capped
backoff), then started again; the figure is how long after the code server
answers again the worker's next launch succeeds. It depends on
`KAFKA_DAGSTER_ROUTE_RETRY_MAX_DELAY_S` (set here to its default, 120 s) and on
how long the route was paused; the worker wakes every lane as soon as one
launch gets through.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from bench.context import Context
from bench.data import make_values, produce_fast
from bench.worker import RouteSpec, Worker, unique
from service.dev.stack import port_open, wait_until
from service.kafka import ensure_topics

RECORDS = 1_000


@dataclass(frozen=True)
class PauseCost:
    paused_s: float  # how long the code location was down with records waiting
    resume_s: float  # code server answering again -> the next launch's success


def _paused(worker: Worker, topic: str) -> bool:
    try:
        body = httpx.get(f"http://127.0.0.1:{worker.web_port}/readyz", timeout=2).json()
    except httpx.HTTPError:
        return False
    return topic in body.get("routes_paused", {})


def pause_resume(ctx: Context, down_s: float) -> PauseCost:
    """Stop the code server with records waiting for `down_s` after the route paused; start it; time the resume."""
    topic = unique("bench.pause")
    asyncio.run(ensure_topics(ctx.bootstrap, {topic: 2}))
    with ctx.workers(1, RouteSpec(topic, 100_000, 1.0), KAFKA_DAGSTER_ROUTE_RETRY_MAX_DELAY_S="120") as workers:
        worker = workers[0]
        worker.wait_ready()
        ctx.dagster.code_server.stop()
        stopped_at = time.monotonic()
        try:
            asyncio.run(produce_fast(ctx.bootstrap, topic, make_values(RECORDS), 2))
            wait_until(lambda: _paused(worker, topic), 120, "the route to pause")
            time.sleep(down_s)  # the outage being measured: the route stays paused this long
        finally:
            ctx.dagster.code_server.start()
        wait_until(lambda: port_open(ctx.dagster.grpc_port), 60, "the code server")
        back_at, paused_s = time.time(), time.monotonic() - stopped_at
        wait_until(lambda: bool(worker.launches()), 300, "the first launch after the code location is back")
        first = min(launch.at for launch in worker.launches())
        return PauseCost(paused_s, max(0.0, first - back_at))
