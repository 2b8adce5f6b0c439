"""Latencies: one `launchRun` against the real webserver, and event timestamp -> LaunchRunSuccess."""

from __future__ import annotations

import asyncio
import time

from bench.context import Context
from bench.data import make_values, produce_steady
from bench.worker import unique, wait_launched
from service.dagster_client import DagsterClient
from service.kafka import read_topic

WARM_UP_S = 2.0


async def _launch_latencies(graphql_url: str, samples: int) -> list[float]:
    client = DagsterClient(graphql_url)
    try:
        selector = await client.resolve_job("process_orders")
        latencies = []
        for index in range(samples):
            batch_id = unique("bench-launch")
            config = {"ops": {"read_batch": {"config": {
                "topic": "bench.latency", "partition": 0, "offset_start": index, "offset_end": index,
                "record_count": 1, "batch_id": batch_id}}}}
            started = time.perf_counter()
            await client.launch_run(selector, config, {"kafka/batch_id": batch_id, "kafka/topic": "bench.latency"})
            latencies.append(time.perf_counter() - started)
        return latencies
    finally:
        await client.aclose()


def launch_latencies(ctx: Context) -> list[float]:
    """Seconds per `launchRun`, one at a time, with the worker's own GraphQL client."""
    return asyncio.run(_launch_latencies(ctx.dagster.graphql_url, ctx.mode.launch_samples))


def event_to_launch(ctx: Context) -> list[float]:
    """Per batch: its oldest record's timestamp to the worker's LaunchRunSuccess, at a steady rate.

    Batches whose first record was produced in the first WARM_UP_S seconds (the partition's
    one-off reconcile with Dagster) are left out: this is the steady state.
    """
    mode = ctx.mode
    topic = unique("bench.steady")
    count = int(mode.steady_rate * mode.steady_s)
    values = make_values(count, mode.value_bytes)
    asyncio.run(produce_steady(ctx.bootstrap, topic, [], mode.steady_rate, mode.partitions))
    with ctx.workers(1, topic, 1_000_000, mode.steady_max_wait_s) as workers:
        workers[0].wait_ready()
        asyncio.run(produce_steady(ctx.bootstrap, topic, values, mode.steady_rate, mode.partitions))
        _, launches = wait_launched(workers, count, timeout_s=60)
    timestamps = {(p, o): m.timestamp / 1000 for p, o, m in asyncio.run(read_topic(ctx.bootstrap, topic))}
    first = min(timestamps.values())
    born = [(timestamps[(launch.partition, launch.offset_start)], launch.at) for launch in launches]
    return [at - ts for ts, at in born if ts >= first + WARM_UP_S]
