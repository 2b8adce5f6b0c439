"""Contender 3, this service: real `kafka-dagster worker` processes launching real runs.

`service_schema` is the same worker with the sample route's JSON Schema
(`schemas/order.json`) on its route, on the same data: what users run.
`service_routes` is the same worker with three routes on the topic, each with
a `match` filter (`shared_topic_routes`): two take every order (one of them
with the schema, the other through four conditions), one takes none (refunds).
It counts a message once every route that matches it has launched it.

Throughput counts a message once a launched run's offset range covers it (the
`launched run` log lines), from the moment the first fetched records reached
the worker's delivery code (its `consuming` log lines). The consumption rate
alone counts to the moment the last batch closed, before its launch.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.context import Context
from bench.data import make_values, produce_fast
from bench.worker import ORDER_SCHEMA, Launch, RouteSpec, unique, wait_launched
from service.kafka import ensure_topics

MAX_WAIT_S = 60.0
REBALANCE_SETTLE_S = 6.0  # longer than a join: Tansu takes half the session timeout, Apache Kafka a heartbeat


FENCE = "kafka_dagster_fence_duration_seconds"
LAUNCH = "kafka_dagster_run_launch_duration_seconds"


@dataclass(frozen=True)
class ServiceRun:
    msgs_per_s: float  # into launched runs
    consumed_msgs_per_s: float  # into closed batches
    runs: int
    pid: int
    fence_s: float  # proving partition ownership before each launch, summed
    launch_s: float  # the launchRun calls, summed
    elapsed_s: float  # first records consumed -> last launch


def shared_topic_routes(topic: str, max_records: int) -> list[RouteSpec]:
    """Three routes on one topic: orders with the schema, every order through four conditions, refunds
    (none in the data). Both order routes take every record, so each closes its batches on `max_records`."""
    return [
        RouteSpec(topic, max_records, MAX_WAIT_S, ORDER_SCHEMA, "orders", '{ "value.type" = "order.created" }'),
        RouteSpec(topic, max_records, MAX_WAIT_S, None, "priced",
                  '{ "value.type" = "order.created", "value.currency" = "EUR", "value.amount" = { ">" = 0 }, '
                  '"value.sku" = { "prefix" = "sku-" } }'),
        RouteSpec(topic, max_records, MAX_WAIT_S, None, "refunds", '{ "value.type" = "refund.issued" }'),
    ]


def run_service(ctx: Context, profile: Path | None = None, schema: bool = False,
                routes: bool = False, max_records: int | None = None) -> ServiceRun:
    """One worker on the pre-produced data set, large batches, until every message is in a launched run.

    :param schema: validate every value against `schemas/order.json`, as the sample route does.
    :param routes: three routes with `match` filters on the topic (`shared_topic_routes`) instead of one.
    :param max_records: the route's batch size (default: one run per partition, `Mode.service_max_records`).
    """
    mode = ctx.mode
    size = max_records or mode.service_max_records
    specs = (shared_topic_routes(ctx.topic, size) if routes else
             [RouteSpec(ctx.topic, size, MAX_WAIT_S, ORDER_SCHEMA if schema else None)])
    launched_records = mode.messages * (2 if routes else 1)  # each order is launched by both order routes
    with ctx.workers(1, *specs) as workers, \
            _py_spy(workers[0].pid, profile):
        started, launches = wait_launched(workers, launched_records, timeout_s=300)
        consumed = mode.messages / (max(launch.closed_at for launch in launches) - started)
        costs = workers[0].metric_sums(f"{FENCE}_sum", f"{LAUNCH}_sum")
        return ServiceRun(_rate(mode.messages, started, launches), consumed, len(launches), workers[0].pid,
                          costs[f"{FENCE}_sum"], costs[f"{LAUNCH}_sum"], max(lch.at for lch in launches) - started)


@contextmanager
def _py_spy(pid: int, output: Path | None) -> Iterator[None]:
    """Record `pid` with py-spy while the block runs (nothing if `output` is None): collapsed stacks, one line
    per stack with its sample count (greppable; `flamegraph.pl` or speedscope draws them)."""
    if output is None:
        yield
        return
    spy = subprocess.Popen([str(Path(sys.executable).parent / "py-spy"), "record", "--nonblocking", "--threads",
                            "--format", "raw", "--rate", "200", "-o", str(output), "--pid", str(pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(timeout=30)


def run_scaling(ctx: Context, count: int) -> float:
    """`count` workers in one group, assignment settled, then the data set produced live."""
    mode = ctx.mode
    topic = unique("bench.scale")
    values = make_values(mode.messages, mode.value_bytes)
    asyncio.run(ensure_topics(ctx.bootstrap, {topic: mode.partitions}))  # workers subscribe to it
    with ctx.workers(count, RouteSpec(topic, mode.service_max_records, MAX_WAIT_S)) as workers:
        for worker in workers:
            worker.wait_ready()
        if count > 1:
            time.sleep(REBALANCE_SETTLE_S)
            for worker in workers:
                worker.wait_ready()
        asyncio.run(produce_fast(ctx.bootstrap, topic, values, mode.partitions))
        started, launches = wait_launched(workers, mode.messages, timeout_s=300)
    return _rate(mode.messages, started, launches)


def _rate(messages: int, started: float, launches: list[Launch]) -> float:
    return messages / (max(launch.at for launch in launches) - started)
