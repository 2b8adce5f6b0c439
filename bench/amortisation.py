"""The amortisation curve: records per second that land in SUCCESS runs, per `max_records`.

Dagster runs are expensive (a process each); batching is what pays for them.
For each batch size, `amortisation_runs` partitions of its own topic get
exactly one full batch each, and the clock runs from the first record reaching
the worker to the end of the last successful run. The sizes are measured one
after the other by one worker, so a group join is paid once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from bench.context import Context
from bench.data import make_values, produce_to
from bench.worker import RouteSpec, Worker, unique
from service.contract import TAG_TOPIC
from service.dagster import DagsterClient
from service.dev.stack import StackError
from service.kafka import ensure_topics

RUNS_QUERY = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) { ... on Runs { results { runId status startTime endTime } } }
}"""
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}


@dataclass(frozen=True)
class AmortisationPoint:
    max_records: int
    runs: int
    records_per_s: float
    run_duration_s: float  # median start -> end of one run


async def _runs(graphql_url: str, topic: str) -> list[dict[str, Any]]:
    client = DagsterClient(graphql_url)
    try:
        data = await client.execute(RUNS_QUERY, {"filter": {"tags": [{"key": TAG_TOPIC, "value": topic}]}})
    finally:
        await client.aclose()
    return list(data["runsOrError"]["results"])


def _wait_finished(ctx: Context, topic: str, runs: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = asyncio.run(_runs(ctx.dagster.graphql_url, topic))
        if len(found) >= runs and all(run["status"] in TERMINAL for run in found):
            return found
        time.sleep(1.0)
    raise StackError(f"{runs} runs of {topic} did not finish within {timeout_s:.0f}s")


def _measure_point(ctx: Context, worker: Worker, topic: str, max_records: int) -> AmortisationPoint:
    runs = ctx.mode.amortisation_runs
    values = make_values(max_records * runs, ctx.mode.value_bytes)
    per_partition = {p: values[p * max_records:(p + 1) * max_records] for p in range(runs)}
    asyncio.run(produce_to(ctx.bootstrap, topic, per_partition, ctx.mode.partitions))
    finished = _wait_finished(ctx, topic, runs, timeout_s=240)
    started = worker.first_consumed_at(topic)
    succeeded = [run for run in finished if run["status"] == "SUCCESS"]
    if not succeeded or started is None:
        raise StackError(f"no SUCCESS run for max_records={max_records}: {finished}")
    durations = sorted(run["endTime"] - run["startTime"] for run in succeeded)
    elapsed = max(run["endTime"] for run in succeeded) - started
    return AmortisationPoint(max_records, len(succeeded), len(succeeded) * max_records / elapsed,
                             durations[len(durations) // 2])


def amortisation(ctx: Context) -> list[AmortisationPoint]:
    """One worker routes a topic per batch size; the sizes are fed one after the other."""
    topics = {size: unique(f"bench.amortise-{size}") for size in ctx.mode.amortisation_sizes}
    asyncio.run(ensure_topics(ctx.bootstrap, dict.fromkeys(topics.values(), ctx.mode.partitions)))
    routes = [RouteSpec(topic, size, 300.0) for size, topic in topics.items()]
    with ctx.workers(1, *routes) as workers:
        workers[0].wait_ready()
        return [_measure_point(ctx, workers[0], topic, size) for size, topic in topics.items()]
