"""Framed keys (`key_format`): decoded with their writer schemas in every id encoding, matched and read as a
partition key by their decoded text, given to the run with their schema id and subject; a key that does not
decode is dead-lettered at decode for every route of the record while its batch-mates go on; a registry that
is down is waited out (the registry's HTTP faked with httpx.MockTransport; the real one:
tests/test_schema_registry.py)."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import uuid
from typing import Any

import fastavro
import httpx
import orjson
import pytest
from prometheus_client import CollectorRegistry

from service.errors import BadFraming, RecordError, UndecodableValue, UnknownSchema
from service.framed_decode import decode_formats, decode_record
from service.matching import compile_match
from service.partitions import compile_partition_key
from service.registry import SchemaRegistry
from service.routes import Route, RouteTable
from service.routing import Fanout, explain, route_record
from service.settings import RegistrySettings
from service.wire import Decoded
from tests.unit.factories import make_record
from tests.unit.test_delivery import JOB, Harness
from tests.unit.test_framed_delivery import SCHEMA as VALUE_SCHEMA
from tests.unit.test_framed_delivery import close, framed, payment

KEY_SCHEMA = {"type": "record", "name": "PaymentKey", "fields": [
    {"name": "region", "type": "string"}, {"name": "id", "type": "long"}]}
RECORD_KEY_ID = 5  # PaymentKey, also registered under KEY_GUID
STRING_KEY_ID = 6  # "string": the key most producers frame
KEY_GUID = uuid.UUID("0f8fad5b-d9cb-469f-a165-70867728950e")
SUBJECTS = {1: "payments-value", RECORD_KEY_ID: "payments-key", STRING_KEY_ID: "payments-key"}


class Answers:
    """The registry: Payment values (id 1), PaymentKey keys (id 5 and a GUID) and string keys (id 6)."""

    def __init__(self) -> None:
        self.status = 200
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.status == -1:
            raise httpx.ConnectError("refused", request=request)
        if self.status != 200:
            return httpx.Response(self.status, json={"error_code": self.status})
        schemas = {"/schemas/ids/1": VALUE_SCHEMA, f"/schemas/ids/{RECORD_KEY_ID}": KEY_SCHEMA,
                   f"/schemas/guids/{KEY_GUID}": KEY_SCHEMA, f"/schemas/ids/{STRING_KEY_ID}": "string"}
        path = request.url.path
        if path in schemas:
            return httpx.Response(200, json={"schema": orjson.dumps(schemas[path]).decode()})
        for schema_id, subject in SUBJECTS.items():
            if path == f"/schemas/ids/{schema_id}/versions":
                return httpx.Response(200, json=[{"subject": subject, "version": 1}])
        return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found."})


def registry(answers: Answers | None = None) -> SchemaRegistry:
    return SchemaRegistry(RegistrySettings("http://registry.test"), transport=httpx.MockTransport(answers or Answers()))


def avro(schema: Any, value: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), value)
    return buf.getvalue()


def id_prefix(schema_id: int) -> bytes:
    return b"\x00" + struct.pack(">I", schema_id)


def string_key(text: str) -> bytes:
    """A string key as an Avro producer frames it (magic byte 0, schema id 6)."""
    return id_prefix(STRING_KEY_ID) + avro("string", text)


def record_key(region: str, n: int) -> bytes:
    return id_prefix(RECORD_KEY_ID) + avro(KEY_SCHEMA, {"region": region, "id": n})


def keyed_route(name: str = "payments", topic: str = "orders", **policy: Any) -> Route:
    options = {"max_records": 10, "max_bytes": 1_000_000, "max_wait_s": 5.0, "value_format": "avro",
               "key_format": "avro", **policy}
    return Route(topic, JOB, name=name, **options)


def harness(answers: Answers, *routes: Route) -> Harness:
    table = RouteTable({r.name: r for r in routes or (keyed_route(),)})
    return Harness(CollectorRegistry(), table, schema_registry=registry(answers))


def inline(h: Harness, launch: int = 0) -> list[dict[str, Any]]:
    config, _ = h.client.launches[launch]
    return json.loads(next(iter(config["ops"].values()))["config"]["records_json"])


# -- decoding: every id encoding --------------------------------------------------------------------------

KEY = {"region": "eu", "id": 7}
BODY = avro(KEY_SCHEMA, KEY)


@pytest.mark.parametrize(("key", "headers", "schema_id", "subject"), [
    (id_prefix(RECORD_KEY_ID) + BODY, [], str(RECORD_KEY_ID), "payments-key"),
    (b"\x01" + KEY_GUID.bytes + BODY, [], f"guid {KEY_GUID}", None),
    (BODY, [("__key_schema_id", id_prefix(RECORD_KEY_ID))], str(RECORD_KEY_ID), "payments-key"),
    (BODY, [("__key_schema_id", b"\x01" + KEY_GUID.bytes)], f"guid {KEY_GUID}", None),
], ids=["id-in-key", "guid-in-key", "id-in-header", "guid-in-header"])
async def test_a_framed_key_decodes_with_its_writer_schema_in_each_id_encoding(
        key: bytes, headers: list[tuple[str, bytes]], schema_id: str, subject: str | None) -> None:
    client = registry()
    # a `__value_schema_id` header is the value's: the key's frame never reads it
    record = make_record(0, key=key, value=framed(payment(0)), headers=[*headers, ("__value_schema_id", b"\x07")])
    decoded = await decode_record(client, "avro", record, key=True)
    assert isinstance(decoded, Decoded)
    assert (decoded.value, decoded.schema_id, decoded.subject) == (KEY, schema_id, subject)
    record.decoded_key = decoded
    assert orjson.loads(record.match_key or b"") == KEY  # a record key is its JSON text
    await client.aclose()


async def test_a_string_key_reads_as_its_text_and_the_raw_key_stays_for_the_dlq() -> None:
    client = registry()
    record = make_record(0, key=string_key("eu-1"), value=framed(payment(0)))
    await decode_formats(client, "avro", "avro", record)
    assert isinstance(record.decoded_key, Decoded) and isinstance(record.decoded, Decoded)
    assert record.match_key == b"eu-1"
    assert record.key == string_key("eu-1")  # what a dead letter or a replay carries
    await client.aclose()


@pytest.mark.parametrize(("key", "error", "words"), [
    (id_prefix(9) + BODY, UnknownSchema, "key schema 9 is not in the schema registry"),
    (id_prefix(RECORD_KEY_ID) + b"\x02", UndecodableValue, "key does not decode with Avro schema 5"),
    (id_prefix(RECORD_KEY_ID) + BODY + b"\x00", UndecodableValue, "key has 1 bytes left over"),
    (id_prefix(1) + BODY, UndecodableValue, "key does not decode with Avro schema 1"),
    (b"eu-1", BadFraming, "the key starts with 0x65, not the wire format's magic byte 0 or 1"),
    (None, BadFraming, "record has a null key where a framed key is required"),
], ids=["unknown-id", "corrupt", "left-over", "another-schema", "no-magic-byte", "null"])
async def test_a_key_that_does_not_decode_says_why_and_leaves_the_value_alone(
        key: bytes | None, error: type[RecordError], words: str) -> None:
    client = registry()
    record = make_record(0, key=key, value=framed(payment(0)))
    await decode_formats(client, "avro", "avro", record)
    assert isinstance(record.decoded_key, error), record.decoded_key
    assert str(record.decoded_key).startswith(words), record.decoded_key
    assert record.decoded is None  # no look-up spent on a record that goes to the DLQ anyway
    assert record.match_key == key
    await client.aclose()


async def test_a_key_schema_of_another_format_is_unknown_to_the_route() -> None:
    client = registry()
    record = make_record(0, key=string_key("eu-1"))
    failure = await decode_record(client, "json_schema", record, key=True)
    assert isinstance(failure, UnknownSchema)
    assert str(failure) == "key schema 6 is AVRO, but the route's key_format is json_schema"
    await client.aclose()


async def test_a_protobuf_key_decodes_with_its_message_indexes() -> None:
    """A Protobuf key: magic byte 0, the id, then the message-index array (0: the file's first message); an
    index naming no message is the key's failure."""
    import base64

    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    file = descriptor_pb2.FileDescriptorProto(name="shop/key.proto", package="shop", syntax="proto3")
    file.message_type.add(name="PaymentKey").field.add(
        name="region", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
        label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    key_cls = message_factory.GetMessageClass(pool.Add(file).message_types_by_name["PaymentKey"])
    body = key_cls(region="eu").SerializeToString()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/schemas/ids/8":
            return httpx.Response(200, json={"schemaType": "PROTOBUF",
                                             "schema": base64.b64encode(file.SerializeToString()).decode()})
        return httpx.Response(404, json={"error_code": 40403, "message": "Schema not found."})

    client = SchemaRegistry(RegistrySettings("http://registry.test"), transport=httpx.MockTransport(answer))
    record = make_record(0, key=id_prefix(8) + b"\x00" + body)
    await decode_formats(client, "json", "protobuf", record)
    assert isinstance(record.decoded_key, Decoded) and record.decoded_key.value == {"region": "eu"}
    assert record.match_key == b'{"region":"eu"}'
    wrong = await decode_record(client, "protobuf", make_record(1, key=id_prefix(8) + b"\x02\x06" + body), key=True)
    assert isinstance(wrong, UndecodableValue)
    assert str(wrong) == "key message indexes [3] name no message of shop/key.proto"
    await client.aclose()


# -- routing: match and partition_key read the decoded key ------------------------------------------------

async def test_match_on_a_decoded_key_and_the_run_gets_it_with_its_schema_id_and_subject() -> None:
    answers = Answers()
    h = harness(answers, keyed_route(match=compile_match({"key": {"prefix": "eu-"}, "value.status": "settled"})))
    await h.deliver(h.record(0, framed(payment(0)), key=string_key("eu-1")),
                    h.record(1, framed(payment(1)), key=string_key("us-1")),
                    h.record(2, framed(payment(2, "open")), key=string_key("eu-2")),
                    h.record(3, framed(payment(3)), key=string_key("eu-3")))
    await close(h)
    assert h.launched() == [(0, 3)]
    assert [(r["offset"], r["key"], r["key_schema_id"], r["key_subject"], r["value_schema_id"]) for r in inline(h)] == [
        (0, "eu-1", "6", "payments-key", "1"), (3, "eu-3", "6", "payments-key", "1")]
    config, _ = h.client.launches[0]
    batch = config["ops"]["read_batch"]["config"]
    assert (batch["key_format"], batch["value_format"]) == ("avro", "avro")  # read back, decoded the same way
    assert h.sink.sent == []
    await h.close()


async def test_a_record_key_reaches_the_run_as_its_json_and_a_key_only_route_keeps_its_json_values() -> None:
    h = harness(Answers(), keyed_route(value_format="json"))
    await h.deliver(h.record(0, b'{"n": 0}', key=record_key("eu", 1)),
                    h.record(1, b'{"n": 1}', key=record_key("us", 2)))
    await close(h)
    [first, second] = inline(h)
    assert (json.loads(first["key"]), first["key_schema_id"], first["key_subject"]) == (
        {"region": "eu", "id": 1}, "5", "payments-key")
    assert (first["value"], "value_schema_id" in first) == ('{"n": 0}', False)
    assert json.loads(second["key"]) == {"region": "us", "id": 2}
    config, _ = h.client.launches[0]
    batch = config["ops"]["read_batch"]["config"]
    assert batch["key_format"] == "avro" and "value_format" not in batch
    await h.close()


async def test_a_partition_key_is_read_from_a_decoded_key() -> None:
    client = registry()
    by_key = keyed_route(partition_key=compile_partition_key("key"))
    string, structured = (make_record(0, key=string_key("tenant-7"), value=framed(payment(0))),
                          make_record(1, key=record_key("eu", 3), value=framed(payment(1))))
    for record in (string, structured):
        await decode_formats(client, "avro", "avro", record)
    [verdict] = route_record([by_key], string, 10_000)
    assert (verdict.failure, verdict.partition_key) == (None, "tenant-7")
    [verdict] = route_record([by_key], structured, 10_000)
    assert verdict.failure is None and json.loads(verdict.partition_key or "") == {"region": "eu", "id": 3}
    assert explain(by_key, string, 10_000) == "batch (partition tenant-7)"
    await client.aclose()


# -- failures: one dead letter at decode, batch-mates go on; a registry down is waited out --------------------

async def test_a_key_that_does_not_decode_is_dead_lettered_at_decode_for_every_route_and_its_batch_mates_go_on(
) -> None:
    routes = (keyed_route("settled", match=compile_match({"value.status": "settled"})),
              keyed_route("eu", match=compile_match({"key": {"prefix": "eu-"}})))
    h = harness(Answers(), *routes)
    await h.deliver(h.record(0, framed(payment(0)), key=string_key("eu-0")),
                    h.record(1, framed(payment(1)), key=id_prefix(9) + avro("string", "eu-1")),
                    h.record(2, framed(payment(2)), key=id_prefix(STRING_KEY_ID) + b"\x09"),
                    h.record(3, framed(payment(3)), key=b"eu-3"),
                    h.record(4, framed(payment(4)), key=None),
                    h.record(5, framed(payment(5)), key=string_key("eu-5")))
    await close(h)
    batches = [(tags["kafka/route"], config["ops"]["read_batch"]["config"]) for config, tags in h.client.launches]
    launched = sorted((route, batch["offset_start"], batch["offset_end"]) for route, batch in batches)
    assert launched == [("eu", 0, 0), ("eu", 5, 5), ("settled", 0, 0), ("settled", 5, 5)]
    letters = [(m["dlq"]["dlq.offset"], m["dlq"]["dlq.stage"], m["dlq"]["dlq.error.class"], m["dlq"]["dlq.route"])
               for m in h.sink.sent]
    assert letters == [("1", "decode", "UnknownSchema", "settled,eu"),
                       ("2", "decode", "UndecodableValue", "settled,eu"),
                       ("3", "decode", "BadFraming", "settled,eu"), ("4", "decode", "BadFraming", "settled,eu")]
    assert [m["dlq"]["dlq.error.message"].split(":")[0] for m in h.sink.sent] == [
        "key schema 9 is not in the schema registry (Schema not found.)", "key does not decode with Avro schema 6",
        "the key starts with 0x65, not the wire format's magic byte 0 or 1",
        "record has a null key where a framed key is required"]
    assert h.sink.sent[0]["key"] == id_prefix(9) + avro("string", "eu-1")  # the original bytes, for a replay
    h.assert_acks_follow_their_launch_or_dlq()
    await h.close()


async def test_a_single_route_without_match_dead_letters_an_undecodable_key_alone() -> None:
    """The one-route fast path (no match, no partition_key) checks the key too."""
    h = harness(Answers(), keyed_route())
    await h.deliver(h.record(0, framed(payment(0)), key=string_key("a")), h.record(1, framed(payment(1)), key=b"{}"),
                    h.record(2, framed(payment(2)), key=string_key("c")))
    await close(h)
    assert h.launched() == [(0, 0), (2, 2)]
    assert [(m["dlq"]["dlq.offset"], m["dlq"]["dlq.error.class"]) for m in h.sink.sent] == [("1", "BadFraming")]
    assert [r["key"] for r in inline(h, 1)] == ["c"]
    await h.close()


def test_header_conditions_still_decide_for_a_key_that_does_not_decode() -> None:
    """No key condition can decide, so every route the header conditions leave in the running gets the one
    failure; a route they rule out does not (and with none left, the record is unmatched)."""
    web = keyed_route("web", match=compile_match({"headers.source": "web", "key": "eu-1"}))
    app = keyed_route("app", match=compile_match({"headers.source": "app"}))
    every = keyed_route("every")
    record = make_record(0, key=b"eu-1", value=framed(payment(0)), headers=[("source", b"web")])
    record.decoded_key = BadFraming("the key starts with 0x65, not the wire format's magic byte 0 or 1")
    verdicts = Fanout([web, app, every]).decide(record, 10_000)
    assert [(v.route.name, type(v.failure).__name__, v.shared) for v in verdicts] == [
        ("web", "BadFraming", True), ("every", "BadFraming", True)]
    assert Fanout([app]).decide(record, 10_000) == []
    assert explain(app, record, 10_000) == "no match: headers.source is 'web', not 'app'"
    assert explain(web, record, 10_000).startswith("dead-letter at stage decode: the key starts with 0x65")


@pytest.mark.parametrize("status", [-1, 503])
async def test_a_registry_that_is_down_while_keys_are_decoded_dead_letters_nothing(status: int) -> None:
    answers = Answers()
    answers.status = status
    h = harness(answers, keyed_route(value_format="json"))
    delivering = asyncio.create_task(h.deliver(h.record(0, key=string_key("a")), h.record(1, key=string_key("b"))))
    for _ in range(200):
        await asyncio.sleep(0.005)
        if answers.calls >= 3:
            break
    assert not delivering.done() and answers.calls >= 3
    answers.status = 200
    await asyncio.wait_for(delivering, 5)
    await close(h)
    assert h.launched() == [(0, 1)] and h.sink.sent == []
    assert [r["key"] for r in inline(h)] == ["a", "b"]
    await h.close()


async def test_a_failed_run_s_records_are_read_back_with_their_keys_decoded() -> None:
    """Read back for a failed run, keys are decoded again, so the route's key condition selects them."""
    import dataclasses

    from tests.unit.test_delivery import _failed_run

    h = harness(Answers(), keyed_route(match=compile_match({"key": {"prefix": "eu-"}})))
    run = _failed_run("failed-run", 0, 2)
    h.client.runs.append(dataclasses.replace(run, tags={**run.tags, "kafka/route": "payments"}))
    h.read_back[(0, 2)] = [h.record(o, framed(payment(o)), key=string_key(k)) for o, k in enumerate(["eu-0", "us-1",
                                                                                                     "eu-2"])]
    await h.deliver(*(h.record(o, framed(payment(o)), key=string_key("eu-x")) for o in range(4)))
    await close(h)
    await h.delivery.watcher.poll()
    assert h.sink.offsets("run") == [0, 2]
    await h.close()


def test_the_inline_record_carries_the_decoded_key_and_its_writer_schema() -> None:
    from service.run_request import inline_records_json

    framed_key = make_record(0, key=b"raw", value=b'{"a": 1}')
    framed_key.decoded_key = Decoded({"region": "eu", "id": 7}, b'{"region":"eu","id":7}', "5", "payments-key")
    plain = make_record(1, key=b"k-1", value=b"{}")
    assert json.loads(inline_records_json([framed_key, plain])) == [
        {"offset": 0, "timestamp_ms": framed_key.timestamp_ms, "key": '{"region":"eu","id":7}', "value": '{"a": 1}',
         "key_schema_id": "5", "key_subject": "payments-key"},
        {"offset": 1, "timestamp_ms": plain.timestamp_ms, "key": "k-1", "value": "{}"}]
