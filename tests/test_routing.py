"""Many routes per topic through the real broker, Dagster and worker: match, fan-out, unmatched, patterns, limits.

One worker serves every route of this module (its flows start together in
the module fixture, so their waits overlap); the kill -9 scenario runs workers
of its own, concurrently, from the same fixture. Which route should take which record is decided here by plain Python
over what the topic holds (an oracle independent of `service.matching`), and
each route's runs are checked against it: every matching record in exactly
one run of its route, ranges tight around the route's own records, record
counts equal to what the route matched.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from service.kafka import ensure_topics, read_topic
from tests.conftest import Stack
from tests.support import (
    ROOT,
    DagsterApi,
    WorkerProcess,
    dead_letters,
    eventually,
    executed_runs,
    metric,
    new_web_port,
    produce,
    unique,
)

pytestmark = pytest.mark.integration

SCHEMAS = ROOT / "schemas"
PARTITIONS = 2


def shop_event(i: int) -> bytes:
    """Refunds, small and large orders, and events no route takes, deterministically by `i`."""
    if i % 10 == 9:
        return orjson.dumps({"type": "order.updated", "order_id": f"o-{i}"})
    if i % 3 == 0:
        return orjson.dumps({"type": "refund.issued", "refund_id": f"r-{i}", "order_id": f"o-{i}",
                             "customer": f"c-{i % 5}", "amount": 4.0})
    amount = 150.0 if i % 3 == 1 else 20.0
    return orjson.dumps({"type": "order.created", "order_id": f"o-{i}", "customer": f"c-{i % 5}", "amount": amount})


# route suffix -> which decoded values it takes (the oracle)
ORACLE: dict[str, Callable[[dict[str, Any]], bool]] = {
    "created": lambda v: v.get("type") == "order.created",
    "refunds": lambda v: v.get("type") == "refund.issued",
    "large": lambda v: v.get("type") == "order.created" and v.get("amount", 0) > 100,
}


def shop_routes(topic: str, prefix: str, **extra: str) -> str:
    """Three routes on `topic`: created orders (read back from Kafka), refunds, and large orders (fan-out)."""
    common = "max_records = 40\nmax_bytes = 1048576\nmax_wait_s = 1.0\n"
    return (
        f'[[routes]]\nname = "{prefix}created"\ntopic = "{topic}"\njob = "process_orders"\n{common}'
        f'match = {{ "value.type" = "order.created" }}\nschema_file = "{SCHEMAS / "order.json"}"\n'
        "inline_max_bytes = 0\n"  # its runs read their records back from Kafka, through the match
        f'[[routes]]\nname = "{prefix}refunds"\ntopic = "{topic}"\njob = "process_refunds"\n'
        f'batch_op = "read_refunds"\n{common}match = {{ "value.type" = "refund.issued" }}\n'
        f'schema_file = "{SCHEMAS / "refund.json"}"\n'
        f'[[routes]]\nname = "{prefix}large"\ntopic = "{topic}"\njob = "process_orders"\n{common}'
        f'match = {{ "value.type" = "order.created", "value.amount" = {{ ">" = 100 }} }}\n'
        + "".join(f"{line}\n" for line in extra.values())
    )


@dataclass
class Routed:
    worker: WorkerProcess
    dlq: str
    shop: str  # three routes, unmatched skipped
    strict: str  # the same three routes, unmatched dead-lettered
    rate: str  # max_runs_per_minute = 3
    pattern_prefix: str
    sent: dict[str, int]
    killed: asyncio.Task[KilledMidStream]  # the kill -9 scenario, on workers of its own


@dataclass
class KilledMidStream:
    topic: str
    dlq: str
    first: WorkerProcess  # killed with SIGKILL after its first launches
    second: WorkerProcess  # its successor in the same group


def start_worker_process(stack: Stack, workdir: Path, routes: str, group: str, dlq: str, **env: str) -> WorkerProcess:
    routes_path = workdir / f"routes-{unique('r')}.toml"
    routes_path.write_text(routes)
    port = new_web_port()
    worker_env = dict(os.environ)
    worker_env.update(KAFKA_BOOTSTRAP_SERVERS=stack.bootstrap, DAGSTER_GRAPHQL_URL=stack.dagster.graphql_url,
                      KAFKA_DAGSTER_ROUTES=str(routes_path), KAFKA_DAGSTER_GROUP_ID=group,
                      KAFKA_DAGSTER_DLQ_TOPIC=dlq, KAFKA_DAGSTER_WEB_PORT=str(port),
                      KAFKA_DAGSTER_SESSION_TIMEOUT_S="10", PYTHONUNBUFFERED="1", **env)
    worker = WorkerProcess(worker_env, workdir / f"worker-{port}.log", port)
    worker.start()
    return worker


@pytest.fixture(scope="module")
async def routed(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Routed]:
    u = unique("routing")
    shop, strict, rate, pattern_prefix = f"{u}.shop", f"{u}.strict", f"{u}.rate", f"{u}-new"
    dlq = unique("dlq")
    await ensure_topics(stack.bootstrap, {shop: PARTITIONS, strict: PARTITIONS, rate: 1})
    pattern = pattern_prefix.replace(".", "\\\\.").replace("-", "\\\\-") + "\\\\..*"
    routes = (shop_routes(shop, "") + shop_routes(strict, "strict-", topics=f'[topics."{strict}"]\n'
                                                                          'unmatched = "dead_letter"')
              + f'[[routes]]\nname = "rate"\ntopic = "{rate}"\njob = "process_orders"\nmax_records = 50\n'
                'max_bytes = 1048576\nmax_wait_s = 0.5\nmax_runs_per_minute = 3\n'
              + f'[[routes]]\nname = "new-topics"\ntopic_pattern = "{pattern}"\njob = "process_orders"\n'
                'max_records = 100\nmax_bytes = 1048576\nmax_wait_s = 1.0\n')
    workdir = tmp_path_factory.mktemp("routing")
    worker = start_worker_process(stack, workdir, routes, unique("group"), dlq, KAFKA_DAGSTER_TOPIC_REFRESH_S="3")
    killed = asyncio.create_task(kill_9_mid_stream(stack, workdir, f"{u}.killed"))
    try:
        await worker.wait_ready()
        # A topic created after the worker started, matching its topic_pattern: picked up within the
        # metadata refresh (3 s here), through a rebalance, which is let pass before the rate-limit burst.
        new_topic = f"{pattern_prefix}.eu"
        sent = {new_topic: await produce(stack.bootstrap, new_topic, [shop_event(i) for i in range(50)], 2)}
        await eventually(lambda: _assigned(worker, new_topic), 120, "the new topic assigned to the worker")
        sent |= {
            shop: await produce(stack.bootstrap, shop, [shop_event(i) for i in range(300)], PARTITIONS),
            strict: await produce(stack.bootstrap, strict, [shop_event(i) for i in range(150)], PARTITIONS),
        }
        sent[rate] = await burst_past_the_rate_limit(stack.bootstrap, DagsterApi(stack.dagster.graphql_url), rate)
        yield Routed(worker, dlq, shop, strict, rate, pattern_prefix, sent, killed)
    finally:
        worker.stop()
        if not killed.done():
            killed.cancel()
        elif not killed.cancelled() and killed.exception() is None:
            killed.result().second.stop()


async def kill_9_mid_stream(stack: Stack, workdir: Path, topic: str) -> KilledMidStream:
    """A worker of three routes on one topic is killed (SIGKILL) just after its first launch, with records
    still arriving; a second worker of the same group takes over."""
    group, dlq = unique("group"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: PARTITIONS})
    routes = shop_routes(topic, "killed-")
    first = start_worker_process(stack, workdir, routes, group, dlq)
    try:
        await first.wait_ready()
        await produce(stack.bootstrap, topic, [shop_event(i) for i in range(200)], PARTITIONS)

        async def launched() -> bool:
            return "launched run" in first.log_path.read_text(errors="replace")

        await eventually(launched, 120, "the first launch before the kill", interval_s=0.05)
    finally:
        first.kill()
    await produce(stack.bootstrap, topic, [shop_event(i) for i in range(200, 300)], PARTITIONS)
    second = start_worker_process(stack, workdir, routes, group, dlq)
    return KilledMidStream(topic, dlq, first, second)


async def burst_past_the_rate_limit(bootstrap: str, api: DagsterApi, topic: str) -> int:
    """Three batches that close on time (20 records, 1 s apart) use the minute's three launches; then
    100 records in small steps while the route is held: without the limit they would close on time in
    batches of about 20; held, they fill two batches of max_records (50)."""
    sent = 0
    for _ in range(3):
        sent += await produce(bootstrap, topic, [order_event(sent + i) for i in range(20)])
        await asyncio.sleep(1.0)

    async def three_runs() -> bool:
        return len(await api.runs(topic)) >= 3

    await eventually(three_runs, 60, "the first three runs")
    for _ in range(10):
        sent += await produce(bootstrap, topic, [order_event(sent + i) for i in range(10)])
        await asyncio.sleep(0.25)
    return sent


def order_event(i: int) -> bytes:
    return orjson.dumps({"type": "order.created", "order_id": f"o-{i}", "customer": "c", "amount": 1.0})


async def expected_by_route(bootstrap: str, topic: str, prefix: str) -> tuple[dict[str, set[tuple[int, int]]],
                                                                              set[tuple[int, int]]]:
    """route name -> the (partition, offset) it should take; and the positions no route takes."""
    expected: dict[str, set[tuple[int, int]]] = {prefix + name: set() for name in ORACLE}
    unmatched = set()
    for partition, offset, message in await read_topic(bootstrap, topic):
        value = orjson.loads(message.value)
        taken = [prefix + name for name, selects in ORACLE.items() if selects(value)]
        for name in taken:
            expected[name].add((partition, offset))
        if not taken:
            unmatched.add((partition, offset))
    return expected, unmatched


def route_problems(runs: list[dict[str, Any]], expected: set[tuple[int, int]], finished: bool = True) -> list[str]:
    """Where one route's runs break the per-route invariant; [] when each expected record is in exactly one run."""
    problems = []
    seen: dict[tuple[int, int], int] = {}
    for run in runs:
        tags = run["tags"]
        partition, start, end = int(tags["kafka/partition"]), int(tags["kafka/offset_start"]), int(
            tags["kafka/offset_end"])
        own = {(partition, o) for o in range(start, end + 1)} & expected
        if (partition, start) not in expected or (partition, end) not in expected:
            problems.append(f"run {run['runId']} range {partition}/{start}-{end} is not tight around its records")
        if len(own) != int(tags["kafka/record_count"]):
            problems.append(f"run {run['runId']} holds {tags['kafka/record_count']} records, its range {len(own)}")
        if finished and run["status"] != "SUCCESS":
            problems.append(f"run {run['runId']} ended {run['status']}")
        for position in own:
            seen[position] = seen.get(position, 0) + 1
    problems += [f"{p} is in {n} runs" for p, n in seen.items() if n > 1]
    problems += [f"{p} is in no run" for p in sorted(expected - set(seen))]
    return problems


async def routes_settled(api: DagsterApi, bootstrap: str, topic: str, prefix: str,
                         finished: bool = True) -> dict[str, list[str]] | None:
    """Per route, its problems once every expected record is in a launched run (and, if `finished`,
    every run of the topic finished)."""
    expected, _ = await expected_by_route(bootstrap, topic, prefix)
    runs = executed_runs(await api.runs(topic))
    if finished and any(run["status"] not in ("SUCCESS", "FAILURE", "CANCELED") for run in runs):
        return None
    problems = {}
    for name, positions in expected.items():
        own = [run for run in runs if run["tags"]["kafka/route"] == name]
        problems[name] = route_problems(own, positions, finished)
        if any(p.endswith("is in no run") for p in problems[name]):
            return None
    return problems


async def test_each_route_of_a_shared_topic_runs_exactly_the_records_it_matches(
        routed: Routed, stack: Stack, dagster_api: DagsterApi) -> None:
    problems = await eventually(lambda: routes_settled(dagster_api, stack.bootstrap, routed.shop, ""), 240,
                                "every route's records in runs")
    assert problems == {"created": [], "refunds": [], "large": []}
    expected, unmatched = await expected_by_route(stack.bootstrap, routed.shop, "")
    assert len(unmatched) == 30 and all(expected.values())
    samples = await routed.worker.metrics()
    assert metric(samples, "kafka_dagster_messages_unmatched_total", topic=routed.shop) == len(unmatched)
    assert [d for d in await dead_letters(stack.bootstrap, routed.dlq) if d.origin[0] == routed.shop] == []
    # The created route's runs read their records back from Kafka: each kept exactly its route's records.
    runs = {r["runId"]: r for r in await dagster_api.runs(routed.shop) if r["tags"]["kafka/route"] == "created"}
    batches = [m for m in await dagster_api.materializations("order_batches") if m["runId"] in runs]
    assert len(batches) == len(runs)
    for batch in batches:
        assert batch["metadata"]["records_source"] == "kafka"
        assert batch["metadata"]["records_received"] == int(runs[batch["runId"]]["tags"]["kafka/record_count"])
    refunds = {r["runId"] for r in await dagster_api.runs(routed.shop) if r["tags"]["kafka/route"] == "refunds"}
    materialized = [m for m in await dagster_api.materializations("refund_batches") if m["runId"] in refunds]
    assert len(materialized) == len(refunds)


async def test_records_no_route_matches_are_dead_lettered_at_stage_route_where_the_topic_says_so(
        routed: Routed, stack: Stack, dagster_api: DagsterApi) -> None:
    problems = await eventually(lambda: routes_settled(dagster_api, stack.bootstrap, routed.strict, "strict-"), 240,
                                "every route's records in runs")
    assert problems == {"strict-created": [], "strict-refunds": [], "strict-large": []}
    _, unmatched = await expected_by_route(stack.bootstrap, routed.strict, "strict-")

    async def unmatched_letters() -> list[Any]:
        letters = [d for d in await dead_letters(stack.bootstrap, routed.dlq) if d.origin[0] == routed.strict]
        return letters if len(letters) >= len(unmatched) else []

    letters = await eventually(unmatched_letters, 60, "the unmatched records in the DLQ")
    assert {(p, o) for _, p, o in (d.origin for d in letters)} == unmatched
    assert len(letters) == len(unmatched) == 15
    assert {d.stage for d in letters} == {"route"}
    samples = await routed.worker.metrics()
    assert metric(samples, "kafka_dagster_dlq_messages_total", topic=routed.strict, stage="route") == 15


async def test_a_topic_created_later_that_matches_a_topic_pattern_becomes_runs(
        routed: Routed, stack: Stack, dagster_api: DagsterApi) -> None:
    topic = f"{routed.pattern_prefix}.eu"
    sent = routed.sent[topic]

    async def runs_hold_everything() -> list[dict[str, Any]]:
        runs = [r for r in executed_runs(await dagster_api.runs(topic)) if r["status"] == "SUCCESS"]
        return runs if sum(int(r["tags"]["kafka/record_count"]) for r in runs) >= sent else []

    runs = await eventually(runs_hold_everything, 120, "the new topic's records in runs")
    everything = {(p, o) for p, o, _ in await read_topic(stack.bootstrap, topic)}
    assert route_problems(runs, everything) == []
    assert {r["tags"]["kafka/route"] for r in runs} == {"new-topics"}


async def test_max_runs_per_minute_holds_launches_and_lets_batches_grow(
        routed: Routed, stack: Stack, dagster_api: DagsterApi) -> None:
    sent = routed.sent[routed.rate]

    async def all_in_runs() -> list[dict[str, Any]]:
        runs = [r for r in await dagster_api.runs(routed.rate) if r["status"] == "SUCCESS"]
        return runs if sum(int(r["tags"]["kafka/record_count"]) for r in runs) >= sent else []

    runs = sorted(await eventually(all_in_runs, 240, "the rate-limited route's records in runs"),
                  key=lambda r: r["creationTime"])
    everything = {(p, o) for p, o, _ in await read_topic(stack.bootstrap, routed.rate)}
    assert route_problems(runs, everything) == []
    created = [r["creationTime"] for r in runs]
    for index in range(len(created)):
        window = [t for t in created if created[index] <= t < created[index] + 60]
        assert len(window) <= 3, f"{len(window)} runs within a minute: {created}"
    counts = [int(r["tags"]["kafka/record_count"]) for r in runs]
    assert counts == [20, 20, 20, 50, 50], counts
    assert created[3] - created[0] >= 59, created
    samples = await routed.worker.metrics()
    assert metric(samples, "kafka_dagster_route_throttled_seconds_total", route="rate") > 30


async def test_a_worker_killed_mid_stream_keeps_every_routes_records_in_exactly_one_run(
        routed: Routed, stack: Stack, dagster_api: DagsterApi) -> None:
    killed = await routed.killed
    assert killed.first.proc is not None and killed.first.proc.returncode == -9
    problems = await eventually(lambda: routes_settled(dagster_api, stack.bootstrap, killed.topic, "killed-"), 240,
                                "every route's records in exactly one run after the kill")
    assert problems == {"killed-created": [], "killed-refunds": [], "killed-large": []}
    assert await dead_letters(stack.bootstrap, killed.dlq) == []
    log = killed.second.log_path.read_text(errors="replace")
    assert all(f"reconciled route 'killed-{name}' on {killed.topic}/" in log for name in ORACLE)


async def _assigned(worker: WorkerProcess, topic: str) -> bool:
    """True once the worker reports lag for a partition of `topic` (it reads lag only of partitions it holds)."""
    samples = await worker.metrics()
    return any(name == "kafka_dagster_consumer_lag" and ("topic", topic) in labels for name, labels in samples)
