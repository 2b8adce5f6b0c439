"""/status: `Delivery.snapshot` of what a worker holds, and the table `kafka-dagster status` prints from it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson
from prometheus_client import CollectorRegistry

from service.routes import Route, RouteTable
from service.status import render
from tests.unit.test_delivery import JOB, Harness


async def test_the_snapshot_shows_open_and_launched_batches_runs_and_the_reconcile(
        registry: CollectorRegistry) -> None:
    h = Harness(registry)  # max_records 3, max_wait_s 5
    try:
        await h.feed(0, 1, 2, 3, 4)
        assert await h.settle()
        h.clock.now += 1.5

        snapshot = h.delivery.snapshot()
    finally:
        await h.close()

    orjson.dumps(snapshot)  # JSON-ready
    [partition] = snapshot["partitions"]
    assert (partition["topic"], partition["partition"], partition["done_below"]) == ("orders", 0, 3)
    [share] = partition["routes"]
    assert share["route"] == "orders" and share["covered"] == 2 and share["queued"] == 0
    assert share["inflight_runs"] == 1 and snapshot["inflight_runs"] == 1
    batch = share["open_batch"]
    assert (batch["records"], batch["offset_start"], batch["offset_end"]) == (2, 3, 4)
    assert batch["bytes"] == len(b'{"n": 3}') + len(b'{"n": 4}')
    assert batch["age_s"] == 1.5 and batch["closes_in_s"] == 3.5
    assert share["reconcile"]["runs_found"] == 0 and share["reconcile"]["at"].endswith("Z")
    assert snapshot["paused_routes"] == {} and snapshot["throttled_routes"] == {}


async def test_a_paused_route_and_a_throttled_one_say_why(registry: CollectorRegistry) -> None:
    routes = RouteTable({"orders": Route("orders", JOB, max_records=3, max_bytes=1_000_000, max_wait_s=5.0,
                                         max_runs_per_minute=1)})
    h = Harness(registry, routes)
    try:
        await h.feed(0, 1, 2, 3, 4, 5)  # two batches: the second waits a minute for its slot
        await until(lambda: h.launched() == [(0, 2)] and h.delivery.throttles["orders"].reason is not None)
        h.delivery.pauses.pause("orders", "job_not_found", "no job process_orders", "deploy it")

        snapshot = h.delivery.snapshot()
    finally:
        await h.close()

    assert snapshot["throttled_routes"] == {"orders": "max_runs_per_minute"}
    assert snapshot["paused_routes"]["orders"]["reason"] == "job_not_found"
    text = render({"version": "1", "group_id": "g", "dlq_topic": "d", **snapshot})
    assert "paused    orders: job_not_found" in text and "throttled orders: max_runs_per_minute" in text


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_the_table_has_a_row_per_route_and_partition() -> None:
    status = {
        "version": "0.1.0", "group_id": "kafka-dagster", "dlq_topic": "kafka-dagster.dlq", "inflight_runs": 2,
        "partitions": [{
            "topic": "demo.orders", "partition": 1, "committed": 120, "lag": 7, "unmatched_queued": 1,
            "routes": [{"route": "orders", "open_batch": {"records": 12, "bytes": 3100, "age_s": 1.25,
                                                          "offset_start": 121, "offset_end": 132,
                                                          "closes_in_s": 0.75},
                        "queued": 1, "covered": 120, "inflight_runs": 2,
                        "reconcile": {"at": "2024-05-01T12:00:00Z", "runs_found": 5, "covered": 99}}],
        }],
        "paused_routes": {}, "throttled_routes": {},
    }

    lines = render(status).splitlines()

    assert lines[0] == "kafka-dagster 0.1.0  group kafka-dagster  dlq kafka-dagster.dlq"
    assert lines[1] == "1 partitions owned, 2 runs in flight"
    header, row, unmatched = lines[3:6]
    assert header.split()[:3] == ["ROUTE", "PARTITION", "OPEN"]
    assert row.split() == ["orders", "demo.orders/1", "12", "rec,", "3.1", "kB,", "1.2s", "old", "(offsets",
                           "121-132)", "1", "120", "120", "7", "2", "2024-05-01T12:00:00Z,", "5", "runs"]
    assert unmatched.split()[:4] == ["(unmatched)", "demo.orders/1", "-", "1"]
    assert lines[-1] == "no route paused or throttled"
