"""Runs that fail before their steps (a system failure, not the data's) through the real Dagster.

The fixture job `flaky_start_job` (tests/fixtures/byo_project/flaky.py) fails
while initialising a resource, N times per batch: Dagster ends those runs
FAILURE with `dagster/failure_reason: RUN_EXCEPTION`, not `STEP_FAILURE`. The worker
launches the batch again (docs/delivery.md, Run outcomes) instead of
dead-lettering healthy records, and dead-letters them with the reason only
once the bound is spent.
"""

from __future__ import annotations

from typing import Any

import pytest

from service.delivery import MAX_SYSTEM_FAILURES
from service.kafka import ensure_topics
from tests.conftest import BYO_LOCATION, Stack
from tests.support import (
    DagsterApi,
    dead_letters,
    eventually,
    metric,
    order,
    produce,
    route_toml,
    settled,
    unique,
)

pytestmark = pytest.mark.integration

RECORDS = 5
# What Dagster 1.13 tags a run whose resource failed to initialise with (the multiprocess executor sets
# resources up in each step's process, so the failure surfaces as the run's exception, not a step's).
REASON = "RUN_EXCEPTION"


async def _flaky_batch(stack: Stack, start_worker: Any, failures: str) -> tuple[str, str, Any]:
    topic, dlq = unique(f"flaky-{failures}"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 1})
    worker = await start_worker(route_toml(topic, job="flaky_start_job", location=BYO_LOCATION,
                                           batch_op="take_batch", max_records=RECORDS, max_wait_s=1.0),
                                KAFKA_DAGSTER_DLQ_TOPIC=dlq)
    await produce(stack.bootstrap, topic, [order(i) for i in range(RECORDS)])
    return topic, dlq, worker


async def test_a_run_that_fails_before_its_steps_is_launched_again_and_nothing_is_dead_lettered(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq, worker = await _flaky_batch(stack, start_worker, "2")

    async def succeeded() -> list[dict[str, Any]]:
        runs = await dagster_api.runs(topic)
        return runs if any(run["status"] == "SUCCESS" for run in runs) else []

    runs = await eventually(succeeded, 180, "the batch's third run to succeed")
    assert sorted((run["status"], run["tags"].get("dagster/failure_reason")) for run in runs) == [
        ("FAILURE", REASON), ("FAILURE", REASON), ("SUCCESS", None)]
    assert len({run["tags"]["kafka/batch_id"] for run in runs}) == 1
    result = await eventually(lambda: settled(stack.bootstrap, dagster_api, topic, dlq, RECORDS), 60, "settled")
    assert result.problems == [] and result.in_runs == RECORDS
    assert await dead_letters(stack.bootstrap, dlq) == []
    assert metric(await worker.metrics(), "kafka_dagster_runs_relaunched_total", dagster_job="flaky_start_job") == 2


async def test_a_batch_whose_runs_never_start_is_dead_lettered_with_the_reason_once_the_bound_is_spent(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any) -> None:
    topic, dlq, worker = await _flaky_batch(stack, start_worker, "always")
    letters = await eventually(lambda: dead_letters(stack.bootstrap, dlq), 240, "the batch's records in the DLQ")
    runs = await dagster_api.runs(topic)
    assert len(runs) == MAX_SYSTEM_FAILURES
    assert {(run["status"], run["tags"].get("dagster/failure_reason")) for run in runs} == {("FAILURE", REASON)}
    letters = await eventually(lambda: _all(dead_letters(stack.bootstrap, dlq), RECORDS), 60, "every record")
    assert sorted(letter.origin[2] for letter in letters) == list(range(RECORDS))
    assert {letter.stage for letter in letters} == {"run"}
    messages = {letter.dlq["dlq.error.message"] for letter in letters}
    assert len(messages) == 1 and f"{MAX_SYSTEM_FAILURES} runs failed" in messages.pop()
    assert metric(await worker.metrics(), "kafka_dagster_runs_relaunched_total",
                  dagster_job="flaky_start_job") == MAX_SYSTEM_FAILURES - 1


async def _all(letters: Any, count: int) -> list[Any]:
    found = await letters
    return found if len(found) >= count else []
