"""Batches that grow while Dagster's queue holds a route's runs: a live stream into SUCCESS runs, with and
without `max_queued_runs`.

A route closes a batch on `max_wait_s` when its records come slower than
`max_records` per wait. Each run costs Dagster a process and about 2.7
CPU-seconds, so a stream of small batches can launch runs faster than Dagster
finishes them: they stand QUEUED, and their records wait with them. With
`max_queued_runs`, the route holds its next launch while that many runs of its
job are QUEUED, and meanwhile its open batches close only on
`max_records`/`max_bytes` (`service.throttle`, `Intake.tick`): the backlog
drains in fewer, larger runs.

Measured one variant after the other (both launch the same job, whose QUEUED
runs the throttle counts), the daemon running: `growth_records` orders
produced at `growth_rate` msg/s over `growth_partitions` partitions to a
route with `max_wait_s` `growth_max_wait_s` and `max_records`
`growth_max_records`; records per second from the first record produced to
the end of the last SUCCESS run, the runs it took and their records.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.amortisation import wait_finished
from bench.context import Context
from bench.data import make_values, produce_steady
from bench.worker import RouteSpec, Worker, unique
from service.dev.stack import StackError
from service.kafka import ensure_topics


@dataclass(frozen=True)
class GrowthPoint:
    max_queued_runs: int | None
    runs: int
    records_per_run: float
    records_per_s: float  # first record produced -> last SUCCESS run ended
    drained_s: float


def _measure(ctx: Context, max_queued_runs: int | None) -> GrowthPoint:
    mode = ctx.mode
    topic = unique("bench.growth")
    asyncio.run(ensure_topics(ctx.bootstrap, {topic: mode.growth_partitions}))
    route = RouteSpec(topic, mode.growth_max_records, mode.growth_max_wait_s, max_queued_runs=max_queued_runs)
    with ctx.workers(1, route) as workers:
        workers[0].wait_ready()
        started = time.time()
        asyncio.run(produce_steady(ctx.bootstrap, topic, make_values(mode.growth_records, mode.value_bytes),
                                   mode.growth_rate, mode.growth_partitions))
        launched = _records_launched(workers[0], mode.growth_records, timeout_s=300)
        finished = wait_finished(ctx, topic, launched, timeout_s=600)
    succeeded = [run for run in finished if run["status"] == "SUCCESS"]
    if len(succeeded) != len(finished):
        raise StackError(f"{len(finished) - len(succeeded)} growth runs of {topic} did not succeed")
    drained_s = max(run["endTime"] for run in succeeded) - started
    return GrowthPoint(max_queued_runs, len(succeeded), mode.growth_records / len(succeeded),
                       mode.growth_records / drained_s, drained_s)


def _records_launched(worker: Worker, records: int, timeout_s: float) -> int:
    """How many runs the worker launched once their offset ranges cover `records`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        launches = worker.launches()
        if sum(launch.records for launch in launches) >= records:
            return len(launches)
        time.sleep(0.5)
    raise StackError(f"the growth worker did not launch runs for {records} records in {timeout_s:.0f}s")


def queue_growth(ctx: Context) -> list[GrowthPoint]:
    """The live stream into SUCCESS runs without a queue limit, then with `growth_max_queued_runs`."""
    return [_measure(ctx, limit) for limit in (None, ctx.mode.growth_max_queued_runs)]
