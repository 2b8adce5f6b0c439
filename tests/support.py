"""Helpers the integration tests share: a worker process, a producer, Dagster queries."""

from __future__ import annotations

import asyncio
import contextlib
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
import orjson
from prometheus_client.parser import text_string_to_metric_families

from service.dev.stack import free_port
from service.errors import BrokerUnavailable
from service.kafka import Producer, ensure_topics

T = TypeVar("T")
ROOT = Path(__file__).resolve().parent.parent


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float, what: str,
                     interval_s: float = 0.5) -> T:
    """Poll `check` until it returns a truthy value; fail with the last value after `timeout_s`.

    A check that takes long (reading a whole topic back) waits twice its own time before the next, so the
    test's polling never takes more than a third of a core from the workers and runs it waits for.
    """
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        started = time.monotonic()
        last = await check()
        if last:
            return last  # type: ignore[no-any-return]
        await asyncio.sleep(max(interval_s, 2 * (time.monotonic() - started)))
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}; last value: {last!r}")


def order(i: int, **extra: object) -> bytes:
    """A demo order, as JSON (`extra` adds fields, e.g. fail_run=True)."""
    return orjson.dumps({"order_id": f"o-{i}", "customer": f"c-{i % 5}", "amount": 2.5, **extra})


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


async def route_pause(worker: WorkerProcess, route: str) -> dict[str, Any] | None:
    """What /readyz says of `route`'s pause (reason, error, fix), or None when it is not paused."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{worker.base_url}/readyz", timeout=5)
    pause: dict[str, Any] | None = response.json().get("routes_paused", {}).get(route)
    assert pause is None or response.status_code == 503, response.text
    return pause


async def until_paused(worker: WorkerProcess, route: str, reason: str, *naming: str,
                       timeout_s: float = 60) -> dict[str, Any]:
    """/readyz says the route is paused for `reason`, its error and fix naming each of `naming`; the gauge agrees."""
    async def paused() -> dict[str, Any] | None:
        try:
            pause = await route_pause(worker, route)
        except httpx.HTTPError:
            return None
        text = "" if pause is None else pause["error"] + " " + pause["fix"]
        return pause if pause and pause["reason"] == reason and all(n in text for n in naming) else None

    pause = await eventually(paused, timeout_s, f"route {route} paused ({reason}) naming {naming}")
    assert metric(await worker.metrics(), "kafka_dagster_route_paused", route=route, reason=reason) == 1
    return pause


async def until_resumed(worker: WorkerProcess, route: str, reason: str, timeout_s: float = 90) -> None:
    """/readyz no longer shows `route` paused, and the gauge of `reason` is back to 0."""
    async def resumed() -> bool:
        return await route_pause(worker, route) is None

    await eventually(resumed, timeout_s, f"route {route} resumed after {reason}")
    assert metric(await worker.metrics(), "kafka_dagster_route_paused", route=route, reason=reason) == 0


def metric(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def produce(bootstrap: str, topic: str, values: Iterable[bytes | tuple[bytes, bytes | None] | None],
                  partitions: int = 1, partition_of: Callable[[int], int] | None = None) -> int:
    """Send `values` round-robin over `partitions` (or by `partition_of(index)`); return the count.

    A value may be a (key, value) tuple; a lone None value is sent with key b"null".
    """
    await topic_created(bootstrap, topic, partitions)
    producer = Producer(bootstrap)
    try:
        count = 0
        by_partition: dict[int, list[tuple[bytes | None, bytes | None]]] = {}
        for index, value in enumerate(values):
            partition = partition_of(index) if partition_of else index % partitions
            key, value = value if isinstance(value, tuple) else (b"null" if value is None else None, value)
            by_partition.setdefault(partition, []).append((key, value))
            count += 1
        for partition, records in by_partition.items():
            await producer.send_batch(topic, records, partition=partition)
        return count
    finally:
        await producer.stop()


async def topic_created(bootstrap: str, topic: str, partitions: int, timeout_s: float = 60) -> None:
    """Create `topic` unless it exists, waiting out a broker that is briefly unavailable, as a user's producer does.

    After a freeze, Apache Kafka's controller fences its broker until the broker's next heartbeat: metadata
    then names no broker even though the broker answered a moment before.
    """
    async def created() -> bool:
        try:
            await ensure_topics(bootstrap, {topic: partitions})
        except BrokerUnavailable:
            return False
        return True

    await eventually(created, timeout_s, f"the broker to create or describe {topic}")


class Flow:
    """Produces orders (or `event(i)`) to `topic` at a steady pace until stopped; counts what it sent."""

    def __init__(self, bootstrap: str, topic: str, per_second: int = 100, partitions: int = 1,
                 event: Callable[[int], bytes] | None = None) -> None:
        self.bootstrap, self.topic, self.per_second, self.partitions = bootstrap, topic, per_second, partitions
        self.event = event or order
        self.sent = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    async def _run(self) -> None:
        while not self._stopping.is_set():
            step = self.per_second // 4
            values = [self.event(i) for i in range(self.sent, self.sent + step)]
            await produce(self.bootstrap, self.topic, values, partitions=self.partitions)
            self.sent += step
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), 0.25)

    def start(self) -> None:
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def stop(self, timeout_s: float = 60) -> int:
        """Stop once the records being sent are sent. Cancelled in the middle, aiokafka can drop a connection it
        was opening without closing it (collected later, in another test, as an unclosed connection), so the
        flow is cancelled only if that send hangs past `timeout_s`."""
        assert self._task is not None
        self._stopping.set()
        try:
            await asyncio.wait_for(asyncio.shield(self._task), timeout_s)
        except TimeoutError:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.sent


class DagsterApi:
    """Read-only GraphQL queries the tests assert with."""

    RUNS = """
    query Runs($filter: RunsFilter) {
      runsOrError(filter: $filter) { __typename ... on Runs {
        results { runId status jobName creationTime tags { key value }
                  stats { ... on RunStatsSnapshot { startTime } } } } }
    }"""

    MATERIALIZATIONS = """
    query Materializations($key: AssetKeyInput!, $limit: Int) {
      assetOrError(assetKey: $key) { __typename ... on Asset { assetMaterializations(limit: $limit) {
        runId metadataEntries { label __typename
          ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text }
          ... on FloatMetadataEntry { floatValue } } } } }
    }"""

    RUN_DETAILS = """
    query Run($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run { runConfigYaml tags { key value } } } }
    """

    def __init__(self, graphql_url: str) -> None:
        self.url = graphql_url

    async def run_details(self, run_id: str) -> dict[str, Any]:
        """The run's `runConfigYaml` and `tags`, as Dagster stored them."""
        return (await self.query(self.RUN_DETAILS, {"runId": run_id}))["runOrError"]  # type: ignore[no-any-return]

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
            run["started"] = (run.pop("stats", None) or {}).get("startTime") is not None  # a RunStartEvent
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


async def finished_runs(api: DagsterApi, topic: str, expected_records: int) -> list[dict]:
    """The topic's runs once they cover `expected_records` records and all have finished."""
    runs = await api.runs(topic)
    if record_counts(runs) < expected_records:
        return []
    if any(run["status"] not in ("SUCCESS", "FAILURE", "CANCELED") for run in runs):
        return []
    return runs


def ranges_by_partition(runs: list[dict[str, Any]]) -> dict[int, list[tuple[int, int]]]:
    ranges: dict[int, list[tuple[int, int]]] = {}
    for run in runs:
        tags = run["tags"]
        ranges.setdefault(int(tags["kafka/partition"]), []).append(
            (int(tags["kafka/offset_start"]), int(tags["kafka/offset_end"])))
    return {p: sorted(r) for p, r in ranges.items()}


def new_web_port() -> int:
    return free_port()


@dataclass
class Accounting:
    """Where every offset of a topic ended: the delivery invariant, checked."""

    offsets: int
    in_runs: int
    dead_lettered: dict[str, int]  # pre-launch stage -> distinct offsets
    run_copies: int  # offsets of failed runs copied with stage run
    duplicate_dead_letters: int
    problems: list[str]
    stages_by_offset: dict[tuple[int, int], set[str]]
    error_classes: dict[tuple[int, int], set[str]]

    unfinished_runs: int = 0
    expected: int = 0

    @property
    def holds(self) -> bool:
        return not self.problems

    @property
    def settled(self) -> bool:
        """Every expected offset is placed and every run has finished."""
        return (self.unfinished_runs == 0 and self.offsets >= self.expected
                and not any("neither" in p or "stage run" in p for p in self.problems))

    def __bool__(self) -> bool:
        return self.settled

    def __repr__(self) -> str:
        return (f"Accounting(offsets={self.offsets}/{self.expected}, in_runs={self.in_runs}, "
                f"dead_lettered={self.dead_lettered}, run_copies={self.run_copies}, "
                f"unfinished_runs={self.unfinished_runs}, problems={self.problems[:5]}"
                f"{'...' if len(self.problems) > 5 else ''})")


async def dead_letters(bootstrap: str, dlq_topic: str) -> list[Any]:
    from service.dlq import DeadLetter
    from service.kafka import read_topic

    try:
        messages = await read_topic(bootstrap, dlq_topic)
    except Exception:
        return []
    return [DeadLetter.parse(m.key, m.value, m.timestamp, list(m.headers or ()), offset)
            for _, offset, m in messages]


async def account(bootstrap: str, api: DagsterApi, topic: str, dlq_topic: str) -> Accounting:
    """Check the delivery invariant over every offset of `topic`."""
    from service.dlq import PRE_LAUNCH_STAGES
    from service.kafka import read_topic

    offsets = {(p, o) for p, o, _ in await read_topic(bootstrap, topic)}
    runs = executed_runs(await api.runs(topic))
    letters = [d for d in await dead_letters(bootstrap, dlq_topic) if d.dlq.get("dlq.topic") == topic]
    covering: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for run in runs:
        tags = run["tags"]
        partition = int(tags["kafka/partition"])
        for offset in range(int(tags["kafka/offset_start"]), int(tags["kafka/offset_end"]) + 1):
            covering.setdefault((partition, offset), []).append(run)
    stages: dict[tuple[int, int], set[str]] = {}
    classes: dict[tuple[int, int], set[str]] = {}
    run_copies: dict[tuple[int, int], set[str]] = {}
    seen: set[tuple[int, int, str, str]] = set()
    duplicates = 0
    for letter in letters:
        _, partition, offset = letter.origin
        key = (partition, offset, letter.stage, letter.dlq.get("dlq.run_id", ""))
        duplicates += key in seen
        seen.add(key)
        if letter.stage == "run":
            run_copies.setdefault((partition, offset), set()).add(letter.dlq["dlq.run_id"])
        else:
            stages.setdefault((partition, offset), set()).add(letter.stage)
            classes.setdefault((partition, offset), set()).add(letter.dlq["dlq.error.class"])
    problems = []
    for position in sorted(offsets):
        in_runs = covering.get(position, [])
        pre = stages.get(position, set()) & set(PRE_LAUNCH_STAGES)
        if len(in_runs) > 1:
            problems.append(f"{position} is in {len(in_runs)} runs")
        if in_runs and pre:
            problems.append(f"{position} is in a run and in the DLQ ({pre})")
        if not in_runs and not pre:
            problems.append(f"{position} is neither in a run nor in the DLQ")
        for run in in_runs:
            if run["status"] in ("FAILURE", "CANCELED") and run["runId"] not in run_copies.get(position, set()):
                problems.append(f"{position} is in failed run {run['runId']} but not in the DLQ with stage run")
    for position in covering:
        if position not in offsets:
            problems.append(f"a run covers {position}, which is not in the topic")
    counted: dict[str, int] = {}
    for found in stages.values():
        for stage in found:
            counted[stage] = counted.get(stage, 0) + 1
    return Accounting(len(offsets), sum(1 for p in offsets if p in covering), counted,
                      sum(len(v) for v in run_copies.values()), duplicates, problems, stages, classes)


def executed_runs(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The runs that count (`service.verdicts`): not a duplicate of a batch cancelled before it started, and
    not a run that failed before processing its batch (Dagster's failure reason other than a step's) while
    another run of the batch exists."""
    by_batch: dict[str, int] = {}
    for run in runs:
        by_batch[run["tags"].get("kafka/batch_id", "")] = by_batch.get(run["tags"].get("kafka/batch_id", ""), 0) + 1

    def replaced(run: dict[str, Any]) -> bool:
        cancelled = run["status"] == "CANCELED" and not run.get("started")
        stood_down = run["status"] == "CANCELED" and "kafka/duplicate_of" in run["tags"]  # before any record
        system = run["status"] == "FAILURE" and run["tags"].get("dagster/failure_reason") != "STEP_FAILURE"
        return (cancelled or stood_down or system) and by_batch[run["tags"].get("kafka/batch_id", "")] > 1

    return [run for run in runs if not replaced(run)]


def canceled_duplicates(runs: list[dict[str, Any]]) -> int:
    """Runs of a batch with other runs, cancelled by a worker before they started: the duplicate rule's."""
    replaced = [run for run in runs if run not in executed_runs(runs)]
    return sum(run["status"] == "CANCELED" and not run.get("started") for run in replaced)


def stood_down(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Duplicates that started after their batch's run and stood down in their own run (`kafka/duplicate_of`)."""
    return [run for run in runs if run["status"] == "CANCELED" and "kafka/duplicate_of" in run["tags"]]


async def settled(bootstrap: str, api: DagsterApi, topic: str, dlq_topic: str, expected: int) -> Accounting:
    """The accounting of `topic`; truthy once `expected` offsets are placed and every run finished."""
    result = await account(bootstrap, api, topic, dlq_topic)
    runs = await api.runs(topic)
    result.unfinished_runs = sum(run["status"] not in ("SUCCESS", "FAILURE", "CANCELED") for run in runs)
    result.expected = expected
    return result


async def every_record_in_one_run(bootstrap: str, api: DagsterApi, flow: Flow, dlq: str,
                                  timeout_s: float = 240) -> Accounting:
    """Stop `flow`; wait until every record it sent is in exactly one executed run, and return the accounting."""
    sent = await flow.stop()
    result = await eventually(lambda: settled(bootstrap, api, flow.topic, dlq, sent), timeout_s,
                              "every record in exactly one run")
    assert result.problems == [], result.problems[:10]
    assert result.in_runs == result.offsets  # >= sent: a produce cut short by stop() may have landed
    return result
