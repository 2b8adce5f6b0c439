"""Avro records in the Confluent wire format, through a real schema registry (Apicurio Registry from Maven
Central, `service.dev.apicurio`), the real broker, Dagster and worker.

The records are written by confluent-kafka's own `AvroSerializer` against the registry (schema id in
the payload prefix: magic byte 0), and sent by its own producer. The route matches on a decoded field;
its runs receive the decoded records inline, with their schema id and subject; a record whose schema id
the registry does not know goes to the DLQ at stage `decode` with the reason, and its batch-mates go on.
"""

from __future__ import annotations

import asyncio
import io
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from service.dev.apicurio import ApicurioRegistry
from service.kafka import ensure_topics
from tests.conftest import Stack
from tests.support import ROOT, DagsterApi, dead_letters, eventually, executed_runs, route_toml, unique

pytestmark = pytest.mark.integration

ORDER_SCHEMA = {
    "type": "record", "name": "Order", "namespace": "shop",
    "fields": [
        {"name": "type", "type": "string"},
        {"name": "order_id", "type": "string"},
        {"name": "customer", "type": "string"},
        {"name": "amount", "type": "double"},
    ],
}
UNKNOWN_ID = 987_654


@pytest.fixture(scope="module")
def registry() -> Iterator[ApicurioRegistry]:
    """A fresh Apicurio Registry (in-memory storage) for this module, stopped whatever happens."""
    workdir = ROOT / ".test-stack" / unique("apicurio")
    server = ApicurioRegistry(workdir)
    try:
        server.start()
        yield server
    finally:
        server.stop()
    if os.environ.get("KEEP_TEST_STACK") != "1":
        shutil.rmtree(workdir, ignore_errors=True)


def order(i: int) -> dict[str, Any]:
    return {"type": "order.created" if i % 3 else "order.updated", "order_id": f"o-{i}",
            "customer": f"c-{i % 5}", "amount": 2.5 + i}


def serialize(registry_url: str, topic: str, values: list[dict[str, Any]]) -> list[bytes]:
    """Each value as confluent-kafka's AvroSerializer writes it (registering the schema under topic-value)."""
    with SchemaRegistryClient({"url": registry_url}) as client:
        serializer = AvroSerializer(client, orjson.dumps(ORDER_SCHEMA).decode())
        return [serializer(value, SerializationContext(topic, MessageField.VALUE)) for value in values]


def unknown_id_record(value: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(ORDER_SCHEMA), value)
    return b"\x00" + struct.pack(">I", UNKNOWN_ID) + buf.getvalue()


def send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(30) == 0


async def inline_records(api: DagsterApi, run_id: str) -> list[dict[str, Any]]:
    details = await api.run_details(run_id)
    config = yaml.safe_load(details["runConfigYaml"])
    [op] = config["ops"].values()
    return orjson.loads(op["config"]["records_json"])  # type: ignore[no-any-return]


async def test_avro_records_match_on_decoded_fields_and_reach_runs_decoded(
        stack: Stack, dagster_api: DagsterApi, registry: ApicurioRegistry, start_worker: Any,
        tmp_path: Path) -> None:
    topic = unique("payments")
    dlq = unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 1})
    values = [order(i) for i in range(12)]
    framed = await asyncio.to_thread(serialize, registry.url, topic, values)
    assert all(v[0] == 0 for v in framed)  # magic byte 0: a 4-byte schema id in front
    schema_id = struct.unpack(">I", framed[0][1:5])[0]
    poison_at = 5
    records = [*framed[:poison_at], unknown_id_record(order(99)), *framed[poison_at:]]
    await asyncio.to_thread(send, stack.bootstrap, topic, records)
    routes = route_toml(topic, value_format="avro", match="MATCH", max_wait_s=1.0).replace(
        'match = "MATCH"', 'match = { "value.type" = "order.created" }')
    await start_worker(routes, KAFKA_DAGSTER_DLQ_TOPIC=dlq, KAFKA_DAGSTER_SCHEMA_REGISTRY_URL=registry.url)

    expected = [v for v in values if v["type"] == "order.created"]

    async def runs_done() -> list[dict[str, Any]]:
        runs = executed_runs(await dagster_api.runs(topic))
        if sum(int(r["tags"]["kafka/record_count"]) for r in runs) < len(expected):
            return []
        return runs if all(r["status"] in ("SUCCESS", "FAILURE") for r in runs) else []

    runs = await eventually(runs_done, 120, "runs covering every order.created record")
    received: list[dict[str, Any]] = []
    for run in runs:
        received.extend(await inline_records(dagster_api, run["runId"]))
    received.sort(key=lambda r: r["offset"])
    assert [orjson.loads(r["value"]) for r in received] == expected
    assert {(r["value_schema_id"], r["value_subject"]) for r in received} == {(str(schema_id), f"{topic}-value")}
    assert all(run["status"] == "SUCCESS" for run in runs), [(r["runId"], r["status"]) for r in runs]

    letters = await eventually(lambda: dead_letters(stack.bootstrap, dlq), 60, "the unknown id's dead letter")
    [letter] = letters
    assert letter.origin == (topic, 0, poison_at)
    assert (letter.stage, letter.dlq["dlq.error.class"]) == ("decode", "UnknownSchema")
    assert f"schema {UNKNOWN_ID} is not in the schema registry" in letter.dlq["dlq.error.message"]
    assert letter.value == records[poison_at]  # byte for byte


async def test_json_schema_records_are_checked_against_their_writer_schema(
        stack: Stack, dagster_api: DagsterApi, registry: ApicurioRegistry, start_worker: Any) -> None:
    """JSONSerializer frames: a value that breaks its writer schema (written around the serializer, which
    would refuse it) is dead-lettered at decode; the others reach their run as they were written."""
    topic = unique("orders-js")
    dlq = unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 1})
    schema = orjson.dumps({"type": "object", "required": ["order_id", "customer", "amount"],
                           "properties": {"order_id": {"type": "string"}, "customer": {"type": "string"},
                                          "amount": {"type": "number"}}}).decode()

    def serialize_json() -> list[bytes]:
        with SchemaRegistryClient({"url": registry.url}) as client:
            serializer = JSONSerializer(schema, client)
            return [serializer(order(i), SerializationContext(topic, MessageField.VALUE)) for i in range(4)]

    framed = await asyncio.to_thread(serialize_json)
    breaking = framed[0][:5] + orjson.dumps({"order_id": 7, "customer": "c", "amount": 1})
    records = [framed[0], framed[1], breaking, framed[2], framed[3]]
    await asyncio.to_thread(send, stack.bootstrap, topic, records)
    await start_worker(route_toml(topic, value_format="json_schema", max_wait_s=1.0),
                       KAFKA_DAGSTER_DLQ_TOPIC=dlq, KAFKA_DAGSTER_SCHEMA_REGISTRY_URL=registry.url)

    async def runs_done() -> list[dict[str, Any]]:
        runs = executed_runs(await dagster_api.runs(topic))
        if sum(int(r["tags"]["kafka/record_count"]) for r in runs) < 4:
            return []
        return runs if all(r["status"] in ("SUCCESS", "FAILURE") for r in runs) else []

    runs = await eventually(runs_done, 120, "runs covering the four valid records")
    received: list[dict[str, Any]] = []
    for run in runs:
        received.extend(await inline_records(dagster_api, run["runId"]))
    assert sorted(r["offset"] for r in received) == [0, 1, 3, 4]
    assert sorted((orjson.loads(r["value"]) for r in received), key=lambda v: v["order_id"]) == [
        order(i) for i in range(4)]
    letters = await eventually(lambda: dead_letters(stack.bootstrap, dlq), 60, "the breaking value's dead letter")
    [letter] = letters
    assert (letter.origin, letter.stage, letter.dlq["dlq.error.class"]) == ((topic, 0, 2), "decode",
                                                                             "UndecodableValue")
    assert "breaks its JSON Schema" in letter.dlq["dlq.error.message"]
