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
import yaml

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
                                KAFKA_DAGSTER_DLQ_TOPIC=dlq,
                                KAFKA_DAGSTER_ROUTE_RETRY_MAX_DELAY_S="2")  # relaunches after 2 s, not 5-20 s
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


RUN_TO_COPY = """
query Run($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run {
  jobName runConfigYaml tags { key value } assetSelection { path }
  repositoryOrigin { repositoryLocationName repositoryName } } } }"""

LAUNCH_COPY = """
mutation Launch($params: ExecutionParams!) { launchRun(executionParams: $params) {
  __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }"""

RUN_END = """
query Run($runId: ID!) { runOrError(runId: $runId) { __typename ... on Run {
  status tags { key value } stats { ... on RunStatsSnapshot { startTime materializations stepsSucceeded } } } } }"""


async def _launch_copy(api: DagsterApi, run_id: str) -> str:
    """Launch `run_id` again with its job, selection, run config and tags, as a retried launch would."""
    run = (await api.query(RUN_TO_COPY, {"runId": run_id}))["runOrError"]
    origin = run["repositoryOrigin"]
    selector: dict[str, Any] = {"repositoryLocationName": origin["repositoryLocationName"],
                                "repositoryName": origin["repositoryName"], "jobName": run["jobName"]}
    if run["assetSelection"]:
        selector["assetSelection"] = run["assetSelection"]
    tags = [tag for tag in run["tags"] if not tag["key"].startswith("dagster/")]
    params = {"selector": selector, "runConfigData": yaml.safe_load(run["runConfigYaml"]),
              "executionMetadata": {"tags": tags}}
    result = (await api.query(LAUNCH_COPY, {"params": params}))["launchRun"]
    assert result["__typename"] == "LaunchRunSuccess", result
    return str(result["run"]["runId"])


async def _ended(api: DagsterApi, run_id: str) -> dict[str, Any] | None:
    run = (await api.query(RUN_END, {"runId": run_id}))["runOrError"]
    return run if run["status"] in ("SUCCESS", "FAILURE", "CANCELED") else None


@pytest.mark.parametrize("target", ["op job, in-process executor", "asset job, multiprocess executor"])
async def test_a_duplicate_launched_after_its_batch_ran_stands_down_without_reading_a_record(
        stack: Stack, dagster_api: DagsterApi, start_worker: Any, target: str) -> None:
    """The duplicate no worker could cancel in time (the webserver frozen while the daemon dequeued it once the
    original had finished): it starts, sees that its batch's run started first, and ends CANCELED, tagged."""
    topic = unique("stand-down")
    await ensure_topics(stack.bootstrap, {topic: 1})
    if target.startswith("op job"):
        routes = route_toml(topic, max_records=RECORDS, max_wait_s=1.0)
    else:
        routes = (f'[[routes]]\ntopic = "{topic}"\nassets = ["page_views"]\n'
                  f'max_records = {RECORDS}\nmax_bytes = 1048576\nmax_wait_s = 1.0\n')
    worker = await start_worker(routes)
    await produce(stack.bootstrap, topic, [order(i) for i in range(RECORDS)])

    async def succeeded() -> list[dict[str, Any]]:
        runs = await dagster_api.runs(topic)
        return runs if any(run["status"] == "SUCCESS" for run in runs) else []

    [original] = await eventually(succeeded, 180, "the batch's run to succeed")
    worker.stop()  # no worker left to cancel the copy: it meets the original in its own run
    copy_id = await _launch_copy(dagster_api, original["runId"])

    copy = await eventually(lambda: _ended(dagster_api, copy_id), 180, "the copy to end")
    tags = {tag["key"]: tag["value"] for tag in copy["tags"]}
    assert copy["status"] == "CANCELED" and tags["kafka/duplicate_of"] == original["runId"]
    assert copy["stats"]["startTime"] is not None  # it did start: the stand-down, not a queued cancel
    assert copy["stats"]["materializations"] == 0 and copy["stats"]["stepsSucceeded"] == 0
    assert tags["kafka/batch_id"] == original["tags"]["kafka/batch_id"]
