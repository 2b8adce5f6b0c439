"""The delivery invariant, proven by making each failure happen against the real stack.

The scenarios run one after the other: each launches many runs, and Dagster's
run processes are what the machine's two cores spend the suite on, so running
them side by side only makes each wait longer for its runs. Dagster down for
everyone (the shared webserver stopped) is in `test_shared_stack_faults.py`.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from typing import Any

import orjson
import pytest

from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import (
    ROOT,
    DagsterApi,
    Flow,
    WorkerProcess,
    dead_letters,
    eventually,
    every_record_in_one_run,
    metric,
    order,
    produce,
    route_toml,
    settled,
    unique,
)

pytestmark = pytest.mark.integration

SCHEMA_FILE = str(ROOT / "schemas" / "order.json")


POISON = {
    "InvalidJson": (b'{"order_id": "broken", ', "decode"),
    "SchemaViolation": (orjson.dumps({"order_id": 7, "customer": "c"}), "validate"),
    "MessageTooLarge": (orjson.dumps({"order_id": "big", "customer": "c", "amount": 1, "pad": "x" * 3000}),
                        "validate"),
    "NotUtf8": (b'\xff\xfe{"order_id": "latin"}', "decode"),
    "NullValue": (None, "decode"),
}


async def test_poison_messages_go_to_the_dlq_alone_and_their_batch_mates_reach_runs(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq = unique("poison"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 2})
    await start_worker(route_toml(topic, max_records=1000, max_wait_s=2.0, schema_file=SCHEMA_FILE),
                       KAFKA_DAGSTER_DLQ_TOPIC=dlq, KAFKA_DAGSTER_MAX_MESSAGE_BYTES="2000")
    # 1% of each kind, each kind in one burst (a dead letter splits the batch it interrupts: few runs).
    values: list[bytes | None] = [order(i) for i in range(2400)]
    expected_class: dict[int, str] = {}
    for burst, (error_class, (value, _)) in enumerate(POISON.items()):
        for i in range(400 + burst * 400, 424 + burst * 400):
            values[i] = value
            expected_class[i] = error_class
    await produce(stack.bootstrap, topic, values, partitions=2)

    result = await eventually(lambda: settled(stack.bootstrap, dagster_api, topic, dlq, 2400), 200,
                              "every offset placed")

    assert result.problems == []
    assert result.in_runs == 2280
    assert result.dead_lettered == {"decode": 72, "validate": 48}
    for i, error_class in expected_class.items():
        position = (i % 2, i // 2)  # produce() sends index i to partition i % 2, in order
        assert result.error_classes[position] == {error_class}
        assert result.stages_by_offset[position] == {POISON[error_class][1]}
    runs = await dagster_api.runs(topic)
    assert {run["status"] for run in runs} == {"SUCCESS"}


async def test_dead_letters_keep_the_original_record_byte_for_byte(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq = unique("bytes"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 1})
    await start_worker(route_toml(topic, max_wait_s=1.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    from service.kafka import Producer

    producer = Producer(stack.bootstrap)
    await producer.send(topic, b"key-\x00\xff", b"\xff not json", [("trace", b"\x01\x02"), ("dlq.fake", b"x")],
                        timestamp_ms=1_700_000_000_123)
    await producer.stop()

    letters = await eventually(lambda: dead_letters(stack.bootstrap, dlq), 60, "the dead letter")

    [letter] = letters
    assert letter.key == b"key-\x00\xff"
    assert letter.value == b"\xff not json"
    assert letter.timestamp_ms == 1_700_000_000_123
    assert letter.headers == [("trace", b"\x01\x02")]
    assert set(letter.dlq) == {"dlq.topic", "dlq.partition", "dlq.offset", "dlq.stage", "dlq.error.class",
                               "dlq.error.message", "dlq.attempts", "dlq.failed_at", "dlq.route"}
    assert letter.dlq["dlq.topic"] == topic and letter.dlq["dlq.route"] == topic  # a route's name: its topic
    assert (letter.dlq["dlq.partition"], letter.dlq["dlq.offset"]) == ("0", "0")
    assert (letter.dlq["dlq.stage"], letter.dlq["dlq.error.class"]) == ("decode", "NotUtf8")
    assert letter.dlq["dlq.failed_at"].endswith("Z")


async def test_rejected_launches_go_to_the_dlq_once_where_the_route_asks_for_it(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    """on_launch_rejected = "dead_letter": a refused launch dead-letters its batch once (the default pauses)."""
    missing_job, bad_config, dlq = unique("no-job"), unique("bad-config"), unique("dlq")
    await ensure_topics(stack.bootstrap, {missing_job: 1, bad_config: 1})
    routes = (route_toml(missing_job, job="no_such_job", max_records=40, max_wait_s=1.0,
                         on_launch_rejected="dead_letter")
              + route_toml(bad_config, batch_op="no_such_op", max_records=40, max_wait_s=1.0,
                           on_launch_rejected="dead_letter"))
    worker = await start_worker(routes, KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    await produce(stack.bootstrap, missing_job, [order(i) for i in range(100)])
    await produce(stack.bootstrap, bad_config, [order(i) for i in range(100)])

    for topic, error_class in ((missing_job, "PipelineNotFoundError"), (bad_config, "RunConfigValidationInvalid")):
        result = await eventually(lambda t=topic: settled(stack.bootstrap, dagster_api, t, dlq, 100), 120,
                                  f"{topic} dead-lettered")
        assert result.problems == []
        assert result.dead_lettered == {"launch": 100}
        assert {c for classes in result.error_classes.values() for c in classes} == {error_class}

    samples = await worker.metrics()
    assert metric(samples, "kafka_dagster_run_launches_total", dagster_job="process_orders",
                  result="RunConfigValidationInvalid") == 3  # one launch per batch: 40 + 40 + 20
    assert metric(samples, "kafka_dagster_dlq_messages_total", topic=missing_job, stage="launch") == 100
    assert metric(samples, "kafka_dagster_dlq_messages_total", topic=bad_config, stage="launch") == 100
    assert await dagster_api.runs(missing_job) == []


async def test_replayed_dead_letters_reach_runs_once_the_cause_is_fixed(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq = unique("replay"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 1})
    broken = await start_worker(route_toml(topic, job="no_such_job", max_records=25, max_wait_s=1.0,
                                           on_launch_rejected="dead_letter"), KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    await produce(stack.bootstrap, topic, [order(i) for i in range(50)])
    result = await eventually(lambda: settled(stack.bootstrap, dagster_api, topic, dlq, 50), 120, "dead letters")
    assert result.dead_lettered == {"launch": 50}
    broken.stop()

    # The cause is fixed (the route now names a real job); replay the dead letters.
    await start_worker(route_toml(topic, max_records=25, max_wait_s=1.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    replay = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "dlq", "replay", "--stage", "launch", "--source-topic", topic,
         "--rate", "500", "--yes"],
        env={**broken.env, "KAFKA_DAGSTER_DLQ_TOPIC": dlq}, capture_output=True, text=True, timeout=120, check=True)
    assert "replayed 50 dead letters" in replay.stderr

    result = await eventually(lambda: settled(stack.bootstrap, dagster_api, topic, dlq, 100), 180, "replayed runs")
    assert result.problems == []
    assert result.dead_lettered == {"launch": 50}  # offsets 0-49: the originals
    assert result.in_runs == 50  # offsets 50-99: the replayed copies
    runs = await dagster_api.runs(topic)
    assert {run["status"] for run in runs} == {"SUCCESS"}
    assert min(int(run["tags"]["kafka/offset_start"]) for run in runs) == 50

    inspect = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "dlq", "inspect", "--source-topic", topic, "--stage", "launch"],
        env={**broken.env, "KAFKA_DAGSTER_DLQ_TOPIC": dlq}, capture_output=True, text=True, timeout=60, check=True)
    lines = inspect.stdout.strip().splitlines()
    assert len(lines) == 50
    assert all("\tlaunch\tPipelineNotFoundError: " in line for line in lines)


async def test_killing_the_worker_loses_and_duplicates_nothing(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    await killed_three_times(stack, dagster_api, start_worker)


async def killed_three_times(stack: Stack, dagster_api: DagsterApi, start_worker: Any, kills: int = 3) -> None:
    """kill -9 `kills` times at random points of a stream that flows until the last restart."""
    topic, dlq = unique("kill"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 4})
    routes = route_toml(topic, max_records=1000, max_wait_s=4.0)  # about a run a second
    worker = await start_worker(routes, KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    flow = Flow(stack.bootstrap, topic, per_second=200, partitions=4)
    flow.start()
    rng = random.Random(20261125)
    for kill in range(kills):
        launched = len(await dagster_api.runs(topic))
        await eventually(lambda n=launched: more_runs(dagster_api, topic, n), 120, f"progress before kill {kill}")
        await asyncio.sleep(rng.uniform(0, 2))  # a random point in the stream
        worker.kill()
        worker = await start_worker(routes, KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    await every_record_in_one_run(stack.bootstrap, dagster_api, flow, dlq, timeout_s=300)  # the last worker
    assert await dead_letters(stack.bootstrap, dlq) == []


async def more_runs(api: DagsterApi, topic: str, than: int) -> bool:
    return len(await api.runs(topic)) > than


@pytest.mark.timeout(600)
async def test_rebalances_between_two_and_three_workers_lose_and_duplicate_nothing(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    """A third worker joins two, then one leaves, while records flow; the flow stops once the two left
    have launched after the leave."""
    topic, dlq = unique("rebalance"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 6})
    # Few runs, each a process: a batch per partition every 10 s is 0.6 runs a second (8 partitions every 6 s
    # kept both cores busy with runs, and the test waited for its own load).
    routes = route_toml(topic, max_records=1000, max_wait_s=10.0)
    first = await start_worker(routes, KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    second = await start_worker(routes, KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    flow = Flow(stack.bootstrap, topic, per_second=300, partitions=6)
    flow.start()
    await eventually(lambda: more_runs(dagster_api, topic, 2), 120, "the first two workers launching")
    third = await start_worker(routes, KAFKA_DAGSTER_DLQ_TOPIC=dlq)  # a join: three share the partitions
    await eventually(lambda: launches(third), 120, "the third worker to launch runs of its partitions")
    by_second = await launches(second)
    assert second.stop() == 0  # a graceful leave: rebalance again
    launched = len(await dagster_api.runs(topic))
    await eventually(lambda: more_runs(dagster_api, topic, launched + 4), 120, "launches after the leave")
    await every_record_in_one_run(stack.bootstrap, dagster_api, flow, dlq, timeout_s=400)
    assert await dead_letters(stack.bootstrap, dlq) == []
    assert by_second > 0 and await launches(first) > 0, "every worker of the group launched runs"


async def launches(worker: WorkerProcess) -> float:
    return metric(await worker.metrics(), "kafka_dagster_run_launches_total", dagster_job="process_orders",
                  result="LaunchRunSuccess")


async def test_a_failed_run_sends_its_batch_to_the_dlq_with_the_run_id(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq = unique("run-fails"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker = await start_worker(route_toml(topic, max_records=20, max_wait_s=1.0), KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    values = [order(i) for i in range(60)]
    values[25] = order(25, fail_run=True)  # the job fails the run of the batch holding offsets 20-39
    await produce(stack.bootstrap, topic, values)

    result = await eventually(lambda: settled(stack.bootstrap, dagster_api, topic, dlq, 60), 180, "runs finished")

    assert result.problems == []
    assert result.in_runs == 60
    assert result.run_copies == 20
    runs = {int(run["tags"]["kafka/offset_start"]): run for run in await dagster_api.runs(topic)}
    assert {start: run["status"] for start, run in runs.items()} == {0: "SUCCESS", 20: "FAILURE", 40: "SUCCESS"}
    copies = [d for d in await dead_letters(stack.bootstrap, dlq) if d.stage == "run"]
    assert sorted(d.origin[2] for d in copies) == list(range(20, 40))
    assert {d.dlq["dlq.run_id"] for d in copies} == {runs[20]["runId"]}
    assert {d.dlq["dlq.error.class"] for d in copies} == {"RunFailure"}

    async def outcomes() -> dict[str, float]:
        samples = await worker.metrics()
        counted = {status: metric(samples, "kafka_dagster_runs_finished_total", dagster_job="process_orders",
                                  status=status) for status in ("SUCCESS", "FAILURE")}
        return counted if sum(counted.values()) == 3 else {}

    assert await eventually(outcomes, 30, "the worker to count 3 finished runs") == {"SUCCESS": 2, "FAILURE": 1}
    samples = await worker.metrics()
    assert metric(samples, "kafka_dagster_dlq_messages_total", topic=topic, stage="run") == 20
