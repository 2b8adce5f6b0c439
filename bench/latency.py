"""Latencies: one `launchRun` against the real webserver, and event timestamp -> LaunchRunSuccess."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from bench.context import Context
from bench.data import make_values
from bench.worker import unique
from service.contract import TAG_BATCH_ID, TAG_TOPIC
from service.dagster import DagsterClient
from service.records import Record
from service.run_request import inline_records_json

WARM_UP_S = 2.0  # event -> launch leaves out batches born this soon: the partition's one-off reconcile


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
