"""The Dagster workspace as the worker sees it: which code location and repository hold a route's job and
assets (looked up once, cached until a deploy moves them), their ops, partitions and config, and which code
locations failed to load."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from service.contract import BATCH_CONFIG_FIELDS
from service.dagster.queries import (
    ADD_DYNAMIC_PARTITION,
    CONFIG_VALID,
    JOB_OPS,
    LOCATIONS,
    NO_SUCH_DYNAMIC_PARTITIONS,
    PARTITION_KEYS,
    REPOSITORIES,
    REPOSITORY_ASSETS,
)
from service.dagster.transport import GraphQL
from service.errors import CODE_LOCATION_ERROR, CODE_LOCATION_HINT, DagsterError, LaunchRejected, Unauthorized


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


class Workspace:
    """Targets resolved and cached per route, and the workspace's broken code locations."""

    def __init__(self, graphql: GraphQL) -> None:
        self.graphql = graphql
        self._selectors: dict[tuple[str, str | None, str | None], JobSelector] = {}
        self._targets: dict[tuple[str, tuple[str, ...], str | None, str | None, str], Target] = {}
        self._broken: tuple[float, dict[str, str]] | None = None  # (when, broken_locations' last answer)

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
        result = (await self.graphql.execute(REPOSITORY_ASSETS))["repositoriesOrError"]
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
        result = (await self.graphql.execute(JOB_OPS, {"selector": target.graphql_selector()}))["pipelineOrError"]
        if result["__typename"] != "Pipeline":
            _raise_result(result)
        return list(result["nodeNames"])

    async def config_errors(self, target: Target, run_config: dict[str, Any]) -> list[str]:
        """What Dagster finds wrong with `run_config` for the target, without launching ([]: it is valid)."""
        variables = {"selector": target.graphql_selector(), "config": run_config}
        result = (await self.graphql.execute(CONFIG_VALID, variables))["isPipelineConfigValid"]
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
        result = (await self.graphql.execute(PARTITION_KEYS, variables))["pipelineOrError"]
        if result["__typename"] != "Pipeline":
            _raise_result(result)
        return list(result["partitionKeysOrError"]["partitionKeys"])

    async def add_dynamic_partition(self, target: Target, name: str, key: str) -> bool:
        """Add `key` to the dynamic partitions definition `name`; True if added, False if it was there."""
        variables = {"repository": {"repositoryLocationName": target.selector.location,
                                    "repositoryName": target.selector.repository}, "name": name, "key": key}
        result = (await self.graphql.execute(ADD_DYNAMIC_PARTITION, variables))["addDynamicPartition"]
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
        result = (await self.graphql.execute(REPOSITORIES))["repositoriesOrError"]
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
        result = (await self.graphql.execute(LOCATIONS)).get("workspaceOrError") or {}
        broken = {} if result.get("__typename") != "Workspace" else {
            entry["name"]: (entry.get("locationOrLoadError") or {}).get("message", "")
            for entry in result["locationEntries"]
            if (entry.get("locationOrLoadError") or {}).get("__typename") == "PythonError"}
        self._broken = (time.monotonic(), broken)
        return broken


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
