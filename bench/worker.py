"""`kafka-dagster worker` processes for the benchmark, and what their JSON logs say."""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import orjson

from service.dev.stack import ManagedProcess, StackError, free_port, wait_until

ROOT = Path(__file__).resolve().parent.parent


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


ORDER_SCHEMA = ROOT / "schemas" / "order.json"  # the sample route's schema, which users start from


class RouteSpec(NamedTuple):
    topic: str
    max_records: int
    max_wait_s: float
    schema_file: Path | None = None
    name: str | None = None
    match: str | None = None  # a TOML inline table
    max_queued_runs: int | None = None


# The sensor contender's code location (bench.sensor_location) serves a `process_orders` too.
LOCATION = "dagster_project"


MAX_BYTES = 16 * 1_048_576  # every benchmark route's max_bytes: the worker's default KAFKA_DAGSTER_MAX_BATCH_BYTES


def routes_toml(routes: Iterable[RouteSpec], max_bytes: int = MAX_BYTES) -> str:
    return "".join(
        f'[[routes]]\ntopic = "{r.topic}"\njob = "process_orders"\nlocation = "{LOCATION}"\n'
        f"max_records = {r.max_records}\n"
        f"max_bytes = {max_bytes}\nmax_wait_s = {r.max_wait_s}\n"
        + (f"schema_file = {str(r.schema_file)!r}\n" if r.schema_file is not None else "")
        + (f'name = "{r.name}"\n' if r.name is not None else "")
        + (f"match = {r.match}\n" if r.match is not None else "")
        + (f"max_queued_runs = {r.max_queued_runs}\n" if r.max_queued_runs is not None else "")
        for r in routes
    )


@dataclass(frozen=True)
class Launch:
    """One `launched run` log line: when, which offsets it covers, and when its batch closed."""

    at: float
    partition: int
    offset_start: int
    offset_end: int
    closed_at: float

    @property
    def records(self) -> int:
        return self.offset_end - self.offset_start + 1


class Worker:
    """One `python -m service worker` in its own process group, logging JSON lines to a file."""

    def __init__(self, workdir: Path, name: str, env: dict[str, str]) -> None:
        self.web_port = free_port()
        self.log_path = workdir / f"{name}.log"
        full_env = dict(os.environ)
        full_env.update(env, KAFKA_DAGSTER_WEB_PORT=str(self.web_port), KAFKA_DAGSTER_LOG_FORMAT="json",
                        PYTHONUNBUFFERED="1", DAGSTER_DISABLE_TELEMETRY="1")
        self.process = ManagedProcess(name, [sys.executable, "-m", "service", "worker"], self.log_path, full_env)

    @property
    def pid(self) -> int:
        assert self.process.proc is not None
        return self.process.proc.pid

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop(timeout_s=5)

    def wait_ready(self, timeout_s: float = 90) -> None:
        wait_until(self._ready, timeout_s, f"{self.process.name} to be ready")

    def _ready(self) -> bool:
        self.process.check_alive()
        try:
            return httpx.get(f"http://127.0.0.1:{self.web_port}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def metric_sums(self, *names: str) -> dict[str, float]:
        """The worker's /metrics samples of `names` (counters, histogram _sum and _count), summed over labels."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(f"http://127.0.0.1:{self.web_port}/metrics", timeout=5).text
        sums = dict.fromkeys(names, 0.0)
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name in sums:
                    sums[sample.name] += sample.value
        return sums

    def rss_bytes(self) -> int:
        """Resident memory of the worker and any children it started."""
        import psutil  # the bench extra; imported here so the route helpers need only the dev install

        try:
            proc = psutil.Process(self.pid)
            return int(sum(p.memory_info().rss for p in [proc, *proc.children(recursive=True)]))
        except psutil.Error:
            return 0

    def log_lines(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return lines
        for raw in self.log_path.read_bytes().splitlines():
            if raw.startswith(b"{"):
                try:
                    lines.append(orjson.loads(raw))
                except orjson.JSONDecodeError:
                    continue
        return lines

    def launches(self) -> list[Launch]:
        return [
            Launch(_epoch(line["time"]), line["partition"], line["offset_start"], line["offset_end"],
                   _epoch(line["time"]) - line["closed_s_ago"])
            for line in self.log_lines() if line.get("message", "").startswith("launched run")
        ]

    def first_consumed_at(self, topic: str = "") -> float | None:
        """When the first fetched records (of `topic`) reached the worker's delivery code."""
        prefix = f"consuming {topic}/" if topic else "consuming "
        times = [_epoch(line["time"]) for line in self.log_lines() if line.get("message", "").startswith(prefix)]
        return min(times, default=None)


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def worker_env(bootstrap: str, graphql_url: str, routes_path: Path, group: str, **extra: str) -> dict[str, str]:
    return {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "DAGSTER_GRAPHQL_URL": graphql_url,
        "KAFKA_DAGSTER_ROUTES": str(routes_path),
        "KAFKA_DAGSTER_GROUP_ID": group,
        "KAFKA_DAGSTER_DLQ_TOPIC": f"{group}.dlq",
        "KAFKA_DAGSTER_SESSION_TIMEOUT_S": "10",
        "KAFKA_DAGSTER_SHUTDOWN_TIMEOUT_S": "3",
        "KAFKA_DAGSTER_MAX_INFLIGHT_RUNS": "100000",
        **extra,
    }


def wait_launched(workers: Iterable[Worker], expected: int, timeout_s: float) -> tuple[float, list[Launch]]:
    """Poll the workers' logs until launched runs cover `expected` records; return (start, launches)."""
    workers = list(workers)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for worker in workers:
            worker.process.check_alive()
        launches = [launch for worker in workers for launch in worker.launches()]
        if sum(launch.records for launch in launches) >= expected:
            starts = [t for worker in workers if (t := worker.first_consumed_at()) is not None]
            return min(starts), sorted(launches, key=lambda launch: launch.at)
        time.sleep(0.25)
    raise StackError(f"launched runs did not cover {expected} records within {timeout_s:.0f}s")
