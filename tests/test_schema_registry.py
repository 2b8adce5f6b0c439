"""Avro records in the Confluent wire format, through a real schema registry (Apicurio Registry from Maven
Central, `service.dev.apicurio`), the real broker, Dagster and worker.

The records are written by confluent-kafka's own `AvroSerializer` against the registry (schema id in
the payload prefix: magic byte 0), and sent by its own producer. The route matches on a decoded field;
its runs receive the decoded records inline, with their schema id and subject; a record whose schema id
the registry does not know goes to the DLQ at stage `decode` with the reason, and its batch-mates go on.
Keys framed the same way (`key_format`, the serializer in a key's context) are decoded, matched and given to
the runs too.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
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
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from service.dev.apicurio import CCOMPAT_PATH, ApicurioRegistry
from service.kafka import ensure_topics, read_topic
from tests.conftest import Stack, Workers
from tests.fixtures.shop_proto import descriptor_set, order_class
from tests.support import (
    ROOT,
    Accounting,
    DagsterApi,
    WorkerProcess,
    account,
    dead_letters,
    eventually,
    executed_runs,
    metric,
    route_toml,
    unique,
    until_paused,
    until_resumed,
)
from tests.support import settled as invariant_once_settled
from tests.tls import Nginx, issue_server_cert, make_ca

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
REGISTRY_PASSWORD = "s3cret-registry-pass"
# confluent-kafka's client waits forever without one; with it, a request the registry never answers (seen once
# in a whole-suite run) is retried by the client, as a transport error
REGISTRY_TIMEOUT_S = 15


@pytest.fixture(scope="module")
def registry() -> Iterator[ApicurioRegistry]:
    """A fresh Apicurio Registry (in-memory storage) for this module, stopped whatever happens."""
    workdir = ROOT / ".test-stack" / unique("apicurio")
    server = ApicurioRegistry(workdir, persistent=True)  # the outage scenario restarts it
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
    with SchemaRegistryClient({"url": registry_url, "timeout": REGISTRY_TIMEOUT_S}) as client:
        serializer = AvroSerializer(client, orjson.dumps(ORDER_SCHEMA).decode())
        return [serializer(value, SerializationContext(topic, MessageField.VALUE)) for value in values]


def unknown_id_record(value: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(ORDER_SCHEMA), value)
    return b"\x00" + struct.pack(">I", UNKNOWN_ID) + buf.getvalue()


def send(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes] | None = None) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for value, key in zip(values, keys or [None] * len(values), strict=True):
        producer.produce(topic, value=value, key=key)
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
        with SchemaRegistryClient({"url": registry.url, "timeout": REGISTRY_TIMEOUT_S}) as client:
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


# -- One worker for the scenarios below: Protobuf, schema evolution with corrupt payloads, framed keys, a registry
# outage --

@dataclass
class Framed:
    """The module's shared worker and the topics of its routes (one DLQ for all of them)."""

    worker: WorkerProcess
    dlq: str
    proto: str
    evolve: str
    keys: str
    outage: str


def framed_route(name: str, topic: str, fmt: str, match: str = "", key_format: str = "json") -> str:
    return (f'[[routes]]\nname = "{name}"\ntopic = "{topic}"\njob = "process_orders"\nvalue_format = "{fmt}"\n'
            f'key_format = "{key_format}"\nmax_records = 500\nmax_bytes = 1048576\nmax_wait_s = 1.0\n{match}\n')


@pytest.fixture(scope="module")
async def framed(stack: Stack, registry: ApicurioRegistry,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Framed]:
    u = unique("framed")
    topics = Framed(None, unique("dlq"), f"{u}.proto", f"{u}.evolve", f"{u}.keys",  # type: ignore[arg-type]
                    f"{u}.outage")
    await ensure_topics(stack.bootstrap, {topics.proto: 1, topics.evolve: 1, topics.keys: 1, topics.outage: 1})
    routes = (framed_route("proto", topics.proto, "protobuf", 'match = { "value.type" = "order.created" }')
              + framed_route("evolve", topics.evolve, "avro")
              + framed_route("keys", topics.keys, "avro", 'match = { "key" = { prefix = "eu-" } }', key_format="avro")
              + framed_route("outage", topics.outage, "avro"))
    workers = Workers(stack, tmp_path_factory.mktemp("framed"))
    try:
        topics.worker = await workers.start(routes, KAFKA_DAGSTER_DLQ_TOPIC=topics.dlq,
                                            KAFKA_DAGSTER_SCHEMA_REGISTRY_URL=registry.url,
                                            KAFKA_DAGSTER_RETRY_MAX_DELAY_S="2")
        yield topics
    finally:
        workers.stop()


async def settled(api: DagsterApi, bootstrap: str, topic: str, dlq: str, expected: int) -> Accounting | None:
    """The topic's accounting once its `expected` records are placed and every run has finished."""
    accounting = await account(bootstrap, api, topic, dlq)
    runs = executed_runs(await api.runs(topic))
    if accounting.offsets < expected or accounting.problems or any(
            r["status"] not in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
        return None
    return accounting


async def runs_launched(api: DagsterApi, topic: str, records: int) -> bool:
    """The topic's runs hold `records` records (launched, maybe not finished)."""
    return sum(int(r["tags"]["kafka/record_count"]) for r in executed_runs(await api.runs(topic))) >= records


async def runs_finished(api: DagsterApi, topic: str, records: int) -> bool:
    """The topic's runs hold `records` records and have all finished."""
    runs = executed_runs(await api.runs(topic))
    return (sum(int(r["tags"]["kafka/record_count"]) for r in runs) >= records
            and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs))


async def received_values(api: DagsterApi, topic: str) -> dict[int, dict[str, Any]]:
    """Each record the topic's runs received inline, by offset."""
    received: dict[int, dict[str, Any]] = {}
    for run in executed_runs(await api.runs(topic)):
        assert run["status"] == "SUCCESS", (run["runId"], run["status"])
        for record in await inline_records(api, run["runId"]):
            assert record["offset"] not in received
            received[record["offset"]] = record
    return received


async def letters_of(bootstrap: str, dlq: str, topic: str) -> dict[int, Any]:
    """The topic's dead letters, by offset."""
    return {letter.origin[2]: letter for letter in await dead_letters(bootstrap, dlq) if letter.origin[0] == topic}


async def test_protobuf_records_of_confluent_kafkas_serializer_reach_runs_decoded(
        stack: Stack, dagster_api: DagsterApi, registry: ApicurioRegistry, framed: Framed) -> None:
    """ProtobufSerializer registers shop/order.proto (and shop/money.proto as its reference) and writes
    magic byte 0, the id, and message indexes [1] (Order is the file's second message); the route matches on
    a decoded field. Then bytes that do not decode as an Order are dead-lettered at decode alone."""
    order_cls = order_class()

    def order_message(i: int) -> Any:
        message = order_cls(type="order.created" if i % 3 else "order.updated", order_id=f"o-{i}",
                            customer=f"c-{i % 5}", amount=2.5 + i, quantity=2**40 + i)
        message.placed_at.seconds = 1_700_000_000 + i
        message.lines.add(sku=f"sku-{i}", count=i + 1)
        message.total.cents = 250 + 100 * i
        message.total.currency = "EUR"
        return message

    def serialize_proto() -> list[bytes]:
        with SchemaRegistryClient({"url": registry.url, "timeout": REGISTRY_TIMEOUT_S}) as client:
            serializer = ProtobufSerializer(order_cls, client, {"use.deprecated.format": False})
            return [serializer(order_message(i), SerializationContext(framed.proto, MessageField.VALUE))
                    for i in range(9)]

    values = await asyncio.to_thread(serialize_proto)
    assert values[0][0] == 0 and values[0][5:7] == b"\x02\x02"  # magic 0, id, indexes [1] (zigzag: count 1, 1)
    undecodable = values[1][:7] + b"\x0a\xff\xff"  # field 1 (type) claims more bytes than follow
    records = [*values[:4], undecodable, *values[4:]]
    await asyncio.to_thread(send, stack.bootstrap, framed.proto, records)

    sent = [i for i in range(9) if i % 3]  # order.created only: the others match no route and are skipped
    await eventually(lambda: runs_finished(dagster_api, framed.proto, len(sent)), 120, "runs of every order.created")
    received = await received_values(dagster_api, framed.proto)
    offsets = [i if i < 4 else i + 1 for i in sent]
    assert sorted(received) == offsets
    first = orjson.loads(received[offsets[0]]["value"])
    assert first == {"type": "order.created", "order_id": "o-1", "customer": "c-1", "amount": 3.5,
                     "placed_at": "2023-11-14T22:13:21Z", "quantity": str(2**40 + 1),
                     "lines": [{"sku": "sku-1", "count": 2}], "total": {"cents": "350", "currency": "EUR"}}
    assert {r["value_subject"] for r in received.values()} == {f"{framed.proto}-value"}
    letters = await eventually(lambda: letters_of(stack.bootstrap, framed.dlq, framed.proto), 60, "a dead letter")
    assert list(letters) == [4]
    letter = letters[4]
    assert (letter.stage, letter.dlq["dlq.error.class"]) == ("decode", "UndecodableValue")
    assert "does not decode as shop.Order" in letter.dlq["dlq.error.message"]


ORDER_V2 = {**ORDER_SCHEMA, "fields": [*ORDER_SCHEMA["fields"],
                                       {"name": "coupon", "type": ["null", "string"], "default": None}]}


def avro_serialize(registry_url: str, topic: str, schema: dict[str, Any], values: list[dict[str, Any]]) -> list[bytes]:
    with SchemaRegistryClient({"url": registry_url, "timeout": REGISTRY_TIMEOUT_S}) as client:
        serializer = AvroSerializer(client, orjson.dumps(schema).decode())
        return [serializer(value, SerializationContext(topic, MessageField.VALUE)) for value in values]


def cli(*args: str, stdin: bytes = b"", **env: str) -> subprocess.CompletedProcess[bytes]:
    """`kafka-dagster ARGS` as a user runs it, from the checkout."""
    return subprocess.run([sys.executable, "-m", "service", *args], input=stdin, capture_output=True, cwd=ROOT,
                          env={**os.environ, **env}, timeout=120, check=False)


async def test_schema_evolution_mid_stream_and_corrupt_payloads_dead_lettered_at_decode(
        stack: Stack, dagster_api: DagsterApi, registry: ApicurioRegistry, framed: Framed) -> None:
    """v1 records reach runs; then the producer moves to v2 (a new optional field) with no restart of the
    worker, and each record decodes with its own writer schema. A v1 record cut short and a value with no
    frame are dead-lettered at decode with the reason, and `dlq inspect` names the cut record's schema."""
    v1 = await asyncio.to_thread(avro_serialize, registry.url, framed.evolve, ORDER_SCHEMA,
                                 [order(i) for i in range(3)])
    await asyncio.to_thread(send, stack.bootstrap, framed.evolve, v1)
    await eventually(lambda: runs_launched(dagster_api, framed.evolve, 3), 120, "runs of the v1 records")

    v2_values = [{**order(i), "coupon": f"c{i}" if i % 2 else None} for i in range(3, 6)]
    v2 = await asyncio.to_thread(avro_serialize, registry.url, framed.evolve, ORDER_V2, v2_values)
    v1_id, v2_id = (struct.unpack(">I", v[0][1:5])[0] for v in (v1, v2))
    assert v1_id != v2_id
    cut = v1[0][:-3]  # v1's id, the record's last bytes missing
    unframed = orjson.dumps(order(9))
    await asyncio.to_thread(send, stack.bootstrap, framed.evolve, [v2[0], cut, v2[1], unframed, v2[2], v1[1]])
    # offsets: 0-2 v1, 3 v2, 4 cut, 5 v2, 6 unframed, 7 v2, 8 v1

    accounting = await eventually(
        lambda: settled(dagster_api, stack.bootstrap, framed.evolve, framed.dlq, 9), 120, "all nine placed")
    assert accounting.dead_lettered == {"decode": 2}
    assert accounting.error_classes == {(0, 4): {"UndecodableValue"}, (0, 6): {"BadFraming"}}
    received = await received_values(dagster_api, framed.evolve)
    assert sorted(received) == [0, 1, 2, 3, 5, 7, 8]
    values = {offset: orjson.loads(r["value"]) for offset, r in received.items()}
    assert [values[o] for o in (0, 1, 2, 8)] == [order(0), order(1), order(2), order(1)]  # v1: no coupon
    assert [values[o] for o in (3, 5, 7)] == v2_values
    assert {o: received[o]["value_schema_id"] for o in (2, 3)} == {2: str(v1_id), 3: str(v2_id)}

    letters = await letters_of(stack.bootstrap, framed.dlq, framed.evolve)
    assert "does not decode with Avro schema" in letters[4].dlq["dlq.error.message"]
    assert "not the wire format's magic byte" in letters[6].dlq["dlq.error.message"]
    shown = await asyncio.to_thread(cli, "dlq", "inspect", "--bootstrap-servers", stack.bootstrap, "--dlq-topic",
                                    framed.dlq, "--source-topic", framed.evolve)
    lines = shown.stdout.decode().splitlines()
    assert shown.returncode == 0 and len(lines) == 2, shown
    assert lines[0].endswith(f" schema={v1_id}") and "schema=" not in lines[1]


async def test_produce_sends_what_the_worker_decodes_and_routes_test_reads_framed_samples(
        stack: Stack, dagster_api: DagsterApi, registry: ApicurioRegistry, framed: Framed,
        tmp_path: Path) -> None:
    """`kafka-dagster produce --value-format protobuf --schema DESCRIPTOR_SET` registers the schema (its import
    as a reference) and sends framed records to the Protobuf route's topic; its runs get them decoded.
    `routes test` decodes a framed sample through the same registry."""
    desc = tmp_path / "order.desc"
    desc.write_bytes(descriptor_set().SerializeToString())
    before = sum(int(r["tags"]["kafka/record_count"]) for r in executed_runs(await dagster_api.runs(framed.proto)))
    lines = [{"type": "order.created", "order_id": f"cli-{i}", "customer": "c-cli", "amount": 1.5 + i,
              "placed_at": "2024-03-01T10:00:00Z", "total": {"cents": "150", "currency": "EUR"}} for i in range(3)]
    done = await asyncio.to_thread(
        cli, "produce", "--topic", framed.proto, "--bootstrap-servers", stack.bootstrap, "--value-format", "protobuf",
        "--schema", str(desc), "--message", "shop.Order", stdin=b"\n".join(orjson.dumps(v) for v in lines),
        KAFKA_DAGSTER_SCHEMA_REGISTRY_URL=registry.url)
    assert done.returncode == 0 and b"sent 3 messages" in done.stderr, done

    await eventually(lambda: runs_finished(dagster_api, framed.proto, before + 3), 120, "runs of the CLI's records")
    received = [orjson.loads(r["value"]) for r in (await received_values(dagster_api, framed.proto)).values()]
    assert [v for v in received if v["order_id"].startswith("cli-")] == lines

    framed_sample = (await read_topic(stack.bootstrap, framed.proto))[-1][2].value
    routes = tmp_path / "routes.toml"
    routes.write_text(framed_route("proto", framed.proto, "protobuf", 'match = { "value.amount" = { ">" = 3 } }'))
    said = await asyncio.to_thread(cli, "routes", "test", str(routes),
                                   stdin=base64.b64encode(framed_sample) + b"\n" + base64.b64encode(b"{}"),
                                   KAFKA_DAGSTER_SCHEMA_REGISTRY_URL=registry.url)
    assert said.returncode == 0, said
    assert said.stdout.decode().splitlines()[1:] == [
        "  proto: batch", "line 2 (" + framed.proto + "):",
        "  proto: dead-letter at stage decode: the value starts with 0x7b, not the wire format's magic byte 0 or 1"]


def avro_keys(registry_url: str, topic: str, keys: list[str]) -> list[bytes]:
    """Each key as confluent-kafka's AvroSerializer writes it in a key serializer's context (MessageField.KEY):
    schema "string", registered under topic-key."""
    with SchemaRegistryClient({"url": registry_url, "timeout": REGISTRY_TIMEOUT_S}) as client:
        serializer = AvroSerializer(client, orjson.dumps("string").decode())
        return [serializer(key, SerializationContext(topic, MessageField.KEY)) for key in keys]


async def test_avro_keys_are_decoded_matched_and_reach_runs_with_their_writer_schema(
        stack: Stack, dagster_api: DagsterApi, registry: ApicurioRegistry, framed: Framed) -> None:
    """Keys framed by confluent-kafka's AvroSerializer (magic byte 0 and the id of {topic}-key's schema) beside
    Avro values: the route (`key_format = "avro"`) matches on the decoded key, its run receives each key as
    its text with `key_schema_id` and `key_subject`; a key whose schema id the registry does not know is
    dead-lettered at decode, alone. Five records and one poisoned key: one run (or two, if the fetch splits)."""
    keys = ["eu-0", "us-1", "eu-2", "us-3", "eu-4"]
    framed_keys = await asyncio.to_thread(avro_keys, registry.url, framed.keys, keys)
    assert all(k[0] == 0 for k in framed_keys)
    key_id = struct.unpack(">I", framed_keys[0][1:5])[0]
    values = await asyncio.to_thread(avro_serialize, registry.url, framed.keys, ORDER_SCHEMA,
                                     [order(i) for i in range(6)])
    unknown_key = b"\x00" + struct.pack(">I", UNKNOWN_ID) + framed_keys[0][5:]  # "eu-0" under an id nobody has
    await asyncio.to_thread(send, stack.bootstrap, framed.keys, values, [*framed_keys, unknown_key])

    await eventually(lambda: runs_finished(dagster_api, framed.keys, 3), 120, "the run of the eu- keys")
    received = await received_values(dagster_api, framed.keys)
    assert {o: (r["key"], orjson.loads(r["value"])) for o, r in received.items()} == {
        0: ("eu-0", order(0)), 2: ("eu-2", order(2)), 4: ("eu-4", order(4))}
    assert {(r["key_schema_id"], r["key_subject"]) for r in received.values()} == {(str(key_id), f"{framed.keys}-key")}
    assert all(r["value_schema_id"] for r in received.values())

    letters = await eventually(lambda: letters_of(stack.bootstrap, framed.dlq, framed.keys), 60, "the key's letter")
    assert list(letters) == [5]
    letter = letters[5]
    assert (letter.stage, letter.dlq["dlq.error.class"], letter.dlq["dlq.route"]) == ("decode", "UnknownSchema",
                                                                                      "keys")
    assert letter.dlq["dlq.error.message"].startswith(f"key schema {UNKNOWN_ID} is not in the schema registry")
    assert (letter.key, letter.value) == (unknown_key, values[5])  # byte for byte


READING = {"type": "record", "name": "Reading", "namespace": "shop", "fields": [
    {"name": "n", "type": "int"}, {"name": "date", "type": "string"}]}


async def test_a_registry_refusing_the_worker_pauses_its_route_until_let_in(
        stack: Stack, dagster_api: DagsterApi, registry: ApicurioRegistry, start_worker: Any,
        tmp_path: Path) -> None:
    """The registry behind nginx as a company runs it (TLS from the company's own CA, basic auth): with a
    password the proxy no longer takes (HTTP 401), then forbidden (HTTP 403), the route pauses
    `schema_registry_auth`, dead-letters nothing and shows no secret. Let in, every record reaches one run of
    the daily-partitioned asset, cut by the decoded `date` field."""
    topic, dlq = unique("registry-auth"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 1})
    values = [{"n": i, "date": date} for i, date in enumerate(["2024-03-01"] * 2 + ["2024-03-02"] * 2)]
    records = await asyncio.to_thread(avro_serialize, registry.url, topic, READING, values)
    await asyncio.to_thread(send, stack.bootstrap, topic, records)
    ca = make_ca(tmp_path, "registry-ca")
    basic = "Basic " + base64.b64encode(f"kafka-dagster:{REGISTRY_PASSWORD}".encode()).decode()
    proxy = Nginx(tmp_path, issue_server_cert(tmp_path, ca), f"http://127.0.0.1:{registry.port}",
                  token="Basic " + base64.b64encode(b"kafka-dagster:rotated-away").decode(), header="authorization",
                  name="registry-proxy")
    proxy.start()
    routes = (f'[[routes]]\nname = "{topic}"\ntopic = "{topic}"\nassets = ["daily_events"]\nvalue_format = "avro"\n'
              'partition_key = "value.date"\nmax_records = 50\nmax_bytes = 1048576\nmax_wait_s = 1.0\n')
    try:
        worker = await start_worker(  # not ready while its only route is paused
            routes, wait=False, KAFKA_DAGSTER_DLQ_TOPIC=dlq,
            KAFKA_DAGSTER_SCHEMA_REGISTRY_URL=f"{proxy.url}{CCOMPAT_PATH}",
            KAFKA_DAGSTER_SCHEMA_REGISTRY_CAFILE=str(ca.cert), KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME="kafka-dagster",
            KAFKA_DAGSTER_SCHEMA_REGISTRY_PASSWORD=REGISTRY_PASSWORD, KAFKA_DAGSTER_RETRY_MAX_DELAY_S="2")
        pause = await until_paused(worker, topic, "schema_registry_auth", "HTTP 401",
                                   "KAFKA_DAGSTER_SCHEMA_REGISTRY_USERNAME")
        proxy.reconfigure(token=basic, rule="return 403;")  # the password is right now; the registry forbids
        await until_paused(worker, topic, "schema_registry_auth", "HTTP 403")
        assert await dead_letters(stack.bootstrap, dlq) == []
        proxy.reconfigure(rule="")
        await until_resumed(worker, topic, "schema_registry_auth")

        accounting = await eventually(
            lambda: settled(dagster_api, stack.bootstrap, topic, dlq, len(values)), 120, "every record in a run")
        assert accounting.dead_lettered == {} and accounting.in_runs == len(values)
        received = await received_values(dagster_api, topic)
        assert [orjson.loads(received[o]["value"]) for o in sorted(received)] == values
        runs = executed_runs(await dagster_api.runs(topic))
        assert sorted((r["tags"]["dagster/partition"], r["tags"]["kafka/offset_start"], r["tags"]["kafka/offset_end"])
                      for r in runs) == [("2024-03-01", "0", "1"), ("2024-03-02", "2", "3")]
        access = proxy.access_log.read_text()
        assert " 401 " in access and " 403 " in access
        assert REGISTRY_PASSWORD not in str(pause) + worker.log_path.read_text() + str(await worker.metrics())
    finally:
        proxy.stop()


async def test_a_worker_killed_mid_avro_stream_loses_and_duplicates_nothing(
        stack: Stack, dagster_api: DagsterApi, registry: ApicurioRegistry, start_worker: Any) -> None:
    """kill -9 while Avro records arrive and runs launch; the next worker (one group) decodes the rest with
    the schemas it fetches again: every offset in exactly one run, nothing dead-lettered."""
    topic, dlq = unique("avro-killed"), unique("dlq")
    await ensure_topics(stack.bootstrap, {topic: 2})
    values = [order(i) for i in range(600)]
    records = await asyncio.to_thread(avro_serialize, registry.url, topic, ORDER_SCHEMA, values)
    await asyncio.to_thread(send, stack.bootstrap, topic, records[:200])
    routes = route_toml(topic, value_format="avro", max_records=150, max_wait_s=1.0)
    env = {"KAFKA_DAGSTER_DLQ_TOPIC": dlq, "KAFKA_DAGSTER_SCHEMA_REGISTRY_URL": registry.url,
           "KAFKA_DAGSTER_SESSION_TIMEOUT_S": "6"}  # the broker's least: the killed member leaves the group sooner
    first = await start_worker(routes, **env)

    async def launched() -> bool:
        return "launched run" in first.log_path.read_text(errors="replace")

    await eventually(launched, 90, "the first worker's first launch")
    rest = asyncio.create_task(asyncio.to_thread(send, stack.bootstrap, topic, records[200:]))
    first.kill()  # mid-stream: records still arriving, batches open, runs launching
    await rest
    await start_worker(routes, **env)

    accounting = await eventually(
        lambda: invariant_once_settled(stack.bootstrap, dagster_api, topic, dlq, len(values)), 180,
        "every record placed and every run finished")
    assert accounting.holds, accounting.problems
    assert accounting.dead_lettered == {} and accounting.in_runs == len(values)


async def test_a_registry_stopped_mid_stream_holds_the_records_until_it_is_back(
        stack: Stack, dagster_api: DagsterApi, registry: ApicurioRegistry, framed: Framed) -> None:
    """Records whose schema the worker has not met yet arrive while the registry is down: the worker retries
    (transient), dead-letters nothing, and once the registry is back every record is in exactly one run.
    Last in the module: it restarts the module's registry (its schemas are kept in an H2 file)."""
    refund = {"type": "record", "name": "Refund", "namespace": "shop", "fields": [
        {"name": "order_id", "type": "string"}, {"name": "customer", "type": "string"},
        {"name": "amount", "type": "double"}]}
    values = [{"order_id": f"o-{i}", "customer": f"c-{i}", "amount": 1.0 + i} for i in range(6)]
    records = await asyncio.to_thread(avro_serialize, registry.url, framed.outage, refund, values)
    await asyncio.to_thread(registry.stop)
    try:
        await asyncio.to_thread(send, stack.bootstrap, framed.outage, records)
        async def retrying() -> bool:
            return "schema registry unreachable" in framed.worker.log_path.read_text()

        await eventually(retrying, 60, "the worker to meet the stopped registry")
    finally:
        await asyncio.to_thread(registry.start)

    accounting = await eventually(
        lambda: settled(dagster_api, stack.bootstrap, framed.outage, framed.dlq, len(values)), 120,
        "every record in a run")
    assert accounting.dead_lettered == {} and accounting.in_runs == len(values)
    received = await received_values(dagster_api, framed.outage)
    assert [orjson.loads(received[o]["value"]) for o in sorted(received)] == values

    async def drained() -> bool:
        samples = await framed.worker.metrics()
        return metric(samples, "kafka_dagster_consumer_lag", topic=framed.outage, partition="0") == 0

    await eventually(drained, 60, "the outage topic's lag to drain")
