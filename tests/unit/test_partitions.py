"""Partitions from events: partition_key forms, batches cut by key, asset/partition routes, the start check."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from service.batching import SPLIT, Batcher, BatchPolicy
from service.check import Verdict, check_route, watch_routes
from service.dagster import JobSelector, PartitionsDef, Target
from service.delivery import run_config, run_tags
from service.errors import ConfigurationError, LaunchRejected, PartitionKeyMissing, PartitionKeyNotFound
from service.partition_sets import PartitionSets
from service.partitions import PartitionKeyError, compile_partition_key
from service.routes import IMPLICIT_ASSET_JOB, load_routes, parse_route
from service.routing import route_record
from tests.unit.factories import make_record

TS = 1_709_251_200_000  # 2024-03-01T00:00:00Z


def record(offset: int = 0, value: bytes = b"{}", **kwargs: Any) -> Any:
    return make_record(offset, value=value, **kwargs)


@pytest.mark.parametrize(("spec", "value", "expected"), [
    ("value.date", {"date": "2024-03-01"}, "2024-03-01"),
    ("value.a.b", {"a": {"b": 7}}, "7"),
    ("value.ok", {"ok": True}, "true"),
    ("value.at:%Y-%m-%d", {"at": "2024-03-01T23:30:00-02:00"}, "2024-03-02"),
    ("value.at:%Y-%m", {"at": 1_709_251_200}, "2024-03"),
    ("timestamp:%Y-%m-%d", {}, "2024-03-01"),
])
def test_a_partition_key_is_read_from_the_value_or_the_timestamp(spec: str, value: Any, expected: str) -> None:
    assert compile_partition_key(spec).key_of(record(timestamp_ms=TS), value) == expected


def test_a_partition_key_is_read_from_the_key_or_a_header() -> None:
    r = record(key=b"tenant-a", headers=[("tenant", b"t-b")])
    assert compile_partition_key("key").key_of(r, {}) == "tenant-a"
    assert compile_partition_key("headers.tenant").key_of(r, {}) == "t-b"


@pytest.mark.parametrize(("spec", "value"), [("value.date", {}), ("value.date", {"date": None}),
                                              ("value.date", {"date": {"y": 1}}), ("value.date", {"date": ""}),
                                              ("value.at:%Y", {"at": "not a date"}), ("key", {})])
def test_a_record_without_a_usable_key_is_a_validation_failure(spec: str, value: Any) -> None:
    with pytest.raises(PartitionKeyMissing) as info:
        compile_partition_key(spec).key_of(record(), value)
    assert info.value.stage == "validate"


@pytest.mark.parametrize("spec", ["date", "value", "value.", "timestamp", "key:%Y", "headers", "headers.a.b",
                                  "value.a:"])
def test_an_unsupported_partition_key_fails_naming_the_forms(spec: str) -> None:
    with pytest.raises(PartitionKeyError, match=r"timestamp:<strftime format>|strftime format"):
        compile_partition_key(spec)


def test_a_batch_is_cut_where_the_key_changes_and_holds_one_key() -> None:
    b = Batcher(BatchPolicy(3, 10**9, 1e9), "r")
    records = [record(i) for i in range(8)]
    keys = ["a", "a", "a", "a", "b", "a", "a", "c"]
    closed = b.add_many(records[:6], 0.0, keys=keys[:6])
    closed += b.add_many(records[6:], 0.0, keys=keys[6:])
    closed += b.drain()
    assert [([r.offset for r in x.records], x.partition_key) for x in closed] == [
        ([0, 1, 2], "a"), ([3], "a"), ([4], "b"), ([5, 6], "a"), ([7], "c")]
    assert [x.reason for x in closed[:4]] == ["records", SPLIT, SPLIT, SPLIT]


def test_an_open_batch_keeps_its_key_across_chunks() -> None:
    b = Batcher(BatchPolicy(10, 10**9, 1e9))
    assert b.add_many([record(0), record(1)], 0.0, keys=["x", "x"]) == []
    assert b.add_many([record(2)], 0.0, keys=["x"]) == []
    [closed] = b.add_many([record(3)], 0.0, keys=["y"])
    assert ([r.offset for r in closed.records], closed.partition_key) == ([0, 1, 2], "x")


def asset_route(**extra: Any) -> Any:
    return parse_route({"topic": "t", "assets": ["a/b", "c"], "max_records": 5, "max_bytes": 100,
                        "max_wait_s": 1.0, **extra}, "routes[0]")


def test_an_asset_route_runs_in_the_implicit_asset_job_unless_it_names_one() -> None:
    route = asset_route()
    assert (route.job, route.asset_paths, route.target) == (IMPLICIT_ASSET_JOB, (("a", "b"), ("c",)), "assets a/b, c")
    assert asset_route(job="my_assets").target == "assets a/b, c (job my_assets)"


@pytest.mark.parametrize(("fields", "error"), [
    ({"assets": []}, "assets must be a list"),
    ({"assets": ["a//b"]}, "assets must be a list"),
    ({"batch_op": "x"}, "batch_op is for op jobs"),
    ({"partition_key": "nowhere"}, "partition_key 'nowhere' is not one of"),
    ({"dynamic_partitions": "tenants"}, "dynamic_partitions needs a partition_key"),
])
def test_asset_and_partition_mistakes_fail_naming_the_field(fields: dict[str, Any], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        asset_route(**fields)


def test_a_route_needs_a_job_or_assets(tmp_path: Path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[[routes]]\ntopic = "t"\nmax_records = 1\nmax_bytes = 1\nmax_wait_s = 1.0\n')
    with pytest.raises(ConfigurationError, match=r"missing job \(or assets\)"):
        load_routes(path)


def test_routing_gives_each_record_its_partition_key_or_dead_letters_it_at_validate() -> None:
    route = asset_route(partition_key="value.day")
    [ok] = route_record([route], record(0, b'{"day": "2024-03-01"}'), 10**6)
    [missing] = route_record([route], record(1, b'{"other": 1}'), 10**6)
    assert (ok.failure, ok.partition_key) == (None, "2024-03-01")
    assert isinstance(missing.failure, PartitionKeyMissing)


def test_a_partitioned_batch_carries_the_dagster_partition_tag_and_its_config_goes_to_each_batch_op() -> None:
    route = asset_route(partition_key="value.day")
    batcher = Batcher(BatchPolicy(5, 10**9, 1e9), route.name)
    batcher.add_many([record(0, b'{"day": "d"}')], 0.0, keys=["d"])
    [batch] = batcher.drain()
    assert run_tags(route, batch, "g")["dagster/partition"] == "d"
    assert set(run_config(route, batch, True, ["a__b", "c"])["ops"]) == {"a__b", "c"}


class FakeClient:
    """What PartitionSets and the check ask of Dagster (the client and its workspace in one)."""

    def __init__(self, target: Target, keys: list[str] | None = None, problem: Exception | None = None) -> None:
        self.workspace = self
        self.target, self.keys, self.problem = target, keys or [], problem
        self.added: list[tuple[str, str]] = []
        self.key_reads = 0
        self.forgotten: list[str] = []

    async def partition_keys(self, target: Target) -> list[str]:
        self.key_reads += 1
        return self.keys

    async def add_dynamic_partition(self, target: Target, name: str, key: str) -> bool:
        self.added.append((name, key))
        return len(self.added) == 1

    async def resolve_target(self, *args: Any) -> Target:
        if self.problem is not None:
            raise self.problem
        return self.target

    async def config_errors(self, target: Target, config: dict[str, Any]) -> list[str]:
        return []

    def forget_job(self, job: str) -> None:
        self.forgotten.append(job)


def target(partitions: PartitionsDef | None) -> Target:
    return Target(JobSelector("loc", "repo", IMPLICIT_ASSET_JOB), (("a", "b"),), ("a__b",), partitions)


async def test_a_key_outside_a_time_window_is_not_found_after_one_fresh_read() -> None:
    client = FakeClient(target(PartitionsDef("TIME_WINDOW")), ["2024-03-01"])
    sets = PartitionSets(client, refresh_s=0.0)  # type: ignore[arg-type]
    route = asset_route(partition_key="value.day")
    await sets.prepare(route, client.target, "2024-03-01")
    with pytest.raises(PartitionKeyNotFound, match="'2019-01-01' is not a partition of assets a/b, c"):
        await sets.prepare(route, client.target, "2019-01-01")
    assert client.key_reads == 2  # the miss read the keys again (a time window grows)


async def test_a_dynamic_key_is_added_once_and_a_duplicate_is_fine() -> None:
    client = FakeClient(target(PartitionsDef("DYNAMIC", "tenants")))
    sets = PartitionSets(client)  # type: ignore[arg-type]
    route = asset_route(partition_key="value.t", dynamic_partitions="tenants")
    for key in ("acme", "acme", "globex"):
        await sets.prepare(route, client.target, key)
    assert client.added == [("tenants", "acme"), ("tenants", "globex")]  # globex answered Duplicate: fine


async def test_the_check_names_an_unknown_partitions_definition() -> None:
    client = FakeClient(target(PartitionsDef("DYNAMIC", "tenants")))
    route = asset_route(partition_key="value.t", dynamic_partitions="customers")
    verdict = await check_route(route, client)  # type: ignore[arg-type]
    assert not verdict.ok and verdict.reason == "partitions_not_found"
    assert verdict.line().startswith("FAIL  route 't': unknown partitions definition")


async def test_the_worker_pauses_a_route_that_fails_its_check_and_resumes_it_once_it_passes() -> None:
    missing = LaunchRejected("InvalidSubsetError", "asset a/b not found", reason="asset_not_found")
    client = FakeClient(target(None), problem=missing)
    events: list[tuple[str, ...]] = []

    async def sleep(_: float) -> None:
        client.problem = None  # deployed meanwhile
        await asyncio.sleep(0)

    class Pauses:
        def pause(self, route: str, reason: str, message: str, hint: str) -> None:
            events.append(("pause", route, reason))

        def resume(self, route: str, reason: str | None = None) -> None:
            events.append(("resume", route, reason or ""))

        async def wait(self, route: str, delay_s: float) -> None:
            raise AssertionError("the start check sleeps its own backoff")

    await watch_routes([asset_route()], client, Pauses(), 5.0, sleep)  # type: ignore[arg-type]
    assert events == [("pause", "t", "asset_not_found"), ("resume", "t", "asset_not_found")]


def test_a_verdict_line_says_ok_or_what_to_fix() -> None:
    assert Verdict("r", True, "job j takes the batch").line() == "ok    route 'r': job j takes the batch"
    assert Verdict("r", False, "bad", hint="fix it").line() == "FAIL  route 'r': bad; fix: fix it"
