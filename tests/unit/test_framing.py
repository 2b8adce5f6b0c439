"""`kafka-dagster produce --value-format`: what it registers, and values framed so the worker's own decoder
(`service.wire`) reads them back (the registry faked with httpx.MockTransport; the real one:
tests/test_schema_registry.py)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from google.protobuf import descriptor_pb2

from service.frames import frame_prefix, read_frame
from service.framing import EncodeError, SchemaFileError, framed_encoder, message_descriptor, message_indexes
from service.registry import SchemaRegistry
from service.settings import RegistrySettings
from service.wire import AVRO, JSON_SCHEMA, PROTOBUF, writer_schema
from tests.fixtures.shop_proto import descriptor_set

ROOT = Path(__file__).resolve().parents[2]
URL = "http://registry.test/apis/ccompat/v7"


class Registry:
    """Registers each (subject, schema) once: ids from 1; remembers what it was sent."""

    def __init__(self) -> None:
        self.registered: dict[int, dict[str, Any]] = {}
        self.subjects: dict[str, list[int]] = {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content)
        subject = request.url.path.removeprefix("/apis/ccompat/v7/subjects/").removesuffix("/versions")
        for schema_id, known in self.registered.items():
            if known["schema"] == body["schema"] and schema_id in self.subjects.get(subject, []):
                break
        else:
            schema_id = len(self.registered) + 1
            self.registered[schema_id] = {**body, "subject": subject}
            self.subjects.setdefault(subject, []).append(schema_id)
        version = self.subjects[subject].index(schema_id) + 1
        return httpx.Response(200, json={"id": schema_id, "version": version, "subject": subject})


async def encoder(fmt: str, path: Path, data: bytes, message: str | None = None) -> tuple[Registry, Any]:
    answers = Registry()
    registry = SchemaRegistry(RegistrySettings(URL), transport=httpx.MockTransport(answers))
    try:
        return answers, await framed_encoder(registry, "payments.v1", fmt, path, data, message)
    finally:
        await registry.aclose()


async def test_avro_values_are_registered_and_framed() -> None:
    path = ROOT / "schemas" / "payment.avsc"
    answers, encode = await encoder(AVRO, path, path.read_bytes())
    value = {"payment_id": "p-1", "order_id": "o-1", "customer": "c-1", "status": "settled", "amount": 12.5,
             "settled_at": "2024-03-01T10:00:00Z"}
    data = encode(value)
    assert data[:5] == frame_prefix(1)
    assert answers.registered[1]["subject"] == "payments.v1-value" and answers.registered[1]["schemaType"] == "AVRO"
    schema = writer_schema("AVRO", answers.registered[1]["schema"])
    assert schema.decode(read_frame(data)).value == value
    with pytest.raises(EncodeError, match="Avro schema"):
        encode({**value, "status": "lost"})


async def test_json_schema_values_must_satisfy_it() -> None:
    path = ROOT / "schemas" / "order.json"
    answers, encode = await encoder(JSON_SCHEMA, path, path.read_bytes())
    order = {"type": "order.created", "order_id": "o-1", "customer": "c-1", "amount": 2.5}
    data = encode(order)
    assert orjson.loads(read_frame(data).payload) == order
    assert answers.registered[1]["schemaType"] == "JSON"
    with pytest.raises(EncodeError, match="breaks the JSON Schema"):
        encode({"order_id": 1})


async def test_protobuf_from_a_descriptor_set_registers_its_imports_as_references(tmp_path: Path) -> None:
    path = tmp_path / "order.desc"
    answers, encode = await encoder(PROTOBUF, path, descriptor_set().SerializeToString(), "shop.Order")
    money, order = answers.registered[1], answers.registered[2]
    assert money["subject"] == "shop/money.proto" and order["subject"] == "payments.v1-value"
    assert order["references"] == [{"name": "shop/money.proto", "subject": "shop/money.proto", "version": 1}]
    value = {"type": "order.created", "order_id": "o-1", "amount": 2.5, "placed_at": "2024-03-01T10:00:00Z",
             "quantity": "7", "lines": [{"sku": "a", "count": 2}], "total": {"cents": "250", "currency": "EUR"}}
    data = encode(value)
    frame = read_frame(data, protobuf=True)
    assert frame.ref.id == 2 and frame.indexes == (1,)  # Order is the file's second message
    schema = writer_schema("PROTOBUF", order["schema"], {"shop/money.proto": base64.b64decode(money["schema"])})
    assert schema.decode(frame).value == value
    with pytest.raises(EncodeError, match=r"not a shop\.Order"):
        encode({"amount": "lots"})


def test_message_indexes_and_the_default_message(tmp_path: Path) -> None:
    data = descriptor_set().SerializeToString()
    assert message_descriptor(data, tmp_path, None).full_name == "shop.Envelope"  # the last file's first
    assert message_indexes(message_descriptor(data, tmp_path, "shop.Order.Line")) == [1, 0]
    assert frame_prefix(5, [1, 0]) == b"\x00\x00\x00\x00\x05\x04\x02\x00"
    assert read_frame(frame_prefix(5, [1, 0]), protobuf=True).indexes == (1, 0)
    assert frame_prefix(5, [0]) == b"\x00\x00\x00\x00\x05\x00"


@pytest.mark.parametrize(("fmt", "data", "reason"), [
    (AVRO, b"{", "not an Avro schema"), (JSON_SCHEMA, b"[1", "not a JSON Schema"),
    (PROTOBUF, b"\xff\xff", "not a Protobuf file descriptor set"),
    (PROTOBUF, descriptor_pb2.FileDescriptorSet().SerializeToString(), "holds no file"),
])
async def test_schema_files_that_do_not_parse(fmt: str, data: bytes, reason: str, tmp_path: Path) -> None:
    with pytest.raises(SchemaFileError, match=reason):
        await encoder(fmt, tmp_path / "schema", data)


async def test_an_unknown_message_type(tmp_path: Path) -> None:
    with pytest.raises(SchemaFileError, match=r"no message type .shop\.Nope."):
        await encoder(PROTOBUF, tmp_path / "x.desc", descriptor_set().SerializeToString(), "shop.Nope")
