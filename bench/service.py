"""Contender 3, this service: real `kafka-dagster worker` processes launching real runs.

Throughput counts a message once a launched run's offset range covers it (the
`launched run` log lines), from the moment the first record reached the agent.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from bench.context import Context
from bench.data import make_values, produce_fast
from bench.worker import Launch, unique, wait_launched

MAX_WAIT_S = 60.0
REBALANCE_SETTLE_S = 6.0  # longer than a Tansu join (half the session timeout)


@dataclass(frozen=True)
class ServiceRun:
    msgs_per_s: float
    runs: int
    pid: int


def run_service(ctx: Context) -> ServiceRun:
    """One worker on the pre-produced data set, large batches, until every message is in a launched run."""
    mode = ctx.mode
    with ctx.workers(1, ctx.topic, mode.service_max_records, MAX_WAIT_S) as workers:
        started, launches = wait_launched(workers, mode.messages, timeout_s=300)
        return ServiceRun(_rate(mode.messages, started, launches), len(launches), workers[0].pid)


def run_scaling(ctx: Context, count: int) -> float:
    """`count` workers in one group, assignment settled, then the data set produced live."""
    mode = ctx.mode
    topic = unique("bench.scale")
    values = make_values(mode.messages, mode.value_bytes)
    asyncio.run(produce_fast(ctx.bootstrap, topic, [], mode.partitions))
    with ctx.workers(count, topic, mode.service_max_records, MAX_WAIT_S) as workers:
        for worker in workers:
            worker.wait_ready()
        time.sleep(REBALANCE_SETTLE_S)
        for worker in workers:
            worker.wait_ready()
        asyncio.run(produce_fast(ctx.bootstrap, topic, values, mode.partitions))
        started, launches = wait_launched(workers, mode.messages, timeout_s=300)
    return _rate(mode.messages, started, launches)


def _rate(messages: int, started: float, launches: list[Launch]) -> float:
    return messages / (max(launch.at for launch in launches) - started)
