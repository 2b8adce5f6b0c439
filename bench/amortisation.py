"""The amortisation curve: records per second that land in SUCCESS runs, per `max_records`.

Dagster runs are expensive (a process each); batching is what pays for them.
For each batch size, `amortisation_runs` partitions of its own topic get
exactly one full batch each, and the clock runs from the first record reaching
the worker to the end of the last successful run. The sizes are measured one
after the other by one worker, so a group join is paid once.

What each run costs Dagster's machine is read from the code server: its gRPC
process starts every run in a process of its own, and Linux adds a run's
CPU-seconds (and those of any process the run waited for) to the code
server's children's times once the run has ended and been reaped.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import psutil

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
    run_cpu_s: float  # CPU-seconds of the run processes, per run (see the module docstring)


async def _runs(graphql_url: str, topic: str) -> list[dict[str, Any]]:
    client = DagsterClient(graphql_url)
    try:
        data = await client.execute(RUNS_QUERY, {"filter": {"tags": [{"key": TAG_TOPIC, "value": topic}]}})
    finally:
        await client.aclose()
    return list(data["runsOrError"]["results"])


def wait_finished(ctx: Context, topic: str, runs: int, timeout_s: float) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = asyncio.run(_runs(ctx.dagster.graphql_url, topic))
        if len(found) >= runs and all(run["status"] in TERMINAL for run in found):
            return found
        time.sleep(1.0)
    raise StackError(f"{runs} runs of {topic} did not finish within {timeout_s:.0f}s")


def _tree(root_pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(root_pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _reaped_cpu_s(processes: list[psutil.Process]) -> float:
    """CPU-seconds of the processes that `processes` have waited for so far."""
    total = 0.0
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            times = proc.cpu_times()
            total += times.children_user + times.children_system
    return total


def _runs_reaped(server: list[psutil.Process], root_pid: int, timeout_s: float = 20.0) -> None:
    """Wait until the code server has no process but its own (every run's has ended and been reaped)."""
    own = {proc.pid for proc in server}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and {proc.pid for proc in _tree(root_pid)} - own:
        time.sleep(0.2)


def _measure_point(ctx: Context, worker: Worker, topic: str, max_records: int) -> AmortisationPoint:
    runs = ctx.mode.amortisation_runs
    assert ctx.dagster.code_server.proc is not None, "the code server is started"
    root_pid = ctx.dagster.code_server.proc.pid
    server = _tree(root_pid)
    cpu_before = _reaped_cpu_s(server)
    values = make_values(max_records * runs, ctx.mode.value_bytes)
    per_partition = {p: values[p * max_records:(p + 1) * max_records] for p in range(runs)}
    asyncio.run(produce_to(ctx.bootstrap, topic, per_partition, ctx.mode.partitions))
    finished = wait_finished(ctx, topic, runs, timeout_s=240)
    started = worker.first_consumed_at(topic)
    succeeded = [run for run in finished if run["status"] == "SUCCESS"]
    if not succeeded or started is None:
        raise StackError(f"no SUCCESS run for max_records={max_records}: {finished}")
    durations = sorted(run["endTime"] - run["startTime"] for run in succeeded)
    elapsed = max(run["endTime"] for run in succeeded) - started
    _runs_reaped(server, root_pid)
    run_cpu_s = (_reaped_cpu_s(server) - cpu_before) / len(finished)
    return AmortisationPoint(max_records, len(succeeded), len(succeeded) * max_records / elapsed,
                             durations[len(durations) // 2], run_cpu_s)


def amortisation(ctx: Context) -> list[AmortisationPoint]:
    """One worker routes a topic per batch size; the sizes are fed one after the other."""
    topics = {size: unique(f"bench.amortise-{size}") for size in ctx.mode.amortisation_sizes}
    asyncio.run(ensure_topics(ctx.bootstrap, dict.fromkeys(topics.values(), ctx.mode.partitions)))
    routes = [RouteSpec(topic, size, 300.0) for size, topic in topics.items()]
    with ctx.workers(1, *routes) as workers:
        workers[0].wait_ready()
        return [_measure_point(ctx, workers[0], topic, size) for size, topic in topics.items()]
