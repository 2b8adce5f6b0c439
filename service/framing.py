"""The producer side of the Confluent wire format, for `kafka-dagster produce --value-format`: a schema file
registered under the topic's value subject (`<topic>-value`, the Confluent clients' default), and each JSON
value encoded with it and framed (`service.frames.frame_prefix`).

- `avro`: an Avro schema (`.avsc`, JSON); values are written with fastavro.
- `json_schema`: a JSON Schema; a value must satisfy it, and is sent as its JSON text.
- `protobuf`: a file descriptor set (`protoc --include_imports --descriptor_set_out=FILE`, or `buf build -o`);
  the message type is `message` (a full name) or the first message of the set's last file. Its file is
  registered as a serialized descriptor, its imports (but protobuf's own `google/protobuf/...` ones) first as
  subjects named by their file names, as references, as confluent-kafka's ProtobufSerializer does.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import DecodeError as ProtobufDecodeError

from service.frames import frame_prefix
from service.registry import SchemaRegistry
from service.schemas import CompiledSchema, SchemaCompileError, first_error
from service.wire import AVRO, JSON_SCHEMA, PROTOBUF

Encoder = Callable[[Any], bytes]


class SchemaFileError(ValueError):
    """The schema file cannot be read or parsed for its format."""


class EncodeError(ValueError):
    """A value that does not fit the schema."""


def value_subject(topic: str) -> str:
    return f"{topic}-value"


def read_schema_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SchemaFileError(f"{path}: {exc.strerror or exc}") from None


async def framed_encoder(registry: SchemaRegistry, topic: str, fmt: str, schema_file: Path, data: bytes,
                         message: str | None = None) -> Encoder:
    """Register the schema `data` (read from `schema_file`) under the topic's value subject; return what
    encodes and frames one value."""
    if fmt == AVRO:
        return await _avro(registry, topic, data, schema_file)
    if fmt == JSON_SCHEMA:
        return await _json_schema(registry, topic, data, schema_file)
    if fmt == PROTOBUF:
        return await _protobuf(registry, topic, data, schema_file, message)
    raise SchemaFileError(f"value format {fmt!r} is not framed")


async def _avro(registry: SchemaRegistry, topic: str, data: bytes, path: Path) -> Encoder:
    try:
        parsed = fastavro.parse_schema(orjson.loads(data))
    except (orjson.JSONDecodeError, fastavro.schema.SchemaParseException, ValueError, TypeError) as exc:
        raise SchemaFileError(f"{path}: not an Avro schema: {exc}") from None
    prefix = frame_prefix(await registry.register(value_subject(topic), "AVRO", data.decode()))

    def encode(value: Any) -> bytes:
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, parsed, value)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise EncodeError(f"value does not fit the Avro schema: {exc}") from None
        return prefix + buf.getvalue()

    return encode


async def _json_schema(registry: SchemaRegistry, topic: str, data: bytes, path: Path) -> Encoder:
    try:
        schema = CompiledSchema(orjson.loads(data))
    except (orjson.JSONDecodeError, SchemaCompileError, TypeError) as exc:
        raise SchemaFileError(f"{path}: not a JSON Schema: {exc}") from None
    prefix = frame_prefix(await registry.register(value_subject(topic), "JSON", data.decode()))

    def encode(value: Any) -> bytes:
        error = first_error(schema, value)
        if error is not None:
            where = "/".join(str(p) for p in error.absolute_path) or "(root)"
            raise EncodeError(f"value breaks the JSON Schema at {where}: {error.message}")
        return prefix + orjson.dumps(value)

    return encode


async def _protobuf(registry: SchemaRegistry, topic: str, data: bytes, path: Path, message: str | None) -> Encoder:
    descriptor = message_descriptor(data, path, message)
    references = await _register_imports(registry, descriptor.file, {})
    schema_id = await registry.register(value_subject(topic), "PROTOBUF", _serialized(descriptor.file), references)
    prefix = frame_prefix(schema_id, message_indexes(descriptor))
    cls = message_factory.GetMessageClass(descriptor)

    def encode(value: Any) -> bytes:
        try:
            return prefix + json_format.ParseDict(value, cls()).SerializeToString()
        except json_format.ParseError as exc:
            raise EncodeError(f"value is not a {descriptor.full_name}: {exc}") from None

    return encode


def message_descriptor(data: bytes, path: Path, message: str | None) -> Descriptor:
    """The message type `message` (default: the first of the last file) of a serialized descriptor set."""
    try:
        files = descriptor_pb2.FileDescriptorSet.FromString(data).file
        pool = descriptor_pool.DescriptorPool()
        for file in files:
            pool.Add(file)
    except (ProtobufDecodeError, TypeError, ValueError) as exc:
        raise SchemaFileError(f"{path}: not a Protobuf file descriptor set (protoc --include_imports "
                              f"--descriptor_set_out): {exc}") from None
    if not files:
        raise SchemaFileError(f"{path}: the descriptor set holds no file")
    if message is None:
        last = files[-1]
        if not last.message_type:
            raise SchemaFileError(f"{path}: {last.name} declares no message; name one with --message")
        message = f"{last.package}.{last.message_type[0].name}" if last.package else last.message_type[0].name
    try:
        return pool.FindMessageTypeByName(message)
    except KeyError:
        raise SchemaFileError(f"{path}: no message type {message!r} in the descriptor set") from None


def message_indexes(descriptor: Descriptor) -> list[int]:
    """The message-index path of `descriptor` in its file (top-level index, then nested ones)."""
    proto = descriptor_pb2.FileDescriptorProto()
    descriptor.file.CopyToProto(proto)
    path: list[int] = []
    current: Descriptor | None = descriptor
    while current is not None:
        if current.containing_type is not None:
            names = [d.name for d in current.containing_type.nested_types]
        else:
            names = [m.name for m in proto.message_type]
        path.insert(0, names.index(current.name))
        current = current.containing_type
    return path


async def _register_imports(registry: SchemaRegistry, file: FileDescriptor,
                            done: dict[str, int]) -> list[dict[str, Any]]:
    """Register `file`'s imports (depth first, once each); return its references to them."""
    references = []
    for dependency in file.dependencies:
        if dependency.name.startswith("google/protobuf/"):
            continue  # protobuf's own types: every reader has them
        if dependency.name not in done:
            inner = await _register_imports(registry, dependency, done)
            text = _serialized(dependency)
            await registry.register(dependency.name, "PROTOBUF", text, inner)
            done[dependency.name] = await registry.version_of(dependency.name, "PROTOBUF", text, inner)
        references.append({"name": dependency.name, "subject": dependency.name, "version": done[dependency.name]})
    return references


def _serialized(file: FileDescriptor) -> str:
    proto = descriptor_pb2.FileDescriptorProto()
    file.CopyToProto(proto)
    return base64.b64encode(proto.SerializeToString()).decode()
