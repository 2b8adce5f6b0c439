"""Values in the Confluent wire format decoded with their writer schemas (the frame: `service.frames`).

Each writer schema decodes to the structure a JSON value gives, so `match`,
`partition_key` and JSON Schema validation read Avro and Protobuf fields as they
read JSON ones, and the run receives the value as JSON text: fastavro for
Avro (logical types as their JSON text: ISO-8601 dates and times, decimals
as strings; bytes as base64), protobuf's own JSON mapping for Protobuf (field
names as declared), and the JSON text itself, checked against its schema, for
JSON Schema. A framed key (`key_format`) decodes the same way; its failures
say "key" first. Pure: no I/O; the schemas come from `service.registry`.
"""

from __future__ import annotations

import base64
import contextlib
import importlib
import io
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import fastavro
import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import FileDescriptor
from google.protobuf.message import DecodeError as ProtobufDecodeError
from google.protobuf.message import Message

from service.errors import UndecodableValue, UnknownSchema
from service.frames import (
    KEY_SCHEMA_ID_HEADER,
    VALUE_SCHEMA_ID_HEADER,
    Frame,
    SchemaRef,
    read_frame,
    schema_id_header,
)
from service.schemas import CompiledSchema, SchemaCompileError, first_error

JSON = "json"
AVRO = "avro"
PROTOBUF = "protobuf"
JSON_SCHEMA = "json_schema"
FORMATS = (JSON, AVRO, PROTOBUF, JSON_SCHEMA)
# What the registry calls each framed format (`schemaType`; absent means AVRO).
REGISTRY_TYPES = {AVRO: "AVRO", PROTOBUF: "PROTOBUF", JSON_SCHEMA: "JSON"}
__all__ = ["AVRO", "FORMATS", "JSON", "JSON_SCHEMA", "KEY_SCHEMA_ID_HEADER", "PROTOBUF", "VALUE_SCHEMA_ID_HEADER",
           "AvroSchema", "Decoded", "Frame", "JsonSchemaSchema", "ProtobufSchema", "SchemaRef", "WriterSchema",
           "decode_framed", "read_frame", "schema_id_header", "serialized_file", "serialized_protobuf",
           "writer_schema"]

@dataclass(slots=True)  # not frozen: made per record, and a frozen dataclass's __init__ costs ~0.3 µs more
class Decoded:
    """A decoded value (or key): the structure a JSON value gives, its JSON text, and its writer schema (the
    id or GUID, and the registry's subject for it, when known)."""

    value: Any
    json: bytes
    schema_id: str | None = None
    subject: str | None = None


class WriterSchema(Protocol):
    """A registry schema, parsed once, that decodes the values written with it."""

    format: str

    def decode(self, frame: Frame) -> Decoded: ...


class AvroSchema:
    """An Avro writer schema (fastavro, parsed once)."""

    format = AVRO

    def __init__(self, text: str, named: Mapping[str, Any] | None = None) -> None:
        try:
            named_schemas: dict[str, Any] = dict(named or {})
            self.parsed = fastavro.parse_schema(orjson.loads(text), named_schemas=named_schemas)
        except (orjson.JSONDecodeError, fastavro.schema.SchemaParseException, ValueError, TypeError) as exc:
            raise UnknownSchema(f"the registry's Avro schema does not parse: {exc}") from None
        # fastavro gives JSON's own types for these: the structure needs no round trip through JSON text
        self.json_native = _json_native(self.parsed)

    def decode(self, frame: Frame) -> Decoded:
        buf = io.BytesIO(frame.payload)
        try:
            value = fastavro.schemaless_reader(buf, self.parsed, None)
        except (EOFError, StopIteration, ValueError, IndexError, KeyError, UnicodeDecodeError, struct.error) as exc:
            raise UndecodableValue(f"{frame.what} does not decode with Avro schema {frame.ref}: "
                                   f"{exc.__class__.__name__}: {exc}") from None
        if buf.tell() != len(frame.payload):
            raise UndecodableValue(f"{frame.what} has {len(frame.payload) - buf.tell()} bytes left over after the "
                                   f"record of Avro schema {frame.ref}")
        text = orjson.dumps(value, default=_json_default)
        # A NaN or infinite double stays one in the structure; its JSON text (what the run gets) says null.
        return Decoded(value if self.json_native else orjson.loads(text), text)


AVRO_JSON_TYPES = frozenset({"null", "boolean", "int", "long", "float", "double", "string", "enum"})
AVRO_PRIMITIVES = AVRO_JSON_TYPES | {"bytes", "fixed"}


def _json_native(schema: Any) -> bool:
    """True when every value of `schema` decodes to JSON's own types: no bytes, fixed or logical types."""
    if isinstance(schema, str):
        return schema in AVRO_JSON_TYPES or schema not in AVRO_PRIMITIVES  # else a named type, checked where defined
    if isinstance(schema, list):
        return all(_json_native(branch) for branch in schema)
    if not isinstance(schema, dict) or "logicalType" in schema:
        return False
    kind = schema.get("type")
    if kind == "record" or kind == "error":
        return all(_json_native(field["type"]) for field in schema.get("fields", ()))
    if kind == "array":
        return _json_native(schema["items"])
    if kind == "map":
        return _json_native(schema["values"])
    return _json_native(kind) if kind != "fixed" else False


def _json_default(value: Any) -> Any:
    """Avro values orjson does not write itself (datetimes, dates and UUIDs it does)."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{value.__class__.__name__} is not JSON")


class ProtobufSchema:
    """A Protobuf writer schema: its file descriptor (as the registry serializes it) and its imports."""

    format = PROTOBUF

    def __init__(self, file: bytes, dependencies: Mapping[str, bytes] | None = None) -> None:
        pool = descriptor_pool.DescriptorPool()
        try:
            proto = descriptor_pb2.FileDescriptorProto.FromString(file)
            for name in proto.dependency:
                _add_dependency(pool, name, dependencies or {})
            self.file = pool.Add(proto)
            self._top = [self.file.message_types_by_name[m.name] for m in proto.message_type]
        except (ProtobufDecodeError, TypeError, KeyError, ValueError) as exc:
            raise UnknownSchema(f"the registry's Protobuf schema does not load: {exc}") from None
        self._types: dict[tuple[int, ...], type[Message]] = {}

    def message_type(self, indexes: tuple[int, ...]) -> type[Message]:
        """The message class the message-index path names in this file."""
        cls = self._types.get(indexes)
        if cls is None:
            try:
                if min(indexes) < 0:
                    raise IndexError
                descriptor = self._top[indexes[0]]
                for index in indexes[1:]:
                    descriptor = descriptor.nested_types[index]
            except IndexError:
                raise UndecodableValue(f"message indexes {list(indexes)} name no message of "
                                       f"{self.file.name}") from None
            cls = self._types[indexes] = message_factory.GetMessageClass(descriptor)
        return cls

    def decode(self, frame: Frame) -> Decoded:
        try:
            cls = self.message_type(frame.indexes or (0,))
        except UndecodableValue as exc:
            if frame.what == "value":
                raise
            raise UndecodableValue(f"{frame.what} {exc}") from None
        try:
            message = cls.FromString(frame.payload)
        except ProtobufDecodeError as exc:
            raise UndecodableValue(f"{frame.what} does not decode as {cls.DESCRIPTOR.full_name} of schema "
                                   f"{frame.ref}: {exc}") from None
        value = json_format.MessageToDict(message, preserving_proto_field_name=True)
        return Decoded(value, orjson.dumps(value))


def _add_dependency(pool: descriptor_pool.DescriptorPool, name: str, dependencies: Mapping[str, bytes]) -> None:
    try:
        pool.FindFileByName(name)
        return
    except KeyError:
        pass
    if name in dependencies:
        proto = descriptor_pb2.FileDescriptorProto.FromString(dependencies[name])
    else:  # a well-known type (google/protobuf/timestamp.proto, ...), as protobuf ships it
        proto = descriptor_pb2.FileDescriptorProto()
        _well_known_file(name).CopyToProto(proto)
    for inner in proto.dependency:
        _add_dependency(pool, inner, dependencies)
    pool.Add(proto)


def _well_known_file(name: str) -> FileDescriptor:
    """protobuf's own file `name` (google/protobuf/X.proto): in the default pool once its module X_pb2 is
    imported, which nothing else in the worker does."""
    if name.startswith("google/protobuf/") and name.endswith(".proto"):
        with contextlib.suppress(ImportError):
            importlib.import_module("google.protobuf." + name.removeprefix("google/protobuf/")[:-6] + "_pb2")
    return descriptor_pool.Default().FindFileByName(name)


class JsonSchemaSchema:
    """A JSON Schema writer schema: the value is JSON text that must conform to it."""

    format = JSON_SCHEMA

    def __init__(self, text: str) -> None:
        try:
            self.schema = CompiledSchema(orjson.loads(text))
        except (orjson.JSONDecodeError, SchemaCompileError, TypeError) as exc:
            raise UnknownSchema(f"the registry's JSON Schema does not compile: {exc}") from None

    def decode(self, frame: Frame) -> Decoded:
        try:
            value = orjson.loads(frame.payload)
        except orjson.JSONDecodeError as exc:
            raise UndecodableValue(f"{frame.what} of JSON Schema {frame.ref} is not JSON: {exc}") from None
        error = first_error(self.schema, value)
        if error is not None:
            path = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise UndecodableValue(f"{frame.what} breaks its JSON Schema {frame.ref} at {path}: {error.message}")
        return Decoded(value, frame.payload)


def writer_schema(schema_type: str, text: str, dependencies: Mapping[str, bytes] | None = None) -> WriterSchema:
    """The registry's schema (`schemaType` and `schema`) parsed; a Protobuf `text` is the serialized file
    descriptor (`serialized_protobuf`), its imports' descriptors in `dependencies` by file name."""
    if schema_type == "AVRO":
        return AvroSchema(text)
    if schema_type == "PROTOBUF":
        return ProtobufSchema(serialized_file(text), dependencies)
    if schema_type == "JSON":
        return JsonSchemaSchema(text)
    raise UnknownSchema(f"the registry's schema type {schema_type!r} is not AVRO, PROTOBUF or JSON")


def serialized_protobuf(text: str) -> bytes | None:
    """The file descriptor's bytes if `text` is one base64-serialized, else None (`.proto` source text).

    Confluent's registry stores `.proto` text and serializes it on request (`format=serialized`); Apicurio
    3.3 keeps what the producer registered, which is this form for confluent-kafka's serializers."""
    try:
        data = base64.b64decode(text, validate=True)
        descriptor_pb2.FileDescriptorProto.FromString(data)
    except (ValueError, ProtobufDecodeError):
        return None
    return data


def serialized_file(text: str) -> bytes:
    """A Protobuf schema's file descriptor bytes: base64 as Confluent's registry sends them, or (Apicurio 3.3's ccompat
    `format=serialized`) the bytes themselves as a string of code points below 256."""
    data = serialized_protobuf(text)
    if data is not None:
        return data
    try:
        return text.encode("latin-1")
    except UnicodeEncodeError:
        raise UnknownSchema("the registry's Protobuf schema is not a serialized file descriptor "
                            "(format=serialized)") from None


def decode_framed(schema: WriterSchema, frame: Frame, fmt: str) -> Decoded:
    """`frame` decoded with its writer schema, which must be of the route's format `fmt`."""
    if schema.format != fmt:
        if frame.what == "value":
            raise UnknownSchema(f"schema {frame.ref} is {REGISTRY_TYPES[schema.format]}, but the route reads {fmt}")
        raise UnknownSchema(f"{frame.what} schema {frame.ref} is {REGISTRY_TYPES[schema.format]}, but the route's "
                            f"{frame.what}_format is {fmt}")
    return schema.decode(frame)
