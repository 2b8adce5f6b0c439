"""Delivery with a fake Dagster client and a fake dead-letter sink: launch, skip, dead-letter, retry, commit."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from service.batching import RECORDS, REVOKE, SPLIT, TIME, TP, Record, batch_id
from service.dagster_client import JobSelector, RetryableLaunchError, RunInfo
from service.delivery import Delivery
from service.errors import DagsterUnavailable, LaunchRejected, PermanentError, TransientError
from service.metrics import Metrics
from service.routes import Route
from tests.unit.factories import make_record

JOB = "process_orders"
GROUP = "test-group"
DLQ = "test.dlq"
TIMESTAMP_MS = 1_700_000_000_000

LOST = "lost"  # a launch Dagster performed but whose answer never arrived


class FakeDagster:
    """Stands in for DagsterClient; `script` says what each launch_run call does, in order."""

    def __init__(self, log: list[tuple[str, Any]]) -> None:
        self.log = log
        self.script: list[Any] = []
        self.runs: list[RunInfo] = []
        self.launches: list[tuple[dict[str, Any], dict[str, str]]] = []
        self.find_calls: list[dict[str, str]] = []
        self.find_failures: list[Exception] = []
        self.resolve_failures: list[Exception] = []
        self.gate: asyncio.Event | None = None

    async def resolve_job(self, job: str, location: str | None = None,
                          repository: str | None = None) -> JobSelector:
        if self.resolve_failures:
            raise self.resolve_failures.pop(0)
        return JobSelector("loc", "__repository__", job)

    async def launch_run(self, selector: JobSelector, run_config: dict[str, Any], tags: dict[str, str]) -> str:
        if self.gate is not None:
            await self.gate.wait()
        outcome = self.script.pop(0) if self.script else None
        if isinstance(outcome, Exception):
            raise outcome
        run_id = f"run-{len(self.launches)}"
        self.launches.append((run_config, tags))
        self.runs.append(RunInfo(run_id, "QUEUED", selector.job, dict(tags)))
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


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    def __init__(self, registry: CollectorRegistry, **route: Any) -> None:
        self.log: list[tuple[str, Any]] = []
        self.client = FakeDagster(self.log)
        self.sink = FakeSink(self.log)
        self.registry = registry
        self.clock = Clock()
        policy = {"max_records": 3, "max_bytes": 1_000_000, "max_wait_s": 5.0, **route}
        self.routes = {"orders": Route("orders", JOB, **policy)}
        self.delivery = Delivery(
            self.routes, self.client, self.sink, Metrics(registry),  # type: ignore[arg-type]
            group_id=GROUP, dlq_topic=DLQ, max_message_bytes=10_000,
            retry_max_delay_s=0.001, clock=self.clock, mark_done=self._mark_done,
        )
        self.fed: dict[int, list[int]] = {}
        self.done: dict[int, int] = {}

    def record(self, offset: int, value: bytes | None = None, partition: int = 0, **kw: Any) -> Record:
        return make_record(offset, partition=partition, timestamp_ms=TIMESTAMP_MS,
                           value=value if value is not None else b'{"n": %d}' % offset, **kw)

    def _mark_done(self, tp: TP, next_offset: int) -> None:
        assert next_offset >= self.done.get(tp.partition, 0), "the committable offset went back"
        self.done[tp.partition] = next_offset
        self.log.append(("done", (tp.partition, next_offset)))

    async def deliver(self, *records: Record) -> None:
        """One fetched chunk of one partition, as the consumer hands it over."""
        for record in records:
            self.fed.setdefault(record.partition, []).append(record.offset)
        await self.delivery.on_records(records)

    async def feed(self, *offsets: int, partition: int = 0) -> None:
        await self.deliver(*(self.record(offset, partition=partition) for offset in offsets))

    async def settle(self, timeout_s: float = 2.0) -> bool:
        results = [await lane.join(timeout_s) for lane in list(self.delivery.lanes.values())]
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
        for lane in list(self.delivery.lanes.values()):
            with contextlib.suppress(Exception):
                await lane.close()
        self.delivery.lanes.clear()


@pytest.fixture
async def make_harness(registry: CollectorRegistry) -> AsyncIterator[Callable[..., Harness]]:
    harnesses: list[Harness] = []

    def make(**route: Any) -> Harness:
        harness = Harness(registry, **route)
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
    assert [r["offset"] for r in config["ops"]["read_batch"]["config"]["records"]] == [0, 1, 2]
    assert h.sink.sent == []
    assert h.sample("kafka_dagster_messages_consumed_total", topic="orders") == 7
    assert h.sample("kafka_dagster_batches_total", topic="orders", reason=RECORDS) == 2
    assert h.sample("kafka_dagster_batch_records_count") == 2
    assert h.sample("kafka_dagster_batch_records_sum") == 6
    assert h.sample("kafka_dagster_run_launches_total", job=JOB, result="LaunchRunSuccess") == 2
    assert h.sample("kafka_dagster_run_launch_duration_seconds_count") == 2
    assert h.sample("kafka_dagster_event_to_launch_seconds_count") == 2
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
            "kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": GROUP,
            "kafka/offset_start": str(start), "kafka/offset_end": str(end)}))
    # A run of another consumer group and one of another partition do not count.
    h.client.runs.append(RunInfo("other-group", "SUCCESS", JOB, {
        "kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": "other",
        "kafka/offset_start": "5", "kafka/offset_end": "99"}))
    h.client.runs.append(RunInfo("other-partition", "SUCCESS", JOB, {
        "kafka/topic": "orders", "kafka/partition": "1", "kafka/consumer_group": GROUP,
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
        {"kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": GROUP}]
    assert h.sink.sent == []


async def test_a_chunk_straddling_the_covered_offset_launches_only_what_is_new(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    h.client.runs.append(RunInfo("old", "SUCCESS", JOB, {
        "kafka/topic": "orders", "kafka/partition": "0", "kafka/consumer_group": GROUP,
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
    [task] = h.delivery.reconciles.values()
    await asyncio.sleep(0)  # the reconcile's first step: it asks Dagster and starts backing off
    assert h.client.find_calls
    await h.delivery.on_revoked([TP("orders", 0)], timeout_s=1.0)
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    assert h.delivery.reconciles == {}


async def test_reconciliation_is_per_partition(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=1)
    h.client.runs.append(RunInfo("old", "SUCCESS", JOB, {
        "kafka/topic": "orders", "kafka/partition": "1", "kafka/consumer_group": GROUP,
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
    h.client.find_failures = [DagsterUnavailable("down"), RetryableLaunchError("PythonError", "boom")]
    await h.feed(0)
    assert await h.settle()
    assert h.launched() == [(0, 0)]
    assert len(h.client.find_calls) == 3
    assert h.sink.sent == []


@pytest.mark.parametrize(
    "typename",
    ["RunConfigValidationInvalid", "PipelineNotFoundError", "InvalidSubsetError", "UnauthorizedError"],
)
async def test_rejected_launch_dead_letters_the_whole_batch(
        make_harness: Callable[..., Harness], typename: str) -> None:
    h = make_harness()
    h.client.script = [LaunchRejected(typename, "no good")]
    await h.feed(0, 1, 2, 3, 4, 5)
    assert await h.settle()
    assert h.launched() == [(3, 5)]
    assert h.sink.offsets("launch") == [0, 1, 2]
    assert {m["dlq"]["dlq.error.class"] for m in h.sink.sent} == {typename}
    assert all(m["dlq"]["dlq.error.message"] == f"{typename}: no good" for m in h.sink.sent)
    assert all("dlq.run_id" not in m["dlq"] for m in h.sink.sent)
    assert h.acked() == [0, 1, 2, 3, 4, 5]
    h.assert_acks_follow_their_launch_or_dlq()
    assert h.sample("kafka_dagster_dlq_messages_total", topic="orders", stage="launch") == 3
    assert h.sample("kafka_dagster_run_launches_total", job=JOB, result=typename) == 1
    assert h.sample("kafka_dagster_run_launches_total", job=JOB, result="LaunchRunSuccess") == 1


async def test_unknown_job_dead_letters_at_launch(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=2)
    h.client.resolve_failures = [LaunchRejected("PipelineNotFoundError", "no job named 'process_orders'")]
    await h.feed(0, 1)
    assert await h.settle()
    assert h.launched() == []
    assert h.sink.offsets("launch") == [0, 1]
    assert h.acked() == [0, 1]


@pytest.mark.parametrize(
    ("failure", "result"),
    [
        (DagsterUnavailable("ConnectError talking to Dagster"), "transport_error"),
        (DagsterUnavailable("Dagster answered HTTP 503"), "transport_error"),
        (RetryableLaunchError("PythonError", "database is locked"), "PythonError"),
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
    assert h.sample("kafka_dagster_run_launches_total", job=JOB, result=result) == 3
    assert h.sample("kafka_dagster_run_launches_total", job=JOB, result="LaunchRunSuccess") == 1
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
    assert TP("orders", 0) not in h.delivery.lanes
    assert TP("orders", 0) not in h.delivery.covered


async def test_a_permanent_launch_error_other_than_launch_rejected_does_not_stall_the_partition(
        make_harness: Callable[..., Harness]) -> None:
    # BUG (service/delivery.py, Delivery._launch / _launch_once): only LaunchRejected and TransientError
    # are handled. A plain PermanentError from DagsterClient.execute (HTTP 400/404, or a GraphQL
    # `errors` answer) propagates out of _launch, kills the partition's Lane task (Lane._run re-raises),
    # and from then on nothing of that partition is launched, dead-lettered or acked: the batch is
    # neither in a run nor in the DLQ, and the lane's queue fills until on_record blocks for good.
    # Expected: the batch is dead-lettered at stage `launch` (a permanent failure) and the next batch
    # of the partition is still launched.
    h = make_harness()
    h.client.script = [PermanentError("Dagster answered HTTP 400")]
    await h.feed(0, 1, 2, 3, 4, 5)
    await h.settle(timeout_s=0.2)
    assert h.sink.offsets("launch") == [0, 1, 2]
    assert h.launched() == [(3, 5)]
    assert h.acked() == [0, 1, 2, 3, 4, 5]


async def test_unauthorized_while_reconciling_dead_letters_at_launch_and_asks_again(
        make_harness: Callable[..., Harness]) -> None:
    """A 401 from Dagster (wrong token) cannot pass by retrying: the record goes where a rejected launch goes."""
    h = make_harness(max_records=1)
    h.client.find_failures = [LaunchRejected("UnauthorizedError", "Dagster answered HTTP 401")]
    await h.feed(0)
    await h.feed(1)
    assert await h.settle()
    assert h.sink.offsets("launch") == [0]
    assert h.sink.sent[0]["dlq"]["dlq.error.class"] == "UnauthorizedError"
    assert h.launched() == [(1, 1)]
    assert len(h.client.find_calls) == 2  # not cached: the second chunk reconciled again
    assert h.acked() == [0, 1]
    h.assert_acks_follow_their_launch_or_dlq()


async def test_json_over_a_bound_is_dead_lettered_at_validate(make_harness: Callable[..., Harness]) -> None:
    h = make_harness(max_records=10)
    deep = b"[" * 40 + b"]" * 40
    wide = b"{" + b",".join(b'"k%d": 0' % i for i in range(10_001)) + b"}"
    h.delivery.max_message_bytes = 1_000_000
    for offset, value in enumerate([b'{"n": 0}', deep, wide, b'{"n": 3}']):
        await h.deliver(h.record(offset, value))
    await h.delivery.tick()
    h.clock.now += 10
    await h.delivery.tick()
    assert await h.settle()
    assert h.sink.offsets("validate") == [1, 2]
    assert [m["dlq"]["dlq.error.class"] for m in h.sink.sent] == ["JsonTooDeep", "TooManyKeys"]
    assert h.launched() == [(0, 0), (3, 3)]


async def test_other_permanent_reconcile_failures_still_stop_the_worker(make_harness: Callable[..., Harness]) -> None:
    """Only a refused token is dead-lettered; a malformed answer is a bug to surface, not records to discard."""
    h = make_harness(max_records=1)
    h.client.find_failures = [PermanentError("GraphQL error: Cannot query field")]
    with pytest.raises(PermanentError):
        await h.feed(0)
    assert h.sink.sent == [] and h.acked() == []


async def test_the_timer_sleeps_until_the_next_deadline_and_no_longer_than_a_tick(
        make_harness: Callable[..., Harness]) -> None:
    h = make_harness()
    assert h.delivery.seconds_to_next_deadline(0.05) == 0.05  # nothing open
    await h.feed(0)
    h.clock.now += 4.97
    assert h.delivery.seconds_to_next_deadline(0.05) == pytest.approx(0.03)
    h.clock.now += 1
    assert h.delivery.seconds_to_next_deadline(0.05) == 0.0
