"""Framed values through `Delivery`: decoded before routing (match and partition key on Avro fields), the
run gets them as JSON with their schema id and subject; an unknown id or a bad frame is dead-lettered at
decode alone; a registry that is down is waited out, one that refuses pauses the route (the registry's
HTTP faked with httpx.MockTransport; the real one: tests/test_schema_registry.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import struct
from typing import Any

import fastavro
import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.matching import compile_match
from service.partitions import compile_partition_key
from service.registry import SchemaRegistry
from service.routes import Route, RouteTable
from service.settings import RegistrySettings
from tests.unit.test_delivery import JOB, Harness

SCHEMA = {"type": "record", "name": "Payment", "fields": [
    {"name": "id", "type": "long"}, {"name": "status", "type": "string"},
    {"name": "day", "type": "string"}]}
PARSED = fastavro.parse_schema(SCHEMA)


def framed(value: dict[str, Any], schema_id: int = 1) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, PARSED, value)
    return b"\x00" + struct.pack(">I", schema_id) + buf.getvalue()


class Answers:
    def __init__(self) -> None:
        self.status = 200
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.status == -1:
            raise httpx.ConnectError("refused", request=request)
        if self.status != 200:
            return httpx.Response(self.status, json={"error_code": self.status})
        if request.url.path == "/schemas/ids/1":
            return httpx.Response(200, json={"schema": orjson.dumps(SCHEMA).decode()})
        if request.url.path == "/schemas/ids/1/versions":
            return httpx.Response(200, json=[{"subject": "payments-value", "version": 1}])
        return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found."})


def harness(answers: Answers, **route: Any) -> Harness:
    policy = {"max_records": 10, "max_bytes": 1_000_000, "max_wait_s": 5.0, "value_format": "avro", **route}
    routes = RouteTable({"payments": Route("orders", JOB, name="payments", **policy)})
    registry = SchemaRegistry(RegistrySettings("http://registry.test"), transport=httpx.MockTransport(answers))
    return Harness(CollectorRegistry(), routes, schema_registry=registry)


def payment(n: int, status: str = "settled") -> dict[str, Any]:
    return {"id": n, "status": status, "day": "2026-05-01"}


async def close(h: Harness) -> None:
    h.clock.now += 5
    await h.delivery.tick()
    assert await h.settle()


async def test_decoded_values_are_matched_and_reach_the_run_as_json() -> None:
    answers = Answers()
    h = harness(answers, match=compile_match({"value.status": "settled"}))
    await h.deliver(h.record(0, framed(payment(0))), h.record(1, framed(payment(1, "open"))),
                    h.record(2, framed(payment(2))))
    await close(h)
    assert h.launched() == [(0, 2)]
    config, tags = h.client.launches[0]
    assert tags["kafka/route"] == "payments"
    records = json.loads(config["ops"]["read_batch"]["config"]["records_json"])
    assert [(r["offset"], json.loads(r["value"]), r["value_schema_id"], r["value_subject"]) for r in records] == [
        (0, payment(0), "1", "payments-value"), (2, payment(2), "1", "payments-value")]
    assert answers.calls == 2  # the schema and its subject, once
    assert h.sink.sent == []
    await h.close()


async def test_a_partition_key_is_read_from_a_decoded_field() -> None:
    from service.routing import route_record

    h = harness(Answers())
    route = Route("orders", JOB, 10, 1_000_000, 5.0, value_format="avro",
                  partition_key=compile_partition_key("value.day"))
    record = h.record(0, framed(payment(0)))
    assert h.delivery.framed is not None
    await h.delivery.framed.decode(route, [record])
    [verdict] = route_record([route], record, 10_000)
    assert (verdict.failure, verdict.partition_key) == (None, "2026-05-01")
    await h.close()


async def test_unknown_ids_and_bad_frames_are_dead_lettered_at_decode_alone() -> None:
    h = harness(Answers())
    await h.deliver(h.record(0, framed(payment(0))), h.record(1, framed(payment(1), schema_id=9)),
                    h.record(2, b'{"id": 2}'), h.record(3, framed(payment(3))))
    await close(h)
    assert h.launched() == [(0, 0), (3, 3)]
    assert [(m["dlq"]["dlq.offset"], m["dlq"]["dlq.stage"], m["dlq"]["dlq.error.class"]) for m in h.sink.sent] == [
        ("1", "decode", "UnknownSchema"), ("2", "decode", "BadFraming")]
    assert "schema 9 is not in the schema registry" in h.sink.sent[0]["dlq"]["dlq.error.message"]
    h.assert_acks_follow_their_launch_or_dlq()
    await h.close()


@pytest.mark.parametrize(("status", "paused"), [(-1, False), (503, False), (401, True)])
async def test_a_registry_that_is_down_or_refuses_dead_letters_nothing(status: int, paused: bool) -> None:
    answers = Answers()
    answers.status = status
    h = harness(answers)
    delivering = asyncio.create_task(h.deliver(h.record(0, framed(payment(0))), h.record(1, framed(payment(1)))))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if answers.calls >= 3:
            break
    assert not delivering.done() and answers.calls >= 3
    assert h.delivery.pauses.is_paused("payments") is paused
    if paused:
        assert h.delivery.pauses.status()["payments"]["reason"] == "schema_registry_auth"
    answers.status = 200
    await asyncio.wait_for(delivering, 5)
    await close(h)
    assert h.launched() == [(0, 1)] and h.sink.sent == []
    assert not h.delivery.pauses.is_paused("payments")
    await h.close()


async def test_a_failed_run_s_framed_records_are_copied_to_the_dlq() -> None:
    """Read back for a failed run, framed records are decoded again, so the route's match selects them."""
    from tests.unit.test_delivery import _failed_run

    h = harness(Answers(), match=compile_match({"value.status": "settled"}))
    run = _failed_run("failed-run", 0, 2)
    h.client.runs.append(dataclasses.replace(run, tags={**run.tags, "kafka/route": "payments"}))
    h.read_back[(0, 2)] = [h.record(0, framed(payment(0))), h.record(1, framed(payment(1, "open"))),
                           h.record(2, framed(payment(2)))]
    await h.deliver(*(h.record(o, framed(payment(o))) for o in range(4)))
    await close(h)
    await h.delivery.watcher.poll()
    assert h.sink.offsets("run") == [0, 2]  # the route's own records of the range
    await h.close()
