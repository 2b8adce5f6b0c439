"""Delivery with a fake Dagster client and a fake dead-letter sink: launch, skip, dead-letter, retry, commit."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.batching import RECORDS, REVOKE, SPLIT, TIME, batch_id
from service.dagster import JobSelector, Target
from service.delivery import MAX_SYSTEM_FAILURES, Delivery, DeliverySettings, Links
from service.errors import (
    CODE_LOCATION_ERROR,
    CODE_LOCATION_HINT,
    BatchTooLarge,
    DagsterError,
    DagsterUnavailable,
    KafkaRejected,
    LaunchRejected,
    RateLimited,
    RequestRejected,
    TransientError,
    Unauthorized,
)
from service.metrics import Metrics
from service.outcomes import DUPLICATE
from service.records import TP, Record
from service.routes import Route, RouteTable
from service.verdicts import FAILURE_REASON_TAG, STEP_FAILURE, RunInfo
from tests.unit.factories import RECORD_TIME_S, make_record

JOB = "process_orders"
GROUP = "test-group"
DLQ = "test.dlq"
TIMESTAMP_MS = 1_700_000_000_000

LOST = "lost"  # a launch Dagster performed but whose answer never arrived


class FakeDagster:
    """Stands in for DagsterClient and its workspace; `script` says what each launch_run call does, in order."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.workspace = self
        self.log = log
        self.script: list[Any] = []
        self.runs: list[RunInfo] = []
        self.launches: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.find_calls: list[dict[str, str]] = []
        self.find_failures: list[Exception] = []
        self.resolve_failures: list[Exception] = []
        self.gate: asyncio.Event | None = None
        self.terminated: list[str] = []
        self.forgotten: list[str] = []
        self.broken: list[dict[str, str]] = []  # what broken_locations answers, call by call

    def forget_job(self, job: str) -> None:
        self.forgotten.append(job)

    async def broken_locations(self, max_age_s: float = 0.0) -> dict[str, str]:
        return self.broken.pop(0) if self.broken else {}

    async def terminate_queued(self, run_id: str) -> bool:
        self.terminated.append(run_id)
        self.runs = [RunInfo(r.run_id, "CANCELED", r.job, r.tags, r.creation_time) if r.run_id == run_id else r
                     for r in self.runs]
        return True

    async def resolve_target(self, job: str, assets: tuple[str, ...] = (), location: str | None = None,
                             repository: str | None = None, batch_op: str = "read_batch") -> Target:
        if self.resolve_failures:
            raise self.resolve_failures.pop(0)
        return Target(JobSelector("loc", "__repository__", job), (), (batch_op,))

    async def launch_run(self, selector: JobSelector, run_config: dict[str, Any], tags: dict[str, str]) -> str:
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, Exception):
            raise outcome
        run_id = f"run-{len(self.launches)}"
        self.launches.append((run_config, tags))
        self.runs.append(RunInfo(run_id, "QUEUED", selector.job, dict(tags), float(len(self.runs))))
        self.log.append(("launch", (int(tags["kafka/offset_start"]), int(tags["kafka/offset_end"]))))
        if outcome == LOST:
            raise DagsterUnavailable("ReadTimeout talking to Dagster")
        return run_id

    async def find_runs(self, tags: dict[str, str], job: str | None = None, limit: int = 100) -> list[RunInfo]:
        self.find_calls.append(dict(tags))
        if self.find_failures:
            raise self.find_failures.pop(0)
        found = [r for r in reversed(self.runs)
                 if all(r.tags.get(k) == v for k, v in tags.items()) and (job is None or r.job == job)]
        return found[:limit]

    async def run_statuses(self, run_ids: list[str]) -> dict[str, str]:
        return {r.run_id: r.status for r in self.runs if r.run_id in run_ids}


class FakeSink:
    """The dead-letter producer: keeps what it was sent; `failures` are raised first."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.sent: list[dict[str, Any]] = []
        self.failures: list[Exception] = []

    async def send(self, topic: str, key: bytes | None, value: bytes | None,
                   headers: list[tuple[str, bytes]], timestamp_ms: int | None) -> None:
        if self.failures:
            raise self.failures.pop(0)
        headers_dict = {k: v.decode() for k, v in headers if k.startswith("dlq.")}
        self.sent.append({"topic": topic, "key": key, "value": value, "headers": headers,
                          "timestamp_ms": timestamp_ms, "dlq": headers_dict})
        self.log.append(("dlq", int(headers_dict["dlq.offset"])))

    def offsets(self, stage: str | None = None) -> list[int]:
        return [int(m["dlq"]["dlq.offset"]) for m in self.sent if stage is None or m["dlq"]["dlq.stage"] == stage]


class FakeOutcomes:
    """The outcomes topic: run id -> what was done with it (compacted: the last write wins)."""

    topic = f"{DLQ}.outcomes"

    def __init__(self) -> None:
        self.recorded: dict[str, str] = {}

    def remember(self, run_id: str, status: str) -> None:
        self.recorded[run_id] = status

    async def outcome(self, run_id: str) -> str | None:
        return self.recorded.get(run_id)

    async def cancelled_as_duplicates(self) -> set[str]:
        return {run_id for run_id, done in self.recorded.items() if done == DUPLICATE}

    async def record(self, run_id: str, status: str) -> None:
        self.recorded[run_id] = status


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A `Delivery` over fakes; the harness is its consumer too (`service.delivery.ConsumerLink`)."""

    def __init__(self, registry: CollectorRegistry, routes: RouteTable | None = None,
                 delivery: dict[str, Any] | None = None, outcomes: FakeOutcomes | None = None,
                 schema_registry: Any = None, transactions: Any = None, **route: Any) -> None:
        self.log: list[tuple[str, Any]] = []
        self.client = FakeDagster(self.log)
        self.sink = FakeSink(self.log)
        self.registry = registry
        self.clock = Clock()
        policy = {"max_records": 3, "max_bytes": 1_000_000, "max_wait_s": 5.0, **route}
        self.routes = routes or RouteTable({"orders": Route("orders", JOB, **policy)})
        self.owned = True  # what the group coordinator answers the fencing commit
        self.fenced_at: list[tuple[TP, int]] = []
        self.paused: list[tuple[set[TP], bool]] = []
        self.read_back: dict[tuple[int, int], list[Record]] = {}
        self.outcomes = outcomes or FakeOutcomes()
        settings = DeliverySettings(**{"group_id": GROUP, "dlq_topic": DLQ, "max_message_bytes": 10_000,
                                       "retry_max_delay_s": 0.001, "route_retry_max_delay_s": 0.001,
                                       **(delivery or {})})
        links = Links(self, self.sink, self.outcomes, self._read_range, on_fatal=self._fatal,
                      registry=schema_registry, transactions=transactions)
        self.delivery = Delivery(
            settings, self.routes, self.client, links, Metrics(registry),  # type: ignore[arg-type]
            clock=self.clock, wall_clock=lambda: RECORD_TIME_S,  # the records' timestamp: no arrival credit
        )
        self.commit_locks: dict[TP, asyncio.Lock] = {}
        self.fed: dict[int, list[int]] = {}
        self.done: dict[int, int] = {}

    async def fence(self, tp: TP, offset: int) -> bool:
        self.fenced_at.append((tp, offset))
        return self.owned

    def pause(self, tps: set[TP]) -> None:
        self.paused.append((set(tps), True))

    def committed(self, tp: TP, offset: int) -> None:
        self.log.append(("committed", (tp.partition, offset)))

    @contextlib.asynccontextmanager
    async def committing(self, tp: TP) -> AsyncIterator[None]:
        """One commit of a partition at a time, as the consumer's (`service.consumer.Consumer.committing`)."""
        async with self.commit_locks.setdefault(tp, asyncio.Lock()):
            yield

    def resume(self, tps: set[TP]) -> None:
        self.paused.append((set(tps), False))

    async def _read_range(self, topic: str, partition: int, start: int, end: int) -> list[Record]:
        return self.read_back.get((start, end), [])

    async def _fatal(self, exc: BaseException) -> None:
        raise AssertionError(f"a lane failed: {exc!r}")

    def record(self, offset: int, value: bytes | None = None, partition: int = 0, **kw: Any) -> Record:
        record = make_record(offset, partition=partition, timestamp_ms=TIMESTAMP_MS,
                             value=value if value is not None else b'{"n": %d}' % offset, **kw)
        record.epoch = self.delivery.epoch(record.tp)
        return record

    def mark_done(self, tp: TP, next_offset: int) -> None:
        assert next_offset >= self.done.get(tp.partition, 0), "the committable offset went back"
        self.done[tp.partition] = next_offset
        self.log.append(("done", (tp.partition, next_offset)))

    async def deliver(self, *records: Record) -> None:
        """One fetched chunk of one partition, as the consumer hands it over (stamped with its epoch)."""
        for record in records:
            record.epoch = record.epoch or self.delivery.epoch(record.tp)
            self.fed.setdefault(record.partition, []).append(record.offset)
        await self.delivery.on_records(records)

    async def feed(self, *offsets: int, partition: int = 0) -> None:
        await self.deliver(*(self.record(offset, partition=partition) for offset in offsets))

    async def settle(self, timeout_s: float = 2.0) -> bool:
        results = [await lane.join(timeout_s) for p in self.delivery.partitions for lane in p.lanes]
        return all(results)

    def acked(self, partition: int = 0) -> list[int]:
        """The fed offsets of `partition` that its committable offset now covers."""
        return [o for o in self.fed.get(partition, []) if o < self.done.get(partition, 0)]

    def launched(self) -> list[tuple[int, int]]:
        return [e[1] for e in self.log if e[0] == "launch"]

    def sample(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def assert_acks_follow_their_launch_or_dlq(self) -> None:
        """Partition 0's committable offset never passes a fed record not yet launched or dead-lettered."""
        covered: set[int] = set()
        for kind, what in self.log:
            if kind == "launch":
                covered.update(range(what[0], what[1] + 1))
            elif kind == "dlq":
                covered.add(what)
            elif kind == "done" and what[0] == 0:
                pending = [o for o in self.fed.get(0, []) if o < what[1] and o not in covered]
                assert not pending, f"offsets {pending} committable before their launch or DLQ: {self.log}"

    async def close(self) -> None:
        for partition in self.delivery.partitions:
            with contextlib.suppress(Exception):
                await self.delivery.partitions.drop(partition)


@pytest.fixture
async def make_harness(registry: CollectorRegistry) -> AsyncIterator[Callable[..., Harness]]:
    harnesses: list[Harness] = []

    def make(routes: RouteTable | None = None, delivery: dict[str, Any] | None = None, **route: Any) -> Harness:
        harness = Harness(registry, routes, delivery, **route)
        harnesses.append(harness)
        return harness

    yield make
    for harness in harnesses:
        await harness.close()


async def test_batches_are_launched_and_then_acked(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    await h.feed(0, 1, 2, 3, 4, 5, 6)
    assert await h.settle()
    assert h.launched() == [(0, 2), (3, 5)]
    assert h.acked() == [0, 1, 2, 3, 4, 5]
    h.assert_acks_follow_their_launch_or_dlq()
    config, tags = h.client.launches[0]
    assert tags["kafka/batch_id"] == batch_id("orders", 0, 0, 2)
    assert tags["kafka/consumer_group"] == GROUP
    assert [r["offset"] for r in json.loads(config["ops"]["read_batch"]["config"]["records_json"])] == [0, 1, 2]
    assert h.sink.sent == []
    assert h.sample("kafka_dagster_messages_consumed_total", topic="orders") == 7
    assert h.sample("kafka_dagster_batches_total", topic="orders", reason=RECORDS) == 2
    assert h.sample("kafka_dagster_batch_records_count", topic="orders") == 2
    assert h.sample("kafka_dagster_batch_records_sum", topic="orders") == 6
    assert h.sample("kafka_dagster_run_launches_total", dagster_job=JOB, result="LaunchRunSuccess") == 2
    assert h.sample("kafka_dagster_run_launch_duration_seconds_count", topic="orders") == 2
    assert h.sample("kafka_dagster_fence_duration_seconds_count") == 2  # one ownership proof per launch
    assert h.sample("kafka_dagster_event_to_launch_seconds_count", topic="orders") == 2
    assert h.sample("kafka_dagster_dagster_up") == 1


async def test_tick_closes_a_batch_after_max_wait(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    await h.feed(0, 1)
    h.clock.now += 4.9
    await h.delivery.tick()
    assert await h.settle()
    assert h.launched() == [] and h.acked() == []
    h.clock.now += 0.1
    await h.delivery.tick()
    assert await h.settle()
    assert h.launched() == [(0, 1)]
    assert h.acked() == [0, 1]
    assert h.sample("kafka_dagster_batches_total", topic="orders", reason=TIME) == 1


async def test_poison_record_splits_the_batch_and_is_dead_lettered_at_decode(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=10)
    poison = h.record(2, value=b"\xff not utf-8", key=b"k-2",
                      headers=[("trace", b"t-1")])
    await h.deliver(h.record(0), h.record(1), poison, h.record(3), h.record(4))  # one fetched chunk
    h.clock.now += 5
    await h.delivery.tick()
    assert await h.settle()
    assert h.launched() == [(0, 1), (3, 4)]
    [letter] = h.sink.sent
    assert (letter["topic"], letter["key"], letter["value"], letter["timestamp_ms"]) == (
        DLQ, b"k-2", b"\xff not utf-8", TIMESTAMP_MS)
    assert letter["headers"][0] == ("trace", b"t-1")
    assert letter["dlq"]["dlq.stage"] == "decode"
    assert letter["dlq"]["dlq.route"] == "orders"  # the route it was dead-lettered for
    assert letter["dlq"]["dlq.error.class"] == "NotUtf8"
    assert (letter["dlq"]["dlq.topic"], letter["dlq"]["dlq.partition"], letter["dlq"]["dlq.offset"]) == (
        "orders", "0", "2")
    assert [e for e in h.log if e[0] != "done"] == [("launch", (0, 1)), ("dlq", 2), ("launch", (3, 4))]
    assert h.acked() == [0, 1, 2, 3, 4]
    h.assert_acks_follow_their_launch_or_dlq()
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="decode") == 1
    # The split batch is counted under batching.SPLIT ("split"), a reason the contract does not list.
    assert h.sample("kafka_dagster_batches_total", topic="orders", reason=SPLIT) == 1
    assert h.sample("kafka_dagster_batches_total", topic="orders", reason=TIME) == 1


@pytest.mark.parametrize(
    ("value", "error_class"),
    [(b"", "InvalidJson"), (b"{nope", "InvalidJson")],
)
async def test_each_decode_failure_is_dead_lettered_alone(
        make_harness: Callable[..., Harness], value: bytes, error_class: str) -> None:
    h = make_harness()
    await h.deliver(h.record(0, value=value))
    assert await h.settle()
    assert h.sink.offsets("decode") == [0]
    assert h.sink.sent[0]["dlq"]["dlq.error.class"] == error_class
    assert h.acked() == [0]
    assert h.launched() == []


async def test_null_value_is_dead_lettered_at_decode(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    record = h.record(0)
    record.value = None
    await h.deliver(record)
    assert await h.settle()
    [letter] = h.sink.sent
    assert letter["value"] is None
    assert (letter["dlq"]["dlq.stage"], letter["dlq"]["dlq.error.class"]) == ("decode", "NullValue")


async def test_schema_violation_is_dead_lettered_at_validate(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(schema={"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}})
    await h.feed(0)
    await h.deliver(h.record(1, value=b'{"n": "one"}'))
    await h.feed(2, 3)
    h.clock.now += 5
    await h.delivery.tick()
    assert await h.settle()
    assert h.launched() == [(0, 0), (2, 3)]
    [letter] = h.sink.sent
    assert letter["dlq"]["dlq.stage"] == "validate"
    assert letter["dlq"]["dlq.error.class"] == "SchemaViolation"
    assert "at n" in letter["dlq"]["dlq.error.message"]
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="validate") == 1


async def test_records_at_or_below_the_covered_offset_are_acked_without_launching(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    for start, end in [(0, 2), (3, 4)]:
        h.client.runs.append(RunInfo(f"old-{start}", "SUCCESS", JOB, {
            "kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": GROUP, "kafka/route": "orders",
            "kafka/offset_start": str(start), "kafka/offset_end": str(end)}))
    # A run of another consumer group and one of another partition do not count.
    h.client.runs.append(RunInfo("other-group", "SUCCESS", JOB, {
        "kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": "other",
        "kafka/offset_start": "5", "kafka/offset_end": "99"}))
    h.client.runs.append(RunInfo("other-partition", "SUCCESS", JOB, {
        "kafka/topic": "orders", "kafka/partition": "1", "kafka/consumer_group": GROUP, "kafka/route": "orders",
        "kafka/offset_start": "0", "kafka/offset_end": "99"}))
    await h.feed(1, 2, 3, 4)
    assert await h.settle()
    assert h.acked() == [1, 2, 3, 4]
    assert h.launched() == []
    await h.feed(5, 6, 7)
    assert await h.settle()
    assert h.launched() == [(5, 7)]
    assert h.acked() == [1, 2, 3, 4, 5, 6, 7]
    assert h.client.find_calls == [
        {"kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": GROUP, "kafka/route": "orders"}]
    assert h.sink.sent == []


async def test_a_chunk_straddling_the_covered_offset_launches_only_what_is_new(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.client.runs.append(RunInfo("old", "SUCCESS", JOB, {
        "kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": GROUP, "kafka/route": "orders",
        "kafka/offset_start": "0", "kafka/offset_end": "2"}))
    await h.feed(1, 2, 3, 4, 5)
    assert h.acked() == [1, 2]  # committable at once: an earlier run holds them
    assert await h.settle()
    assert h.launched() == [(3, 5)]
    assert h.acked() == [1, 2, 3, 4, 5]


async def test_partitions_are_reconciled_as_soon_as_they_are_assigned(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=1)
    h.delivery.on_assigned([TP("orders", 0), TP("orders", 1), TP("not-routed", 0)])
    await asyncio.sleep(0)
    assert sorted(c["kafka/partition"] for c in h.client.find_calls) == ["0", "1"]
    await h.feed(0, partition=0)
    assert await h.settle()
    assert h.launched() == [(0, 0)]
    assert len(h.client.find_calls) == 2  # the first chunk used the reconcile already under way


async def test_a_revoke_cancels_a_reconcile_still_waiting_for_dagster(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.client.find_failures = [DagsterUnavailable("down")] * 1000
    h.delivery.on_assigned([TP("orders", 0)])
    owned = h.delivery.partitions.get(TP("orders", 0))
    assert owned is not None
    task = owned.shares[0].reconcile
    assert task is not None
    await asyncio.sleep(0)  # the reconcile's first step: it asks Dagster and starts backing off
    assert h.client.find_calls
    await h.delivery.on_revoked([TP("orders", 0)], timeout_s=1.0)
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert list(h.delivery.partitions) == []


async def test_reconciliation_is_per_partition(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=1)
    h.client.runs.append(RunInfo("old", "SUCCESS", JOB, {
        "kafka/topic": "orders", "kafka/partition": "1", "kafka/consumer_group": GROUP, "kafka/route": "orders",
        "kafka/offset_start": "0", "kafka/offset_end": "0"}))
    await h.feed(0, partition=0)
    await h.feed(0, 1, partition=1)
    assert await h.settle()
    assert h.launched() == [(0, 0), (1, 1)]
    assert [c["kafka/partition"] for c in h.client.find_calls] == ["0", "1"]
    assert h.acked(0) == [0]
    assert h.acked(1) == [0, 1]


async def test_transient_reconcile_failure_is_retried(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=1)
    h.client.find_failures = [DagsterUnavailable("down"), DagsterError("PythonError", "boom")]
    await h.feed(0)
    assert await h.settle()
    assert h.launched() == [(0, 0)]
    assert len(h.client.find_calls) == 3
    assert h.sink.sent == []


ROUTE_FAILURES = [
    (LaunchRejected("RunConfigValidationInvalid", "no good"), "run_config_invalid"),
    (LaunchRejected("PipelineNotFoundError", "no good"), "job_not_found"),
    (LaunchRejected("InvalidSubsetError", "no good"), "launch_rejected"),
    (LaunchRejected("UnauthorizedError", "no good"), "unauthorized"),
    (Unauthorized("Dagster answered HTTP 401"), "unauthorized"),
    (RequestRejected("Dagster answered HTTP 404"), "bad_request"),
]


@pytest.mark.parametrize(("failure", "reason"), ROUTE_FAILURES)
async def test_a_refused_launch_pauses_the_route_and_retries_the_same_batch(
        make_harness: Callable[..., Harness], failure: Exception, reason: str) -> None:
    h = make_harness()
    h.client.script = [failure, failure]
    await h.feed(0, 1, 2, 3, 4, 5)
    assert await h.settle()
    assert h.launched() == [(0, 2), (3, 5)]
    assert h.sink.sent == []
    assert h.acked() == [0, 1, 2, 3, 4, 5]
    h.assert_acks_follow_their_launch_or_dlq()
    assert h.sample("kafka_dagster_route_paused", route="orders", reason=reason) == 0  # paused, then resumed
    assert h.paused == [({TP("orders", 0)}, True), ({TP("orders", 0)}, False)]
    assert h.client.forgotten == [JOB, JOB]  # the job is looked up again: a deploy may have moved it
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="launch") is None


async def test_a_paused_route_says_why_until_it_is_fixed(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.client.gate = asyncio.Event()
    h.client.script = [LaunchRejected("PipelineNotFoundError", "job process_orders not found")] * 3
    await h.feed(0, 1, 2)
    h.client.gate.set()

    async def paused() -> None:
        while not h.delivery.pauses.paused:
            await asyncio.sleep(0)

    await asyncio.wait_for(paused(), 2)
    [(route, status)] = h.delivery.pauses.status().items()
    assert route == "orders" and status["reason"] == "job_not_found"
    assert "process_orders" in str(status["error"])
    assert h.sample("kafka_dagster_route_paused", route="orders", reason="job_not_found") == 1
    assert h.acked() == []
    assert await h.settle()
    assert h.delivery.pauses.status() == {}
    assert h.launched() == [(0, 2)]


@pytest.mark.parametrize(("failure", "typename"), [(ROUTE_FAILURES[0][0], "RunConfigValidationInvalid"),
                                                   (Unauthorized("HTTP 401"), "UnauthorizedError")])
async def test_a_route_that_asks_for_it_dead_letters_refused_launches(
        make_harness: Callable[..., Harness], failure: Exception, typename: str) -> None:
    h = make_harness(on_launch_rejected="dead_letter")
    h.client.script = [failure]
    await h.feed(0, 1, 2, 3, 4, 5)
    assert await h.settle()
    assert h.launched() == [(3, 5)]
    assert h.sink.offsets("launch") == [0, 1, 2]
    assert {m["dlq"]["dlq.error.class"] for m in h.sink.sent} == {typename}
    assert all("dlq.run_id" not in m["dlq"] for m in h.sink.sent)
    assert h.acked() == [0, 1, 2, 3, 4, 5]
    h.assert_acks_follow_their_launch_or_dlq()
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="launch") == 3
    assert h.sample("kafka_dagster_run_launches_total", dagster_job=JOB, result=typename) == 1


async def test_an_unknown_job_pauses_the_route_until_it_is_deployed(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=2)
    h.client.resolve_failures = [LaunchRejected("PipelineNotFoundError", "job process_orders not found")] * 2
    await h.feed(0, 1)
    assert await h.settle()
    assert h.launched() == [(0, 1)]
    assert h.sink.sent == []
    assert h.acked() == [0, 1]


async def test_a_batch_refused_for_its_size_is_launched_with_its_offset_range_only(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.client.script = [BatchTooLarge("HTTP 413")]
    await h.feed(0, 1, 2)
    assert await h.settle()
    [(config, _)] = h.client.launches
    batch = config["ops"]["read_batch"]["config"]
    assert "records_json" not in batch and (batch["offset_start"], batch["offset_end"]) == (0, 2)
    assert h.sink.sent == [] and h.acked() == [0, 1, 2]


async def test_dagster_errors_many_times_in_a_row_pause_the_route_never_dead_letter(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.client.script = [DagsterError("PythonError", "database is locked")] * 12
    await h.feed(0, 1, 2)
    assert await h.settle()
    assert h.launched() == [(0, 2)]
    assert h.sink.sent == []
    assert h.sample("kafka_dagster_route_paused", route="orders", reason="dagster_error") == 0


async def test_a_worker_that_lost_the_partition_drops_its_batches_and_launches_nothing(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    await h.feed(0, 1, 2, 3, 4, 5, 6)
    assert await h.settle()
    assert h.launched() == [(0, 2), (3, 5)]
    assert h.fenced_at == [(TP("orders", 0), 0), (TP("orders", 0), 3)]
    h.owned = False  # the group rebalanced without this worker (frozen past its session timeout)
    await h.feed(7, 8)
    assert await h.settle()
    await h.delivery.on_revoked([TP("orders", 0)], timeout_s=1.0)
    assert h.launched() == [(0, 2), (3, 5)]
    assert h.acked() == [0, 1, 2, 3, 4, 5]
    assert h.sample("kafka_dagster_fenced_batches_total", topic="orders") == 1


async def test_records_of_a_fenced_partition_are_ignored_until_it_is_assigned_again(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=1)
    h.owned = False
    await h.feed(0)
    assert await h.settle()
    await h.feed(1)
    assert h.launched() == [] and h.acked() == []
    await h.delivery.on_revoked([TP("orders", 0)], timeout_s=1.0)
    h.owned = True
    h.delivery.on_assigned([TP("orders", 0)])
    await h.feed(0)
    assert await h.settle()
    assert h.launched() == [(0, 0)]


async def test_a_lost_answer_whose_late_run_appears_is_settled_to_one_run(
        make_harness: Callable[..., Harness]) -> None:
    """The webserver created run-0 late; the retry's look-up missed it and launched run-1: one is canceled."""
    h = make_harness()
    h.client.script = [LOST]
    batch_lookups: list[dict[str, str]] = []
    original = h.client.find_runs

    async def find_runs_missing_the_late_run(tags: dict[str, str], job: str | None = None,
                                             limit: int = 100) -> list[RunInfo]:
        if "kafka/batch_id" in tags:
            batch_lookups.append(tags)
            if len(batch_lookups) == 1:
                return []  # the race: the first launch is still being created when the retry looks
        return await original(tags, job, limit)

    h.client.find_runs = find_runs_missing_the_late_run  # type: ignore[method-assign]
    await h.feed(0, 1, 2)
    assert await h.settle()
    assert len(h.client.launches) == 2
    assert h.client.terminated == ["run-1"]  # the oldest, first in Dagster's queue, is kept
    assert h.sample("kafka_dagster_duplicate_runs_cancelled_total", dagster_job=JOB) == 1
    assert h.acked() == [0, 1, 2]
    # The canceled duplicate's CANCELED is no failure of the data: no copy to the DLQ.
    await h.delivery.watcher.poll()
    assert h.sink.sent == []


async def test_a_dead_letter_the_broker_refuses_pauses_the_route_with_reason_dlq_write(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.sink.failures = [KafkaRejected("MessageSizeTooLargeError")] * 2
    await h.deliver(h.record(0, value=b"not json"))
    assert await h.settle()
    assert h.sink.offsets("decode") == [0]
    assert h.acked() == [0]
    assert h.sample("kafka_dagster_route_paused", route="orders", reason="dlq_write") == 0
    assert h.paused == [({TP("orders", 0)}, True), ({TP("orders", 0)}, False)]


@pytest.mark.parametrize(
    ("failure", "result"),
    [
        (DagsterUnavailable("ConnectError talking to Dagster"), "transport_error"),
        (DagsterUnavailable("Dagster answered HTTP 503"), "transport_error"),
        (DagsterError("PythonError", "database is locked"), "PythonError"),
        (RateLimited("Dagster answered HTTP 429", 0.001), "transport_error"),
    ],
)
async def test_transient_launch_failures_are_retried_never_dead_lettered(
        make_harness: Callable[..., Harness], failure: TransientError, result: str) -> None:
    h = make_harness()
    h.client.script = [failure, failure, failure]
    await h.feed(0, 1, 2)
    assert await h.settle()
    assert h.launched() == [(0, 2)]
    assert h.sink.sent == []
    assert h.acked() == [0, 1, 2]
    h.assert_acks_follow_their_launch_or_dlq()
    assert h.sample("kafka_dagster_run_launches_total", dagster_job=JOB, result=result) == 3
    assert h.sample("kafka_dagster_run_launches_total", dagster_job=JOB, result="LaunchRunSuccess") == 1
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="launch") is None
    assert h.sample("kafka_dagster_dagster_up") == 1


async def test_transient_resolve_failure_is_retried(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=1)
    h.client.resolve_failures = [DagsterUnavailable("down"), DagsterUnavailable("down")]
    await h.feed(0)
    assert await h.settle()
    assert h.launched() == [(0, 0)]
    assert h.sink.sent == []


async def test_a_launch_whose_answer_was_lost_is_not_launched_again(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.client.script = [LOST]
    await h.feed(0, 1, 2)
    assert await h.settle()
    assert h.launched() == [(0, 2)]
    assert len(h.client.launches) == 1
    assert {"kafka/batch_id": batch_id("orders", 0, 0, 2)} in h.client.find_calls
    assert h.acked() == [0, 1, 2]
    assert h.sink.sent == []


async def test_acks_wait_for_the_launch(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.client.gate = asyncio.Event()
    await h.feed(0, 1, 2, 3)
    assert not await h.settle(timeout_s=0.05)
    assert h.acked() == []
    h.client.gate.set()
    assert await h.settle()
    assert h.acked() == [0, 1, 2]
    h.assert_acks_follow_their_launch_or_dlq()


async def test_acks_wait_for_the_dead_letter_write(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.sink.failures = [DagsterUnavailable("broker away"), TransientError("again")]
    await h.deliver(h.record(0, value=b"not json"))
    assert await h.settle()
    assert h.sink.offsets("decode") == [0]
    assert h.acked() == [0]
    h.assert_acks_follow_their_launch_or_dlq()
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="decode") == 1


async def test_revoke_launches_open_batches_but_drops_their_acks(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    await h.feed(0, 1)
    await h.delivery.on_revoked([TP("orders", 0)], timeout_s=2.0)
    assert h.launched() == [(0, 1)]
    assert h.acked() == []
    assert h.sample("kafka_dagster_batches_total", topic="orders", reason=REVOKE) == 1
    assert TP("orders", 0) not in h.delivery.partitions


async def test_unauthorized_while_reconciling_pauses_the_route_and_dead_letters_nothing(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=1)
    h.client.find_failures = [Unauthorized("Dagster answered HTTP 401"), RequestRejected("HTTP 404")]
    await h.feed(0)
    await h.feed(1)
    assert await h.settle()
    assert h.sink.sent == []
    assert h.launched() == [(0, 0), (1, 1)]
    assert len(h.client.find_calls) == 3  # asked until Dagster answered, then cached
    assert h.acked() == [0, 1]
    h.assert_acks_follow_their_launch_or_dlq()


async def test_json_over_a_bound_is_dead_lettered_at_validate(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=10, delivery={"max_message_bytes": 1_000_000})
    deep = b"[" * 40 + b"]" * 40
    wide = b"{" + b",".join(b'"k%d": 0' % i for i in range(10_001)) + b"}"
    for offset, value in enumerate([b'{"n": 0}', deep, wide, b'{"n": 3}']):
        await h.deliver(h.record(offset, value))
    await h.delivery.tick()
    h.clock.now += 10
    await h.delivery.tick()
    assert await h.settle()
    assert h.sink.offsets("validate") == [1, 2]
    assert [m["dlq"]["dlq.error.class"] for m in h.sink.sent] == ["JsonTooDeep", "TooManyKeys"]
    assert h.launched() == [(0, 0), (3, 3)]


async def test_the_timer_sleeps_until_the_next_deadline_and_no_longer_than_a_tick(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    assert h.delivery.seconds_to_next_deadline(0.05) == 0.05  # nothing open
    await h.feed(0)
    h.clock.now += 4.97
    assert h.delivery.seconds_to_next_deadline(0.05) == pytest.approx(0.03)
    h.clock.now += 1
    assert h.delivery.seconds_to_next_deadline(0.05) == 0.0


def _failed_run(run_id: str, start: int, end: int) -> RunInfo:
    return RunInfo(run_id, "FAILURE", JOB, {
        "kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": GROUP, "kafka/route": "orders",
        "kafka/offset_start": str(start), "kafka/offset_end": str(end), "kafka/batch_id": f"b-{run_id}",
        FAILURE_REASON_TAG: STEP_FAILURE})


def ended(run: RunInfo, status: str, reason: str | None = None) -> RunInfo:
    """`run` as Dagster shows it once it ended `status` (a FAILURE with `dagster/failure_reason` = `reason`)."""
    tags = dict(run.tags) | ({FAILURE_REASON_TAG: reason} if reason else {})
    return RunInfo(run.run_id, status, run.job, tags, run.creation_time)


async def test_a_run_that_failed_while_no_worker_watched_is_copied_once_by_the_next_owner(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=1)
    h.client.runs.append(_failed_run("died-with-its-worker", 0, 2))
    h.read_back[(0, 2)] = [h.record(offset) for offset in range(3)]
    await h.feed(0, 1, 2, 3)  # the next owner re-reads from the committed offset 0
    assert await h.settle()
    assert h.launched() == [(3, 3)]  # 0-2 are covered by the failed run
    await h.delivery.watcher.poll()
    assert h.sink.offsets("run") == [0, 1, 2]
    assert {m["dlq"]["dlq.run_id"] for m in h.sink.sent} == {"died-with-its-worker"}
    assert h.outcomes.recorded == {"died-with-its-worker": "FAILURE"}

    later = Harness(CollectorRegistry(), outcomes=h.outcomes, max_records=1)  # the owner after that one: the
    later.client.runs.append(_failed_run("died-with-its-worker", 0, 2))  # outcome is recorded
    await later.feed(0, 1, 2, 3)
    assert await later.settle()
    await later.delivery.watcher.poll()
    assert later.sink.sent == []
    await later.close()


async def test_a_watched_run_that_fails_is_recorded_as_handled(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    await h.feed(0, 1, 2)
    assert await h.settle()
    h.read_back[(0, 2)] = [h.record(offset) for offset in range(3)]
    h.client.runs = [ended(r, "FAILURE", STEP_FAILURE) for r in h.client.runs]
    await h.delivery.watcher.poll()
    assert h.sink.offsets("run") == [0, 1, 2]
    assert h.outcomes.recorded == {"run-0": "FAILURE"}


async def test_a_route_paused_for_its_code_location_resumes_when_it_loads_not_at_its_next_backoff(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness(delivery={"location_probe_s": 0.01, "route_retry_base_s": 600.0,  # the backoff alone:
                               "route_retry_max_delay_s": 600.0})  # minutes
    gone = LaunchRejected("PipelineNotFoundError", "no job named 'process_orders': code location failed to load",
                          hint=CODE_LOCATION_HINT, reason=CODE_LOCATION_ERROR)
    h.client.script = [gone]
    h.client.broken = [{"loc": "grpc: connection refused"}] * 3  # then {}: loaded again
    await h.feed(0, 1, 2)
    assert await h.settle(timeout_s=5.0)
    assert h.launched() == [(0, 2)]
    assert h.client.broken == []  # it looked three times, then saw the location back
    assert h.sample("kafka_dagster_route_paused", route="orders", reason=CODE_LOCATION_ERROR) == 0


async def test_a_code_location_that_failed_to_load_pauses_its_route_until_it_loads(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.client.gate = asyncio.Event()
    down = DagsterUnavailable("Dagster answered HTTP 500", 500)
    h.client.script = [down, down]
    h.client.broken = [{"orders_location": "ModuleNotFoundError: No module named 'orders'\n  ..."}, {}]
    await h.feed(0, 1, 2)
    h.client.gate.set()
    assert await h.settle()
    assert h.launched() == [(0, 2)]
    assert h.sink.sent == []
    assert h.paused == [({TP("orders", 0)}, True), ({TP("orders", 0)}, False)]
    assert h.sample("kafka_dagster_route_paused", route="orders", reason="code_location_error") == 0


async def _relaunched(h: Harness) -> None:
    """Wait for the relaunches the last poll started."""
    await asyncio.gather(*h.delivery.failed_runs.relaunches())


async def test_the_sweep_keeps_the_run_the_launch_kept_and_nothing_is_left_without_a_run(
        make_harness: Callable[..., Harness]) -> None:
    """Issue 21: a sweep after the launch's decision chose the cancelled duplicate and cancelled the other."""
    h = make_harness()
    h.client.script = [LOST]
    lookups = 0
    original = h.client.find_runs

    async def late_run_missed_once(tags: dict[str, str], job: str | None = None, limit: int = 100) -> list[RunInfo]:
        nonlocal lookups
        if "kafka/batch_id" in tags:
            lookups += 1
            if lookups == 1:
                return []
        return await original(tags, job, limit)

    h.client.find_runs = late_run_missed_once  # type: ignore[method-assign]
    await h.feed(0, 1, 2)
    assert await h.settle()
    for _ in range(3):
        await h.delivery.duplicates.sweep()
        await h.delivery.watcher.poll()
    assert h.client.terminated == ["run-1"]
    assert [r.status for r in h.client.runs] == ["QUEUED", "CANCELED"]
    assert h.outcomes.recorded == {"run-1": DUPLICATE}
    assert "run-0" in h.delivery.watcher.inflight and h.sink.sent == []


async def test_a_run_that_failed_for_the_system_is_launched_again_not_dead_lettered(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness(delivery={"relaunch_base_s": 0.0})
    await h.feed(0, 1, 2)
    assert await h.settle()
    h.read_back[(0, 2)] = [h.record(offset) for offset in range(3)]
    h.client.runs = [ended(r, "FAILURE", "JOB_INITIALIZATION_FAILURE") for r in h.client.runs]
    await h.delivery.watcher.poll()
    await _relaunched(h)
    assert h.launched() == [(0, 2), (0, 2)]
    assert h.client.runs[1].tags["kafka/batch_id"] == h.client.runs[0].tags["kafka/batch_id"]
    assert h.sink.sent == []
    assert h.outcomes.recorded == {"run-0": "RELAUNCHED"}
    assert h.sample("kafka_dagster_runs_relaunched_total", dagster_job=JOB) == 1
    h.client.runs[1] = ended(h.client.runs[1], "SUCCESS")
    await h.delivery.watcher.poll()
    assert h.delivery.watcher.inflight == {} and h.sink.sent == []


async def test_a_batch_that_keeps_failing_for_the_system_is_dead_lettered_once_with_the_reason(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness(delivery={"relaunch_base_s": 0.0})
    await h.feed(0, 1, 2)
    assert await h.settle()
    h.read_back[(0, 2)] = [h.record(offset) for offset in range(3)]
    for _ in range(MAX_SYSTEM_FAILURES):
        h.client.runs = [ended(r, "FAILURE", "RUN_WORKER_RESTART") if r.status == "QUEUED" else r
                         for r in h.client.runs]
        await h.delivery.watcher.poll()
        await _relaunched(h)
    assert len(h.launched()) == MAX_SYSTEM_FAILURES
    assert h.sink.offsets("run") == [0, 1, 2]
    reasons = {m["dlq"]["dlq.error.message"] for m in h.sink.sent}
    assert len(reasons) == 1 and f"{MAX_SYSTEM_FAILURES} runs failed" in reasons.pop()
    await h.delivery.watcher.poll()
    assert len(h.sink.sent) == 3


async def test_a_batch_whose_runs_the_duplicate_rule_all_cancelled_is_launched_again(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    await h.feed(0, 1, 2)
    assert await h.settle()
    h.read_back[(0, 2)] = [h.record(offset) for offset in range(3)]
    first = h.client.runs[0]
    h.client.runs.append(RunInfo("late", "QUEUED", JOB, dict(first.tags), first.creation_time + 1))
    h.outcomes.recorded = {"run-0": DUPLICATE, "late": DUPLICATE}  # two deciders that disagreed (a race)
    h.client.runs = [ended(r, "CANCELED") for r in h.client.runs]
    await h.delivery.watcher.poll()
    await _relaunched(h)
    assert h.launched() == [(0, 2), (0, 2)]
    assert h.sink.sent == []
    assert h.outcomes.recorded == {"run-0": DUPLICATE, "late": DUPLICATE}  # a duplicate stays one


async def test_a_run_an_operator_cancels_puts_its_records_in_the_dlq(make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    await h.feed(0, 1, 2)
    assert await h.settle()
    h.read_back[(0, 2)] = [h.record(offset) for offset in range(3)]
    h.client.runs = [ended(r, "CANCELED") for r in h.client.runs]
    await h.delivery.watcher.poll()
    assert h.launched() == [(0, 2)]
    assert h.sink.offsets("run") == [0, 1, 2]
    assert {m["dlq"]["dlq.error.class"] for m in h.sink.sent} == {"RunCanceled"}
    assert h.outcomes.recorded == {"run-0": "CANCELED"}


async def test_a_new_owner_launches_again_a_batch_a_race_left_without_a_run(
        make_harness: Callable[..., Harness]) -> None:
    """Two deciders raced and cancelled both runs of a batch; their worker died before it noticed."""
    h = make_harness(max_records=3)
    cancelled = [ended(_failed_run(run_id, 0, 2), "CANCELED") for run_id in ("a", "b")]
    h.client.runs.extend(RunInfo(r.run_id, r.status, r.job, r.tags | {"kafka/batch_id": "b-x"}, float(i))
                         for i, r in enumerate(cancelled))
    h.outcomes.recorded = {"a": DUPLICATE, "b": DUPLICATE}
    h.read_back[(0, 2)] = [h.record(offset) for offset in range(3)]
    await h.feed(0, 1, 2)
    assert await h.settle()
    assert h.launched() == []  # covered by the batch's runs: settled by the rule, not by a new batch
    await h.delivery.watcher.poll()
    await _relaunched(h)
    assert h.launched() == [(0, 2)]
    assert h.sink.sent == []


async def test_a_relaunch_the_route_refuses_dead_letters_where_the_route_asks_for_it(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness(delivery={"relaunch_base_s": 0.0}, on_launch_rejected="dead_letter")
    await h.feed(0, 1, 2)
    assert await h.settle()
    h.read_back[(0, 2)] = [h.record(offset) for offset in range(3)]
    h.client.runs = [ended(r, "FAILURE", "RUN_WORKER_RESTART") for r in h.client.runs]
    h.client.script = [LaunchRejected("PipelineNotFoundError", "the job is gone")]
    await h.delivery.watcher.poll()
    await _relaunched(h)
    assert h.launched() == [(0, 2)]
    assert h.sink.offsets("launch") == [0, 1, 2]
    assert h.outcomes.recorded == {"run-0": "DEAD_LETTERED"}


async def test_nothing_is_awaited_between_the_fence_and_the_launch(make_harness: Callable[..., Harness]) -> None:
    """The fencing commit and launch_run are adjacent: no other task runs between them (docs/delivery.md,
    Known limits: a worker frozen exactly between the two could still launch once more)."""
    h = make_harness()
    ran_between: list[bool] = []
    others_ran = False

    def other_task() -> None:
        nonlocal others_ran
        others_ran = True

    fence, launch_run = h.fence, h.client.launch_run

    async def fence_then_yield_to_others(tp: TP, offset: int) -> bool:
        nonlocal others_ran
        owns = await fence(tp, offset)
        others_ran = False
        asyncio.get_running_loop().call_soon(other_task)  # runs at the next suspension, if any
        return owns

    async def launch_run_seeing_others(*args: Any) -> str:
        ran_between.append(others_ran)
        return await launch_run(*args)

    h.fence = fence_then_yield_to_others  # type: ignore[method-assign]
    h.client.launch_run = launch_run_seeing_others  # type: ignore[method-assign]
    await h.feed(0, 1, 2, 3, 4, 5)
    assert await h.settle()
    assert h.launched() == [(0, 2), (3, 5)]
    assert ran_between == [False, False]
