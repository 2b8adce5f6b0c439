"""service.wire: frames and values as confluent-kafka's own serializers write them (its in-memory registry,
`mock://`), decoded with fastavro, protobuf and the JSON Schema validator; and every way one is bad."""

from __future__ import annotations

import base64
import datetime
import decimal
import struct
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import fastavro
import orjson
import pytest
from confluent_kafka.schema_registry import SchemaRegistryClient, header_schema_id_serializer
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.schema_registry.json_schema import JSONSerializer
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from service.errors import BadFraming, DecodeError, UndecodableValue, UnknownSchema
from service.wire import (
    AVRO,
    JSON_SCHEMA,
    KEY_SCHEMA_ID_HEADER,
    PROTOBUF,
    AvroSchema,
    Frame,
    JsonSchemaSchema,
    ProtobufSchema,
    SchemaRef,
    decode_framed,
    read_frame,
    schema_id_header,
    writer_schema,
)

ORDER_AVRO = orjson.dumps({
    "type": "record", "name": "Order", "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "status", "type": "string"},
        {"name": "amount", "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2}},
        {"name": "settled_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "note", "type": ["null", "string"], "default": None},
    ],
}).decode()
ORDER = {"id": 7, "status": "settled", "amount": decimal.Decimal("12.50"),
         "settled_at": datetime.datetime(2026, 5, 1, 12, 0, tzinfo=datetime.UTC), "note": None}
ORDER_JSON = {"id": 7, "status": "settled", "amount": "12.50", "settled_at": "2026-05-01T12:00:00+00:00", "note": None}


def _registry() -> Any:
    return SchemaRegistryClient.new_client({"url": "mock://"})


def _serialize(serializer: Any, value: Any) -> tuple[bytes, list[tuple[str, bytes]]]:
    ctx = SerializationContext("shop.orders", MessageField.VALUE, [])
    return serializer(value, ctx), ctx.headers


def _avro(registry: Any, in_header: bool = False) -> Any:
    conf = {"schema.id.serializer": header_schema_id_serializer} if in_header else None
    return AvroSerializer(registry, ORDER_AVRO, conf=conf)


def test_avro_with_a_schema_id_prefix_decodes_to_json_values() -> None:
    registry = _registry()
    data, headers = _serialize(_avro(registry), ORDER)
    frame = read_frame(data, schema_id_header(headers))
    assert frame.ref.id is not None and frame.ref.guid is None
    schema = writer_schema("AVRO", registry.get_schema(frame.ref.id).schema_str)
    decoded = decode_framed(schema, frame, AVRO)
    assert decoded.value == ORDER_JSON
    assert orjson.loads(decoded.json) == ORDER_JSON


def test_avro_with_a_guid_in_the_header() -> None:
    registry = _registry()
    data, headers = _serialize(_avro(registry, in_header=True), ORDER)
    assert data[0] not in (0, 1) or len(headers) == 1
    frame = read_frame(data, schema_id_header(headers))
    assert frame.ref.guid is not None and frame.ref.id is None
    assert frame.payload == data
    schema = AvroSchema(registry.get_schema_by_guid(str(frame.ref.guid)).schema_str)
    assert schema.decode(frame).value == ORDER_JSON


def test_keys_as_confluent_kafka_serializes_them() -> None:
    """A key serializer's context (`MessageField.KEY`): a string key with the id in its prefix, a record key
    with its GUID in the `__key_schema_id` header (never read for the value); each decodes as a key, and a
    failure to decode one says "key"."""
    registry = _registry()
    ctx = SerializationContext("shop.orders", MessageField.KEY, [])
    key = AvroSerializer(registry, '"string"')("eu-1", ctx)
    assert ctx.headers == [] and schema_id_header([], KEY_SCHEMA_ID_HEADER) is None
    frame = read_frame(key, schema_id_header(ctx.headers, KEY_SCHEMA_ID_HEADER), what="key")
    assert frame.ref.id is not None and frame.what == "key"
    schema = writer_schema("AVRO", registry.get_schema(frame.ref.id).schema_str)
    assert decode_framed(schema, frame, AVRO).value == "eu-1"

    ctx = SerializationContext("shop.orders", MessageField.KEY, [])
    key = _avro(registry, in_header=True)(ORDER, ctx)
    [(name, _)] = ctx.headers
    assert name == KEY_SCHEMA_ID_HEADER and schema_id_header(ctx.headers) is None  # not the value's header
    frame = read_frame(key, schema_id_header(ctx.headers, KEY_SCHEMA_ID_HEADER), what="key")
    assert frame.ref.guid is not None and frame.payload == key
    order = AvroSchema(registry.get_schema_by_guid(str(frame.ref.guid)).schema_str)
    assert order.decode(frame).value == ORDER_JSON
    with pytest.raises(UndecodableValue, match=r"^key has 1 bytes left over"):
        order.decode(Frame(frame.ref, key + b"\x00", what="key"))
    with pytest.raises(UnknownSchema, match=r"^key schema .* is AVRO, but the route's key_format is protobuf"):
        decode_framed(order, frame, PROTOBUF)
    with pytest.raises(BadFraming, match=r"^the key's schema id header starts with 0x07"):
        read_frame(key, b"\x07", what="key")
    with pytest.raises(BadFraming, match=r"^record has a null key where a framed key is required"):
        read_frame(None, what="key")


def test_a_guid_in_the_payload_prefix() -> None:
    guid = uuid.uuid4()
    body = _avro_body({**ORDER})
    frame = read_frame(b"\x01" + guid.bytes + body)
    assert frame == Frame(SchemaRef(guid=guid), body)


def _avro_body(value: dict[str, Any]) -> bytes:
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(orjson.loads(ORDER_AVRO)), value)
    return buf.getvalue()


def test_each_record_decodes_with_its_own_writer_schema() -> None:
    """A compatible next version (a new optional field) mid-stream: both decode, each with its own."""
    registry = _registry()
    v2 = orjson.loads(ORDER_AVRO)
    v2["fields"].append({"name": "channel", "type": ["null", "string"], "default": None})
    first, _ = _serialize(_avro(registry), ORDER)
    second, _ = _serialize(AvroSerializer(registry, orjson.dumps(v2).decode()), {**ORDER, "channel": "web"})
    frames = [read_frame(first), read_frame(second)]
    assert frames[0].ref != frames[1].ref
    values = [AvroSchema(registry.get_schema(f.ref.id).schema_str).decode(f).value for f in frames]
    assert values == [ORDER_JSON, {**ORDER_JSON, "channel": "web"}]


def test_bytes_are_base64() -> None:
    schema = AvroSchema('{"type":"record","name":"B","fields":[{"name":"b","type":"bytes"}]}')
    import io

    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema.parsed, {"b": b"\x00\xff"})
    assert schema.decode(Frame(SchemaRef(1), buf.getvalue())).value == {"b": base64.b64encode(b"\x00\xff").decode()}


# -- Protobuf: a message type built at run time from its descriptor (the way a generated _pb2 module does) --

def _order_file() -> descriptor_pb2.FileDescriptorProto:
    file = descriptor_pb2.FileDescriptorProto(name="shop/payment.proto", package="shop", syntax="proto3")
    file.dependency.append("google/protobuf/timestamp.proto")
    header = file.message_type.add(name="Header")
    header.field.add(name="source", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                     label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    payment = file.message_type.add(name="Payment")
    for number, (name, kind) in enumerate([("id", "TYPE_INT32"), ("status", "TYPE_STRING"),
                                           ("amount_cents", "TYPE_INT64")], start=1):
        payment.field.add(name=name, number=number, type=getattr(descriptor_pb2.FieldDescriptorProto, kind),
                          label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    payment.field.add(name="settled_at", number=4, type=descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                      type_name=".google.protobuf.Timestamp", label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    line = payment.nested_type.add(name="Line")
    line.field.add(name="sku", number=1, type=descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                   label=descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL)
    return file


def _classes() -> tuple[Any, Any, bytes]:
    from google.protobuf import timestamp_pb2  # noqa: F401  (the import puts it in the default pool)

    pool = descriptor_pool.DescriptorPool()
    ts = descriptor_pb2.FileDescriptorProto()
    descriptor_pool.Default().FindFileByName("google/protobuf/timestamp.proto").CopyToProto(ts)
    pool.Add(ts)
    file = pool.Add(_order_file())
    payment = message_factory.GetMessageClass(file.message_types_by_name["Payment"])
    line = message_factory.GetMessageClass(file.message_types_by_name["Payment"].nested_types_by_name["Line"])
    return payment, line, _order_file().SerializeToString()


@pytest.mark.parametrize("in_header", [False, True])
def test_protobuf_message_indexes_pick_the_message(in_header: bool) -> None:
    payment_cls, line_cls, file = _classes()
    registry = _registry()
    conf: dict[str, Any] = {"use.deprecated.format": False}
    if in_header:
        conf["schema.id.serializer"] = header_schema_id_serializer
    payment = payment_cls(id=3, status="settled", amount_cents=1250)
    payment.settled_at.FromDatetime(datetime.datetime(2026, 5, 1, 12, 0))
    data, headers = _serialize(ProtobufSerializer(payment_cls, registry, conf), payment)
    frame = read_frame(data, schema_id_header(headers), protobuf=True)
    assert frame.indexes == (1,)
    schema = ProtobufSchema(file)
    assert decode_framed(schema, frame, PROTOBUF).value == {
        "id": 3, "status": "settled", "amount_cents": "1250", "settled_at": "2026-05-01T12:00:00Z"}
    nested, headers = _serialize(ProtobufSerializer(line_cls, _registry(), conf), line_cls(sku="A-1"))
    frame = read_frame(nested, schema_id_header(headers), protobuf=True)
    assert frame.indexes == (1, 0)
    assert schema.decode(frame).value == {"sku": "A-1"}


def test_protobuf_first_message_is_index_zero() -> None:
    _, _, file = _classes()
    header_cls = message_factory.GetMessageClass(ProtobufSchema(file).file.message_types_by_name["Header"])
    frame = read_frame(b"\x00\x00\x00\x00\x05\x00" + header_cls(source="pos").SerializeToString(), protobuf=True)
    assert frame.indexes == (0,)
    assert ProtobufSchema(file).decode(frame).value == {"source": "pos"}


def test_protobuf_from_the_registry_serialized_form() -> None:
    _, _, file = _classes()
    schema = writer_schema("PROTOBUF", base64.b64encode(file).decode())
    assert schema.format == PROTOBUF


def test_protobuf_bad_indexes_and_bytes_are_undecodable() -> None:
    _, _, file = _classes()
    schema = ProtobufSchema(file)
    with pytest.raises(UndecodableValue, match="name no message"):
        schema.decode(Frame(SchemaRef(1), b"", (5,)))
    with pytest.raises(UndecodableValue, match="does not decode"):
        schema.decode(Frame(SchemaRef(1), b"\x0a\xff\xff", (1,)))


# -- JSON Schema ------------------------------------------------------------------------------------------

PAYMENT_SCHEMA = orjson.dumps({"type": "object", "required": ["status"],
                               "properties": {"status": {"type": "string"}, "id": {"type": "integer"}}}).decode()


def test_json_schema_values_are_checked_against_their_writer_schema() -> None:
    registry = _registry()
    data, _ = _serialize(JSONSerializer(PAYMENT_SCHEMA, registry), {"id": 1, "status": "settled"})
    frame = read_frame(data)
    schema = writer_schema("JSON", registry.get_schema(frame.ref.id).schema_str)
    assert decode_framed(schema, frame, JSON_SCHEMA).value == {"id": 1, "status": "settled"}
    with pytest.raises(UndecodableValue, match="at id"):
        schema.decode(Frame(frame.ref, b'{"id": "x", "status": "s"}'))
    with pytest.raises(UndecodableValue, match="not JSON"):
        schema.decode(Frame(frame.ref, b"{"))


# -- what is bad ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("data", "reason"), [
    (b'{"id": 1}', "starts with 0x7b"),
    (b"", "starts with nothing"),
    (b"\x00\x00\x01", "inside its 4-byte schema id"),
    (b"\x01" + b"\x00" * 10, "inside its 16-byte schema GUID"),
])
def test_bad_frames(data: bytes, reason: str) -> None:
    with pytest.raises(BadFraming, match=reason) as caught:
        read_frame(data)
    assert isinstance(caught.value, DecodeError) and caught.value.stage == "decode"


def test_a_null_value_and_a_truncated_index_array() -> None:
    with pytest.raises(BadFraming, match="null"):
        read_frame(None)
    with pytest.raises(BadFraming, match="message-index array"):
        read_frame(b"\x00" + struct.pack(">I", 3) + b"\x04\x02", protobuf=True)
    with pytest.raises(BadFraming, match="schema id header"):
        read_frame(b"x", header=b"\x07")


def test_avro_bytes_that_do_not_fit_the_schema() -> None:
    schema = AvroSchema(ORDER_AVRO)
    body = _avro_body(ORDER)
    with pytest.raises(UndecodableValue, match="does not decode"):
        schema.decode(Frame(SchemaRef(1), body[:3]))
    with pytest.raises(UndecodableValue, match="left over"):
        schema.decode(Frame(SchemaRef(1), body + b"\x00"))


def test_a_schema_of_another_format_than_the_route_s() -> None:
    with pytest.raises(UnknownSchema, match="is AVRO, but the route reads protobuf"):
        decode_framed(AvroSchema(ORDER_AVRO), Frame(SchemaRef(4), b""), PROTOBUF)


@pytest.mark.parametrize(("kind", "text"), [("AVRO", "{"), ("AVRO", '{"type": "nope"}'), ("PROTOBUF", "!!"),
                                            ("JSON", "[1"), ("XML", "<a/>"), ("PROTOBUF", "\u20ac")])
def test_schemas_that_do_not_parse(kind: str, text: str) -> None:
    with pytest.raises(UnknownSchema):
        writer_schema(kind, text)


def test_json_schema_class_is_a_writer_schema() -> None:
    assert JsonSchemaSchema(PAYMENT_SCHEMA).format == JSON_SCHEMA


def test_protobuf_in_apicurio_s_serialized_form() -> None:
    """Apicurio 3.3's ccompat API answers format=serialized with the descriptor's bytes as a string."""
    _, _, file = _classes()
    assert writer_schema("PROTOBUF", file.decode("latin-1")).format == PROTOBUF


def test_protobuf_s_own_imports_load_in_a_fresh_process() -> None:
    """The worker imports no google.protobuf.*_pb2 module itself: a schema importing timestamp.proto must
    load without one (the default pool holds a well-known file only once its module is imported)."""
    script = """
import base64
from google.protobuf import descriptor_pb2
from service.wire import writer_schema
f = descriptor_pb2.FileDescriptorProto(name="x.proto", syntax="proto3",
                                       dependency=["google/protobuf/timestamp.proto"])
f.message_type.add(name="X").field.add(name="t", number=1, type=11, type_name=".google.protobuf.Timestamp", label=1)
schema = writer_schema("PROTOBUF", base64.b64encode(f.SerializeToString()).decode())
print(schema.message_type((0,)).DESCRIPTOR.fields_by_name["t"].message_type.full_name)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=False,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.stdout.strip() == "google.protobuf.Timestamp", done.stderr


@pytest.mark.parametrize(("schema", "native"), [
    (orjson.loads(ORDER_AVRO), False),  # a decimal and a timestamp
    ({"type": "record", "name": "P", "fields": [{"name": "p", "type": "double"}, {"name": "q", "type": "string"},
                                                {"name": "r", "type": ["null", "P"]}]}, True),
    ({"type": "record", "name": "B", "fields": [{"name": "b", "type": "bytes"}]}, False),
    ({"type": "record", "name": "T", "fields": [{"name": "t", "type": {"type": "long",
                                                                         "logicalType": "timestamp-millis"}}]}, False),
    ({"type": "record", "name": "U", "fields": [{"name": "u", "type": ["null", {"type": "array", "items": {
        "type": "map", "values": {"type": "enum", "name": "E", "symbols": ["A"]}}}]}]}, True),
    ({"type": "record", "name": "F", "fields": [{"name": "f", "type": {"type": "fixed", "name": "X", "size": 2}}]},
     False),
])
def test_avro_schemas_that_decode_to_json_types_skip_the_round_trip(schema: dict[str, Any], native: bool) -> None:
    assert AvroSchema(orjson.dumps(schema).decode()).json_native is native


def test_the_frame_fast_path_reads_what_the_stream_reads() -> None:
    data = b"\x00" + struct.pack(">I", 70_000) + b"body"
    assert read_frame(data) == Frame(SchemaRef(70_000), b"body")
    assert read_frame(b"\x00\x00\x00\x00\x01") == Frame(SchemaRef(1), b"")
