"""Dagster-native targets through the real broker, worker and Dagster: a user's own code location, asset
selections, partitions from events, and `kafka-dagster check`.

The fixture project `tests/fixtures/byo_project` (docs/byo.md; it imports only the toolkit) is loaded as a
second code location of the session's Dagster. One worker carries every route of the module and every flow
is produced at once; the dynamic-partitions restart runs beside it on workers of its own.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import (
    ROOT,
    DagsterApi,
    WorkerProcess,
    dead_letters,
    eventually,
    metric,
    new_web_port,
    produce,
    unique,
)

pytestmark = pytest.mark.integration

DATES = ["2024-03-01"] * 4 + ["2024-03-02"] * 4 + ["2019-06-30"] * 2 + ["2024-03-02", None] + ["2024-03-03"] * 3
SENT_DATES = {"2024-03-01", "2024-03-02", "2024-03-03"}
VIEWS = 30

MATERIALIZATIONS = """
query Materializations($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) { __typename ... on Asset { assetMaterializations(limit: 1000) {
    runId partition metadataEntries { label __typename
      ... on IntMetadataEntry { intValue } ... on TextMetadataEntry { text } } } } }
}"""

PARTITION_KEYS = """
query Keys($key: AssetKeyInput!) { assetNodeOrError(assetKey: $key) { __typename ... on AssetNode { partitionKeys } } }
"""


def route(name: str, topic: str, target: str, **extra: Any) -> str:
    fields = {"max_records": 50, "max_bytes": 1_048_576, "max_wait_s": 1.0, **extra}
    lines = ["[[routes]]", f'name = "{name}"', f'topic = "{topic}"', target]
    lines += [f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"' for k, v in fields.items()]
    return "\n".join(lines) + "\n"


def view(i: int) -> bytes:
    return orjson.dumps({"page": f"/p/{i % 4}", "user": f"u{i}"})


def dated(i: int, date: str | None) -> bytes:
    return orjson.dumps({"n": i, **({"date": date} if date else {})})


def tenant_event(tenant: str, i: int) -> bytes:
    return orjson.dumps({"tenant": tenant, "n": i})


def start_worker(stack: Stack, workdir: Path, routes: str, group: str, dlq: str, **settings: str) -> WorkerProcess:
    routes_path = workdir / f"routes-{unique('r')}.toml"
    routes_path.write_text(routes)
    port = new_web_port()
    env = dict(os.environ)
    env.update(KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap, DAGSTER_GRAPHQL_URL=stack.dagster.graphql_url,
               KAFKA_DAGSTER_ROUTES=str(routes_path), KAFKA_DAGSTER_GROUP_ID=group, KAFKA_DAGSTER_DLQ_TOPIC=dlq,
               KAFKA_DAGSTER_WEB_PORT=str(port), KAFKA_DAGSTER_SESSION_TIMEOUT_S="10",
               KAFKA_DAGSTER_ROUTE_RETRY_MAX_DELAY_S="5", PYTHONUNBUFFERED="1", **settings)
    worker = WorkerProcess(env, workdir / f"worker-{port}.log", port)
    worker.start()
    return worker


@dataclass
class Targets:
    worker: WorkerProcess
    dlq: str
    inline: str
    ranged: str
    daily: str
    unknown: str
    tenants: asyncio.Task[Restarted]


@dataclass
class Restarted:
    topic: str
    dlq: str
    first: WorkerProcess
    second: WorkerProcess
    old: list[str]  # tenants the first worker met
    new: str  # the tenant only the second worker meets


@pytest.fixture(scope="module")
async def targets(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Targets]:
    u = unique("targets")
    inline, ranged, daily, unknown = f"{u}.inline", f"{u}.ranged", f"{u}.daily", f"{u}.unknown"
    dlq = unique("dlq")
    await ensure_topics(stack.bootstrap, {inline: 1, ranged: 1, daily: 1, unknown: 1})
    routes = (route("views-inline", inline, 'assets = ["page_views"]', max_records=10)
              + route("views-range", ranged, 'assets = ["page_views"]', max_records=10, inline_max_bytes=0)
              + route("daily", daily, 'assets = ["daily_events"]', partition_key="value.date")
              + route("unknown-asset", unknown, 'assets = ["no_such_asset"]'))
    workdir = tmp_path_factory.mktemp("targets")
    # its unknown-asset route stays paused: stopping, its lane would wait the whole default hand-over (20 s)
    worker = start_worker(stack, workdir, routes, unique("group"), dlq, KAFKA_DAGSTER_SHUTDOWN_TIMEOUT_S="3")
    tenants = asyncio.create_task(dynamic_partitions_across_a_restart(stack, workdir, f"{u}.tenants"))
    try:
        await asyncio.gather(
            produce(stack.bootstrap, inline, [view(i) for i in range(VIEWS)]),
            produce(stack.bootstrap, ranged, [view(i) for i in range(VIEWS)]),
            produce(stack.bootstrap, daily, [dated(i, d) for i, d in enumerate(DATES)]),
            produce(stack.bootstrap, unknown, [view(i) for i in range(5)]),
        )
        yield Targets(worker, dlq, inline, ranged, daily, unknown, tenants)
    finally:
        workers = [worker]
        if not tenants.done():
            tenants.cancel()
        elif not tenants.cancelled() and tenants.exception() is None:
            workers.append(tenants.result().second)
        await asyncio.gather(*(asyncio.to_thread(w.stop) for w in workers))  # each hands over its open batches


async def dynamic_partitions_across_a_restart(stack: Stack, workdir: Path, topic: str) -> Restarted:
    """Two tenants reach runs through a first worker; it stops; its successor in the group meets them again
    and a third tenant."""
    group, dlq = unique("group"), unique("dlq")
    old, new = [unique("tenant"), unique("tenant")], unique("tenant")
    await ensure_topics(stack.bootstrap, {topic: 1})
    routes = route("tenants", topic, 'assets = ["tenant_events"]', partition_key="value.tenant",
                   dynamic_partitions="tenants")
    api = DagsterApi(stack.dagster.graphql_url)
    first = start_worker(stack, workdir, routes, group, dlq)
    await produce(stack.bootstrap, topic, [tenant_event(t, i) for t in old for i in range(3)])
    await eventually(lambda: runs_holding(api, topic, 6), 180, "the first tenants' runs")
    first.stop()
    second = start_worker(stack, workdir, routes, group, dlq)
    await produce(stack.bootstrap, topic, [tenant_event(t, i) for t in (old[0], new) for i in range(2)])
    return Restarted(topic, dlq, first, second, old, new)


async def runs_holding(api: DagsterApi, topic: str, records: int) -> list[dict[str, Any]]:
    """The topic's runs once they hold `records` records and every one has finished."""
    runs = await api.runs(topic)
    if sum(int(r["tags"]["kafka/record_count"]) for r in runs) < records:
        return []
    if any(r["status"] not in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
        return []
    return runs


async def materializations(api: DagsterApi, asset: str, run_ids: set[str]) -> list[dict[str, Any]]:
    data = await api.query(MATERIALIZATIONS, {"key": {"path": [asset]}})
    events = data["assetOrError"].get("assetMaterializations", [])
    for event in events:
        event["metadata"] = {e["label"]: e.get("intValue", e.get("text")) for e in event["metadataEntries"]}
    return [e for e in events if e["runId"] in run_ids]


def ranges(runs: list[dict[str, Any]]) -> list[tuple[int, int]]:
    return sorted((int(r["tags"]["kafka/offset_start"]), int(r["tags"]["kafka/offset_end"])) for r in runs)


@pytest.mark.parametrize(("which", "source"), [("inline", "inline"), ("ranged", "kafka")])
async def test_a_users_asset_receives_batches_with_their_provenance(
        targets: Targets, dagster_api: DagsterApi, which: str, source: str) -> None:
    topic = getattr(targets, which)
    runs = await eventually(lambda: runs_holding(dagster_api, topic, VIEWS), 180, f"{topic}'s runs")
    assert {r["status"] for r in runs} == {"SUCCESS"} and {r["jobName"] for r in runs} == {"__ASSET_JOB"}
    covered = [o for start, end in ranges(runs) for o in range(start, end + 1)]
    assert covered == list(range(VIEWS))  # every record in exactly one run, ranges contiguous
    by_run = {r["runId"]: r for r in runs}
    events = await materializations(dagster_api, "page_views", set(by_run))
    assert len(events) == len(runs)
    for event in events:
        tags, metadata = by_run[event["runId"]]["tags"], event["metadata"]
        assert metadata["records_source"] == source
        assert metadata["batch_id"] == tags["kafka/batch_id"] and metadata["kafka_topic"] == topic
        assert (metadata["offset_start"], metadata["offset_end"]) == (int(tags["kafka/offset_start"]),
                                                                      int(tags["kafka/offset_end"]))
        assert metadata["records_received"] == metadata["record_count"] == int(tags["kafka/record_count"])


async def test_runs_of_a_daily_partitioned_asset_are_cut_and_tagged_by_the_events_date(
        targets: Targets, stack: Stack, dagster_api: DagsterApi) -> None:
    valid = sum(1 for d in DATES if d in SENT_DATES)
    runs = await eventually(lambda: runs_holding(dagster_api, targets.daily, valid), 180, "the daily runs")
    assert {r["status"] for r in runs} == {"SUCCESS"}
    dates = {offset: date for offset, date in enumerate(DATES)}
    for run in runs:
        start, end = int(run["tags"]["kafka/offset_start"]), int(run["tags"]["kafka/offset_end"])
        assert {dates[o] for o in range(start, end + 1)} == {run["tags"]["dagster/partition"]}, run["tags"]
    assert ranges(runs) == [(0, 3), (4, 7), (10, 10), (12, 14)]
    events = await materializations(dagster_api, "daily_events", {r["runId"] for r in runs})
    assert {e["partition"] for e in events} == SENT_DATES and len(events) == len(runs)

    async def rejected() -> list[Any]:
        letters = [d for d in await dead_letters(stack.bootstrap, targets.dlq) if d.origin[0] == targets.daily]
        return letters if len(letters) >= 3 else []

    letters = {d.origin[2]: d for d in await eventually(rejected, 60, "the daily route's dead letters")}
    assert set(letters) == {8, 9, 11}
    assert {d.stage for d in letters.values()} == {"validate"}
    assert {letters[o].dlq["dlq.error.class"] for o in (8, 9)} == {"PartitionKeyNotFound"}
    assert "'2019-06-30' is not a partition of assets daily_events" in letters[8].dlq["dlq.error.message"]
    assert letters[11].dlq["dlq.error.class"] == "PartitionKeyMissing"
    assert {d.dlq["dlq.route"] for d in letters.values()} == {"daily"}


async def test_new_tenants_become_dynamic_partitions_once_across_a_worker_restart(
        targets: Targets, stack: Stack, dagster_api: DagsterApi) -> None:
    restarted = await targets.tenants
    runs = await eventually(lambda: runs_holding(dagster_api, restarted.topic, 10), 180, "the tenants' runs")
    assert {r["status"] for r in runs} == {"SUCCESS"}
    assert {r["tags"]["dagster/partition"] for r in runs} == {*restarted.old, restarted.new}
    data = await dagster_api.query(PARTITION_KEYS, {"key": {"path": ["tenant_events"]}})
    keys = data["assetNodeOrError"]["partitionKeys"]
    for tenant in (*restarted.old, restarted.new):
        assert keys.count(tenant) == 1
    events = await materializations(dagster_api, "tenant_events", {r["runId"] for r in runs})
    assert {e["partition"] for e in events} == {*restarted.old, restarted.new}
    first, second = (w.log_path.read_text(errors="replace") for w in (restarted.first, restarted.second))
    assert all(f"added partition {t!r} to the dynamic partitions 'tenants'" in first for t in restarted.old)
    assert f"added partition {restarted.new!r}" in second
    assert not any(f"added partition {t!r}" in second for t in restarted.old)  # it was there: Duplicate... is fine
    assert "paused" not in second
    assert await dead_letters(stack.bootstrap, restarted.dlq) == []


async def test_a_route_whose_asset_does_not_exist_pauses_at_start_and_dead_letters_nothing(
        targets: Targets, stack: Stack, dagster_api: DagsterApi) -> None:
    async def paused() -> bool:
        try:
            samples = await targets.worker.metrics()
        except Exception:
            return False
        return metric(samples, "kafka_dagster_route_paused", route="unknown-asset", reason="asset_not_found") == 1

    await eventually(paused, 120, "the unknown-asset route paused")
    log = targets.worker.log_path.read_text(errors="replace")
    assert "route unknown-asset paused (asset_not_found): InvalidSubsetError: asset no_such_asset not found" in log
    await eventually(lambda: runs_holding(dagster_api, targets.inline, VIEWS), 180, "the other routes' runs")
    assert await dagster_api.runs(targets.unknown) == []
    assert [d for d in await dead_letters(stack.bootstrap, targets.dlq) if d.origin[0] == targets.unknown] == []


def check(stack: Stack, tmp_path: Path, routes: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / f"{unique('check')}.toml"
    path.write_text(routes)
    env = {**os.environ, "DAGSTER_GRAPHQL_URL": stack.dagster.graphql_url, "KAFKA_DAGSTER_ROUTES": str(path),
           "KAFKA_BOOTSTRAP_SERVERS": stack.bootstrap}
    return subprocess.run([sys.executable, "-m", "service", "check"], env=env, capture_output=True, text=True,
                          timeout=120, cwd=ROOT)


async def test_check_passes_good_routes_and_names_each_kind_of_mistake(stack: Stack, tmp_path: Path) -> None:
    good = (route("views", "t.views", 'assets = ["page_views"]')
            + route("daily", "t.daily", 'assets = ["daily_events"]', partition_key="timestamp:%Y-%m-%d")
            + route("tenants", "t.tenants", 'assets = ["tenant_events"]', partition_key="value.tenant",
                    dynamic_partitions="tenants")
            + route("orders", "t.orders", 'job = "process_orders"'))
    bad = (route("unknown-job", "t.a", 'job = "no_such_job"')
           + route("unknown-asset", "t.b", 'assets = ["no_such_asset"]')
           + route("wrong-op", "t.c", 'job = "process_orders"', batch_op="no_such_op")
           + route("config", "t.d", 'job = "aggregate_orders"', batch_op="order_totals")
           + route("partitions", "t.e", 'assets = ["tenant_events"]', partition_key="value.tenant",
                   dynamic_partitions="no_such_tenants")
           + route("fine", "t.f", 'assets = ["page_views"]'))
    passed, failed = await asyncio.gather(asyncio.to_thread(check, stack, tmp_path, good),
                                          asyncio.to_thread(check, stack, tmp_path, bad))

    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert [line.split()[0] for line in passed.stdout.splitlines()[:4]] == ["ok"] * 4
    assert failed.returncode == 1, failed.stdout + failed.stderr
    lines = {line.split("'")[1]: line for line in failed.stdout.splitlines() if line.startswith(("ok", "FAIL"))}
    assert lines["unknown-job"].startswith("FAIL") and "job no_such_job not found" in lines["unknown-job"]
    assert "asset no_such_asset not found" in lines["unknown-asset"]
    assert "batch_op 'no_such_op' is not an op of job process_orders" in lines["wrong-op"]
    assert "job aggregate_orders does not accept the batch config" in lines["config"]
    assert "unknown partitions definition" in lines["partitions"] and "no_such_tenants" in lines["partitions"]
    assert lines["fine"].startswith("ok")
    assert "1 of 6 routes ok, 5 wrong" in failed.stdout
