"""An async client for the Dagster GraphQL API.

The one place that talks HTTP to Dagster. httpx failures are translated here:
connection errors, timeouts, HTTP 5xx and 408 become `DagsterUnavailable`
and 429 `RateLimited` (transient); 401/403 `Unauthorized`, other 4xx and
GraphQL errors `RequestRejected` (the route pauses); 413 `BatchTooLarge`.
Every member of the `LaunchRunResult` union is handled by name: `PythonError`
is `DagsterError` (transient), every other error member `LaunchRejected`.
Message content only ever travels as GraphQL variables.
"""

from __future__ import annotations

import email.utils
import logging
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from service.contract import BATCH_CONFIG_FIELDS
from service.errors import (
    CODE_LOCATION_ERROR,
    CODE_LOCATION_HINT,
    BatchTooLarge,
    DagsterError,
    DagsterUnavailable,
    KafkaDagsterError,
    LaunchRejected,
    RateLimited,
    RequestRejected,
    Unauthorized,
)
from service.verdicts import RunInfo

logger = logging.getLogger(__name__)

TOKEN_HEADER = "Dagster-Cloud-Api-Token"

LAUNCH_RUN = """
mutation LaunchRun($executionParams: ExecutionParams!) {
  launchRun(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status } }
    ... on PythonError { message className }
    ... on RunConfigValidationInvalid { errors { message reason } }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on UnauthorizedError { message }
    ... on ConflictingExecutionParamsError { message }
    ... on PresetNotFoundError { message }
    ... on RunConflict { message }
    ... on NoModeProvidedError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { stepKey invalidOutputName }
  }
}
"""

REPOSITORIES = """
query Repositories {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
    ... on PythonError { message }
  }
}
"""

RUNS = """
query Runs($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { runId status jobName creationTime startTime tags { key value } } }
    ... on InvalidPipelineRunsFilterError { message }
    ... on PythonError { message }
  }
}
"""

RUN_COUNT = """
query RunCount($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { count }
    ... on InvalidPipelineRunsFilterError { message }
    ... on PythonError { message }
  }
}
"""

RUN_STATUSES = """
query RunStatuses($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status } }
    ... on InvalidPipelineRunsFilterError { message }
    ... on PythonError { message }
  }
}
"""

RUN = """
query Run($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { runId status jobName tags { key value } }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

RUN_EVENTS = """
query RunEvents($runId: ID!, $afterCursor: String, $limit: Int) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      eventConnection(afterCursor: $afterCursor, limit: $limit) {
        events { __typename ... on MessageEvent { timestamp stepKey } }
        cursor
        hasMore
      }
    }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

REPOSITORY_ASSETS = """
query RepositoryAssets {
  repositoriesOrError {
    __typename
    ... on RepositoryConnection { nodes { name location { name } jobs { name } assetNodes {
      assetKey { path } opNames jobNames partitionDefinition { type name }
      configField { configType { __typename ... on CompositeConfigType { fields { name } } } } } } }
    ... on PythonError { message }
  }
}
"""

JOB_OPS = """
query JobOps($selector: PipelineSelector!) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { nodeNames }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on PythonError { message }
  }
}
"""

PARTITION_KEYS = """
query PartitionKeys($selector: PipelineSelector!, $assets: [AssetKeyInput!]) {
  pipelineOrError(params: $selector) {
    __typename
    ... on Pipeline { partitionKeysOrError(selectedAssetKeys: $assets) { partitionKeys } }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on PythonError { message }
  }
}
"""

CONFIG_VALID = """
query ConfigValid($selector: PipelineSelector!, $config: RunConfigData) {
  isPipelineConfigValid(pipeline: $selector, mode: "default", runConfigData: $config) {
    __typename
    ... on RunConfigValidationInvalid { errors { message reason } }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on PythonError { message }
  }
}
"""

ADD_DYNAMIC_PARTITION = """
mutation AddDynamicPartition($repository: RepositorySelector!, $name: String!, $key: String!) {
  addDynamicPartition(repositorySelector: $repository, partitionsDefName: $name, partitionKey: $key) {
    __typename
    ... on AddDynamicPartitionSuccess { partitionKey }
    ... on DuplicateDynamicPartitionError { partitionName }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

# The answer of addDynamicPartition for a definition name the repository does not hold (an UnauthorizedError).
NO_SUCH_DYNAMIC_PARTITIONS = "does not contain a dynamic partitions definition"

LOCATIONS = """
{ workspaceOrError { __typename ... on Workspace { locationEntries { name locationOrLoadError {
  __typename ... on PythonError { message } } } } ... on PythonError { message } } }
"""

TERMINATE_RUN = """
mutation Terminate($runId: String!) {
  terminateRun(runId: $runId) {
    __typename
    ... on TerminateRunFailure { message }
    ... on RunNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

# HTTP statuses that say "try again later" rather than "this request is wrong".
RETRY_LATER_STATUSES = frozenset({408, 425})


@dataclass(frozen=True)
class JobSelector:
    location: str
    repository: str
    job: str


@dataclass(frozen=True)
class PartitionsDef:
    """A target's partitions definition, as GraphQL reports it: its type (STATIC, TIME_WINDOW, DYNAMIC,
    MULTIPARTITIONED) and its name (a dynamic definition's)."""

    type: str
    name: str | None = None


@dataclass(frozen=True)
class Target:
    """What a route launches: a job, an asset selection within it, the ops given the batch config, and the
    selection's partitions definition (None: not partitioned)."""

    selector: JobSelector
    assets: tuple[tuple[str, ...], ...] = ()
    batch_ops: tuple[str, ...] = ()
    partitions: PartitionsDef | None = None

    @property
    def job(self) -> str:
        return self.selector.job

    def graphql_selector(self) -> dict[str, Any]:
        """The `PipelineSelector` of the target (with its `assetSelection`, if any)."""
        selector: dict[str, Any] = {"repositoryLocationName": self.selector.location,
                                    "repositoryName": self.selector.repository, "pipelineName": self.selector.job}
        if self.assets:
            selector["assetSelection"] = [{"path": list(path)} for path in self.assets]
        return selector


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


class DagsterClient:
    """Launch and look up runs over GraphQL, with job selectors resolved and cached."""

    def __init__(self, url: str, token: str | None = None, timeout_s: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None, cafile: str | None = None) -> None:
        """`cafile`: a private CA for an https:// URL; without it, the system's CAs. Verification is never off."""
        headers = {TOKEN_HEADER: token} if token else {}
        self.url = url
        self.shown_url = without_credentials(url)
        self._http = httpx.AsyncClient(headers=headers, timeout=timeout_s, transport=transport,
                                       verify=tls_context(cafile))
        self._selectors: dict[tuple[str, str | None, str | None], JobSelector] = {}
        self._targets: dict[tuple[str, tuple[str, ...], str | None, str | None, str], Target] = {}
        self._broken: tuple[float, dict[str, str]] | None = None  # (when, broken_locations' last answer)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def execute(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST one GraphQL document; return its `data`, or raise a classified error."""
        if self._http.is_closed:  # shutting down: tasks still polling must not crash the worker
            raise DagsterUnavailable("the Dagster client is closed (the worker is stopping)")
        try:
            response = await self._http.post(self.url, json={"query": query, "variables": variables or {}})
        except httpx.TransportError as exc:
            raise DagsterUnavailable(f"{type(exc).__name__} talking to Dagster at {self.shown_url}{_tls_hint(exc)}") \
                from exc
        _raise_for_status(response, self.shown_url)
        try:
            body = response.json()
        except ValueError:
            raise RequestRejected(f"{self.shown_url} did not answer with JSON; is it Dagster's /graphql?") from None
        if not isinstance(body, dict) or (not isinstance(body.get("data"), dict) and not body.get("errors")):
            raise RequestRejected(f"{self.shown_url} did not answer with a GraphQL result")
        if body.get("errors"):
            raise RequestRejected(f"GraphQL error: {body['errors'][0].get('message')}")
        return body["data"]  # type: ignore[no-any-return]

    async def ping(self) -> bool:
        """True when the GraphQL endpoint answers (and accepts our token)."""
        try:
            await self.execute("{ version }")
        except KafkaDagsterError:
            return False
        return True

    async def reachable(self) -> bool:
        """True when Dagster's GraphQL endpoint answers at all (a refused token is an answer)."""
        try:
            await self.execute("{ version }")
        except RateLimited:
            return True
        except DagsterUnavailable:
            return False
        except KafkaDagsterError:
            return True
        return True

    async def resolve_job(self, job: str, location: str | None = None,
                          repository: str | None = None) -> JobSelector:
        """The selector of `job`, looked up once and cached (`forget_job` drops it)."""
        key = (job, location, repository)
        if key not in self._selectors:
            self._selectors[key] = await self._find_job(job, location, repository)
        return self._selectors[key]

    def forget_job(self, job: str) -> None:
        """Look `job` up again next time: a deploy may have moved, renamed or broken it."""
        for key in [key for key in self._selectors if key[0] == job]:
            del self._selectors[key]
        for target in [target for target in self._targets if target[0] == job]:
            del self._targets[target]

    async def resolve_target(self, job: str, assets: tuple[str, ...] = (), location: str | None = None,
                             repository: str | None = None, batch_op: str = "read_batch") -> Target:
        """What a route launches, looked up once and cached (`forget_job` drops it).

        Without `assets`, the op job `job` with the batch on `batch_op`. With
        them (keys as "a/b"), the selection within the asset job `job`: the
        batch goes to each selected asset whose config has the contract's
        fields. `LaunchRejected` names a job or asset no loaded code location has.
        """
        key = (job, assets, location, repository, batch_op)
        if key not in self._targets:
            if assets:
                self._targets[key] = await self._find_assets(job, assets, location, repository)
            else:
                self._targets[key] = Target(await self.resolve_job(job, location, repository), (), (batch_op,))
        return self._targets[key]

    async def _find_assets(self, job: str, assets: tuple[str, ...], location: str | None,
                           repository: str | None) -> Target:
        result = (await self.execute(REPOSITORY_ASSETS))["repositoriesOrError"]
        if result["__typename"] != "RepositoryConnection":
            raise DagsterError(result["__typename"], result.get("message", ""))
        wanted = {tuple(asset.split("/")): asset for asset in assets}
        best: tuple[dict[str, Any], dict[tuple[str, ...], dict[str, Any]]] | None = None
        for repo in result["nodes"]:
            if (location and repo["location"]["name"] != location) or (repository and repo["name"] != repository):
                continue
            found = {tuple(n["assetKey"]["path"]): n for n in repo["assetNodes"]
                     if tuple(n["assetKey"]["path"]) in wanted}
            if best is None or len(found) > len(best[1]):
                best = (repo, found)
        where = f" (code location {location!r})" if location else ""
        missing = sorted(asset for path, asset in wanted.items() if best is None or path not in best[1])
        if missing or best is None:
            failure = location_failure("InvalidSubsetError", f"no asset {', '.join(missing)}{where}",
                                       await self.broken_locations(), location)
            if failure is not None:
                raise failure
            raise LaunchRejected("InvalidSubsetError", f"asset {', '.join(missing)} not found in any loaded code "
                                 f"location{where}" + ("" if len(assets) == 1 else " with the route's other assets"),
                                 reason="asset_not_found")
        repo, nodes = best
        if not any(j["name"] == job for j in repo["jobs"]):
            raise LaunchRejected("PipelineNotFoundError", f"job {job} not found in {repo['location']['name']}, "
                                 f"where the assets are")
        outside = sorted(wanted[path] for path, node in nodes.items() if job not in node["jobNames"])
        if outside:
            raise LaunchRejected("InvalidSubsetError", f"asset {', '.join(outside)} is not in job {job}",
                                 reason="asset_not_found")
        batch_ops = tuple(op for path in wanted for op in _batch_ops(nodes[path]))
        definitions = {_partitions(node) for node in nodes.values()} - {None}
        selector = JobSelector(repo["location"]["name"], repo["name"], job)
        return Target(selector, tuple(wanted), batch_ops, next(iter(definitions)) if len(definitions) == 1 else
                      (PartitionsDef("MIXED") if definitions else None))

    async def job_ops(self, target: Target) -> list[str]:
        """The op (node) names of the target's job."""
        result = (await self.execute(JOB_OPS, {"selector": target.graphql_selector()}))["pipelineOrError"]
        if result["__typename"] != "Pipeline":
            _raise_result(result)
        return list(result["nodeNames"])

    async def config_errors(self, target: Target, run_config: dict[str, Any]) -> list[str]:
        """What Dagster finds wrong with `run_config` for the target, without launching ([]: it is valid)."""
        variables = {"selector": target.graphql_selector(), "config": run_config}
        result = (await self.execute(CONFIG_VALID, variables))["isPipelineConfigValid"]
        if result["__typename"] == "PipelineConfigValidationValid":
            return []
        if result["__typename"] == "RunConfigValidationInvalid":
            return [e["message"] for e in result["errors"]]
        _raise_result(result)
        return []  # unreachable: _raise_result raises

    async def partition_keys(self, target: Target) -> list[str]:
        """Every partition key of the target's partitions definition (for its asset selection), now."""
        variables = {"selector": target.graphql_selector(),
                     "assets": [{"path": list(path)} for path in target.assets] or None}
        result = (await self.execute(PARTITION_KEYS, variables))["pipelineOrError"]
        if result["__typename"] != "Pipeline":
            _raise_result(result)
        return list(result["partitionKeysOrError"]["partitionKeys"])

    async def add_dynamic_partition(self, target: Target, name: str, key: str) -> bool:
        """Add `key` to the dynamic partitions definition `name`; True if added, False if it was there."""
        variables = {"repository": {"repositoryLocationName": target.selector.location,
                                    "repositoryName": target.selector.repository}, "name": name, "key": key}
        result = (await self.execute(ADD_DYNAMIC_PARTITION, variables))["addDynamicPartition"]
        typename = result["__typename"]
        if typename == "AddDynamicPartitionSuccess":
            return True
        if typename == "DuplicateDynamicPartitionError":
            return False
        if typename == "UnauthorizedError" and NO_SUCH_DYNAMIC_PARTITIONS in result.get("message", ""):
            raise LaunchRejected("PartitionsNotFound", f"no dynamic partitions definition {name!r} in "
                                 f"{target.selector.location}: {result['message']}", reason="partitions_not_found",
                                 hint="fix the route's dynamic_partitions (the name of a DynamicPartitionsDefinition)")
        if typename == "UnauthorizedError":
            raise Unauthorized(f"UnauthorizedError: {result.get('message', '')}")
        raise DagsterError(typename, result.get("message", ""))

    async def _find_job(self, job: str, location: str | None, repository: str | None) -> JobSelector:
        result = (await self.execute(REPOSITORIES))["repositoriesOrError"]
        if result["__typename"] != "RepositoryConnection":
            raise DagsterError(result["__typename"], result.get("message", ""))
        for node in result["nodes"]:
            if location and node["location"]["name"] != location:
                continue
            if repository and node["name"] != repository:
                continue
            if any(j["name"] == job for j in node["jobs"]):
                return JobSelector(node["location"]["name"], node["name"], job)
        where = f" (code location {location!r})" if location else ""
        failure = location_failure("PipelineNotFoundError", f"no job named {job!r}{where}",
                                   await self.broken_locations(), location)
        if failure is not None:
            raise failure
        raise LaunchRejected("PipelineNotFoundError", f"job {job}{where} not found in any loaded code location")

    async def broken_locations(self, max_age_s: float = 0.0) -> dict[str, str]:
        """The workspace's code locations that failed to load, with the first line of their error.

        An answer at most `max_age_s` old is reused: the lanes of a paused route probe together.
        """
        if self._broken is not None and time.monotonic() - self._broken[0] <= max_age_s:
            return self._broken[1]
        result = (await self.execute(LOCATIONS)).get("workspaceOrError") or {}
        broken = {} if result.get("__typename") != "Workspace" else {
            entry["name"]: (entry.get("locationOrLoadError") or {}).get("message", "")
            for entry in result["locationEntries"]
            if (entry.get("locationOrLoadError") or {}).get("__typename") == "PythonError"}
        self._broken = (time.monotonic(), broken)
        return broken

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
            self.forget_job(selector.job)
            failure = location_failure(typename, message, await self.broken_locations(), selector.location)
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


def _raise_result(result: dict[str, Any]) -> None:
    """Raise the error a query's union member stands for (PythonError: transient; the rest: the route's)."""
    typename = result["__typename"]
    if typename == "PythonError":
        raise DagsterError(typename, result.get("message", ""))
    raise LaunchRejected(typename, result.get("message", ""))


def _batch_ops(node: dict[str, Any]) -> list[str]:
    """The asset's op names when its config takes the batch (has the contract's fields), else []."""
    config_type = (node.get("configField") or {}).get("configType") or {}
    fields = {f["name"] for f in config_type.get("fields") or []}
    return list(node["opNames"]) if set(BATCH_CONFIG_FIELDS) <= fields else []


def _partitions(node: dict[str, Any]) -> PartitionsDef | None:
    definition = node.get("partitionDefinition")
    return PartitionsDef(definition["type"], definition.get("name")) if definition else None


def first_line(text: str | None) -> str:
    return text.splitlines()[0] if text else ""


def location_failure(typename: str, context: str, broken: dict[str, str],
                     location: str | None) -> LaunchRejected | None:
    """The route fault when `location` (any location, if None) is among the `broken` ones, else None."""
    failed = {name: error for name, error in broken.items() if location in (None, name)}
    if not failed:
        return None
    errors = "; ".join(f"{name}: {first_line(error)}" for name, error in sorted(failed.items()))
    return LaunchRejected(typename, f"{context}: code location failed to load: {errors}",
                          hint=CODE_LOCATION_HINT, reason=CODE_LOCATION_ERROR)


def _raise_for_status(response: httpx.Response, shown_url: str) -> None:
    """Map an HTTP status other than 200 to the kind of failure it is."""
    status = response.status_code
    if status == 200:
        return
    if status >= 500 or status in RETRY_LATER_STATUSES:
        raise DagsterUnavailable(f"Dagster answered HTTP {status}", status)
    if status == 429:
        retry_after = retry_after_s(response.headers.get("Retry-After"))
        raise RateLimited(f"Dagster answered HTTP 429 (Retry-After: {response.headers.get('Retry-After')})",
                          retry_after)
    if status in (401, 403):
        raise Unauthorized(f"Dagster at {shown_url} answered HTTP {status}: the request was not authorized; "
                           "check DAGSTER_API_TOKEN")
    if status == 413:
        raise BatchTooLarge(f"Dagster at {shown_url} answered HTTP 413: the request is too large")
    raise RequestRejected(f"Dagster at {shown_url} answered HTTP {status}")


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date); None if absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _tls_hint(exc: BaseException) -> str:
    """What to check when the failure underneath is a TLS verification failure."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f" (TLS certificate not trusted: {cause.verify_message}; check DAGSTER_SSL_CAFILE)"
        cause = cause.__cause__ or cause.__context__
    return ""


def without_credentials(url: str) -> str:
    """`url` fit for logs and dead letters: any user:password@ part is dropped."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def tls_context(cafile: str | None = None) -> ssl.SSLContext:
    """Certificate and host name verification, against `cafile` or the system's CAs."""
    return ssl.create_default_context(cafile=cafile)


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
