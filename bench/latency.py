"""Latencies: one `launchRun` against the real webserver, and event timestamp -> LaunchRunSuccess."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from bench.context import Context
from bench.data import make_values, produce_steady
from bench.worker import RouteSpec, unique, wait_launched
from service.contract import TAG_BATCH_ID, TAG_TOPIC
from service.dagster import DagsterClient
from service.kafka import ensure_topics, read_topic
from service.records import Record
from service.run_request import inline_records_json

WARM_UP_S = 2.0


def _config(batch_id: str, offset: int, inline: list[bytes], as_list: bool) -> dict[str, Any]:
    """The run config the worker sends: the offset range, plus the records when they are inlined
    (`records_json`, one string, as the worker sends them; or, `as_list`, the typed list `records`)."""
    records = [Record("bench.latency", 0, offset + i, 0, None, value) for i, value in enumerate(inline)]
    config: dict[str, Any] = {"topic": "bench.latency", "partition": 0, "offset_start": offset,
                              "offset_end": offset + max(0, len(inline) - 1), "record_count": max(1, len(inline)),
                              "batch_id": batch_id}
    if inline and as_list:
        config["records"] = orjson.loads(inline_records_json(records))
    elif inline:
        config["records_json"] = inline_records_json(records)
    return {"ops": {"read_batch": {"config": config}}}


async def _launch_latencies(graphql_url: str, samples: int, inline: list[bytes], as_list: bool) -> list[float]:
    client = DagsterClient(graphql_url)
    try:
        selector = await client.workspace.resolve_job("process_orders")
        latencies = []
        for index in range(samples):
            batch_id = unique("bench-launch")
            config = _config(batch_id, index * 1000, inline, as_list)
            started = time.perf_counter()
            await client.launch_run(selector, config, {TAG_BATCH_ID: batch_id, TAG_TOPIC: "bench.latency"})
            latencies.append(time.perf_counter() - started)
        return latencies
    finally:
        await client.aclose()


def launch_latencies(ctx: Context, inline_records: int = 0, as_list: bool = False) -> list[float]:
    """Seconds per `launchRun`, one at a time, with the worker's own GraphQL client.

    With `inline_records`, each run config carries that many records inline (as
    the worker sends batches up to the route's `inline_max_bytes`: one JSON
    string, or with `as_list` the typed list it sent before 2026-12-06);
    without, only the offset range (as for larger batches).
    """
    inline = make_values(inline_records, ctx.mode.value_bytes)
    return asyncio.run(_launch_latencies(ctx.dagster.graphql_url, ctx.mode.launch_samples, inline, as_list))


def event_to_launch(ctx: Context) -> list[float]:
    """Per batch: its oldest record's timestamp to the worker's LaunchRunSuccess, at a steady rate.

    Batches whose first record was produced in the first WARM_UP_S seconds (the partition's
    one-off reconcile with Dagster) are left out: this is the steady state.
    """
    mode = ctx.mode
    topic = unique("bench.steady")
    count = int(mode.steady_rate * mode.steady_s)
    values = make_values(count, mode.value_bytes)
    asyncio.run(ensure_topics(ctx.bootstrap, {topic: mode.partitions}))  # workers subscribe to it
    with ctx.workers(1, RouteSpec(topic, 1_000_000, mode.steady_max_wait_s)) as workers:
        workers[0].wait_ready()
        asyncio.run(produce_steady(ctx.bootstrap, topic, values, mode.steady_rate, mode.partitions))
        _, launches = wait_launched(workers, count, timeout_s=60)
    read = asyncio.run(read_topic(ctx.bootstrap, topic))
    timestamps = {(p, o): m.timestamp / 1000 for p, o, m in read}  # type: ignore[attr-defined]
    first = min(timestamps.values())
    born = [(timestamps[(launch.partition, launch.offset_start)], launch.at) for launch in launches]
    return [at - ts for ts, at in born if ts >= first + WARM_UP_S]
