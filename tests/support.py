"""Helpers the integration tests share: a worker process, a producer, Dagster queries."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from service.kafka import Producer, ensure_topics
from service.stack import free_port

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float, what: str,
                     interval_s: float = 0.5) -> T:
    """Poll `check` until it returns a truthy value; fail with the last value after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last value: {last!r}")


def route_toml(topic: str, job: str = "process_orders", **fields: Any) -> str:
    values = {"max_records": 500, "max_bytes": 1_048_576, "max_wait_s": 2.0, **fields}
    lines = ["[[routes]]", f'topic = "{topic}"', f'job = "{job}"']
    for key, value in values.items():
        lines.append(f"{key} = {value!r}" if not isinstance(value, str) else f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


@dataclass
class WorkerProcess:
    """`kafka-dagster worker` as a real child process."""

    env: dict[str, str]
    log_path: Path
    web_port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.web_port}"

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "service", "worker"], env=self.env,
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, cwd=ROOT)
        log.close()

    async def wait_ready(self, timeout_s: float = 60) -> None:
        async def ready() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"worker exited; see {self.log_path}"
            try:
                async with httpx.AsyncClient() as client:
                    response = await client.get(f"{self.base_url}/readyz", timeout=2)
            except httpx.HTTPError:
                return False
            return response.status_code == 200

        await eventually(ready, timeout_s, "the worker to be ready")

    def stop(self, timeout_s: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    async def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of /metrics, keyed by (name, sorted labels)."""
        async with httpx.AsyncClient() as client:
            response = await client.get(f"{self.base_url}/metrics", timeout=5)
        response.raise_for_status()
        samples = {}
        for family in text_string_to_metric_families(response.text):
            for sample in family.samples:
                samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return samples


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def produce(bootstrap: str, topic: str, values: Iterable[bytes], partitions: int = 1,
                  partition_of: Callable[[int], int] | None = None) -> int:
    """Send `values` round-robin over `partitions` (or by `partition_of(index)`); return the count."""
    await ensure_topics(bootstrap, {topic: partitions})
    producer = Producer(bootstrap)
    try:
        count = 0
        by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        for index, value in enumerate(values):
            partition = partition_of(index) if partition_of else index % partitions
            by_partition.setdefault(partition, []).append((None, value))
            count += 1
        for partition, records in by_partition.items():
            await producer.send_batch(topic, records, partition=partition)
        return count
    finally:
        await producer.stop()


class DagsterApi:
    """Read-only GraphQL queries the tests assert with."""

    RUNS = """
    query Runs($filter: RunsFilter) {
      runsOrError(filter: $filter) { __typename ... on Runs { results { runId status jobName tags { key value } } } }
    }"""

    MATERIALIZATIONS = """
    query Materializations($key: AssetKeyInput!, $limit: Int) {
      assetOrError(assetKey: $key) { __typename ... on Asset { assetMaterializations(limit: $limit) {
        runId metadataEntries { label __typename
          ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text }
          ... on FloatMetadataEntry { floatValue } } } } }
    }"""

    def __init__(self, graphql_url: str) -> None:
        self.url = graphql_url

    async def query(self, document: str, variables: dict[str, Any]) -> dict[str, Any]:
        async with httpx.AsyncClient() as client:
            response = await client.post(self.url, json={"query": document, "variables": variables}, timeout=30)
        response.raise_for_status()
        body = response.json()
        assert not body.get("errors"), body["errors"]
        return body["data"]  # type: ignore[no-any-return]

    async def runs(self, topic: str) -> list[dict[str, Any]]:
        data = await self.query(self.RUNS, {"filter": {"tags": [{"key": "kafka/topic", "value": topic}]}})
        runs = data["runsOrError"]["results"]
        for run in runs:
            run["tags"] = {t["key"]: t["value"] for t in run["tags"]}
        return runs  # type: ignore[no-any-return]

    async def materializations(self, asset: str, limit: int = 1000) -> list[dict[str, Any]]:
        data = await self.query(self.MATERIALIZATIONS, {"key": {"path": [asset]}, "limit": limit})
        result = data["assetOrError"]
        if result["__typename"] != "Asset":
            return []
        events = result["assetMaterializations"]
        for event in events:
            event["metadata"] = {
                e["label"]: e.get("intValue", e.get("text", e.get("floatValue"))) for e in event["metadataEntries"]
            }
        return events  # type: ignore[no-any-return]


def record_counts(runs: list[dict[str, Any]]) -> int:
    return sum(int(run["tags"]["kafka/record_count"]) for run in runs)


def ranges_by_partition(runs: list[dict[str, Any]]) -> dict[int, list[tuple[int, int]]]:
    ranges: dict[int, list[tuple[int, int]]] = {}
    for run in runs:
        tags = run["tags"]
        ranges.setdefault(int(tags["kafka/partition"]), []).append(
            (int(tags["kafka/offset_start"]), int(tags["kafka/offset_end"])))
    return {p: sorted(r) for p, r in ranges.items()}


def new_web_port() -> int:
    return free_port()
