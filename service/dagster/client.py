"""The Dagster GraphQL API as the worker uses it: launch runs, find and follow them.

Every member of the `LaunchRunResult` union is handled by name: `PythonError`
is `DagsterError` (transient), every other error member `LaunchRejected`. What
a route launches is resolved by `client.workspace`; HTTP and its failures are
`GraphQL`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from service.dagster.queries import LAUNCH_RUN, RUN, RUN_COUNT, RUN_EVENTS, RUN_STATUSES, RUNS, TERMINATE_RUN
from service.dagster.transport import GraphQL
from service.dagster.workspace import JobSelector, Target, Workspace, location_failure
from service.errors import DagsterError, LaunchRejected, RequestRejected
from service.verdicts import RunInfo


@dataclass(frozen=True)
class RunEvent:
    """One entry of a run's event log: its GraphQL type, when it happened, and its step if any."""

    typename: str
    timestamp_s: float | None
    step_key: str | None


@dataclass(frozen=True)
class RunEventLog:
    """A run's event log, oldest first; `complete` is False when the page bound cut it short."""

    events: list[RunEvent]
    complete: bool


class DagsterClient(GraphQL):
    """Launch and look up runs over GraphQL; `workspace` resolves and caches what routes launch."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None, cafile: str | None = None) -> None:
        super().__init__(url, token, timeout_s, transport, cafile)
        self.workspace = Workspace(self)

    async def launch_run(self, selector: JobSelector | Target, run_config: dict[str, Any],
                         tags: dict[str, str]) -> str:
        """Launch one run (of a job, or of a target's asset selection); return its id, or raise
        `LaunchRejected` / a transient error."""
        target = selector if isinstance(selector, Target) else Target(selector)
        selector = target.selector
        job_selector: dict[str, Any] = {
            "repositoryLocationName": selector.location,
            "repositoryName": selector.repository,
            "jobName": selector.job,
        }
        if target.assets:
            job_selector["assetSelection"] = [{"path": list(path)} for path in target.assets]
        params = {
            "selector": job_selector,
            "runConfigData": run_config,
            "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
        }
        result = (await self.execute(LAUNCH_RUN, {"executionParams": params}))["launchRun"]
        typename = result["__typename"]
        if typename == "LaunchRunSuccess":
            return str(result["run"]["runId"])
        message = _launch_error_message(result)
        if typename == "PythonError":
            raise DagsterError(typename, message)
        if typename == "PipelineNotFoundError":
            self.workspace.forget_job(selector.job)
            failure = location_failure(typename, message, await self.workspace.broken_locations(), selector.location)
            if failure is not None:
                raise failure
        raise LaunchRejected(typename, message)

    async def terminate_queued(self, run_id: str) -> bool:
        """Cancel a run that has not started (a queued run is canceled at once); True if Dagster did."""
        result = (await self.execute(TERMINATE_RUN, {"runId": run_id}))["terminateRun"]
        return result["__typename"] == "TerminateRunSuccess"

    async def find_runs(self, tags: dict[str, str], job: str | None = None,
                        limit: int = 100) -> list[RunInfo]:
        """Runs carrying every tag in `tags` (newest first), optionally of one job."""
        run_filter: dict[str, Any] = {"tags": [{"key": k, "value": v} for k, v in tags.items()]}
        if job:
            run_filter["pipelineName"] = job
        result = (await self.execute(RUNS, {"filter": run_filter, "limit": limit}))["runsOrError"]
        if result["__typename"] != "Runs":
            raise DagsterError(result["__typename"], result.get("message", ""))
        return [_run_info(run) for run in result["results"]]

    async def count_runs(self, job: str, statuses: list[str]) -> int:
        """How many runs of `job` are in one of `statuses` now (e.g. QUEUED)."""
        run_filter = {"pipelineName": job, "statuses": statuses}
        result = (await self.execute(RUN_COUNT, {"filter": run_filter}))["runsOrError"]
        if result["__typename"] != "Runs":
            raise DagsterError(result["__typename"], result.get("message", ""))
        return int(result["count"])

    async def run_statuses(self, run_ids: list[str]) -> dict[str, str]:
        """Status of each run in `run_ids` that Dagster knows, in one query."""
        result = (await self.execute(RUN_STATUSES, {"filter": {"runIds": run_ids}}))["runsOrError"]
        if result["__typename"] != "Runs":
            raise DagsterError(result["__typename"], result.get("message", ""))
        return {run["runId"]: run["status"] for run in result["results"]}

    async def get_run(self, run_id: str) -> RunInfo | None:
        result = (await self.execute(RUN, {"runId": run_id}))["runOrError"]
        if result["__typename"] == "RunNotFoundError":
            return None
        if result["__typename"] != "Run":
            raise DagsterError(result["__typename"], result.get("message", ""))
        return _run_info(result)

    async def run_events(self, run_id: str, page_size: int = 500, max_pages: int = 20) -> RunEventLog:
        """The event log of one run, read page by page (`eventConnection`), at most `max_pages` pages."""
        events: list[RunEvent] = []
        cursor: str | None = None
        for _ in range(max_pages):
            variables = {"runId": run_id, "afterCursor": cursor, "limit": page_size}
            result = (await self.execute(RUN_EVENTS, variables))["runOrError"]
            if result["__typename"] == "RunNotFoundError":
                raise RequestRejected(f"run {run_id} not found: {result.get('message', '')}")
            if result["__typename"] != "Run":
                raise DagsterError(result["__typename"], result.get("message", ""))
            page = result["eventConnection"]
            events.extend(_run_event(event) for event in page["events"])
            if not page["hasMore"] or not page["events"]:
                return RunEventLog(events, complete=True)
            cursor = page["cursor"]
        return RunEventLog(events, complete=False)


def _run_event(event: dict[str, Any]) -> RunEvent:
    timestamp = event.get("timestamp")
    return RunEvent(
        typename=event["__typename"],
        timestamp_s=float(timestamp) / 1000 if timestamp else None,
        step_key=event.get("stepKey"),
    )


def _run_info(run: dict[str, Any]) -> RunInfo:
    return RunInfo(
        run_id=run["runId"],
        status=run["status"],
        job=run["jobName"],
        tags={t["key"]: t["value"] for t in run["tags"]},
        creation_time=float(run.get("creationTime") or 0.0),
        start_time=float(run["startTime"]) if run.get("startTime") is not None else None,
    )


def _launch_error_message(result: dict[str, Any]) -> str:
    if result["__typename"] == "RunConfigValidationInvalid":
        return "; ".join(e["message"] for e in result.get("errors", []))
    if result["__typename"] == "InvalidStepError":
        return f"invalid step {result.get('invalidStepKey')}"
    if result["__typename"] == "InvalidOutputError":
        return f"invalid output {result.get('invalidOutputName')} of {result.get('stepKey')}"
    return str(result.get("message", ""))
